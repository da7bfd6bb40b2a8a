"""Packaging and public surface: the wheel works on its own, ``--help`` stays light, every
command has help, and ``__all__`` is sorted and complete (tests/test_docs.py checks that each
public name is documented in docs/python-api.md)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import featx_search
from featx_search.cli import cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "faiss", "ray", "pyarrow")
# Never copied into the build: local state that is not source (and can be large).
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "demo-data",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "*.db",
    "*.db-*",
    "*.indexes",
)


def _run(
    args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


# -- (a) the built wheel ------------------------------------------------------------------

_WHEEL_CHECK = """
import importlib.metadata, json, sys
from pathlib import Path

import featx_search
import featx_search.migrations
from featx_search import Library, schema_status

db = Path(sys.argv[1])
with Library.open(db):
    pass
status = schema_status(db)
print(json.dumps({
    "package": featx_search.__file__,
    "migrations": featx_search.migrations.__file__,
    "current": status.current,
    "head": status.head,
    "version": featx_search.__version__,
    "dist_version": importlib.metadata.version("featx-search"),
}))
"""


def test_wheel_installs_and_creates_a_library_at_head(tmp_path: Path) -> None:
    # Build from a copy so the build leaves nothing in the checkout, and no stale build/lib
    # from an earlier build can slip into the wheel.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    wheelhouse, target = tmp_path / "wheelhouse", tmp_path / "target"
    built = _run(
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheelhouse), str(src))
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheelhouse.glob("featx_search-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert all(n.split("/")[0].startswith("featx_search") for n in names), names
    # Every subpackage is listed in pyproject.toml (the console script lives in one).
    packages = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "featx_search").rglob("__init__.py")
    }
    assert packages <= set(names), sorted(packages - set(names))
    shipped = {Path(n).name for n in names if n.startswith("featx_search/migrations/versions/")}
    in_repo = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert in_repo <= shipped
    assert "featx_search/migrations/script.py.mako" in names

    installed = _run(_pip("install", "--no-deps", "--target", str(target), str(wheel)))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # PYTHONPATH puts the wheel's copy ahead of site-packages, where the editable install's
    # finder (appended to sys.meta_path) only answers for what the path does not hold.
    # cwd is tmp_path so that the checkout is not on sys.path either.
    env = {**os.environ, "PYTHONPATH": str(target)}
    checked = _run(
        [sys.executable, "-c", _WHEEL_CHECK, str(tmp_path / "x.db")], cwd=tmp_path, env=env
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(target), result
    assert Path(result["migrations"]).is_relative_to(target / "featx_search"), result
    assert result["current"] is not None and result["current"] == result["head"], result
    assert result["version"] == result["dist_version"], result


# -- (b) --help does not import the heavy libraries ------------------------------------------


def test_module_help_imports_no_heavy_library() -> None:
    # -X importtime lists every module the process imports, on stderr.
    done = _run([sys.executable, "-X", "importtime", "-m", "featx_search", "--help"], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "featx_search.cli" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, heavy


_CLI_CHECK = """
import json, sys

import click
from click.testing import CliRunner

import featx_search.cli

def walk(cmd, path=()):
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, (*path, name))

codes = {
    " ".join(path): CliRunner().invoke(featx_search.cli.cli, [*path, "--help"]).exit_code
    for path in walk(featx_search.cli.cli)
}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1:])
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_cli_import_and_every_help_import_no_heavy_library() -> None:
    done = _run([sys.executable, "-c", _CLI_CHECK, *HEAVY], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["codes"].values()) == {0}, result["codes"]
    assert "db upgrade" in result["codes"]
    assert result["heavy"] == []


# -- (c) every command has help --------------------------------------------------------------


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


COMMANDS = list(_commands(cli))


def test_command_tree_is_complete() -> None:
    assert {"index", "search", "info", "layers", "db", "db current", "db upgrade"} <= {
        " ".join(p) for p in COMMANDS
    }


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "featx-search")
def test_command_has_help(path: tuple[str, ...]) -> None:
    cmd = _command(path)
    assert cmd.help and cmd.help.strip(), f"{' '.join(path)} has no help text"
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(cli, [*path, flag])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("Usage:"), result.output
        # Compare words, not lines: click rewraps the help text.
        assert " ".join(cmd.help.split("\n\n")[0].split()) in " ".join(result.output.split())
    if isinstance(cmd, click.Group):
        for name in cmd.commands:
            assert name in result.output


# -- (d) __all__ -----------------------------------------------------------------------------


def test_all_is_sorted_unique_and_exists() -> None:
    names = featx_search.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    missing = [name for name in names if not hasattr(featx_search, name)]
    assert not missing, missing


def _typed_imports(path: Path) -> dict[str, str]:
    """Name -> module of what featx_search/__init__.py imports for type checkers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names.update({alias.asname or alias.name: node.module for alias in node.names})
    return names


def test_all_lists_every_lazy_export_and_type_checkers_see_them() -> None:
    exports: dict[str, str] = featx_search._EXPORTS
    assert set(featx_search.__all__) == {*exports, "__version__"}
    assert _typed_imports(Path(featx_search.__file__)) == exports
    for name, module in exports.items():
        obj = getattr(featx_search, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith(f"featx_search.{module}"), name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = featx_search.Nope
