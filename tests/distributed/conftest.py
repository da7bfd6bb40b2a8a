"""One local Ray instance (2 CPUs) for the whole session, started by the first test that
needs it. Without Ray Data (or pyarrow, for the shards) the tests that need it skip, saying
why; with ``CI`` set they fail instead, since CI installs the ``ray`` extra (``.ci/run``)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        reason = f"{name} is not installed ({err}); pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Ray and shard tests, but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def parquet() -> ModuleType:
    """``pyarrow.parquet`` (it comes with the ``ray`` extra)."""
    return _require("pyarrow.parquet")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[ModuleType]:
    ray = _require("ray")
    _require("ray.data")
    # Workers import featx_search and the tests' tiny model from this checkout.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "FEATX_QUERY_MODEL": "0"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
