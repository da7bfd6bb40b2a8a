"""Streamed index builds: train on a sample, add chunk by chunk, and for on-disk IVF specs
write the inverted lists straight into their ``.ivfdata`` file, so that a build's memory does
not grow with the library (the in-memory codes of an in-memory index aside).

An on-disk build makes two passes over the source: the first assigns each vector to its
inverted list (the list numbers go to a temporary file) and counts the lists; the lists are
then laid out one after the other as faiss's ``OnDiskInvertedLists`` reads them, and the
second pass encodes each chunk and writes its codes and ids at their lists' next free slots.
The lists hold the entries in the order an in-memory ``add`` would give, so the on-disk index
answers exactly like the in-memory one trained on the same sample. The exact ground truth for
tuning is collected in the last pass.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, LibraryError
from .index import VectorIndex
from .raw import assign_lists, attach_ondisk, coarse_transform, encode, ivf_of, ondisk_layout
from .source import CHUNK, VectorSource, sample_positions
from .spec import DEFAULT_RERANK, SearchParams
from .tuning import TUNE_QUERIES, TruthHeap, query_sample, tune_params

log = logging.getLogger(__name__)


def build_index(
    source: VectorSource,
    dim: int,
    *,
    spec: str = "Flat",
    tune: bool = True,
    seed: int = 0,
    chunk: int = CHUNK,
    ivfdata: Path | None = None,
    trained: VectorIndex | None = None,
) -> VectorIndex:
    """An index of ``spec`` holding every vector of ``source`` (of ``dim`` floats).

    Trainable specs are trained on :attr:`VectorIndex.train_size` rows drawn with ``seed``;
    the vectors are then added ``chunk`` rows at a time. An on-disk spec writes its lists to
    ``ivfdata`` (required; an existing file is replaced) and comes back memory-mapped, read
    only. With ``tune`` the default nprobe / efSearch are raised until recall@10 on a sample
    reaches :data:`~featx_search.ann.spec.RECALL_TARGET`. The index's ``fetch`` (for
    re-ranking lossy codes) is ``source.fetch``: the caller replaces it when ``source`` is
    a snapshot that closes. ``trained``: an empty trained index of ``spec`` to fill instead
    of training a new one (see :meth:`VectorIndex.trained_copy`). Raises
    :class:`ConfigError` when ``source`` is too small to train ``spec`` or an on-disk spec
    has no ``ivfdata``.
    """
    started = time.perf_counter()
    index = trained if trained is not None else VectorIndex(dim, spec=spec)
    if index.ondisk and ivfdata is None:
        raise ConfigError(
            f"index {spec!r} keeps its lists on disk: give the file for them", param="index"
        )
    if not index.raw.is_trained:
        index.check_trainable(source.count)
        _, sample = source.pick(sample_positions(source.count, index.train_size, seed))
        index.train_on(sample)
        del sample
    if index.lossy:
        index.params = SearchParams(rerank=DEFAULT_RERANK)
    index.fetch = source.fetch
    truth = None
    if tune and index.approximate and source.count >= 2:
        ids, queries = query_sample(source, TUNE_QUERIES, seed)
        truth = TruthHeap(ids, queries, 10, source.count)
    if index.ondisk:
        assert ivfdata is not None  # checked above
        _write_lists(index, source, chunk, ivfdata, truth)
    else:
        for ids, vectors in source.chunks(chunk):
            index.append(ids, vectors)
            if truth is not None:
                truth.add(ids, vectors)
    if truth is not None:
        index.params = tune_params(index, truth.result(), source.fetch)
    log.info("built %s of %d vectors in %.1f s", spec, source.count, time.perf_counter() - started)
    return index


def _write_lists(
    index: VectorIndex,
    source: VectorSource,
    chunk: int,
    path: Path,
    truth: TruthHeap | None,
) -> None:
    """Write ``source`` into the on-disk lists ``path`` of the trained ``index`` (two passes)
    and attach them to it, memory-mapped read only."""
    raw = index.raw
    ivf = ivf_of(raw)
    nlist, code_size = int(ivf.nlist), int(ivf.code_size)
    counts = np.zeros(nlist, np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent, prefix=".assign-") as assigned:
        total = 0
        for _, vectors in source.chunks(chunk):
            lists = assign_lists(ivf, coarse_transform(raw, vectors))
            counts += np.bincount(lists, minlength=nlist)
            assigned.write(lists.astype(np.int32).tobytes())
            total += len(lists)
        lists_file, offsets = ondisk_layout(nlist, code_size, counts, path)
        assigned.seek(0)
        filled = np.zeros(nlist, np.int64)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, int(lists_file.totsize))
            for ids, vectors in source.chunks(chunk):
                if truth is not None:
                    truth.add(ids, vectors)
                lists = np.frombuffer(assigned.read(4 * len(ids)), np.int32).astype(np.int64)
                if len(lists) != len(ids):
                    raise LibraryError("the vectors changed during an on-disk build")
                codes = encode(ivf, coarse_transform(raw, vectors), lists)
                _write_chunk(fd, lists, np.asarray(ids, np.int64), codes, offsets, counts, filled)
            os.fsync(fd)
        finally:
            os.close(fd)
    if not np.array_equal(filled, counts):
        raise LibraryError("the vectors changed during an on-disk build")
    attach_ondisk(raw, lists_file, total)
    index.ivfdata = path
    index.read_only = True


def _write_chunk(
    fd: int,
    lists: np.ndarray,
    ids: np.ndarray,
    codes: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray,
    filled: np.ndarray,
) -> None:
    """Write one chunk's codes and ids at the next free slots of their lists (a list at
    offset o with n entries: codes at o, ids at o + n * code_size)."""
    code_size = codes.shape[1]
    order = np.argsort(lists, kind="stable")  # keeps each list's entries in source order
    lists, ids, codes = lists[order], ids[order], codes[order]
    cuts = np.flatnonzero(np.diff(lists)) + 1
    for start, end in zip(np.r_[0, cuts], np.r_[cuts, len(lists)], strict=True):
        if start == end:
            continue
        number = int(lists[start])
        at = int(filled[number])
        base = int(offsets[number])
        os.pwrite(fd, codes[start:end].tobytes(), base + at * code_size)
        os.pwrite(fd, ids[start:end].tobytes(), base + int(counts[number]) * code_size + at * 8)
        filled[number] += end - start
