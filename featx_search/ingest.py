"""Syncing a space with folders: plan -> decode (threads, bounded) -> embed -> store batch.

The caller (:meth:`Space.sync`) holds the writer lock and publishes the index afterwards.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .ann.publish import open_index
from .errors import ConfigError, ImageError
from .images import decode_file, preprocess
from .options import Progress, ProgressCallback, SyncOptions
from .plan import Job, make_plan, start_report
from .records import FileResult, SpaceRecord
from .reports import IndexReport
from .whiten import stored

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .config import Preprocess, SpaceSpec
    from .extract import Extractor
    from .space import Space
    from .store import Store


@dataclass(frozen=True)
class Outcome:
    """What decoding one file gave besides its pixels: the reason it failed (None when it
    decoded), its size (width, height), content hash and capture time."""

    error: str | None
    size: tuple[int, int] | None = None
    content_hash: str | None = None
    taken_at: datetime | None = None


Embedded = tuple[list[tuple[Job, Outcome]], np.ndarray]
"""One batch back from an engine: each job with its outcome, and the float32 (ok, dim)
vectors of the jobs that decoded, in order."""


class Engine(Protocol):
    """What decodes and embeds a sync's jobs elsewhere than in this process's threads (the
    Ray engine, :mod:`featx_search.distributed`): batches of at most ``options.batch_size``
    jobs, in any order, each job once; it stops after the batch in flight once ``stop`` is
    set."""

    def __call__(
        self, jobs: Sequence[Job], spec: SpaceSpec, options: SyncOptions, stop: threading.Event
    ) -> Generator[Embedded, None, None]: ...


@dataclass(frozen=True)
class _Decoded:
    job: Job
    array: np.ndarray | None
    outcome: Outcome


def decode(path: Path, spec: Preprocess) -> tuple[np.ndarray | None, Outcome]:
    """One file read, hashed and preprocessed as ``spec`` says: float32 (3, H, W), or None
    and the reason in the outcome. Never raises: a bad file must never stop a run."""
    try:
        got = decode_file(path, min_side=spec.resize)
        array = preprocess(got.image, spec)
        got.image.close()  # free the pixels now, not when the collector gets to them
        return array, Outcome(None, got.size, got.content_hash, got.taken_at)
    except ImageError as err:
        return None, Outcome(err.message)
    except Exception as err:  # invariant 3
        return None, Outcome(f"{type(err).__name__}: {err}")


def _decode(job: Job, spec: SpaceSpec) -> _Decoded:
    return _Decoded(job, *decode(job.info.path, spec.preprocess))


def _prefetch(
    pool: ThreadPoolExecutor, jobs: Sequence[Job], spec: SpaceSpec, window: int
) -> Generator[_Decoded, None, None]:
    """Decode ``jobs`` in order with at most ``window`` results in flight (bounded memory).

    Closing the generator early (an error or Ctrl-C downstream) cancels what has not started.
    """
    queue = iter(jobs)
    pending: deque[Future[_Decoded]] = deque(
        pool.submit(_decode, job, spec) for job in islice(queue, window)
    )
    try:
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(_decode, job, spec) for job in islice(queue, 1))
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


def calibration_images(jobs: Sequence[Job], spec: SpaceSpec, workers: int | None) -> np.ndarray:
    """An int8 space's calibration sample from a run's ``jobs``: up to
    :data:`~featx_search.extract.int8.CALIBRATION_IMAGES` files drawn by a hash of their paths,
    decoded and preprocessed as indexing does (files that fail are left out): float32
    (N, 3, H, W)."""
    from .extract.int8 import sample

    chosen = sample(jobs, key=lambda job: str(job.info.path))
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        decoded = list(pool.map(lambda job: _decode(job, spec).array, chosen))
    arrays = [array for array in decoded if array is not None]
    size = spec.preprocess.crop
    return np.stack(arrays) if arrays else np.empty((0, 3, size, size), np.float32)


def _loading(space: Space, options: SyncOptions, jobs: Sequence[Job]) -> Future[Extractor]:
    """The space's extractor for a run that embeds ``jobs``, built and prepared (see
    :meth:`Extractor.prepare_run`) on a thread of its own; an int8 space's model is
    calibrated on these files when it has none yet."""
    spec = space.record.spec

    def load() -> Extractor:
        extractor = space.extractor(
            options.compute,
            writing=True,
            calibration=lambda: calibration_images(jobs, spec, options.workers),
        )
        extractor.prepare_run(len(jobs), options.batch_size)
        return extractor

    loader = ThreadPoolExecutor(1, thread_name_prefix="featx-load")
    try:
        return loader.submit(load)
    finally:
        loader.shutdown(wait=False)


def _embed(
    extractor: Extractor | Future[Extractor] | None, batch: list[_Decoded], dim: int
) -> np.ndarray:
    """Vectors for the decoded files of ``batch``, in order (float32, (ok, dim)); waits for
    an extractor still loading."""
    arrays = [d.array for d in batch if d.array is not None]
    if not arrays or extractor is None:
        return np.empty((0, dim), np.float32)
    model = extractor.result() if isinstance(extractor, Future) else extractor
    return model.embed(np.stack(arrays))


def default_workers() -> int:
    """Decoding threads when not given: one per core, at most 8 (not tuned further)."""
    return min(8, os.cpu_count() or 1)


def embed_locally(
    extractor: Extractor | Future[Extractor] | None,
    jobs: Sequence[Job],
    spec: SpaceSpec,
    options: SyncOptions,
    stop: threading.Event,
) -> Generator[Embedded, None, None]:
    """The local engine: ``jobs`` decoded and embedded in this process, batch by batch, in
    order; ``extractor`` may still be loading (a future). Three stages overlap:
    ``options.workers`` threads decode and preprocess files
    ahead of the model (at most two batches ahead), one thread runs the model on a batch,
    and meanwhile the caller handles the previous batch. Memory is bounded by about four
    batches of decoded input, however many files there are. Once ``stop`` is set it yields
    the batch already in the model, then ends."""
    pool = ThreadPoolExecutor(
        options.workers or default_workers(), thread_name_prefix="featx-decode"
    )
    model = ThreadPoolExecutor(1, thread_name_prefix="featx-model")
    decoded = _prefetch(pool, jobs, spec, 2 * options.batch_size)

    def done(batch: list[_Decoded], vectors: Future[np.ndarray]) -> Embedded:
        return [(d.job, d.outcome) for d in batch], vectors.result()

    try:
        pending: tuple[list[_Decoded], Future[np.ndarray]] | None = None
        for batch in _batches(decoded, options.batch_size):
            running = model.submit(_embed, extractor, batch, spec.dim)
            if pending is not None:  # torch releases the GIL: the caller overlaps the model
                yield done(*pending)
                if stop.is_set():  # the batch already in the model too, then stop
                    pending = None
                    yield done(batch, running)
                    break
            pending = (batch, running)
        if pending is not None:
            yield done(*pending)
    finally:
        decoded.close()
        pool.shutdown(wait=True, cancel_futures=True)
        model.shutdown(wait=True, cancel_futures=True)


def run_sync(
    space: Space,
    store: Store,
    paths: Iterable[str | os.PathLike[str]],
    options: SyncOptions,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    engine: Engine | None = None,
) -> tuple[IndexReport, VectorIndex]:
    """Bring ``space`` up to date with the image files under ``paths``; returns the report
    and the space's index as updated in memory (the caller publishes it).

    Unchanged files (same size and mtime) are not opened; moved files (same bytes) keep their
    vectors; files that cannot be decoded are recorded as failed and the run goes on; work is
    committed per batch; files gone from a scanned folder are removed, unless the folder
    could not be read or is empty (see :class:`SyncOptions`). When ``stop`` is set the run
    ends after the batches in flight and the report says ``interrupted``.

    Files are decoded and embedded by ``engine``, by default :func:`embed_locally`; this
    thread is the one writer, committing each batch it gets back.
    """
    started = time.perf_counter()
    record = space.record
    if engine is not None and record.spec.precision == "int8":
        raise ConfigError(
            "precision int8 runs with the local engine only (its model is calibrated and "
            "saved by the run that makes the space)",
            hint="use engine local, or another precision",
            param="engine",
        )
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
    writer = Writer(store, record, report, total=len(plan.jobs), progress=progress)
    stop = stop or threading.Event()
    if engine is not None:
        batches: Generator[Embedded, None, None] = engine(plan.jobs, record.spec, options, stop)
    else:
        # Loaded only when some file needs embedding: a no-change run never imports torch.
        # It loads on its own thread while the first batches decode; the model thread waits
        # for it, and an error loading it ends the run at the first batch.
        extractor = _loading(space, options, plan.jobs) if plan.jobs else None
        batches = embed_locally(extractor, plan.jobs, record.spec, options, stop)
    writer.commit_all(batches)
    if plan.removed and not report.interrupted:
        _, dropped = store.write_batch(record.id, [], list(plan.removed))
        writer.index.remove(np.asarray(dropped, np.int64))
        report.removed = len(plan.removed)
        report.changes.extend(("remove", str(path)) for path in plan.removed.values())
    report.seconds = time.perf_counter() - started
    return report, writer.index


def file_result(job: Job, outcome: Outcome, vector: np.ndarray | None) -> FileResult:
    """What :meth:`Store.write_batch` records for ``job``: its vector, or its failure."""
    return FileResult(
        root_id=job.root_id,
        relpath=job.relpath,
        size=job.info.size,
        mtime_ns=job.info.mtime_ns,
        vector=vector,
        error=outcome.error,
        width=outcome.size[0] if outcome.size else None,
        height=outcome.size[1] if outcome.size else None,
        content_hash=outcome.content_hash,
        taken_at=outcome.taken_at,
    )


class Writer:
    """The one writer of a sync: commits each embedded batch in one transaction and mirrors
    it in a private copy of the space's index (``index``, published by the caller), adding
    to ``report`` and calling ``progress`` after each batch."""

    def __init__(
        self,
        store: Store,
        record: SpaceRecord,
        report: IndexReport,
        *,
        total: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.store, self.record, self.report = store, record, report
        self.index, _ = open_index(store, record)  # a private copy: readers keep the published
        self.whitening = stored(store, record)
        self.total, self.done, self.progress = total, 0, progress
        self.started = time.perf_counter()

    def commit_all(self, batches: Generator[Embedded, None, None]) -> None:
        """Commit every batch ``batches`` yields; when fewer than ``total`` jobs came back
        (the engine stopped), the report says ``interrupted`` and how many remain."""
        embed_started = time.perf_counter()
        with contextlib.closing(batches):  # an engine's threads or actors stop with it
            for batch, vectors in batches:
                self.commit(batch, vectors)
        self.report.embed_seconds = time.perf_counter() - embed_started
        if self.done < self.total:
            self.report.interrupted = True
            self.report.remaining = self.total - self.done

    def commit(self, batch: list[tuple[Job, Outcome]], vectors: np.ndarray) -> None:
        """Commit one embedded batch in one transaction and mirror it in the index."""
        ok = [job for job, outcome in batch if outcome.error is None]
        by_job = {id(job): v for job, v in zip(ok, vectors, strict=True)}
        results = [file_result(job, outcome, by_job.get(id(job))) for job, outcome in batch]
        added, dropped = self.store.write_batch(self.record.id, results)
        self.index.remove(np.asarray(dropped, np.int64))
        whitening = self.whitening
        self.index.add(
            np.asarray(added, np.int64), vectors if whitening is None else whitening.apply(vectors)
        )
        tally(self.report, batch)
        self.done += len(batch)
        if self.progress is not None and batch:
            self.progress(
                Progress(
                    self.done,
                    self.total,
                    str(batch[-1][0].info.path),
                    self.report.failed,
                    time.perf_counter() - self.started,
                )
            )


def tally(report: IndexReport, batch: list[tuple[Job, Outcome]]) -> None:
    """Count a handled batch in ``report``: failures with their reason, additions, updates."""
    for job, outcome in batch:
        path = str(job.info.path)
        if outcome.error is not None:
            report.failed += 1
            report.failures.append((path, outcome.error))
        elif job.is_update:
            report.updated += 1
            report.changes.append(("update", path))
        else:
            report.added += 1
            report.changes.append(("add", path))
