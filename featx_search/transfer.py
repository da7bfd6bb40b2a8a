"""Copying a library between back ends (a SQLite file, a PostgreSQL database, either way):
every row of every table of :mod:`.schema`, streamed in chunks, ids preserved, then row counts
and a checksum of each space's vectors compared, and each space's index rebuilt from the
copied vectors so that the copy answers searches at once (index files are never copied; the
manifest that describes them is written by the rebuild)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, DateTime, Engine, Table, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from .connect import Location, database_url, make_engine, server_engine, unreachable
from .errors import LibraryError
from .migrate import check_known_revision
from .options import Progress, ProgressCallback
from .schema import (
    HEAD_REVISION,
    copy_views,
    dup_decision_members,
    dup_decisions,
    images,
    index_manifest,
    roots,
    spaces,
    vectors,
)

if TYPE_CHECKING:
    from .ann.publish import BuildInfo
    from .store import Store

# Rows read and written at a time: memory stays bounded whatever the library's size.
CHUNK_ROWS = 5000

# The tables copied, parents before children. index_manifest is not: it describes index files
# of the source's machine, and the rebuild writes the destination's own; nor are claims (of
# files by index runs going on at the source, which the copy does not take along).
COPIED: tuple[Table, ...] = (
    roots,
    images,
    spaces,
    vectors,
    copy_views,
    dup_decisions,
    dup_decision_members,
)

# Tables whose ids come from a sequence on a server (set past the copied ids afterwards).
_SEQUENCED: tuple[Table, ...] = (roots, images, spaces, dup_decisions)


@dataclass(frozen=True)
class TableCount:
    """Rows of one table in the source and, after the copy, in the destination."""

    table: str
    source: int
    destination: int

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass(frozen=True)
class VectorChecksum:
    """A space's vectors on both sides: how many, and SHA-256 over (image id, vector bytes)
    in image-id order."""

    space_id: int
    count: int
    source: str
    destination: str

    @property
    def ok(self) -> bool:
        return self.source == self.destination


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_library` copied and checked, and the indexes it rebuilt."""

    source: str
    destination: str
    tables: tuple[TableCount, ...]
    checksums: tuple[VectorChecksum, ...]
    rebuilt: tuple[BuildInfo, ...] = ()
    seconds: float = 0.0
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", sum(t.source for t in self.tables))

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables) and all(c.ok for c in self.checksums)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "ok": self.ok,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "tables": [
                {"table": t.table, "source": t.source, "destination": t.destination}
                for t in self.tables
            ],
            "vectors": [
                {
                    "space": c.space_id,
                    "count": c.count,
                    "source": c.source,
                    "destination": c.destination,
                }
                for c in self.checksums
            ],
            "rebuilt": [b.to_dict() for b in self.rebuilt],
        }


