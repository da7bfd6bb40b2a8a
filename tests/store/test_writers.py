"""Several index runs writing one PostgreSQL library at once: every file embedded once, no
row lost, a published index that agrees with the store, and a killed run's files taken over
by another. Skips without a PostgreSQL server (see tests/conftest.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featx_search import Library, LibraryError, Query
from featx_search.ann.index import VectorIndex
from featx_search.local_index import read_copy
from featx_search.store import Store
from tests.support import libpq_url, make_photo, synthetic_spec

REPO = Path(__file__).resolve().parents[2]
SLOW_ARGS = ["--model", "tests.models:slow_cnn", "--weights", "none", "--precision", "fp32"]


@pytest.fixture
def folders(tmp_path: Path) -> list[Path]:
    """Three folders of 10 photos each."""
    root = tmp_path / "photos"
    for i in range(30):
        make_photo(root / f"s{i % 3}" / f"img{i:03d}.jpg", seed=i)
    return [root / f"s{i}" for i in range(3)]


def _indexer(
    db: str, *args: str | Path, slow: float = 0.1, gate: Path | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "FEATX_TEST_SLOW": str(slow), "FEATX_TEST_GATE": str(gate or "")}
    return subprocess.Popen(
        [sys.executable, "-m", "featx_search", "--db", db, "index", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(db: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(libpq_url(db)) as con:
        found = con.execute(sql).fetchone()
    assert found is not None
    return int(found[0])


def _agrees_with_the_store(db: str) -> None:
    """The published index of the library's one space holds exactly the stored vectors'
    ids, at the space's generation, and this machine's copy of it is that file."""
    with Library.open(db, create=False) as lib:
        store = lib._store
        (record,) = store.spaces()
        manifest = store.manifest(record.id)
        assert manifest is not None and manifest.generation == record.generation
        assert manifest.count == record.count
        copy = read_copy(store, record)
        assert copy is not None and copy.generation == manifest.generation
        index = VectorIndex.load(
            store.index_dir / copy.filename, dim=record.spec.dim, checksum=copy.checksum
        )
        assert np.array_equal(np.sort(index.ids()), store.vector_ids(record.id))
        assert lib.check().ok


def _reports(*procs: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The ``--json`` reports of indexer processes, in order, once each has ended well."""
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    return reports


def test_parallel_runs_on_overlapping_folders_embed_each_file_once(
    pg_db: str, folders: list[Path]
) -> None:
    Store.open(pg_db).close()  # the tables (either run would make them, one of them waits)
    s0, s1, s2 = folders
    common = [*SLOW_ARGS, "--batch-size", "2", "--json"]
    runs = [_indexer(pg_db, s0, s1, *common), _indexer(pg_db, s1, s2, *common)]
    reports = _reports(*runs)
    # A file one run embedded is one the other counts as unchanged (it saw it written).
    assert sum(r["added"] for r in reports) == 30
    assert all(r["added"] + r["unchanged"] == 20 and not r["failed"] for r in reports)
    assert all(r["added"] >= 10 for r in reports)  # s0 and s2 are each one run's alone
    assert _rows(pg_db, "SELECT count(*) FROM images") == 30
    assert _rows(pg_db, "SELECT count(*) FROM vectors") == 30
    assert _rows(pg_db, "SELECT count(*) FROM roots") == 3
    assert _rows(pg_db, "SELECT count(*) FROM claims") == 0
    _agrees_with_the_store(pg_db)
    with Library.open(pg_db, create=False) as lib:
        query = s1 / "img004.jpg"
        assert lib.similar(query, Query(k=1))[0].path == str(query)


