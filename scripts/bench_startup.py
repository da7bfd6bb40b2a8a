#!/usr/bin/env python
"""Start-up of a small `index` run (issue 18 point 3): seconds from a fresh process's start to
its first committed batch, on a warm cache, with the space's engine as the defaults make it
and with torch computing it, side by side.

The photos of ``--photos`` (at least ``2 * --n``, e.g. scripts/bench_index.py's bench photos or
any folder of camera JPEGs) are split in two. For each engine a library is made by indexing
the first half (this makes the space, its saved model and OpenVINO's compiled cache); then,
``--repeat`` times, a copy of that library indexes the second half in a fresh process that
reports when its first batch was committed, the whole run, and whether torch was imported.
"defaults" is ``--precision auto --runtime auto`` (a bf16 space computed by OpenVINO on a CPU
with native bf16, else fp32); "torch" adds ``--runtime torch`` (torch computes a bf16 space,
and an fp32 run does not use the saved model).

Usage:
    .venv/bin/python scripts/bench_startup.py --photos DIR            # --n 60 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from synthetic_library import cpu_model

CHILD = """
import time
t0 = time.perf_counter()
import json, sys
from featx_search import Compute, Library, SyncOptions
first = []
def seen(p):
    if p.done and not first:
        first.append(time.perf_counter() - t0)
options = SyncOptions(compute=Compute(runtime=sys.argv[3]))
with Library.open(sys.argv[1]) as lib:
    report = lib.index([sys.argv[2]], options=options, progress=seen)
print(json.dumps({"first": first[0], "run": time.perf_counter() - t0, "added": report.added,
                  "label": report.label, "torch": "torch" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--n", type=int, default=60, help="photos per run (default 60)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(photos) < 2 * args.n:
        sys.exit(f"--photos {args.photos}: {len(photos)} JPEGs, need {2 * args.n}")
    print(f"CPU: {cpu_model()}; {args.n} photos per run, fresh processes, warm cache")
    print(f"{'engine':<10}{'space':<58}{'first batch s':>14}{'run s':>8}{'torch':>7}")
    with tempfile.TemporaryDirectory(prefix="featx-startup-") as tmp:
        work = Path(tmp)
        halves = [work / "first", work / "second"]
        for half, chunk in zip(
            halves, (photos[: args.n], photos[args.n : 2 * args.n]), strict=True
        ):
            half.mkdir()
            for photo in chunk:
                shutil.copy2(photo, half / f"{len(list(half.iterdir())):04d}{photo.suffix}")
        for name, runtime in (("defaults", "auto"), ("torch", "torch")):
            made = work / name / "lib.db"
            made.parent.mkdir()
            child(made, halves[0], runtime)  # makes the space, its saved model, the cache
            for _ in range(args.repeat):
                trial = work / f"{name}-trial"
                shutil.rmtree(trial, ignore_errors=True)
                shutil.copytree(made.parent, trial)
                got = child(trial / "lib.db", halves[1], runtime)
                print(
                    f"{name:<10}{got['label']:<58}{got['first']:14.2f}{got['run']:8.2f}"
                    f"{'yes' if got['torch'] else 'no':>7}",
                    flush=True,
                )


def child(db: Path, folder: Path, runtime: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), str(folder), runtime],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