class CopyMismatch(LibraryError):
    """The copy's row counts or vector checksums differ from the source's (see ``report``)."""

    def __init__(self, message: str, report: CopyReport, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.report = report


def copy_library(
    src: str | Path | Location,
    dst: str | Path | Location,
    progress: ProgressCallback | None = None,
    *,
    chunk: int = CHUNK_ROWS,
) -> CopyReport:
    """Copy the library at ``src`` to ``dst`` (each a SQLite file's path or a server's URL).

    The destination is created (a SQLite file) and migrated to the newest schema first; one
    that already holds a library is refused. Every row keeps its id, ``chunk`` rows at a time
    (all in one transaction of the destination, so a failed copy leaves it empty), read from
    one snapshot of the source. Then row counts and vector checksums are compared (a
    mismatch raises :class:`CopyMismatch`, whose ``report`` has both sides) and each space's
    index is rebuilt from the copied vectors. ``progress`` gets rows done of rows in all.
    """
    from .store import Store

    if chunk < 1:
        raise LibraryError(f"chunk must be at least 1, got {chunk}")
    source, target = Location.parse(src), Location.parse(dst)
    if (source.path, source.url) == (target.path, target.url):
        raise LibraryError(
            f"source and destination are the same library: {source}",
            hint="give a new SQLite file or an empty database as the destination",
        )
    started = time.perf_counter()
    new_file = target.path is not None and not target.path.exists()
    with _source_connection(source) as reader:
        counts = {t.name: _count(reader, t) for t in COPIED}
        store = Store.open(target, migrate=False)
        try:
            _refuse_a_library(store)
            store.upgrade()
            with store.writer_lock():
                _copy_rows(reader, store, counts, progress, chunk)
                report = CopyReport(
                    source=str(source),
                    destination=str(target),
                    tables=_compare_counts(counts, store.engine),
                    checksums=_compare_vectors(reader, store.engine, chunk),
                )
                if not report.ok:
                    raise CopyMismatch(
                        f"the copy of {source} in {target} differs from it",
                        report,
                        hint="the destination holds a broken copy: empty it (or delete the "
                        "file) and copy again",
                    )
                rebuilt = _rebuild(store)
        except BaseException:
            store.close()
            if new_file and target.path is not None:
                _remove_sqlite(target.path)
            raise
        store.close()
    return CopyReport(
        source=report.source,
        destination=report.destination,
        tables=report.tables,
        checksums=report.checksums,
        rebuilt=rebuilt,
        seconds=time.perf_counter() - started,
    )


# -- the source: one snapshot, read in chunks ---------------------------------------------------


@contextmanager
def _source_connection(location: Location) -> Iterator[Connection]:
    """A connection to the library at ``location`` inside one read transaction (one snapshot
    of it for the whole copy), after checking it is a library at the newest schema."""
    engine = _source_engine(location)
    try:
        try:
            conn = engine.connect()
        except DBAPIError as err:
            if location.path is None:
                raise unreachable(location, err) from None
            raise LibraryError(f"cannot read library {location}: {err.orig}") from None
        with conn:
            if location.path is None:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                revision = _revision(conn)
            except DBAPIError as err:
                raise LibraryError(f"cannot read library {location}: {err.orig}") from None
            _check_source_revision(location, revision)
            yield conn
    finally:
        engine.dispose()


def _source_engine(location: Location) -> Engine:
    if location.path is None:
        return server_engine(location.sqlalchemy_url())
    if not location.path.is_file():
        raise LibraryError(
            f"no library at {location.path}", hint="check the path of the library to copy"
        )
    return make_engine(database_url(location.path, read_only=True))


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def _check_source_revision(location: Location, revision: str | None) -> None:
    if revision == HEAD_REVISION:
        return
    if revision is None:
        raise LibraryError(
            f"{location} holds no featx-search library",
            hint="check the source; a library is made by `featx-search index`",
        )
    check_known_revision(location, revision)  # a newer featx-search's library: say so
    raise LibraryError(
        f"library {location} is at schema revision {revision}, older than {HEAD_REVISION}",
        hint=f"migrate it first: featx-search --db {location} db upgrade",
    )


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _chunks(conn: Connection, table: Table, chunk: int) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``table`` in primary-key order, ``chunk`` at a time (a server-side cursor
    on a server, SQLite's stepping otherwise): never the whole table in memory."""
    order = list(table.primary_key.columns)
    result = conn.execution_options(yield_per=chunk).execute(select(table).order_by(*order))
    aware = [c.name for c in table.columns if isinstance(c.type, DateTime) and c.type.timezone]
    for part in result.partitions():
        rows = [dict(row._mapping) for row in part]
        for row in rows:
            for name in aware:
                row[name] = _utc(row[name])
        yield rows


def _utc(value: datetime | None) -> datetime | None:
    """A stored instant as an aware UTC time: SQLite gives it back naive (written in UTC), a
    server in its session's time zone; SQLite would drop any offset given to it."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


# -- the destination ----------------------------------------------------------------------------


def _refuse_a_library(store: Store) -> None:
    """Raise when the destination holds any row of a library (its tables may exist, empty)."""
    with store.engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        held = {t.name: _count(conn, t) for t in (*COPIED, index_manifest) if t.name in present}
    if any(held.values()):
        raise LibraryError(
            f"destination {store.location} already holds a library "
            f"({held.get('images', 0)} images, {held.get('spaces', 0)} spaces)",
            hint="copy into a new SQLite file or an empty database; nothing was changed",
        )


def _copy_rows(
    reader: Connection,
    store: Store,
    counts: dict[str, int],
    progress: ProgressCallback | None,
    chunk: int,
) -> None:
    """Every row of the copied tables, in one transaction of the destination."""
    from sqlalchemy import insert

    total, done, started = sum(counts.values()), 0, time.perf_counter()
    with store.transaction() as out:
        for table in COPIED:
            for rows in _chunks(reader, table, chunk):
                out.execute(insert(table), rows)
                done += len(rows)
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    progress(Progress(done, total, path=table.name, elapsed=elapsed))
        if store.location.path is None:
            for table in _SEQUENCED:
                # The next id a server gives is past every copied one (is_called false on
                # an empty table: the next id is 1).
                out.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table.name}"
                    )
                )


def _compare_counts(counts: dict[str, int], engine: Engine) -> tuple[TableCount, ...]:
    with engine.connect() as conn:
        return tuple(TableCount(t.name, counts[t.name], _count(conn, t)) for t in COPIED)


def vector_checksums(conn: Connection, chunk: int = CHUNK_ROWS) -> dict[int, tuple[int, str]]:
    """{space id: (vectors, SHA-256 over each image id (8 bytes, little-endian) and its
    vector's bytes, in image-id order)} of the library on ``conn``."""
    found: dict[int, tuple[int, Any]] = {}
    query = select(vectors.c.space_id, vectors.c.image_id, vectors.c.data).order_by(
        vectors.c.space_id, vectors.c.image_id
    )
    result = conn.execution_options(yield_per=chunk).execute(query)
    for part in result.partitions():
        for space_id, image_id, data in part:
            count, digest = found.get(space_id) or (0, hashlib.sha256())
            digest.update(int(image_id).to_bytes(8, "little"))
            digest.update(bytes(data))
            found[space_id] = (count + 1, digest)
    return {space: (count, digest.hexdigest()) for space, (count, digest) in found.items()}


def _compare_vectors(reader: Connection, engine: Engine, chunk: int) -> tuple[VectorChecksum, ...]:
    before = vector_checksums(reader, chunk)
    with engine.connect() as conn:
        after = vector_checksums(conn, chunk)
    return tuple(
        VectorChecksum(
            space,
            before.get(space, (0, ""))[0],
            before.get(space, (0, ""))[1],
            after.get(space, (0, ""))[1],
        )
        for space in sorted({*before, *after})
    )


def _rebuild(store: Store) -> tuple[BuildInfo, ...]:
    """Each space's index built from the copied vectors and published (as ``reindex``)."""
    from .ann.publish import rebuild_index

    return tuple(rebuild_index(store, record) for record in store.spaces() if record.count)


def _remove_sqlite(path: Path) -> None:
    """Remove a SQLite file this copy created (its journal files, lock and index folder)."""
    import shutil

    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    shutil.rmtree(path.with_name(path.name + ".indexes"), ignore_errors=True)
