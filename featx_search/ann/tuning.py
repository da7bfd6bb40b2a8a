"""Exact ground truth, recall@k of an index against it, and tuning of nprobe / efSearch until
recall reaches its target. The ground truth is computed by streaming a
:class:`~featx_search.ann.source.VectorSource` in chunks (the index under test does the FAISS
work; chunks are merged in a FAISS ``ResultHeap``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .source import CHUNK, ArraySource, VectorSource, sample_positions
from .spec import DEFAULT_RERANK, RECALL_TARGET, SearchParams, ivf_lists

if TYPE_CHECKING:
    from .index import Fetch, VectorIndex
log = logging.getLogger(__name__)

# Queries of a tuning or recall run.
TUNE_QUERIES = 200
# Stored vectors scored against the queries of a ground truth at once.
BLOCK = 8192
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


@dataclass(frozen=True)
class Truth:
    """Exact neighbours of sampled stored vectors: each query's id (int64 (Q,)), vector
    (float32 (Q, d)) and the exact scores of its ``k`` nearest *other* vectors (float32
    (Q, k), descending)."""

    ids: np.ndarray
    queries: np.ndarray
    scores: np.ndarray

    @property
    def k(self) -> int:
        return int(self.scores.shape[1])


class TruthHeap:
    """Collects exact top-k of query vectors over the chunks of a source, as they stream by
    (so that a build computes its ground truth in the pass that adds the vectors)."""

    def __init__(self, ids: np.ndarray, queries: np.ndarray, k: int, count: int) -> None:
        from .raw import faiss_module

        self.ids = np.asarray(ids, np.int64)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = min(k, max(count - 1, 0))  # each query's own vector is not a neighbour
        self._want = min(self.k + 1, count)
        self._heap = faiss_module().ResultHeap(len(self.ids), max(self._want, 1), keep_max=True)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Merge a chunk: (M,) ids and (M, d) vectors (scored :data:`BLOCK` rows at a time,
        so that the (Q, M) scores of a large chunk are never held at once)."""
        if len(ids) == 0 or len(self.ids) == 0 or self._want == 0:
            return
        ids = np.asarray(ids, np.int64)
        for start in range(0, len(ids), BLOCK):
            block = np.ascontiguousarray(vectors[start : start + BLOCK], dtype=np.float32)
            sims = self.queries @ block.T
            take = min(self._want, sims.shape[1])
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            scores = np.ascontiguousarray(np.take_along_axis(sims, top, 1), dtype=np.float32)
            found = np.ascontiguousarray(ids[start : start + BLOCK][top])
            self._heap.add_result(scores, found)

    def result(self) -> Truth:
        """The collected :class:`Truth` (call once, after the last chunk)."""
        self._heap.finalize()
        scores, found = self._heap.D, self._heap.I
        rows = []
        for q, own in enumerate(self.ids):
            keep = (found[q] != own) & (found[q] >= 0)
            rows.append(scores[q][keep][: self.k])
        out = np.zeros((len(self.ids), self.k), np.float32)
        for q, row in enumerate(rows):
            out[q, : len(row)] = row
        return Truth(self.ids, self.queries, out)


def query_sample(source: VectorSource, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors that ask the queries of a recall run: (ids, vectors) of ``sample``
    rows drawn with ``seed``."""
    return source.pick(sample_positions(source.count, sample, seed))


def ground_truth(
    source: VectorSource, k: int, sample: int, seed: int, *, chunk: int = CHUNK
) -> Truth:
    """Exact top ``k`` other vectors of ``sample`` rows of ``source``, one streamed pass."""
    ids, queries = query_sample(source, sample, seed)
    heap = TruthHeap(ids, queries, k, source.count)
    for chunk_ids, vectors in source.chunks(chunk):
        heap.add(chunk_ids, vectors)
    return heap.result()


def recall_of(
    index: VectorIndex, truth: Truth, fetch: Fetch, *, params: SearchParams | None = None
) -> float:
    """Recall@k of ``index`` against ``truth``: a returned id counts when its exact score
    (its vector from ``fetch``) reaches the k-th exact score, so that ties between
    duplicates are not held against the index."""
    kk = truth.k
    if kk == 0 or len(truth.ids) == 0:
        return 1.0
    _, found = index.search(truth.queries, kk + 1, params=params)
    got_ids, got_vectors = fetch(np.unique(found[found >= 0]))
    order = np.argsort(got_ids)
    got_ids, got_vectors = got_ids[order], got_vectors[order]
    hits = 0
    for q, own in enumerate(truth.ids):
        got = found[q][(found[q] >= 0) & (found[q] != own)][:kk]
        if len(got) == 0 or len(got_ids) == 0:
            continue
        pos = np.clip(np.searchsorted(got_ids, got), 0, len(got_ids) - 1)
        pos = pos[got_ids[pos] == got]
        exact_scores = got_vectors[pos] @ truth.queries[q]
        hits += int(np.count_nonzero(exact_scores >= truth.scores[q, -1] - 1e-5))
    return float(hits) / float(len(truth.ids) * kk)


def recall_at_k(
    index: VectorIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    k: int = 10,
    sample: int = TUNE_QUERIES,
    seed: int = 0,
    params: SearchParams | None = None,
) -> float:
    """Recall@k of ``index`` against exact search, over a sample of the (N,) ``ids`` and
    (N, d) ``vectors`` in memory (see :func:`recall_of`; each sampled vector asks for its
    ``k`` nearest *other* vectors, since itself would be a free hit)."""
    source = ArraySource(ids, vectors)
    if source.count < 2:
        return 1.0
    return recall_of(index, ground_truth(source, k, sample, seed), source.fetch, params=params)


def tune_params(
    index: VectorIndex, truth: Truth, fetch: Fetch, *, target: float = RECALL_TARGET
) -> SearchParams:
    """The smallest nprobe (IVF) or efSearch (HNSW), doubling, whose recall against
    ``truth`` (see :func:`recall_of`) reaches ``target``; the largest tried when none does
    (logged)."""
    base = index.params
    if not index.approximate or truth.k == 0:
        return base
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
        tried.append((params, recall_of(index, truth, fetch, params=params)))
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
            tried.append((params, recall_of(index, truth, fetch, params=params)))
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
