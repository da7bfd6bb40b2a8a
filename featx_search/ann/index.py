"""The FAISS index wrapper: any factory spec, ids are image ids, search with filters and exact
re-ranking of lossy codes, files written atomically and opened by size (hashed only on
request); on-disk IVF indexes are an index file and its ``.ivfdata`` lists, memory-mapped."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LibraryError
from .raw import (
    faiss_module,
    files_checksum,
    fsync_dir,
    id_mode,
    ivfdata_path,
    new_raw,
    read_file,
    write_file,
)
from .spec import (
    TOMBSTONE_FRACTION,
    SearchParams,
    is_lossy,
    is_ondisk,
    ivf_lists,
    min_train,
)

log = logging.getLogger(__name__)

# An id that marks a removed vector inside an index that cannot delete (HNSW).
_DEAD = -1
_LIVE = (0, 2**62)  # the selector range of live ids; image ids are positive
# Training sample size: about this many vectors per inverted list.
TRAIN_PER_LIST = 50

# (ids int64 (N,)) -> (ids int64 (M,), float32 (M, dim)) of those still stored, M <= N
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SavedFile:
    """What :meth:`VectorIndex.save` wrote: the file's SHA-256 and size in bytes."""

    checksum: str
    nbytes: int


class VectorIndex:
    """Inner-product search over L2-normalised float32 vectors, keyed by int64 ids.

    ``spec`` is a FAISS factory string (``Flat`` by default: exact) or an on-disk IVF spec
    (``ondisk:IVF...``). IVF indexes keep the ids themselves; other types sit in an
    ``IndexIDMap2``. Types that cannot delete (HNSW) keep removed vectors as tombstones
    (their id set to -1, skipped by every search). An on-disk index is read only: its lists
    are the memory-mapped file ``ivfdata``; it changes by a streamed rebuild
    (:func:`featx_search.ann.build.build_index`).
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
        self._index = raw if raw is not None else new_raw(dim, spec)
        self._mode = id_mode(self._index)
        self.params = params or SearchParams()
        self.read_only = read_only
        # Re-ranking of lossy codes reads the exact vectors through this (set by open_index).
        self.fetch: Fetch | None = None
        # An on-disk index's lists: the file it maps (None when they are not on disk yet, or
        # when they were built in a private folder and cannot be published).
        self.ivfdata: Path | None = None

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
        ivfdata: Path | None = None,
    ) -> VectorIndex:
        """An index of ``spec`` holding (N, dim) float32 ``vectors`` under int64 ``ids``.

        Trainable types are trained on a random sample of ``vectors`` (about 50 per inverted
        list); with ``tune`` the default nprobe / efSearch are raised until recall@10 on a
        sample of the vectors reaches :data:`~featx_search.ann.spec.RECALL_TARGET`. An
        on-disk spec writes its lists to ``ivfdata``. The same as
        :func:`featx_search.ann.build.build_index` on the arrays.
        """
        from .build import build_index
        from .source import ArraySource

        return build_index(
            ArraySource(ids, vectors), dim, spec=spec, tune=tune, seed=seed, ivfdata=ivfdata
        )

    def train(self, vectors: np.ndarray, *, seed: int = 0) -> None:
        """Train on a random sample of (N, dim) ``vectors``; raises :class:`ConfigError` when
        N is too small for the spec."""
        from .source import sample_positions

        self.check_trainable(len(vectors))
        self.train_on(vectors[sample_positions(len(vectors), self.train_size, seed)])

    def trained_copy(self) -> VectorIndex | None:
        """An empty copy of this published on-disk index, trained the same (its quantizer
        read again from its file, without the lists), for a rebuild that adds the vectors
        without training again; None for other indexes or when the file is gone."""
        if not self.ondisk or self.ivfdata is None:
            return None
        path = self.ivfdata.with_suffix(".faiss")
        try:
            raw = read_file(path, path.stat().st_size, skip_lists=True)
        except (OSError, LibraryError):
            return None
        copy = VectorIndex(self.dim, raw, spec=self.spec, params=self.params)
        copy.raw.ntotal = 0
        return copy

    def check_trainable(self, count: int) -> None:
        """:class:`ConfigError` unless ``count`` vectors are enough to train the spec."""
        need = min_train(self.spec)
        if count < need:
            raise ConfigError(
                f"index {self.spec!r} needs at least {need} vectors to train, got {count}",
                hint="use Flat or auto until the space holds more images",
            )

    @property
    def train_size(self) -> int:
        """How many vectors training samples (about 50 per inverted list, at least 20,000)."""
        return max(min_train(self.spec), TRAIN_PER_LIST * (ivf_lists(self.spec) or 0), 20_000)

    def train_on(self, sample: np.ndarray) -> None:
        """Train on exactly the (M, dim) ``sample``."""
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

    @property
    def ondisk(self) -> bool:
        """True for on-disk IVF specs (lists in a memory-mapped ``.ivfdata`` file)."""
        return is_ondisk(self.spec)

    @property
    def raw(self) -> Any:
        """The FAISS index itself (for :mod:`.build`)."""
        return self._index

    def _id_map(self) -> np.ndarray:
        # A writable view of the id map's memory (valid until the next add).
        faiss = faiss_module()
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
        """The size of the serialised index (about its memory); serialises it to count."""
        from .raw import serialized_size

        return serialized_size(self._index)

    def ids(self) -> np.ndarray:
        """Every live id in the index (int64; insertion order except for IVF indexes)."""
        faiss = faiss_module()
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

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N, dim) vectors under int64 ``ids`` known to be absent (a fresh build: no
        search for ids to replace)."""
        self._writable()
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )

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
        faiss = faiss_module()
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _search_parameters(self, params: SearchParams, selector: Any, keep: list[Any]) -> Any:
        faiss = faiss_module()
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
            selector = faiss_module().IDSelectorBatch(
                np.ascontiguousarray(selector, dtype=np.int64)
            )
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

    def save(self, path: Path) -> SavedFile:
        """Write the index to ``path`` atomically (temp file, fsync, rename, fsync folder);
        returns the written file's checksum and size.

        An on-disk index's lists must already be its ``.ivfdata`` beside ``path`` (they were
        written there by the build); they are synced first, and the checksum and size cover
        the index file followed by the lists. Raises :class:`LibraryError` otherwise."""
        if not self.ondisk:
            checksum, nbytes = write_file(self._index, path)
            return SavedFile(checksum, nbytes)
        lists = ivfdata_path(path)
        if self.ivfdata is None or self.ivfdata.resolve() != lists.resolve():
            raise LibraryError(
                f"the lists of this on-disk index are not {lists}; it cannot be saved there"
            )
        with open(lists, "rb+") as fh:
            os.fsync(fh.fileno())
        write_file(self._index, path)
        fsync_dir(path.parent)
        checksum, nbytes = files_checksum([path, lists])
        return SavedFile(checksum, nbytes)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        dim: int,
        nbytes: int | None = None,
        checksum: str | None = None,
        spec: str = "Flat",
        params: SearchParams | None = None,
        mmap: bool = False,
    ) -> VectorIndex:
        """Open an index file of ``dim``-d vectors.

        ``nbytes`` refuses a file of another size before anything is read; ``checksum``
        (SHA-256) reads the whole file first and refuses it unless it matches (opening a
        published file passes only the size: its checksum is checked when it is published
        and by :func:`featx_search.ann.files.verify_index`). With ``mmap`` the file is
        memory-mapped (read only) instead of read into memory. An on-disk ``spec`` maps its
        ``.ivfdata`` beside ``path`` (always read only; ``nbytes`` and ``checksum`` cover
        both files). Raises :class:`LibraryError` for a missing, damaged or foreign file.
        """
        ondisk = is_ondisk(spec)
        files = [path, ivfdata_path(path)] if ondisk else [path]
        try:
            size = path.stat().st_size
            total = sum(f.stat().st_size for f in files)
            if nbytes is not None and total != nbytes:
                raise LibraryError(
                    f"index file {path} has {total} bytes, its manifest says {nbytes}"
                )
            if checksum is not None and files_checksum(files)[0] != checksum:
                raise LibraryError(f"index file {path} does not match its manifest checksum")
        except OSError as err:
            raise LibraryError(f"cannot read index file {path}: {err}") from err
        raw = read_file(path, size, mmap=mmap, ondisk=ondisk)
        if raw.d != dim:
            raise LibraryError(f"index file {path} holds {raw.d}-d vectors, expected {dim}")
        index = cls(dim, raw, spec=spec, params=params, read_only=mmap or ondisk)
        if ondisk:
            index.ivfdata = files[1]
        return index


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
