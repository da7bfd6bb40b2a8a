"""The library database, write side: engine, pragmas, migrations on open, transactions.

SQLite (WAL mode) is the source of truth for metadata and vectors. :class:`Store` adds
writes and migrations (SQLAlchemy and Alembic; the only users of them besides
:mod:`featx_search.schema`) to the plain-``sqlite3`` reads of :class:`~.reader.Reader`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, delete, event, select, update
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from .config import SpaceSpec
from .errors import LibraryError, LibraryVersionError, SpaceError
from .reader import (
    FAILED,
    HEAD_REVISION,
    INDEXED,
    VECTOR_DTYPE,
    FileResult,
    ImageFacts,
    IndexSettings,
    KnownFile,
    Manifest,
    Move,
    Reader,
    SpaceRecord,
    StoredCopy,
    _inside,
    revision,
)
from .schema import Image, IndexManifest, Root, Space, Vector

# Records and constants live in .reader (importing them loads no SQLAlchemy); they are
# re-exported here for code that writes.
__all__ = [
    "FAILED",
    "HEAD_REVISION",
    "INDEXED",
    "VECTOR_DTYPE",
    "FileResult",
    "ImageFacts",
    "IndexSettings",
    "KnownFile",
    "Manifest",
    "Move",
    "SpaceRecord",
    "Store",
    "StoredCopy",
]

log = logging.getLogger(__name__)

# How long a second indexer waits for the first before giving up.
WRITER_WAIT_SECONDS = 10.0


def migrations_dir() -> Path:
    """Where the Alembic scripts live (``migrations/`` in a checkout, inside the wheel else)."""
    import importlib

    package = importlib.import_module("featx_search.migrations")
    return Path(str(package.__file__)).parent


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see _on_begin),
    # so that reads inside one transaction see one snapshot.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed batch survives a power cut too (one fsync per batch, small next to
    # the model's time); NORMAL could lose the last commits, never corrupt.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _text(message: str) -> str:
    """``message`` made storable as UTF-8 text: undecodable path bytes become ``\\xNN``."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _drop_vectors(s: Session, image_ids: Sequence[int]) -> dict[int, list[int]]:
    """Delete every vector of ``image_ids`` in every space; returns {space id: image ids}."""
    if not image_ids:
        return {}
    rows = s.execute(
        select(Vector.space_id, Vector.image_id).where(Vector.image_id.in_(image_ids))
    ).all()
    s.execute(delete(Vector).where(Vector.image_id.in_(image_ids)))
    by_space: dict[int, list[int]] = {}
    for space, image in rows:
        by_space.setdefault(space, []).append(image)
    return by_space


def _has_vector(space_id: int | None = None) -> Any:
    """SQL: the image of the row has a vector (in ``space_id``, or in any space)."""
    query = select(Vector.image_id).where(Vector.image_id == Image.id)
    if space_id is not None:
        query = query.where(Vector.space_id == space_id)
    return query.exists()


def _on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


