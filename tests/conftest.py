"""Shared fixtures: synthetic photo folders, temporary libraries (SQLite files, and fresh
PostgreSQL databases), an indexed library."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from featx_search import Library
from featx_search import compute as compute_module
from tests.support import PG_URL_ENV, TINY_ARGS, libpq_url, make_photo, pg_database, run_cli


@pytest.fixture(autouse=True)
def _no_query_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Index runs do not export query models here (seconds each); tests of query models turn
    them back on with ``monkeypatch.setenv("FEATX_QUERY_MODEL", "1")``."""
    monkeypatch.setenv("FEATX_QUERY_MODEL", "0")


@pytest.fixture(autouse=True)
def _fp32_machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as on a device without native bf16 or fp16, so that ``auto`` precision
    means fp32 whatever machine runs the suite; tests marked ``real_precisions`` see the
    machine as it is (or mock it themselves)."""
    if request.node.get_closest_marker("real_precisions") is None:
        monkeypatch.setattr(compute_module, "native_precisions", lambda device: ("fp32",))


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


# -- PostgreSQL: the server named by $FEATX_TEST_PG_URL, one fresh database per test --------


def _pg_unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the PostgreSQL tests must run under CI: {why}", pytrace=False)
    pytest.skip(
        f"PostgreSQL half skipped: {why} "
        f"(set {PG_URL_ENV}=postgresql+psycopg://user:password@host:5432/db of a superuser)"
    )


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The URL of a PostgreSQL server whose role may create databases ($FEATX_TEST_PG_URL).
    Skips when unset or unreachable, except under CI, where it fails."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        _pg_unavailable(f"{PG_URL_ENV} is not set")
    try:
        import psycopg
    except ImportError:
        _pg_unavailable("psycopg is not installed (pip install 'featx-search[postgres]')")
    from featx_search.connect import Location, one_line

    try:
        with psycopg.connect(libpq_url(url), connect_timeout=5):
            pass
    except psycopg.Error as err:
        _pg_unavailable(f"cannot reach {Location.parse(url)}: {one_line(err)}")
    return url


@pytest.fixture
def pg_db(pg_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test. The per-user cache
    (where a server library keeps its index files) is a folder of the test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pg_database(pg_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def library_db(request: pytest.FixtureRequest, db: Path) -> str:
    """Where a new library goes, once per back end: a SQLite file's path, then a fresh
    PostgreSQL database's URL (see :func:`pg_db`)."""
    if request.param == "sqlite":
        return str(db)
    url: str = request.getfixturevalue("pg_db")
    return url
