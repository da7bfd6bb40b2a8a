"""The command line through click's CliRunner: output formats, --db handling, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from featx_search import Library
from tests.support import TINY, TINY_ARGS
from tests.support import run_cli as run


def test_index_json_summary(db: Path, photos: Path) -> None:
    out = run("index", photos, *TINY_ARGS, "--json", "--db", db).stdout
    summary = json.loads(out)
    assert {k: summary[k] for k in ("added", "updated", "unchanged", "failed", "removed")} == {
        "added": 12,
        "updated": 0,
        "unchanged": 0,
        "failed": 0,
        "removed": 0,
    }
    # The embedding phase is timed apart from start-up (model load) for an img/s rate.
    assert 0 < summary["embed_seconds"] < summary["seconds"]
    again = json.loads(run("index", photos, "--json", "--db", db).stdout)
    assert again["unchanged"] == 12 and again["space"] == summary["space"]
    assert again["embed_seconds"] == 0  # nothing to embed: no model, no pipeline


def test_index_text_summary_lists_failures(db: Path, photos: Path) -> None:
    (photos / "fake.jpg").write_text("hello")
    result = run("--db", db, "index", photos, *TINY_ARGS)
    assert "indexed 12 (added 12, updated 0), moved 0, unchanged 0, failed 1" in result.output
    assert re.search(r" in [0-9.]+ s \([0-9.]+ img/s while embedding\); space ", result.output)
    assert "fake.jpg" in result.output
    failed = run("--db", db, "info", "--failed").stdout
    assert str(photos / "fake.jpg") in failed and "cannot decode" in failed


def test_search_json_lines(indexed: Path, photos: Path) -> None:
    queries = [photos / "a" / "img01.jpg", photos / "b" / "img00.png"]
    out = run("--db", indexed, "search", *queries, "-k", "4", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8
    for q in queries:
        mine = [r for r in rows if r["query"] == str(q)]
        assert [r["rank"] for r in mine] == [1, 2, 3, 4]
        assert mine[0]["path"] == str(q) and mine[0]["score"] >= 0.999
        assert all(set(r) >= {"query", "rank", "score", "path", "image_id"} for r in mine)
        assert [r["score"] for r in mine] == sorted((r["score"] for r in mine), reverse=True)


def test_search_table(indexed: Path, photos: Path) -> None:
    query = photos / "a" / "img05.jpg"
    out = run("--db", indexed, "search", query, "-k", "2").stdout.splitlines()
    assert out[0] == f"query: {query}"
    rank, score, path = out[1].split()
    assert (rank, path) == ("1", str(query)) and float(score) >= 0.999
    assert len(out) == 3


def test_db_option_env_and_precedence(tmp_path: Path, photos: Path) -> None:
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    run("index", photos / "a", *TINY_ARGS, env={"FEATX_DB": str(env_db)})
    assert json.loads(run("info", "--json", env={"FEATX_DB": str(env_db)}).stdout)["images"] == {
        "indexed": 6
    }
    # --db on the group or on the command beats the variable; the command's beats the group's.
    run("--db", flag_db, "index", photos / "b", *TINY_ARGS, env={"FEATX_DB": str(env_db)})
    info = json.loads(run("info", "--json", "--db", flag_db, env={"FEATX_DB": str(env_db)}).stdout)
    assert info["images"] == {"indexed": 6} and info["path"] == str(flag_db)
    other = tmp_path / "other.db"
    result = run("--db", flag_db, "info", "--json", "--db", other, ok=False)
    assert f"no library at {other}" in result.output


def test_info_json_and_text(indexed: Path) -> None:
    info = json.loads(run("--db", indexed, "info", "--json").stdout)
    (space,) = info["spaces"]
    assert space["count"] == 12 and space["index_current"] and space["model"] == TINY.model
    text = run("--db", indexed, "info").stdout
    assert space["fingerprint"] in text and "vectors=12" in text and "index=current" in text
    assert info["indexing"] is None and "indexing" not in text


def test_info_shows_a_running_index(indexed: Path) -> None:
    from featx_search.activity import ActivityFile
    from featx_search.options import Progress

    with ActivityFile(indexed) as activity:
        activity.wrap(None)(Progress(5, 40))
        text = run("--db", indexed, "info").stdout
        running = json.loads(run("--db", indexed, "info", "--json").stdout)["indexing"]
    assert "indexing: embedding, 5 of 40 images" in text
    assert (running["done"], running["total"]) == (5, 40)


def test_layers_marks_the_default() -> None:
    result = run("layers", TINY.model, "--weights", "none")
    lines = result.stdout.splitlines()
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1:5] == ["4", "1x32x1x1", "32", "1x1"]
    rows = [
        json.loads(x) for x in run("layers", TINY.model, "-w", "none", "--json").stdout.splitlines()
    ]
    assert [r["name"] for r in rows if r["default"]] == ["4"]
    first = {"name": "1", "shape": [1, 16, 112, 112], "default": False, "channels": 16}
    assert any(first.items() <= row.items() for row in rows)
    assert rows[-1]["name"] == "6" and rows[-1]["cost"] == pytest.approx(1.0)


def test_db_current_and_upgrade(db: Path) -> None:
    result = run("db", "current", "--db", db, ok=False)
    assert result.exit_code == 1 and "no library at" in result.output
    assert not db.exists()
    db.parent.mkdir(parents=True)
    db.touch()  # an empty SQLite database: no schema yet
    out = run("db", "current", "--db", db).stdout
    assert "(empty)" in out and "behind head" in out
    out = run("--db", db, "db", "upgrade").stdout
    assert "up to date" in out
    assert "up to date" in run("db", "current", "--db", db).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["index", "{photos}", "--model", "resnet18", "--weights", "none", "--layer", "layer9"],
            "featx-search layers resnet18",
        ),
        (["index", "{photos}", "--model", "resnt18", "--weights", "none"], "did you mean resnet18"),
        (["search", "{photos}/a/img01.jpg"], "no library at"),
        (
            ["index", "{photos}", "--model", "resnet18", "--weights", "/no/such.pth"],
            "weights file not found",
        ),
    ],
)
def test_errors_are_one_clean_message(
    db: Path, photos: Path, args: list[str], message: str
) -> None:
    result = run("--db", db, *[a.format(photos=photos) for a in args], ok=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output


def test_ambiguous_space_lists_spaces(indexed: Path, photos: Path) -> None:
    run("--db", indexed, "index", photos, *TINY_ARGS, "--layer", "3", "--pool", "gem")
    result = run("--db", indexed, "search", photos / "a" / "img01.jpg", ok=False)
    assert result.exit_code == 1 and "choose one with --space" in result.output
    with Library.open(indexed) as lib:
        fingerprints = [s.fingerprint for s in lib.spaces()]
    assert all(fp in result.output for fp in fingerprints)
    out = run(
        "--db",
        indexed,
        "search",
        photos / "a" / "img01.jpg",
        "--space",
        fingerprints[1][:6],
        "--json",
        "-k",
        "1",
    ).stdout
    assert json.loads(out)["path"] == str(photos / "a" / "img01.jpg")


def test_info_imports_neither_torch_nor_sqlalchemy(indexed: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from featx_search.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['--db', {str(indexed)!r}, 'info', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'faiss', 'sqlalchemy', 'alembic')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["info"], ["search", "x.jpg"], ["db", "upgrade"]])
def test_reading_commands_do_not_create_a_library(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo" / "lib.db"
    result = run("--db", missing, *command, ok=False)
    assert result.exit_code == 1 and f"no library at {missing}" in result.output
    assert not missing.parent.exists()


def test_unchanged_rerun_does_not_load_the_model(indexed: Path, photos: Path) -> None:
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from featx_search.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['--db', {str(indexed)!r}, 'index', {str(photos)!r},"
        " '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.loads(r.stdout)['unchanged'], 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12", "False"]


def test_similar_needs_neither_torch_nor_sqlalchemy(indexed: Path, photos: Path) -> None:
    target = photos / "a" / "img05.jpg"
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from featx_search.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['--db', {str(indexed)!r}, 'similar', {str(target)!r},"
        " '-k', '3', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "rows = [json.loads(x) for x in r.stdout.splitlines()]\n"
        "print(rows[0]['path'], len(rows), 'torch' in sys.modules,"
        " 'sqlalchemy' in sys.modules or 'alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Neither the model stack nor SQLAlchemy or Alembic (sqlite3 runs the compiled reads):
    # `similar` must answer in well under a second.
    assert out.stdout.split() == [str(target), "3", "False", "False"]


def test_cold_similar_imports_neither_sqlalchemy_nor_alembic_nor_torch(
    indexed: Path, photos: Path
) -> None:
    """The real command in a fresh process (``python -m featx_search``), its imports listed
    by ``-X importtime``: a query reads the library with sqlite3 alone."""
    target = photos / "a" / "img05.jpg"
    args = ["--db", str(indexed), "similar", str(target), "-k", "3", "--json"]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "featx_search", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[0])["path"] == str(target)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert {"featx_search.reader", "featx_search.sql_sqlite", "sqlite3"} <= imported
    heavy = {name for name in imported if name.split(".")[0] in {"sqlalchemy", "alembic", "torch"}}
    assert heavy == set()


def test_option_groups_build_the_typed_values() -> None:
    import click

    from featx_search.cli import index_options, options
    from featx_search.cli.output import ListingOutput
    from featx_search.config import ExtractorSpec
    from featx_search.options import Query, SyncOptions

    seen: dict[str, object] = {}

    @click.command()
    @index_options.builds_sync_options
    @index_options.spec_options
    @options.query_options("where")
    @index_options.batch_size_option
    @index_options.micro_batch_option
    @index_options.workers_option
    @index_options.threads_option
    @index_options.device_option
    @index_options.precision_option
    @index_options.graph_options
    @index_options.retry_failed_option
    @index_options.prune_empty_option
    @options.output_options
    def probe(**values: object) -> None:
        seen.update(values)

    args = ["-k", "3", "--glob", "*.jpg", "--after", "2020-05", "--nprobe", "7", "--space", "12"]
    args += ["--layer", "3", "--precision", "bf16", "--batch-size", "5", "--threads", "2"]
    args += ["--no-channels-last", "--retry-failed", "--csv", "--html", "r.html"]
    result = CliRunner().invoke(probe, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert set(seen) == {"query", "space", "spec", "options", "out"}
    query, spec, sync = seen["query"], seen["spec"], seen["options"]
    assert isinstance(query, Query) and isinstance(sync, SyncOptions)
    assert (query.k, query.filters.glob, query.params.nprobe) == (3, "*.jpg", 7)
    assert query.filters.after is not None and query.filters.after.month == 5
    assert seen["space"] == 12  # digits select a space by id
    assert isinstance(spec, ExtractorSpec) and (spec.layers, spec.precision) == (("3",), "bf16")
    assert (sync.batch_size, sync.retry_failed, sync.compute.threads) == (5, True, 2)
    assert sync.compute.channels_last is False
    out = seen["out"]
    assert isinstance(out, ListingOutput) and (out.fmt, out.html_file) == ("csv", Path("r.html"))
    # Without any model flag the library's space is kept.
    assert CliRunner().invoke(probe, []).exit_code == 0 and seen["spec"] is None
