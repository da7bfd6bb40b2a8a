"""Shared fixtures: synthetic photo folders, temporary libraries, an indexed library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featx_search import Library
from tests.support import TINY_ARGS, make_photo, run_cli


@pytest.fixture(autouse=True)
def _no_query_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Index runs do not export query models here (seconds each); tests of query models turn
    them back on with ``monkeypatch.setenv("FEATX_QUERY_MODEL", "1")``."""
    monkeypatch.setenv("FEATX_QUERY_MODEL", "0")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of 12 distinct synthetic photos (JPEG and PNG) in two subfolders."""
    root = tmp_path / "photos"
    for i in range(12):
        sub = "a" if i % 2 else "b"
        ext = ".jpg" if i % 3 else ".png"
        make_photo(root / sub / f"img{i:02d}{ext}", seed=i)
    return root


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "lib" / "test.db"


@pytest.fixture
def library(db: Path) -> Iterator[Library]:
    with Library.open(db) as lib:
        yield lib


@pytest.fixture
def indexed(db: Path, photos: Path) -> Path:
    """The library file of :func:`photos` indexed with the tiny model through the CLI."""
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")
    return db