def test_runs_overlap_in_time(pg_db: str, folders: list[Path], tmp_path: Path) -> None:
    """The runs really write at once (the test above could be two runs in a row): the
    first is held in its model while the second runs from start to end."""
    Store.open(pg_db).close()
    s0, s1, s2 = folders
    gate = tmp_path / "gate"
    first = _indexer(pg_db, s0, s1, s2, *SLOW_ARGS, "--batch-size", "1", "--json", gate=gate)
    while _rows(pg_db, "SELECT count(*) FROM images") < 2:
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    gate.touch()  # the first run's next batch waits in the model
    second = _indexer(pg_db, s2, s1, *SLOW_ARGS, "--json", slow=0)  # same model, fast
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    second_report = json.loads(out)
    assert first.poll() is None
    gate.unlink()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    first_report = json.loads(out)
    assert first_report["added"] + second_report["added"] == 30
    assert first_report["added"] + first_report["unchanged"] == 30
    # The first run planned all 30 files (in folder order, so it was held in s0); the
    # second wrote s1 and s2 meanwhile, and the first then found them written.
    assert second_report["added"] >= 10 and first_report["unchanged"] >= 10
    assert second_report["added"] + second_report["unchanged"] == 20
    assert _rows(pg_db, "SELECT count(*) FROM vectors") == 30
    _agrees_with_the_store(pg_db)


def test_a_run_waits_for_the_files_a_live_run_holds(
    pg_db: str, folders: list[Path], tmp_path: Path
) -> None:
    Store.open(pg_db).close()
    s1 = folders[1]
    gate = tmp_path / "gate"
    first = _indexer(pg_db, s1, *SLOW_ARGS, "--batch-size", "1", "--json", gate=gate)
    while _rows(pg_db, "SELECT count(*) FROM images") < 1:
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    gate.touch()  # the first run holds its claimed files in its model
    second = _indexer(pg_db, s1, *SLOW_ARGS, "--json", slow=0)
    try:
        while _rows(pg_db, "SELECT count(*) FROM vectors") < 10 - _rows(
            pg_db, "SELECT count(*) FROM claims WHERE claimed_by LIKE '%:" + str(first.pid) + ":%'"
        ):
            assert second.poll() is None, second.communicate()
            time.sleep(0.05)
        time.sleep(1.0)
        assert second.poll() is None  # waiting for the files the first run holds
    finally:
        gate.unlink()
    reports = _reports(first, second)
    assert sum(r["added"] for r in reports) == 10
    assert all(r["added"] + r["unchanged"] == 10 for r in reports)
    assert reports[1]["added"] > 0 and reports[0]["added"] > 0
    assert _rows(pg_db, "SELECT count(*) FROM claims") == 0
    _agrees_with_the_store(pg_db)


def test_a_run_on_a_parent_folder_takes_in_a_running_subfolders_root(
    pg_db: str, folders: list[Path], tmp_path: Path
) -> None:
    """A run on a folder's first run and a run on its parent at once: the parent's run makes
    the parent a root, taking in the subfolder's root while the subfolder's run is held in
    its model; both end well, each file embedded once, stored once under the one root."""
    Store.open(pg_db).close()
    parent = folders[0].parent
    sub = folders[1]
    gate = tmp_path / "gate"
    first = _indexer(pg_db, sub, *SLOW_ARGS, "--batch-size", "1", "--json", gate=gate)
    while _rows(pg_db, "SELECT count(*) FROM images") < 2:
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    gate.touch()  # the first run's next batch waits in the model, its files claimed
    second = _indexer(pg_db, parent, *SLOW_ARGS, "--batch-size", "2", "--json", slow=0)
    try:
        # The second run has made the parent the one root, taking in the first run's.
        while _rows(pg_db, "SELECT count(*) FROM roots WHERE path = '" + str(parent) + "'") < 1:
            assert second.poll() is None, second.communicate()
            time.sleep(0.02)
        assert _rows(pg_db, "SELECT count(*) FROM roots") == 1
        while _rows(pg_db, "SELECT count(*) FROM vectors") < 22:  # s0, s2 and two of s1
            assert second.poll() is None, second.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        assert second.poll() is None  # waiting for the files the first run holds
    finally:
        gate.unlink()
    reports = _reports(first, second)
    sub_report, parent_report = reports
    # Each file embedded once: by one run, and counted unchanged by the other.
    assert sum(r["added"] + r["updated"] for r in reports) == 30
    assert sub_report["added"] + sub_report["unchanged"] == 10 and sub_report["added"] >= 2
    assert parent_report["added"] + parent_report["unchanged"] == 30
    assert parent_report["added"] >= 20 and not any(r["failed"] for r in reports)
    assert _rows(pg_db, "SELECT count(*) FROM images") == 30
    assert _rows(pg_db, "SELECT count(*) FROM vectors") == 30
    assert _rows(pg_db, "SELECT count(*) FROM roots") == 1
    assert _rows(pg_db, "SELECT count(*) FROM claims") == 0
    _agrees_with_the_store(pg_db)
    with Library.open(pg_db, create=False) as lib:
        for query in (sub / "img001.jpg", sub / "img028.jpg", folders[0] / "img000.jpg"):
            assert lib.similar(query, Query(k=1))[0].path == str(query)


