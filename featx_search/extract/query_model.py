"""A space's query model: its cut graph and pooling saved once as an OpenVINO IR file, so that
a fresh process embeds a query photo without importing torch or building the model.

A cold ``search PHOTO`` otherwise spends most of its time importing torch and building and
tracing the network. The IR holds the whole path from the preprocessed batch to the
L2-normalised vector (the pooling is exported with the graph), is checked against the torch
extractor when it is made (vectors of probe inputs must agree), and is refused when it was
made for another space or OpenVINO release. OpenVINO's compiled blob for this CPU is cached
beside it, so a later process compiles nothing either.

Every space read with FX gets one. For an fp32 space it is the space's own function
(checked to 1e-4); for a bf16 or fp16 space that torch computes it is that function in fp32,
without the rounding, checked against torch's fp32 twin of the space: a query vector in fp32
against stored bf16 vectors is what ``scripts/compare_precision.py`` calls "mixed", and
retrieval quality does not move (docs/benchmarks.md). For a bf16 space that OpenVINO computes
(engine ``openvino``) it is the space's own engine: the same file, compiled with OpenVINO's
bf16 inference precision, writes the space's vectors too. Spaces read with hooks keep
embedding with torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..compute import openvino_installed
from ..errors import SpaceError

if TYPE_CHECKING:
    from ..config import SpaceSpec
    from .extractor import Extractor

log = logging.getLogger(__name__)

ENV = "FEATX_QUERY_MODEL"  # "0" or "off": never make or use one
TOLERANCE = 1e-4  # largest difference allowed between the IR's and torch's vector entries
PROBES = 3
# Runs of fewer batches keep the latency model (a one-batch run would not use the streams).
STREAMS_MIN_BATCHES = 2
_META = "meta.json"
_XML = "model.xml"


def enabled() -> bool:
    """Whether query models may be made and used here: OpenVINO is installed and
    ``FEATX_QUERY_MODEL`` does not turn them off."""
    return os.environ.get(ENV, "1").lower() not in ("0", "off", "no") and openvino_installed()


def folder_for(index_dir: Path, space: SpaceSpec) -> Path:
    """Where the query model of ``space`` lives among a library's index files."""
    return index_dir / f"{space.fingerprint}.query"


FLOAT_PRECISIONS = ("fp32", "bf16", "fp16")


def eligible(space: SpaceSpec) -> bool:
    """Whether ``space`` can have a query model (a floating-point space read with FX)."""
    return space.precision in FLOAT_PRECISIONS and space.request.method != "hook"


def fp32_twin(space: SpaceSpec) -> SpaceSpec:
    """``space`` computed in fp32 by torch: the same model, weights, layers, pooling and
    input."""
    if space.precision == "fp32":
        return space
    return replace(
        space,
        precision="fp32",
        engine="torch",
        request=replace(space.request, precision="fp32"),
    )


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
    there already or the space is not eligible. A space that does not compute in fp32 is
    exported from its fp32 twin (built here; ``extractor`` is not called). Returns what was
    made, or ``None``. A model that disagrees with torch is not saved (a warning says so);
    other failures are logged and swallowed: searches still work without."""
    target = folder_for(index_dir, space)
    if not eligible(space) or not enabled() or usable(target, space):
        return None
    # A model that cannot be built is the caller's error, not a warning. A space OpenVINO
    # computes has its fp32 twin's torch graph already.
    own = space.precision == "fp32" or space.engine == "openvino"
    model = extractor() if own else _twin_extractor(space)
    try:
        return _make(model, space, target)
    except Exception as err:
        log.warning("could not save a query model for space %s: %s", space.fingerprint, err)
        return None


def _twin_extractor(space: SpaceSpec) -> Extractor:
    """torch's fp32 extractor of ``space`` (see :func:`fp32_twin`), checked to make the
    twin's vectors (another torch release only warns, as for queries)."""
    from .extractor import extractor_for, reproduces

    twin = fp32_twin(space)
    model = extractor_for(twin)
    reproduces(model, twin, writing=False)
    return model


