"""Nearest-neighbour queries against a space's index, returned as :class:`Match` rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .index import VectorIndex
from .indexspec import SearchParams
from .store import Store


@dataclass(frozen=True)
class Match:
    """One result: 1-based ``rank``, cosine ``score`` in [-1, 1], the image's id and path."""

    rank: int
    score: float
    image_id: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")


def search_vectors(
    store: Store,
    index: VectorIndex,
    queries: np.ndarray,
    k: int,
    *,
    params: SearchParams | None = None,
) -> list[list[Match]]:
    """The ``k`` nearest stored images for each row of ``queries`` (float32 (Q, dim)).

    ``params`` override the index's nprobe / efSearch / rerank for these queries."""
    check_k(k)
    scores, ids = index.search(queries, k, params=params)
    paths = store.paths(int(i) for i in np.unique(ids) if i >= 0)
    results: list[list[Match]] = []
    for row_scores, row_ids in zip(scores, ids, strict=False):
        matches: list[Match] = []
        for score, image_id in zip(row_scores, row_ids, strict=False):
            if image_id < 0 or int(image_id) not in paths:
                continue  # FAISS pads with -1; a row deleted meanwhile has no path
            matches.append(
                Match(len(matches) + 1, float(score), int(image_id), paths[int(image_id)])
            )
        results.append(matches)
    return results
