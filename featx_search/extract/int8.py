"""int8 spaces: the cut graph and pooling quantised after training with NNCF, calibrated on a
sample of the library's images, and saved as OpenVINO IR beside the space's index files.

The saved model is the space's model: an int8 space's vectors depend on its calibration
sample as well as on its spec, so the model is made once, by the first index run, from up to
:data:`CALIBRATION_IMAGES` of the images that run embeds (drawn by a hash of their paths,
decoded and preprocessed exactly as indexing does), and every later run and query loads it
from ``FINGERPRINT.int8/`` instead of calibrating again. Losing that folder loses the space's
model: a run then stops with an error rather than make vectors that do not match the stored
ones (index again into a new int8 space, or use another precision).

Quantising needs the ``nncf`` package (``pip install 'featx-search[int8]'``); running a saved
model needs only OpenVINO, and no torch (searches load it as their query model).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import ConfigError, SpaceError
from .query_model import QueryModel, save_folder, saved_meta

if TYPE_CHECKING:
    from ..config import SpaceSpec
    from .extractor import Extractor

log = logging.getLogger(__name__)

# Calibration images drawn from a run (NNCF's own default subset size).
CALIBRATION_IMAGES = 300
T = TypeVar("T")


def nncf_installed() -> bool:
    """Whether NNCF can be imported (without importing it)."""
    return importlib.util.find_spec("nncf") is not None


def require_nncf() -> None:
    """Raise :class:`ConfigError` naming ``precision`` when NNCF is not installed."""
    if not nncf_installed():
        raise ConfigError(
            "precision int8 needs the nncf package, which is not installed",
            hint="pip install 'featx-search[int8]', or use another precision",
            param="precision",
        )


def folder_for(index_dir: Path, space: SpaceSpec) -> Path:
    """Where the int8 model of ``space`` lives among a library's index files."""
    return index_dir / f"{space.fingerprint}.int8"


def sample(items: Sequence[T], key: Callable[[T], str], n: int = CALIBRATION_IMAGES) -> list[T]:
    """Up to ``n`` of ``items``, the same ones whatever their order: those whose ``key``
    (a path) hashes lowest, so the sample spreads over every folder."""
    ranked = sorted(items, key=lambda item: hashlib.sha256(key(item).encode()).digest())
    return ranked[:n]


def _import_nncf() -> Any:
    """``import nncf`` without its usage statistics (like OpenVINO's, see
    :func:`runtimes._import_openvino`: NNCF binds a stub when openvino-telemetry cannot be
    imported while it loads)."""
    if "nncf" in sys.modules:
        return sys.modules["nncf"]
    from .runtimes import _import_openvino

    _import_openvino()
    blocked = "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # ImportError
    try:
        with _muted(_EXTENSION):
            return importlib.import_module("nncf")
    finally:
        if blocked:
            del sys.modules["openvino_telemetry"]


# NNCF loads torch's C++ extension helper, which warns that a CPU machine has no CUDA: noise
# for a user who asked for int8 on the CPU.
_EXTENSION = "torch.utils.cpp_extension"