def test_a_killed_writer_loses_at_most_its_batch_in_flight(pg_db: str, folders: list[Path]) -> None:
    Store.open(pg_db).close()
    s0, s1, s2 = folders
    victim = _indexer(pg_db, s0, s1, s2, *SLOW_ARGS, "--batch-size", "2")
    while _rows(pg_db, "SELECT count(*) FROM images") < 6:
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    held = _rows(pg_db, "SELECT count(*) FROM claims")
    # At most what it had in flight: two batches decoding, one in the model, one being
    # written, and the rest of the batch it claimed last (batches of two).
    assert 0 < held <= 10
    started = time.monotonic()
    rest = _indexer(pg_db, s0, s1, s2, *SLOW_ARGS, "--json", slow=0)
    out, err = rest.communicate(timeout=300)
    assert rest.returncode == 0, err
    # The killed run's session is gone: its claims are taken at once, not after the lease.
    assert time.monotonic() - started < 60
    report = json.loads(out)
    assert report["added"] + report["unchanged"] == 30 and not report["interrupted"]
    assert _rows(pg_db, "SELECT count(*) FROM vectors") == 30
    assert _rows(pg_db, "SELECT count(*) FROM claims") == 0
    _agrees_with_the_store(pg_db)


def test_a_claim_of_a_live_run_is_left_to_it(pg_db: str, tmp_path: Path) -> None:
    a, b = Store.open(pg_db), Store.open(pg_db)
    try:
        with a.writer_lock(shared=True), b.writer_lock(shared=True):
            root_id, _ = a.root_for(tmp_path)
            space = a.ensure_space(synthetic_spec(4)).id
            files = [(root_id, "x.jpg"), (root_id, "y.jpg")]
            assert set(a.claim(space, files[:1], "run-a")) == {files[0]}
            assert set(b.claim(space, files, "run-b")) == {files[1]}  # x is a's
            assert set(a.claim(space, files[:1], "run-a")) == {files[0]}  # a renews its own
            a.unclaim(space, files[:1], "run-a")
            assert set(b.claim(space, files[:1], "run-b")) == {files[0]}  # free now
            b.release_claims("run-b")
            assert set(a.claim(space, files, "run-a", lease=0.0)) == set(files)
            time.sleep(0.05)
            # A lease that ran out: taken, though its holder's session lives.
            assert set(b.claim(space, files, "run-b")) == set(files)
    finally:
        a.close()
        b.close()


