#!/usr/bin/env python
"""Indexes larger than memory (issue 16, point 4): the peak RSS of an on-disk IVF build at two
library sizes, and their ratio.

For each size a library of N synthetic unit vectors (clustered, ``--dim`` floats) is written
straight into a new SQLite store (by a child process, not measured), then another child
process opens it, gives the space a memory budget (``--budget``, so that ``auto`` picks
``ondisk:IVF<nlist>,Flat``) and rebuilds its index from the store: trained on a sample, the
vectors streamed in chunks, the inverted lists written into the ``.ivfdata`` file. That
child reports its peak RSS (``ru_maxrss``, the whole process: Python, numpy, faiss, the
training sample, one chunk), the build time, the files' size, then opens the published
index memory-mapped and times 200 single-threaded queries (k=10) and recall@10 against
exact search (computed in chunks). The ratio of the two peaks is what a larger library costs
the build (target: about 1; the training sample, about 50 vectors per list with nlist near
4 sqrt(N), is the part that grows).

Usage:
    nice -n 10 .venv/bin/python scripts/bench_ondisk.py                  # 200,000 and 800,000
    .venv/bin/python scripts/bench_ondisk.py --sizes 20000,80000 --dim 64   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthetic_library import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def make_library(db: Path, n: int, dim: int, seed: int = 0) -> None:
    """``n`` clustered unit vectors of ``dim`` floats written into a new library at ``db``
    (one space, one image row each; no image files)."""
    import numpy as np

    from featx_search import ExtractorSpec, Preprocess, SpaceSpec
    from featx_search.records import FileResult
    from featx_search.store import Store

    spec = SpaceSpec(
        model="synthetic",
        weights="none",
        weights_sha256="0" * 64,
        layers=("x",),
        pool="avg",
        preprocess=Preprocess(),
        dim=dim,
        torch_version="0",
        torchvision_version="0",
        request=ExtractorSpec(model="synthetic", weights="none"),
    )
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    store = Store.open(db)
    try:
        record = store.ensure_space(spec)
        root_id, _ = store.root_for(db.parent.resolve())
        batch = 20_000
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, dim)).astype(
                np.float32
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = [
                FileResult(root_id, f"{(start + i) // 1000:04d}/v{start + i:07d}.jpg", 1, 1, x[i])
                for i in range(m)
            ]
            store.write_batch(record.id, rows)
    finally:
        store.close()


def build_and_query(db: Path, budget: str, queries: int = 200) -> dict[str, Any]:
    """Rebuild the space's index under ``budget`` and measure it (see the module's doc)."""
    import faiss
    import numpy as np

    from featx_search.ann.publish import open_index, rebuild_index, recall_from_store
    from featx_search.ann.spec import parse_memory
    from featx_search.records import IndexSettings
    from featx_search.store import Store

    store = Store.open(db)
    try:
        record = store.spaces()[0]
        store.set_index_settings(record.id, IndexSettings(None, parse_memory(budget), {}))
        built = rebuild_index(store, store.space(record.id))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        record = store.space(record.id)
        index, _ = open_index(store, record)
        faiss.omp_set_num_threads(1)
        rng = np.random.default_rng(1)
        picked = np.sort(rng.choice(record.count, queries, replace=False)) + 1  # ids from 1
        _, _, vectors = store.vectors(record.id, picked.tolist())
        q = vectors + 0.05 * rng.normal(size=vectors.shape).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        times = []
        for row in q:
            started = time.perf_counter()
            index.search(row[None, :], 10)
            times.append(time.perf_counter() - started)
        recall, _ = recall_from_store(store, record, index, k=10, sample=queries, seed=2)
        lists = sorted(store.index_dir.glob("*.ivfdata"))
        return {
            "n": record.count,
            "spec": built.spec,
            "params": built.params.to_dict(),
            "seconds": built.seconds,
            "peak_rss": peak,
            "bytes": built.nbytes,
            "ondisk": bool(lists),
            "query_ms": 1000 * float(np.mean(times)),
            "query_p99_ms": 1000 * float(np.percentile(times, 99)),
            "recall": recall,
        }
    finally:
        store.close()


def child(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200000,800000", help="library sizes (two or more)")
    parser.add_argument("--dim", type=int, default=256, help="vector size (default 256)")
    parser.add_argument("--budget", default="64M", help="the space's memory budget (64M)")
    parser.add_argument("--work", type=Path, help="folder for the libraries (default: temp)")
    parser.add_argument("--make", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--build", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_library(Path(args.make[0]), int(args.make[1]), args.dim)
        return
    if args.build:
        print(json.dumps(build_and_query(Path(args.build), args.budget)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ondisk-", dir=args.work) as tmp:
        for n in sizes:
            db = Path(tmp) / f"lib-{n}.db"
            started = time.perf_counter()
            child(["--make", str(db), str(n), "--dim", str(args.dim)])
            print(f"wrote {n} vectors in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            result = json.loads(
                child(["--build", str(db), "--budget", args.budget, "--dim", str(args.dim)])
            )
            print(json.dumps(result), file=sys.stderr)
            rows.append(result)
    print(
        f"# bench_ondisk: {args.dim}-d synthetic vectors, budget {args.budget}; "
        f"{cpu_model()}, {os.cpu_count()} cores"
    )
    print(
        "| vectors | raw vectors | index | build s | peak RSS | files | query ms (p99) "
        "| recall@10 |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    mib = 2**20
    for r in rows:
        raw = r["n"] * args.dim * 4
        print(
            f"| {r['n']:,} | {raw / mib:.0f} MiB | `{r['spec']}` {r['params']} "
            f"| {r['seconds']:.1f} | {r['peak_rss'] / mib:.0f} MiB | {r['bytes'] / mib:.0f} MiB "
            f"| {r['query_ms']:.2f} ({r['query_p99_ms']:.2f}) | {r['recall']:.3f} |"
        )
    ratio = rows[-1]["peak_rss"] / rows[0]["peak_rss"]
    growth = rows[-1]["n"] / rows[0]["n"]
    print(f"\npeak RSS {rows[-1]['n']:,} / {rows[0]['n']:,}: {ratio:.2f} (vectors x{growth:g})")


if __name__ == "__main__":
    main()
