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

import functools
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from .config import SpaceSpec
from .connect import ConnectionLost, Location, one_line, sqlite_uri, unreachable, writable
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

log = logging.getLogger(__name__)


_T = TypeVar("_T")
_P = ParamSpec("_P")


def _retried(read: Callable[_P, _T]) -> Callable[_P, _T]:
    """``read`` run again once when the connection to a database server broke during it
    (a server restart, a dropped connection); reads change nothing, so the retry is safe."""

    @functools.wraps(read)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return read(*args, **kwargs)
        except ConnectionLost as err:
            log.warning("%s; trying once more", err.message)
            return read(*args, **kwargs)

    return run


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
        self,
        location: Location | Path,
        *,
        read_only: bool = False,
        engine: Engine | None = None,
    ) -> None:
        self.location = location if isinstance(location, Location) else Location(path=location)
        self.read_only = read_only
        self._engine = engine
        # What sqlite3 opens (SQLite's read-only modes included) when there is no engine.
        self.uri = (
            ""
            if self.location.path is None
            else sqlite_uri(self.location.path, read_only=read_only)
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._local_dir: Path | None = None

    @property
    def path(self) -> Path:
        """The SQLite file; raises :class:`LibraryError` for a server library (see
        :attr:`location`)."""
        return self.location.file

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | Location, *, read_only: bool = False
    ) -> Reader | None:
        """A reader of the library at ``path`` (a file, or a server's URL: see
        :class:`Location`) when it exists at the newest schema revision, else None (then
        :meth:`Store.open` creates, migrates or refuses it).

        A library this process cannot write is opened read-only, as with ``read_only``; one
        that would need creating or migrating first raises :class:`ReadOnlyError` then.
        """
        location = Location.parse(path)
        if location.path is None:
            return cls._open_server(location, read_only=read_only)
        db = location.path
        if not db.is_file():
            if read_only:
                raise LibraryError(f"no library at {db}", hint="check the path of the library")
            return None
        if not read_only and not writable(db):
            read_only = True
        reader = cls(location, read_only=read_only)
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

        check_known_revision(location, current)  # a newer featx-search's library: say so
        raise ReadOnlyError(
            f"library {db} is at schema revision {current} and needs migrating to "
            f"{HEAD_REVISION}, which writes to it, but it is read-only here",
            hint="open it once where it can be written, or use the featx-search that wrote it",
        )

    @classmethod
    def _open_server(cls, location: Location, *, read_only: bool) -> Reader | None:
        """A reader of a server library at the newest revision through an engine (SQLAlchemy
        Core), else None (``Store.open`` migrates or refuses it)."""
        from .connect import server_engine

        reader = cls(location, read_only=read_only, engine=server_engine(location.sqlalchemy_url()))
        try:
            current = reader.current_revision()
        except BaseException:
            reader.close()
            raise
        if current == HEAD_REVISION:
            return reader
        reader.close()
        from .migrate import check_known_revision

        check_known_revision(location, current)
        if read_only:
            raise ReadOnlyError(
                f"library {location} is at schema revision {current} and needs migrating to "
                f"{HEAD_REVISION}, but it was opened read-only",
                hint="open it once for writing (featx-search db upgrade)",
            )
        return None

    @property
    def index_dir(self) -> Path:
        """The folder that holds this library's index files: beside a SQLite file, or for a
        server library a folder of this machine's cache named after the database (see
        :func:`~.connect.cache_dir`); ``location.local_dir`` when one was given."""
        if self.location.local_dir is not None:
            return self.location.local_dir
        if self.location.path is not None:
            return self.location.path.with_name(self.location.path.name + ".indexes")
        if self._local_dir is None:
            from .connect import cache_dir

            with self._read() as reads:
                oid = reads.database_oid()
            name = f"{self.location.identity()}-{oid}".replace(os.sep, "_")
            self._local_dir = cache_dir() / "libraries" / name
        return self._local_dir

    @property
    def activity_file(self) -> Path:
        """Where a running index writes its progress (see :mod:`.activity`)."""
        if self.location.path is not None:
            db = self.location.path
            return db.with_name(db.name + ".activity.json")
        return self.index_dir / "activity.json"

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
        path = self.location.path
        why = (
            "it was opened read-only"
            if path is None or writable(path)
            else "this process may not write it"
        )
        raise ReadOnlyError(
            f"library {self.location} is read-only: {why}; nothing was changed",
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
            raise LibraryError(f"cannot read library {self.location}: {err}") from err
        except sqlite3.DatabaseError as err:  # e.g. "file is not a database"
            raise LibraryError(
                f"{self.location} is not a featx-search library: {err}",
                hint="point db at a library file or a new path",
            ) from err

    @contextmanager
    def _core_read(self, engine: Engine) -> Iterator[Reads]:
        from sqlalchemy.exc import DBAPIError

        server = self.location.path is None
        try:
            conn = engine.connect()
        except DBAPIError as err:
            if server:
                raise unreachable(self.location, err) from None
            raise self._not_a_library(err) from err
        if server:
            # One snapshot for every statement of the block, as SQLite's BEGIN gives (the
            # default READ COMMITTED takes one per statement); a read-only transaction at
            # this level never fails for a concurrent writer.
            conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            with conn, conn.begin():
                yield CoreReads(conn)
        except DBAPIError as err:
            if err.connection_invalidated:
                raise ConnectionLost(
                    f"lost the connection to library {self.location}: {one_line(err.orig)}",
                    hint="check that the database server is running and reachable",
                ) from None
            if server:
                raise LibraryError(
                    f"cannot read library {self.location}: {one_line(err.orig)}"
                ) from err
            raise self._not_a_library(err) from err

    def _not_a_library(self, err: Any) -> LibraryError:
        from sqlalchemy.exc import OperationalError

        if isinstance(err, OperationalError):
            return LibraryError(f"cannot read library {self.location}: {err.orig}")
        return LibraryError(
            f"{self.location} is not a featx-search library: {err.orig}",
            hint="point db at a library file or a new path",
        )

    @_retried
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

    @_retried
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

    @_retried
    def transform(self, space_id: int) -> bytes | None:
        """The learned vector transform stored with a space (see whiten.py), or None."""
        with self._read() as reads:
            data = reads.scalar("transform", space_id=space_id)
        return None if data is None else bytes(data)

    @_retried
    def index_settings(self, space_id: int) -> IndexSettings:
        with self._read() as reads:
            row = reads.first("index_settings", space_id=space_id)
        if row is None:
            raise SpaceError(f"no space with id {space_id}")
        index_spec, settings_json = row
        data = json.loads(settings_json or "{}")
        own = data.get("index", {})
        return IndexSettings(
            spec=index_spec,
            max_memory=own.get("max_memory"),
            params={k: int(v) for k, v in own.get("params", {}).items()},
            copies=bool(data.get("copies", False)),
        )

    @_retried
    def manifest(self, space_id: int) -> Manifest | None:
        with self._read() as reads:
            row = reads.first("manifest", space_id=space_id)
        # The statement reads the columns named by Manifest's fields, in their order.
        return None if row is None else Manifest(*row)

    # -- roots and images ---------------------------------------------------------------

    def _roots(self, reads: Reads) -> list[tuple[int, str]]:
        return [(int(root_id), path) for root_id, path in reads.rows("roots")]

    @_retried
    def roots_below(self, folder: Path) -> list[tuple[int, Path]]:
        """The roots strictly below ``folder`` (absolute, resolved): a sync of ``folder``
        takes them in (see :meth:`Store.root_for`)."""
        with self._read() as reads:
            return [(i, Path(root)) for i, root in self._roots(reads) if _inside(root, str(folder))]

    @_retried
    def find_root(self, folder: Path) -> tuple[int | None, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved), or
        (None, ``folder``) when none does. :meth:`Store.root_for` also creates it."""
        folder_str = str(folder)
        with self._read() as reads:
            for root_id, root in self._roots(reads):
                if folder_str == root or _inside(folder_str, root):
                    return root_id, Path(root)
        return None, folder

    @_retried
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

    @_retried
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

    @_retried
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

    @_retried
    def image_counts(self) -> dict[str, int]:
        with self._read() as reads:
            return {status: int(n) for status, n in reads.rows("image_counts")}

    @_retried
    def failures(self) -> list[tuple[str, str]]:
        """(absolute path, error) of every failed file."""
        with self._read() as reads:
            rows = reads.rows("failures")
            return [(os.path.join(root, rel), error or "") for root, rel, error in rows]

    @_retried
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

    @_retried
    def stored_sizes(self) -> set[int]:
        """The byte sizes of all stored images (to find files worth hashing for moves)."""
        with self._read() as reads:
            return {int(size) for (size,) in reads.rows("stored_sizes")}

    @_retried
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

    @_retried
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

    @_retried
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

    @contextmanager
    def vector_snapshot(self, space_id: int) -> Iterator[StoredVectors]:
        """A space's stored vectors in one snapshot, read in pages by id when asked (a
        :class:`~featx_search.ann.source.VectorSource`: builds and ground truth stream it in
        bounded memory). The snapshot is one read transaction, open until the block ends:
        make no other read of this reader on this thread inside it (on SQLite it would begin
        a transaction inside the open one). Raises :class:`SpaceError`."""
        with self._read() as reads:
            space = reads.first("space_shape", space_id=space_id)
            if space is None:
                raise SpaceError(f"no space with id {space_id}")
            dim, generation = space
            count = int(reads.scalar("vector_count", space_id=space_id))
            yield StoredVectors(reads, space_id, int(dim), int(generation), count)

    @_retried
    def copy_view_count(self, space_id: int) -> int:
        """How many images have copy views in a space (see :mod:`featx_search.copies`)."""
        with self._read() as reads:
            return int(reads.scalar("copy_view_count", space_id=space_id))

    @_retried
    def copy_views_missing(self, space_id: int, nbytes: int) -> np.ndarray:
        """The image ids with a vector in a space but no copy views of ``nbytes`` bytes (none,
        or an older set of views): int64 (N,), ascending."""
        with self._read() as reads:
            rows = reads.rows("copy_views_missing", space_id=space_id, nbytes=nbytes)
            return np.fromiter((image_id for (image_id,) in rows), dtype=np.int64)

    @_retried
    def copy_views(self, space_id: int, ids: Iterable[int], dim: int) -> dict[int, np.ndarray]:
        """The copy views of those images of ``ids`` that have some: image id -> float32
        (views, dim)."""
        with self._read() as reads:
            rows = reads.rows(
                "copy_views_listed", space_id=space_id, ids=listed(sorted({int(i) for i in ids}))
            )
            return {
                int(image_id): np.frombuffer(data, dtype=VECTOR_DTYPE).reshape(-1, dim)
                for image_id, data in rows
            }

    def copy_view_pages(
        self, space_id: int, dim: int, size: int = 2048
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A space's copy views in pages by image id: (image ids int64 (M,), float32
        (M, views, dim)). Each page is its own read (the views of one image are one row, so
        an image is never split; a page written meanwhile may or may not be seen)."""
        after = -1
        while True:
            with self._read() as reads:
                rows = list(
                    reads.rows("copy_views_page", space_id=space_id, after=after, limit=size)
                )
            if not rows:
                return
            ids = np.array([image_id for image_id, _ in rows], np.int64)
            arrays = [np.frombuffer(data, dtype=VECTOR_DTYPE).reshape(-1, dim) for _, data in rows]
            count = max(len(array) for array in arrays)
            page = np.zeros((len(arrays), count, dim), VECTOR_DTYPE)
            for row, array in enumerate(arrays):  # an older, shorter set of views: zeros after
                page[row, : len(array)] = array
            yield ids, page
            after = int(ids[-1])
            if len(rows) < size:
                return

    @_retried
    def vector_ids(self, space_id: int) -> np.ndarray:
        """The image ids that have a vector in a space: int64 (N,), ascending (no blobs read)."""
        with self._read() as reads:
            rows = reads.rows("vector_ids", space_id=space_id)
            return np.fromiter((image_id for (image_id,) in rows), dtype=np.int64)

    @_retried
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


