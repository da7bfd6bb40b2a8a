"""FAISS itself: the lazy import, raw indexes built from factory strings, and index files read
and written (the only module that calls faiss's global settings)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LibraryError
from .spec import AUTO, check_spec_text, faiss_spec

# faiss's default per-vector limit when reading a file (1 TiB), for builds without a getter.
_FAISS_DEFAULT_LIMIT = 1 << 40
# The deserialisation limit is process-wide in faiss: reads that change it take turns.
_read_lock = threading.Lock()


def faiss_module() -> Any:
    """The faiss module, imported on first use (importing it costs a noticeable fraction of a
    query's start-up). Its OpenMP threads' wait policy is the process owner's choice: the CLI
    sets ``OMP_WAIT_POLICY`` at start-up (:func:`featx_search.compute.prefer_passive_openmp`)."""
    import faiss

    return faiss


def check_spec(spec: str, dim: int = 64) -> str:
    """``spec`` if FAISS can build it (``auto`` passes), else :class:`ConfigError`."""
    spec = check_spec_text(spec)
    if spec == AUTO:
        return spec
    faiss = faiss_module()
    try:
        faiss.index_factory(dim, faiss_spec(spec), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise ConfigError(
            f"index {spec!r} is not a FAISS index spec ({first[:120]})",
            hint="use auto, Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64 or OPQ64,IVF1024,PQ64",
            param="index",
        ) from None
    return spec


def new_raw(dim: int, spec: str) -> Any:
    """An empty FAISS index of ``spec`` for ``dim``-d vectors under inner product, with ids:
    IVF indexes keep them natively, anything else sits in an ``IndexIDMap2``. An on-disk
    spec gives its IVF index with in-memory lists until :func:`write_ondisk_lists`."""
    faiss = faiss_module()
    try:
        inner = faiss.index_factory(dim, faiss_spec(spec), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(
            f"cannot build index {spec!r} for {dim}-d vectors: {err}", param="index"
        ) from None
    _no_polysemous(inner)
    if native_ids(inner):
        return inner
    return faiss.IndexIDMap2(inner)


def _no_polysemous(raw: Any) -> None:
    # index_factory turns on polysemous training for PQ codes: an annealing step for Hamming
    # pre-filtering that featx-search never uses and that costs minutes of training.
    faiss = faiss_module()
    node = faiss.downcast_index(raw)
    while node is not None:
        if hasattr(node, "do_polysemous_training"):
            node.do_polysemous_training = False
        inner = next(
            (getattr(node, a) for a in ("index", "base_index", "storage") if hasattr(node, a)),
            None,
        )
        node = faiss.downcast_index(inner) if inner is not None else None


def native_ids(raw: Any) -> bool:
    """True for IVF indexes (bare or behind a transform such as OPQ): they keep ids and
    delete by themselves; everything else is wrapped in an id map."""
    faiss = faiss_module()
    top = faiss.downcast_index(raw)
    if isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    return isinstance(top, faiss.IndexIVF)


def id_mode(raw: Any) -> str:
    """``ivf`` (native ids), ``remove`` (id map over codes that delete) or ``tombstone``."""
    faiss = faiss_module()
    if native_ids(raw):
        return "ivf"
    top = faiss.downcast_index(raw)
    if not isinstance(top, faiss.IndexIDMap2):
        raise LibraryError(f"unexpected index type {type(top).__name__}")
    inner = faiss.downcast_index(top.index)
    if isinstance(inner, faiss.IndexFlatCodes):
        return "remove"
    return "tombstone"


# -- files -----------------------------------------------------------------------------------


def write_file(raw: Any, path: Path) -> tuple[str, int]:
    """Write ``raw`` to ``path`` atomically (temp file, fsync, rename, fsync folder).

    Returns (SHA-256, size in bytes) of the file as read back from disk before the rename,
    so the checksum vouches for what was written, not for a copy in memory.
    """
    faiss = faiss_module()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(raw, tmp)  # streamed by faiss: no serialised copy in memory
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        checksum, size = file_checksum(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return checksum, size


def file_checksum(path: Path) -> tuple[str, int]:
    """(SHA-256, size in bytes) of the file at ``path``, read in blocks. Raises
    :class:`OSError`."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@contextmanager
def _vector_limit(limit: int) -> Iterator[None]:
    """faiss's per-vector deserialisation limit set to ``limit`` and restored afterwards."""
    faiss = faiss_module()
    getter = getattr(faiss, "get_deserialization_vector_byte_limit", None)
    with _read_lock:
        before = int(getter()) if getter is not None else _FAISS_DEFAULT_LIMIT
        faiss.set_deserialization_vector_byte_limit(limit)
        try:
            yield
        finally:
            faiss.set_deserialization_vector_byte_limit(before)


def read_file(
    path: Path, size: int, *, mmap: bool = False, ondisk: bool = False, skip_lists: bool = False
) -> Any:
    """The raw index in the file at ``path`` of ``size`` bytes, memory-mapped read only with
    ``mmap``; with ``ondisk`` its inverted lists are the ``.ivfdata`` file beside it, always
    memory-mapped read only. No vector inside a file can be larger than the file, so a
    damaged length field fails cleanly instead of asking for terabytes. With ``skip_lists``
    the inverted lists are not read (a trained, empty IVF index to fill). Raises
    :class:`LibraryError`."""
    faiss = faiss_module()
    if skip_lists:
        flags = faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY
    elif ondisk:
        # The lists are mapped below from the .ivfdata beside the file, wherever the folder
        # has moved (IO_FLAG_ONDISK_SAME_DIR would do that too, but prints to stdout).
        flags = faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY
    else:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        with _vector_limit(max(size, 1 << 20)):
            raw = faiss.read_index(str(path), flags)
        if ondisk and not skip_lists:
            _map_lists(raw, ivfdata_path(path))
    except RuntimeError as err:
        raise LibraryError(f"cannot load index file {path}: {err}") from err
    return raw


def _map_lists(raw: Any, lists_path: Path) -> None:
    """Memory-map (read only) the on-disk lists of ``raw``, read without them, from
    ``lists_path``. Raises :class:`LibraryError` when they are not on-disk lists or the file
    is missing or shorter than they say."""
    faiss = faiss_module()
    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(raw).invlists)
    except RuntimeError:
        lists = None
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise LibraryError(f"index file beside {lists_path.name} has no on-disk lists")
    try:
        size = lists_path.stat().st_size
    except OSError as err:
        raise LibraryError(f"cannot read the lists {lists_path}: {err.strerror or err}") from err
    if size < int(lists.totsize):
        raise LibraryError(f"the lists {lists_path} have {size} bytes, expected {lists.totsize}")
    lists.filename = str(lists_path)
    lists.read_only = True
    if lists.totsize:
        lists.do_mmap()


