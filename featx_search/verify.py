"""Copy mode's local check: when a copy search by a picture ends in a near tie, the tied
images are told apart by local evidence, as copy-detection systems re-rank their short list.

A 40 % crop of a page of text, saved at JPEG quality 10, finds every other page of the same
text at about the same score as its own: the vectors say "text", not "this text". Local
features can tell them apart. The space's model is cut by FX at the end of its last block at
1/16 of the input (``_blocks.10.add`` for efficientnet_lite0, ``layer3`` for a ResNet): each
cell of that map describes a patch of about 16 x 16 pixels. The query is mapped at a few
scales (mirrored for an image it matched through its mirrored view), each candidate at the
copy views' size
(:data:`featx_search.copies.SIDE`), and the cells that are
each other's nearest neighbours (mutual) vote for the shift that takes the query into the
candidate. A copy puts most votes on one shift (a geometric check: its cells agree in place,
not only in kind); another page of the same text scatters them. :func:`agreement` is the
best share of the query's cells that agree on one shift (within a cell), over the scales.

:func:`rerank` adds :data:`WEIGHT` times that share to the score of each image within
:data:`MARGIN` of the best one of the short list, and orders them by the sum; the scores
reported stay the cosine scores. Clear wins (the original far ahead) are left alone, so the
check costs nothing there; where it runs, it decodes at most :data:`SHORT_LIST` images.

The cut model runs in torch the first time; :func:`save_local` then exports it (any input
size) to an OpenVINO file beside the space's index files (``FINGERPRINT.local``), checked
against torch, so that a check in a later process neither imports torch nor builds the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Preprocess

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from torch import nn

    from .config import SpaceSpec

log = logging.getLogger(__name__)

# Images within this cosine score of the best of a copy search's results are checked.
MARGIN = 0.02
# At most this many images are checked per query (the best first).
SHORT_LIST = 5
# The agreement (a share of the query's cells, 0 to 1) counts this much against the score.
WEIGHT = 0.5
# The local map's stride: 1/16 of the input.
STRIDE = 16
# The query's shorter side at which it is mapped, as shares of the candidates' shorter side
# (copies.SIDE): a crop of 16 % of the area to the whole picture.
SCALES = (0.4, 0.55, 0.75, 1.0)
# A query picture whose grey levels spread less than this (of 255) is flat: not checked.
FLAT_SPREAD = 4.0
# The side of the blank input that finds the local node (a multiple of 32, so that every
# halving is exact).
PROBE = 256
# The saved OpenVINO model's maps may differ from torch's by this much (unit-length cells).
TOLERANCE = 1e-3


class LocalModel:
    """A space's model cut at the end of its last block at 1/16 of the input
    (:func:`local_node`), run by ``run`` (a float32 batch (1, 3, H, W) in, the node's output
    (1, C, H/16, W/16) out: torch in fp32, or the saved OpenVINO model), with the space's
    input handling. ``graph`` is the torch module when it runs in torch (what
    :func:`save_local` exports). Calls are serialised."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        node: str,
        preprocess: Preprocess,
        graph: nn.Module | None = None,
    ) -> None:
        self.run, self.node, self.preprocess, self.graph = run, node, preprocess, graph
        self._lock = threading.Lock()

    @property
    def runtime(self) -> str:
        return "torch" if self.graph is not None else "openvino"

    def map(self, img: PILImage) -> np.ndarray:
        """The local features of ``img`` (RGB, as it is: no resize or crop) as float32
        (C, H, W), each cell's vector of unit length."""
        spec = self.preprocess
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        pixels = (np.asarray(img.convert("RGB"), np.float32) / 255.0 - mean) / std
        return self.map_batch(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]))

    def map_batch(self, batch: np.ndarray) -> np.ndarray:
        """The map of a preprocessed float32 batch of one, (1, 3, H, W): (C, H/16, W/16),
        each cell of unit length."""
        with self._lock:
            out = self.run(batch)[0]
        norms = np.linalg.norm(out, axis=0, keepdims=True)
        return np.asarray(out / np.maximum(norms, 1e-12), np.float32)

    def query_maps(self, img: PILImage, side: int) -> QueryMaps:
        """The maps of query picture ``img`` (see :class:`QueryMaps`)."""
        return QueryMaps(self, img, side)