class StoredVectors:
    """A space's vectors in one read snapshot (:meth:`Reader.vector_snapshot`), in ascending
    id order: pages by id for :meth:`chunks`, ids by position for :meth:`pick`, listed ids
    for :meth:`fetch`. ``generation`` is the space's at the snapshot."""

    # Ids per listed read (one JSON parameter).
    LISTED = 20_000

    def __init__(self, reads: Reads, space_id: int, dim: int, generation: int, count: int):
        self._reads, self.space_id, self.dim = reads, space_id, dim
        self.generation, self._count = generation, count

    @property
    def count(self) -> int:
        return self._count

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (M,), float32 (M, dim)) pages of at most ``size`` rows, by id."""
        after = -1
        while True:
            ids = np.empty(size, np.int64)
            matrix = np.empty((size, self.dim), np.float32)
            n = 0
            rows = self._reads.rows("vectors_page", space_id=self.space_id, after=after, limit=size)
            for image_id, data in rows:
                ids[n] = image_id
                matrix[n] = np.frombuffer(data, dtype=VECTOR_DTYPE)
                n += 1
            if n == 0:
                return
            yield ids[:n], matrix[:n]
            after = int(ids[n - 1])
            if n < size:
                return

    def ids(self, size: int = 1 << 18) -> Iterator[np.ndarray]:
        """The ids, ascending, in pages of at most ``size`` (no vectors read)."""
        after = -1
        while True:
            rows = self._reads.rows(
                "vector_ids_page", space_id=self.space_id, after=after, limit=size
            )
            page = np.fromiter((image_id for (image_id,) in rows), dtype=np.int64)
            if len(page) == 0:
                return
            yield page
            after = int(page[-1])
            if len(page) < size:
                return

    def pick(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows at ascending 0-based ``positions`` of the id order: (ids, vectors)."""
        positions = np.asarray(positions, np.int64)
        wanted = np.empty(len(positions), np.int64)
        start = done = 0
        for page in self.ids():
            end = start + len(page)
            stop = int(np.searchsorted(positions, end))
            wanted[done:stop] = page[positions[done:stop] - start]
            done, start = stop, end
            if done == len(positions):
                break
        return self.fetch(wanted[:done])

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of those ``ids`` that are stored: (ids, vectors), ascending ids."""
        wanted = np.unique(np.asarray(ids, np.int64))
        out_ids = np.empty(len(wanted), np.int64)
        matrix = np.empty((len(wanted), self.dim), np.float32)
        n = 0
        for start in range(0, len(wanted), self.LISTED):
            batch = listed(int(i) for i in wanted[start : start + self.LISTED])
            rows = self._reads.rows("vectors_listed", space_id=self.space_id, ids=batch)
            for image_id, data in rows:
                out_ids[n] = image_id
                matrix[n] = np.frombuffer(data, dtype=VECTOR_DTYPE)
                n += 1
        return out_ids[:n], matrix[:n]
