"""`db copy`: a library copied between back ends keeps every row and id, its vectors' checksum
and its answers, and a copy never lands in a library. The PostgreSQL half skips without a
server (see tests/conftest.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from featx_search import (
    CopyReport,
    Library,
    LibraryError,
    Query,
    SearchParams,
    copy_library,
    transfer,
)
from featx_search.options import Progress
from featx_search.schema import dup_decisions, index_manifest
from featx_search.store import Store
from tests.support import run_cli


@pytest.fixture
def source(indexed: Path) -> Path:
    """The indexed library with everything a library can hold: a decision about duplicates,
    a whitening transform, fixed search settings."""
    with Library.open(indexed) as lib:
        ids = sorted(int(i) for i in lib.space().vectors()[1])
        lib.decide(ids[:3], "keep", keep=ids[1])
        lib.decide(ids[3:5], "distinct")
        lib.space().whiten(4)
        lib.space().configure_index(None, params=SearchParams(nprobe=2))
    return indexed


def _utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    return bytes(value) if isinstance(value, memoryview) else value


def rows(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every copied table, in primary-key order (instants as aware UTC)."""
    store = Store.open(db)
    try:
        with store.engine.connect() as conn:
            return {
                table.name: [
                    tuple(_utc(v) for v in row)
                    for row in conn.execute(
                        select(table).order_by(*table.primary_key.columns)
                    ).all()
                ]
                for table in transfer.COPIED
            }
    finally:
        store.close()


def answers(db: str | Path) -> list[list[tuple[int, float]]]:
    with Library.open(db) as lib:
        ids = sorted(int(i) for i in lib.space().vectors()[1])
        found = lib.similar(ids, Query(k=5))
    return [[(m.image_id, round(m.score, 5)) for m in matches] for matches in found]


def _checked(report: CopyReport) -> None:
    assert report.ok
    assert {t.table for t in report.tables} == {t.name for t in transfer.COPIED}
    assert [c.count for c in report.checksums] == [12]
    assert report.checksums[0].source == report.checksums[0].destination
    assert len(report.rebuilt) == 1 and report.rebuilt[0].count == 12


def test_copy_keeps_every_row_id_and_answer(source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy" / "photos.db"
    seen: list[Progress] = []
    report = copy_library(source, copy, seen.append, chunk=2)  # the chunked path, many chunks
    _checked(report)
    assert report.rows == sum(len(r) for r in rows(source).values())
    assert rows(copy) == rows(source)
    assert answers(copy) == answers(source)
    # every chunk reported, totals right, tables in order
    assert len(seen) > 12 and seen[-1].done == seen[-1].total == report.rows
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    # the copy's index was rebuilt here, not copied: its manifest is its own, current one
    with Library.open(copy) as lib:
        info = lib.info()
    assert info.spaces[0].index_current and info.spaces[0].whitened


def test_copy_to_postgres_and_back(source: Path, pg_db: str, tmp_path: Path) -> None:
    before = rows(source)
    _checked(copy_library(source, pg_db, chunk=3))
    assert rows(pg_db) == before
    back = tmp_path / "back.db"
    _checked(copy_library(pg_db, back))
    assert rows(back) == before
    expected = answers(source)
    assert answers(pg_db) == expected and answers(back) == expected
    # the server's ids go on past the copied ones
    with Library.open(pg_db) as lib:
        ids = sorted(int(i) for i in lib.space().vectors()[1])
        new = lib.decide(ids[6:8], "distinct").id
    assert new > max(row[0] for row in before[dup_decisions.name])


def test_a_destination_holding_a_library_is_refused(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    copy_library(source, target)
    before = rows(target)
    with pytest.raises(LibraryError, match=r"already holds a library \(12 images, 1 spaces\)"):
        copy_library(source, target)
    assert rows(target) == before


def test_refusals_are_one_line_naming_the_argument(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    result = run_cli("db", "copy", source, target)
    assert "space 1: 12 vectors, sha256" in result.output and "equal" in result.output
    again = run_cli("db", "copy", source, target, ok=False)
    assert again.exit_code == 1
    assert "already holds a library" in again.output and "Hint:" in again.output
    bad = run_cli("db", "copy", "mysql://me@host/photos", target, ok=False)
    assert bad.exit_code == 2 and "'SRC'" in bad.output
    missing = run_cli("db", "copy", tmp_path / "none.db", tmp_path / "x.db", ok=False)
    assert "no library at" in missing.output and not (tmp_path / "x.db").exists()
    same = run_cli("db", "copy", source, source, ok=False)
    assert "the same library" in same.output


def test_a_copy_that_differs_is_an_error_and_leaves_no_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = transfer._chunks

    def lossy(conn: Any, table: Any, chunk: int) -> Any:
        for part in chunks(conn, table, chunk):
            yield part[:-1] if table.name == "vectors" else part

    monkeypatch.setattr(transfer, "_chunks", lossy)
    target = tmp_path / "copy.db"
    with pytest.raises(transfer.CopyMismatch, match="differs") as caught:
        copy_library(source, target)
    report = caught.value.report
    assert not report.ok
    assert [(t.source, t.destination) for t in report.tables if not t.ok] == [(12, 11)]
    assert not report.checksums[0].ok
    assert not list(tmp_path.glob("copy.db*"))  # nor its lock, nor its index folder


def test_the_index_manifest_is_not_copied(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    copy_library(source, target)
    store = Store.open(target)
    try:
        with store.engine.connect() as conn:
            (filename,) = conn.execute(select(index_manifest.c.filename)).scalars()
        assert (store.index_dir / filename).is_file()
    finally:
        store.close()