class QueryMaps:
    """The local maps of a query picture with its shorter side at each of :data:`SCALES` of
    ``side``, as it is or mirrored (``maps(mirrored)``, each made when first asked); none
    for a flat picture (see :func:`flat`), which has no local evidence to give. A tied image
    that the query matched through its mirrored copy view is compared with the mirrored
    maps: a mirrored copy's cells agree with the original's only once mirrored back."""

    def __init__(self, model: LocalModel, img: PILImage, side: int) -> None:
        self._model, self._img, self._side = model, img, side
        self.flat = flat(img)
        self._made: dict[bool, list[np.ndarray]] = {}

    def __call__(self, mirrored: bool = False) -> list[np.ndarray]:
        from PIL import Image, ImageOps

        if self.flat:
            return []
        if mirrored not in self._made:
            img = ImageOps.mirror(self._img) if mirrored else self._img
            maps = []
            for scale in SCALES:
                factor = self._side * scale / min(img.size)
                size = (
                    max(STRIDE * 2, round(img.width * factor)),
                    max(STRIDE * 2, round(img.height * factor)),
                )
                maps.append(self._model.map(img.resize(size, Image.Resampling.BILINEAR)))
            self._made[mirrored] = maps
        return self._made[mirrored]


def flat(img: PILImage) -> bool:
    """Whether ``img`` is (nearly) one colour: the grey levels of a 64 x 64 thumbnail spread
    less than :data:`FLAT_SPREAD` (standard deviation, of 255). Its cells all look alike, so
    they would vote for shifts at random."""
    from PIL import Image

    thumb = np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BILINEAR), np.float32)
    return float(thumb.std()) < FLAT_SPREAD


def local_node(built_model: nn.Module, nodes: Sequence[str], size: int) -> str | None:
    """The node that ends the last block of ``built_model`` whose output is a feature map at
    1/16 of a ``size`` x ``size`` input (a block: a module of one or two name parts, such as
    ``_blocks.10`` or ``layer3``; any node in a model without named blocks), or None when
    it has no such map."""
    import torch

    from .extract.cut import cut, module_outputs

    blocks = {node for name, node in module_outputs(list(nodes)).items() if name.count(".") <= 1}
    graph = cut(built_model, list(nodes))
    with torch.inference_mode():
        outputs = graph(torch.zeros(1, 3, size, size))
    found = None
    for name in nodes:
        out = outputs.get(name)
        if (
            (name in blocks or not blocks)
            and isinstance(out, torch.Tensor)
            and out.ndim == 4
            and out.shape[2] == size // STRIDE
        ):
            found = name
    return found


_models: dict[tuple[Any, ...], LocalModel | None] = {}
_models_lock = threading.Lock()


def local_model(space: SpaceSpec, index_dir: Path | None = None) -> LocalModel | None:
    """The local model of ``space`` (once per process): the one saved among the index files
    in ``index_dir`` when it is usable here (no torch), else the space's model built in torch
    and cut; None when FX cannot trace the model or it has no map at 1/16 of the input."""
    with _models_lock:
        if index_dir is not None:
            saved_key = ("saved", space.fingerprint, str(index_dir))
            if saved_key not in _models:
                _models[saved_key] = _load(folder_for(index_dir, space), space)
            if _models[saved_key] is not None:
                return _models[saved_key]
        key = _torch_key(space)
        if key not in _models:
            _models[key] = _built(space)
        return _models[key]


