"""Parquet shards of embedded files, for clusters that cannot reach the library: `embed` writes
them (with a manifest naming the space), `ingest` loads them into a library (pyarrow)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import SpaceSpec
from .errors import ConfigError, LibraryError
from .ingest import Embedded, Engine, Outcome, Writer, embed_locally, tally
from .options import Progress, ProgressCallback, SyncOptions
from .plan import Job
from .records import FAILED, KnownFile
from .reports import IndexReport
from .scan import FileInfo, scan, stat_or_lstat

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .extract import Extractor
    from .store import Store

MANIFEST = "manifest.json"
FORMAT = 1
ROWS_PER_SHARD = 4096
"""Rows per Parquet file (one file is read whole on ingest: this bounds its memory)."""


def _arrow() -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "shards need pyarrow, which is not installed",
            hint="pip install 'featx-search[ray]'",
        ) from None
    return pa, pq


@dataclass(frozen=True)
class ShardSet:
    """A folder of shards: its space (from ``manifest.json``) and its Parquet files."""

    folder: Path
    spec: SpaceSpec

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ShardSet:
        """The shards in ``folder``; :class:`LibraryError` when it holds no manifest."""
        path = Path(folder).expanduser()
        try:
            data = json.loads((path / MANIFEST).read_text())
            spec = SpaceSpec.from_dict(data["spec"])
        except (OSError, ValueError, KeyError) as err:
            raise LibraryError(
                f"{path} holds no readable shard manifest ({MANIFEST}): {err}",
                hint="give the folder `featx-search embed --out` wrote",
            ) from None
        return cls(path, spec)

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def count(self) -> int:
        """Rows in all shards (from the Parquet footers)."""
        _, pq = _arrow()
        return sum(pq.ParquetFile(file).metadata.num_rows for file in self.files())

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict[str, list[Any]]]:
        """Each shard's columns (as Python lists), shard by shard."""
        _, pq = _arrow()
        for file in self.files():
            yield pq.read_table(file, columns=columns).to_pydict()


def _create(folder: Path, spec: SpaceSpec) -> ShardSet:
    """The shard folder for ``spec``: made with its manifest, or an existing one of the same
    space (new shards are added beside its own); :class:`ConfigError` for another space's."""
    if (folder / MANIFEST).exists():
        found = ShardSet.open(folder)
        if found.fingerprint != spec.fingerprint:
            raise ConfigError(
                f"out {folder} holds shards of space {found.fingerprint} "
                f"({found.spec.label}), not of {spec.fingerprint} ({spec.label})",
                hint="give another --out folder, or the model options those shards were made with",
                param="out",
            )
        return found
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "fingerprint": spec.fingerprint,
        "label": spec.label,
        "spec": spec.to_dict(),
    }
    _atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return ShardSet(folder, spec)


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jobs(paths: Iterable[str | os.PathLike[str]], done: set[tuple[str, int, int]]) -> list[Job]:
    """The image files under ``paths`` not in ``done`` (path, size, mtime) as jobs whose
    ``relpath`` is the absolute path (shards have no roots)."""
    jobs: list[Job] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        found = scan(path.resolve()) if path.is_dir() else [stat_or_lstat(path)]
        for info in found:
            if info is None or str(info.path) in seen:
                continue
            seen.add(str(info.path))
            if (str(info.path), info.size, info.mtime_ns) not in done:
                jobs.append(Job(0, str(info.path), info, is_update=False, known=False))
    return jobs


