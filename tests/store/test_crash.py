"""Crash safety: damaged index files, interrupted runs, a killed indexer, concurrent readers."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library, LibraryError, Query
from featx_search.ann.index import VectorIndex
from tests.support import TINY, TINY_ARGS, is_server, libpq_url, make_photo


def test_forged_length_in_index_file_is_refused_not_allocated(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    path = tmp_path / "x.faiss"
    VectorIndex.build(8, np.arange(10), vectors).save(path)
    data = bytearray(path.read_bytes())
    # The flat codes are stored as a 64-bit count of floats followed by the raw vectors.
    start = bytes(data).find(vectors.tobytes())
    assert struct.unpack("<Q", data[start - 8 : start]) == (vectors.size,)
    data[start - 8 : start] = struct.pack("<Q", 1 << 29)  # claims 2 GiB
    path.write_bytes(data)
    checksum = hashlib.sha256(data).hexdigest()  # even with a matching manifest checksum
    with pytest.raises(LibraryError, match="deserialization_vector_byte_limit"):
        VectorIndex.load(path, dim=8, checksum=checksum)


REPO = Path(__file__).resolve().parents[2]
CRASH_ARGS = [*TINY_ARGS, "--batch-size", "2"]


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """40 small photos in three folders, plus one bad file."""
    root = tmp_path / "many"
    for i in range(40):
        make_photo(root / f"s{i % 3}" / f"img{i:03d}.jpg", seed=i)
    (root / "bad.jpg").write_text("not an image")
    return root


def _indexer(db: str | Path, photos: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featx_search", "--db", str(db), "index", str(photos), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(db: str, proc: subprocess.Popen[str], rows: int) -> None:
    if is_server(db):
        _wait_for_server_rows(db, proc, rows)
        return
    while proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                if con.execute("SELECT count(*) FROM images").fetchone()[0] >= rows:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.01)


def _wait_for_server_rows(db: str, proc: subprocess.Popen[str], rows: int) -> None:
    import psycopg

    while proc.poll() is None:
        try:
            with psycopg.connect(libpq_url(db)) as con:
                found = con.execute("SELECT count(*) FROM images").fetchone()
                if found is not None and found[0] >= rows:
                    return
        except psycopg.Error:
            pass
        time.sleep(0.01)


def _crash_loop(
    photos: Path, rounds: int, timeout: int, db: str | None = None
) -> subprocess.CompletedProcess[str]:
    script = ["scripts/crash_test.py", str(photos), "--rounds", str(rounds)]
    if db is not None:
        script += ["--db", db]
    return subprocess.run(
        [sys.executable, *script, "--", *CRASH_ARGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_killed_indexer_loop_converges_to_a_clean_run(many: Path, library_db: str) -> None:
    db = library_db if is_server(library_db) else None
    result = _crash_loop(many, rounds=3, timeout=600, db=db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the final library equals a clean run" in result.stdout


@pytest.mark.slow
def test_killed_indexer_many_times(many: Path) -> None:
    result = _crash_loop(many, rounds=25, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ctrl_c_saves_the_batch_and_says_how_to_resume(many: Path, library_db: str) -> None:
    db = library_db
    proc = _indexer(db, many, *CRASH_ARGS)
    _wait_for_rows(db, proc, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "again to resume" in err and "Traceback" not in err
    with Library.open(db, create=False) as lib:
        assert lib.check().ok
        saved = lib.spaces()[0].count
    assert 1 <= saved < 40  # the first batch (2 files) may hold the bad file
    rest = subprocess.run(
        [sys.executable, "-m", "featx_search", "--db", db, "index", str(many), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = json.loads(rest.stdout)
    assert summary["added"] + summary["unchanged"] + summary["failed"] == 41
    assert summary["unchanged"] >= saved and not summary["interrupted"]
    with Library.open(db, create=False) as lib:
        assert lib.spaces()[0].count == 40 and len(lib.failures()) == 1


def test_searches_run_while_indexing(many: Path, library_db: str, tmp_path: Path) -> None:
    db = library_db
    first = tmp_path / "first"
    for i in range(6):
        make_photo(first / f"f{i}.jpg", seed=100 + i)
    with Library.open(db) as lib:
        lib.index([first], TINY)
    proc = _indexer(db, many, "--space", "1", "--batch-size", "2")
    seen_counts: set[int] = set()
    with Library.open(db, create=False) as lib:
        while proc.poll() is None:
            hits = lib.similar(first / "f0.jpg", Query(k=50))
            assert hits[0].path == str(first / "f0.jpg")
            scores = [m.score for m in hits]
            assert scores == sorted(scores, reverse=True)
            assert len({m.image_id for m in hits}) == len(hits)
            assert all(Path(m.path).exists() for m in hits)
            seen_counts.add(len(hits))
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert len(seen_counts) >= 2, seen_counts  # the library grew while we searched