@contextlib.contextmanager
def _muted(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` meanwhile."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars and notes kept off the user's terminal while it quantises.

    Its bars are rich consoles on ``sys.stdout``, which a ``featx-search index --json`` run
    owns; they go to a buffer meanwhile (the run's own output waits for the model)."""
    with _muted("nncf", _EXTENSION), contextlib.redirect_stdout(io.StringIO()):
        yield


def quantise(extractor: Extractor, calibration: np.ndarray) -> Any:
    """The OpenVINO model of ``extractor``'s space (its fp32 FX graph and pooling) quantised
    to int8 by NNCF on ``calibration``, float32 (N, 3, H, W) preprocessed as the space says.

    Raises :class:`ConfigError` when NNCF is missing, :class:`SpaceError` when the space is
    read with forward hooks (nothing to export) or ``calibration`` is empty."""
    from .cut import building
    from .runtimes import exported_for_openvino

    require_nncf()
    space = extractor.space
    graph = extractor.fx_graph()
    if graph is None:
        raise SpaceError(
            f"space {space.label} cannot be quantised: its layers are read with forward hooks",
            hint="use another precision, or layers that FX can cut at",
        )
    if len(calibration) == 0:
        raise SpaceError(
            f"no image to calibrate the int8 model of space {space.label} on",
            hint="index a folder with images that decode",
        )
    started = time.perf_counter()
    with building():
        nncf = _import_nncf()
        converted = exported_for_openvino(graph, calibration[:2], space.layers, pool=space.pool)
        items = [calibration[i : i + 1] for i in range(len(calibration))]
        with _quiet():
            # Full bias correction, not NNCF's fast one: on efficientnet_lite0 it halves the
            # loss in eval mAP for twice the calibration time (docs/benchmarks.md).
            quantised = nncf.quantize(
                converted,
                nncf.Dataset(items),
                subset_size=len(items),
                fast_bias_correction=False,
            )
    log.info(
        "int8 model of space %s calibrated on %d images in %.1f s",
        space.fingerprint,
        len(items),
        time.perf_counter() - started,
    )
    return quantised


class Int8Model(QueryModel):
    """A saved int8 model, compiled for this CPU: float32 (B, 3, H, W) in, L2-normalised
    float32 (B, dim) out. The layers OpenVINO leaves in float run in fp32 whatever the CPU
    (no bf16), so the vectors do not depend on the machine's float formats."""

    def __init__(
        self, folder: Path, space: SpaceSpec, *, cache: bool = True, threads: int | None = None
    ) -> None:
        super().__init__(folder, space, cache=cache, threads=threads)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        vectors = super().embed(batch)
        # The normalisation is quantised with the graph; unit length again, exactly.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def save(model: Any, target: Path, space: SpaceSpec, calibrated: int) -> None:
    """Write ``model`` (quantised) into ``target`` whole or not at all (a staging folder
    renamed, ``meta.json`` written last)."""
    from .runtimes import _import_openvino

    meta = {
        "fingerprint": space.fingerprint,
        "dim": space.dim,
        "calibration_images": calibrated,
        "openvino": str(_import_openvino().get_version()),
        "nncf": str(_import_nncf().__version__),
    }
    save_folder(model, target, meta)


def saved(folder: Path, space: SpaceSpec) -> bool:
    """Whether ``folder`` holds the int8 model of ``space``."""
    return saved_meta(folder, space) is not None


def load(index_dir: Path, space: SpaceSpec, *, threads: int | None = None) -> Int8Model | None:
    """The saved int8 model of ``space`` in ``index_dir``, or ``None`` when there is none."""
    folder = folder_for(index_dir, space)
    if not saved(folder, space):
        return None
    return Int8Model(folder, space, threads=threads)


def attach(
    extractor: Extractor,
    index_dir: Path | None,
    calibration: Callable[[], np.ndarray] | None = None,
) -> None:
    """Make ``extractor`` (of an int8 space) run the space's int8 model: the one saved in
    ``index_dir`` when there is one; else one quantised now on ``calibration()`` and saved
    there (``index_dir=None``: kept in memory only, as ``eval`` does).

    Raises :class:`SpaceError` when no model is saved and there is nothing to calibrate on
    (a query, or a run that embeds nothing new), and what :func:`quantise` raises."""
    if extractor.int8 is not None:
        return
    space = extractor.space
    threads = extractor.placement.threads if extractor.placement is not None else None
    found = None if index_dir is None else load(index_dir, space, threads=threads)
    if found is not None:
        extractor.use_saved(found)
        return
    if calibration is None:
        where = "" if index_dir is None else f" in {folder_for(index_dir, space)}"
        raise SpaceError(
            f"space {space.fingerprint} ({space.label}) has no int8 model{where}",
            hint="its first index run calibrates and saves it; if it was deleted, index "
            "again into a new space (another precision, or delete this space)",
        )
    images = calibration()
    quantised = quantise(extractor, images)
    if index_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="featx-int8-"))
        try:
            save(quantised, scratch / "model", space, len(images))
            extractor.use_saved(Int8Model(scratch / "model", space, cache=False, threads=threads))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    target = folder_for(index_dir, space)
    save(quantised, target, space, len(images))
    # Run what was saved, as every later run will: the same vectors from the first image on.
    extractor.use_saved(Int8Model(target, space, threads=threads))
