"""Reference extraction methods: ``nn.Sequential`` truncation and ``nn.Identity`` replacement.

These are the two brittle ways of the source article, kept as references for tests (FX must
give the same features) and as baselines for ``scripts/bench_methods.py``; they are not user
options. Both only apply where a model is a chain: at a top-level child of the model while
``forward`` only passes each child's output to the next, and, inside an ``nn.Sequential``
child of that chain, at each of its children (recursively).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from featx_search.errors import LayerError

if TYPE_CHECKING:
    from torch import nn

# Functions and methods that may follow the chain at the end of ``forward`` and still let
# nn.Identity replacement return the chain's output (flattened).
_RESHAPES = {"flatten", "view", "reshape"}


def _top_chain(model: nn.Module) -> tuple[list[str], bool]:
    """The top-level children that ``forward`` applies one after the other from the input,
    and whether what follows them is only more children and reshapes (so that replacing the
    rest with ``nn.Identity`` returns the last chained output, flattened)."""
    import torch
    from torch import fx

    children = {name for name, _ in model.named_children()}

    class TopLevel(fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return qualname in children

    graph = TopLevel().trace(model)
    chain: list[str] = []
    previous: fx.Node | None = None
    nodes = list(graph.nodes)
    rest = len(nodes)
    for i, node in enumerate(nodes):
        rest = i
        if node.op == "placeholder":
            if previous is not None:
                break
            previous = node
            continue
        if (
            node.op == "call_module"
            and previous is not None
            and node.args == (previous,)
            and not node.kwargs
            and len(previous.users) == 1
            and str(node.target) not in chain
        ):
            chain.append(str(node.target))
            previous = node
            continue
        break
    else:
        rest = len(nodes)
    tail_ok = all(
        n.op in ("call_module", "output")
        or (n.op in ("call_function", "call_method") and _name(n.target) in _RESHAPES)
        for n in nodes[rest:]
    )
    return chain, tail_ok


def _name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


class Chain:
    """A model seen as a chain of modules, with the points where the reference methods apply.

    ``points`` lists module names in order: each top-level child that ``forward`` applies to
    the previous one's output (from the input on), and inside each ``nn.Sequential`` among
    them, each of its children (recursively).
    """

    def __init__(self, model: nn.Module) -> None:
        from torch import nn

        self.model = model
        chain, self._tail_ok = _top_chain(model)
        registered = [name for name, _ in model.named_children()]
        self.points: list[str] = []

        def inner(prefix: str, module: nn.Module) -> None:
            self.points.append(prefix)
            if isinstance(module, nn.Sequential):
                for name, child in module.named_children():
                    inner(f"{prefix}.{name}", child)

        for i, name in enumerate(chain):
            if registered[: i + 1] != chain[: i + 1]:
                break  # slicing children() would pick up a module forward does not run here
            inner(name, model.get_submodule(name))

    def _check(self, point: str) -> None:
        if point not in self.points:
            raise LayerError(
                f"{point!r} is not a point of the model's chain of modules",
                hint="see Chain(model).points",
            )

    def truncate(self, point: str) -> nn.Module:
        """``nn.Sequential`` of the chained modules up to and including ``point`` (slicing
        ``children()`` by index, the way the source article does it)."""
        from torch import nn

        self._check(point)

        def upto(container: nn.Module, parts: list[str]) -> list[nn.Module]:
            out: list[nn.Module] = []
            for name, child in container.named_children():
                if name == parts[0]:
                    out.append(child if len(parts) == 1 else nn.Sequential(*upto(child, parts[1:])))
                    return out
                out.append(child)
            raise AssertionError("unreachable: the point was checked")

        return nn.Sequential(*upto(self.model, point.split("."))).eval()

    def identity_tail(self, point: str) -> nn.Module:
        """A copy of the model whose modules after ``point`` (at every level of the chain) are
        ``nn.Identity``, so calling it returns ``point``'s output, flattened when ``forward``
        flattens. Raises :class:`LayerError` when ``forward`` does more than reshape after the
        chain, where replacement cannot give the point's output."""
        from torch import nn

        self._check(point)
        if not self._tail_ok:
            raise LayerError(
                "the model's forward does more than chain modules and reshape",
                hint="nn.Identity replacement cannot read this model; use FX or hooks",
            )
        headless = copy.deepcopy(self.model)
        container: nn.Module = headless
        for part in point.split("."):
            after = False
            for name, _ in list(container.named_children()):
                if after:
                    setattr(container, name, nn.Identity())
                after = after or name == part
            container = container.get_submodule(part)
        return headless.eval()
