"""A library's index files: where they live, opening the published one against its manifest
(size, dimension and count; no full read), and verifying its checksum (``db check``).

An in-memory index is one file, ``<fingerprint>-g<generation>.faiss``, replaced atomically. An
on-disk index is two, ``<fingerprint>-g<generation>-<token>.faiss`` and its ``.ivfdata``
lists: a new name for every build, so that a new pair never overwrites the pair the manifest
names (which readers may have mapped); the manifest switches to the new pair in one write and
older files are deleted after it."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LibraryError
from .index import VectorIndex
from .raw import files_checksum, ivfdata_path
from .spec import MMAP_BYTES, SearchParams, is_ondisk

if TYPE_CHECKING:
    from ..reader import Reader
    from ..records import Manifest, SpaceRecord

log = logging.getLogger(__name__)

# The manifest kind of index files written before index specs existed: an exact index.
LEGACY_KIND = "IDMap2,FlatIP"


def kind_spec(kind: str) -> str:
    """The index spec a manifest's ``kind`` stands for."""
    return "Flat" if kind == LEGACY_KIND else kind


def index_path(store: Reader, record: SpaceRecord, generation: int) -> Path:
    """Where the space's index file of ``generation`` is published."""
    return store.index_dir / f"{record.fingerprint}-g{generation}.faiss"


def ondisk_path(store: Reader, record: SpaceRecord, generation: int) -> Path:
    """A new name for an on-disk index file of ``generation`` (its lists: the same name with
    ``.ivfdata``), never one in use."""
    return store.index_dir / f"{record.fingerprint}-g{generation}-{secrets.token_hex(4)}.faiss"


def index_files(path: Path, spec: str) -> list[Path]:
    """The files of the index at ``path``: itself, and its lists for an on-disk ``spec``."""
    return [path, ivfdata_path(path)] if is_ondisk(spec) else [path]


def remove_older(store: Reader, record: SpaceRecord, keep: Path) -> None:
    """Delete the space's index files other than ``keep`` (and its lists)."""
    kept = {keep.name, ivfdata_path(keep).name}
    for pattern in ("g*.faiss", "g*.ivfdata"):
        for old in store.index_dir.glob(f"{record.fingerprint}-{pattern}"):
            if old.name not in kept:
                old.unlink(missing_ok=True)


def open_published(
    store: Reader,
    record: SpaceRecord,
    manifest: Manifest,
    *,
    dim: int,
    spec: str,
    params: SearchParams,
    mmap: bool | None = False,
) -> VectorIndex:
    """The space's published index file as its manifest describes it.

    The file is refused unless its size, dimension and vector count match the manifest; its
    bytes are not hashed (see :func:`verify_index`). A manifest written before sizes were
    recorded (``nbytes`` None) falls back to the checksum, and a writable ``store`` then
    records the size so that later opens skip it. ``mmap``: True memory-maps the file (read
    only), None does so for files of at least :data:`MMAP_BYTES`; an on-disk index always
    maps its lists. Raises :class:`LibraryError`.
    """
    path = store.index_dir / manifest.filename
    use_mmap = bool(mmap)
    if mmap is None:
        try:
            use_mmap = path.stat().st_size >= MMAP_BYTES
        except OSError:
            use_mmap = False
    legacy = manifest.nbytes is None
    if legacy:
        log.info("index file %s has no recorded size: checking its checksum", path.name)
    index = VectorIndex.load(
        path,
        dim=dim,
        nbytes=manifest.nbytes,
        checksum=manifest.checksum if legacy else None,
        spec=spec,
        params=params,
        mmap=use_mmap,
    )
    if len(index) != manifest.count:
        raise LibraryError(
            f"index file {path} holds {len(index)} vectors, its manifest says {manifest.count}"
        )
    if legacy:
        _record_size(store, record, manifest, path)
    return index


def _record_size(store: Reader, record: SpaceRecord, manifest: Manifest, path: Path) -> None:
    record_size = getattr(store, "record_index_size", None)
    if record_size is None:  # a read-only reader: the checksum is checked again next time
        return
    try:
        record_size(record.id, manifest.checksum, path.stat().st_size)
    except (OSError, LibraryError) as err:  # a cache's bookkeeping: never fail a query on it
        log.info("could not record the size of %s: %s", path.name, err)


def verify_index(store: Reader, record: SpaceRecord) -> list[str]:
    """Problems with the space's published index file, empty when it is sound (or when no
    file is published yet, or a server library has no copy on this machine): missing or
    unreadable, a size, SHA-256, dimension or vector
    count other than its manifest's. Reads the whole file."""
    from ..whiten import index_dim

    manifest = store.manifest(record.id)
    if manifest is None:
        return []
    if store.location.path is None:  # a server library: this machine's copy, if any
        from ..local_index import verify_copy

        return verify_copy(store, record, manifest)
    path = store.index_dir / manifest.filename
    where = f"space {record.fingerprint}: index file {manifest.filename}"
    spec = kind_spec(manifest.kind)
    try:
        checksum, size = files_checksum(index_files(path, spec))
    except OSError as err:
        return [f"{where} cannot be read ({err.strerror or err})"]
    problems = []
    if manifest.nbytes is not None and size != manifest.nbytes:
        problems.append(f"{where} has {size} bytes, its manifest says {manifest.nbytes}")
    if checksum != manifest.checksum:
        problems.append(f"{where} does not match its manifest checksum")
    if problems:
        return problems
    dim = index_dim(store, record)
    try:
        index = VectorIndex.load(path, dim=dim, spec=spec, mmap=size >= MMAP_BYTES)
    except LibraryError as err:
        return [f"{where}: {err}"]
    if len(index) != manifest.count:
        problems.append(f"{where} holds {len(index)} vectors, its manifest says {manifest.count}")
    return problems
