"""Database-side augmentation (DBA) of a search's short list, for "more of this kind".

Each stored image is represented by its vector mixed with the vectors of its ``n`` nearest
stored images (alpha-weighted, :func:`featx_search.query.mix`): an image then also looks like
what surrounds it, which pulls images of one kind together. Augmenting the whole index would
have to be redone whenever a neighbourhood changes (every sync); here it is done where it
counts, on a search's first :data:`SHORT_LIST` results: each one's neighbours are searched in
the whole space (filters do not apply: they are the database's), the query image itself left
out, and the short list is ordered by the query's cosine to the augmented vectors, which
become the scores. ``eval --dba N`` measures exactly this (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from .query import Match, mix

# How many of a search's first results are re-scored (at least k).
SHORT_LIST = 100


def rerank(
    queries: np.ndarray,
    found: list[list[Match]],
    selves: Sequence[Sequence[int]],
    n: int,
    k: int,
    threshold: float | None,
    vectors_of: Callable[[list[int]], dict[int, np.ndarray]],
    neighbours_of: Callable[[np.ndarray, int], list[list[Match]]],
) -> list[list[Match]]:
    """The first ``k`` of each row of ``found`` (the results of ``queries``, float32 (Q, d)
    in the space the index searches) ordered by the query's cosine to each result's
    augmented vector: the result mixed with its ``n`` nearest stored images other than the
    row's own query images ``selves``. ``vectors_of(ids)`` gives stored vectors (id -> (d,),
    as the index holds them), ``neighbours_of(vectors, m)`` the ``m`` nearest stored images
    of each row. Scores below ``threshold`` are dropped; results whose vector has gone
    meanwhile are left out."""
    ids = sorted({m.image_id for row in found for m in row})
    vectors = vectors_of(ids)
    listed = [i for i in ids if i in vectors]
    if not listed:
        return [[] for _ in found]
    extra = max((len(own) for own in selves), default=0)
    near = neighbours_of(np.stack([vectors[i] for i in listed]), n + 1 + extra)
    neighbours = dict(zip(listed, near, strict=True))
    missing = sorted({m.image_id for row in near for m in row} - vectors.keys())
    vectors.update(vectors_of(missing))
    out = []
    for query, row, own in zip(queries, found, selves, strict=True):
        skip = set(own)
        scored = []
        for match in row:
            if match.image_id not in vectors:
                continue
            around = [
                m
                for m in neighbours[match.image_id]
                if m.image_id != match.image_id and m.image_id not in skip and m.image_id in vectors
            ][:n]
            vector = vectors[match.image_id]
            if around:
                mixed = mix(
                    vector[None],
                    np.stack([vectors[m.image_id] for m in around])[None],
                    np.array([[m.score for m in around]]),
                )[0]
            else:
                mixed = vector
            scored.append((float(np.dot(mixed, query)), match))
        scored.sort(key=lambda pair: -pair[0])
        kept = [(s, m) for s, m in scored if threshold is None or s >= threshold][:k]
        out.append([replace(m, rank=r + 1, score=s) for r, (s, m) in enumerate(kept)])
    return out
