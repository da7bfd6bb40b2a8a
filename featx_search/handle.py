"""The library's database as the library and its spaces share it: read until the first
write, then written under one lock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connect import Location
    from .reader import Reader
    from .store import Store


class StoreHandle:
    """The library's database, shared by the library and its spaces: a :class:`Reader` (plain
    sqlite3 for a SQLite file) until the first write, then the :class:`Store` (which imports
    SQLAlchemy)."""

    def __init__(self, store: Reader) -> None:
        self._store = store
        self._lock = threading.Lock()

    @property
    def reader(self) -> Reader:
        return self._store

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def location(self) -> Location:
        return self._store.location

    def writer(self) -> Store:
        """The store, for writing; raises :class:`ReadOnlyError` on a read-only library."""
        from .store import Store

        self._store.require_writable()
        with self._lock:
            if not isinstance(self._store, Store):
                reader = self._store
                self._store = Store.open(reader.location, create=False)
                reader.close()
            return self._store

    def close(self) -> None:
        self._store.close()
