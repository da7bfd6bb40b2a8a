"""Syncing a space with folders: plan -> decode (threads, bounded) -> embed -> store batch.

The caller (:meth:`Space.sync`) holds the writer lock and publishes the index afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from .ann.publish import open_index
from .errors import ImageError
from .images import decode_file, preprocess
from .options import Progress, ProgressCallback, SyncOptions
from .plan import Job, make_plan, start_report
from .records import FileResult, SpaceRecord
from .reports import IndexReport
from .whiten import stored

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .extract import Extractor
    from .space import Space
    from .store import Store
    from .whiten import Whitening


@dataclass(frozen=True)
class _Decoded:
    job: Job
    array: np.ndarray | None
    error: str | None
    size: tuple[int, int] | None
    content_hash: str | None = None
    taken_at: datetime | None = None


def _decode(job: Job, record: SpaceRecord) -> _Decoded:
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
    pool: ThreadPoolExecutor, jobs: Sequence[Job], record: SpaceRecord, window: int
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
    """Decoding threads when not given: one per core, at most 8 (not tuned further)."""
    return min(8, os.cpu_count() or 1)


def run_sync(
    space: Space,
    store: Store,
    paths: Iterable[str | os.PathLike[str]],
    options: SyncOptions,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> tuple[IndexReport, VectorIndex]:
    """Bring ``space`` up to date with the image files under ``paths``; returns the report
    and the space's index as updated in memory (the caller publishes it).

    Unchanged files (same size and mtime) are not opened; moved files (same bytes) keep their
    vectors; files that cannot be decoded are recorded as failed and the run goes on; work is
    committed per batch; files gone from a scanned folder are removed, unless the folder
    could not be read or is empty (see :class:`SyncOptions`). When ``stop`` is set the run
    ends after the batches in flight and the report says ``interrupted``.

    Three stages overlap: ``workers`` threads decode and preprocess files ahead of the model
    (at most two batches ahead), one thread runs the model on a batch, and meanwhile this
    thread commits the previous batch to the store and the index. Memory is bounded by about
    four batches of decoded input, however many files there are.
    """
    started = time.perf_counter()
    record = space.record
    plan = make_plan(
        store,
        record.id,
        paths,
        retry_failed=options.retry_failed,
        prune_empty=options.prune_empty,
    )
    report = start_report(record.fingerprint, record.label, plan)
    report.precision = record.spec.precision
    store.move([m for _, _, m in plan.moves])
    index, _ = open_index(store, record)  # a private copy: readers keep the published one
    whitening = stored(store, record)
    # Loaded only when some file needs embedding: a no-change run never imports torch.
    extractor = space.extractor(options.compute, writing=True) if plan.jobs else None
    if extractor is not None:  # before the decoding threads start (see prepare_run)
        extractor.prepare_run(len(plan.jobs), options.batch_size)
    stop = stop or threading.Event()
    done = 0

    def finish(batch: list[_Decoded], vectors: Future[np.ndarray]) -> None:
        nonlocal done
        _store_batch(store, record, index, whitening, batch, vectors.result(), report)
        done += len(batch)
        if progress is not None:
            progress(
                Progress(
                    done,
                    len(plan.jobs),
                    str(batch[-1].job.info.path),
                    report.failed,
                    time.perf_counter() - started,
                )
            )

    embed_started = time.perf_counter()
    pool = ThreadPoolExecutor(
        options.workers or default_workers(), thread_name_prefix="featx-decode"
    )
    model = ThreadPoolExecutor(1, thread_name_prefix="featx-model")
    decoded = _prefetch(pool, plan.jobs, record, 2 * options.batch_size)
    try:
        pending: tuple[list[_Decoded], Future[np.ndarray]] | None = None
        for batch in _batches(decoded, options.batch_size):
            running = model.submit(_embed, extractor, batch, record.spec.dim)
            if pending is not None:  # torch releases the GIL: this overlaps the model
                finish(*pending)
                if stop.is_set():  # store the batch already in the model too, then stop
                    finish(batch, running)
                    pending = None
                    break
            pending = (batch, running)
        if pending is not None:
            finish(*pending)
        report.embed_seconds = time.perf_counter() - embed_started
        if done < len(plan.jobs):
            report.interrupted = True
            report.remaining = len(plan.jobs) - done
    finally:
        decoded.close()
        pool.shutdown(wait=True, cancel_futures=True)
        model.shutdown(wait=True, cancel_futures=True)
    if plan.removed and not report.interrupted:
        _, dropped = store.write_batch(record.id, [], list(plan.removed))
        index.remove(np.asarray(dropped, np.int64))
        report.removed = len(plan.removed)
        report.changes.extend(("remove", str(path)) for path in plan.removed.values())
    report.seconds = time.perf_counter() - started
    return report, index


def _store_batch(
    store: Store,
    record: SpaceRecord,
    index: VectorIndex,
    whitening: Whitening | None,
    batch: list[_Decoded],
    vectors: np.ndarray,
    report: IndexReport,
) -> None:
    """Commit one embedded batch in one transaction and mirror it in the index."""
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
    index.add(
        np.asarray(added, np.int64), vectors if whitening is None else whitening.apply(vectors)
    )
    for d in batch:
        path = str(d.job.info.path)
        if d.error is not None:
            report.failed += 1
            report.failures.append((path, d.error))
        elif d.job.is_update:
            report.updated += 1
            report.changes.append(("update", path))
        else:
            report.added += 1
            report.changes.append(("add", path))
