"""Time the whole `featx-search similar` command (a fresh process each time) on a library of
10,000 images, next to baselines measured in the same run.

    nice -n 10 .venv/bin/python scripts/bench_similar.py            # --n 10000 --repeat 5

The library is built by scripts/synthetic_library.py (real efficientnet_lite0 embeddings of
sample photos, mixed and perturbed; see there). Every command runs --repeat times,
interleaved so that machine noise hits all of them alike; medians are printed with their
ratio to `featx-search --help` (interpreter and CLI start-up) and to one `search` of a real
photo (which has to import torch and load the model).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from synthetic_library import DATA, build, photos_folder

CLI = [sys.executable, "-m", "featx_search"]


def wall(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``args`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--photos", type=Path)
    args = parser.parse_args()
    photos = photos_folder(args.photos)
    db = str(build(args.n, photos=photos))
    root = DATA / f"synthetic-{args.n}-photos"
    some = ["17", "4242", str(args.n // 2)]
    base = [*CLI, "--db", db]
    commands = {
        "--help (start-up only)": [*CLI, "--help"],
        "similar ID -k 10": [*base, "similar", some[0], "-k", "10"],
        "similar PATH -k 10 --json": [
            *base,
            "similar",
            str(root / "004" / "img004242.jpg"),
            "-k",
            "10",
            "--json",
        ],
        "similar ID --under DIR --after DATE": [
            *base,
            "similar",
            some[1],
            "--under",
            str(root / "003"),
            "--after",
            "2018-01-01",
        ],
        "similar ID --glob '*7.jpg' --threshold 0.5": [
            *base,
            "similar",
            some[2],
            "--glob",
            "*7.jpg",
            "--threshold",
            "0.5",
        ],
        "similar 3 IDs --combine --exclude-self": [
            *base,
            "similar",
            *some,
            "--combine",
            "--exclude-self",
        ],
    }
    root.mkdir(parents=True, exist_ok=True)  # --under needs the folder to exist
    (root / "003").mkdir(exist_ok=True)
    query = next(p for p in sorted(photos.rglob("*.jpg")))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for command in commands.values():
        wall(command)  # warm the page cache once: we time the process, not the disk
    for _ in range(args.repeat):
        for name, command in commands.items():
            times[name].append(wall(command))
    search, search_cpu = wall([*base, "search", str(query), "-k", "10"])
    startup = statistics.median(w for w, _ in times["--help (start-up only)"])
    print(f"library: {db} ({args.n} images); medians of {args.repeat} runs, fresh processes")
    print(f"{'command':<45} {'wall s':>7} {'cpu s':>6} {'x --help':>9} {'/ search':>9}")
    for name, values in times.items():
        median = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:<45} {median:7.3f} {cpu:6.2f} {median / startup:9.2f} {median / search:9.3f}")
    name = "search PHOTO -k 10 (loads torch + model)"
    print(f"{name:<45} {search:7.3f} {search_cpu:6.2f} {search / startup:9.2f}")
    worst = max(
        statistics.median(w for w, _ in v) for k, v in times.items() if k.startswith("similar")
    )
    print(f"slowest similar: {worst:.3f} s wall ({'under' if worst < 1 else 'NOT under'} 1 s)")
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
