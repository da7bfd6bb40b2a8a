"""scripts/bench_store.py runs end to end on a few hundred random vectors (no model), on SQLite
alone and, with a server, on both back ends side by side (no timing assertions)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports synthetic_library beside it
    for name in ("FEATX_BENCH_PG_URL", "FEATX_TEST_PG_URL"):
        monkeypatch.delenv(name, raising=False)
    return load_script("bench_store")


def _table(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and "---" not in line
    ]


def test_sqlite_alone(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--n", "250", "--random", "16"])
    out = capsys.readouterr().out
    assert "250 images of 16 dims; lscpu" in out
    rows = _table(out)
    assert rows[0] == ["250 images", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"]
    assert len(rows) == 8 and all(row[2] == "-" for row in rows[1:])
    assert float(rows[1][1].replace(",", "")) > 0  # images/s written
    assert "no PostgreSQL server given" in out


def test_both_back_ends(
    bench: ModuleType, pg_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(os.environ)
    bench.main(["--n", "250", "--random", "16", "--pg", pg_server])
    out = capsys.readouterr().out
    rows = _table(out)
    assert len(rows) == 8
    for label, lite, pg, _ratio in rows[1:]:
        assert float(lite.replace(",", "")) >= 0 and float(pg.replace(",", "")) >= 0, label
    assert float(rows[1][3]) > 0  # writes: the ratio of two measured rates
    assert "PostgreSQL writes at least half as fast as SQLite:" in out
    assert "similar under 1 s on both:" in out
    assert set(os.environ) == before  # XDG_CACHE_HOME put back
