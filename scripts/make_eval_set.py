#!/usr/bin/env python
"""Build an evaluation folder for `featx-search eval` (one subfolder of images per class).

Two kinds, both offline (photos from Debian's mirror, see below):

- ``tiles`` (default): each large photo becomes one class, a grid of non-overlapping tiles
  (default 3 x 2), each saved as its own JPEG. Tiles of one photo show the same scene but not
  the same pixels, so class retrieval asks "same kind of thing", and copy detection
  (`eval --copies`) must tell apart tiles that look alike. Renditions of one photo (names that
  differ only by a size suffix or a -Dark/-Light/... variant, as in Debian's mate-backgrounds)
  are used once.
- ``folders``: every folder of SOURCE that directly holds at least --per-class images is a
  class (named by its path below SOURCE, ``/`` as ``-``); --per-class of its images are drawn
  with a fixed seed, transparency flattened onto white, and saved as JPEGs. Debian's
  openclipart-png (clip art sorted into category folders) makes a category set this way.

Photos without a network beyond Debian's mirror:
    mkdir -p /tmp/mate && cd /tmp/mate && apt-get download mate-backgrounds \
        && dpkg -x mate-backgrounds_*.deb x
    mkdir -p /tmp/oc && cd /tmp/oc && apt-get download openclipart-png && dpkg -x *.deb x
    mkdir -p /tmp/skim && cd /tmp/skim && apt-get download python3-skimage && dpkg -x *.deb x
Then:
    .venv/bin/python scripts/make_eval_set.py /tmp/mate/x/usr/share/backgrounds/mate eval-data/tiles
    .venv/bin/python scripts/make_eval_set.py --kind folders \
        /tmp/oc/x/usr/share/openclipart/png eval-data/clipart
    .venv/bin/python scripts/make_eval_set.py --side 160 \
        /tmp/skim/x/usr/lib/python3/dist-packages/skimage/data eval-data/skimage
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from PIL import Image

from featx_search.images import is_image_name, load_rgb

# scikit-image's data folder also holds masks, test patterns and tiny fixtures: photos only.
MIN_SOURCE_SIDE = 300


def tiles(source: Path, target: Path, cols: int, rows: int, side: int) -> int:
    """Classes of ``cols`` x ``rows`` tiles, one per distinct photo; the number of classes."""
    seen: set[str] = set()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and is_image_name(p)):
        group = re.sub(r"(_\d+x\d+)|(-Dark|-Light|-Cold|-Warm|-Radioactive)", "", path.stem)
        if group in seen:
            continue
        try:
            with Image.open(path) as probe:
                if min(probe.size) < MIN_SOURCE_SIDE or probe.mode not in ("RGB", "RGBA"):
                    continue  # grey scans, masks, palettes and small fixtures are not photos
        except OSError:
            continue  # a format PIL cannot read (multi-page TIFF samples)
        seen.add(group)
        img = load_rgb(path, min_side=side * max(rows, cols))
        w, h = img.width // cols, img.height // rows
        folder = target / group
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(rows):
            for c in range(cols):
                tile = img.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))
                scale = side / min(tile.size)
                tile = tile.resize((round(tile.width * scale), round(tile.height * scale)))
                tile.save(folder / f"{r}{c}.jpg", quality=92)
    return len(seen)


def flattened(path: Path, side: int) -> Image.Image:
    """``path`` on a white background, its longer side at most ``side``."""
    with Image.open(path) as img:
        img.thumbnail((side, side))
        rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def folders(source: Path, target: Path, per_class: int, side: int, seed: int) -> int:
    """A class per folder holding ``per_class`` images or more; the number of classes."""
    chosen = 0
    for folder in sorted(p for p in [source, *source.rglob("*")] if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
        if len(images) < per_class:
            continue
        name = "-".join(folder.relative_to(source).parts) or source.name
        out = target / name
        out.mkdir(parents=True, exist_ok=True)
        for n, path in enumerate(random.Random(f"{seed}:{name}").sample(images, per_class)):
            flattened(path, side).save(out / f"{n:02d}.jpg", quality=92)
        chosen += 1
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--kind", choices=("tiles", "folders"), default="tiles")
    parser.add_argument("--cols", type=int, default=3, help="tiles: columns per photo")
    parser.add_argument("--rows", type=int, default=2, help="tiles: rows per photo")
    parser.add_argument(
        "--side", type=int, default=320, help="tiles: shorter side; folders: longer side"
    )
    parser.add_argument("--per-class", type=int, default=12, help="folders: images per class")
    parser.add_argument("--seed", type=int, default=0, help="folders: which images are drawn")
    args = parser.parse_args()
    if not args.source.is_dir():
        parser.error(f"source {args.source} is not a folder (see this script's docstring)")
    if args.kind == "tiles":
        count = tiles(args.source, args.target, args.cols, args.rows, args.side)
        print(f"{count} classes of {args.rows * args.cols} tiles in {args.target}")
    else:
        count = folders(args.source, args.target, args.per_class, args.side, args.seed)
        print(f"{count} classes of {args.per_class} images in {args.target}")


if __name__ == "__main__":
    main()
