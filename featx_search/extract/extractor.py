"""The extractor: a model cut at the chosen layers, turning image batches into vectors."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..compute import (
    FREEZE_MIN_IMAGES,
    OPENVINO_MIN_IMAGES,
    Compute,
    Placement,
    applied,
    engine_for,
    place,
    resolve_device,
    resolve_precision,
    to_input,
)
from ..config import DEFAULT_PRECISION, Engine, ExtractorSpec, SpaceSpec
from ..errors import ModelError, SpaceError
from . import runtimes
from .cut import building, check_layers, cut, default_layer, node_names, running
from .hooks import HookGraph, called_modules, check_modules, default_module
from .registry import Built, build, model_defaults
from .weights import state_sha256

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .int8 import Int8Model
    from .query_model import QueryModel

log = logging.getLogger(__name__)


class Extractor:
    """A model cut at the chosen FX nodes, producing vectors of one embedding space.

    Build with :func:`load_extractor`. :meth:`embed` maps a float32 batch (B, 3, H, W),
    preprocessed as ``space.preprocess`` says, to L2-normalised float32 vectors (B, dim).
    ``placement`` says where the graph lives (device, dtype, layout); ``None`` is CPU fp32.
    Several threads may embed with one extractor at once.
    """

    def __init__(
        self, graph: nn.Module | HookGraph, space: SpaceSpec, placement: Placement | None = None
    ) -> None:
        self._graph: Any = graph
        self.space = space
        self.placement = placement
        self.frozen = False  # running a frozen TorchScript graph
        self.runtime: Literal["torch", "openvino"] = "torch"  # what runs the graph
        # The OpenVINO model of a space that OpenVINO computes (int8, or engine openvino):
        # its graph and pooling, quantised for int8 (see use_saved).
        self.saved: Int8Model | QueryModel | None = None
        self._run: tuple[int, int] | None = None  # the last prepare_run's images, batch size

    @property
    def int8(self) -> Int8Model | QueryModel | None:
        """An int8 space's quantised model once attached (see :meth:`use_saved`)."""
        return self.saved if self.space.precision == "int8" else None

    def use_saved(self, model: Int8Model | QueryModel) -> None:
        """Embed with ``model`` from now on: the space's graph and pooling in OpenVINO,
        quantised for an int8 space (see :func:`featx_search.extract.int8.attach`), compiled
        in bf16 for an engine-openvino space (see :meth:`Space.extractor`)."""
        self.saved = model
        self.runtime = "openvino"

    def _inputs(self, batch: np.ndarray) -> torch.Tensor:
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        return inputs if self.placement is None else to_input(inputs, self.placement)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised float32 vectors (B, dim) of a float32 batch (B, 3, H, W).

        An int8 space's extractor embeds only once its quantised model is attached
        (:meth:`use_saved`); before, it raises :class:`SpaceError`. A space OpenVINO
        computes embeds with its attached model, else with one exported from the torch graph
        now (once)."""
        if self.saved is not None:
            return self.saved.embed(batch)
        if self.space.precision == "int8":
            raise SpaceError(
                f"space {self.space.label}: the int8 model is not loaded",
                hint="get the extractor from its Space, which loads or calibrates it",
            )
        if self.space.engine == "openvino":
            return self._exported().embed(batch)
        return self.torch_embed(batch)

    def _exported(self) -> Int8Model | QueryModel:
        """The model of an engine-openvino space, exported from the torch graph and compiled
        here when none was attached (a read-only library, or query models turned off)."""
        from .query_model import compiled_in_memory

        with building():
            if self.saved is None:
                saved = compiled_in_memory(self)
                if self._run is not None:
                    saved.prepare_run(*self._run)
                self.use_saved(saved)
        assert self.saved is not None
        return self.saved

    def torch_embed(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`embed` in torch, whatever computes the space (an engine-openvino space's
        torch graph is its fp32 twin's)."""
        step = self.placement.micro_batch if self.placement is not None else None
        # No trace meanwhile (see cut.py); torch threads and TF32 as placed, then restored.
        with running(), applied(self.placement):
            if step is None or len(batch) <= step:
                return self._embed(batch)
            return np.concatenate(
                [self._embed(batch[i : i + step]) for i in range(0, len(batch), step)]
            )

    def _embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from ..pooling import combine

        with torch.inference_mode():
            outputs = self._graph(self._inputs(batch))
            # Pool in fp32 on the CPU whatever the model ran in.
            features = [outputs[name].to("cpu", torch.float32) for name in self.space.layers]
            vectors = combine(features, self.space.pool)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)

    def fx_graph(self) -> nn.Module | None:
        """The cut FX graph this extractor runs, or ``None`` when it reads layers with hooks
        or runs a converted graph (TorchScript, OpenVINO)."""
        if isinstance(self._graph, (HookGraph, runtimes.OpenVinoGraph)) or self.frozen:
            return None
        graph: nn.Module = self._graph
        return graph

    def prepare_run(self, images: int, batch_size: int) -> None:
        """Choose what runs the graph for a run that embeds ``images`` images in batches of
        ``batch_size``: OpenVINO (:attr:`Compute.runtime`), else a frozen TorchScript graph
        (:attr:`Compute.freeze`), else the plain FX graph; an OpenVINO model attached now or
        later is compiled for throughput too (:meth:`QueryModel.prepare_run`). Converting
        holds the process-wide model lock, so other threads' models wait meanwhile. Never
        raises: a graph that cannot be converted runs as it is (with a warning)."""
        self._run = (images, batch_size)
        if self.saved is not None:  # the OpenVINO model of an int8 or engine-openvino space
            self.saved.prepare_run(images, batch_size)
            return
        placement = self.placement
        if placement is None or self.frozen or self.runtime != "torch":
            return
        if self.space.precision == "int8" or self.space.engine == "openvino":
            return  # runs its OpenVINO model once attached
        if isinstance(self._graph, HookGraph):
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
        with building(), applied(placement):
            if openvino and self._adopt(
                "openvino", sample, only_if_faster=placement.runtime == "auto"
            ):
                self.runtime = "openvino"
            elif freeze and self._adopt(
                "frozen", sample, only_if_faster=placement.freeze == "auto"
            ):
                self.frozen = True

    def _adopt(
        self, kind: Literal["openvino", "frozen"], inputs: torch.Tensor, *, only_if_faster: bool
    ) -> bool:
        """Build the ``kind`` form of the graph (``openvino`` or ``frozen``) and run it from
        now on if it gives the plain graph's outputs on ``inputs`` (and, with
        ``only_if_faster``, runs them faster)."""
        import torch

        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Tracing warns about the FX graph's dict output, and torch.jit about being
                # deprecated in favour of torch.compile (which needs a C++ compiler at run
                # time).
                warnings.simplefilter("ignore")
                make = runtimes.openvino_graph if kind == "openvino" else runtimes.frozen_graph
                candidate = make(self._graph, inputs, self.space.layers)
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
            plain = runtimes.seconds(self._graph, inputs)
            fast = runtimes.seconds(candidate, inputs)
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


