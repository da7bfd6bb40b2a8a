"""A server library searched from several machines: each keeps its own index file (here two
``--index-dir`` folders stand for two machines), built from the database once, saved with a
local record, reused, caught up when the database moves on, rebuilt when damaged. Skips
without a PostgreSQL server (see tests/conftest.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from featx_search import Library, Query, local_index
from tests.support import TINY, make_photo


def _answers(lib: Library, query: Path) -> list[tuple[str, float]]:
    return [(m.path, round(m.score, 5)) for m in lib.similar(query, Query(k=8))]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The generations of this machine's copies built from the database, in order."""
    seen: list[int] = []
    build = local_index._build

    def counted(*args: Any) -> Any:
        index, generation = build(*args)
        seen.append(generation)
        return index, generation

    monkeypatch.setattr(local_index, "_build", counted)
    return seen


def _record(folder: Path) -> dict[str, Any]:
    (found,) = folder.glob("*.local.json")
    data: dict[str, Any] = json.loads(found.read_text())
    return data


def test_a_second_machine_builds_saves_reuses_and_catches_up(
    pg_db: str, photos: Path, tmp_path: Path, builds: list[int]
) -> None:
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    query = photos / "a" / "img03.png"
    with Library.open(pg_db, index_dir=a) as lib:
        lib.index([photos], TINY)
        on_a = _answers(lib, query)
        generation = lib.space().generation
    assert builds == []  # the indexer's own file is this machine's copy
    assert _record(a)["generation"] == generation

    with Library.open(pg_db, index_dir=b) as lib:
        assert _answers(lib, query) == on_a
    assert builds == [generation]  # built once from the stored vectors, then saved
    saved = _record(b)
    assert saved["generation"] == generation and saved["count"] == 12
    assert (b / saved["filename"]).is_file()

    with Library.open(pg_db, index_dir=b) as lib:  # a new process on machine B
        assert _answers(lib, query) == on_a
    assert builds == [generation]  # opened, not rebuilt

    more = tmp_path / "more"
    for i in range(4):
        make_photo(more / f"m{i}.jpg", seed=500 + i)
    with Library.open(pg_db, index_dir=b) as searcher:
        assert _answers(searcher, query) == on_a
        with Library.open(pg_db, index_dir=a) as indexer:
            indexer.index([more])
            newer = indexer.space().generation
            on_a = _answers(indexer, more / "m1.jpg")
        assert newer > generation
        # The long-running searcher on B sees the newer generation and catches up.
        assert _answers(searcher, more / "m1.jpg") == on_a
        assert on_a[0][0] == str(more / "m1.jpg")
    assert builds == [generation, newer]
    assert _record(b)["generation"] == newer
    assert sorted(p.name for p in b.glob("*.faiss")) == [_record(b)["filename"]]


def test_a_damaged_copy_is_rebuilt_not_trusted(
    pg_db: str, photos: Path, tmp_path: Path, builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    query = photos / "b" / "img04.jpg"
    with Library.open(pg_db, index_dir=a) as lib:
        lib.index([photos], TINY)
        expected = _answers(lib, query)
    with Library.open(pg_db, index_dir=b) as lib:
        lib.similar(query)
    saved = _record(b)
    path = b / saved["filename"]
    data = bytearray(path.read_bytes())
    data[-40:-8] = bytes(32)  # same size, other bytes: only the checksum tells
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING), Library.open(pg_db, index_dir=b) as lib:
        assert _answers(lib, query) == expected
    assert "checksum" in caplog.text
    assert len(builds) == 2
    assert path.read_bytes() != data  # replaced by the rebuilt file
    with Library.open(pg_db, index_dir=b) as lib:
        assert lib.check().ok

    path.unlink()  # a missing file: built again, quietly
    caplog.clear()
    with caplog.at_level(logging.WARNING), Library.open(pg_db, index_dir=b) as lib:
        assert _answers(lib, query) == expected
    assert len(builds) == 3 and "warning" not in caplog.text.lower()


def test_processes_of_one_machine_build_its_copy_once(
    pg_db: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    with Library.open(pg_db, index_dir=a) as lib:
        lib.index([photos], TINY)
    build = local_index._build
    calls: list[int] = []

    def slow(*args: Any) -> Any:
        calls.append(1)
        time.sleep(0.5)  # long enough for the other to reach the folder lock
        return build(*args)

    monkeypatch.setattr(local_index, "_build", slow)
    results: list[list[tuple[str, float]]] = []

    def search() -> None:
        # Each its own library (connections, caches): as two processes of machine B.
        with Library.open(pg_db, index_dir=b) as lib:
            results.append(_answers(lib, photos / "a" / "img01.jpg"))

    threads = [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1


def test_sqlite_keeps_its_index_files_beside_the_database(db: Path, photos: Path) -> None:
    with Library.open(db) as lib:
        lib.index([photos], TINY)
    folder = db.with_name(db.name + ".indexes")
    assert list(folder.glob("*.faiss")) and not list(folder.glob("*.local.json"))
