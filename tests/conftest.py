"""Shared fixtures: synthetic photo folders, small models and temporary libraries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from featx_search import ExtractorSpec, Library

# A tiny random-init CNN: fast enough for many end-to-end tests.
TINY = ExtractorSpec(model="tests.models:tiny_cnn", weights="none")
# A real torchvision model with random (seeded) weights.
RESNET18 = ExtractorSpec(model="resnet18", weights="none")


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
