"""The library database, read side: plain ``sqlite3``, no SQLAlchemy.

Queries that need no new embedding (``similar``, ``dups``, ``info``) should answer in well
under a second, and importing SQLAlchemy's ORM alone costs about half of that. So every read
a query makes lives here, written against the tables of :mod:`featx_search.schema`, and
:class:`~featx_search.store.Store` (writes, migrations) extends :class:`Reader`: each read
exists once, whichever class runs it. The records both sides pass around are defined here
too, so that importing them loads no SQLAlchemy either.

Each read runs in its own transaction (one snapshot); connections are opened per thread and
kept until :meth:`Reader.close`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .config import SpaceSpec
from .errors import LibraryError, SpaceError

INDEXED = "indexed"
FAILED = "failed"
VECTOR_DTYPE = np.dtype("<f4")
# The newest migration's revision; a library already there opens without SQLAlchemy or
# Alembic. tests/test_store.py checks it against migrations/versions.
HEAD_REVISION = "c4e1f7a2b903"
# Ids per "IN (...)" clause (SQLite allows 32766 variables per statement).
_CHUNK = 10_000


@dataclass(frozen=True)
class SpaceRecord:
    """A space as stored: its id, spec, number of vectors and generation."""

    id: int
    spec: SpaceSpec
    count: int
    generation: int

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass(frozen=True)
class KnownFile:
    """What the store knows about one file under a root."""

    id: int
    size: int
    mtime_ns: int
    status: str
    has_vector: bool
    content_hash: str | None = None


@dataclass(frozen=True)
class StoredCopy:
    """A stored image with a given content hash: where it was, and its state in a space."""

    id: int
    path: Path
    root: Path
    status: str
    has_vector: bool


@dataclass(frozen=True)
class Move:
    """A stored image found at a new place: same row and vectors, new path, size and time."""

    image_id: int
    root_id: int
    relpath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileResult:
    """The outcome of processing one file, written by :meth:`Store.write_batch`."""

    root_id: int
    relpath: str
    size: int
    mtime_ns: int
    vector: np.ndarray | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    content_hash: str | None = None
    taken_at: datetime | None = None


@dataclass(frozen=True)
class ImageFacts:
    """What queries filter on and duplicate finding ranks by, for one stored image."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    taken_at: datetime | None
    content_hash: str | None


@dataclass(frozen=True)
class Manifest:
    generation: int
    count: int
    checksum: str
    filename: str
    kind: str
    # removed vectors still inside the file (HNSW) and the file's tuned search params (JSON)
    tombstones: int = 0
    params_json: str | None = None
    # the file's size in bytes (None: published before sizes were recorded)
    nbytes: int | None = None


