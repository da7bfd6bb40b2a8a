"""The indexing pipeline: scan -> decode (threads, bounded) -> extract -> store -> index."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ImageError
from .extract import Extractor
from .images import decode_file, preprocess
from .index import open_index, publish_index
from .scan import FileInfo, scan, stat_or_lstat
from .store import FAILED, FileResult, SpaceRecord, Store

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an indexing run did. ``to_dict`` gives the ``--json`` summary."""

    space: str
    label: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def indexed(self) -> int:
        """Files embedded in this run (added + updated)."""
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "label": self.label,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "removed": self.removed,
            "missing": list(self.missing),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Progress:
    """Passed to the progress callback after each batch: files done of total to embed."""

    done: int
    total: int
    path: str


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class _Job:
    root_id: int
    relpath: str
    info: FileInfo
    is_update: bool


@dataclass(frozen=True)
class _Decoded:
    job: _Job
    array: np.ndarray | None
    error: str | None
    size: tuple[int, int] | None
    content_hash: str | None = None
    taken_at: datetime | None = None


@dataclass
class _Plan:
    jobs: list[_Job] = field(default_factory=list)
    unchanged: int = 0
    removed: list[int] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _plan(store: Store, record: SpaceRecord, paths: Iterable[str | os.PathLike[str]]) -> _Plan:
    plan = _Plan()
    seen: set[tuple[int, str]] = set()
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        whole = path.is_dir()
        if whole:
            folder = path.resolve()
        elif path.exists() or path.is_symlink():
            folder = path.parent.resolve()
        else:
            plan.missing.append(str(path))
            log.warning("%s does not exist; nothing under it is changed", path)
            continue
        root_id, root_dir = store.root_for(folder)
        prefix = "" if folder == root_dir else os.path.relpath(folder, root_dir)
        known = store.known_files(root_id, prefix if whole else "", record.id)
        found: Iterable[FileInfo | None] = (
            scan(folder) if whole else [stat_or_lstat(folder / path.name)]
        )
        visited: set[str] = set()
        for info in found:
            if info is None:
                continue
            rel = os.path.relpath(info.path, root_dir)
            visited.add(rel)
            if (root_id, rel) in seen:
                continue
            seen.add((root_id, rel))
            old = known.get(rel)
            same = old is not None and (old.size, old.mtime_ns) == (info.size, info.mtime_ns)
            if same and old is not None and (old.has_vector or old.status == FAILED):
                plan.unchanged += 1
            else:
                plan.jobs.append(_Job(root_id, rel, info, is_update=old is not None and not same))
        if whole:
            plan.removed.extend(k.id for rel, k in known.items() if rel not in visited)
    return plan


def _decode(job: _Job, record: SpaceRecord) -> _Decoded:
    spec = record.spec.preprocess
    try:
        got = decode_file(job.info.path, min_side=spec.resize)
        array = preprocess(got.image, spec)
        got.image.close()  # free the pixels now, not when the collector gets to them
        return _Decoded(job, array, None, got.size, got.content_hash, got.taken_at)
    except ImageError as err:
        return _Decoded(job, None, err.message, None)
    except Exception as err:  # a bad file must never stop the run (invariant 3)
        return _Decoded(job, None, f"{type(err).__name__}: {err}", None)


def _prefetch(
    pool: ThreadPoolExecutor, jobs: Sequence[_Job], record: SpaceRecord, window: int
) -> Generator[_Decoded, None, None]:
    """Decode ``jobs`` in order with at most ``window`` results in flight (bounded memory).

    Closing the generator early (an error or Ctrl-C downstream) cancels what has not started.
    """
    queue = iter(jobs)
    pending: deque[Future[_Decoded]] = deque(
        pool.submit(_decode, job, record) for job in islice(queue, window)
    )
    try:
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(_decode, job, record) for job in islice(queue, 1))
    finally:
        for future in pending:
            future.cancel()