def load_extractor(
    spec: ExtractorSpec, compute: Compute | None = None, engine: Engine | None = None
) -> Extractor:
    """Build the model, cut it at ``spec.layers`` (or the default layer) and resolve the space.

    ``spec.method`` says how: ``fx`` rewrites the graph to end at the layers, ``hook`` reads
    module outputs with forward hooks while the whole model runs, ``auto`` uses FX and falls
    back to hooks (with a warning) when the model cannot be traced.

    The graph runs in ``spec.precision`` on the device, threads and layout of ``compute``
    (default: :class:`Compute`, i.e. the best device here); ``auto`` becomes the fastest
    precision that device runs natively, and the space's ``request`` says which. ``engine``
    says what computes the space; ``None`` chooses (:func:`~featx_search.compute.engine_for`:
    OpenVINO for bf16 on the CPU, where the model traces with FX). Building and tracing hold
    a process-wide lock, so threads may call this at once.

    Raises :class:`ModelError`, :class:`WeightsError`, :class:`LayerError` or
    :class:`ConfigError` with a hint when something named in ``spec`` is not usable.
    """
    import torch
    import torchvision

    compute = compute or Compute()
    precision = spec.precision
    if precision == "auto":
        precision = resolve_precision(precision, resolve_device(compute.device))
    spec = replace(spec, precision=precision)  # the space's request says what auto chose
    with building():
        built = build(spec)
        graph, layers = _cut(built, spec)
        chosen = engine is None
        if chosen:  # only bf16 may have another engine: other precisions resolve no device
            device = resolve_device(compute.device) if precision == "bf16" else "cpu"
            engine = engine_for(precision, device, compute)
        if engine == "openvino" and isinstance(graph, HookGraph):
            if not chosen:
                raise ModelError(
                    f"model {spec.model}: a space computed by OpenVINO needs a model FX "
                    "can trace, and this one reads layers with forward hooks",
                    hint="use method fx, or make a space with runtime torch",
                )
            engine = "torch"
        assert engine is not None
        size = built.preprocess.crop
        probe = np.zeros((1, 3, size, size), dtype=np.float32)
        partial = SpaceSpec(
            model=spec.model,
            weights=built.weights,
            weights_sha256=state_sha256(built.model),
            layers=tuple(layers),
            pool=spec.pool or model_defaults(spec.model)[1],
            preprocess=built.preprocess,
            dim=0,
            # The release, not the local build tag: a CPU and a CUDA build of one release
            # match.
            torch_version=torch.__version__.split("+")[0],
            torchvision_version=torchvision.__version__.split("+")[0],
            request=spec,
            precision=precision,
            engine=engine,
        )
        # After the checksum: the weights are hashed as built, in fp32 on the CPU.
        if isinstance(graph, HookGraph):  # place the hooked model itself (moved in place)
            _, placement = place(graph.model, precision, compute)
        else:
            graph, placement = place(graph, precision, compute, engine)
        # int8 and OpenVINO's spaces have the vector size of their fp32 graph.
        fp32 = replace(partial, precision=DEFAULT_PRECISION, engine="torch")
        dim = Extractor(graph, fp32, placement).embed(probe).shape[1]
    space = SpaceSpec(**{**partial.__dict__, "dim": int(dim)})
    log.info(
        "extractor %s ready: %d-d, space %s, %s on %s (channels_last=%s)",
        space.label,
        dim,
        space.fingerprint,
        precision,
        placement.device,
        placement.channels_last,
    )
    return Extractor(graph, space, placement)