def _make(extractor: Extractor, space: SpaceSpec, target: Path) -> Made | None:
    from .runtimes import exported_for_openvino

    graph = extractor.fx_graph()
    if graph is None:
        return None
    probes = _probes(space)
    converted = exported_for_openvino(graph, probes, space.layers, pool=space.pool)
    # Checked in fp32 against torch in fp32, whatever precision the space computes in.
    expected = extractor.torch_embed(probes)

    def difference(staging: Path) -> float:
        got = QueryModel(staging, space, cache=False, hint="f32").embed(probes)
        return float(np.abs(got - expected).max())

    meta = {
        "fingerprint": space.fingerprint,
        "dim": space.dim,
        "precision": "fp32",
        # Made from torch's graph of exactly this space (not another torch release's):
        # then it may write the space's vectors too (see writes).
        "exact": fp32_twin(extractor.space).fingerprint == fp32_twin(space).fingerprint,
        "openvino": _openvino_version(),
    }
    found = save_folder(
        converted, target, meta, difference=difference, tolerance=TOLERANCE, what="query model"
    )
    return None if found is None else Made(target, found)


def save_folder(
    converted: Any,
    target: Path,
    meta: dict[str, Any],
    *,
    difference: Callable[[Path], float] | None = None,
    tolerance: float = 0.0,
    what: str = "model",
) -> float | None:
    """Save the OpenVINO model ``converted`` as the folder ``target`` (model.xml and
    meta.json, written last: ``meta``), whole or not at all (a staging folder renamed).
    With ``difference``, ``difference(folder)`` (the model saved in the staging folder,
    against torch's) must be within ``tolerance`` and goes into the meta as
    ``max_difference``; else a warning names ``what`` and nothing is saved. Returns the
    difference (0.0 unchecked), or None when nothing was saved."""
    from .runtimes import _import_openvino

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target.parent))
    try:
        _import_openvino().save_model(converted, staging / _XML, compress_to_fp16=False)
        found = 0.0
        if difference is not None:
            found = difference(staging)
            if not found <= tolerance:
                log.warning(
                    "the %s of space %s differs from torch by %.2g; not saved",
                    what,
                    meta.get("fingerprint"),
                    found,
                )
                return None
            meta = {**meta, "max_difference": found}
        (staging / _META).write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return found
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def saved_meta(folder: Path, space: SpaceSpec) -> dict[str, Any] | None:
    """The record of the model saved in ``folder`` when it is one of ``space`` (fingerprint,
    dimension, model file), else ``None``."""
    try:
        meta = json.loads((folder / _META).read_text())
    except (OSError, ValueError):
        return None
    if not (
        isinstance(meta, dict)
        and meta.get("fingerprint") == space.fingerprint
        and meta.get("dim") == space.dim
        and (folder / _XML).is_file()
    ):
        return None
    return meta


def usable(folder: Path, space: SpaceSpec) -> bool:
    """Whether ``folder`` holds a query model of ``space`` for this OpenVINO release."""
    meta = saved_meta(folder, space)
    return meta is not None and meta.get("openvino") == _openvino_version()


def _hint(space: SpaceSpec) -> str:
    """OpenVINO's inference precision for ``space``'s query model: bf16 for a space that
    OpenVINO computes in bf16, else fp32 (see the module's docstring)."""
    return "bf16" if space.engine == "openvino" else "f32"


