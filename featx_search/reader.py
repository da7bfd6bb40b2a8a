"""The library database, read side: every read that a query (``search``, ``similar``,
``dups``, ``info``) or a sync plan makes. Each read is written once, as a named SQLAlchemy
Core statement in :mod:`featx_search.queries`; a SQLite library is read through the standard
``sqlite3`` module with those statements compiled in :mod:`featx_search.sql_sqlite`, so that a
query imports no SQLAlchemy, while a reader given an engine (:class:`~.store.Store`, which
extends :class:`Reader` with writes and migrations) runs the Core statements themselves. The
records both sides pass around are in :mod:`.records`.

A library this process cannot write (a read-only folder or mount, a file without write
permission), or one opened with ``read_only``, is read through SQLite's read-only modes and
refuses writes with :class:`ReadOnlyError`.

Each read runs in its own transaction (one snapshot); connections are kept (one per thread)
until :meth:`Reader.close`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import SpaceSpec
from .connect import library_path, sqlite_uri, writable
from .errors import LibraryError, ReadOnlyError, SpaceError
from .reads import CoreReads, Reads, SqliteReads, listed
from .records import (
    VECTOR_DTYPE,
    ImageFacts,
    IndexSettings,
    KnownFile,
    Manifest,
    SpaceRecord,
    StoredCopy,
)
from .sql_sqlite import HEAD_REVISION

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from .decisions import Decision


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` lies strictly below ``folder`` (both absolute)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


class Reader:
    """Read access to one library database. Open with :meth:`open`; close with :meth:`close`.

    ``read_only`` says whether writes are refused (see :meth:`require_writable`): the
    library was opened so, or this process may not write it. Without ``engine`` the SQLite
    file is read with the ``sqlite3`` module; with one, through it (SQLAlchemy Core).
    """

    def __init__(
        self, path: Path, *, read_only: bool = False, engine: Engine | None = None
    ) -> None:
        self.path = path
        self.read_only = read_only
        self._engine = engine
        # What sqlite3 opens (SQLite's read-only modes included) when there is no engine.
        self.uri = sqlite_uri(path, read_only=read_only)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> Reader | None:
        """A reader of the library at ``path`` when it exists at the newest schema revision,
        else None (then :meth:`Store.open` creates, migrates or refuses it).

        A library this process cannot write is opened read-only, as with ``read_only``; one
        that would need creating or migrating first raises :class:`ReadOnlyError` then.
        """
        db = library_path(path)
        if not db.is_file():
            if read_only:
                raise LibraryError(f"no library at {db}", hint="check the path of the library")
            return None
        if not read_only and not writable(db):
            read_only = True
        reader = cls(db, read_only=read_only)
        try:
            current = reader.current_revision() if read_only else reader._revision_or_none()
            if current == HEAD_REVISION:
                return reader
        except BaseException:
            reader.close()
            raise
        reader.close()
        if not read_only:
            return None
        from .migrate import check_known_revision

        check_known_revision(db, current)  # a newer featx-search's library: say so
        raise ReadOnlyError(
            f"library {db} is at schema revision {current} and needs migrating to "
            f"{HEAD_REVISION}, which writes to it, but it is read-only here",
            hint="open it once where it can be written, or use the featx-search that wrote it",
        )

    @property
    def index_dir(self) -> Path:
        """The folder beside the database that holds this library's index files."""
        return self.path.with_name(self.path.name + ".indexes")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._local = threading.local()
        if self._engine is not None:
            self._engine.dispose()

    def require_writable(self) -> None:
        """Raise :class:`ReadOnlyError` when the library is read-only (see ``read_only``)."""
        if not self.read_only:
            return
        why = "it was opened read-only" if writable(self.path) else "this process may not write it"
        raise ReadOnlyError(
            f"library {self.path} is read-only: {why}; nothing was changed",
            hint="searches work as they are; to index, copy the library (the .db file and "
            "its .indexes folder) somewhere writable, or give write access to it and its folder",
        )

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions begin where _read says, not implicitly.
            conn = sqlite3.connect(
                self.uri, uri=True, timeout=10, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=10000")
            with self._lock:
                self._connections.append(conn)
                self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[Reads]:
        """The reads inside one read transaction: every query in the block sees one
        snapshot of the library (WAL mode lets a writer go on meanwhile)."""
        if self._engine is not None:
            with self._core_read(self._engine) as reads:
                yield reads
            return
        try:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield SqliteReads(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            raise LibraryError(f"cannot read library {self.path}: {err}") from err
        except sqlite3.DatabaseError as err:  # e.g. "file is not a database"
            raise LibraryError(
                f"{self.path} is not a featx-search library: {err}",
                hint="point db at a library file or a new path",
            ) from err

    @contextmanager
    def _core_read(self, engine: Engine) -> Iterator[Reads]:
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            with engine.connect() as conn, conn.begin():
                yield CoreReads(conn)
        except OperationalError as err:
            raise LibraryError(f"cannot read library {self.path}: {err.orig}") from err
        except DBAPIError as err:  # e.g. "file is not a database"
            raise LibraryError(
                f"{self.path} is not a featx-search library: {err.orig}",
                hint="point db at a library file or a new path",
            ) from err

    def current_revision(self) -> str | None:
        """The schema revision the database is at; None for a new, empty database. Raises
        :class:`LibraryError` for a file that is not a library or cannot be read."""
        with self._read() as reads:
            if not reads.has_revision_table():
                return None
            value = reads.scalar("revision")
        return None if value is None else str(value)

    def _revision_or_none(self) -> str | None:
        try:
            return self.current_revision()
        except LibraryError:  # Store.open explains it
            return None

    # -- spaces -------------------------------------------------------------------------

    def spaces(self, *, counts: bool = True) -> list[SpaceRecord]:
        """Every space, oldest first; without ``counts`` each record's ``count`` is -1 (not
        counting vectors saves a scan of them, which queries do not need)."""
        with self._read() as reads:
            counted = (
                {int(space_id): int(n) for space_id, n in reads.rows("vector_counts")}
                if counts
                else None
            )
            return [
                SpaceRecord(
                    space_id,
                    SpaceSpec.from_dict(json.loads(spec_json)),
                    -1 if counted is None else counted.get(space_id, 0),
                    int(generation),
                )
                for space_id, spec_json, generation in reads.rows("spaces")
            ]

    def space(self, space_id: int, *, counts: bool = True) -> SpaceRecord:
        for record in self.spaces(counts=counts):
            if record.id == space_id:
                return record
        raise SpaceError(f"no space with id {space_id}")

    def transform(self, space_id: int) -> bytes | None:
        """The learned vector transform stored with a space (see whiten.py), or None."""
        with self._read() as reads:
            data = reads.scalar("transform", space_id=space_id)
        return None if data is None else bytes(data)

    def index_settings(self, space_id: int) -> IndexSettings:
        with self._read() as reads:
            row = reads.first("index_settings", space_id=space_id)
        if row is None:
            raise SpaceError(f"no space with id {space_id}")
        index_spec, settings_json = row
        own = json.loads(settings_json or "{}").get("index", {})
        return IndexSettings(
            spec=index_spec,
            max_memory=own.get("max_memory"),
            params={k: int(v) for k, v in own.get("params", {}).items()},
        )

    def manifest(self, space_id: int) -> Manifest | None:
        with self._read() as reads:
            row = reads.first("manifest", space_id=space_id)
        # The statement reads the columns named by Manifest's fields, in their order.
        return None if row is None else Manifest(*row)

    # -- roots and images ---------------------------------------------------------------

    def _roots(self, reads: Reads) -> list[tuple[int, str]]:
        return [(int(root_id), path) for root_id, path in reads.rows("roots")]

    def roots_below(self, folder: Path) -> list[tuple[int, Path]]:
        """The roots strictly below ``folder`` (absolute, resolved): a sync of ``folder``
        takes them in (see :meth:`Store.root_for`)."""
        with self._read() as reads:
            return [(i, Path(root)) for i, root in self._roots(reads) if _inside(root, str(folder))]

    def find_root(self, folder: Path) -> tuple[int | None, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved), or
        (None, ``folder``) when none does. :meth:`Store.root_for` also creates it."""
        folder_str = str(folder)
        with self._read() as reads:
            for root_id, root in self._roots(reads):
                if folder_str == root or _inside(folder_str, root):
                    return root_id, Path(root)
        return None, folder

    def image_id(self, path: Path) -> int | None:
        """The id of the stored image at ``path`` (absolute, resolved), or None."""
        with self._read() as reads:
            for root_id, root in self._roots(reads):
                if _inside(str(path), root):
                    relpath = os.path.relpath(path, root)
                    found = reads.scalar("image_at", root_id=root_id, relpath=relpath)
                    if found is not None:
                        return int(found)
        return None

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        """Absolute paths of images by id."""
        with self._read() as reads:
            rows = reads.rows("paths", ids=listed(int(i) for i in ids))
            return {image_id: os.path.join(root, rel) for image_id, root, rel in rows}

    def image_facts(
        self, space_id: int | None, ids: Sequence[int] | None = None
    ) -> list[ImageFacts]:
        """Path, size, dates and content hash of every image with a vector in a space (every
        stored image when ``space_id`` is None), or of those ``ids`` among them, ordered by
        id. Used by filters and duplicate finding."""
        name = "image_facts" if space_id is None else "image_facts_in_space"
        params: dict[str, Any] = {} if space_id is None else {"space_id": space_id}
        if ids is not None:
            name += "_listed"
            params["ids"] = listed(int(i) for i in ids)
        return self._facts(name, params)

    def image_facts_page(self, space_id: int, offset: int, limit: int) -> list[ImageFacts]:
        """The facts of ``limit`` images of a space from ``offset``, in path order."""
        return self._facts(
            "image_facts_page", {"space_id": space_id, "offset": offset, "limit": limit}
        )

    def _facts(self, name: str, params: dict[str, Any]) -> list[ImageFacts]:
        with self._read() as reads:
            return [
                ImageFacts(
                    id=image_id,
                    path=os.path.join(root, rel),
                    width=width,
                    height=height,
                    size=size,
                    mtime_ns=mtime_ns,
                    taken_at=taken_at,
                    content_hash=content_hash,
                )
                for image_id, root, rel, width, height, size, mtime_ns, taken_at, content_hash in (
                    reads.rows(name, **params)
                )
            ]

    def image_counts(self) -> dict[str, int]:
        with self._read() as reads:
            return {status: int(n) for status, n in reads.rows("image_counts")}

    def failures(self) -> list[tuple[str, str]]:
        """(absolute path, error) of every failed file."""
        with self._read() as reads:
            rows = reads.rows("failures")
            return [(os.path.join(root, rel), error or "") for root, rel, error in rows]

    def known_files(self, root_id: int, prefix: str, space_id: int) -> dict[str, KnownFile]:
        """Files stored under ``prefix`` of a root, keyed by path relative to the root."""
        # Paths are stored as bytes (see schema.FsPath), so the prefix is matched here.
        under = prefix.rstrip(os.sep) + os.sep if prefix else ""
        with self._read() as reads:
            rows = reads.rows("known_files", root_id=root_id, space_id=space_id)
            return {
                rel: KnownFile(image_id, size, mtime_ns, status, bool(has), digest)
                for image_id, rel, size, mtime_ns, status, has, digest in rows
                if rel.startswith(under)
            }

    def stored_sizes(self) -> set[int]:
        """The byte sizes of all stored images (to find files worth hashing for moves)."""
        with self._read() as reads:
            return {int(size) for (size,) in reads.rows("stored_sizes")}

    def copies(self, hashes: Iterable[str], space_id: int) -> dict[str, list[StoredCopy]]:
        """Stored images whose content hash is in ``hashes``, grouped by hash."""
        found: dict[str, list[StoredCopy]] = {}
        with self._read() as reads:
            rows = reads.rows("copies", hashes=listed(sorted(set(hashes))), space_id=space_id)
            for digest, image_id, root, rel, status, has in rows:
                found.setdefault(digest or "", []).append(
                    StoredCopy(image_id, Path(root, rel), Path(root), status, bool(has))
                )
        return found  # each group ordered by id, as the statement reads them

    def integrity_problems(self) -> list[str]:
        """What SQLite's integrity and foreign-key checks, and the image states, find wrong."""
        problems: list[str] = []
        with self._read() as reads:
            rows = [r[0] for r in reads.pragma("integrity_check")]
            if rows != ["ok"]:
                problems.extend(f"integrity_check: {r}" for r in rows)
            for table, rowid, parent, _ in reads.pragma("foreign_key_check"):
                problems.append(f"{table} row {rowid} points to a missing {parent} row")
            for name, wrong in (
                ("indexed_without_vector", "are marked indexed but have no vector"),
                ("failed_with_vector", "are marked failed but still have vectors"),
            ):
                count = reads.scalar(name)
                if count:
                    problems.append(f"{count} images {wrong}")
        return problems

    # -- vectors ------------------------------------------------------------------------

    def vectors(
        self, space_id: int, ids: Sequence[int] | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Stored vectors of a space, read in one snapshot.

        Returns (generation, int64 ids (N,), float32 matrix (N, dim)), rows ordered by id.
        The rows are copied into the matrix as they are read (no second copy of the blobs).
        """
        with self._read() as reads:
            space = reads.first("space_shape", space_id=space_id)
            if space is None:
                raise SpaceError(f"no space with id {space_id}")
            dim, generation = space
            if ids is None:
                count = int(reads.scalar("vector_count", space_id=space_id))
                rows = reads.rows("vectors", space_id=space_id)
            else:
                wanted = sorted(set(int(i) for i in ids))
                count = len(wanted)  # at most; trimmed below
                rows = reads.rows("vectors_listed", space_id=space_id, ids=listed(wanted))
            out_ids = np.empty(count, dtype=np.int64)
            matrix = np.empty((count, dim), dtype=np.float32)
            n = 0
            for image_id, data in rows:
                out_ids[n] = image_id
                matrix[n] = np.frombuffer(data, dtype=VECTOR_DTYPE)
                n += 1
        return int(generation), out_ids[:n], matrix[:n]  # shorter when some ids had no vector

    def vector_ids(self, space_id: int) -> np.ndarray:
        """The image ids that have a vector in a space: int64 (N,), ascending (no blobs read)."""
        with self._read() as reads:
            rows = reads.rows("vector_ids", space_id=space_id)
            return np.fromiter((image_id for (image_id,) in rows), dtype=np.int64)

    def decisions(self) -> list[Decision]:
        """Every decision on duplicate groups, oldest first, with its images by id."""
        from .decisions import DecidedImage, Decision

        found: dict[int, tuple[Any, Any, list[DecidedImage]]] = {}
        with self._read() as reads:
            for decision_id, kind, decided_at, image_id, role, root, rel in reads.rows("decisions"):
                entry = found.setdefault(decision_id, (kind, decided_at, []))
                entry[2].append(DecidedImage(image_id, os.path.join(root, rel), role))
        return [
            Decision(decision_id, kind, decided_at, tuple(members))
            for decision_id, (kind, decided_at, members) in found.items()
        ]
