"""What tests share besides fixtures: small model specs, synthetic photos and a CLI runner."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw

from featx_search import ExtractorSpec, Preprocess, SpaceSpec

# A tiny random-init CNN: fast enough for many end-to-end tests. fp32 named, not auto: the
# same vectors on every machine, also in module-scoped fixtures and child processes, which
# conftest's fp32 pin does not reach.
TINY = ExtractorSpec(model="tests.models:tiny_cnn", weights="none", precision="fp32")
# A real torchvision model with random (seeded) weights.
RESNET18 = ExtractorSpec(model="resnet18", weights="none", precision="fp32")


def make_photo(path: Path, seed: int, size: tuple[int, int] = (160, 120)) -> Path:
    """Write a synthetic 'photo' (gradient, shapes, noise) that differs per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            (xx * rng.uniform(0.5, 2.0) + rng.uniform(0, 255)) % 256,
            (yy * rng.uniform(0.5, 2.0) + rng.uniform(0, 255)) % 256,
            ((xx + yy) * rng.uniform(0.2, 1.0) + rng.uniform(0, 255)) % 256,
        ],
        axis=-1,
    )
    noise = rng.normal(0, 12, size=(h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


PG_URL_ENV = "FEATX_TEST_PG_URL"
"""The environment variable naming the PostgreSQL server the tests may create databases on."""


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) as libpq (psycopg itself) takes it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def pg_database(server: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server`` (a SQLAlchemy URL of a
    role that may create databases), dropped at the end (its connections ended): its URL."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"featx_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_url(server), autocommit=True) as admin:
            drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            admin.execute(sql.SQL(drop).format(sql.Identifier(name)))


def is_server(db: str | Path) -> bool:
    """Whether a test's library is on a database server (else a SQLite file)."""
    return "://" in str(db)


TINY_ARGS = ["--model", TINY.model, "--weights", "none", "--precision", "fp32"]
"""The command-line flags of :data:`TINY`."""


def run_cli(*args: str | Path, env: dict[str, str] | None = None, ok: bool = True) -> Result:
    """``featx-search ARGS`` through click's runner (exceptions propagate); with ``ok`` the
    command must succeed."""
    from featx_search.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` of this checkout, imported as a module (scripts are no package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def synthetic_spec(dim: int) -> SpaceSpec:
    """The spec of a space whose vectors are written straight into a store (no model)."""
    return SpaceSpec(
        model="synthetic",
        weights="none",
        weights_sha256="0" * 64,
        layers=("x",),
        pool="avg",
        preprocess=Preprocess(),
        dim=dim,
        torch_version="0",
        torchvision_version="0",
        request=ExtractorSpec(model="synthetic", weights="none"),
    )
