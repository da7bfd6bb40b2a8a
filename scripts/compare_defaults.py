#!/usr/bin/env python
"""Copy detection with the default efficientnet_lite0 settings against a plain pipeline.

For every photo in a folder, seven edited copies (crop, JPEG quality 15, 1/8 downscale,
15 degree rotation, greyscale, blur, mirror) are embedded and searched among the originals.
Photos whose names differ only by a size suffix or a -Dark/-Light variant are one group (the
mate-backgrounds set ships such renditions). Prints recall@1 and mean reciprocal rank per
preprocessing:

- default: featx-search's settings (whole frame squashed to 224 x 224, EfficientNet-Lite's
  own [-1, 1] input scaling, _blocks.12 + _swish_1 with avg pooling; see docs/how-it-works.md);
- avgpool, centre crop: the classifier's input on a 224 centre crop (the old default);
- plain: the same with ImageNet mean/std, as generic recipes do;
- avgpool, full frame: the classifier's input on the whole frame.

Usage: .venv/bin/python scripts/compare_defaults.py demo-data/photos
"""

from __future__ import annotations

import io
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from featx_search import ExtractorSpec, Preprocess
from featx_search.extract import IMAGENET, LITE0_PREPROCESS, load_extractor
from featx_search.images import IMAGE_EXTENSIONS, load_rgb, preprocess

# (layers, preprocessing); empty layers mean the default ones.
CLASSIFIER_INPUT = ("_avg_pooling",)
CROP = replace(LITE0_PREPROCESS, fit="crop")
SETTINGS: dict[str, tuple[tuple[str, ...], Preprocess]] = {
    "default": ((), LITE0_PREPROCESS),
    "avgpool, centre crop": (CLASSIFIER_INPUT, CROP),
    "plain (ImageNet mean/std)": (CLASSIFIER_INPUT, IMAGENET),
    "avgpool, full frame": (CLASSIFIER_INPUT, replace(CROP, fit="full")),
}


def edits(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=15)
    return {
        "crop": img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85))),
        "jpeg15": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "down": img.resize((max(1, w // 8), max(1, h // 8))),
        "rotate": img.rotate(15),
        "grey": ImageOps.grayscale(img).convert("RGB"),
        "blur": img.filter(ImageFilter.GaussianBlur(4)),
        "mirror": ImageOps.mirror(img),
    }


def group(path: Path) -> str:
    return re.sub(r"(_\d+x\d+)|(-Dark|-Light|-Cold|-Warm|-Radioactive)", "", path.stem)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    extractors = {
        layers: load_extractor(ExtractorSpec(layers=layers)) for layers, _ in SETTINGS.values()
    }
    originals = []
    for f in files:
        img = load_rgb(f, min_side=512)
        scale = 512 / min(img.size)
        originals.append(img.resize((round(img.width * scale), round(img.height * scale))))
    copies = [edits(img) for img in originals]
    groups = np.array([group(f) for f in files])
    print(f"{len(files)} photos, {len(set(groups))} groups, {7 * len(files)} queries")
    for name, (layers, spec) in SETTINGS.items():

        def embed(
            images: list[Image.Image], spec: Preprocess = spec, layers: tuple[str, ...] = layers
        ) -> np.ndarray:
            return extractors[layers].embed(np.stack([preprocess(i, spec) for i in images]))

        base = embed(originals)
        hits, rr = [], []
        for kind in copies[0]:
            order = np.argsort(-(embed([c[kind] for c in copies]) @ base.T), axis=1)
            for i, row in enumerate(order):
                first = int(np.flatnonzero(groups[row] == groups[i])[0])
                hits.append(first == 0)
                rr.append(1.0 / (first + 1))
        print(f"{name:28s} recall@1 {np.mean(hits):.3f}  MRR {np.mean(rr):.3f}")


if __name__ == "__main__":
    main()
