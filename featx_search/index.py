"""FAISS index wrapper: any factory spec, ids are image ids, files written atomically (the
only user of faiss)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, LibraryError
from .indexspec import (
    AUTO,
    DEFAULT_RERANK,
    MMAP_BYTES,
    RECALL_TARGET,
    TOMBSTONE_FRACTION,
    SearchParams,
    is_lossy,
    ivf_lists,
    min_train,
    resolve_spec,
)
from .indexspec import check_spec as _check_spec_text

if TYPE_CHECKING:
    from .reader import Reader, SpaceRecord
    from .store import Store

log = logging.getLogger(__name__)

# The manifest kind of index files written before index specs existed: an exact index.
LEGACY_KIND = "IDMap2,FlatIP"
KIND = LEGACY_KIND  # kept for callers of the first version
# An id that marks a removed vector inside an index that cannot delete (HNSW).
_DEAD = -1
_LIVE = (0, 2**62)  # the selector range of live ids; image ids are positive
# Queries and training sample sizes.
TRAIN_PER_LIST = 50
TUNE_QUERIES = 200
# Tuning stops raising nprobe / efSearch once two doublings gain less recall than this.
PLATEAU = 0.005

# (ids int64 (N,)) -> (ids int64 (M,), float32 (M, dim)) of those still stored, M <= N
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _faiss() -> Any:
    # Idle OpenMP threads sleep instead of spinning (read once, when OpenMP starts): spinning
    # threads made k-means training many times slower on a busy machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def check_spec(spec: str, dim: int = 64) -> str:
    """``spec`` if FAISS can build it (``auto`` passes), else :class:`ConfigError`."""
    spec = _check_spec_text(spec)
    if spec == AUTO:
        return spec
    faiss = _faiss()
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise ConfigError(
            f"--index {spec!r} is not a FAISS index spec ({first[:120]})",
            hint="use auto, Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64 or OPQ64,IVF1024,PQ64",
        ) from None
    return spec


def _new_raw(dim: int, spec: str) -> Any:
    faiss = _faiss()
    try:
        inner = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(f"cannot build index {spec!r} for {dim}-d vectors: {err}") from None
    _no_polysemous(inner)
    if _native_ids(inner):
        return inner
    return faiss.IndexIDMap2(inner)


def _no_polysemous(raw: Any) -> None:
    # index_factory turns on polysemous training for PQ codes: an annealing step for Hamming
    # pre-filtering that featx-search never uses and that costs minutes of training.
    faiss = _faiss()
    node = faiss.downcast_index(raw)
    while node is not None:
        if hasattr(node, "do_polysemous_training"):
            node.do_polysemous_training = False
        inner = next(
            (getattr(node, a) for a in ("index", "base_index", "storage") if hasattr(node, a)),
            None,
        )
        node = faiss.downcast_index(inner) if inner is not None else None


def _native_ids(raw: Any) -> bool:
    """True for IVF indexes (bare or behind a transform such as OPQ): they keep ids and
    delete by themselves; everything else is wrapped in an id map."""
    faiss = _faiss()
    top = faiss.downcast_index(raw)
    if isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    return isinstance(top, faiss.IndexIVF)


def _mode(raw: Any) -> str:
    """``ivf`` (native ids), ``remove`` (id map over codes that delete) or ``tombstone``."""
    faiss = _faiss()
    if _native_ids(raw):
        return "ivf"
    top = faiss.downcast_index(raw)
    if not isinstance(top, faiss.IndexIDMap2):
        raise LibraryError(f"unexpected index type {type(top).__name__}")
    inner = faiss.downcast_index(top.index)
    if isinstance(inner, faiss.IndexFlatCodes):
        return "remove"
    return "tombstone"


class VectorIndex:
    """Inner-product search over L2-normalised float32 vectors, keyed by int64 ids.

    ``spec`` is a FAISS factory string (``Flat`` by default: exact). IVF indexes keep the ids
    themselves; other types sit in an ``IndexIDMap2``. Types that cannot delete (HNSW) keep
    removed vectors as tombstones (their id set to -1, skipped by every search).
    Scores are cosine similarities (approximate for lossy codes unless re-ranked).
    """

    def __init__(
        self,
        dim: int,
        raw: Any = None,
        *,
        spec: str = "Flat",
        params: SearchParams | None = None,
        read_only: bool = False,
    ) -> None:
        self.dim = dim
        self.spec = spec
        self._index = raw if raw is not None else _new_raw(dim, spec)
        self._mode = _mode(self._index)
        self.params = params or SearchParams()
        self.read_only = read_only
        # Re-ranking of lossy codes reads the exact vectors through this (set by open_index).
        self.fetch: Fetch | None = None

    @classmethod
    def build(
        cls,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        spec: str = "Flat",
        tune: bool = True,
        seed: int = 0,
    ) -> VectorIndex:
        """An index of ``spec`` holding (N, dim) float32 ``vectors`` under int64 ``ids``.

        Trainable types are trained on a random sample of ``vectors`` (about 50 per inverted
        list); with ``tune`` the default nprobe / efSearch are raised until recall@10 on a
        sample of the vectors reaches :data:`RECALL_TARGET`.
        """
        index = cls(dim, spec=spec)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not index._index.is_trained:
            index.train(vectors, seed=seed)
        if is_lossy(spec):
            index.params = SearchParams(rerank=DEFAULT_RERANK)
            index.fetch = _array_fetch(ids, vectors)
        index.add(ids, vectors)
        if tune and index.approximate:
            index.params = tune_params(index, ids, vectors, seed=seed)
        return index

    def train(self, vectors: np.ndarray, *, seed: int = 0) -> None:
        """Train on a random sample of (N, dim) ``vectors``; raises :class:`ConfigError` when
        N is too small for the spec."""
        need = min_train(self.spec)
        if len(vectors) < need:
            raise ConfigError(
                f"index {self.spec!r} needs at least {need} vectors to train, got {len(vectors)}",
                hint="use Flat or auto until the space holds more images",
            )
        size = max(need, TRAIN_PER_LIST * (ivf_lists(self.spec) or 0), 20_000)
        rng = np.random.default_rng(seed)
        sample = vectors
        if len(vectors) > size:
            sample = vectors[np.sort(rng.choice(len(vectors), size, replace=False))]
        started = time.perf_counter()
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))
        log.info(
            "trained %s on %d vectors in %.1f s",
            self.spec,
            len(sample),
            time.perf_counter() - started,
        )

    @property
    def approximate(self) -> bool:
        """False only for exact (Flat) indexes."""
        return self.spec != "Flat"

    @property
    def lossy(self) -> bool:
        return is_lossy(self.spec)

    def _id_map(self) -> np.ndarray:
        # A writable view of the id map's memory (valid until the next add).
        faiss = _faiss()
        n = int(self._index.ntotal)
        if n == 0:
            return np.empty(0, np.int64)
        view: np.ndarray = faiss.rev_swig_ptr(self._index.id_map.data(), n)
        return view

    @property
    def tombstones(self) -> int:
        """Removed vectors still inside an index that cannot delete them."""
        if self._mode != "tombstone":
            return 0
        return int(np.count_nonzero(self._id_map() == _DEAD))

    @property
    def needs_compaction(self) -> bool:
        """True when tombstones passed :data:`TOMBSTONE_FRACTION` of the live vectors."""
        dead = self.tombstones
        return dead > 0 and dead > TOMBSTONE_FRACTION * len(self)

    def __len__(self) -> int:
        """The number of live vectors."""
        return int(self._index.ntotal) - self.tombstones

    @property
    def nbytes(self) -> int:
        """The size of the serialised index (about its memory)."""
        return int(_faiss().serialize_index(self._index).size)

    def ids(self) -> np.ndarray:
        """Every live id in the index (int64; insertion order except for IVF indexes)."""
        faiss = _faiss()
        if self._mode == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            lists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(ivf.nlist)
                if lists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
        ids = self._id_map().astype(np.int64)
        live: np.ndarray = ids[ids != _DEAD]
        return live

    def _writable(self) -> None:
        if self.read_only:
            raise LibraryError("this index was opened memory-mapped (read only)")

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N, dim) float32 vectors under int64 ``ids``; ids already present are replaced."""
        if len(ids) == 0:
            return
        self._writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (N, {self.dim}), got {vectors.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self._index.is_trained:
            raise LibraryError(f"index {self.spec!r} is not trained; rebuild it")
        self.remove(ids)
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were removed."""
        if len(ids) == 0 or len(self) == 0:
            return 0
        self._writable()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self._mode == "tombstone":
            id_map = self._id_map()
            dead = np.isin(id_map, ids) & (id_map != _DEAD)
            id_map[dead] = _DEAD
            return int(np.count_nonzero(dead))
        faiss = _faiss()
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _search_parameters(self, params: SearchParams, selector: Any, keep: list[Any]) -> Any:
        faiss = _faiss()
        if self.tombstones:
            live = faiss.IDSelectorRange(*_LIVE)
            keep.append(live)
            if selector is not None:
                selector = faiss.IDSelectorAnd(selector, live)
                keep.append(selector)
            else:
                selector = live
        if self._mode == "ivf":
            ivf = faiss.extract_index_ivf(self._index)
            sp = faiss.SearchParametersIVF()
            sp.nprobe = min(params.nprobe or ivf.nprobe, ivf.nlist)
        else:
            inner = faiss.downcast_index(self._index.index)
            if isinstance(inner, faiss.IndexHNSW):
                sp = faiss.SearchParametersHNSW()
                sp.efSearch = params.ef_search or inner.hnsw.efSearch
            elif selector is None:
                return None
            else:
                sp = faiss.SearchParameters()
        if selector is not None:
            sp.sel = selector
        keep.append(sp)
        return sp

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        selector: Any = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query row: (scores float32 (Q, k'), ids int64 (Q, k')), k' = min(k, N).

        Rows are sorted by decreasing score; ties keep FAISS order; ids of -1 pad rows that
        have fewer matches (filtered or approximate searches). ``selector`` is a FAISS
        ``IDSelector`` over image ids that restricts the search (for every index type).
        ``params`` override the index's default nprobe / efSearch / rerank for this call.
        ``selector`` may also be an int64 array of the allowed ids; then k' is at most its
        length.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self))
        if isinstance(selector, np.ndarray):
            k = min(k, len(selector))
            selector = _faiss().IDSelectorBatch(np.ascontiguousarray(selector, dtype=np.int64))
        if k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        p = self.params.merged(params)
        rerank = (p.rerank or 0) if self.lossy and self.fetch is not None else 0
        wanted = min(k * rerank, len(self)) if rerank > 1 else k
        keep: list[Any] = []
        sp = self._search_parameters(p, selector, keep)
        try:
            scores, ids = self._index.search(queries, wanted, params=sp)
        except RuntimeError as err:
            if selector is None:
                raise
            raise ConfigError(
                f"index {self.spec!r} cannot filter a search ({str(err).splitlines()[-1]})",
                hint="reindex with another --index, e.g. IVF1024,PQ64 instead of PQ64",
            ) from None
        if rerank > 1 and self.fetch is not None:
            scores, ids = _rerank(queries, ids, self.fetch, k)
        return scores[:, :k], ids[:, :k]

    def save(self, path: Path) -> str:
        """Write the index to ``path`` atomically (temp file, fsync, rename, fsync folder).

        Returns the SHA-256 of the written file.
        """
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            data = faiss.serialize_index(self._index)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return hashlib.sha256(data.tobytes()).hexdigest()

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        checksum: str,
        spec: str = "Flat",
        params: SearchParams | None = None,
        mmap: bool = False,
    ) -> VectorIndex:
        """Read an index file, refusing it unless its SHA-256 equals ``checksum``.

        With ``mmap`` the file is memory-mapped (read only) instead of read into memory.
        Raises :class:`LibraryError` for a missing, damaged or foreign file.
        """
        faiss = _faiss()
        try:
            # Hash while streaming, then let faiss read the file itself: no second copy of
            # the whole index in Python memory. Published files are never rewritten in place.
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            actual, size = digest.hexdigest(), path.stat().st_size
        except OSError as err:
            raise LibraryError(f"cannot read index file {path}: {err}") from err
        if actual != checksum:
            raise LibraryError(f"index file {path} does not match its manifest checksum")
        # No vector inside a file can be larger than the file: a damaged length field then
        # fails cleanly instead of asking for terabytes (faiss allows 1 TiB by default).
        faiss.set_deserialization_vector_byte_limit(max(size, 1 << 20))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            raw = faiss.read_index(str(path), flags)
        except RuntimeError as err:
            raise LibraryError(f"cannot load index file {path}: {err}") from err
        if raw.d != dim:
            raise LibraryError(f"index file {path} holds {raw.d}-d vectors, expected {dim}")
        return cls(dim, raw, spec=spec, params=params, read_only=mmap)


def _array_fetch(ids: np.ndarray, vectors: np.ndarray) -> Fetch:
    """A :data:`Fetch` over in-memory arrays (ids need not be sorted)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = np.asarray(ids, np.int64)[order]

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(sorted_ids) - 1, 0))
        ok = sorted_ids[pos] == wanted if len(sorted_ids) else np.zeros(len(wanted), bool)
        return np.asarray(wanted)[ok], vectors[order[pos[ok]]]

    return fetch


