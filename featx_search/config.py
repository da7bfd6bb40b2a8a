"""Frozen configuration objects and the fingerprint of an embedding space."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from .errors import ConfigError

# How a feature map becomes a vector (see pooling.py).
Pool = Literal["avg", "max", "gem"]
# How features are read: FX when the model traces, else forward hooks (auto); or one of them.
Method = Literal["auto", "fx", "hook"]
# How an image meets a square model input: resize and centre crop, or squash the whole frame.
Fit = Literal["crop", "full"]
# Number formats a model can run in. fp32 spaces keep the fingerprints they had before
# precision existed. int8 is post-training quantisation (extract/int8.py): its model is
# calibrated on the library's images and saved with the space.
Precision = Literal["fp32", "bf16", "fp16", "int8"]
# What a user may ask for: a precision, or auto (the fastest float format the device runs
# natively; never int8, see docs/benchmarks.md).
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16", "int8"]
# What computes a space's vectors: torch, or OpenVINO (bf16 spaces on the CPU: the space's
# cut graph exported once and compiled with OpenVINO's bf16 inference precision). Part of
# the space, since the two round differently; torch spaces keep their fingerprints.
Engine = Literal["torch", "openvino"]
# How images are resized (PIL's filters of the same names).
Interpolation = Literal["bilinear", "bicubic"]

POOLS: tuple[Pool, ...] = get_args(Pool)
METHODS: tuple[Method, ...] = get_args(Method)
FITS: tuple[Fit, ...] = get_args(Fit)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
PRECISION_CHOICES: tuple[PrecisionChoice, ...] = get_args(PrecisionChoice)
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)
ENGINES: tuple[Engine, ...] = get_args(Engine)
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_WEIGHTS = "DEFAULT"
NO_WEIGHTS = "none"
DEFAULT_PRECISION: Precision = "fp32"


def check_choice(value: object, choices: Collection[str], param: str) -> None:
    """Raise :class:`ConfigError` naming ``param`` unless ``value`` is one of ``choices``.

    The types say which strings are allowed; this checks values that come from users, files
    or stored specs at run time."""
    if value not in choices:
        raise ConfigError(
            f"{param} must be one of {', '.join(choices)}, got {value!r}",
            hint=f"choose one of: {', '.join(choices)}",
            param=param,
        )


@dataclass(frozen=True, kw_only=True)
class ExtractorSpec:
    """What the user asks for: a model, its weights, the layers to read and how to pool them.

    ``weights`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V2``, ...), ``none``
    for a seeded random initialisation, or the path of a state-dict file. An empty ``layers``
    means the model's default layer and ``pool=None`` its default pooling (a built-in model's
    entry in ``extract/registry.py``, chosen with ``featx-search eval``; else the node that
    feeds the classifier, pooled with avg). ``precision`` is the number format the model runs
    in (``fp32``, ``bf16``, ``fp16``, or ``int8``: quantised after training, calibrated on
    a sample of the library's images, on the CPU with OpenVINO and NNCF, see
    :mod:`featx_search.extract.int8`); it changes vectors, so it is part of the embedding
    space. ``auto`` (the default) is fixed when a space is made: the precision of the
    library's space made from the same spec, else the fastest one the device runs natively
    (:func:`featx_search.compute.native_precisions`); the resolved space's ``request`` holds
    the fixed one. ``method`` is how features are read (see :data:`METHODS`); it is not part
    of the space's fingerprint, since FX and forward hooks give the same vectors wherever
    both apply.
    """

    model: str = DEFAULT_MODEL
    weights: str = DEFAULT_WEIGHTS
    layers: tuple[str, ...] = ()
    pool: Pool | None = None
    precision: PrecisionChoice = "auto"
    method: Method = "auto"

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "method")
        if not self.model.strip():
            raise ConfigError("model is empty", hint="name a model, e.g. resnet50", param="model")
        if not self.weights.strip():
            raise ConfigError(
                "weights is empty", hint="use DEFAULT, none or a file path", param="weights"
            )
        object.__setattr__(self, "layers", tuple(self.layers))
        for layer in self.layers:
            if not layer.strip():
                raise ConfigError(
                    "layers holds an empty name", hint="see list_layers(spec)", param="layers"
                )
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(
                f"layers repeat a node: {', '.join(self.layers)}",
                hint="give each layer once",
                param="layers",
            )
        if self.pool is not None:
            check_choice(self.pool, POOLS, "pool")
        check_choice(self.precision, PRECISION_CHOICES, "precision")

    def answers(self, stored: ExtractorSpec) -> bool:
        """Whether a space made from the request ``stored`` is this spec's: equal, or equal
        but for a precision that this spec leaves to ``auto``."""
        return stored == self or (
            self.precision == "auto" and replace(stored, precision="auto") == self
        )

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
            method=data.get("method", "auto"),
        )


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How an image becomes the model input: resize the shorter side, centre crop, normalise.

    With ``fit="full"`` the whole frame is resized to ``crop`` x ``crop`` instead (squashed,
    nothing cut off); ``resize`` then only sets how far JPEGs are draft-decoded.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Interpolation = "bilinear"
    fit: Fit = "crop"

    def __post_init__(self) -> None:
        check_choice(self.fit, FITS, "fit")
        check_choice(self.interpolation, INTERPOLATIONS, "interpolation")
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(
                f"crop must be positive and at most resize, got resize={self.resize} "
                f"crop={self.crop}",
                param="crop",
            )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        if self.fit == "crop":
            del out["fit"]  # spaces made before fit existed keep their fingerprints
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
            fit=data.get("fit", "crop"),
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
    pool: Pool
    preprocess: Preprocess
    dim: int
    torch_version: str
    torchvision_version: str
    request: ExtractorSpec = field(compare=False)
    precision: Precision = DEFAULT_PRECISION
    engine: Engine = "torch"

    def __post_init__(self) -> None:
        check_choice(self.pool, POOLS, "pool")
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.engine, ENGINES, "engine")
        if self.engine == "openvino" and self.precision != "bf16":
            raise ConfigError(
                f"engine openvino makes bf16 spaces only, not {self.precision}",
                hint="use precision bf16, or engine torch",
                param="engine",
            )

    def identity(self) -> dict[str, Any]:
        """The fields that make up the fingerprint (everything but ``request``).

        ``precision`` appears only when it is not fp32, and ``engine`` only when it is not
        torch, so spaces keep the fingerprints they had before either was an option.
        """
        extra: dict[str, Any] = {}
        if self.precision != DEFAULT_PRECISION:
            extra["precision"] = self.precision
        if self.engine != "torch":
            extra["engine"] = self.engine
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
        """A short human name, e.g. ``resnet50/avgpool/avg`` (``.../avg/bf16`` when not fp32,
        ``.../avg/bf16/openvino`` when OpenVINO computes it)."""
        label = f"{self.model}/{'+'.join(self.layers)}/{self.pool}"
        if self.precision != DEFAULT_PRECISION:
            label = f"{label}/{self.precision}"
        return label if self.engine == "torch" else f"{label}/{self.engine}"

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
            engine=data.get("engine", "torch"),
        )
