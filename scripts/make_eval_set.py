#!/usr/bin/env python
"""Build an evaluation folder for `featx-search eval` from a few large photos.

Each photo becomes one class: a grid of non-overlapping tiles (default 3 x 2), each saved as
its own JPEG. Tiles of one photo show the same scene but not the same pixels, so class
retrieval asks "same kind of thing", and copy detection (`eval --copies`) must tell apart
tiles that look alike. Renditions of one photo (names that differ only by a size suffix or a
-Dark/-Light/... variant, as in Debian's mate-backgrounds) are used once.

Get photos without a network beyond Debian's mirror:
    mkdir -p /tmp/mate && cd /tmp/mate && apt-get download mate-backgrounds \
        && dpkg -x mate-backgrounds_*.deb x
Then:
    .venv/bin/python scripts/make_eval_set.py /tmp/mate/x/usr/share/backgrounds/mate eval-data/tiles
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from featx_search.images import is_image_name, load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--cols", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--side", type=int, default=320, help="shorter side of each tile")
    args = parser.parse_args()
    seen: set[str] = set()
    for path in sorted(p for p in args.source.rglob("*") if p.is_file() and is_image_name(p)):
        group = re.sub(r"(_\d+x\d+)|(-Dark|-Light|-Cold|-Warm|-Radioactive)", "", path.stem)
        if group in seen:
            continue
        seen.add(group)
        img = load_rgb(path, min_side=args.side * max(args.rows, args.cols))
        w, h = img.width // args.cols, img.height // args.rows
        folder = args.target / group
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(args.rows):
            for c in range(args.cols):
                tile = img.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))
                scale = args.side / min(tile.size)
                tile = tile.resize((round(tile.width * scale), round(tile.height * scale)))
                tile.save(folder / f"{r}{c}.jpg", quality=92)
    print(f"{len(seen)} classes of {args.rows * args.cols} tiles in {args.target}")


if __name__ == "__main__":
    main()
