"""Small models for fast tests, importable as ``tests.models:NAME`` factories."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn() -> nn.Module:
    """A 4-layer CNN with a classifier head: default layer ``pool``, 32-d vectors."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class _Gated(nn.Module):
    """A CNN whose forward branches on a tensor value, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if x.mean() >= 0:  # always true after a ReLU; FX fails on the data-dependent branch
            x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def untraceable_cnn() -> nn.Module:
    """A tiny CNN with data-dependent control flow: only forward hooks can read its layers."""
    return _Gated()


class _Slow(_Gated):
    """The untraceable CNN (run through forward hooks, so its Python runs per batch) taking
    ``$FEATX_TEST_SLOW`` seconds (default 0.1) per batch, and waiting while the file
    ``$FEATX_TEST_GATE`` exists: index runs that overlap in time, and a run to kill."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time

        time.sleep(float(os.environ.get("FEATX_TEST_SLOW", "0.1")))
        gate = os.environ.get("FEATX_TEST_GATE")
        while gate and os.path.exists(gate):  # held while the test keeps the file
            time.sleep(0.05)
        return super().forward(x)


def slow_cnn() -> nn.Module:
    """:func:`untraceable_cnn`, slowed down (see :class:`_Slow`)."""
    return _Slow()


def strided_cnn() -> nn.Module:
    """A CNN that halves its map five times (1/32), with a map at 1/16 of the input after
    ``7`` (the fourth ReLU): a model the copy searches' local check can cut."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (16, 24, 32, 48, 64):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
