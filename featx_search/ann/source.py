"""Where a build, tuning or a recall run reads vectors from: a :class:`VectorSource` streams
them in chunks and picks rows by position or id, so that nothing holds the whole library
(numpy only).

The store's source is :class:`featx_search.reader.StoredVectors` (one snapshot, read in pages
by id); :class:`ArraySource` serves arrays already in memory; :class:`Transformed` applies the
space's whitening on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

# Rows per chunk of a streamed build or ground truth: 64 MiB of 256-d float32 vectors.
CHUNK = 65_536


class VectorSource(Protocol):
    """Vectors under int64 ids in a fixed order (ascending ids for the store)."""

    @property
    def count(self) -> int:
        """How many vectors there are."""
        ...

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (M,), vectors float32 (M, d)) for consecutive runs of at most ``size``
        rows, in order; the same runs each time."""
        ...

    def pick(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows at ascending ``positions`` (0-based, in order): (ids, vectors)."""
        ...

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of those ``ids`` that exist: (ids, vectors), ascending ids."""
        ...


class ArraySource:
    """A :class:`VectorSource` over (N,) ids and (N, d) vectors in memory (ids in any order)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids = np.asarray(ids, np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._order: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.ids)

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.ids), size):
            yield self.ids[start : start + size], self.vectors[start : start + size]

    def pick(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[positions], self.vectors[positions]

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        order = self._order
        sorted_ids = self.ids[order]
        wanted = np.unique(np.asarray(ids, np.int64))
        if len(sorted_ids) == 0:
            return wanted[:0], self.vectors[:0]
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, len(sorted_ids) - 1)
        ok = sorted_ids[pos] == wanted
        return wanted[ok], self.vectors[order[pos[ok]]]


class Transformed:
    """A source's vectors passed through ``transform`` (e.g. the space's whitening)."""

    def __init__(self, source: VectorSource, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        self.source, self.transform = source, transform

    @property
    def count(self) -> int:
        return self.source.count

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vectors in self.source.chunks(size):
            yield ids, self._apply(vectors)

    def pick(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = self.source.pick(positions)
        return ids, self._apply(vectors)

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found, vectors = self.source.fetch(ids)
        return found, self._apply(vectors)

    def _apply(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.transform(vectors), dtype=np.float32)


def sample_positions(count: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct positions of ``count`` drawn with ``seed``, ascending (all of them
    when ``size`` >= ``count``): int64."""
    if size >= count:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size, replace=False)).astype(np.int64)
