#!/usr/bin/env python
"""Who should compute a bf16 space on the CPU: torch or OpenVINO? Their forwards, interleaved.

For each model, the bf16 space's graph is built twice, computed by torch (channels_last, the
plain graph, as ``--runtime torch`` makes it) and by OpenVINO (exported once, compiled with
bf16 inference precision, as a new bf16 space on the CPU is computed), and both embed the
same batch of random input in alternating rounds, so that a busy machine slows both alike.
Printed per model: the best images/s of each over the rounds and their ratio, and the cosine
between the two engines' vectors (mean, min) and between each and fp32 torch.

Usage:
    .venv/bin/python scripts/bench_engines.py          # resnet50:none and efficientnet_lite0
    .venv/bin/python scripts/bench_engines.py --models resnet50:none --rounds 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from synthetic_library import cpu_model


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = np.sum(a.astype(np.float64) * b, axis=1)
    return float(cos.mean()), float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50:none,efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    from featx_search import Compute, ExtractorSpec
    from featx_search.extract import load_extractor

    print(f"CPU: {cpu_model()}; batch {args.batch_size}, best of {args.rounds} rounds")
    print(
        f"{'model':<22}{'torch img/s':>12}{'openvino img/s':>15}{'ov / torch':>11}"
        f"{'cos ov-torch':>14}{'cos torch-fp32':>16}{'cos ov-fp32':>13}"
    )
    for item in args.models.split(","):
        name, _, weights = item.partition(":")
        spec = ExtractorSpec(model=name, weights=weights or "DEFAULT", precision="bf16")
        torch_cpu = Compute(device="cpu", runtime="torch", freeze="off")
        engines = {
            "torch": load_extractor(spec, torch_cpu),
            "openvino": load_extractor(spec, Compute(device="cpu"), "openvino"),
        }
        fp32 = load_extractor(
            ExtractorSpec(model=name, weights=weights or "DEFAULT", precision="fp32"), torch_cpu
        )
        size = fp32.space.preprocess.crop
        batch = np.random.default_rng(0).standard_normal((args.batch_size, 3, size, size))
        batch = batch.astype(np.float32)
        vectors = {key: model.embed(batch) for key, model in engines.items()}  # warm up
        exact = fp32.embed(batch)
        best = dict.fromkeys(engines, 0.0)
        for _ in range(args.rounds):
            for key, model in engines.items():
                started = time.perf_counter()
                model.embed(batch)
                best[key] = max(best[key], args.batch_size / (time.perf_counter() - started))
        both = cosines(vectors["openvino"], vectors["torch"])
        to_torch = cosines(vectors["torch"], exact)
        to_ov = cosines(vectors["openvino"], exact)
        print(
            f"{item:<22}{best['torch']:12.1f}{best['openvino']:15.1f}"
            f"{best['openvino'] / best['torch']:11.2f}{both[0]:9.4f}/{both[1]:.3f}"
            f"{to_torch[0]:10.4f}/{to_torch[1]:.3f}{to_ov[0]:8.4f}/{to_ov[1]:.3f}"
        )


if __name__ == "__main__":
    main()
