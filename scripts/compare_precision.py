#!/usr/bin/env python
"""Do fp32 and bf16 (or fp16) vectors agree closely enough to share a space?

For each model, every image is embedded twice on the CPU, once per precision: fp32 in torch,
the low precision by ``--engine`` (``openvino``, the default: what a new bf16 space on the CPU
is computed by; ``torch``: torch's bf16, the same graph, layout and micro-batch as fp32).
Per model it prints:

- cosine between an image's two vectors: mean and minimum;
- top-10 overlap: each image as a query among all the others, the share of its ten nearest
  neighbours in fp32 that it keeps when its query vector is the low-precision one and the
  stored vectors are fp32 ("mixed": a space indexed on one machine and queried on another)
  and when both sides are low-precision ("low": a whole space indexed in it); mean and the
  worst query;
- with a labelled folder (one subfolder per class, e.g. from ``scripts/make_eval_set.py``),
  `eval`'s class-retrieval mAP and P@1 with fp32 vectors, low-precision vectors, and
  low-precision queries against fp32 vectors.

Models: the built-in ones (efficientnet_lite0 with its packaged weights), and torchvision
models with a seeded random initialisation (``--models``; random-init features are closer to
each other than trained ones, which makes neighbour order more fragile, so they are a hard
case). Without a folder, ``--synthetic N`` smooth random images are used (no labels).

Usage:
    .venv/bin/python scripts/compare_precision.py eval-data/tiles
    .venv/bin/python scripts/compare_precision.py eval-data/tiles --engine torch
    .venv/bin/python scripts/compare_precision.py --synthetic 48 --models efficientnet_lite0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODELS = "efficientnet_lite0,resnet50:none,mobilenet_v3_large:none,convnext_tiny:none"


def synthetic(n: int, size: int = 256) -> list[object]:
    """``n`` smooth random RGB images (PIL), seeded: blurred noise plus a few shapes."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, 120, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=color)
        images.append(img.filter(ImageFilter.GaussianBlur(1.5)))
    return images


def top10(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """The ten nearest stored rows of each query (N, 10), the query itself excluded."""
    sims = queries.astype(np.float64) @ stored.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :10]


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="images (subfolders: classes)")
    parser.add_argument("--synthetic", type=int, default=48, help="images when no folder")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="name[:weights],...")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--engine", default="openvino", choices=("openvino", "torch"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from featx_search import Compute, ExtractorSpec
    from featx_search.compute import native_precisions
    from featx_search.evaluation import labelled_images, retrieval_scores
    from featx_search.extract import load_extractor
    from featx_search.images import load_rgb, preprocess

    labels: list[str] | None = None
    if args.folder is not None:
        rows = labelled_images(args.folder)
        images = [load_rgb(p, min_side=256) for p, _ in rows]
        labels = [label for _, label in rows]
        source = f"{len(images)} images in {len({*labels})} classes from {args.folder}"
    else:
        images = synthetic(args.synthetic)
        source = f"{len(images)} synthetic images"
    low_name = args.precision
    native = native_precisions("cpu")
    print(
        f"{source}; CPU native precisions: {', '.join(native)}"
        + ("" if low_name in native else f" ({low_name} emulated: slow)"),
        file=sys.stderr,
    )
    compute = Compute(device="cpu", freeze="off", runtime="torch")
    head = (
        f"{'model':<22}{'dim':>5}{'cos mean':>10}{'cos min':>9}{'top10 mixed':>12}"
        f"{'worst':>6}{'top10 low':>10}{'worst':>6}"
    )
    if labels is not None:
        head += f"{'mAP fp32':>9}{'mAP low':>8}{'mAP mix':>8}{'P@1 fp32':>9}{'P@1 low':>8}"
        head += f"{'P@1 mix':>8}"
    lines = [head]
    for item in args.models.split(","):
        name, _, weights = item.partition(":")
        started = time.perf_counter()
        vectors = {}
        for precision in ("fp32", low_name):
            spec = ExtractorSpec(model=name, weights=weights or "DEFAULT", precision=precision)
            low = precision != "fp32" and args.engine == "openvino"
            extractor = load_extractor(
                spec,
                Compute(device="cpu", runtime="openvino") if low else compute,
                "openvino" if low else "torch",
            )
            pre = extractor.space.preprocess
            inputs = np.stack([preprocess(img, pre) for img in images])
            vectors[precision] = np.concatenate(
                [
                    extractor.embed(inputs[i : i + args.batch_size])
                    for i in range(0, len(inputs), args.batch_size)
                ]
            )
            dim = extractor.space.dim
            del extractor
        exact, low = vectors["fp32"], vectors[low_name]
        cos = np.sum(exact.astype(np.float64) * low, axis=1)
        want = top10(exact, exact)
        mixed = overlap(want, top10(low, exact))
        alone = overlap(want, top10(low, low))
        line = (
            f"{item:<22}{dim:5d}{cos.mean():10.5f}{cos.min():9.5f}{mixed.mean():12.3f}"
            f"{mixed.min():6.1f}{alone.mean():10.3f}{alone.min():6.1f}"
        )
        if labels is not None:
            map_e, p1_e, *_ = retrieval_scores(exact, labels)
            map_l, p1_l, *_ = retrieval_scores(low, labels)
            # Low-precision queries against fp32 stored vectors: one mixed matrix.
            map_m, p1_m = _mixed_scores(low, exact, labels)
            line += f"{map_e:9.3f}{map_l:8.3f}{map_m:8.3f}{p1_e:9.3f}{p1_l:8.3f}{p1_m:8.3f}"
        lines.append(line)
        print(f"  {item}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"\nfp32 (torch) against {low_name} ({args.engine}) on the CPU\n" + "\n".join(lines))


def _mixed_scores(
    queries: np.ndarray, stored: np.ndarray, labels: list[str]
) -> tuple[float, float]:
    """mAP and P@1 of leave-one-out retrieval with ``queries`` against ``stored`` rows."""
    labels_ = np.asarray(labels)
    sims = queries.astype(np.float64) @ stored.T.astype(np.float64)
    aps, p1s = [], []
    for i in range(len(queries)):
        others = np.delete(np.arange(len(stored)), i)
        order = others[np.argsort(-sims[i, others], kind="stable")]
        hits = labels_[order] == labels_[i]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        p1s.append(float(hits[0]))
    return float(np.mean(aps)), float(np.mean(p1s))


if __name__ == "__main__":
    main()
