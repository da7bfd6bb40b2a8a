"""Shared fixtures: synthetic photo folders, temporary libraries, an indexed library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featx_search import Library
from featx_search import compute as compute_module
from tests.support import TINY_ARGS, make_photo, run_cli


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
