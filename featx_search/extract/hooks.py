"""Forward hooks: reading named modules of a model FX cannot trace (the whole model runs)."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LayerError, ModelError
from .cut import default_layer

if TYPE_CHECKING:
    import torch
    from torch import nn


class HookGraph:
    """Forward hooks on named submodules: calling it runs the whole model on a batch and
    returns {name: that module's output}, like an FX feature extractor does. Calls from several
    threads at once each get their own outputs (hooks run in the calling thread)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        self.model = model
        self._names = names
        self._local = threading.local()
        for name in names:
            model.get_submodule(name).register_forward_hook(self._keeper(name))

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _args: object, output: object) -> None:
            seen: dict[str, torch.Tensor] | None = getattr(self._local, "seen", None)
            if seen is not None:
                seen[name] = first_tensor(output, name)

        return keep

    def eval(self) -> HookGraph:
        self.model.eval()
        return self

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        self._local.seen = seen
        try:
            self.model(batch)
            return {name: seen[name] for name in self._names}
        finally:
            self._local.seen = None


def first_tensor(output: object, name: str) -> torch.Tensor:
    """A module's output, or the first tensor of a tuple or list it returns."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerError(
        f"module {name!r} returns {type(output).__name__}, not a tensor",
        hint="choose a module that outputs a feature map (see list_layers)",
        param="layers",
    )


@dataclass(frozen=True)
class Called:
    """A submodule seen by a hooked dry run: its output shape (None if not a tensor), how
    often it ran, and whether it has children."""

    shape: tuple[int, ...] | None
    calls: int
    leaf: bool


def called_modules(model: nn.Module, size: int) -> dict[str, Called]:
    """Every submodule that runs on one blank image, in the order each first finishes."""
    import torch

    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    handles = []

    def keeper(name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _args: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        return keep

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(keeper(name)))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
    except Exception as err:  # whatever the model's own code raises
        raise ModelError(
            f"model cannot run on a blank {size}x{size} image: {type(err).__name__}: {err}",
            hint="the model must take a (B, 3, H, W) float batch",
        ) from err
    finally:
        for handle in handles:
            handle.remove()
    kids = {name: any(True for _ in m.children()) for name, m in model.named_modules()}
    return {name: Called(shapes[name], calls[name], not kids[name]) for name in calls}


def default_module(model: nn.Module, modules: dict[str, Called]) -> str:
    """The module that feeds the classifier, among the leaf modules that ran."""
    leaves = [name for name, called in modules.items() if called.leaf]
    return default_layer(model, leaves)


def check_modules(layers: tuple[str, ...], modules: dict[str, Called], model_name: str) -> None:
    """Raise :class:`LayerError` unless each layer is a module that runs once per image."""
    for layer in layers:
        called = modules.get(layer)
        if called is None:
            close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.5)
            raise LayerError(
                f"model {model_name} has no module {layer!r} that runs (forward hooks read "
                "modules, not FX nodes)" + (f"; closest: {', '.join(close)}" if close else ""),
                hint=f"run `featx-search layers {model_name} --method hook` to list modules",
                param="layers",
            )
        if called.calls != 1:
            raise LayerError(
                f"module {layer!r} of {model_name} runs {called.calls} times per image, so a "
                "hook cannot tell which output to read",
                hint="choose a module that runs once",
                param="layers",
            )