class _ShardWriter:
    """Rows collected batch by batch, written as a Parquet file every ``ROWS_PER_SHARD``."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards
        self.rows: dict[str, list[Any]] = {name: [] for name in _COLUMNS}

    def add(self, batch: list[tuple[Job, Outcome]], vectors: np.ndarray) -> None:
        ok = iter(vectors)
        for job, outcome in batch:
            vector = None if outcome.error is not None else next(ok)
            row = {
                "path": str(job.info.path),
                "size": job.info.size,
                "mtime_ns": job.info.mtime_ns,
                "content_hash": outcome.content_hash,
                "vector": None if vector is None else vector.tolist(),
                "error": outcome.error,
                "width": outcome.size[0] if outcome.size else None,
                "height": outcome.size[1] if outcome.size else None,
                "taken_at": outcome.taken_at.isoformat() if outcome.taken_at else None,
            }
            for name, value in row.items():
                self.rows[name].append(value)
        if len(self.rows["path"]) >= ROWS_PER_SHARD:
            self.flush()

    def flush(self) -> None:
        if not self.rows["path"]:
            return
        pa, pq = _arrow()
        dim = self.shards.spec.dim
        types = {**_COLUMNS, "vector": pa.list_(pa.float32(), dim)}
        schema = pa.schema(
            [(name, kind if name == "vector" else kind(pa)) for name, kind in types.items()]
        )
        table = pa.table(self.rows, schema=schema)
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.shards.folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.shards.folder / name)
        self.rows = {name: [] for name in _COLUMNS}


_COLUMNS: dict[str, Any] = {
    "path": lambda pa: pa.string(),
    "size": lambda pa: pa.int64(),
    "mtime_ns": lambda pa: pa.int64(),
    "content_hash": lambda pa: pa.string(),
    "vector": None,  # fixed-size list of float32, the space's dim
    "error": lambda pa: pa.string(),
    "width": lambda pa: pa.int32(),
    "height": lambda pa: pa.int32(),
    "taken_at": lambda pa: pa.string(),  # ISO 8601, as the image said
}


def write_shards(
    paths: Iterable[str | os.PathLike[str]],
    extractor: Extractor,
    out: str | os.PathLike[str],
    options: SyncOptions | None = None,
    *,
    engine: Engine | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> IndexReport:
    """Embed the image files under ``paths`` with ``extractor``'s space into Parquet shards in
    ``out`` (path, size, mtime_ns, content_hash, vector; error, width, height, taken_at),
    beside a ``manifest.json`` with the space's fingerprint and spec. No library is read or
    written. Files already in ``out``'s shards with the same size and mtime are skipped, so
    a stopped run resumes; ``out`` holding another space's shards raises
    :class:`ConfigError`. ``engine`` as for :meth:`Space.sync` (default: local threads)."""
    started = time.perf_counter()
    options = options or SyncOptions()
    spec = extractor.space
    if spec.precision == "int8":
        raise ConfigError(
            "precision int8 needs a library: its model is calibrated on the library's images "
            "and saved with the space",
            hint="use index instead of embed, or another precision",
            param="precision",
        )
    shards = _create(Path(out).expanduser(), spec)
    done = {
        (path, size, mtime)
        for rows in shards.rows(["path", "size", "mtime_ns"])
        for path, size, mtime in zip(rows["path"], rows["size"], rows["mtime_ns"], strict=True)
    }
    jobs = _jobs(paths, done)
    report = IndexReport(space=spec.fingerprint, label=spec.label, unchanged=len(done))
    stop = stop or threading.Event()
    if engine is None:
        if jobs:
            extractor.prepare_run(len(jobs), options.batch_size)
        batches: Generator[Embedded, None, None] = embed_locally(
            extractor, jobs, spec, options, stop
        )
    else:
        batches = engine(jobs, spec, options, stop)
    writer = _ShardWriter(shards)
    count = 0
    embed_started = time.perf_counter()
    try:
        for batch, vectors in batches:
            writer.add(batch, vectors)
            count += len(batch)
            tally(report, batch)
            if progress is not None and batch:
                elapsed = time.perf_counter() - started
                progress(
                    Progress(count, len(jobs), str(batch[-1][0].info.path), report.failed, elapsed)
                )
    finally:
        writer.flush()
        batches.close()
    report.embed_seconds = time.perf_counter() - embed_started
    if count < len(jobs):
        report.interrupted, report.remaining = True, len(jobs) - count
    report.seconds = time.perf_counter() - started
    return report


def parse_mapping(items: Iterable[str]) -> list[tuple[str, str]]:
    """``FROM=TO`` path prefixes (longest first); :class:`ConfigError` for a malformed one."""
    mapping = []
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise ConfigError(
                f"map must be FROM=TO, got {item!r}",
                hint="e.g. --map /mnt/cluster/photos=/home/me/Pictures",
                param="map",
            )
        mapping.append((source.rstrip("/") or "/", target.rstrip("/") or "/"))
    return sorted(mapping, key=lambda pair: len(pair[0]), reverse=True)


def remap(path: str, mapping: Sequence[tuple[str, str]]) -> str:
    """``path`` with its first matching ``FROM`` prefix (a whole folder) replaced by ``TO``."""
    for source, target in mapping:
        if path == source:
            return target
        if path.startswith(source.rstrip("/") + "/"):
            return os.path.join(target, path[len(source.rstrip("/")) + 1 :])
    return path


def _roots(
    store: Store, shards: ShardSet, mapping: Sequence[tuple[str, str]]
) -> dict[str, tuple[int, Path]]:
    """The store's root (id, folder) for each folder holding a file of ``shards`` (remapped).
    Outer folders are made roots first, so that no root made here absorbs another one made
    here (shards list files in any order)."""
    folders = {
        str(Path(remap(path, mapping)).parent)
        for rows in shards.rows(["path"])
        for path in rows["path"]
    }
    roots: dict[str, tuple[int, Path]] = {}
    for folder in sorted(folders, key=len):
        outer = next((roots[str(p)] for p in Path(folder).parents if str(p) in roots), None)
        roots[folder] = outer or store.root_for(Path(folder))
    return roots


def ingest_shards(
    space_id: int,
    store: Store,
    shards: ShardSet,
    mapping: Sequence[tuple[str, str]] = (),
    *,
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> tuple[IndexReport, VectorIndex, int | None]:
    """Load ``shards`` into the space ``space_id`` (of the shards' fingerprint: the caller
    checks), their paths remapped by ``mapping``; returns the report, the space's index
    as updated in memory (the caller publishes it) and the generation it mirrors. Each file
    becomes a row under the root of its folder, as if indexed there; a file stored with the
    same size and mtime and a vector (or the same failure) is left as it is, so ingesting
    twice changes nothing.
    Nothing is removed. Committed ``batch_size`` files per transaction, by the sync's writer."""
    started = time.perf_counter()
    record = store.space(space_id)
    report = IndexReport(space=record.fingerprint, label=record.label)
    stop = stop or threading.Event()
    roots = _roots(store, shards, mapping)
    known: dict[int, dict[str, KnownFile]] = {}
    writer = Writer(store, record, report, total=shards.count(), progress=progress)
    for rows in shards.rows():
        pending: list[tuple[Job, Outcome, list[float] | None]] = []
        for i, raw in enumerate(rows["path"]):
            path = Path(remap(raw, mapping))
            root_id, root_dir = roots[str(path.parent)]
            if root_id not in known:
                known[root_id] = store.known_files(root_id, "", space_id)
            rel = os.path.relpath(path, root_dir)
            info = FileInfo(path, rows["size"][i], rows["mtime_ns"][i])
            vector, error = rows["vector"][i], rows["error"][i]
            old = known[root_id].get(rel)
            if (
                old is not None
                and (old.size, old.mtime_ns) == (info.size, info.mtime_ns)
                and (old.has_vector if vector is not None else old.status == FAILED)
            ):
                report.unchanged += 1
                writer.done += 1
                continue
            taken = rows["taken_at"][i]
            width, height = rows["width"][i], rows["height"][i]
            outcome = Outcome(
                error if vector is None else None,
                (width, height) if width is not None and height is not None else None,
                rows["content_hash"][i],
                datetime.fromisoformat(taken) if taken else None,
            )
            pending.append((Job(root_id, rel, info, is_update=old is not None), outcome, vector))
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            vectors = [v for _, _, v in chunk if v is not None]
            array = np.asarray(vectors, np.float32).reshape(len(vectors), record.spec.dim)
            writer.commit([(job, outcome) for job, outcome, _ in chunk], array)
            if stop.is_set():
                break
        if stop.is_set():
            break
    if writer.done < writer.total:
        report.interrupted, report.remaining = True, writer.total - writer.done
    report.seconds = time.perf_counter() - started
    return report, writer.index, writer.generation
