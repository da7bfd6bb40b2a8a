"""Small models for fast tests, importable as ``tests.models:NAME`` factories."""

from __future__ import annotations

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