def _rerank(
    queries: np.ndarray, candidates: np.ndarray, fetch: Fetch, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids (Q, C) exactly with their stored vectors; the best ``k``."""
    unique = np.unique(candidates[candidates >= 0])
    found, vectors = fetch(unique)
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_ids = np.full((len(queries), k), -1, np.int64)
    if len(found) == 0:
        return out_scores, out_ids
    order = np.argsort(found)
    found, vectors = found[order], vectors[order]
    for q, row in enumerate(candidates):
        pos = _matches(found, np.unique(row[row >= 0]))
        if len(pos) == 0:
            continue
        scores = vectors[pos] @ queries[q]
        best = np.argsort(-scores, kind="stable")[:k]
        out_scores[q, : len(best)] = scores[best]
        out_ids[q, : len(best)] = found[pos][best]
    return out_scores, out_ids


def _matches(found: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Positions in sorted ``found`` of the values of ``row`` that it holds."""
    if len(row) == 0:
        return np.empty(0, np.int64)
    pos = np.clip(np.searchsorted(found, row), 0, len(found) - 1)
    hit: np.ndarray = pos[found[pos] == row]
    return hit


# -- recall ----------------------------------------------------------------------------------


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


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- index files of a library ---------------------------------------------------------------
# These take the store as an argument; the store is the truth, the file a rebuildable cache.


def index_path(store: Reader, record: SpaceRecord, generation: int) -> Path:
    return store.index_dir / f"{record.fingerprint}-g{generation}.faiss"


def _kind_spec(kind: str) -> str:
    return "Flat" if kind == LEGACY_KIND else kind


def wanted_spec(store: Reader, record: SpaceRecord, count: int | None = None) -> str:
    """The spec a space's index should have now (``auto`` and untrainable specs resolved)."""
    from .whiten import index_dim

    settings = store.index_settings(record.id)
    return resolve_spec(
        settings.spec,
        record.count if count is None else count,
        index_dim(store, record),
        settings.max_memory,
    )


@dataclass(frozen=True)
class BuildInfo:
    """What :func:`rebuild_index` built: spec, vectors, tuned params, file size, time."""

    spec: str
    count: int
    params: SearchParams
    nbytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "count": self.count,
            "params": self.params.to_dict(),
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 3),
        }


