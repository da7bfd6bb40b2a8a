"""A library's schema revision, and migrating it to the newest one."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .connect import Location
from .library import Library, default_location


@dataclass(frozen=True)
class SchemaStatus:
    """A library database's schema revision next to the newest one this version knows."""

    path: str
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_status(db: str | os.PathLike[str] | Location | None = None) -> SchemaStatus:
    """The schema revision of ``db`` (a file or a server's URL) without migrating it. Raises
    :class:`LibraryError`."""
    from .connect import writable
    from .reader import Reader
    from .sql_sqlite import HEAD_REVISION

    location = Location.parse(db) if db is not None else default_location()
    path = location.path
    if path is not None and path.is_file() and not writable(path):
        reader: Reader = Reader(location, read_only=True)  # read-only storage: read only
    else:
        from .store import Store

        reader = Store.open(location, migrate=False, create=False)
    try:
        return SchemaStatus(str(reader.location), reader.current_revision(), HEAD_REVISION)
    finally:
        reader.close()


def upgrade_schema(db: str | os.PathLike[str] | Location | None = None) -> SchemaStatus:
    """Migrate ``db`` to the newest schema revision; returns the status afterwards."""
    with Library.open(db, create=False) as lib:
        return schema_status(lib.location)
