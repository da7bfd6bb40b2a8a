"""A server library's index files on this machine: each space's FAISS file in the index
folder with a local record beside it (the generation it holds, its checksum), checked
against the database on every open and rebuilt from the stored vectors when behind,
missing or damaged, under a lock of the folder so that one process on a machine builds it.

The database's manifest says what the published index is (generation, kind, count, tuned
search params); every machine keeps its own file of it. A SQLite library's index files are
the published ones themselves (beside the .db) and never pass through here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LibraryError

if TYPE_CHECKING:
    from .ann.index import SavedFile, VectorIndex
    from .ann.spec import SearchParams
    from .reader import Reader
    from .records import Manifest, SpaceRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalCopy:
    """What this machine's index file of a space holds: the published generation and kind,
    its live vectors, and the file's name, SHA-256 and size."""

    generation: int
    kind: str
    count: int
    filename: str
    checksum: str
    nbytes: int

    def serves(self, manifest: Manifest) -> bool:
        """Whether this copy is of the index ``manifest`` publishes."""
        return (self.generation, self.kind) == (manifest.generation, manifest.kind)


def record_path(store: Reader, record: SpaceRecord) -> Path:
    """Where the local record of a space's index file is kept."""
    return store.index_dir / f"{record.fingerprint}.local.json"


def read_copy(store: Reader, record: SpaceRecord) -> LocalCopy | None:
    """The local record of a space's index file; None when there is none or it is unreadable."""
    try:
        data = json.loads(record_path(store, record).read_text(encoding="utf-8"))
        return LocalCopy(**data)
    except (OSError, ValueError, TypeError):
        return None


def remember(store: Reader, record: SpaceRecord, copy: LocalCopy) -> None:
    """Write the local record atomically (temp file, fsync, ``os.replace``)."""
    path = record_path(store, record)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(copy), fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def saved_copy(manifest: Manifest, index: VectorIndex, path: Path, saved: SavedFile) -> LocalCopy:
    """The local record of ``index``, just saved at ``path`` as ``saved``, of ``manifest``."""
    return LocalCopy(
        generation=manifest.generation,
        kind=manifest.kind,
        count=len(index),
        filename=path.name,
        checksum=saved.checksum,
        nbytes=saved.nbytes,
    )


@contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the index folder itself (no lock file): processes of
    one machine build and save its index files one at a time. Yields False, holding nothing,
    when the folder cannot be made or locked here (then nothing should be saved)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): saves are still atomic, builds may overlap
        yield True
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        log.info("cannot use index folder %s: %s", folder, err)
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _load(
    store: Reader,
    record: SpaceRecord,
    manifest: Manifest,
    *,
    dim: int,
    spec: str,
    params: SearchParams,
    mmap: bool | None,
) -> VectorIndex | None:
    """This machine's copy of the published index when its record says it is of
    ``manifest`` and the file matches the record (size, SHA-256, count); else None."""
    from .ann.index import VectorIndex
    from .ann.spec import MMAP_BYTES

    copy = read_copy(store, record)
    if copy is None or not copy.serves(manifest):
        return None
    path = store.index_dir / copy.filename
    use_mmap = bool(mmap) if mmap is not None else copy.nbytes >= MMAP_BYTES
    try:
        index = VectorIndex.load(
            path,
            dim=dim,
            nbytes=copy.nbytes,
            checksum=copy.checksum,
            spec=spec,
            params=params,
            mmap=use_mmap,
        )
    except LibraryError as err:
        if path.exists():
            log.warning("%s; rebuilding it from the library", err)
        return None
    if len(index) != copy.count:
        log.warning(
            "index file %s holds %d vectors, its record says %d; rebuilding it",
            path,
            len(index),
            copy.count,
        )
        return None
    return index


def open_copy(
    store: Reader,
    record: SpaceRecord,
    manifest: Manifest,
    *,
    dim: int,
    spec: str,
    params: SearchParams,
    mmap: bool | None = False,
) -> tuple[VectorIndex, int]:
    """The index ``manifest`` publishes (current: its generation is the space's), from this
    machine's copy, and the generation it reflects.

    A copy that is missing, of an older generation or another kind, or whose file does not
    match its record (size, checksum, count) is rebuilt from the stored vectors with the
    published kind and search params, then saved (file, then record; both atomic) so that
    the next process opens it. The build runs under :func:`folder_lock`: a second process
    waits and opens what the first saved. When the space moved on during the build, the
    index is used but not saved (it is not the published one).
    """
    index = _load(store, record, manifest, dim=dim, spec=spec, params=params, mmap=mmap)
    if index is not None:
        return index, manifest.generation
    with folder_lock(store.index_dir) as locked:
        index = _load(store, record, manifest, dim=dim, spec=spec, params=params, mmap=mmap)
        if index is not None:  # another process saved it meanwhile
            return index, manifest.generation
        log.info("building this machine's copy of the index of %s", record.fingerprint)
        index, generation = _build(store, record, spec, params)
        if not locked or generation != manifest.generation:
            return index, generation
        newer = read_copy(store, record)
        if newer is not None and newer.generation > generation:
            return index, generation  # never replace a newer copy with an older one
        save(store, record, manifest, index)
    return index, generation


def save(store: Reader, record: SpaceRecord, manifest: Manifest, index: VectorIndex) -> None:
    """Save ``index`` (of ``manifest``) as this machine's copy: the file (atomic), its
    record, then older files of the space removed. The caller holds :func:`folder_lock`."""
    from .ann.files import index_path, remove_older

    path = index_path(store, record, manifest.generation)
    try:
        saved = index.save(path)
        remember(store, record, saved_copy(manifest, index, path, saved))
    except (OSError, LibraryError) as err:  # a cache: a query never fails for it
        log.warning("cannot save the index of %s on this machine: %s", record.fingerprint, err)
        return
    remove_older(store, record, path)


def _build(
    store: Reader, record: SpaceRecord, spec: str, params: SearchParams
) -> tuple[VectorIndex, int]:
    """The space's index of ``spec`` from its stored vectors, with the published search
    params (not tuned again: every machine searches alike), and its generation."""
    from .ann.index import VectorIndex
    from .whiten import for_index

    generation, ids, vectors = store.vectors(record.id)
    vectors = for_index(store, record, vectors)
    index = VectorIndex.build(vectors.shape[1], ids, vectors, spec=spec, tune=False)
    index.params = index.params.merged(params)
    return index, generation


def verify_copy(store: Reader, record: SpaceRecord, manifest: Manifest) -> list[str]:
    """Problems with this machine's copy of a space's published index (for ``db check``):
    none when there is no copy of it yet (the next search builds one)."""
    from .ann.raw import file_checksum

    copy = read_copy(store, record)
    if copy is None or not copy.serves(manifest):
        return []
    path = store.index_dir / copy.filename
    where = f"space {record.fingerprint}: index file {copy.filename}"
    try:
        checksum, size = file_checksum(path)
    except OSError as err:
        return [f"{where} cannot be read ({err.strerror or err})"]
    if size != copy.nbytes:
        return [f"{where} has {size} bytes, its local record says {copy.nbytes}"]
    if checksum != copy.checksum:
        return [f"{where} does not match the checksum of its local record"]
    return []
