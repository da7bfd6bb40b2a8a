"""Copy mode's local check: when a copy search by a picture ends in a near tie, the tied
images are told apart by local evidence, as copy-detection systems re-rank their short list.

A 40 % crop of a page of text, saved at JPEG quality 10, finds every other page of the same
text at about the same score as its own: the vectors say "text", not "this text". Local
features can tell them apart. The space's model is cut by FX at the end of its last block at
1/16 of the input (``_blocks.10.add`` for efficientnet_lite0, ``layer3`` for a ResNet): each
cell of that map describes a patch of about 16 x 16 pixels. The query is mapped at a few
scales, as it is and mirrored, each candidate at the copy views' size
(:data:`featx_search.copies.SIDE`), and the cells that are
each other's nearest neighbours (mutual) vote for the shift that takes the query into the
candidate. A copy puts most votes on one shift (a geometric check: its cells agree in place,
not only in kind); another page of the same text scatters them. :func:`agreement` is the
best share of the query's cells that agree on one shift (within a cell), over the scales.

:func:`rerank` adds :data:`WEIGHT` times that share to the score of each image within
:data:`MARGIN` of the best one of the short list, and orders them by the sum; the scores
reported stay the cosine scores. Clear wins (the original far ahead) are left alone, so the
check costs nothing there; where it runs, it decodes at most :data:`SHORT_LIST` images.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import ExtractorSpec, Preprocess

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image as PILImage
    from torch import nn

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


@dataclass(frozen=True)
class LocalModel:
    """A model cut at its last node at 1/16 of the input (:func:`local_node`), in fp32 on the
    CPU, and the input handling of its space. :meth:`map` is thread-safe (no grad state)."""

    graph: nn.Module
    node: str
    preprocess: Preprocess

    def map(self, img: PILImage) -> torch.Tensor:
        """The local features of ``img`` (RGB, as it is: no resize or crop) as float32
        (C, H, W), each cell's vector of unit length."""
        import torch

        spec = self.preprocess
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        pixels = (np.asarray(img.convert("RGB"), np.float32) / 255.0 - mean) / std
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]))
        with torch.inference_mode():
            out = self.graph(batch)[self.node][0].float()
        return torch.nn.functional.normalize(out, dim=0)

    def query_maps(self, img: PILImage, side: int) -> list[torch.Tensor]:
        """The maps of ``img`` and of its mirror image (a mirrored copy is a copy too) with
        the shorter side at each of :data:`SCALES` of ``side``; none for a flat picture (see
        :func:`flat`), which has no local evidence to give."""
        from PIL import Image, ImageOps

        if flat(img):
            return []
        maps = []
        for scale in SCALES:
            factor = side * scale / min(img.size)
            size = (
                max(STRIDE * 2, round(img.width * factor)),
                max(STRIDE * 2, round(img.height * factor)),
            )
            resized = img.resize(size, Image.Resampling.BILINEAR)
            maps += [self.map(resized), self.map(ImageOps.mirror(resized))]
        return maps


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


_models: dict[tuple[str, str, str], LocalModel | None] = {}
_models_lock = threading.Lock()


def local_model(request: ExtractorSpec) -> LocalModel | None:
    """The local model of the space made from ``request`` (built once per process), or None
    when its model cannot be traced by FX or has no map at 1/16 of the input."""
    from .errors import FeatxError
    from .extract.cut import building, cut
    from .extract.extractor import traced_nodes
    from .extract.registry import build

    key = (request.model, request.weights, request.method)  # what the model is built from
    with _models_lock:
        if key in _models:
            return _models[key]
        model = None
        try:
            with building():
                built = build(request)
                nodes = traced_nodes(built, request, "copy searches skip their local check")
                node = None if nodes is None else local_node(built.model, nodes, PROBE)
                if node is not None:
                    model = LocalModel(cut(built.model, (node,)), node, built.preprocess)
        except FeatxError as err:  # the space's own model is built the same way
            log.warning("no local check for copy searches: %s", err.message.splitlines()[0])
        _models[key] = model
        return model


def agreement(query_maps: Sequence[torch.Tensor], candidate: torch.Tensor) -> float:
    """The best share, over the query's maps (scales, mirrored), of its cells (or of the
    candidate's, when the query is the larger map) whose mutual nearest neighbour lies at one
    shift, within a cell: 0 (nothing agrees) to 1 (every cell in place)."""
    return max((_votes(q, candidate) for q in query_maps), default=0.0)


def _votes(query: torch.Tensor, candidate: torch.Tensor) -> float:
    import torch

    channels, h, w = query.shape
    height, width = candidate.shape[1:]
    sim = query.reshape(channels, -1).T @ candidate.reshape(channels, -1)
    best_of_query, best_of_candidate = sim.argmax(1), sim.argmax(0)
    cells = torch.arange(h * w)
    mutual = best_of_candidate[best_of_query] == cells
    mine, theirs = cells[mutual], best_of_query[mutual]
    if not len(mine):
        return 0.0
    dy = theirs // width - mine // w + h
    dx = theirs % width - mine % w + w
    votes = torch.zeros(height + h + 1, width + w + 1)
    votes.index_put_((dy, dx), torch.ones(len(mine)), accumulate=True)
    # a shift and its neighbours: a copy's cells may fall either side of a cell boundary
    near = torch.nn.functional.avg_pool2d(votes[None, None], 3, 1, 1)[0, 0] * 9
    return float(near.max()) / min(h * w, height * width)


def tied(scores: Sequence[float]) -> int:
    """How many of the first results (cosine ``scores``, best first) the local check would
    look at: those within :data:`MARGIN` of the first, at most :data:`SHORT_LIST`; fewer
    than 2 means there is nothing to tell apart."""
    return sum(1 for s in scores[:SHORT_LIST] if s >= scores[0] - MARGIN) if scores else 0


def rerank(
    scores: Sequence[float],
    query_maps: Sequence[torch.Tensor],
    candidate_map: Callable[[int], torch.Tensor | None],
) -> list[int]:
    """The order (positions into ``scores``, cosine scores best first) after the local
    check: the results within :data:`MARGIN` of the first, at most :data:`SHORT_LIST`, are
    ordered by their score plus :data:`WEIGHT` times their :func:`agreement` with the query;
    ``candidate_map(position)`` gives a result's map, or None when it cannot be read (it then
    keeps its score). The rest keep their places, and all do without ``query_maps`` (a
    flat query)."""
    order = list(range(len(scores)))
    count = tied(scores)
    if count < 2 or not query_maps:
        return order
    checked = {}
    for position in order[:count]:
        found = candidate_map(position)
        bonus = 0.0 if found is None else WEIGHT * agreement(query_maps, found)
        checked[position] = scores[position] + bonus
    return sorted(order[:count], key=lambda p: -checked[p]) + order[count:]