def test_a_root_taken_in_meanwhile_is_written_under_the_outer_root(
    pg_db: str, tmp_path: Path
) -> None:
    """What the run on a subfolder sees when a run on its parent takes its root in: its
    claims moved (the other run cannot take its files), and its later claims, batches,
    moves and unclaims by its old keys land under the outer root."""
    from featx_search.records import FileResult, Move

    a, b = Store.open(pg_db), Store.open(pg_db)
    try:
        with a.writer_lock(shared=True), b.writer_lock(shared=True):
            parent = tmp_path / "photos"
            sub_id, _ = a.root_for(parent / "sub")
            space = a.ensure_space(synthetic_spec(4)).id
            vector = np.ones(4, np.float32) / 2
            a.write_batch(space, [FileResult(sub_id, "w.jpg", 1, 2, vector=vector)])
            mine = [(sub_id, "x.jpg"), (sub_id, "y.jpg")]
            assert set(a.claim(space, mine[:1], "run-a")) == {mine[0]}
            outer_id, _ = b.root_for(parent)
            assert outer_id != sub_id
            assert b.known_files(outer_id, "", space)["sub/w.jpg"].has_vector
            theirs = [(outer_id, "sub/x.jpg"), (outer_id, "sub/y.jpg")]
            # x is a's (its claim moved with its root); y is free, a then finds it b's.
            assert set(b.claim(space, theirs, "run-b")) == {theirs[1]}
            assert set(a.claim(space, mine, "run-a")) == {mine[0]}
            b.unclaim(space, theirs[1:], "run-b")
            got = a.claim(space, mine, "run-a")
            assert set(got) == set(mine) and got[mine[0]] is None  # asked keys, no row yet
            added, _ = a.write_batch(
                space, [FileResult(sub_id, "x.jpg", 3, 4, vector=vector)], claimed_by="run-a"
            )
            a.move([Move(added[0], sub_id, "moved.jpg", 3, 4)])
            a.unclaim(space, mine[1:], "run-a")
            known = b.known_files(outer_id, "", space)
            assert sorted(known) == ["sub/moved.jpg", "sub/w.jpg"]
            assert known["sub/moved.jpg"].id == added[0]
            assert _rows(pg_db, "SELECT count(*) FROM claims") == 0
            assert _rows(pg_db, "SELECT count(*) FROM roots") == 1
    finally:
        a.close()
        b.close()


def test_a_batch_that_collides_with_another_writers_is_written_again(
    pg_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs of two spaces add the same new file at once: the later insert meets the row
    the other committed meanwhile, and its batch is written again, as an update."""
    from sqlalchemy import insert

    from featx_search.records import FileResult
    from featx_search.schema import images

    caplog.set_level(logging.INFO, logger="featx_search")
    a, b = Store.open(pg_db), Store.open(pg_db)
    try:
        root_id, _ = a.root_for(tmp_path)
        space = b.ensure_space(synthetic_spec(4)).id
        result = FileResult(root_id, "x.jpg", 10, 20, vector=np.ones(4, np.float32) / 2)
        written: list[tuple[list[int], list[int]]] = []
        with a.engine.connect() as conn, conn.begin():
            conn.execute(
                insert(images).values(
                    root_id=root_id, relpath="x.jpg", size=10, mtime_ns=20, status="failed"
                )
            )
            writer = threading.Thread(target=lambda: written.append(b.write_batch(space, [result])))
            writer.start()
            time.sleep(0.5)  # b's insert waits for this transaction, then collides
        writer.join(timeout=30)
        assert len(written) == 1 and "collided" in caplog.text
        assert _rows(pg_db, "SELECT count(*) FROM images") == 1
        assert _rows(pg_db, "SELECT count(*) FROM vectors") == 1
    finally:
        a.close()
        b.close()


def test_sqlite_keeps_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featx_search.store as store_module

    monkeypatch.setattr(store_module, "WRITER_WAIT_SECONDS", 0.2)
    store, other = Store.open(tmp_path / "lib.db"), Store.open(tmp_path / "lib.db")
    try:
        # ``shared`` means nothing for a file: its lock is exclusive.
        with (
            store.writer_lock(shared=True),
            pytest.raises(LibraryError, match="another indexer is running"),
            other.writer_lock(shared=True),
        ):
            pass
    finally:
        store.close()
        other.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--overlap"]], ids=["same-folder", "overlap"])
def test_killed_writers_among_several_converge_to_a_clean_run(
    pg_db: str, folders: list[Path], mode: list[str]
) -> None:
    """scripts/crash_test.py with three indexers at once per round, one killed at random,
    on one folder or (``--overlap``) on a folder and its parent (minutes: run with -m slow)."""
    result = subprocess.run(
        [
            sys.executable,
            "scripts/crash_test.py",
            str(folders[0].parent),
            "--rounds",
            "3",
            "--writers",
            "3",
            *mode,
            "--db",
            pg_db,
            "--",
            *SLOW_ARGS,
            "--batch-size",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FEATX_TEST_SLOW": "0.02"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the final library equals a clean run" in result.stdout
