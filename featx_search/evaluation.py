"""Retrieval quality of extraction settings on a labelled folder: mAP, P@1, P@10, copy recall.

A folder with one subfolder per class is embedded with every combination of settings asked
for. Each image queries all the others: an image of the same class is a hit (mAP, P@1, P@10).
With ``copies``, seven edits of each image query the originals, and recall@1 (the original
ranks first) is reported per edit type. Nothing is stored; no library is opened.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .config import FITS, ExtractorSpec, Fit, Preprocess
from .errors import ConfigError
from .images import is_image_name, load_rgb, preprocess
from .scan import scan

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .extract import Extractor

log = logging.getLogger(__name__)

# How an image meets the model's square input: ``crop`` resizes the shorter side and takes
# the centre (what the weights were trained with), ``full`` squashes the whole frame.
INPUTS: tuple[str, ...] = FITS
EDITS: tuple[str, ...] = ("crop", "jpeg15", "down", "rotate", "grey", "blur", "flip")
# Images are decoded once, at this shorter side, for every combination and edit.
_SIDE = 448


@dataclass(frozen=True)
class EvalResult:
    """The scores of one combination of settings. ``copies`` maps each edit type to its
    recall@1 (empty unless copies were asked for)."""

    model: str
    weights: str
    layers: tuple[str, ...]
    pool: str
    input: str
    dim: int
    images: int
    queries: int
    map: float
    p1: float
    p10: float
    copies: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    precision: str = "fp32"  # what the model ran in (``auto`` resolved)

    @property
    def copy_recall(self) -> float | None:
        """Mean recall@1 over the edit types, or None without copies."""
        return float(np.mean(list(self.copies.values()))) if self.copies else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "layers": list(self.layers),
            "pool": self.pool,
            "input": self.input,
            "precision": self.precision,
            "dim": self.dim,
            "images": self.images,
            "queries": self.queries,
            "map": round(self.map, 4),
            "p1": round(self.p1, 4),
            "p10": round(self.p10, 4),
            "copies": {k: round(v, 4) for k, v in self.copies.items()},
            "copy_recall": None if self.copy_recall is None else round(self.copy_recall, 4),
            "seconds": round(self.seconds, 2),
        }


def labelled_images(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """(path, class) for every image under ``folder``: the class is its first subfolder.

    Raises :class:`ConfigError` when the folder is missing or has fewer than two classes.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"evaluation folder not found: {root}",
            hint="give a folder with one subfolder per class",
        )
    rows = []
    for info in scan(root.resolve()):
        rel = info.path.relative_to(root.resolve())
        if len(rel.parts) > 1 and is_image_name(info.path):
            rows.append((info.path, rel.parts[0]))
    rows.sort()
    if len({label for _, label in rows}) < 2:
        raise ConfigError(
            f"{root} needs at least two subfolders (classes) with images; found "
            f"{len({label for _, label in rows})}",
            hint="put the images of each class in their own subfolder",
        )
    return rows


def retrieval_scores(vectors: np.ndarray, labels: Sequence[str]) -> tuple[float, float, float, int]:
    """Leave-one-out retrieval by cosine on L2-normalised float32 (N, D) ``vectors``.

    Returns (mAP, P@1, P@10, queries), over the queries that have another image of their
    class. Ties are broken by index order.
    """
    labels_ = np.asarray(labels)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    aps, p1s, p10s = [], [], []
    for i in range(len(vectors)):
        others = np.delete(np.arange(len(vectors)), i)
        order = others[np.argsort(-sims[i, others], kind="stable")]
        hits = labels_[order] == labels_[i]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        p1s.append(float(hits[0]))
        p10s.append(float(hits[:10].mean()))
    if not aps:
        raise ConfigError("no class has two images", hint="put at least two images in a class")
    return float(np.mean(aps)), float(np.mean(p1s)), float(np.mean(p10s)), len(aps)


