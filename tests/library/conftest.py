"""The library tests run on both back ends: ``library`` is a SQLite file, then a fresh
PostgreSQL database (skipped without a server, see ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from featx_search import Library


@pytest.fixture
def library(library_db: str) -> Iterator[Library]:
    with Library.open(library_db) as lib:
        yield lib
