"""One local Ray instance (2 CPUs) for the whole session, started by the first test that
needs it; without Ray the tests that need it skip, saying why, except under CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[ModuleType]:
    try:
        import ray
        import ray.data
    except ImportError as err:
        reason = f"Ray Data is not installed ({err}); pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Ray tests, but {reason}")
        pytest.skip(reason)
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
