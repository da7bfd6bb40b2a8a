"""Exact ground truth, recall@k of an index against it, and tuning of nprobe / efSearch until
recall reaches its target (numpy only: the index under test does the FAISS work)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .spec import DEFAULT_RERANK, RECALL_TARGET, SearchParams, ivf_lists

if TYPE_CHECKING:
    from .index import VectorIndex

log = logging.getLogger(__name__)

# Queries of a tuning or recall run.
TUNE_QUERIES = 200
# Tuning stops raising nprobe / efSearch once two doublings gain less recall than this.
PLATEAU = 0.005


def exact_neighbours(
    vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top ``k`` of (Q, dim) ``queries`` over (N, dim) ``vectors`` by inner
    product, in chunks of rows (bounded memory): (scores (Q, k), row numbers (Q, k))."""
    k = min(k, len(vectors))
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(vectors), chunk):
        sims = queries @ vectors[start : start + chunk].T
        rows = np.arange(start, start + sims.shape[1])
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(rows, sims.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall_at_k(
    index: VectorIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    k: int = 10,
    sample: int = TUNE_QUERIES,
    seed: int = 0,
    params: SearchParams | None = None,
    exact: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> float:
    """Recall@k of ``index`` against exact search, over a sample of the stored vectors.

    Each sampled vector asks for its ``k`` nearest *other* vectors (itself would be a free
    hit). A returned id counts when its exact score reaches the k-th exact score (so ties
    between duplicates are not held against the index). ``exact`` may pass a precomputed
    (query rows, exact scores, exact rows) from :func:`_ground_truth`.
    """
    ids = np.asarray(ids, np.int64)
    if len(ids) < 2:
        return 1.0
    rows, gt_scores, _ = exact or _ground_truth(ids, vectors, k, sample, seed)
    kk = gt_scores.shape[1]
    _, found = index.search(vectors[rows], kk + 1, params=params)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    hits = 0
    for q, row in enumerate(rows):
        got = found[q][(found[q] >= 0) & (found[q] != ids[row])][:kk]
        pos = np.clip(np.searchsorted(sorted_ids, got), 0, len(ids) - 1)
        got_rows = order[pos[sorted_ids[pos] == got]]
        exact_scores = vectors[got_rows] @ vectors[row]
        hits += int(np.count_nonzero(exact_scores >= gt_scores[q, -1] - 1e-5))
    return float(hits) / float(len(rows) * kk)


def _ground_truth(
    ids: np.ndarray, vectors: np.ndarray, k: int, sample: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ids), min(sample, len(ids)), replace=False))
    scores, found = exact_neighbours(vectors, vectors[rows], min(k + 1, len(ids)))
    # drop each query's own row (the exact top-1, or a tie with it)
    keep = found != rows[:, None]
    kk = min(k, len(ids) - 1)
    gt_s = np.stack([s[m][:kk] for s, m in zip(scores, keep, strict=True)])
    gt_r = np.stack([f[m][:kk] for f, m in zip(found, keep, strict=True)])
    return rows, gt_s, gt_r


def tune_params(
    index: VectorIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    target: float = RECALL_TARGET,
    seed: int = 0,
) -> SearchParams:
    """The smallest nprobe (IVF) or efSearch (HNSW), doubling, whose recall@10 on a sample of
    ``vectors`` reaches ``target``; the largest tried when none does (logged)."""
    base = index.params
    if not index.approximate or len(ids) < 2:
        return base
    exact = _ground_truth(np.asarray(ids, np.int64), vectors, 10, TUNE_QUERIES, seed)
    nlist = ivf_lists(index.spec)
    if nlist:
        values, key = _doubling(1, nlist), "nprobe"
    elif index.spec.startswith("HNSW"):
        values, key = _doubling(16, 2048), "ef_search"
    else:
        return base
    tried: list[tuple[SearchParams, float]] = []
    for value in values:
        params = base.merged(SearchParams(**{key: value}))
        tried.append((params, recall_at_k(index, ids, vectors, params=params, exact=exact)))
        if tried[-1][1] >= target:
            break
        # a plateau (lossy codes): two doublings that gained almost nothing
        if len(tried) >= 3 and tried[-1][1] - tried[-3][1] < PLATEAU:
            break
    if tried[-1][1] < target and index.lossy and index.fetch is not None:
        # the codes, not the lists, limit recall: re-rank a larger pool instead
        params = tried[-1][0]
        for factor in (2 * DEFAULT_RERANK, 4 * DEFAULT_RERANK, 8 * DEFAULT_RERANK):
            params = params.merged(SearchParams(rerank=factor))
            tried.append((params, recall_at_k(index, ids, vectors, params=params, exact=exact)))
            if tried[-1][1] >= target:
                break
    best = max(r for _, r in tried)
    # the cheapest setting within PLATEAU of the best recall seen (the first that reaches
    # the target when one does)
    good = [(p, r) for p, r in tried if r >= min(target, best - PLATEAU)]
    chosen, recall = good[0]
    if recall < target:
        log.warning("%s reaches recall@10 %.3f at most (%s)", index.spec, best, chosen)
    log.info("tuned %s: %s gives recall@10 %.3f", index.spec, chosen.to_dict(), recall)
    return chosen


def _doubling(start: int, stop: int) -> list[int]:
    out = []
    value = start
    while value < stop:
        out.append(value)
        value *= 2
    return [*out, stop]
