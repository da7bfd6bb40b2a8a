"""Other runtimes for a cut graph: a frozen TorchScript graph and OpenVINO (index runs only)."""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def frozen_graph(graph: Any, inputs: torch.Tensor, _layers: tuple[str, ...]) -> Any:
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
    cannot be imported, so it is unimportable only while they load (callers hold the model
    lock); nothing stays changed. Where the host program imported openvino first,
    :func:`_no_openvino_telemetry` covers the conversions.
    """
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
    """OpenVINO's no-op telemetry stub in its conversion modules while one conversion runs,
    then what they held before."""
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


class OpenVinoGraph:
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


def exported_for_openvino(
    graph: Any,
    inputs: torch.Tensor | np.ndarray,
    layers: tuple[str, ...],
    *,
    pool: str | None = None,
) -> Any:
    """``graph`` exported with ``torch.export`` (any batch size) and converted to an OpenVINO
    model: its outputs are the ``layers`` in order, or with ``pool`` the space's vector
    (pooled, concatenated, L2-normalised as :func:`featx_search.pooling.combine` does).
    ``torch.export``, not OpenVINO's TorchScript tracing, which is deprecated and fails on
    numbered submodules (nn.Sequential). Callers hold the model lock."""
    import torch
    from torch import nn

    from ..pooling import combine

    class Outputs(nn.Module):  # tensors out, not the FX graph's dict
        def __init__(self) -> None:
            super().__init__()
            self.cut = graph  # not "graph": the exported module's FX graph is called that

        def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            found = self.cut(batch)
            if pool is not None:
                return (combine([found[name].float() for name in layers], pool),)
            return tuple(found[name] for name in layers)

    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
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
            # Where NNCF is installed, converting imports nncf.torch, which loads torch's C++
            # extension helper, which warns that a CPU machine has no CUDA: noise here.
            extension = logging.getLogger("torch.utils.cpp_extension")
            extension_level = extension.level
            extension.setLevel(logging.ERROR)
            try:
                return openvino.convert_model(exported, share_weights=False)
            finally:
                extension.setLevel(extension_level)
    finally:
        # convert_model sets the root logger to ERROR while it runs and does not always
        # restore it when it fails, which would hide every later warning.
        root.setLevel(level)


def openvino_graph(graph: Any, inputs: torch.Tensor, layers: tuple[str, ...]) -> OpenVinoGraph:
    """``graph`` converted to OpenVINO (:func:`exported_for_openvino`) and compiled for this
    CPU in fp32 (OpenVINO would pick bf16 on CPUs with AMX; the space is fp32), with as many
    threads as torch uses."""
    import torch

    openvino = _import_openvino()
    converted = exported_for_openvino(graph, inputs, layers)
    compiled = openvino.Core().compile_model(
        converted,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        },
    )
    return OpenVinoGraph(compiled, layers)


def seconds(graph: Any, inputs: torch.Tensor) -> float:
    """Wall time of one call of ``graph`` on ``inputs``."""
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        graph(inputs)
        return time.perf_counter() - started
