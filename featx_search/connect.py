"""Where a library's database is and how SQLite opens it: paths (any characters, ``~``),
URIs and URLs, whether this process may write it, SQLite's read-only modes, and engines.
SQLAlchemy is imported only to build an engine (writes), never for a query."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import URL, Engine


def library_path(path: str | os.PathLike[str]) -> Path:
    """The absolute database path of a library given as ``path`` (``~`` expanded)."""
    return Path(os.fspath(path)).expanduser().resolve()


def _may_write(path: Path) -> bool:
    # access() also answers False on a read-only mount, even for root.
    return os.access(path, os.W_OK)


def writable(db: Path) -> bool:
    """Whether this process may change the library at ``db``: the file (when it exists) and
    the folder that holds it (SQLite writes its journal and WAL files beside it), or for a
    new library the nearest existing folder above it."""
    if db.exists():
        return _may_write(db) and _may_write(db.parent)
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return _may_write(folder)


def _read_only_mode(db: Path) -> dict[str, str]:
    """The URI parameters of a read-only open of ``db``.

    A read-only open of a library this process could write uses SQLite's ``mode=ro``. On
    storage it cannot write, ``mode=ro`` would need to create the WAL's ``-shm`` and ``-wal``
    files, and where it can it leaves them behind with the database's read-only permission,
    which then blocks writers; so there the file is opened ``immutable=1`` (nothing is
    created or locked) unless both files exist already.
    """
    wal_files = all(db.with_name(db.name + suffix).exists() for suffix in ("-wal", "-shm"))
    if writable(db) or wal_files:
        return {"mode": "ro"}
    return {"immutable": "1"}


def sqlite_uri(db: Path, *, read_only: bool = False) -> str:
    """The URI that ``sqlite3.connect(uri, uri=True)`` opens ``db`` with (any characters a
    file system allows; read-only modes as :func:`database_url`)."""
    if not read_only:
        return db.as_uri()
    return db.as_uri() + "?" + "&".join(f"{k}={v}" for k, v in _read_only_mode(db).items())


def database_url(db: Path, *, read_only: bool = False) -> URL:
    """The SQLAlchemy URL of the SQLite file ``db``, read-only as :func:`sqlite_uri` says."""
    from sqlalchemy import URL

    if not read_only:
        return URL.create("sqlite", database=str(db))
    query = {"uri": "true", **_read_only_mode(db)}
    return URL.create("sqlite", database=db.as_uri(), query=query)


def make_engine(url: URL, *, pragmas: Sequence[str] = ()) -> Engine:
    """An engine on a SQLite library whose transactions begin where SQLAlchemy says (so that
    every read inside one sees one snapshot), with ``pragmas`` run on each new connection."""
    from sqlalchemy import create_engine, event

    engine = create_engine(
        url,
        connect_args={"timeout": 10, "check_same_thread": False},
        pool_size=8,
        max_overflow=-1,  # threads never wait for a connection; extras close when returned
    )

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("PRAGMA busy_timeout=10000", *pragmas):
            cursor.execute(pragma)
        cursor.close()

    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine
