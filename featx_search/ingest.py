"""The indexing pipeline: scan -> decode (threads, bounded) -> extract -> store -> index."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, ImageError
from .extract import Extractor
from .images import decode_file, hash_file, preprocess
from .index import VectorIndex, open_index, publish_index
from .reader import FAILED, FileResult, Move, SpaceRecord
from .scan import FileInfo, scan, stat_or_lstat
from .whiten import for_index

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an indexing run did (or, with ``dry_run``, would do).

    ``changes`` lists (action, path) for every file added, updated, moved ("old -> new") or
    removed; ``held`` counts stored files kept because their folder could not be read or
    looked unmounted; ``interrupted`` is set when Ctrl-C stopped the run after a batch.
    ``seconds`` is the whole run; ``embed_seconds`` the part from handing the first file to
    the decoders to committing the last batch, i.e. without start-up (loading, converting or
    freezing the model) and without publishing the index file. ``to_dict`` gives the
    ``--json`` summary.
    """

    space: str
    label: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    held: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    remaining: int = 0
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def indexed(self) -> int:
        """Files embedded in this run (added + updated)."""
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "space": self.space,
            "label": self.label,
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "held": self.held,
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "interrupted": self.interrupted,
            "remaining": self.remaining,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
        }
        if self.dry_run:
            out["changes"] = [{"action": a, "path": p} for a, p in self.changes]
        return out


@dataclass(frozen=True)
class Progress:
    """Passed to the progress callback after each batch: files done of total to embed."""

    done: int
    total: int
    path: str
    failed: int = 0
    elapsed: float = 0.0


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class _Job:
    root_id: int
    relpath: str
    info: FileInfo
    is_update: bool  # the file's content changed (or it failed before and is tried again)
    known: bool = True  # the store has a row for this path


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
    moves: list[tuple[Path, Path, Move]] = field(default_factory=list)
    removed: dict[int, Path] = field(default_factory=dict)
    held: int = 0
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _held_back(rel: str, unreadable: Sequence[str]) -> bool:
    return any(u in (".", "") or rel == u or rel.startswith(u + os.sep) for u in unreadable)


