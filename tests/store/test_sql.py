"""The reads compiled for SQLite (featx_search/sql_sqlite.py) follow queries.py and schema.py."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from featx_search import queries, schema, sql_sqlite
from tests.support import load_script

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    return load_script("gen_sql")


def test_sql_sqlite_is_generated_from_the_current_queries_and_schema() -> None:
    text = (ROOT / "featx_search" / "sql_sqlite.py").read_text(encoding="utf-8")
    assert text == _generator().render(), (
        "featx_search/sql_sqlite.py is stale: run .venv/bin/python scripts/gen_sql.py"
    )
    assert sql_sqlite.HEAD_REVISION == schema.HEAD_REVISION
    assert list(sql_sqlite.STATEMENTS) == list(queries.STATEMENTS)


def test_gen_sql_check_fails_on_a_stale_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _generator()
    target = tmp_path / "sql_sqlite.py"
    assert gen.main(["--output", str(target)]) == 0
    assert gen.main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8").replace("images.relpath", "relpath"))
    assert gen.main(["--check", "--output", str(target)]) == 1
    assert "stale" in capsys.readouterr().err


def test_a_type_without_a_known_conversion_is_refused() -> None:
    from sqlalchemy import Numeric
    from sqlalchemy.dialects import sqlite

    gen = _generator()
    assert gen.conversion(schema.FsPath(), sqlite.dialect()) == "fspath"
    with pytest.raises(SystemExit, match="no sqlite3 conversion"):
        gen.conversion(Numeric(), sqlite.dialect())