@dataclass(frozen=True)
class IndexSettings:
    """How a space's index is chosen: its spec (None: ``auto``), the memory budget of
    ``auto`` in bytes (None: none), and search params the user fixed for the space."""

    spec: str | None = None
    max_memory: int | None = None
    params: dict[str, int] = field(default_factory=dict)


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` lies strictly below ``folder`` (both absolute)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _join(root: bytes, relpath: bytes) -> str:
    # Paths are stored as raw bytes (schema.FsPath), so undecodable names survive.
    return os.path.join(os.fsdecode(root), os.fsdecode(relpath))


def _datetime(value: str | None) -> datetime | None:
    # SQLAlchemy stores DateTime in SQLite as "YYYY-MM-DD HH:MM:SS[.ffffff]".
    return None if value is None else datetime.fromisoformat(value)


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield [int(i) for i in ids[start : start + _CHUNK]]


def _marks(values: Sequence[int]) -> str:
    return ",".join("?" * len(values))


def revision(path: Path) -> str | None:
    """The schema revision stored in the database at ``path``, read with plain SQL: None
    for a missing, new, foreign or unreadable file (:meth:`Store.open` explains those)."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such table, or not a database
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


class Reader:
    """Read access to one library database. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Reader | None:
        """A reader of the library at ``path`` when it exists at the newest schema revision,
        else None (then :meth:`Store.open` creates, migrates or refuses it)."""
        db = Path(path).expanduser().resolve()
        return cls(db) if revision(db) == HEAD_REVISION else None

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

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions begin where _read says, not implicitly.
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=10000")
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one read transaction: every query in the block sees one
        snapshot of the library (WAL mode lets a writer go on meanwhile)."""
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")  # nothing was written; ends the snapshot
        except sqlite3.Error as err:
            raise LibraryError(f"cannot read library {self.path}: {err}") from err

    def current_revision(self) -> str | None:
        """The schema revision the database is at."""
        return revision(self.path)

    # -- spaces -------------------------------------------------------------------------

    def spaces(self) -> list[SpaceRecord]:
        with self._read() as conn:
            counts = dict(conn.execute("SELECT space_id, count(*) FROM vectors GROUP BY space_id"))
            rows = conn.execute("SELECT id, spec_json, generation FROM spaces ORDER BY id")
            return [
                SpaceRecord(
                    space_id,
                    SpaceSpec.from_dict(json.loads(spec_json)),
                    int(counts.get(space_id, 0)),
                    int(generation),
                )
                for space_id, spec_json, generation in rows
            ]

    def space(self, space_id: int) -> SpaceRecord:
        for record in self.spaces():
            if record.id == space_id:
                return record
        raise SpaceError(f"no space with id {space_id}")

    def transform(self, space_id: int) -> bytes | None:
        """The learned vector transform stored with a space (see whiten.py), or None."""
        with self._read() as conn:
            row = conn.execute("SELECT transform FROM spaces WHERE id = ?", (space_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def index_settings(self, space_id: int) -> IndexSettings:
        with self._read() as conn:
            row = conn.execute(
                "SELECT index_spec, settings_json FROM spaces WHERE id = ?", (space_id,)
            ).fetchone()
        if row is None:
            raise SpaceError(f"no space with id {space_id}")
        own = json.loads(row[1] or "{}").get("index", {})
        return IndexSettings(
            spec=row[0],
            max_memory=own.get("max_memory"),
            params={k: int(v) for k, v in own.get("params", {}).items()},
        )

    def manifest(self, space_id: int) -> Manifest | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT generation, count, checksum, filename, kind, tombstones, params_json, "
                "nbytes FROM index_manifest WHERE space_id = ?",
                (space_id,),
            ).fetchone()
        if row is None:
            return None
        generation, count, checksum, filename, kind, tombstones, params_json, nbytes = row
        return Manifest(
            generation, count, checksum, filename, kind, tombstones or 0, params_json, nbytes
        )

    # -- roots and images ---------------------------------------------------------------

    def _roots(self, conn: sqlite3.Connection) -> list[tuple[int, str]]:
        return [
            (root_id, os.fsdecode(path))
            for root_id, path in conn.execute("SELECT id, path FROM roots ORDER BY id")
        ]

    def find_root(self, folder: Path) -> tuple[int | None, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved), or
        (None, ``folder``) when none does. :meth:`Store.root_for` also creates it."""
        folder_str = str(folder)
        with self._read() as conn:
            for root_id, root in self._roots(conn):
                if folder_str == root or _inside(folder_str, root):
                    return root_id, Path(root)
        return None, folder

    def image_id(self, path: Path) -> int | None:
        """The id of the stored image at ``path`` (absolute, resolved), or None."""
        with self._read() as conn:
            for root_id, root in self._roots(conn):
                if _inside(str(path), root):
                    row = conn.execute(
                        "SELECT id FROM images WHERE root_id = ? AND relpath = ?",
                        (root_id, os.fsencode(os.path.relpath(path, root))),
                    ).fetchone()
                    if row is not None:
                        return int(row[0])
        return None

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        """Absolute paths of images by id."""
        out: dict[int, str] = {}
        with self._read() as conn:
            for chunk in _chunks(list(ids)):
                rows = conn.execute(
                    "SELECT images.id, roots.path, images.relpath FROM images "
                    f"JOIN roots ON roots.id = images.root_id WHERE images.id IN ({_marks(chunk)})",
                    chunk,
                )
                out.update((image_id, _join(root, rel)) for image_id, root, rel in rows)
        return out

    def image_facts(
        self, space_id: int | None, ids: Sequence[int] | None = None
    ) -> list[ImageFacts]:
        """Path, size, dates and content hash of every image with a vector in a space (every
        stored image when ``space_id`` is None), or of those ``ids`` among them, ordered by
        id. Used by filters and duplicate finding."""
        sql = (
            "SELECT images.id, roots.path, images.relpath, images.width, images.height, "
            "images.size, images.mtime_ns, images.taken_at, images.content_hash "
            "FROM images JOIN roots ON roots.id = images.root_id"
        )
        where: list[str] = []
        args: list[int] = []
        if space_id is not None:
            sql += " JOIN vectors ON vectors.image_id = images.id"
            where.append("vectors.space_id = ?")
            args.append(space_id)
        batches: Iterable[list[int] | None] = [None] if ids is None else _chunks(list(ids))
        facts: list[ImageFacts] = []
        with self._read() as conn:
            for chunk in batches:
                clauses = where + ([] if chunk is None else [f"images.id IN ({_marks(chunk)})"])
                query = sql + (" WHERE " + " AND ".join(clauses) if clauses else "")
                for row in conn.execute(query, args + (chunk or [])):
                    facts.append(
                        ImageFacts(
                            id=row[0],
                            path=_join(row[1], row[2]),
                            width=row[3],
                            height=row[4],
                            size=row[5],
                            mtime_ns=row[6],
                            taken_at=_datetime(row[7]),
                            content_hash=row[8],
                        )
                    )
        facts.sort(key=lambda fact: fact.id)
        return facts

    def image_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute("SELECT status, count(*) FROM images GROUP BY status")
            return {status: int(n) for status, n in rows}

    def failures(self) -> list[tuple[str, str]]:
        """(absolute path, error) of every failed file."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT roots.path, images.relpath, images.error FROM images "
                "JOIN roots ON roots.id = images.root_id WHERE images.status = ? "
                "ORDER BY roots.path, images.relpath",
                (FAILED,),
            )
            return [(_join(root, rel), error or "") for root, rel, error in rows]

    def integrity_problems(self) -> list[str]:
        """What SQLite's integrity and foreign-key checks, and the image states, find wrong."""
        problems: list[str] = []
        has_vector = "EXISTS (SELECT 1 FROM vectors WHERE vectors.image_id = images.id)"
        with self._read() as conn:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                problems.extend(f"integrity_check: {r}" for r in rows)
            for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
                problems.append(f"{table} row {rowid} points to a missing {parent} row")
            for status, has, wrong in (
                (INDEXED, "NOT", "are marked indexed but have no vector"),
                (FAILED, "", "are marked failed but still have vectors"),
            ):
                (count,) = conn.execute(
                    f"SELECT count(*) FROM images WHERE status = ? AND {has} {has_vector}",
                    (status,),
                ).fetchone()
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
        with self._read() as conn:
            space = conn.execute(
                "SELECT dim, generation FROM spaces WHERE id = ?", (space_id,)
            ).fetchone()
            if space is None:
                raise SpaceError(f"no space with id {space_id}")
            dim, generation = space
            select = "SELECT image_id, data FROM vectors WHERE space_id = ?"
            if ids is None:
                (count,) = conn.execute(
                    "SELECT count(*) FROM vectors WHERE space_id = ?", (space_id,)
                ).fetchone()
                queries = [(select + " ORDER BY image_id", [space_id])]
            else:
                wanted = sorted(set(int(i) for i in ids))
                count = len(wanted)  # at most; trimmed below
                queries = [
                    (
                        select + f" AND image_id IN ({_marks(chunk)}) ORDER BY image_id",
                        [space_id, *chunk],
                    )
                    for chunk in _chunks(wanted)
                ]
            out_ids = np.empty(count, dtype=np.int64)
            matrix = np.empty((count, dim), dtype=np.float32)
            n = 0
            for sql, args in queries:
                for image_id, data in conn.execute(sql, args):
                    out_ids[n] = image_id
                    matrix[n] = np.frombuffer(data, dtype=VECTOR_DTYPE)
                    n += 1
        return int(generation), out_ids[:n], matrix[:n]  # shorter when some ids had no vector

    def vector_ids(self, space_id: int) -> np.ndarray:
        """The image ids that have a vector in a space: int64 (N,), ascending (no blobs read)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT image_id FROM vectors WHERE space_id = ? ORDER BY image_id", (space_id,)
            )
            return np.fromiter((r[0] for r in rows), dtype=np.int64)