def _batches(items: Iterator[_Decoded], size: int) -> Iterator[list[_Decoded]]:
    batch: list[_Decoded] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _embed(extractor: Extractor | None, batch: list[_Decoded], dim: int) -> np.ndarray:
    """Vectors for the decoded files of ``batch``, in order (float32, (ok, dim))."""
    arrays = [d.array for d in batch if d.array is not None]
    if not arrays or extractor is None:
        return np.empty((0, dim), np.float32)
    return extractor.embed(np.stack(arrays))


def default_workers() -> int:
    """Decoding threads when not given: one per core, at most 8 (measured: README, "Speed")."""
    return min(8, os.cpu_count() or 1)


def run_index(
    store: Store,
    load_extractor: Callable[[], Extractor],
    record: SpaceRecord,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 16,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> IndexReport:
    """Bring ``record``'s space up to date with the image files under ``paths``.

    Unchanged files (same size and mtime) are not opened; files that cannot be decoded are
    recorded as failed and the run goes on; work is committed per batch; files gone from a
    scanned folder are removed. The space's index file is published at the end.

    Three stages overlap: ``workers`` threads decode and preprocess files ahead of the model
    (at most two batches in flight), one thread runs the model on a batch, and meanwhile this
    thread writes the previous batch to the store and the index. Memory is bounded by about
    four batches of decoded input, however many files there are.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    report = IndexReport(space=record.fingerprint, label=record.label)
    plan = _plan(store, record, paths)
    report.unchanged, report.missing = plan.unchanged, plan.missing
    index, _ = open_index(store, record)
    # Loaded only when some file needs embedding: a no-change run never imports torch.
    extractor = load_extractor() if plan.jobs else None
    dim = record.spec.dim
    done = 0

    def write(batch: list[_Decoded], vectors: np.ndarray) -> None:
        nonlocal done
        ok = [d for d in batch if d.array is not None]
        by_job = {id(d.job): v for d, v in zip(ok, vectors, strict=True)}
        results = [
            FileResult(
                root_id=d.job.root_id,
                relpath=d.job.relpath,
                size=d.job.info.size,
                mtime_ns=d.job.info.mtime_ns,
                vector=by_job.get(id(d.job)),
                error=d.error,
                width=d.size[0] if d.size else None,
                height=d.size[1] if d.size else None,
                content_hash=d.content_hash,
                taken_at=d.taken_at,
            )
            for d in batch
        ]
        added, dropped = store.write_batch(record.id, results)
        index.remove(np.asarray(dropped, np.int64))
        index.add(np.asarray(added, np.int64), vectors)
        for d in batch:
            if d.error is not None:
                report.failed += 1
                report.failures.append((str(d.job.info.path), d.error))
            elif d.job.is_update:
                report.updated += 1
            else:
                report.added += 1
        done += len(batch)
        if progress is not None:
            progress(Progress(done, len(plan.jobs), str(batch[-1].job.info.path)))

    with (
        ThreadPoolExecutor(workers or default_workers(), "featx-decode") as pool,
        ThreadPoolExecutor(1, "featx-model") as model,
    ):
        decoded = _prefetch(pool, plan.jobs, record, 2 * batch_size)
        try:
            previous: tuple[list[_Decoded], Future[np.ndarray]] | None = None
            for batch in _batches(decoded, batch_size):
                running = model.submit(_embed, extractor, batch, dim)
                if previous is not None:  # torch releases the GIL: this overlaps the model
                    write(previous[0], previous[1].result())
                previous = (batch, running)
            if previous is not None:
                write(previous[0], previous[1].result())
        finally:
            decoded.close()
    if plan.removed:
        _, dropped = store.write_batch(record.id, [], plan.removed)
        index.remove(np.asarray(dropped, np.int64))
        report.removed = len(plan.removed)
    current = store.space(record.id)
    manifest = store.manifest(record.id)
    if manifest is None or manifest.generation != current.generation:
        publish_index(store, current, index, current.generation)
    report.seconds = time.perf_counter() - started
    return report