def _is_empty_folder(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return True


def _plan(
    store: Store,
    record: SpaceRecord,
    paths: Iterable[str | os.PathLike[str]],
    *,
    dry_run: bool = False,
    retry_failed: bool = False,
    prune_empty: bool = False,
) -> _Plan:
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
        root_id, root_dir = store.find_root(folder) if dry_run else store.root_for(folder)
        prefix = "" if folder == root_dir else os.path.relpath(folder, root_dir)
        known = (
            {}
            if root_id is None
            else store.known_files(root_id, prefix if whole else "", record.id)
        )
        unreadable: list[Path] = []
        found: Iterable[FileInfo | None] = (
            scan(folder, unreadable) if whole else [stat_or_lstat(folder / path.name)]
        )
        visited: set[str] = set()
        for info in found:
            if info is None:
                continue
            rel = os.path.relpath(info.path, root_dir)
            visited.add(rel)
            if (root_id or 0, rel) in seen:
                continue
            seen.add((root_id or 0, rel))
            old = known.get(rel)
            same = old is not None and (old.size, old.mtime_ns) == (info.size, info.mtime_ns)
            if (
                same
                and old is not None
                and (old.has_vector or (old.status == FAILED and not retry_failed))
            ):
                plan.unchanged += 1
            else:
                is_update = old is not None and (not same or old.status == FAILED)
                plan.jobs.append(_Job(root_id or 0, rel, info, is_update, known=old is not None))
        if not whole:
            continue
        gone = {rel: k for rel, k in known.items() if rel not in visited}
        if not gone:
            continue
        if not visited and not prune_empty and _is_empty_folder(folder):
            # An unmounted drive usually leaves an empty mount point behind.
            plan.held += len(gone)
            plan.warnings.append(
                f"{folder} is empty: it looks unmounted, so its {len(gone)} stored files are "
                "kept (pass --prune-empty if they were really deleted)"
            )
            continue
        skip = [os.path.relpath(u, root_dir) for u in unreadable]
        for rel, k in gone.items():
            if _held_back(rel, skip):
                plan.held += 1
            else:
                plan.removed[k.id] = root_dir / rel
        for u in unreadable:
            plan.warnings.append(f"cannot read {u}: stored files under it are kept")
    _find_moves(store, record, plan)
    return plan


def _find_moves(store: Store, record: SpaceRecord, plan: _Plan) -> None:
    """Turn new files whose bytes equal a vanished stored file into moves of that file.

    Only new files with the size of some stored file are hashed. A source qualifies when a
    scan saw it gone, or when its file is missing while its root folder is present (a file
    moved in from a root not scanned in this run); a source on an absent root is never
    taken, since that root may only be unmounted.
    """
    if all(job.known for job in plan.jobs):
        return
    sizes = store.stored_sizes()
    hashed: dict[int, str] = {}
    for i, job in enumerate(plan.jobs):
        if not job.known and job.info.size in sizes:
            try:
                hashed[i] = hash_file(job.info.path)
            except OSError:
                continue  # decoding will record why it cannot be read
    copies = store.copies(hashed.values(), record.id)
    taken: set[int] = set()
    moved_jobs: set[int] = set()
    for i, digest in hashed.items():
        for source in copies.get(digest, []):
            if source.id in taken:
                continue
            vanished = source.id in plan.removed or (
                not os.path.lexists(source.path) and not _is_empty_folder(source.root)
            )
            if not vanished:
                continue
            job = plan.jobs[i]
            taken.add(source.id)
            plan.removed.pop(source.id, None)
            plan.moves.append(
                (
                    source.path,
                    job.info.path,
                    Move(source.id, job.root_id, job.relpath, job.info.size, job.info.mtime_ns),
                )
            )
            if source.has_vector or source.status == FAILED:
                moved_jobs.add(i)
            else:  # moved, but not yet embedded in this space
                plan.jobs[i] = _Job(job.root_id, job.relpath, job.info, is_update=False)
            break
    plan.jobs = [job for i, job in enumerate(plan.jobs) if i not in moved_jobs]


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
    """Decoding threads when not given: one per core, at most 8 (not tuned further)."""
    return min(8, os.cpu_count() or 1)


@contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """While indexing, the first Ctrl-C asks the run to stop after the batches in flight; a
    second one stops at once (the committed batches are kept either way)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping after the batch in flight (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_index(
    store: Store,
    load_extractor: Callable[[], Extractor],
    record: SpaceRecord,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 16,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    prune_empty: bool = False,
) -> IndexReport:
    """Bring ``record``'s space up to date with the image files under ``paths``.

    Unchanged files (same size and mtime) are not opened; moved files (same bytes) keep their
    vectors; files that cannot be decoded are recorded as failed and the run goes on (they are
    tried again when they change, or with ``retry_failed``); work is committed per batch;
    files gone from a scanned folder are removed, unless the folder could not be read or is
    empty (``prune_empty`` allows the latter). The space's index file is published at the
    end. ``dry_run`` only plans: nothing is written and no model is loaded.

    Three stages overlap: ``workers`` threads decode and preprocess files ahead of the model
    (at most two batches ahead), one thread runs the model on a batch, and meanwhile this
    thread commits the previous batch to the store and the index. Memory is bounded by about
    four batches of decoded input, however many files there are.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    report = IndexReport(space=record.fingerprint, label=record.label, dry_run=dry_run)
    plan = _plan(
        store, record, paths, dry_run=dry_run, retry_failed=retry_failed, prune_empty=prune_empty
    )
    report.unchanged, report.missing, report.held = plan.unchanged, plan.missing, plan.held
    report.warnings = plan.warnings
    report.moved = len(plan.moves)
    report.changes.extend(("move", f"{old} -> {new}") for old, new, _ in plan.moves)
    if dry_run:
        for job in plan.jobs:
            report.changes.append(("update" if job.is_update else "add", str(job.info.path)))
            if job.is_update:
                report.updated += 1
            else:
                report.added += 1
        report.changes.extend(("remove", str(path)) for path in plan.removed.values())
        report.removed = len(plan.removed)
        report.seconds = time.perf_counter() - started
        return report
    store.move([m for _, _, m in plan.moves])
    index, _ = open_index(store, record)
    # Loaded only when some file needs embedding: a no-change run never imports torch.
    extractor = load_extractor() if plan.jobs else None
    if extractor is not None:  # before the decoding threads start (see prepare_run)
        extractor.prepare_run(len(plan.jobs), batch_size)
    done = 0

    def finish(batch: list[_Decoded], vectors: Future[np.ndarray]) -> None:
        nonlocal done
        _store_batch(store, record, index, batch, vectors.result(), report)
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
    with _stop_on_interrupt() as stop:
        pool = ThreadPoolExecutor(workers or default_workers(), thread_name_prefix="featx-decode")
        model = ThreadPoolExecutor(1, thread_name_prefix="featx-model")
        decoded = _prefetch(pool, plan.jobs, record, 2 * batch_size)
        try:
            pending: tuple[list[_Decoded], Future[np.ndarray]] | None = None
            for batch in _batches(decoded, batch_size):
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
        current = store.space(record.id)
        manifest = store.manifest(record.id)
        if manifest is None or manifest.generation != current.generation:
            publish_index(store, current, index, current.generation)
    report.seconds = time.perf_counter() - started
    return report


def _store_batch(
    store: Store,
    record: SpaceRecord,
    index: VectorIndex,
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
    index.add(np.asarray(added, np.int64), for_index(store, record, vectors))
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
