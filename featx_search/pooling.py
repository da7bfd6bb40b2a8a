"""Pure tensor functions that turn feature maps into L2-normalised vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import POOLS
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

GEM_P = 3.0
_EPS = 1e-6


def pool(x: torch.Tensor, method: str) -> torch.Tensor:
    """Reduce one layer's output to (B, C).

    4-D maps (B, C, H, W) are pooled over H and W, 3-D token sequences (B, N, C) over N,
    2-D outputs are returned as they are. ``method`` is ``avg``, ``max`` or ``gem`` (p = 3).
    """
    import torch

    if method not in POOLS:
        raise ConfigError(f"unknown pooling {method!r}", hint=f"choose one of: {', '.join(POOLS)}")
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        dims: tuple[int, ...] = (2, 3)
    elif x.dim() == 3:
        dims = (1,)
    else:
        raise ConfigError(
            f"cannot pool a layer output of shape {tuple(x.shape)}",
            hint="choose a layer whose output is 2-D, 3-D or 4-D",
        )
    if method == "avg":
        return x.mean(dim=dims)
    if method == "max":
        return x.amax(dim=dims)
    return torch.clamp(x, min=_EPS).pow(GEM_P).mean(dim=dims).pow(1.0 / GEM_P)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale each row of (B, D) to unit length (zero rows stay zero)."""
    import torch

    return torch.nn.functional.normalize(x, p=2.0, dim=1, eps=1e-12)


def combine(outputs: Sequence[torch.Tensor], method: str) -> torch.Tensor:
    """Pool each layer, L2-normalise it, concatenate, and L2-normalise the result.

    Returns float32 (B, sum of channels).
    """
    import torch

    parts = [l2_normalize(pool(out, method).flatten(1).float()) for out in outputs]
    return l2_normalize(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
