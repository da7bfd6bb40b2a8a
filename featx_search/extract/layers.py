"""Layer listing: every FX node (or hooked module) of a model with its shape and cost."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..config import ExtractorSpec
from ..errors import LayerError
from .cut import building, cut, default_layer, module_outputs
from .extractor import traced_nodes
from .hooks import called_modules, default_module
from .registry import Built, build


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


def list_layers(spec: ExtractorSpec, *, pattern: str | None = None) -> list[Layer]:
    """Every FX node of ``spec.model`` (eval graph, in execution order) with its output shape
    for one image and the cost of extracting up to it, from a dry run on a blank input; the
    default layer is marked. Each module that holds nodes (e.g. ``layer4``) follows its last
    node, whose output it shares.

    With ``method="hook"``, or ``auto`` on a model FX cannot trace, the rows are the modules
    that run, in the order they finish, each with cost 1.0. Holds the process-wide model lock
    while it builds, traces and runs the model.

    ``pattern`` keeps the names that contain it, or match it as a glob when it holds ``*``,
    ``?`` or ``[``; one that matches nothing raises :class:`LayerError`. Building the model
    may raise :class:`ModelError` / :class:`WeightsError`.
    """
    rows = _all_layers(spec)
    if pattern is None:
        return rows
    glob = any(c in pattern for c in "*?[")
    kept = [
        r for r in rows if (fnmatch.fnmatchcase(r.name, pattern) if glob else pattern in r.name)
    ]
    if not kept:
        raise LayerError(
            f"no layer of {spec.model} matches pattern {pattern!r}",
            hint="list the layers without a pattern to see every name",
        )
    return kept


def _all_layers(spec: ExtractorSpec) -> list[Layer]:
    with building():
        built = build(spec)
        nodes = traced_nodes(built, spec, "listing modules for forward hooks instead")
        if nodes is not None:
            return _fx_layers(built, nodes)
        modules = called_modules(built.model, built.preprocess.crop)
    default = default_module(built.model, modules)
    return [
        Layer(name, called.shape, name == default, 1.0)
        for name, called in modules.items()
        if called.calls == 1
    ]


def _fx_layers(built: Built, nodes: list[str]) -> list[Layer]:
    import torch
    from torch.fx import Interpreter, Node
    from torch.utils.flop_counter import FlopCounterMode

    default = default_layer(built.model, nodes)
    ends: dict[str, list[str]] = {}
    for module, last in module_outputs(nodes).items():
        ends.setdefault(last, []).append(module)
    graph = cut(built.model, nodes)
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
