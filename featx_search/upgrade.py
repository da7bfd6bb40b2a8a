"""A library's schema revision, and migrating it to the newest one."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .library import Library, default_db_path


@dataclass(frozen=True)
class SchemaStatus:
    """A library database's schema revision next to the newest one this version knows."""

    path: str
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_status(db: str | os.PathLike[str] | None = None) -> SchemaStatus:
    """The schema revision of ``db`` without migrating it. Raises :class:`LibraryError`."""
    from .connect import library_path, writable
    from .reader import Reader
    from .sql_sqlite import HEAD_REVISION

    path = library_path(db if db is not None else default_db_path())
    if path.is_file() and not writable(path):  # read-only storage: read the revision only
        reader: Reader = Reader(path, read_only=True)
    else:
        from .store import Store

        reader = Store.open(path, migrate=False, create=False)
    try:
        return SchemaStatus(str(reader.path), reader.current_revision(), HEAD_REVISION)
    finally:
        reader.close()


def upgrade_schema(db: str | os.PathLike[str] | None = None) -> SchemaStatus:
    """Migrate ``db`` to the newest schema revision; returns the status afterwards."""
    with Library.open(db, create=False) as lib:
        return schema_status(lib.path)
