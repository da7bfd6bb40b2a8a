"""Frozen configuration objects and the fingerprint of an embedding space."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

POOLS: tuple[str, ...] = ("avg", "max", "gem")
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_WEIGHTS = "DEFAULT"
NO_WEIGHTS = "none"
# Number formats a model can run in. fp32 is the default and the only one whose spaces keep
# the fingerprints they had before precision existed.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ConfigError(f"unknown pooling {pool!r}", hint=f"choose one of: {', '.join(POOLS)}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown --precision {precision!r}", hint=f"choose one of: {', '.join(PRECISIONS)}"
        )


@dataclass(frozen=True, kw_only=True)
class ExtractorSpec:
    """What the user asks for: a model, its weights, the layers to read and how to pool them.

    ``weights`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``, ...), ``none``
    for a seeded random initialisation, or the path of a state-dict file. An empty ``layers``
    means the model's default layer (the node that feeds its classifier). ``precision`` is
    the number format the model runs in (``fp32``, ``bf16``, ``fp16``); it changes vectors, so
    it is part of the embedding space.
    """

    model: str = DEFAULT_MODEL
    weights: str = DEFAULT_WEIGHTS
    layers: tuple[str, ...] = ()
    pool: str = "avg"
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ConfigError("--model is empty", hint="name a model, e.g. resnet50")
        if not self.weights.strip():
            raise ConfigError("--weights is empty", hint="use DEFAULT, none or a file path")
        object.__setattr__(self, "layers", tuple(self.layers))
        for layer in self.layers:
            if not layer.strip():
                raise ConfigError("--layer is empty", hint="see `featx-search layers MODEL`")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"--layer repeats a node: {', '.join(self.layers)}")
        _check_pool(self.pool)
        _check_precision(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorSpec:
        return cls(
            model=data["model"],
            weights=data["weights"],
            layers=tuple(data.get("layers", ())),
            pool=data.get("pool", "avg"),
            precision=data.get("precision", DEFAULT_PRECISION),
        )


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How an image becomes the model input: resize the shorter side, centre crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"bad preprocessing sizes: resize={self.resize} crop={self.crop}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
        )


@dataclass(frozen=True, kw_only=True)
class SpaceSpec:
    """A resolved embedding space: everything that changes a vector.

    Two specs with the same :attr:`fingerprint` produce the same vectors for the same image.
    ``request`` is the user's spec it was resolved from (kept to rebuild the extractor).
    """

    model: str
    weights: str
    weights_sha256: str
    layers: tuple[str, ...]
    pool: str
    preprocess: Preprocess
    dim: int
    torch_version: str
    torchvision_version: str
    request: ExtractorSpec = field(compare=False)
    precision: str = DEFAULT_PRECISION

    def identity(self) -> dict[str, Any]:
        """The fields that make up the fingerprint (everything but ``request``).

        ``precision`` appears only when it is not fp32, so fp32 spaces keep the fingerprints
        they had before precision was an option.
        """
        extra = {} if self.precision == DEFAULT_PRECISION else {"precision": self.precision}
        return {
            **extra,
            "model": self.model,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "layers": list(self.layers),
            "pool": self.pool,
            "preprocess": self.preprocess.to_dict(),
            "dim": self.dim,
            "torch": self.torch_version,
            "torchvision": self.torchvision_version,
        }

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """A short human name, e.g. ``resnet50/avgpool/avg`` (``.../avg/bf16`` when not fp32)."""
        label = f"{self.model}/{'+'.join(self.layers)}/{self.pool}"
        return label if self.precision == DEFAULT_PRECISION else f"{label}/{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "request": self.request.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceSpec:
        return cls(
            model=data["model"],
            weights=data["weights"],
            weights_sha256=data["weights_sha256"],
            layers=tuple(data["layers"]),
            pool=data["pool"],
            preprocess=Preprocess.from_dict(data["preprocess"]),
            dim=int(data["dim"]),
            torch_version=data["torch"],
            torchvision_version=data["torchvision"],
            request=ExtractorSpec.from_dict(data["request"]),
            precision=data.get("precision", DEFAULT_PRECISION),
        )
