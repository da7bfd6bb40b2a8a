"""The indexing pipeline: scan -> decode (threads, bounded) -> extract -> store -> index."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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
        return _Decoded(job, array, None, got.size, got.content_hash, got.taken_at)
    except ImageError as err:
        return _Decoded(job, None, err.message, None)
    except Exception as err:  # a bad file must never stop the run (invariant 3)
        return _Decoded(job, None, f"{type(err).__name__}: {err}", None)


def _prefetch(
    pool: ThreadPoolExecutor, jobs: Sequence[_Job], record: SpaceRecord, window: int
) -> Iterator[_Decoded]:
    """Decode ``jobs`` in order with at most ``window`` results in flight (bounded memory)."""
    queue = iter(jobs)
    pending: deque[Future[_Decoded]] = deque(
        pool.submit(_decode, job, record) for job in islice(queue, window)
    )
    while pending:
        yield pending.popleft().result()
        pending.extend(pool.submit(_decode, job, record) for job in islice(queue, 1))


def _batches(items: Iterator[_Decoded], size: int) -> Iterator[list[_Decoded]]:
    batch: list[_Decoded] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    report = IndexReport(space=record.fingerprint, label=record.label)
    plan = _plan(store, record, paths)
    report.unchanged, report.missing = plan.unchanged, plan.missing
    index, _ = open_index(store, record)
    # Loaded only when some file needs embedding: a no-change run never imports torch.
    extractor = load_extractor() if plan.jobs else None
    workers = workers or min(8, os.cpu_count() or 1)
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="featx-decode") as pool:
        for batch in _batches(_prefetch(pool, plan.jobs, record, 2 * batch_size), batch_size):
            ok = [(d, d.array) for d in batch if d.array is not None]
            vectors = np.empty((0, record.spec.dim), np.float32)
            if ok and extractor is not None:
                vectors = extractor.embed(np.stack([array for _, array in ok]))
            by_job = {id(d.job): v for (d, _), v in zip(ok, vectors, strict=True)}
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
