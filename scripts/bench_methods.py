#!/usr/bin/env python
"""Cost of reading a layer with FX, a forward hook, or nn.Sequential truncation.

For each model (random init, no download) and a few nodes from shallow to deep, prints the
ms per image of each method and their ratios to the hook, measured side by side in one run
(the methods take turns within every repetition, so machine noise hits them alike). FX and
truncation stop at the node; a hook pays for the whole network wherever the node is. Input
is random: the cost does not depend on the pixels.

Usage: .venv/bin/python scripts/bench_methods.py [--reps 5] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

# This checkout first: its featx_search and the reference methods kept with its tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from featx_search.extract.weights import seeded
from tests.reference_methods import Chain

NODES = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4", "avgpool"],
    "mobilenet_v3_small": ["features.3", "features.6", "features.9", "features.12", "avgpool"],
    "efficientnet_b0": ["features.2", "features.4", "features.6", "features.8", "avgpool"],
}


def hooked(model: nn.Module, node: str) -> Callable[[torch.Tensor], torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.get_submodule(node).register_forward_hook(lambda _m, _a, out: seen.append(out))

    def run(x: torch.Tensor) -> torch.Tensor:
        seen.clear()
        model(x)
        return seen[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, 224, 224)
    print(f"batch {args.batch} at 224x224, {args.threads} thread(s), best of {args.reps} reps")
    print(
        f"{'model':<20} {'node':<12} {'fx ms':>7} {'hook ms':>8} {'trunc ms':>9}"
        "  fx/hook  trunc/hook"
    )
    for name, nodes in NODES.items():
        with seeded():
            model = torchvision.models.get_model(name, weights=None).eval()
        chain = Chain(model)
        for node in nodes:
            fresh = [model, torchvision.models.get_model(name, weights=None).eval()]
            methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
                "fx": create_feature_extractor(model, return_nodes={node: "out"}).eval(),
                "hook": hooked(fresh[1], node),
                "trunc": chain.truncate(node),
            }
            best = dict.fromkeys(methods, float("inf"))
            with torch.inference_mode():
                for run in methods.values():
                    run(x)  # warm up
                for _ in range(args.reps):
                    for key, run in methods.items():
                        start = time.perf_counter()
                        run(x)
                        best[key] = min(best[key], time.perf_counter() - start)
            ms = {k: 1000 * v / args.batch for k, v in best.items()}
            print(
                f"{name:<20} {node:<12} {ms['fx']:7.2f} {ms['hook']:8.2f} {ms['trunc']:9.2f}"
                f"  {ms['fx'] / ms['hook']:7.2f}  {ms['trunc'] / ms['hook']:10.2f}"
            )


if __name__ == "__main__":
    main()
