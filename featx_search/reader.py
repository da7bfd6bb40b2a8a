"""The library database, read side: every read that a query (``search``, ``similar``,
``dups``, ``info``) or a sync plan makes, written once in SQLAlchemy Core against the tables
of :mod:`featx_search.schema`. :class:`~featx_search.store.Store` (writes, migrations)
extends :class:`Reader`, so each read exists once whichever class runs it. The records both
sides pass around are in :mod:`.records`. Nothing here imports SQLAlchemy's ORM or Alembic: a
library at the newest schema revision is read without them.

A library this process cannot write (a read-only folder or mount, a file without write
permission), or one opened with ``read_only``, is read through SQLite's read-only modes and
refuses writes with :class:`ReadOnlyError`.

Each read runs in its own transaction (one snapshot); connections are pooled until
:meth:`Reader.close`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    exists,
    func,
    inspect,
    select,
)
from sqlalchemy import column as _column
from sqlalchemy import table as _table
from sqlalchemy.exc import DBAPIError, OperationalError

from .config import SpaceSpec
from .connect import database_url, library_path, make_engine, writable
from .errors import LibraryError, ReadOnlyError, SpaceError
from .records import (
    FAILED,
    INDEXED,
    VECTOR_DTYPE,
    FileResult,
    ImageFacts,
    IndexSettings,
    KnownFile,
    Manifest,
    Move,
    SpaceRecord,
    StoredCopy,
)
from .schema import HEAD_REVISION, images, index_manifest, roots, spaces, vectors

# Re-exported: the records live in .records, the one revision constant in .schema.
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
    "Reader",
    "SpaceRecord",
    "StoredCopy",
]

# Ids per "IN (...)" clause (SQLite allows 32766 variables per statement).
_CHUNK = 10_000
# Alembic's own table: not part of our schema, read only to learn the revision.
_alembic_version = _table("alembic_version", _column("version_num"))


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` lies strictly below ``folder`` (both absolute)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield [int(i) for i in ids[start : start + _CHUNK]]


def _has_vector(space_id: int | None = None) -> Any:
    """SQL: the image of the row has a vector (in ``space_id``, or in any space)."""
    query = select(vectors.c.image_id).where(vectors.c.image_id == images.c.id)
    if space_id is not None:
        query = query.where(vectors.c.space_id == space_id)
    return exists(query)


class Reader:
    """Read access to one library database. Open with :meth:`open`; close with :meth:`close`.

    ``read_only`` says whether writes are refused (see :meth:`require_writable`): the
    library was opened so, or this process may not write it.
    """

    def __init__(
        self, path: Path, *, read_only: bool = False, engine: Engine | None = None
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.engine = engine or make_engine(database_url(path, read_only=read_only))

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
        from .store import check_known_revision

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
        self.engine.dispose()

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

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection inside one read transaction: every query in the block sees one
        snapshot of the library (WAL mode lets a writer go on meanwhile)."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
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
        with self._read() as conn:
            if not inspect(conn).has_table(_alembic_version.name):
                return None
            value = conn.execute(select(_alembic_version.c.version_num)).scalar()
        return None if value is None else str(value)

    def _revision_or_none(self) -> str | None:
        try:
            return self.current_revision()
        except LibraryError:  # Store.open explains it
            return None

    # -- spaces -------------------------------------------------------------------------

    def spaces(self) -> list[SpaceRecord]:
        counts_query = select(vectors.c.space_id, func.count()).group_by(vectors.c.space_id)
        query = select(spaces.c.id, spaces.c.spec_json, spaces.c.generation).order_by(spaces.c.id)
        with self._read() as conn:
            counts: dict[int, int] = dict(conn.execute(counts_query).all())
            return [
                SpaceRecord(
                    space_id,
                    SpaceSpec.from_dict(json.loads(spec_json)),
                    int(counts.get(space_id, 0)),
                    int(generation),
                )
                for space_id, spec_json, generation in conn.execute(query)
            ]

    def space(self, space_id: int) -> SpaceRecord:
        for record in self.spaces():
            if record.id == space_id:
                return record
        raise SpaceError(f"no space with id {space_id}")

    def transform(self, space_id: int) -> bytes | None:
        """The learned vector transform stored with a space (see whiten.py), or None."""
        query = select(spaces.c.transform).where(spaces.c.id == space_id)
        with self._read() as conn:
            data = conn.execute(query).scalar()
        return None if data is None else bytes(data)

    def index_settings(self, space_id: int) -> IndexSettings:
        query = select(spaces.c.index_spec, spaces.c.settings_json).where(spaces.c.id == space_id)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise SpaceError(f"no space with id {space_id}")
        own = json.loads(row.settings_json or "{}").get("index", {})
        return IndexSettings(
            spec=row.index_spec,
            max_memory=own.get("max_memory"),
            params={k: int(v) for k, v in own.get("params", {}).items()},
        )

    def manifest(self, space_id: int) -> Manifest | None:
        query = select(index_manifest).where(index_manifest.c.space_id == space_id)
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        # Every field of Manifest is a column of the same name.
        return Manifest(**{f.name: row[f.name] for f in fields(Manifest)})

    # -- roots and images ---------------------------------------------------------------

    def _roots(self, conn: Connection) -> list[tuple[int, str]]:
        return list(conn.execute(select(roots.c.id, roots.c.path).order_by(roots.c.id)))

    def roots_below(self, folder: Path) -> list[tuple[int, Path]]:
        """The roots strictly below ``folder`` (absolute, resolved): a sync of ``folder``
        takes them in (see :meth:`Store.root_for`)."""
        with self._read() as conn:
            return [(i, Path(root)) for i, root in self._roots(conn) if _inside(root, str(folder))]

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
                    found = conn.execute(
                        select(images.c.id).where(
                            images.c.root_id == root_id,
                            images.c.relpath == os.path.relpath(path, root),
                        )
                    ).scalar()
                    if found is not None:
                        return int(found)
        return None

    def paths(self, ids: Iterable[int]) -> dict[int, str]:
        """Absolute paths of images by id."""
        out: dict[int, str] = {}
        query = select(images.c.id, roots.c.path, images.c.relpath).join(
            roots, roots.c.id == images.c.root_id
        )
        with self._read() as conn:
            for chunk in _chunks(list(ids)):
                rows = conn.execute(query.where(images.c.id.in_(chunk)))
                out.update((image_id, os.path.join(root, rel)) for image_id, root, rel in rows)
        return out

    def image_facts(
        self, space_id: int | None, ids: Sequence[int] | None = None
    ) -> list[ImageFacts]:
        """Path, size, dates and content hash of every image with a vector in a space (every
        stored image when ``space_id`` is None), or of those ``ids`` among them, ordered by
        id. Used by filters and duplicate finding."""
        query = select(
            images.c.id,
            roots.c.path,
            images.c.relpath,
            images.c.width,
            images.c.height,
            images.c.size,
            images.c.mtime_ns,
            images.c.taken_at,
            images.c.content_hash,
        ).join(roots, roots.c.id == images.c.root_id)
        if space_id is not None:
            query = query.join(vectors, vectors.c.image_id == images.c.id).where(
                vectors.c.space_id == space_id
            )
        queries = (
            [query]
            if ids is None
            else [query.where(images.c.id.in_(chunk)) for chunk in _chunks(list(ids))]
        )
        facts: list[ImageFacts] = []
        with self._read() as conn:
            for each in queries:
                for row in conn.execute(each):
                    facts.append(
                        ImageFacts(
                            id=row.id,
                            path=os.path.join(row.path, row.relpath),
                            width=row.width,
                            height=row.height,
                            size=row.size,
                            mtime_ns=row.mtime_ns,
                            taken_at=row.taken_at,
                            content_hash=row.content_hash,
                        )
                    )
        facts.sort(key=lambda fact: fact.id)
        return facts

    def image_counts(self) -> dict[str, int]:
        query = select(images.c.status, func.count()).group_by(images.c.status)
        with self._read() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def failures(self) -> list[tuple[str, str]]:
        """(absolute path, error) of every failed file."""
        query = (
            select(roots.c.path, images.c.relpath, images.c.error)
            .join(roots, roots.c.id == images.c.root_id)
            .where(images.c.status == FAILED)
            .order_by(roots.c.path, images.c.relpath)
        )
        with self._read() as conn:
            rows = conn.execute(query)
            return [(os.path.join(root, rel), error or "") for root, rel, error in rows]

    def known_files(self, root_id: int, prefix: str, space_id: int) -> dict[str, KnownFile]:
        """Files stored under ``prefix`` of a root, keyed by path relative to the root."""
        query = select(
            images.c.id,
            images.c.relpath,
            images.c.size,
            images.c.mtime_ns,
            images.c.status,
            _has_vector(space_id),
            images.c.content_hash,
        ).where(images.c.root_id == root_id)
        # Paths are stored as bytes (see schema.FsPath), so the prefix is matched here.
        under = prefix.rstrip(os.sep) + os.sep if prefix else ""
        with self._read() as conn:
            return {
                rel: KnownFile(image_id, size, mtime_ns, status, bool(has), digest)
                for image_id, rel, size, mtime_ns, status, has, digest in conn.execute(query)
                if rel.startswith(under)
            }

    def stored_sizes(self) -> set[int]:
        """The byte sizes of all stored images (to find files worth hashing for moves)."""
        with self._read() as conn:
            return set(conn.execute(select(images.c.size).distinct()).scalars())

    def copies(self, hashes: Iterable[str], space_id: int) -> dict[str, list[StoredCopy]]:
        """Stored images whose content hash is in ``hashes``, grouped by hash."""
        wanted = sorted(set(hashes))
        query = (
            select(
                images.c.content_hash,
                images.c.id,
                roots.c.path,
                images.c.relpath,
                images.c.status,
                _has_vector(space_id),
            )
            .join(roots, roots.c.id == images.c.root_id)
            .order_by(images.c.id)
        )
        found: dict[str, list[StoredCopy]] = {}
        with self._read() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = query.where(images.c.content_hash.in_(wanted[start : start + _CHUNK]))
                for digest, image_id, root, rel, status, has in conn.execute(chunk):
                    found.setdefault(digest or "", []).append(
                        StoredCopy(image_id, Path(root, rel), Path(root), status, bool(has))
                    )
        for group in found.values():
            group.sort(key=lambda copy: copy.id)
        return found

    def integrity_problems(self) -> list[str]:
        """What SQLite's integrity and foreign-key checks, and the image states, find wrong."""
        problems: list[str] = []
        with self._read() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            if rows != ["ok"]:
                problems.extend(f"integrity_check: {r}" for r in rows)
            for table, rowid, parent, _ in conn.exec_driver_sql("PRAGMA foreign_key_check"):
                problems.append(f"{table} row {rowid} points to a missing {parent} row")
            for status, has, wrong in (
                (INDEXED, False, "are marked indexed but have no vector"),
                (FAILED, True, "are marked failed but still have vectors"),
            ):
                vector = _has_vector()
                count = conn.execute(
                    select(func.count())
                    .select_from(images)
                    .where(images.c.status == status, vector if has else ~vector)
                ).scalar()
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
        rows = select(vectors.c.image_id, vectors.c.data).where(vectors.c.space_id == space_id)
        with self._read() as conn:
            space = conn.execute(
                select(spaces.c.dim, spaces.c.generation).where(spaces.c.id == space_id)
            ).first()
            if space is None:
                raise SpaceError(f"no space with id {space_id}")
            dim, generation = space
            if ids is None:
                count = conn.execute(
                    select(func.count()).select_from(vectors).where(vectors.c.space_id == space_id)
                ).scalar_one()
                queries = [rows.order_by(vectors.c.image_id)]
            else:
                wanted = sorted(set(int(i) for i in ids))
                count = len(wanted)  # at most; trimmed below
                queries = [
                    rows.where(vectors.c.image_id.in_(chunk)).order_by(vectors.c.image_id)
                    for chunk in _chunks(wanted)
                ]
            out_ids = np.empty(count, dtype=np.int64)
            matrix = np.empty((count, dim), dtype=np.float32)
            n = 0
            for query in queries:
                for image_id, data in conn.execute(query):
                    out_ids[n] = image_id
                    matrix[n] = np.frombuffer(data, dtype=VECTOR_DTYPE)
                    n += 1
        return int(generation), out_ids[:n], matrix[:n]  # shorter when some ids had no vector

    def vector_ids(self, space_id: int) -> np.ndarray:
        """The image ids that have a vector in a space: int64 (N,), ascending (no blobs read)."""
        query = (
            select(vectors.c.image_id)
            .where(vectors.c.space_id == space_id)
            .order_by(vectors.c.image_id)
        )
        with self._read() as conn:
            return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)
