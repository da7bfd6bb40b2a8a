"""A space's index against the store: the spec it should have, building it from the stored
vectors, opening the current one, and publishing a new one (file, then manifest).

These take the store and the space's record; the store is the truth, the file a rebuildable
cache. Whether to publish is decided by :meth:`featx_search.space.Space._settle`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LibraryError
from .files import index_path, kind_spec, open_published, remove_older
from .index import Fetch, VectorIndex
from .spec import SearchParams, resolve_spec

if TYPE_CHECKING:
    from ..reader import Reader
    from ..records import SpaceRecord
    from ..store import Store

log = logging.getLogger(__name__)


def wanted_spec(store: Reader, record: SpaceRecord, count: int | None = None) -> str:
    """The spec a space's index should have now (``auto`` and untrainable specs resolved)."""
    from ..whiten import index_dim

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
    from ..whiten import for_index

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
    from ..whiten import for_index

    def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, found, vectors = store.vectors(record.id, [int(i) for i in ids])
        return found, for_index(store, record, vectors)

    return fetch


def open_index(
    store: Reader, record: SpaceRecord, *, mmap: bool | None = False
) -> tuple[VectorIndex, int]:
    """The index of a space at the store's current generation, and that generation.

    Opens the published file when the manifest says it is current and of the spec the space
    wants now, and the file matches the manifest's size, dimension and count (see
    :func:`~featx_search.ann.files.open_published`; ``mmap`` as there); otherwise rebuilds
    from stored vectors (with a warning when a file was refused).
    """
    from ..whiten import index_dim

    manifest = store.manifest(record.id)
    if manifest is None or manifest.generation != record.generation:
        return build_from_store(store, record)
    want = wanted_spec(store, record, manifest.count)  # current: its count is the store's
    if kind_spec(manifest.kind) != want:
        log.info(
            "index of %s is %s, wanted %s; rebuilding", record.fingerprint, manifest.kind, want
        )
        return build_from_store(store, record)
    params = SearchParams.from_dict(json.loads(manifest.params_json or "{}"))
    if store.location.path is None:
        # A server library's index files are per machine: this one's copy, made if needed.
        from ..local_index import open_copy

        index, generation = open_copy(
            store,
            record,
            manifest,
            dim=index_dim(store, record),
            spec=want,
            params=params,
            mmap=mmap,
        )
        index.fetch = _store_fetch(store, record)
        return index, generation
    try:
        index = open_published(
            store,
            record,
            manifest,
            dim=index_dim(store, record),
            spec=want,
            params=params,
            mmap=mmap,
        )
    except LibraryError as err:
        log.warning("%s; rebuilding it from the library", err)
        return build_from_store(store, record)
    index.fetch = _store_fetch(store, record)
    return index, manifest.generation


def publish_index(
    store: Store, record: SpaceRecord, index: VectorIndex, generation: int
) -> VectorIndex:
    """Write ``index`` (which reflects the store at ``generation``) and point the manifest at it.

    When the space now wants another spec (``auto`` outgrew it, or the spec was changed) or
    tombstones passed their threshold, the index is first rebuilt from the store. The
    manifest records the file's checksum, taken from the bytes on disk, and its size. Older
    files of the space are deleted afterwards. Returns the published index.
    """
    from ..records import Manifest

    want = wanted_spec(store, record)
    if index.spec != want or index.needs_compaction:
        reason = "tombstones" if index.spec == want else f"{index.spec} -> {want}"
        log.info("rebuilding the index of %s (%s)", record.fingerprint, reason)
        index, generation = build_from_store(store, record, want)
    path = index_path(store, record, generation)
    with folder_lock(store) as local:
        saved = index.save(path)
        manifest = Manifest(
            generation=generation,
            count=len(index),
            checksum=saved.checksum,
            filename=path.name,
            kind=index.spec,
            tombstones=index.tombstones,
            params_json=json.dumps(index.params.to_dict(), sort_keys=True),
            nbytes=saved.nbytes,
        )
        store.set_manifest(record.id, manifest)
        if local:  # a server library: this machine's copy is the published file
            from ..local_index import remember, saved_copy

            remember(store, record, saved_copy(manifest, index, path, saved))
        remove_older(store, record, path)
    return index


@contextmanager
def folder_lock(store: Reader) -> Iterator[bool]:
    """For a server library, this machine's index folder locked (see
    :func:`featx_search.local_index.folder_lock`), yielding True; a SQLite library's index
    files are written under its writer lock already: yields False."""
    if store.location.path is not None:
        yield False
        return
    from ..local_index import folder_lock as lock

    with lock(store.index_dir):
        yield True


def rebuild_index(store: Store, record: SpaceRecord) -> BuildInfo:
    """Build the space's index from its stored vectors with its current spec and publish it."""
    started = time.perf_counter()
    record = store.space(record.id)
    index, generation = build_from_store(store, record)
    index = publish_index(store, record, index, generation)
    manifest = store.manifest(record.id)
    return BuildInfo(
        spec=index.spec,
        count=len(index),
        params=index.params,
        nbytes=(manifest.nbytes or 0) if manifest else 0,
        seconds=time.perf_counter() - started,
    )