def traced_nodes(built: Built, spec: ExtractorSpec, fallback: str) -> list[str] | None:
    """The model's FX node names, or None when layers are to be read with forward hooks:
    ``method="hook"``, or ``auto`` on a model FX cannot trace (logged with ``fallback``).
    With ``method="fx"`` an untraceable model raises :class:`ModelError`."""
    if spec.method == "hook":
        return None
    try:
        return node_names(built.model, spec.model)
    except ModelError as err:
        if spec.method == "fx":
            raise
        log.warning("%s; %s", err.message.splitlines()[0], fallback)
        return None


def _cut(built: Built, spec: ExtractorSpec) -> tuple[nn.Module | HookGraph, tuple[str, ...]]:
    """The callable that maps a batch to {layer: output}, and the layers it returns."""
    nodes = traced_nodes(
        built,
        spec,
        "reading layers with forward hooks instead, so the whole network runs for every image",
    )
    if nodes is not None:
        layers = spec.layers or model_defaults(spec.model)[0]
        layers = layers or (default_layer(built.model, nodes),)
        check_layers(layers, nodes, spec.model)
        return cut(built.model, layers), tuple(layers)
    modules = called_modules(built.model, built.preprocess.crop)
    layers = spec.layers or (default_module(built.model, modules),)
    check_modules(layers, modules, spec.model)
    return HookGraph(built.model, layers), tuple(layers)


def extractor_for(stored: SpaceSpec, compute: Compute | None = None) -> Extractor:
    """The extractor of a stored space: built from the spec it was made from, with its
    resolved layers and pooling when the model's defaults have changed since, and with the
    input handling stored with the space (which wins over the model's current default)."""
    extractor = load_extractor(stored.request, compute, stored.engine)
    resolved = replace(stored.request, layers=stored.layers, pool=stored.pool)
    if extractor.space.fingerprint != stored.fingerprint and resolved != stored.request:
        extractor = load_extractor(resolved, compute, stored.engine)
    extractor.space = replace(extractor.space, preprocess=stored.preprocess)
    return extractor


def reproduces(extractor: Extractor, stored: SpaceSpec, *, writing: bool) -> None:
    """Check that ``extractor`` makes the vectors of the ``stored`` space. Raises
    :class:`SpaceError` when anything but the torch / torchvision release differs, or
    anything at all when ``writing``; otherwise a difference is logged as a warning."""
    if extractor.space.fingerprint == stored.fingerprint:
        return
    now, then = extractor.space.identity(), stored.identity()
    keys = [name for name in then if then[name] != now[name]]
    changed = ", ".join(f"{name}: {then[name]} -> {now[name]}" for name in keys)
    if writing or not set(keys) <= {"torch", "torchvision"}:
        raise SpaceError(
            f"space {stored.fingerprint} ({stored.label}) cannot be reproduced here ({changed})",
            hint="index again with an explicit model, weights and layer to make a new space",
        )
    log.warning(
        "space %s was built with other library versions (%s); query vectors may differ "
        "slightly from stored ones",
        stored.fingerprint,
        changed,
    )
