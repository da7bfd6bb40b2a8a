"""How the reads of :mod:`.queries` run: as the SQLite text compiled into :mod:`.sql_sqlite`
on a stdlib ``sqlite3`` connection (no SQLAlchemy import: what queries use), or as the Core
statements themselves on an engine (what :class:`~.store.Store` uses), with the same rows."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .sql_sqlite import STATEMENTS

if TYPE_CHECKING:
    from sqlalchemy import Connection

Row = Sequence[Any]


def listed(values: Iterable[Any]) -> str:
    """A list of ids or hashes as the one JSON parameter the statements take for it."""
    return json.dumps(list(values))


def _datetime_text(value: datetime | None) -> str | None:
    # How SQLAlchemy's SQLite DateTime stores a value.
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _fsdecode(value: bytes | None) -> str | None:
    return None if value is None else os.fsdecode(value)


def _fsencode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


# The conversions named in sql_sqlite.py: (bound value -> sqlite3, sqlite3 -> result value).
_CONVERSIONS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "fspath": (_fsencode, _fsdecode),
    "datetime": (_datetime_text, _datetime),
    "bool": (int, _bool),
}


class Reads:
    """Runs the named reads of :mod:`.queries` inside one transaction."""

    def rows(self, name: str, **params: Any) -> Iterable[Row]:
        raise NotImplementedError

    def first(self, name: str, **params: Any) -> Row | None:
        return next(iter(self.rows(name, **params)), None)

    def scalar(self, name: str, **params: Any) -> Any:
        row = self.first(name, **params)
        return None if row is None else row[0]

    def has_revision_table(self) -> bool:
        raise NotImplementedError

    def pragma(self, name: str) -> list[Row]:
        """The rows of SQLite's ``PRAGMA name`` (integrity checks)."""
        raise NotImplementedError

    def database_oid(self) -> int:
        """A server database's own id (it changes when the database is dropped and made
        again, so that a machine's cached index files are not mistaken for its)."""
        raise NotImplementedError


class SqliteReads(Reads):
    """The reads as SQLite text (sql_sqlite.py) on a ``sqlite3`` connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _cursor(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        sql, binds, constants, _ = STATEMENTS[name]
        values = {**constants, **params}
        for key, conversion in binds.items():
            if conversion:
                values[key] = _CONVERSIONS[conversion][0](values[key])
        return self._conn.execute(sql, values)

    def rows(self, name: str, **params: Any) -> Iterable[Row]:
        cursor = self._cursor(name, params)
        out = [(i, _CONVERSIONS[c][1]) for i, c in enumerate(STATEMENTS[name][3]) if c]
        return (_converted(row, out) for row in cursor) if out else cursor

    def first(self, name: str, **params: Any) -> Row | None:
        cursor = self._cursor(name, params)
        row = cursor.fetchone()
        cursor.close()  # a statement left running would keep the transaction from ending
        if row is None:
            return None
        out = [(i, _CONVERSIONS[c][1]) for i, c in enumerate(STATEMENTS[name][3]) if c]
        return _converted(row, out) if out else row

    def has_revision_table(self) -> bool:
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        )
        return found.fetchone() is not None

    def pragma(self, name: str) -> list[Row]:
        return list(self._conn.execute(f"PRAGMA {name}"))


def _converted(row: tuple[Any, ...], out: list[tuple[int, Callable[[Any], Any]]]) -> Row:
    values = list(row)
    for i, convert in out:
        values[i] = convert(values[i])
    return values


class CoreReads(Reads):
    """The reads as SQLAlchemy Core statements (queries.py) on an engine's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def rows(self, name: str, **params: Any) -> Iterable[Row]:
        from .queries import STATEMENTS as CORE

        return self._conn.execute(CORE[name], params)

    def first(self, name: str, **params: Any) -> Row | None:
        from .queries import STATEMENTS as CORE

        return self._conn.execute(CORE[name], params).first()

    def has_revision_table(self) -> bool:
        from sqlalchemy import inspect

        return inspect(self._conn).has_table("alembic_version")

    def pragma(self, name: str) -> list[Row]:
        if self._conn.dialect.name != "sqlite":
            # A server checks its own storage; foreign keys are enforced as rows are written.
            return [("ok",)] if name == "integrity_check" else []
        return list(self._conn.exec_driver_sql(f"PRAGMA {name}"))

    def database_oid(self) -> int:
        found = self._conn.exec_driver_sql(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        )
        return int(found.scalar_one())
