"""One model, one inference thread, and uploads that arrive together embedded in one call.

Requests hand their decoded image to :meth:`Batcher.embed` and wait. The inference thread
takes everything waiting (up to ``max_batch``, per space), runs the model once, and hands
each request its vector; requests that arrive while the model runs form the next batch. So
a lone request waits for nobody, and a burst costs one model call per batch rather than one
per request. The event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from ..space import Space


@dataclass
class _Waiting:
    space: Space
    picture: Image.Image
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException) -> None:
    if future.done():  # the client went away meanwhile
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class Batcher:
    """Embeds uploaded images on one inference thread, batching those that wait together."""

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self.batches = 0  # model calls made (for tests and benchmarks)
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()
        self._running = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="featx-infer")

    async def embed(self, space: Space, picture: Image.Image) -> np.ndarray:
        """The vector of ``picture`` in ``space`` (float32 (dim,))."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._lock:
            self._waiting.append(_Waiting(space, picture, future, loop))
            start = not self._running
            self._running = True
        if start:
            self._executor.submit(self._drain)
        return await future

    def _take(self) -> list[_Waiting]:
        """The next batch: waiting requests of the first waiting space, oldest first."""
        with self._lock:
            if not self._waiting:
                self._running = False
                return []
            space_id = self._waiting[0].space.id
            batch = [w for w in self._waiting if w.space.id == space_id][: self.max_batch]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
            return batch

    def _run(self, batch: list[_Waiting]) -> list[np.ndarray | BaseException]:
        try:
            vectors = batch[0].space.embed([w.picture for w in batch])
            self.batches += 1
            return list(vectors)
        except Exception as err:
            if len(batch) == 1:
                return [err]
        # One picture spoiled the batch: each request gets its own answer.
        return [result for w in batch for result in self._run([w])]

    def _drain(self) -> None:
        while batch := self._take():
            for waiting, result in zip(batch, self._run(batch), strict=True):
                with contextlib.suppress(RuntimeError):  # that request's loop has closed
                    waiting.loop.call_soon_threadsafe(_settle, waiting.future, result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
