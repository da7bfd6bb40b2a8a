"""Time `featx-search dups` (the whole command, a fresh process) on 100,000 stored vectors,
next to the same command on a tenth of them in the same run, and check the planted copies.

    nice -n 10 .venv/bin/python scripts/bench_dups.py              # --n 100000
    nice -n 0 .venv/bin/python scripts/bench_dups.py --n 1000000 --no-small

``--no-small`` skips the run on N/10 images (at 1,000,000 images that run alone compares
every pair of 100,000, several minutes); ``--candidates`` is passed to ``dups`` (auto: all
pairs below 200,000 images, the inverted-file range search from there on).

The libraries are built by scripts/synthetic_library.py (real efficientnet_lite0 embeddings
of sample photos, mixed and perturbed, with about 1% planted near-copies). Printed: seconds
for N/10 and N, their ratio (all pairs: N^2/2 products, so about 100 is expected), the
candidate search each run used, the largest peak memory of the dups processes, and how many
planted groups came out whole.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from synthetic_library import build

from featx_search.dups import ANN_MIN_IMAGES, DUP_METHODS

CLI = [sys.executable, "-m", "featx_search"]


def run_dups(
    db: Path, threshold: float, candidates: str = "auto"
) -> tuple[float, list[dict[str, object]]]:
    started = time.perf_counter()
    args = ["dups", "--json", "-q", "--threshold", str(threshold), "--candidates", candidates]
    out = subprocess.run(
        [*CLI, "--db", str(db), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return time.perf_counter() - started, [json.loads(line) for line in out.splitlines()]


def planted_found(db: Path, rows: list[dict[str, object]]) -> tuple[int, int, int]:
    """(planted groups, planted groups found whole in one group, groups found)."""
    planted = json.loads(db.with_suffix(".planted.json").read_text())
    groups: dict[object, set[object]] = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(row["image_id"])
    whole = sum(any(set(p) <= g for g in groups.values()) for p in planted)
    return len(planted), whole, len(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--candidates", choices=DUP_METHODS, default="auto")
    parser.add_argument("--no-small", action="store_true", help="skip the run on N/10 images")
    args = parser.parse_args()
    sizes = [args.n] if args.no_small else [args.n // 10, args.n]
    dbs = [build(n, photos=args.photos) for n in sizes]
    print(f"dups --threshold {args.threshold} --candidates {args.candidates}, fresh processes")
    print(
        f"{'images':>8} {'candidates':>10} {'seconds':>9} {'planted':>8} {'found whole':>12} "
        f"{'groups':>7}"
    )
    results = {}
    for db, n in zip(dbs, sizes, strict=True):
        seconds, rows = run_dups(db, args.threshold, args.candidates)
        planted, whole, groups = planted_found(db, rows)
        results[n] = seconds
        used = args.candidates
        if used == "auto":
            used = "ann" if n >= ANN_MIN_IMAGES else "all"
        print(f"{n:>8} {used:>10} {seconds:9.1f} {planted:>8} {whole:>12} {groups:>7}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if len(sizes) == 2:
        print(f"ratio {args.n} / {args.n // 10}: {results[args.n] / results[args.n // 10]:.1f}x")
    print(f"peak memory of a dups process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
