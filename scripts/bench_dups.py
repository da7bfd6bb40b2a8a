"""Time `featx-search dups` (the whole command, a fresh process) on 100,000 stored vectors,
next to the same command on a tenth of them in the same run, and check the planted copies.

    nice -n 10 .venv/bin/python scripts/bench_dups.py              # --n 100000

The libraries are built by scripts/synthetic_library.py (real efficientnet_lite0 embeddings
of sample photos, mixed and perturbed, with about 1% planted near-copies). Printed: seconds
for N/10 and N, their ratio (the range search does N^2/2 products, so about 100 is expected),
the child's peak memory, and how many planted groups came out whole.
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

CLI = [sys.executable, "-m", "featx_search"]


def run_dups(db: Path, threshold: float) -> tuple[float, list[dict[str, object]]]:
    started = time.perf_counter()
    out = subprocess.run(
        [*CLI, "--db", str(db), "dups", "--json", "-q", "--threshold", str(threshold)],
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
    args = parser.parse_args()
    small_db = build(args.n // 10, photos=args.photos)
    big_db = build(args.n, photos=args.photos)
    print(f"dups --threshold {args.threshold}, fresh processes")
    print(f"{'images':>8} {'seconds':>9} {'planted':>8} {'found whole':>12} {'groups':>7}")
    results = {}
    for db, n in ((small_db, args.n // 10), (big_db, args.n)):
        seconds, rows = run_dups(db, args.threshold)
        planted, whole, groups = planted_found(db, rows)
        results[n] = seconds
        print(f"{n:>8} {seconds:9.1f} {planted:>8} {whole:>12} {groups:>7}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ratio = results[args.n] / results[args.n // 10]
    print(
        f"ratio {args.n} / {args.n // 10}: {ratio:.1f}x; peak memory of a dups process: "
        f"{peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