class Store(Reader):
    """One library database, for writing (reads are :class:`Reader`'s). Open with
    :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path, engine: Engine) -> None:
        super().__init__(path)
        self.engine = engine

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, migrate: bool = True, create: bool = True
    ) -> Store:
        """Open the database at ``path``, creating it when missing if ``create``.

        With ``migrate`` the schema is brought to the newest revision. A database whose
        revision this version does not know raises :class:`LibraryVersionError`.
        """
        db = Path(path).expanduser().resolve()
        if db.is_dir():
            raise LibraryError(
                f"library path {db} is a folder", hint="--db takes a database file, e.g. photos.db"
            )
        if not create and not db.exists():
            raise LibraryError(
                f"no library at {db}",
                hint=f"check --db / FEATX_DB, or create it: featx-search --db {db} index FOLDER",
            )
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LibraryError(f"cannot create folder for library {db}: {err}") from err
        engine = create_engine(f"sqlite:///{db}", connect_args={"timeout": 10})
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        store = cls(db, engine)
        try:
            if revision(db) != HEAD_REVISION:  # skips Alembic when up to date
                store._check_revision()
                if migrate:
                    store.upgrade()
        except OperationalError as err:
            engine.dispose()
            raise LibraryError(f"cannot open library {db}: {err.orig}") from err
        except DatabaseError as err:
            engine.dispose()
            raise LibraryError(
                f"{db} is not a featx-search library: {err.orig}",
                hint="point --db at a library file or a new path",
            ) from err
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        super().close()
        self.engine.dispose()

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the library's writer lock (``DB.lock``): one indexer at a time.

        Waits up to :data:`WRITER_WAIT_SECONDS`, then raises :class:`LibraryError`. Readers
        never take it. The lock is released by the OS if the process dies.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        try:
            lock.acquire(timeout=WRITER_WAIT_SECONDS)
        except Timeout:
            raise LibraryError(
                f"another indexer is running on {self.path}",
                hint="wait for it to finish, then run this again; searches work meanwhile",
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- migrations ---------------------------------------------------------------------

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
        return heads[0] if heads else None

    @staticmethod
    def head_revision() -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
        assert head is not None  # the package always ships at least one revision
        return head

    def _check_revision(self) -> None:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        current = self.current_revision()
        if current is None:
            return
        scripts = ScriptDirectory.from_config(_alembic_config(str(self.engine.url)))
        try:
            scripts.get_revision(current)
        except CommandError:
            raise LibraryVersionError(
                f"library {self.path} has schema revision {current!r}, unknown to this "
                f"featx-search (newest known: {self.head_revision()})",
                hint="it was written by a newer featx-search: upgrade featx-search to use it",
            ) from None

    def upgrade(self) -> None:
        """Apply every migration up to the newest revision (a no-op when up to date)."""
        from alembic import command

        if self.current_revision() == self.head_revision():
            return
        cfg = _alembic_config(str(self.engine.url))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("library %s migrated to %s", self.path, self.head_revision())

    # -- spaces -------------------------------------------------------------------------

    def ensure_space(self, spec: SpaceSpec) -> SpaceRecord:
        """The stored space with ``spec``'s fingerprint, created when new."""
        for record in self.spaces():
            if record.fingerprint == spec.fingerprint:
                return record
        with self.transaction() as s:
            row = Space(
                fingerprint=spec.fingerprint,
                label=spec.label,
                spec_json=json.dumps(spec.to_dict(), sort_keys=True),
                dim=spec.dim,
                generation=0,
            )
            s.add(row)
            s.flush()
            return SpaceRecord(row.id, spec, 0, 0)

    def set_transform(self, space_id: int, data: bytes | None) -> None:
        """Store (or with None remove) a space's transform. The space's generation grows, so
        its index file is stale and is rebuilt from the stored vectors."""
        with self.transaction() as s:
            s.execute(
                update(Space)
                .where(Space.id == space_id)
                .values(transform=data, generation=Space.generation + 1)
            )

    # -- roots and files ----------------------------------------------------------------

    def root_for(self, folder: Path) -> tuple[int, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved).

        A folder inside a known root uses that root; a folder above known roots absorbs them.
        """
        folder_str = str(folder)
        with self.transaction() as s:
            roots = list(s.scalars(select(Root)))
            for root in roots:
                if folder_str == root.path or _inside(folder_str, root.path):
                    return root.id, Path(root.path)
            new = Root(path=folder_str)
            s.add(new)
            s.flush()
            for root in roots:
                if _inside(root.path, folder_str):
                    prefix = os.path.relpath(root.path, folder_str)
                    for image in s.scalars(select(Image).where(Image.root_id == root.id)):
                        image.root_id = new.id
                        image.relpath = os.path.join(prefix, image.relpath)
                    s.flush()
                    s.delete(root)
            return new.id, folder

    def known_files(self, root_id: int, prefix: str, space_id: int) -> dict[str, KnownFile]:
        """Files stored under ``prefix`` of a root, keyed by path relative to the root."""
        has_vector = _has_vector(space_id)
        query = select(
            Image.id,
            Image.relpath,
            Image.size,
            Image.mtime_ns,
            Image.status,
            has_vector,
            Image.content_hash,
        ).where(Image.root_id == root_id)
        # Paths are stored as bytes (see schema.FsPath), so the prefix is matched here.
        under = prefix.rstrip(os.sep) + os.sep if prefix else ""
        with self.transaction() as s:
            return {
                row[1]: KnownFile(row[0], row[2], row[3], row[4], bool(row[5]), row[6])
                for row in s.execute(query)
                if row[1].startswith(under)
            }

    def stored_sizes(self) -> set[int]:
        """The byte sizes of all stored images (to find files worth hashing for moves)."""
        with self.transaction() as s:
            return set(s.scalars(select(Image.size).distinct()))

    def copies(self, hashes: Iterable[str], space_id: int) -> dict[str, list[StoredCopy]]:
        """Stored images whose content hash is in ``hashes``, grouped by hash."""
        wanted = set(hashes)
        if not wanted:
            return {}
        has_vector = _has_vector(space_id)
        query = (
            select(Image.content_hash, Image.id, Root.path, Image.relpath, Image.status, has_vector)
            .join(Root, Root.id == Image.root_id)
            .where(Image.content_hash.in_(wanted))
            .order_by(Image.id)
        )
        found: dict[str, list[StoredCopy]] = {}
        with self.transaction() as s:
            for digest, image_id, root, relpath, status, vector in s.execute(query):
                found.setdefault(digest or "", []).append(
                    StoredCopy(image_id, Path(root, relpath), Path(root), status, bool(vector))
                )
        return found

    def move(self, moves: Sequence[Move]) -> None:
        """Give images new paths in one transaction; their vectors (and index ids) stay."""
        if not moves:
            return
        with self.transaction() as s:
            for m in moves:
                image = s.get_one(Image, m.image_id)
                image.root_id, image.relpath = m.root_id, m.relpath
                image.size, image.mtime_ns = m.size, m.mtime_ns

    def write_batch(
        self, space_id: int, results: Sequence[FileResult], removed: Iterable[int] = ()
    ) -> tuple[list[int], list[int]]:
        """Record a batch of processed files and removals in one transaction.

        A file with a vector becomes ``indexed`` in this space (its vectors in other spaces are
        dropped when its content changed); a file with an error becomes ``failed``.
        Returns (ids given vectors, ids whose vectors left this space).
        """
        removed = list(removed)
        with self.transaction() as s:
            existing = {
                (image.root_id, image.relpath): image
                for image in s.scalars(
                    select(Image).where(Image.relpath.in_({r.relpath for r in results}))
                )
            }
            images: list[Image] = []
            stale: list[Image] = []  # new content or undecodable: every stored vector is stale
            for result in results:
                image = existing.get((result.root_id, result.relpath))
                if image is None:
                    image = Image(root_id=result.root_id, relpath=result.relpath)
                    s.add(image)
                elif (image.size, image.mtime_ns) != (result.size, result.mtime_ns) or (
                    result.vector is None
                ):
                    stale.append(image)
                image.size, image.mtime_ns = result.size, result.mtime_ns
                image.width, image.height = result.width, result.height
                image.content_hash, image.taken_at = result.content_hash, result.taken_at
                if result.vector is None:
                    image.status, image.error = FAILED, _text(result.error or "unknown error")
                else:
                    image.status, image.error = INDEXED, None
                images.append(image)
            s.flush()
            dropped = _drop_vectors(s, [image.id for image in stale] + removed)
            added: list[int] = []
            for image, result in zip(images, results, strict=True):
                if result.vector is not None:
                    s.merge(
                        Vector(
                            space_id=space_id,
                            image_id=image.id,
                            data=np.asarray(result.vector, VECTOR_DTYPE).tobytes(),
                        )
                    )
                    added.append(image.id)
            if removed:
                s.execute(delete(Image).where(Image.id.in_(removed)))
            # Every space that lost or gained vectors has a stale index file now.
            s.execute(
                update(Space)
                .where(Space.id.in_({space_id, *dropped}))
                .values(generation=Space.generation + 1)
            )
        return added, sorted(set(dropped.get(space_id, ())) - set(added))

    # -- index manifest -----------------------------------------------------------------

    def set_manifest(self, space_id: int, manifest: Manifest) -> None:
        with self.transaction() as s:
            s.merge(
                IndexManifest(
                    space_id=space_id,
                    generation=manifest.generation,
                    count=manifest.count,
                    checksum=manifest.checksum,
                    filename=manifest.filename,
                    kind=manifest.kind,
                    tombstones=manifest.tombstones,
                    params_json=manifest.params_json,
                    nbytes=manifest.nbytes,
                )
            )

    def record_index_size(self, space_id: int, checksum: str, nbytes: int) -> None:
        """Fill in the file size of a manifest written before sizes were recorded (once its
        checksum held); a manifest that moved on meanwhile is left alone. Raises
        :class:`LibraryError` when the database cannot be written."""
        try:
            with self.transaction() as s:
                s.execute(
                    update(IndexManifest)
                    .where(
                        IndexManifest.space_id == space_id,
                        IndexManifest.checksum == checksum,
                        IndexManifest.nbytes.is_(None),
                    )
                    .values(nbytes=nbytes)
                )
        except DatabaseError as err:
            raise LibraryError(f"cannot record the index file size: {err}") from err

    # -- index settings (spaces.index_spec and the "index" key of spaces.settings_json) ------

    def set_index_settings(self, space_id: int, settings: IndexSettings) -> None:
        """Store a space's index settings (other keys of ``settings_json`` are kept)."""
        with self.transaction() as s:
            row = s.get(Space, space_id)
            if row is None:
                raise SpaceError(f"no space with id {space_id}")
            data = json.loads(row.settings_json or "{}")
            own = {"max_memory": settings.max_memory, "params": dict(settings.params)}
            data["index"] = {k: v for k, v in own.items() if v}
            row.index_spec = settings.spec
            row.settings_json = json.dumps(data, sort_keys=True)