def built_in_torch(space: SpaceSpec) -> LocalModel | None:
    """The local model of ``space`` this process built in torch (see :func:`local_model`),
    or None when it built none: what :func:`save_local` can export."""
    with _models_lock:
        model = _models.get(_torch_key(space))
    return model if model is not None and model.graph is not None else None


def _torch_key(space: SpaceSpec) -> tuple[str, ...]:
    """What a local model built in torch is made from (not the precision: it runs in fp32)."""
    request = space.request
    return (request.model, request.weights, request.method)


def _built(space: SpaceSpec) -> LocalModel | None:
    import torch

    from .errors import FeatxError
    from .extract.cut import building, cut
    from .extract.extractor import traced_nodes
    from .extract.registry import build

    request = space.request
    try:
        with building():
            built = build(request)
            nodes = traced_nodes(built, request, "copy searches skip their local check")
            node = None if nodes is None else local_node(built.model, nodes, PROBE)
            if node is None:
                return None
            graph = cut(built.model, (node,))
    except FeatxError as err:  # the space's own model is built the same way
        log.warning("no local check for copy searches: %s", err.message.splitlines()[0])
        return None

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: torch.Tensor = graph(torch.from_numpy(batch))[node]
            return np.asarray(out.float().numpy(), np.float32)

    return LocalModel(run, node, space.preprocess, graph)


def folder_for(index_dir: Path, space: SpaceSpec) -> Path:
    """Where the saved local model of ``space`` lives among a library's index files."""
    return index_dir / f"{space.fingerprint}.local"


def saved(space: SpaceSpec, index_dir: Path) -> bool:
    """Whether ``space`` has a local model saved among the index files in ``index_dir`` that
    this OpenVINO release can use."""
    from .extract import query_model

    return query_model.usable(folder_for(index_dir, space), space)


def save_local(model: LocalModel, space: SpaceSpec, index_dir: Path) -> Path | None:
    """Export ``model`` (running in torch) to OpenVINO, any input size, into ``space``'s
    local model folder (replacing one there): checked against torch on a probe picture first
    (a model that disagrees is not saved). Returns the folder when one was written; failures
    are logged, not raised: checks still run in torch."""
    from .extract import query_model

    if model.graph is None or not query_model.enabled():
        return None
    try:
        return _save(model, space, folder_for(index_dir, space))
    except Exception as err:
        log.warning("could not save the local model of space %s: %s", space.fingerprint, err)
        return None


def _save(model: LocalModel, space: SpaceSpec, target: Path) -> Path | None:
    import torch
    from torch import nn

    from .extract import query_model
    from .extract.runtimes import _import_openvino, _no_openvino_telemetry

    assert model.graph is not None
    graph: nn.Module = model.graph
    node = model.node

    class Output(nn.Module):  # a tensor out, not the FX graph's dict
        def __init__(self) -> None:
            super().__init__()
            self.cut = graph

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.cut(batch)[node]
            return out.float()

    openvino = _import_openvino()
    probe = np.random.default_rng(0).standard_normal((1, 3, 192, 272)).astype(np.float32)
    with torch.no_grad(), _no_openvino_telemetry():
        height, width = torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
        exported = torch.export.export(
            Output().eval(), (torch.from_numpy(probe),), dynamic_shapes=({2: height, 3: width},)
        )
        converted = openvino.convert_model(exported)
    expected = model.map_batch(probe)

    def difference(staging: Path) -> float:
        got = LocalModel(_compiled(staging, cache=False), node, space.preprocess).map_batch(probe)
        return float(np.abs(got - expected).max())

    meta = {
        "fingerprint": space.fingerprint,
        "dim": space.dim,  # the space's, as query_model.saved_meta checks
        "node": node,
        "openvino": str(openvino.get_version()),
    }
    found = query_model.save_folder(
        converted, target, meta, difference=difference, tolerance=TOLERANCE, what="local model"
    )
    return None if found is None else target