def edit(img: PILImage, kind: str) -> PILImage:
    """One edited copy of ``img``: ``crop`` (centre 70 %), ``jpeg15`` (JPEG quality 15),
    ``down`` (1/8 size), ``rotate`` (15 degrees), ``grey``, ``blur`` (Gaussian, radius 4)
    or ``flip`` (mirror)."""
    from PIL import Image, ImageFilter, ImageOps

    w, h = img.size
    if kind == "crop":
        return img.crop((int(w * 0.15), int(h * 0.15), int(w * 0.85), int(h * 0.85)))
    if kind == "jpeg15":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=15)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "down":
        return img.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR)
    if kind == "rotate":
        return img.rotate(15, resample=Image.Resampling.BILINEAR)
    if kind == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(4))
    if kind == "flip":
        return ImageOps.mirror(img)
    raise ConfigError(f"unknown edit {kind!r}", hint=f"choose one of: {', '.join(EDITS)}")


def model_input(img: PILImage, spec: Preprocess, how: str) -> np.ndarray:
    """``img`` as float32 (3, crop, crop) for a model, fitted as ``how`` (see :data:`INPUTS`)."""
    if how not in INPUTS:
        raise ConfigError(f"unknown --input {how!r}", hint=f"choose one of: {', '.join(INPUTS)}")
    return preprocess(img, replace(spec, fit=cast(Fit, how)))


def evaluate(
    folder: str | os.PathLike[str],
    specs: Sequence[ExtractorSpec],
    *,
    inputs: Sequence[str | None] = (None,),
    copies: bool = False,
    batch_size: int = 16,
    progress: Callable[[EvalResult], None] | None = None,
) -> list[EvalResult]:
    """Score every combination of ``specs`` and ``inputs`` on the labelled ``folder``.

    An input of None means the model's own (``space.preprocess.fit``). Returns one
    :class:`EvalResult` per combination, in the order asked. Raises
    :class:`ConfigError` for a bad folder or option, :class:`ImageError` naming an image
    that cannot be decoded, and what :func:`load_extractor` raises for a bad spec.
    """
    from .extract import load_extractor

    for how in inputs:
        if how is not None and how not in INPUTS:
            raise ConfigError(
                f"unknown --input {how!r}", hint=f"choose one of: {', '.join(INPUTS)}"
            )
    rows = labelled_images(folder)
    labels = [label for _, label in rows]
    originals = [_decoded(path) for path, _ in rows]
    edited = {kind: [edit(img, kind) for img in originals] for kind in EDITS} if copies else {}
    results = []
    for spec in specs:
        extractor = load_extractor(spec)
        space = extractor.space
        for asked in inputs:
            how = asked or space.preprocess.fit
            started = time.perf_counter()

            base = _embed(extractor, originals, how, batch_size)
            mean_ap, p1, p10, queries = retrieval_scores(base, labels)
            recall = {}
            for kind, images in edited.items():
                top = np.argmax(_embed(extractor, images, how, batch_size) @ base.T, axis=1)
                recall[kind] = float(np.mean(top == np.arange(len(images))))
            result = EvalResult(
                model=space.model,
                weights=space.weights,
                layers=space.layers,
                pool=space.pool,
                input=how,
                dim=space.dim,
                images=len(rows),
                queries=queries,
                map=mean_ap,
                p1=p1,
                p10=p10,
                copies=recall,
                seconds=time.perf_counter() - started,
                precision=space.precision,
            )
            log.info("evaluated %s (%s): mAP %.3f", space.label, how, mean_ap)
            if progress is not None:
                progress(result)
            results.append(result)
    return results


def _embed(extractor: Extractor, images: list[PILImage], how: str, batch_size: int) -> np.ndarray:
    spec = extractor.space.preprocess
    parts = [
        extractor.embed(np.stack([model_input(i, spec, how) for i in images[s : s + batch_size]]))
        for s in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def _decoded(path: Path) -> PILImage:
    from PIL import Image

    img = load_rgb(path, min_side=_SIDE)  # ImageError names the file
    scale = _SIDE / min(img.size)
    if scale < 1:
        img = img.resize(
            (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
        )
    return img
