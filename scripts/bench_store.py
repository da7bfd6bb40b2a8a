"""The two back ends side by side at 100,000 images: rows/s of writes, the latency of
`similar` and `dups`, and the time of `db copy` both ways, in one run.

    nice -n 10 .venv/bin/python scripts/bench_store.py \\
        --pg postgresql+psycopg://featx:featx@127.0.0.1:5432/featx      # --n 100000

The same synthetic rows (scripts/synthetic_library.py: real efficientnet_lite0 embeddings of
sample photos, mixed and perturbed; ``--random DIM`` draws random ones instead, no model) are
written straight into a new SQLite file and a new PostgreSQL database (made on the server of
``--pg``, a role that may create databases, and dropped at the end; default
$FEATX_BENCH_PG_URL, else $FEATX_TEST_PG_URL; without one only SQLite is measured). Targets
(issue 15): PostgreSQL writes at least half as fast as SQLite's, `similar` under 1 s on both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from synthetic_library import cpu_model, photos_folder, real_vectors, write_rows

SIMILAR_QUERIES = 20
DUP_THRESHOLD = 0.9


@dataclass
class Side:
    """What was measured on one back end."""

    name: str
    write_s: float = 0.0
    rows: int = 0
    build_s: float = 0.0
    similar_first_ms: float = 0.0
    similar_ms: list[float] = field(default_factory=list)
    dups_s: float = 0.0
    dup_groups: int = 0
    copy_s: float = 0.0  # copying this library to the other back end

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.write_s if self.write_s else 0.0


def random_base(dim: int, seed: int = 0) -> tuple[np.ndarray, dict[str, object]]:
    """Random unit vectors of ``dim`` and a space spec of that size (no model is loaded)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((200, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    spec: dict[str, object] = {
        "model": "bench_store:random",
        "weights": "none",
        "weights_sha256": "",
        "layers": ["random"],
        "pool": "avg",
        "preprocess": {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
        "dim": dim,
        "torch": "",
        "torchvision": "",
        "request": {"model": "bench_store:random", "weights": "none"},
    }
    return base, spec


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_database(server: str) -> Iterator[str]:
    """A new database on ``server`` for this run (its URL), dropped at the end."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"featx_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(server), autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


def measure(
    side: Side, db: str, n: int, base: np.ndarray, spec: dict[str, object], folder: Path
) -> None:
    """Write ``n`` rows into the new library ``db``, build its index, time queries on it."""
    from featx_search import Library, Query
    from featx_search.ann.publish import rebuild_index
    from featx_search.store import Store

    store = Store.open(db)
    try:
        started = time.perf_counter()
        write_rows(store, n, base, spec, folder=folder, verbose=False)
        side.write_s = time.perf_counter() - started
        side.rows = n
        started = time.perf_counter()
        rebuild_index(store, store.spaces()[0])
        side.build_s = time.perf_counter() - started
    finally:
        store.close()
    with Library.open(db) as lib:
        space = lib.space()
        ids = space.vectors()[1]
        picks = np.random.default_rng(1).choice(ids, min(SIMILAR_QUERIES + 1, len(ids)))
        for i, image_id in enumerate(picks):
            started = time.perf_counter()
            space.similar(int(image_id), Query(k=10))
            elapsed = (time.perf_counter() - started) * 1000
            if i == 0:
                side.similar_first_ms = elapsed  # opens the index file
            else:
                side.similar_ms.append(elapsed)
        started = time.perf_counter()
        side.dup_groups = len(space.duplicates(DUP_THRESHOLD))
        side.dups_s = time.perf_counter() - started


def timed_copy(src: str, dst: str) -> float:
    from featx_search import copy_library

    started = time.perf_counter()
    report = copy_library(src, dst)
    if not report.ok:  # copy_library raises first; kept as a guard
        raise SystemExit(f"copy {src} -> {dst} differs")
    return time.perf_counter() - started


def _ratio(pg: float, lite: float) -> str:
    return f"{pg / lite:.2f}" if pg and lite else "-"


def format_table(n: int, lite: Side, pg: Side | None) -> str:
    """One Markdown table: a row per measure, SQLite and PostgreSQL side by side."""

    def ms(values: Sequence[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else 0.0

    rows: list[tuple[str, float, float | None, str]] = [
        ("writes, images/s", lite.rows_per_s, pg and pg.rows_per_s, "{:,.0f}"),
        ("index build, s", lite.build_s, pg and pg.build_s, "{:.1f}"),
        ("similar, first (opens the index), ms", lite.similar_first_ms, None, "{:.1f}"),
        ("similar p50, ms", ms(lite.similar_ms, 50), None, "{:.1f}"),
        ("similar max, ms", max(lite.similar_ms, default=0.0), None, "{:.1f}"),
        ("dups, s", lite.dups_s, pg and pg.dups_s, "{:.1f}"),
        ("db copy to the other back end, s", lite.copy_s, pg and pg.copy_s, "{:.1f}"),
    ]
    if pg is not None:
        rows[2:5] = [
            (rows[2][0], rows[2][1], pg.similar_first_ms, rows[2][3]),
            (rows[3][0], rows[3][1], ms(pg.similar_ms, 50), rows[3][3]),
            (rows[4][0], rows[4][1], max(pg.similar_ms, default=0.0), rows[4][3]),
        ]
    lines = [
        f"| {n:,} images | SQLite | PostgreSQL | PostgreSQL / SQLite |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, a, b, fmt in rows:
        right = "-" if b is None else fmt.format(b)
        lines.append(f"| {label} | {fmt.format(a)} | {right} | {_ratio(b or 0.0, a)} |")
    return "\n".join(lines)


def verdicts(lite: Side, pg: Side | None) -> list[str]:
    """The issue's targets, met or not."""
    if pg is None:
        return ["targets: no PostgreSQL server given, nothing compared"]
    half = pg.rows_per_s >= lite.rows_per_s / 2
    slowest = max([*lite.similar_ms, *pg.similar_ms, lite.similar_first_ms, pg.similar_first_ms])
    return [
        f"PostgreSQL writes at least half as fast as SQLite: {'yes' if half else 'NO'} "
        f"({_ratio(pg.rows_per_s, lite.rows_per_s)})",
        f"similar under 1 s on both: {'yes' if slowest < 1000 else 'NO'} "
        f"(slowest {slowest:.0f} ms, first query included)",
    ]


def run(
    n: int, server: str | None, base: np.ndarray, spec: dict[str, object], work: Path
) -> tuple[Side, Side | None]:
    folder = work / "photos"
    lite = Side("sqlite")
    lite_db = str(work / "bench.db")
    measure(lite, lite_db, n, base, spec, folder)
    if not server:
        lite.copy_s = timed_copy(lite_db, str(work / "copy.db"))
        return lite, None
    pg = Side("postgres")
    with scratch_database(server) as pg_db:
        measure(pg, pg_db, n, base, spec, folder)
        with scratch_database(server) as copy_db:
            lite.copy_s = timed_copy(lite_db, copy_db)
        pg.copy_s = timed_copy(pg_db, str(work / "copy.db"))
    return lite, pg


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images per library")
    parser.add_argument(
        "--pg",
        default=os.environ.get("FEATX_BENCH_PG_URL") or os.environ.get("FEATX_TEST_PG_URL"),
        help="a PostgreSQL server URL of a role that may create databases",
    )
    parser.add_argument("--random", type=int, metavar="DIM", help="random vectors of DIM")
    parser.add_argument("--photos", type=Path, help="real photos to draw embeddings from")
    args = parser.parse_args(argv)
    if args.random:
        base, spec = random_base(args.random)
    else:
        base, spec, _ = real_vectors(photos_folder(args.photos))
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # a server library's index files
    try:
        started = time.perf_counter()
        lite, pg = run(args.n, args.pg, base, spec, work)
        total = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = cache
    print(
        f"{args.n:,} images of {base.shape[1]} dims; lscpu {cpu_model()!r}, "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; "
        f"{total:.0f} s in all"
    )
    print(format_table(args.n, lite, pg))
    for line in verdicts(lite, pg):
        print(line)


if __name__ == "__main__":
    main()
