"""Where a library's database is (a :class:`Location`: a SQLite file or a database server's
URL) and how it opens: paths (any characters, ``~``), URIs and URLs, whether this process may
write it, SQLite's read-only modes, and engines. For a SQLite library SQLAlchemy is imported
only to build an engine (writes), never for a query."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LibraryError

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


# -- where a library is: a SQLite file or a database server ---------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SERVER_DRIVER = "postgresql+psycopg"


@dataclass(frozen=True)
class Location:
    """Where a library's database is: a SQLite file (``path``) or a database server
    (``url``, a SQLAlchemy URL such as ``postgresql+psycopg://user:pw@host:5432/photos``).

    ``str()`` shows it with any password masked; :meth:`parse` reads what a user types.
    """

    path: Path | None = None
    url: str | None = None
    # Where a server library's index files live on this machine (None: the cache default).
    local_dir: Path | None = None

    @classmethod
    def parse(cls, text: str | os.PathLike[str] | Location) -> Location:
        """A location from ``text``: a URL with a ``scheme://`` (``postgresql://`` and
        ``postgresql+psycopg://`` name a server, ``sqlite:///PATH`` a file), else a file path
        (``~`` expanded). Raises :class:`LibraryError` for another scheme or a bad URL."""
        if isinstance(text, Location):
            return text
        raw = os.fspath(text)
        found = _SCHEME.match(raw) if isinstance(raw, str) else None
        if found is None:
            return cls(path=library_path(raw))
        scheme = found.group(1).lower()
        if scheme == "sqlite":
            rest = raw[found.end() :]
            if not rest.startswith("/") or rest == "/":
                raise LibraryError(
                    f"database URL {raw!r} names no SQLite file",
                    hint="write sqlite:///relative.db or sqlite:////absolute/path.db, "
                    "or give the file path itself",
                )
            return cls(path=library_path(rest[1:]))
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise LibraryError(
                f"database URL scheme {scheme!r} is not supported",
                hint="give a file path (SQLite) or postgresql+psycopg://user:password@host:5432/db",
            )
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(raw).set(drivername=_SERVER_DRIVER)
        except (ArgumentError, ValueError) as err:
            raise LibraryError(
                f"bad database URL {_mask_text(raw)}: {err}",
                hint="write postgresql+psycopg://user:password@host:5432/db",
            ) from None
        if not url.database:
            raise LibraryError(
                f"database URL {_mask_text(raw)} names no database",
                hint="end it with /DBNAME, e.g. postgresql+psycopg://user@host:5432/photos",
            )
        return cls(url=url.render_as_string(hide_password=False))

    @property
    def is_sqlite(self) -> bool:
        return self.url is None

    @property
    def file(self) -> Path:
        """The SQLite file; raises :class:`LibraryError` for a server library."""
        if self.path is None:
            raise LibraryError(f"library {self} is on a database server, not in a file")
        return self.path

    def sqlalchemy_url(self, *, read_only: bool = False) -> URL:
        """The URL an engine opens (SQLite read-only modes as :func:`database_url`)."""
        if self.path is not None:
            return database_url(self.path, read_only=read_only)
        from sqlalchemy.engine import make_url

        return make_url(self.url or "")

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return _mask_text(self.url or "")

    def with_local_dir(self, folder: Path | None) -> Location:
        return replace(self, local_dir=None if folder is None else library_path(folder))

    def identity(self) -> str:
        """A name for a server library that is the same on every machine that reaches it the
        same way: host, port and database (no user, no password)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.url or "")
        return f"{url.host or 'localhost'}-{url.port or 5432}-{url.database}"


def _mask_text(text: str) -> str:
    """``text`` (a URL) with the password between ``user:`` and ``@`` replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)


def cache_dir() -> Path:
    """The per-user cache folder (platformdirs when installed, else ``~/.cache``)."""
    try:
        from platformdirs import user_cache_path
    except ImportError:
        return Path.home() / ".cache" / "featx-search"
    return user_cache_path("featx-search")


def server_engine(url: URL) -> Engine:
    """An engine on a database server library: a few pooled connections per process."""
    from sqlalchemy import create_engine

    return create_engine(url, pool_size=8, max_overflow=-1, connect_args={"connect_timeout": 10})


class ConnectionLost(LibraryError):
    """The connection to a database server broke during a read (a read is retried once)."""


def one_line(error: BaseException | None) -> str:
    """A driver's error message on one line (psycopg's span several)."""
    text = " ".join(str(error).split())
    return text.removeprefix("connection failed: ")


def unreachable(location: Location, err: BaseException) -> LibraryError:
    """The error for a library whose database cannot be connected to (a server that is down
    or unreachable, wrong credentials, a missing database), with the password masked."""
    orig = getattr(err, "orig", err)
    return LibraryError(
        f"cannot connect to library {location}: {one_line(orig)}",
        hint="check the host, port, database name, user and password in the URL, and that "
        "the database server is running",
    )