def build_from_store(
    store: Reader, record: SpaceRecord, spec: str | None = None
) -> tuple[VectorIndex, int]:
    """A new index of the space from its stored vectors (no re-embedding), and the generation
    it reflects. ``spec`` None means the space's own (see :func:`wanted_spec`).

    This is the one place where stored vectors enter a rebuilt index."""
    from .whiten import for_index

    generation, ids, vectors = store.vectors(record.id)
    vectors = for_index(store, record, vectors)  # PCA-whitened when the space has it
    spec = spec or wanted_spec(store, record, len(ids))
    started = time.perf_counter()
    index = VectorIndex.build(vectors.shape[1], ids, vectors, spec=spec)
    index.fetch = _store_fetch(store, record)
    log.info(
        "built %s index of %d vectors in %.1f s", spec, len(ids), time.perf_counter() - started
    )
    return index, generation


def _store_fetch(store: Reader, record: SpaceRecord) -> Fetch:
    from .whiten import for_index

    def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, found, vectors = store.vectors(record.id, [int(i) for i in ids])
        return found, for_index(store, record, vectors)

    return fetch


def open_index(
    store: Reader, record: SpaceRecord, *, mmap: bool | None = False
) -> tuple[VectorIndex, int]:
    """The index of a space at the store's current generation, and that generation.

    Loads the published file when the manifest says it is current, of the spec the space
    wants now, and its checksum holds; otherwise rebuilds from stored vectors (with a warning
    when a file was refused). ``mmap``: True memory-maps the file (read only), None does so
    for files of at least :data:`MMAP_BYTES`.
    """
    from .whiten import index_dim

    manifest = store.manifest(record.id)
    dim = index_dim(store, record)
    want = wanted_spec(store, record)
    if (
        manifest is not None
        and manifest.generation == record.generation
        and _kind_spec(manifest.kind) == want
    ):
        path = store.index_dir / manifest.filename
        use_mmap = bool(mmap)
        if mmap is None:
            try:
                use_mmap = path.stat().st_size >= MMAP_BYTES
            except OSError:
                use_mmap = False
        try:
            index = VectorIndex.load(
                path,
                dim=dim,
                checksum=manifest.checksum,
                spec=want,
                params=SearchParams.from_dict(json.loads(manifest.params_json or "{}")),
                mmap=use_mmap,
            )
        except LibraryError as err:
            log.warning("%s; rebuilding it from the library", err)
        else:
            if len(index) == manifest.count:
                index.fetch = _store_fetch(store, record)
                return index, manifest.generation
            log.warning(
                "index file %s holds %d vectors, manifest says %d; rebuilding",
                manifest.filename,
                len(index),
                manifest.count,
            )
    elif manifest is not None and manifest.generation == record.generation:
        log.info(
            "index of %s is %s, wanted %s; rebuilding", record.fingerprint, manifest.kind, want
        )
    return build_from_store(store, record)


def publish_index(
    store: Store, record: SpaceRecord, index: VectorIndex, generation: int
) -> VectorIndex:
    """Write ``index`` (which reflects the store at ``generation``) and point the manifest at it.

    When the space now wants another spec (``auto`` outgrew it, or the spec was changed) or
    tombstones passed their threshold, the index is first rebuilt from the store. Older files
    of the space are deleted afterwards. Returns the published index.
    """
    want = wanted_spec(store, record)
    if index.spec != want or index.needs_compaction:
        reason = "tombstones" if index.spec == want else f"{index.spec} -> {want}"
        log.info("rebuilding the index of %s (%s)", record.fingerprint, reason)
        index, generation = build_from_store(store, record, want)
    path = index_path(store, record, generation)
    checksum = index.save(path)
    from .records import Manifest

    store.set_manifest(
        record.id,
        Manifest(
            generation=generation,
            count=len(index),
            checksum=checksum,
            filename=path.name,
            kind=index.spec,
            tombstones=index.tombstones,
            params_json=json.dumps(index.params.to_dict(), sort_keys=True),
        ),
    )
    for old in store.index_dir.glob(f"{record.fingerprint}-g*.faiss"):
        if old.name != path.name:
            old.unlink(missing_ok=True)
    return index


def rebuild_index(store: Store, record: SpaceRecord) -> BuildInfo:
    """Build the space's index from its stored vectors with its current spec and publish it."""
    started = time.perf_counter()
    record = store.space(record.id)
    index, generation = build_from_store(store, record)
    index = publish_index(store, record, index, generation)
    manifest = store.manifest(record.id)
    size = (store.index_dir / manifest.filename).stat().st_size if manifest else 0
    return BuildInfo(
        spec=index.spec,
        count=len(index),
        params=index.params,
        nbytes=size,  # the published file (serialising again would copy the whole index)
        seconds=time.perf_counter() - started,
    )