def _compiled(folder: Path, *, cache: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """The model in ``folder`` compiled for this CPU in fp32 (the compiled blob cached there
    for later processes): a function of a float32 batch."""
    from .extract.query_model import _XML
    from .extract.runtimes import _import_openvino

    core = _import_openvino().Core()
    if cache:
        core.set_property({"CACHE_DIR": str(folder / "compiled")})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    request = core.compile_model(str(folder / _XML), "CPU", config).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[0], dtype=np.float32)

    return run


def _load(folder: Path, space: SpaceSpec) -> LocalModel | None:
    from .extract import query_model

    if not query_model.enabled() or not query_model.usable(folder, space):
        return None
    meta = query_model.saved_meta(folder, space)
    assert meta is not None
    try:
        return LocalModel(_compiled(folder), str(meta["node"]), space.preprocess)
    except Exception as err:
        log.warning("could not load the local model in %s (%s); using torch", folder, err)
        return None


def agreement(query_maps: Sequence[np.ndarray], candidate: np.ndarray) -> float:
    """The best share, over the query's maps (its scales), of its cells (or of the
    candidate's, when the query is the larger map) whose mutual nearest neighbour lies at one
    shift, within a cell: 0 (nothing agrees) to 1 (every cell in place)."""
    return max((_votes(q, candidate) for q in query_maps), default=0.0)


def _votes(query: np.ndarray, candidate: np.ndarray) -> float:
    channels, h, w = query.shape
    height, width = candidate.shape[1:]
    sim = query.reshape(channels, -1).T @ candidate.reshape(channels, -1)
    best_of_query, best_of_candidate = sim.argmax(1), sim.argmax(0)
    cells = np.arange(h * w)
    mutual = best_of_candidate[best_of_query] == cells
    mine, theirs = cells[mutual], best_of_query[mutual]
    if not len(mine):
        return 0.0
    # each shift's votes, with a border of one so that a shift and its neighbours add up
    votes = np.zeros((height + h + 3, width + w + 3))
    np.add.at(votes, (theirs // width - mine // w + h + 1, theirs % width - mine % w + w + 1), 1)
    # a shift and its neighbours: a copy's cells may fall either side of a cell boundary
    near = np.zeros((height + h + 1, width + w + 1))
    for dy in range(3):
        for dx in range(3):
            near += votes[dy : dy + height + h + 1, dx : dx + width + w + 1]
    return float(near.max() / min(h * w, height * width))


def tied(scores: Sequence[float]) -> int:
    """How many of the first results (cosine ``scores``, best first) the local check would
    look at: those within :data:`MARGIN` of the first, at most :data:`SHORT_LIST`; fewer
    than 2 means there is nothing to tell apart."""
    return sum(1 for s in scores[:SHORT_LIST] if s >= scores[0] - MARGIN) if scores else 0


def rerank(
    scores: Sequence[float],
    query_maps: Callable[[bool], Sequence[np.ndarray]],
    candidate_map: Callable[[int], tuple[np.ndarray, bool] | None],
) -> list[int]:
    """The order (positions into ``scores``, cosine scores best first) after the local
    check: the results within :data:`MARGIN` of the first, at most :data:`SHORT_LIST`, are
    ordered by their score plus :data:`WEIGHT` times their :func:`agreement` with the
    query. ``candidate_map(position)`` gives a result's map and whether the query matched it
    through its mirrored view, or None when it cannot be read (it then keeps its score);
    ``query_maps(mirrored)`` the query's maps (see :class:`QueryMaps`). The rest keep their
    places, and all do for a query without maps (a flat picture)."""
    order = list(range(len(scores)))
    count = tied(scores)
    if count < 2 or not query_maps(False):
        return order
    checked = {}
    for position in order[:count]:
        found = candidate_map(position)
        bonus = 0.0
        if found is not None:
            candidate, mirrored = found
            bonus = WEIGHT * agreement(query_maps(mirrored), candidate)
        checked[position] = scores[position] + bonus
    return sorted(order[:count], key=lambda p: -checked[p]) + order[count:]
