"""A sync's claims on a server library: the files one index run claims a chunk at a time,
so that runs writing the library at once never embed a file twice (see :class:`Claims`;
the rows themselves are written by :meth:`Store.claim <featx_search.store.Store.claim>`)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from . import store_claims
from .errors import LibraryError
from .options import SyncOptions
from .plan import Job
from .records import FAILED, KnownFile

if TYPE_CHECKING:
    from .ingest import Embedded, Writer
    from .store import Store

log = logging.getLogger(__name__)

# Files claimed at a time when claiming goes chunk by chunk (an engine other than the local
# one, and files other runs held): this many batches.
CLAIM_BATCHES = 2

# How often a run waiting for files other runs hold tries to claim them again.
CLAIM_POLL_SECONDS = 0.5


class Claims:
    """The files one index run claims on a server library (see :meth:`Store.claim`), a
    chunk at a time, so that runs writing the library at once never embed a file twice. A
    file another run holds is left for later; one another run wrote meanwhile is skipped
    (counted unchanged). Once its own files are done, the run waits for the files other
    runs hold: they are written by them, or taken over when their holder's lease ran out or
    its session ended (a killed process). A thread renews this run's claims meanwhile."""

    def __init__(
        self,
        store: Store,
        space_id: int,
        writer: Writer,
        options: SyncOptions,
        stop: threading.Event,
    ) -> None:
        import socket
        import uuid

        self.store, self.space_id, self.writer, self.stop = store, space_id, writer, stop
        self.retry_failed = options.retry_failed
        self.batch = options.batch_size
        self.chunk = CLAIM_BATCHES * options.batch_size
        self.lease = store_claims.CLAIM_LEASE_SECONDS
        host = socket.gethostname()[:32]
        self.owner = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="featx-claims", daemon=True)

    def __enter__(self) -> Claims:
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._renewer.join()
        try:
            self.store.release_claims(self.owner)
        except LibraryError as err:  # they lapse with their lease; the run's error matters
            log.warning("could not release this run's claims: %s", err)

    def _renew(self) -> None:
        while not self._done.wait(self.lease / 3):
            try:
                self.store.renew_claims(self.owner, self.lease)
            except Exception as err:  # the next commit reports a lost connection
                log.warning("could not renew this run's claims: %s", err)

    def _written(self, job: Job, known: KnownFile | None) -> bool:
        """Whether another run wrote ``job``'s file as it is now, after the plan was made."""
        if known is None or (known.size, known.mtime_ns) != (job.info.size, job.info.mtime_ns):
            return False
        return known.has_vector or (known.status == FAILED and not self.retry_failed)

    def _take(self, chunk: Sequence[Job], held: list[Job]) -> list[Job]:
        """Claim ``chunk``: the jobs to embed now; those other runs hold go to ``held``,
        those another run wrote meanwhile are unclaimed and counted done."""
        got = self.store.claim(
            self.space_id, [(j.root_id, j.relpath) for j in chunk], self.owner, lease=self.lease
        )
        todo, written = [], []
        for job in chunk:
            key = (job.root_id, job.relpath)
            if key not in got:
                held.append(job)
            elif self._written(job, got[key]):
                written.append(key)
            else:
                todo.append(job)
        if written:
            self.store.unclaim(self.space_id, written, self.owner)
            self.writer.skip(len(written))
        return todo

    def _taking(self, jobs: Sequence[Job], size: int, held: list[Job]) -> Iterator[Job]:
        """``jobs`` claimed ``size`` at a time as they are pulled (held ones left out)."""
        for start in range(0, len(jobs), size):
            if self.stop.is_set():
                return
            yield from self._take(jobs[start : start + size], held)

    def embedded(
        self,
        jobs: Sequence[Job],
        embed: Callable[[Iterable[Job]], Generator[Embedded, None, None]],
        *,
        streaming: bool,
    ) -> Generator[Embedded, None, None]:
        """``embed`` run on the claimed ``jobs``; stops with ``stop``.

        ``streaming`` (the local engine, which pulls its jobs as it decodes): the first pass
        is one call of ``embed`` whose jobs are claimed a batch at a time as it pulls them,
        so that decoding and the model overlap as without claims. Otherwise, and for the
        files other runs held, ``embed`` is called on one claimed chunk at a time. A run
        waits for other runs' files only once all it claimed is written: two runs never
        wait for each other."""
        pending: list[Job] = list(jobs)
        if streaming:
            held: list[Job] = []
            with contextlib.closing(embed(self._taking(pending, self.batch, held))) as batches:
                yield from batches
            pending = held
            if pending and not self.stop.is_set():
                self._wait(len(pending))
        while pending and not self.stop.is_set():
            held = []
            for start in range(0, len(pending), self.chunk):
                if self.stop.is_set():
                    return
                todo = self._take(pending[start : start + self.chunk], held)
                if todo:
                    with contextlib.closing(embed(todo)) as batches:
                        yield from batches
            if held:
                self._wait(len(held))
            pending = held

    def _wait(self, files: int) -> None:
        log.info("%d files are held by other index runs; waiting for them", files)
        self.stop.wait(CLAIM_POLL_SECONDS)
