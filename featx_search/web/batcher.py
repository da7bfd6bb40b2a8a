"""Work that arrives together done in one call, on one thread.

Requests hand an item (a decoded upload, an image id) with a key and a batch function to
:meth:`Batcher.submit` and wait. The batcher's thread takes everything waiting under the
first waiting key (up to ``max_batch``), calls that key's function once on all their items,
and hands each request its result; requests that arrive meanwhile form the next batch. So a
lone request waits for nobody, and a burst costs one call per batch rather than one per
request. The event loop never runs the work.

The app keeps two: one for the model (uploads embedded together) and one for FAISS
(searches answered by one batched ``index.search``, which costs less per query than one
search each and leaves the cores to FAISS's own threads instead of many request threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from ..space import Space

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[T, R]):
    key: Hashable
    item: T
    work: Callable[[Sequence[T]], Sequence[R]]
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], value: object) -> None:
    if future.done():  # the client went away meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class Batcher:
    """Runs batch functions on one thread, batching the items that wait together."""

    def __init__(
        self,
        max_batch: int = 32,
        *,
        name: str = "featx-batch",
        on_thread: Callable[[], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.batches = 0  # calls made (for tests and benchmarks)
        self._waiting: list[_Waiting[Any, Any]] = []
        self._lock = threading.Lock()
        self._running = False
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=name, initializer=on_thread or (lambda: None)
        )

    async def submit(self, key: Hashable, item: T, work: Callable[[Sequence[T]], Sequence[R]]) -> R:
        """``work([item, ...])``'s result for ``item``, computed with other items waiting
        under ``key``. If a batch fails, each of its items is tried alone, so one bad item
        spoils only its own request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._waiting.append(_Waiting(key, item, work, future, loop))
            start = not self._running
            self._running = True
        if start:
            self._executor.submit(self._drain)
        return await future

    async def embed(self, space: Space, picture: Image.Image, *, trim: bool = False) -> np.ndarray:
        """The vector of ``picture`` in ``space`` (float32 (dim,)), by the space's model; with
        ``trim`` its frame bars cut away first."""

        def embed(pictures: Sequence[Image.Image]) -> list[np.ndarray]:
            return list(space.embed(list(pictures), trim=trim))

        return await self.submit(("embed", space.id, trim), picture, embed)

    def _take(self) -> list[_Waiting[Any, Any]]:
        """The next batch: waiting items under the first waiting key, oldest first."""
        with self._lock:
            if not self._waiting:
                self._running = False
                return []
            key = self._waiting[0].key
            batch = [w for w in self._waiting if w.key == key][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            return batch

    def _run(self, batch: list[_Waiting[Any, Any]]) -> list[object]:
        try:
            results = list(batch[0].work([w.item for w in batch]))
            self.batches += 1
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            return results
        except Exception as err:
            if len(batch) == 1:
                return [err]
        # One item spoiled the batch: each request gets its own answer.
        return [result for w in batch for result in self._run([w])]

    def _drain(self) -> None:
        while batch := self._take():
            for waiting, result in zip(batch, self._run(batch), strict=True):
                with contextlib.suppress(RuntimeError):  # that request's loop has closed
                    waiting.loop.call_soon_threadsafe(_settle, waiting.future, result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
