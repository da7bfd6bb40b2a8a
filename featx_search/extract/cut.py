"""The FX cut: node names, the default layer, and graphs that end at the chosen nodes.

Also the process-wide lock that every model build, trace and run goes through:
:func:`torch.fx.symbolic_trace` patches ``nn.Module.__call__`` and ``__getattr__`` for the whole
process while it traces, so a second trace at the same time fails (``CURRENT_PATCHER is None``)
and a model running meanwhile in another thread returns FX proxies instead of tensors.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import LayerError, ModelError

if TYPE_CHECKING:
    from torch import fx, nn

# Function names that make up a classifier head; the default layer is the last graph node
# before a run of these (and of head modules, see default_layer) at the end of the graph.
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


class _ModelLock:
    """Building and tracing models (exclusive, re-entrant) against running them (shared).

    The thread that holds it exclusively may also run models. Waiting builders go first, so a
    stream of batches cannot keep a trace waiting for ever. Only this package's code takes it;
    other code in the process that runs torch models while a model is traced is not covered.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._runners = 0
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._waiting += 1
                try:
                    while self._owner is not None or self._runners:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            if self._owner == threading.get_ident():
                counted = False
            else:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._runners += 1
                counted = True
        try:
            yield
        finally:
            if counted:
                with self._cond:
                    self._runners -= 1
                    if not self._runners:
                        self._cond.notify_all()


MODEL_LOCK = _ModelLock()


def building() -> contextlib.AbstractContextManager[None]:
    """Hold the process-wide model lock exclusively: for building and tracing models."""
    return MODEL_LOCK.exclusive()


def running() -> contextlib.AbstractContextManager[None]:
    """Hold the process-wide model lock shared: for running models (no trace meanwhile)."""
    return MODEL_LOCK.shared()


@contextmanager
def quiet_fx() -> Iterator[None]:
    """Silence the warning FX gives when train and eval graphs differ; we only use eval.
    :func:`warnings.catch_warnings` is not thread-safe: hold :func:`building` around it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*nodes obtained by tracing the model")
        yield


def node_names(model: nn.Module, model_name: str) -> list[str]:
    """The FX node names of ``model``'s eval graph, in execution order. Raises
    :class:`ModelError` when FX cannot trace it."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        with building(), quiet_fx():
            _, eval_nodes = get_graph_node_names(model)
    except Exception as err:  # FX raises whatever the traced code raises
        raise ModelError(
            f"model {model_name} cannot be traced with torch.fx: {type(err).__name__}: {err}",
            hint="use method auto or hook to read modules with forward hooks instead",
        ) from err
    return list(eval_nodes)


def cut(model: nn.Module, nodes: tuple[str, ...] | list[str]) -> fx.GraphModule:
    """``model`` rewritten to end at ``nodes``: calling it on a batch returns {node: output}
    and computes nothing after the deepest node."""
    from torchvision.models.feature_extraction import create_feature_extractor

    with building(), quiet_fx():
        graph: fx.GraphModule = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    return graph.eval()


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
    raise ModelError("cannot find a default layer in this model", hint="name one in layers")


def module_outputs(nodes: list[str]) -> dict[str, str]:
    """Each module that holds FX nodes (``layer4``, ``layer4.1``) mapped to its last node: the
    node :func:`create_feature_extractor` returns when given the module's name."""
    last: dict[str, str] = {}
    for node in nodes:
        parts = node.split(".")
        for depth in range(1, len(parts)):
            last[".".join(parts[:depth])] = node
    known = set(nodes)
    return {name: node for name, node in last.items() if name not in known}


def check_layers(layers: tuple[str, ...], nodes: list[str], model_name: str) -> None:
    """Raise :class:`LayerError` (with the closest names) unless each layer is a node or a
    module of nodes, and no two of them are the same node."""
    known = set(nodes)
    modules = module_outputs(nodes)
    seen: dict[str, str] = {}
    for layer in layers:
        node = layer if layer in known else modules.get(layer)
        if node is None:
            close = difflib.get_close_matches(layer, [*nodes, *modules], n=5, cutoff=0.5)
            raise LayerError(
                f"model {model_name} has no layer {layer!r}"
                + (f"; closest: {', '.join(close)}" if close else ""),
                hint=f"run `featx-search layers {model_name}` to list every layer",
                param="layers",
            )
        if node in seen:
            # create_feature_extractor would silently give one of them an earlier node.
            raise LayerError(
                f"layers {seen[node]!r} and {layer!r} are the same node {node!r}",
                hint="give each layer once",
                param="layers",
            )
        seen[node] = layer
