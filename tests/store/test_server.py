"""A library on a database server (PostgreSQL): naming it, its faults as one clear line, a
read retried after a dropped connection, its migrations, and where each machine keeps its
index files. The PostgreSQL half skips without a server (see tests/conftest.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featx_search import Library, LibraryError, LibraryVersionError, Query
from featx_search.connect import Location
from featx_search.store import Store
from tests.support import TINY, libpq_url, run_cli

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``featx-search ARGS`` in a new process: what a user sees, tracebacks included."""
    return subprocess.run(
        [sys.executable, "-m", "featx_search", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess[str], *, secret: str = "") -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    if secret:
        assert secret not in result.stderr + result.stdout
    return errors[0]


# -- naming a library --------------------------------------------------------------------------


def test_a_path_is_a_file_and_a_url_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Location.parse("~/photos.db").path == tmp_path / "photos.db"
    assert Location.parse(f"sqlite:///{tmp_path}/x.db").path == tmp_path / "x.db"
    server = Location.parse("postgresql://me:s3cret@db.example:6543/photos")
    assert server.path is None and not server.is_sqlite
    assert server.url == "postgresql+psycopg://me:s3cret@db.example:6543/photos"
    assert str(server) == "postgresql+psycopg://me:***@db.example:6543/photos"
    assert server.identity() == "db.example-6543-photos"
    with pytest.raises(LibraryError, match="on a database server"):
        _ = server.file
    for bad, why in [
        ("mysql://me@host/photos", "scheme 'mysql' is not supported"),
        ("postgresql://me:s3cret@host/", "names no database"),
        ("postgresql://me:s3cret@host:port/x", "bad database URL"),
    ]:
        with pytest.raises(LibraryError, match=why) as caught:
            Location.parse(bad)
        assert "s3cret" not in str(caught.value)


def test_cli_refuses_a_bad_url_naming_db() -> None:
    result = run_cli("--db", "mysql://me:s3cret@host/photos", "info", ok=False)
    assert result.exit_code == 2 and "--db" in result.output and "not supported" in result.output
    assert "s3cret" not in result.output


def test_an_unreachable_server_is_one_line_with_the_password_masked() -> None:
    # Port 1 on this machine: nothing listens there, the connection is refused at once.
    line = _one_error_line(
        _cli("--db", "postgresql+psycopg://me:s3cret@127.0.0.1:1/photos", "info"),
        secret="s3cret",
    )
    assert "cannot connect to library postgresql+psycopg://me:***@127.0.0.1:1/photos" in line


# -- on a server ---------------------------------------------------------------------------------


def test_wrong_credentials_are_one_line(pg_db: str) -> None:
    from sqlalchemy.engine import make_url

    wrong = make_url(pg_db).set(password="not-the-password")
    text = wrong.render_as_string(hide_password=False)
    line = _one_error_line(_cli("--db", text, "similar", "x.jpg"), secret="not-the-password")
    assert "cannot connect" in line and "***" in line


def test_upgrade_and_current_on_a_server(pg_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _cli("--db", pg_db, "db", "current")
    assert before.returncode == 0 and "(empty)" in before.stdout, before.stderr
    assert _cli("--db", pg_db, "db", "upgrade").returncode == 0
    monkeypatch.setenv("FEATX_DB", pg_db)  # $FEATX_DB names a server as --db does
    after = _cli("db", "current")
    assert "up to date" in after.stdout and "***" in after.stdout, after.stderr


def test_a_newer_revision_on_a_server_is_one_line(pg_db: str) -> None:
    import psycopg

    Store.open(pg_db).close()
    with psycopg.connect(libpq_url(pg_db), autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(LibraryVersionError, match="newer featx-search"):
        Library.open(pg_db)
    for command in (["info"], ["db", "current"], ["db", "upgrade"]):
        line = _one_error_line(_cli("--db", pg_db, *command))
        assert "unknown to this featx-search" in line
    with psycopg.connect(libpq_url(pg_db)) as conn:  # refusing changed nothing
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "ffffffffffff",
        )


def test_a_dropped_connection_is_retried_once(
    pg_db: str, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(pg_db).database
    with Library.open(pg_db) as lib:
        lib.index([photos], TINY)
        query = photos / "a" / "img01.jpg"
        assert lib.similar(query, Query(k=1))[0].path == str(query)
        # The server ends every session of the library's pool (a restart, a proxy timeout).
        with psycopg.connect(libpq_url(pg_db), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
        assert ended is not None and ended[0] >= 1
        with caplog.at_level(logging.WARNING, logger="featx_search"):
            assert lib.similar(query, Query(k=1))[0].path == str(query)
            assert lib.info().images == {"indexed": 12}
        assert "lost the connection" in caplog.text and "trying once more" in caplog.text


def test_index_files_live_in_the_cache_keyed_by_the_database(
    pg_db: str, photos: Path, tmp_path: Path
) -> None:
    with Library.open(pg_db) as lib:
        lib.index([photos], TINY)
        folder = lib._store.index_dir
        identity = lib.location.identity()
        assert lib.path == folder / "library"  # what files kept beside a database are named by
        files = [p.name for p in folder.iterdir()]
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "featx-search" / "libraries"
    assert folder.parent == cache and folder.name.startswith(identity + "-")
    assert any(name.endswith(".faiss") for name in files)
    # Another machine (another cache folder) without a copy builds the index from the
    # database, quietly: a missing copy is no fault there.
    elsewhere = tmp_path / "other-machine"
    query = photos / "b" / "img00.png"
    result = _cli("--db", pg_db, "--index-dir", str(elsewhere), "similar", str(query), "-k", "1")
    assert result.returncode == 0 and str(query) in result.stdout, result.stderr
    assert "warning" not in result.stderr
    check = _cli("--db", pg_db, "--index-dir", str(elsewhere), "db", "check")
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr


def test_both_back_ends_answer_alike(pg_db: str, tmp_path: Path, photos: Path) -> None:
    answers = []
    for db in (str(tmp_path / "lib.db"), pg_db):
        with Library.open(db) as lib:
            lib.index([photos], TINY)
            hits = lib.similar(photos / "a" / "img03.png", Query(k=5))
            answers.append([(m.path, round(m.score, 5)) for m in hits])
            answers.append([(g.keeper.path, len(g)) for g in lib.duplicates(0.5)])
    assert answers[0] == answers[2] and answers[1] == answers[3]


def test_a_writer_whose_lock_session_died_commits_nothing(pg_db: str, tmp_path: Path) -> None:
    import psycopg

    store = Store.open(pg_db)
    try:
        with store.writer_lock():
            pid = store._lock_pid
            assert pid is not None
            with psycopg.connect(libpq_url(pg_db), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(LibraryError, match="lost the writer lock"):
                store.root_for(tmp_path / "photos")
        assert store.find_root(tmp_path / "photos")[0] is None  # rolled back
        with store.writer_lock():  # the lock is free again
            assert store.root_for(tmp_path / "photos")[0] >= 1
    finally:
        store.close()
