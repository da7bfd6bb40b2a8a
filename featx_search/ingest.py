"""Syncing a space with folders: plan -> decode (threads, bounded) -> embed -> store batch.

The caller (:meth:`Space.sync`) holds the writer lock and publishes the index afterwards.
"""

from __future__ import annotations

import contextlib
import logging
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

from .ann.publish import writer_index
from .claims import Claims
from .errors import ConfigError, ImageError
from .images import decode_file, preprocess
from .options import Progress, ProgressCallback, SyncOptions
from .plan import Job, make_plan, start_report
from .records import FileResult, SpaceRecord
from .reports import IndexReport
from .whiten import stored

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .config import Preprocess, SpaceSpec
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
    pool: ThreadPoolExecutor, jobs: Iterable[Job], spec: SpaceSpec, window: int
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


class Model(Protocol):
    """What embeds a run's batches: the space's :class:`Extractor`, or its saved model."""

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def prepare_run(self, images: int, batch_size: int) -> None: ...


def saved_model(space: Space, options: SyncOptions, images: int) -> Model | None:
    """The space's saved OpenVINO model when a run of ``images`` images may embed with it
    instead of building the torch one (see :meth:`Space.saved_model`): every run into a
    space that OpenVINO computes (the model is its engine); else a run too short to win back
    torch's start-up (under ``OPENVINO_MIN_IMAGES``) on the CPU, with no runtime or freezing
    asked for, into an fp32 space whose saved model reproduces it."""
    from .compute import OPENVINO_MIN_IMAGES

    compute = options.compute
    if space.record.spec.engine == "openvino":
        # Another device or runtime torch: the extractor says why that cannot be.
        openvino = compute.device in ("auto", "cpu") and compute.runtime != "torch"
        return space.saved_model() if openvino else None
    if (
        images >= OPENVINO_MIN_IMAGES
        or compute.device not in ("auto", "cpu")
        or compute.runtime == "torch"
        or compute.freeze == "on"
    ):
        return None
    return space.saved_model()


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


def _loading(space: Space, options: SyncOptions, jobs: Sequence[Job]) -> Future[Model]:
    """The model for a run that embeds ``jobs``, prepared (see :meth:`Extractor.prepare_run`)
    on a thread of its own: the space's saved one when it may be used
    (:func:`saved_model`), else its extractor, built; an int8 space's model is calibrated
    on these files when it has none yet."""
    saved = saved_model(space, options, len(jobs))
    if saved is not None:
        log.info("embedding with the space's saved OpenVINO model (torch not loaded)")
    spec = space.record.spec

    def load() -> Model:
        if saved is not None:  # compiled for throughput meanwhile (see QueryModel.prepare_run)
            saved.prepare_run(len(jobs), options.batch_size)
            return saved
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


def _embed(extractor: Model | Future[Model] | None, batch: list[_Decoded], dim: int) -> np.ndarray:
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
    extractor: Model | Future[Model] | None,
    jobs: Iterable[Job],
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
) -> tuple[IndexReport, VectorIndex, int | None]:
    """Bring ``space`` up to date with the image files under ``paths``; returns the report,
    the space's index as updated in memory (the caller publishes it) and the generation of
    the store it mirrors (None: another writer changed the space meanwhile).

    Unchanged files (same size and mtime) are not opened; moved files (same bytes) keep their
    vectors; files that cannot be decoded are recorded as failed and the run goes on; work is
    committed per batch; files gone from a scanned folder are removed, unless the folder
    could not be read or is empty (see :class:`SyncOptions`). When ``stop`` is set the run
    ends after the batches in flight and the report says ``interrupted``.

    Files are decoded and embedded by ``engine``, by default :func:`embed_locally`; this
    thread is the run's one writer, committing each batch it gets back. On a server library
    other runs may write at once: this one embeds only the files it claimed (see
    :class:`Claims`).
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

    def embedded(jobs: Iterable[Job]) -> Generator[Embedded, None, None]:
        if engine is not None:
            return engine(list(jobs), record.spec, options, stop)
        return embed_locally(extractor, jobs, record.spec, options, stop)

    # Loaded only when some file needs embedding: a no-change run never imports torch.
    # It loads on its own thread while the first batches decode; the model thread waits
    # for it, and an error loading it ends the run at the first batch.
    extractor = _loading(space, options, plan.jobs) if plan.jobs and engine is None else None
    if store.location.path is None and plan.jobs:
        # A server library may have other writers: embed only files this run has claimed.
        with Claims(store, record.id, writer, options, stop) as claims:
            writer.owner = claims.owner
            writer.commit_all(claims.embedded(plan.jobs, embedded, streaming=engine is None))
    else:
        writer.commit_all(embedded(plan.jobs))
    if plan.removed and not report.interrupted:
        _, dropped = store.write_batch(record.id, [], list(plan.removed))
        writer.mirror([], dropped)
        report.removed = len(plan.removed)
        report.changes.extend(("remove", str(path)) for path in plan.removed.values())
    report.seconds = time.perf_counter() - started
    return report, writer.index, writer.generation


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
        # A private copy (readers keep the published one; an on-disk one is rebuilt when
        # published), and the generation of the store it mirrors: None once another
        # writer's batch came in between (see mirror).
        self.index, opened = writer_index(store, record)
        self.generation: int | None = opened
        # The index run whose claims a committed batch ends (see Claims).
        self.owner: str | None = None
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
        added, dropped = self.store.write_batch(self.record.id, results, claimed_by=self.owner)
        self.mirror(added, dropped, vectors)
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

    def mirror(
        self, added: Sequence[int], dropped: Sequence[int], vectors: np.ndarray | None = None
    ) -> None:
        """Mirror a committed write in the index: ``dropped`` ids out, ``added`` in (with
        their raw ``vectors``); an on-disk index cannot change (it is rebuilt when
        published). When the space's generation did not move by exactly this write, another
        writer's batch came in between: the index no longer mirrors the store, and
        ``generation`` becomes None (the index is then rebuilt to publish)."""
        if not self.index.ondisk:
            self.index.remove(np.asarray(dropped, np.int64))
        if len(added) and not self.index.ondisk:
            assert vectors is not None
            whitening = self.whitening
            self.index.add(
                np.asarray(added, np.int64),
                vectors if whitening is None else whitening.apply(vectors),
            )
        written = self.store.written_generation(self.record.id)
        if self.generation is None or written != self.generation + 1:
            self.generation = None
        else:
            self.generation = written

    def skip(self, files: int) -> None:
        """Count ``files`` that another index run wrote meanwhile as unchanged, done."""
        self.report.unchanged += files
        self.done += files


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