class QueryModel:
    """A saved query model, compiled for this CPU: :meth:`embed` maps a float32 batch (B, 3,
    H, W), preprocessed as the space says, to its L2-normalised vectors (B, dim), as the
    space's :class:`Extractor` does. Calls are serialised. ``hint``: OpenVINO's inference
    precision (``f32``, ``bf16``); by default the space's.

    It is compiled for latency (one infer request using every thread), what a query wants.
    An index run asks for throughput too (:meth:`prepare_run`): the same model compiled
    again, meanwhile, with OpenVINO's throughput hint, which splits the threads into
    streams (two of one thread each on two cores) with an infer request each, and a batch
    is split across them.
    Streams need no barrier between threads, so a stream that the decoding threads preempt
    does not hold the others up (docs/benchmarks.md, bench_index)."""

    def __init__(
        self,
        folder: Path | None,
        space: SpaceSpec,
        *,
        cache: bool = True,
        threads: int | None = None,
        hint: str | None = None,
        model: Any = None,
    ) -> None:
        from .runtimes import _import_openvino

        openvino = _import_openvino()
        core = openvino.Core()
        if cache and folder is not None:  # the compiled blob for this CPU, for later processes
            core.set_property({"CACHE_DIR": str(folder / "compiled")})
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": hint or _hint(space),
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        source = model if model is not None else str(cast(Path, folder) / _XML)
        compiled = core.compile_model(source, "CPU", config)
        self.space = space
        self.folder = folder
        self._core, self._source, self._config = core, source, config
        self._request: Any = compiled.create_infer_request()
        self._streams: list[Any] = []  # the throughput model's infer requests, once compiled
        self._preparing: threading.Thread | None = None
        self._lock = threading.Lock()

    def prepare_run(self, images: int, batch_size: int, *, wait: bool = False) -> None:
        """For a run that embeds ``images`` images in batches of ``batch_size``: compile the
        model for throughput as well (see the class), unless batches are single images or
        the run is a few batches (under :data:`STREAMS_MIN_BATCHES`). It compiles on a thread
        of its own (``wait``: until done; the process waits for it at exit) while the first
        batches run on the latency model; OpenVINO caches that compiled blob too, so later
        runs load it. Never raises: a model that cannot be compiled so runs as it is (with a
        warning)."""
        if batch_size < 2 or images < STREAMS_MIN_BATCHES * batch_size:
            return
        with self._lock:
            if self._preparing is None:
                self._preparing = threading.Thread(
                    target=self._compile_streams, name="featx-streams"
                )
                self._preparing.start()
            preparing = self._preparing
        if wait:
            preparing.join()

    def _compile_streams(self) -> None:
        try:
            throughput = {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"}
            compiled = self._core.compile_model(self._source, "CPU", throughput)
            streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            if streams > 1:
                requests = [compiled.create_infer_request() for _ in range(streams)]
                with self._lock:
                    self._streams = requests
                log.debug("the model runs in %d OpenVINO streams", streams)
        except Exception as err:  # the latency model goes on
            log.warning("could not compile the model for throughput (%s)", err)

    @property
    def streams(self) -> int:
        """How many infer requests a batch is split across: 1 until :meth:`prepare_run`
        compiled the model for throughput on a CPU where OpenVINO runs several streams."""
        return max(1, len(self._streams))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        with self._lock:
            if len(batch) > 1 and self._streams:
                parts = np.array_split(batch, min(len(batch), len(self._streams)))
                requests = self._streams[: len(parts)]
                for request, part in zip(requests, parts, strict=True):
                    request.start_async({0: part})
                for request in requests:
                    request.wait()
                return np.concatenate(
                    [np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in requests]
                )
            result = self._request.infer({0: batch})
            return np.array(result[0], dtype=np.float32)  # copied out of the request


def compiled_in_memory(extractor: Extractor) -> QueryModel:
    """The model of ``extractor``'s space exported from its torch graph and compiled here, not
    saved: for a space that OpenVINO computes where no query model is saved (a read-only
    library, or query models turned off). Callers hold the model lock."""
    from .runtimes import exported_for_openvino

    space = extractor.space
    graph = extractor.fx_graph()
    if graph is None:
        raise SpaceError(
            f"space {space.label}: OpenVINO computes it, but its model is not an FX graph",
            hint="make a space with runtime torch",
        )
    converted = exported_for_openvino(graph, _probes(space), space.layers, pool=space.pool)
    threads = extractor.placement.threads if extractor.placement is not None else None
    return QueryModel(None, space, threads=threads, model=converted)


def writes(model: QueryModel) -> bool:
    """Whether the loaded query ``model`` may also write its space's vectors: a model made
    from torch's graph of exactly this space (checked to 1e-4 then), of an fp32 space (the
    model computes in fp32) or of a space OpenVINO computes (the model is its engine). Runs
    that embed few images (all runs, for the latter) use it instead of importing torch."""
    if model.space.precision != "fp32" and model.space.engine != "openvino":
        return False
    if model.folder is None:
        return True  # compiled from this process's own torch graph
    meta = saved_meta(model.folder, model.space)
    return meta is not None and meta.get("exact") is True


def load(index_dir: Path, space: SpaceSpec, *, threads: int | None = None) -> QueryModel | None:
    """The query model of ``space`` when one is saved and usable here, else ``None``;
    ``threads``: OpenVINO's inference threads (``None``: its default)."""
    if not eligible(space) or not enabled():
        return None
    folder = folder_for(index_dir, space)
    if not usable(folder, space):
        return None
    try:
        return QueryModel(folder, space, threads=threads)
    except Exception as err:
        log.warning("could not load the query model in %s (%s); using torch", folder, err)
        return None
