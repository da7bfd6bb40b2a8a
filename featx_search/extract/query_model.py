"""A space's query model: its cut graph and pooling saved once as an OpenVINO IR file, so that
a fresh process embeds a query photo without importing torch or building the model.

A cold ``search PHOTO`` otherwise spends most of its time importing torch and building and
tracing the network. The IR holds the whole path from the preprocessed batch to the
L2-normalised vector (the pooling is exported with the graph), is checked against the torch
extractor when it is made (vectors of probe inputs must agree), and is refused when it was
made for another space or OpenVINO release. OpenVINO's compiled blob for this CPU is cached
beside it, so a later process compiles nothing either.

Only fp32 spaces read with FX get one (OpenVINO would otherwise compute in another number
format than the space); everything else keeps embedding with torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compute import openvino_installed

if TYPE_CHECKING:
    from ..config import SpaceSpec
    from .extractor import Extractor

log = logging.getLogger(__name__)

ENV = "FEATX_QUERY_MODEL"  # "0" or "off": never make or use one
TOLERANCE = 1e-4  # largest difference allowed between the IR's and torch's vector entries
PROBES = 3
_META = "meta.json"
_XML = "model.xml"


def enabled() -> bool:
    """Whether query models may be made and used here: OpenVINO is installed and
    ``FEATX_QUERY_MODEL`` does not turn them off."""
    return os.environ.get(ENV, "1").lower() not in ("0", "off", "no") and openvino_installed()


def folder_for(index_dir: Path, space: SpaceSpec) -> Path:
    """Where the query model of ``space`` lives among a library's index files."""
    return index_dir / f"{space.fingerprint}.query"


def eligible(space: SpaceSpec) -> bool:
    """Whether ``space`` can have a query model (fp32, read with FX)."""
    return getattr(space, "precision", "fp32") == "fp32" and space.request.method != "hook"


@dataclass(frozen=True)
class Made:
    """A query model just written: where, and how far its vectors are from torch's."""

    folder: Path
    max_difference: float


def _openvino_version() -> str:
    from .runtimes import _import_openvino

    return str(_import_openvino().get_version())


def _probes(space: SpaceSpec) -> np.ndarray:
    size = space.preprocess.crop
    rng = np.random.default_rng(0)
    return rng.standard_normal((PROBES, 3, size, size)).astype(np.float32)


def make(space: SpaceSpec, extractor: Callable[[], Extractor], index_dir: Path) -> Made | None:
    """Export ``space`` (its model from ``extractor()``, called only when one is needed) to
    its query model folder, checked against the extractor's own vectors, unless one is
    there already or the space is not eligible. Returns what was made, or ``None``. A model
    that disagrees with torch is not saved (a warning says so); other failures are logged
    and swallowed: searches still work without."""
    target = folder_for(index_dir, space)
    if not eligible(space) or not enabled() or usable(target, space):
        return None
    model = extractor()  # a model that cannot be built is the caller's error, not a warning
    try:
        return _make(model, target)
    except Exception as err:
        log.warning("could not save a query model for space %s: %s", space.fingerprint, err)
        return None


def _make(extractor: Extractor, target: Path) -> Made | None:
    from .runtimes import _import_openvino, exported_for_openvino

    space = extractor.space
    graph = extractor.fx_graph()
    if graph is None:
        return None
    openvino = _import_openvino()
    probes = _probes(space)
    converted = exported_for_openvino(graph, probes, space.layers, pool=space.pool)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".query-", dir=target.parent))
    try:
        openvino.save_model(converted, staging / _XML, compress_to_fp16=False)
        expected = extractor.embed(probes)
        got = QueryModel(staging, space, cache=False).embed(probes)
        difference = float(np.abs(got - expected).max())
        if not difference <= TOLERANCE:
            log.warning(
                "the query model of space %s differs from torch by %.2g; not saved",
                space.fingerprint,
                difference,
            )
            return None
        meta = {
            "fingerprint": space.fingerprint,
            "dim": space.dim,
            "openvino": _openvino_version(),
            "max_difference": difference,
        }
        (staging / _META).write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # whole or not at all: meta.json is written last
        return Made(target, difference)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def usable(folder: Path, space: SpaceSpec) -> bool:
    """Whether ``folder`` holds a query model of ``space`` for this OpenVINO release."""
    try:
        meta = json.loads((folder / _META).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("fingerprint") == space.fingerprint
        and meta.get("dim") == space.dim
        and (folder / _XML).is_file()
        and meta.get("openvino") == _openvino_version()
    )


class QueryModel:
    """A saved query model, compiled for this CPU: :meth:`embed` maps a float32 batch (B, 3,
    H, W), preprocessed as the space says, to its L2-normalised vectors (B, dim), as the
    space's :class:`Extractor` does. Calls are serialised (one infer request)."""

    def __init__(
        self, folder: Path, space: SpaceSpec, *, cache: bool = True, threads: int | None = None
    ) -> None:
        from .runtimes import _import_openvino

        openvino = _import_openvino()
        core = openvino.Core()
        if cache:  # the compiled blob for this CPU, reused by later processes
            core.set_property({"CACHE_DIR": str(folder / "compiled")})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(str(folder / _XML), "CPU", config)
        self.space = space
        self._request: Any = compiled.create_infer_request()
        self._lock = threading.Lock()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(batch, np.float32)})
            vectors = np.array(result[0], dtype=np.float32)  # copied out of the request
        return vectors


def load(index_dir: Path, space: SpaceSpec) -> QueryModel | None:
    """The query model of ``space`` when one is saved and usable here, else ``None``."""
    if not eligible(space) or not enabled():
        return None
    folder = folder_for(index_dir, space)
    if not usable(folder, space):
        return None
    try:
        return QueryModel(folder, space)
    except Exception as err:
        log.warning("could not load the query model in %s (%s); using torch", folder, err)
        return None
