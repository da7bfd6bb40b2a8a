"""The built-in models side by side (`featx-search models`): input size, vector size, whether
their packages are installed, their measured `eval` scores, and optionally their speed here."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import DEFAULT_MODEL, NO_WEIGHTS, ExtractorSpec
from ..errors import ModelError
from .registry import BUILTIN, ModelEntry

if TYPE_CHECKING:
    from ..compute import Compute

SPEED_BATCH = 8


@dataclass(frozen=True)
class ModelCard:
    """One built-in model as `featx-search models` shows it.

    ``dim`` is the vector size of its default layers (``None`` when its packages are missing,
    with ``missing`` saying which extra installs them); ``images_per_s`` is the model's forward
    pass alone on random input in batches of :data:`SPEED_BATCH` (``None`` unless measured).
    """

    name: str
    input_px: int
    layers: tuple[str, ...]
    pool: str
    dim: int | None
    default: bool
    imagenet_top1: float | None
    scores: dict[str, float]
    missing: str | None = None
    images_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_px": self.input_px,
            "layers": list(self.layers),
            "pool": self.pool,
            "dim": self.dim,
            "default": self.default,
            "imagenet_top1": self.imagenet_top1,
            "scores": self.scores,
            "missing": self.missing,
            "images_per_s": self.images_per_s,
        }


def _speed(extractor: Any, side: int, seconds: float) -> float:
    """Images/s of ``extractor`` on random (SPEED_BATCH, 3, side, side) input: one batch to
    warm up, then batches for about ``seconds``."""
    batch = np.random.default_rng(0).standard_normal((SPEED_BATCH, 3, side, side))
    batch = batch.astype(np.float32)
    extractor.embed(batch)
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done == 0:
        extractor.embed(batch)
        done += SPEED_BATCH
    return done / elapsed


def model_card(
    entry: ModelEntry, *, speed: bool = False, seconds: float = 3.0, compute: Compute | None = None
) -> ModelCard:
    """``entry``'s card; with ``speed``, its forward pass timed here for about ``seconds``.
    The architecture is built with random weights (same size and speed, no weights needed)."""
    from .extractor import load_extractor

    side = entry.preprocess.crop
    card = ModelCard(
        name=entry.name,
        input_px=side,
        layers=entry.layers,
        pool=entry.pool,
        dim=None,
        default=entry.name == DEFAULT_MODEL,
        imagenet_top1=entry.imagenet_top1,
        scores=dict(entry.scores),
    )
    try:
        extractor = load_extractor(ExtractorSpec(model=entry.name, weights=NO_WEIGHTS), compute)
    except ModelError as err:
        return replace(card, missing=err.hint)
    rate = _speed(extractor, side, seconds) if speed else None
    return replace(card, dim=extractor.space.dim, images_per_s=rate)


def model_cards(*, speed: bool = False, compute: Compute | None = None) -> list[ModelCard]:
    """Every built-in model's card (see :func:`model_card`)."""
    return [model_card(entry, speed=speed, compute=compute) for entry in BUILTIN.values()]
