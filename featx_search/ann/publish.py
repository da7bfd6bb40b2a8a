"""A space's index against the store: the spec it should have, building it from the stored
vectors, opening the current one, and publishing a new one (file, then manifest).

These take the store and the space's record; the store is the truth, the file a rebuildable
cache. Whether to publish is decided by :meth:`featx_search.space.Space._settle`. Builds and
recall runs stream the stored vectors from one snapshot in chunks
(:meth:`~featx_search.reader.Reader.vector_snapshot`)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LibraryError
from .files import index_files, index_path, kind_spec, ondisk_path, open_published, remove_older
from .index import Fetch, VectorIndex
from .raw import ivfdata_path
from .source import CHUNK, Transformed, VectorSource
from .spec import SearchParams, default_budget, is_ondisk, resolve_spec

if TYPE_CHECKING:
    from ..reader import Reader
    from ..records import SpaceRecord
    from ..store import Store

log = logging.getLogger(__name__)


def wanted_spec(store: Reader, record: SpaceRecord, count: int | None = None) -> str:
    """The spec a space's index should have now (``auto`` and untrainable specs resolved)."""
    from ..whiten import index_dim

    settings = store.index_settings(record.id)
    budget = settings.max_memory if settings.max_memory is not None else default_budget()
    return resolve_spec(
        settings.spec, record.count if count is None else count, index_dim(store, record), budget
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
    store: Reader,
    record: SpaceRecord,
    spec: str | None = None,
    *,
    ivfdata: Path | None = None,
    chunk: int = CHUNK,
    trained: VectorIndex | None = None,
) -> tuple[VectorIndex, int]:
    """A new index of the space from its stored vectors (no re-embedding), and the generation
    it reflects. ``spec`` None means the space's own (see :func:`wanted_spec`).

    The vectors stream from one snapshot of the store, ``chunk`` at a time
    (:func:`~featx_search.ann.build.build_index`). An on-disk spec writes its lists to
    ``ivfdata`` (to be published there), else to a private folder whose files are unlinked
    once mapped (such an index serves this process and cannot be saved). ``trained``: an
    empty trained index of ``spec`` to fill instead of training again.

    This is the one place where stored vectors enter a rebuilt index."""
    from ..whiten import index_dim, stored
    from .build import build_index

    whitening = stored(store, record)  # read before the snapshot: no reads inside it
    dim = index_dim(store, record)
    spec = spec or wanted_spec(store, record)
    private = None
    if is_ondisk(spec) and ivfdata is None:
        private = _private_folder(store)
        ivfdata = private / "index.ivfdata"
    try:
        with store.vector_snapshot(record.id) as snapshot:
            source: VectorSource = snapshot
            if whitening is not None:
                source = Transformed(snapshot, whitening.apply)
            index = build_index(
                source, dim, spec=spec, ivfdata=ivfdata, chunk=chunk, trained=trained
            )
            generation = snapshot.generation
    finally:
        if private is not None:  # mapped files stay readable until unmapped (POSIX)
            shutil.rmtree(private, ignore_errors=True)
    if private is not None:
        index.ivfdata = None
    index.fetch = _store_fetch(store, record)
    return index, generation


def recall_from_store(
    store: Reader,
    record: SpaceRecord,
    index: VectorIndex,
    *,
    k: int = 10,
    sample: int = 200,
    seed: int = 0,
    params: SearchParams | None = None,
    chunk: int = CHUNK,
) -> tuple[float, int]:
    """Recall@k of ``index`` against exact search on ``sample`` stored vectors of the space,
    and how many vectors were searched. The exact top k streams the store in chunks of
    ``chunk`` (see :func:`~featx_search.ann.tuning.recall_of`)."""
    from ..whiten import stored
    from .tuning import ground_truth, recall_of

    whitening = stored(store, record)
    with store.vector_snapshot(record.id) as snapshot:
        source: VectorSource = snapshot
        if whitening is not None:
            source = Transformed(snapshot, whitening.apply)
        count = snapshot.count
        truth = ground_truth(source, k, sample, seed, chunk=chunk) if count >= 2 else None
    if truth is None:
        return 1.0, count
    return recall_of(index, truth, _store_fetch(store, record), params=params), count