def ivfdata_path(path: Path) -> Path:
    """The inverted lists' file of the on-disk index file at ``path``."""
    return path.with_suffix(".ivfdata")


def files_checksum(paths: list[Path]) -> tuple[str, int]:
    """(SHA-256, total size) of the files' bytes one after the other (an on-disk index: its
    index file, then its lists). Raises :class:`OSError`."""
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def ivf_of(raw: Any) -> Any:
    """The IVF index inside ``raw`` (bare or behind a transform)."""
    return faiss_module().extract_index_ivf(raw)


def coarse_transform(raw: Any, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the IVF index inside ``raw`` sees them (through OPQ or another
    transform in front of it)."""
    faiss = faiss_module()
    top = faiss.downcast_index(raw)
    if isinstance(top, faiss.IndexPreTransform):
        for i in range(top.chain.size()):
            vectors = faiss.downcast_VectorTransform(top.chain.at(i)).apply(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def assign_lists(ivf: Any, vectors: np.ndarray) -> np.ndarray:
    """The inverted list of each row of (N, d) ``vectors`` (as the IVF index sees them):
    int64 (N,)."""
    _, lists = ivf.quantizer.search(vectors, 1)
    assigned: np.ndarray = lists[:, 0].astype(np.int64)
    return assigned


def encode(ivf: Any, vectors: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The codes the IVF index stores for (N, d) ``vectors`` in ``lists``: uint8 (N, code
    size), exactly what ``add`` would store."""
    faiss = faiss_module()
    codes = np.empty((len(vectors), ivf.code_size), dtype=np.uint8)
    if len(vectors):
        ivf.encode_vectors(
            len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(lists), faiss.swig_ptr(codes)
        )
    return codes


def ondisk_layout(
    nlist: int, code_size: int, counts: np.ndarray, path: Path
) -> tuple[Any, np.ndarray]:
    """faiss's on-disk inverted lists of ``counts`` entries each, laid out one after the other
    in ``path`` (not written yet), and each list's byte offset there: int64 (nlist,).

    A list at offset o with n entries holds its n codes at o and its n int64 ids at
    o + n * code_size (``OnDiskInvertedLists``'s own layout, so that FAISS reads the file)."""
    faiss = faiss_module()
    lists = faiss.OnDiskInvertedLists(nlist, code_size, str(path))
    sizes = np.ascontiguousarray(counts, dtype=np.uint64)
    lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
    offsets = np.zeros(nlist, np.int64)
    ends = np.cumsum(counts.astype(np.int64) * (code_size + 8))
    offsets[1:] = ends[:-1]
    for i in range(nlist):  # FAISS lays them out the same way (checked, not assumed)
        entry = lists.lists.at(i)
        if int(entry.size) and int(entry.offset) != int(offsets[i]):
            raise LibraryError("unexpected on-disk inverted list layout in this FAISS build")
    lists.totsize = int(ends[-1]) if nlist else 0
    return lists, offsets


def attach_ondisk(raw: Any, lists: Any, ntotal: int) -> None:
    """Make ``lists`` (written, see :func:`ondisk_layout`) the inverted lists of ``raw``,
    memory-mapped read only."""
    ivf = ivf_of(raw)
    lists.read_only = True
    if lists.totsize:
        lists.do_mmap()
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns them now
    ivf.ntotal = ntotal
    raw.ntotal = ntotal


def is_ondisk_raw(raw: Any) -> bool:
    """True when ``raw`` keeps its inverted lists on disk."""
    faiss = faiss_module()
    try:
        ivf = faiss.extract_index_ivf(raw)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def serialized_size(raw: Any) -> int:
    """The size of ``raw`` once written (it is serialised in memory to count)."""
    return int(faiss_module().serialize_index(raw).size)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
