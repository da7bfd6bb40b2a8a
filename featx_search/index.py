"""FAISS index wrapper: ids are image ids; files are written atomically (the only user of faiss)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import LibraryError

if TYPE_CHECKING:
    from .store import SpaceRecord, Store

log = logging.getLogger(__name__)

KIND = "IDMap2,FlatIP"


def _faiss() -> Any:
    import faiss

    return faiss


class VectorIndex:
    """Exact inner-product search over L2-normalised float32 vectors, keyed by int64 ids.

    Wraps ``faiss.IndexIDMap2(faiss.IndexFlatIP(dim))``; scores are cosine similarities.
    """

    def __init__(self, dim: int, raw: Any = None) -> None:
        faiss = _faiss()
        self.dim = dim
        self._index = raw if raw is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        index = cls(dim)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id in the index (int64, insertion order)."""
        faiss = _faiss()
        ids: np.ndarray = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N, dim) float32 vectors under int64 ``ids``; ids already present are replaced."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (N, {self.dim}), got {vectors.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.remove(ids)
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (absent ones are ignored); returns how many were removed."""
        if len(ids) == 0 or len(self) == 0:
            return 0
        faiss = _faiss()
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        return int(self._index.remove_ids(selector))

    def search(
        self, queries: np.ndarray, k: int, *, selector: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query row: (scores float32 (Q, k'), ids int64 (Q, k')), k' = min(k, N).

        ``selector`` (int64 ids) restricts the search to those ids inside FAISS, so k' is
        min(k, number of them in the index). Rows are sorted by decreasing score; ties keep
        FAISS order; a row is padded with id -1 when fewer candidates exist.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self) if selector is None else len(selector))
        if k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if selector is None:
            scores, ids = self._index.search(queries, k)
        else:
            faiss = _faiss()
            allowed = faiss.IDSelectorBatch(np.ascontiguousarray(selector, dtype=np.int64))
            params = faiss.SearchParameters(sel=allowed)
            scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

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
    def load(cls, path: Path, *, dim: int, checksum: str) -> VectorIndex:
        """Read an index file, refusing it unless its SHA-256 equals ``checksum``.

        Raises :class:`LibraryError` for a missing, damaged or foreign file.
        """
        faiss = _faiss()
        try:
            data = path.read_bytes()
        except OSError as err:
            raise LibraryError(f"cannot read index file {path}: {err}") from err
        if hashlib.sha256(data).hexdigest() != checksum:
            raise LibraryError(f"index file {path} does not match its manifest checksum")
        # No vector inside a file can be larger than the file: a damaged length field then
        # fails cleanly instead of asking for terabytes (faiss allows 1 TiB by default).
        faiss.set_deserialization_vector_byte_limit(max(len(data), 1 << 20))
        try:
            raw = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as err:
            raise LibraryError(f"cannot load index file {path}: {err}") from err
        if raw.d != dim:
            raise LibraryError(f"index file {path} holds {raw.d}-d vectors, expected {dim}")
        return cls(dim, raw)


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


def index_path(store: Store, record: SpaceRecord, generation: int) -> Path:
    return store.index_dir / f"{record.fingerprint}-g{generation}.faiss"


def open_index(store: Store, record: SpaceRecord) -> tuple[VectorIndex, int]:
    """The index of a space at the store's current generation, and that generation.

    Loads the published file when the manifest says it is current and its checksum holds;
    otherwise rebuilds from stored vectors (with a warning when a file was refused).
    """
    manifest = store.manifest(record.id)
    dim = record.spec.dim
    if manifest is not None and manifest.generation == record.generation:
        try:
            index = VectorIndex.load(
                store.index_dir / manifest.filename, dim=dim, checksum=manifest.checksum
            )
        except LibraryError as err:
            log.warning("%s; rebuilding it from the library", err)
        else:
            if len(index) == manifest.count:
                return index, manifest.generation
            log.warning(
                "index file %s holds %d vectors, manifest says %d; rebuilding",
                manifest.filename,
                len(index),
                manifest.count,
            )
    generation, ids, vectors = store.vectors(record.id)
    return VectorIndex.build(dim, ids, vectors), generation


def publish_index(store: Store, record: SpaceRecord, index: VectorIndex, generation: int) -> None:
    """Write ``index`` (which reflects the store at ``generation``) and point the manifest at it.

    Older files of the space are deleted afterwards.
    """
    path = index_path(store, record, generation)
    checksum = index.save(path)
    from .store import Manifest

    store.set_manifest(
        record.id,
        Manifest(
            generation=generation,
            count=len(index),
            checksum=checksum,
            filename=path.name,
            kind=KIND,
        ),
    )
    for old in store.index_dir.glob(f"{record.fingerprint}-g*.faiss"):
        if old.name != path.name:
            old.unlink(missing_ok=True)