def _private_folder(store: Reader) -> Path:
    # Beside the index files when possible: the lists are as large as the vectors.
    try:
        store.index_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".build-", dir=store.index_dir))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="featx-build-"))


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


def writer_index(store: Reader, record: SpaceRecord) -> tuple[VectorIndex, int]:
    """The index a sync's writer mirrors its batches in, and the store's generation it
    mirrors: a private copy from :func:`open_index`; for an on-disk spec the published index
    itself, read only (the sync cannot change its lists; publishing rebuilds it from the
    store), or an empty stand-in when none is current (no build before the sync)."""
    from ..whiten import index_dim

    want = wanted_spec(store, record)
    if not is_ondisk(want):
        return open_index(store, record)
    manifest = store.manifest(record.id)
    if manifest is not None and kind_spec(manifest.kind) == want:
        try:
            return open_index(store, record)
        except LibraryError:
            pass
    return VectorIndex(index_dim(store, record), spec=want, read_only=True), record.generation


def _fresh(store: Reader, index: VectorIndex) -> bool:
    """True for an on-disk index built to be published: lists in the index folder under a
    name no manifest uses yet."""
    if index.ivfdata is None or index.ivfdata.parent.resolve() != store.index_dir.resolve():
        return False
    return index.ivfdata.exists() and not index.ivfdata.with_suffix(".faiss").exists()


def publish_index(
    store: Store, record: SpaceRecord, index: VectorIndex, generation: int
) -> VectorIndex:
    """Write ``index`` (which reflects the store at ``generation``) and point the manifest at it.

    When the space now wants another spec (``auto`` outgrew it, or the spec was changed) or
    tombstones passed their threshold, the index is first rebuilt from the store. The
    manifest records the file's checksum, taken from the bytes on disk, and its size. Older
    files of the space are deleted afterwards. Returns the published index.

    An on-disk index is published as a new pair of files (see
    :mod:`~featx_search.ann.files`): until the manifest names them, readers keep the old
    pair; when saving or the manifest fails, the new pair is deleted.
    """
    from ..records import Manifest

    want = wanted_spec(store, record)
    stale = index.ondisk and not _fresh(store, index)
    if index.spec != want or index.needs_compaction or stale:
        reason = "tombstones" if index.needs_compaction else "lists written again"
        reason = reason if index.spec == want else f"{index.spec} -> {want}"
        # an on-disk index a sync could not change: its lists are written again, with the
        # vectors added to the same trained lists (as a sync adds to an in-memory index)
        trained = index.trained_copy() if index.spec == want else None
        log.info("rebuilding the index of %s (%s)", record.fingerprint, reason)
        index, generation = _build_to_publish(store, record, want, generation, trained)
    if index.ivfdata is not None:
        path = index.ivfdata.with_suffix(".faiss")
    else:
        path = index_path(store, record, generation)
    with folder_lock(store) as local:
        try:
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
        except BaseException:
            if index.ondisk:  # the manifest still names the old pair: drop the new one
                for new in index_files(path, index.spec):
                    new.unlink(missing_ok=True)
            raise
        if local:  # a server library: this machine's copy is the published file
            from ..local_index import remember, saved_copy

            remember(store, record, saved_copy(manifest, index, path, saved))
        remove_older(store, record, path)
    return index


def _build_to_publish(
    store: Store,
    record: SpaceRecord,
    spec: str,
    generation: int,
    trained: VectorIndex | None = None,
) -> tuple[VectorIndex, int]:
    """:func:`build_from_store` for publishing: an on-disk spec's lists go into the index
    folder under a new name (deleted again if the build fails)."""
    ivfdata = ivfdata_path(ondisk_path(store, record, generation)) if is_ondisk(spec) else None
    try:
        return build_from_store(store, record, spec, ivfdata=ivfdata, trained=trained)
    except BaseException:
        if ivfdata is not None:
            ivfdata.unlink(missing_ok=True)
        raise


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
    index, generation = _build_to_publish(
        store, record, wanted_spec(store, record), record.generation
    )
    index = publish_index(store, record, index, generation)
    manifest = store.manifest(record.id)
    return BuildInfo(
        spec=index.spec,
        count=len(index),
        params=index.params,
        nbytes=(manifest.nbytes or 0) if manifest else 0,
        seconds=time.perf_counter() - started,
    )
