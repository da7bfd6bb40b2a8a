"""Retrieval quality of extraction settings on a labelled folder: mAP, P@1, P@10, copy recall.

A folder with one subfolder per class is embedded with every combination of settings asked
for. Each image queries all the others: an image of the same class is a hit (mAP, P@1, P@10).
With ``copies``, edited copies of each image (:data:`EDITS`: crops, rotations, scaling,
compression, colour, screenshots and pairs of them) query the originals, their frame bars
trimmed as searches trim them, and recall@1 (the original, or an image of the set with the
same pixels as the original, ranks first: see :func:`identical`) is reported per edit
type, for the plain search and for copy mode (each original scored by the best of its vector
and its copy views against the copy and its normalised view, as a copy-mode search scores
it: :mod:`featx_search.copies`). Nothing is
stored; no library is opened.
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

from . import verify
from .config import FITS, ExtractorSpec, Fit, Preprocess
from .copies import SIDE, best_of_views, decoded, embed_views, mirrored_best, normalised
from .errors import ConfigError
from .images import is_image_name, preprocess, trim_bars
from .query import mix
from .scan import scan

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .extract import Extractor

log = logging.getLogger(__name__)

# How an image meets the model's square input: ``crop`` resizes the shorter side and takes
# the centre (what the weights were trained with), ``full`` squashes the whole frame.
INPUTS: tuple[str, ...] = FITS
EDITS: tuple[str, ...] = (
    "crop",
    "crop40",
    "rotate",
    "rotate-canvas",
    "down8",
    "jpeg10",
    "grey",
    "flip",
    "blur",
    "colour",
    "frame",
    "crop40+jpeg10",
    "rotate+grey",
    "frame+down8",
    "flip+colour",
)
# Images are decoded once, at this shorter side, for every combination and edit (the side a
# copy-mode space decodes its images at to cut their views).
_SIDE = SIDE


@dataclass(frozen=True)
class EvalResult:
    """The scores of one combination of settings. ``copies`` maps each edit type to its
    recall@1 (empty unless copies were asked for); ``copy_mode`` the same in copy mode."""

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
    qe: int = 0
    dba: int = 0
    precision: str = "fp32"  # what the model ran in (``auto`` resolved)
    copy_mode: dict[str, float] = field(default_factory=dict)

    @property
    def copy_recall(self) -> float | None:
        """Mean recall@1 over the edit types, or None without copies."""
        return float(np.mean(list(self.copies.values()))) if self.copies else None

    @property
    def copy_mode_recall(self) -> float | None:
        """Mean recall@1 over the edit types in copy mode, or None without copies."""
        return float(np.mean(list(self.copy_mode.values()))) if self.copy_mode else None

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
            "copy_mode": {k: round(v, 4) for k, v in self.copy_mode.items()},
            "copy_mode_recall": None
            if self.copy_mode_recall is None
            else round(self.copy_mode_recall, 4),
            "seconds": round(self.seconds, 2),
            "qe": self.qe,
            "dba": self.dba,
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


def retrieval_scores(
    vectors: np.ndarray, labels: Sequence[str], *, qe: int = 0, dba: int = 0
) -> tuple[float, float, float, int]:
    """Leave-one-out retrieval by cosine on L2-normalised float32 (N, D) ``vectors``, as
    ``search``/``similar`` rank with these options.

    With ``qe`` each query is expanded with its ``qe`` nearest images (alpha-QE) and
    searched again. With ``dba`` its first :data:`~featx_search.augment.SHORT_LIST` images
    are then ordered by the query's cosine to each one mixed with its ``dba`` nearest others
    (:func:`mix`; database-side augmentation, :mod:`featx_search.augment`), the query image
    left out of every mix. Returns (mAP, P@1, P@10, queries), over the queries that have
    another image of their class. Ties are broken by index order.
    """
    from .augment import SHORT_LIST

    labels_ = np.asarray(labels)
    count = len(vectors)
    base = vectors.astype(np.float64)
    pairs = base @ base.T
    np.fill_diagonal(pairs, -np.inf)
    nearest = np.argsort(-pairs, axis=1, kind="stable")[:, : dba + 1]

    def augmented(row: int, without: int) -> np.ndarray:
        picks = [k for k in nearest[row] if k != without][:dba]
        mixed: np.ndarray = mix(base[row : row + 1], base[picks][None], pairs[row, picks][None])
        return np.asarray(mixed[0])

    aps, p1s, p10s = [], [], []
    for i in range(count):
        query = base[i]
        sims = base @ query
        if qe:
            sims[i] = -np.inf
            near = np.argsort(-sims, kind="stable")[:qe]
            query = mix(query[None], base[near][None], sims[near][None])[0]
            sims = base @ query
        others = np.delete(np.arange(count), i)
        order = others[np.argsort(-sims[others], kind="stable")]
        if dba:
            head = order[:SHORT_LIST]
            rescored = np.array([augmented(int(j), i) @ query for j in head])
            order = np.concatenate([head[np.argsort(-rescored, kind="stable")], order[SHORT_LIST:]])
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


def edit(img: PILImage, kind: str, seed: int = 0) -> PILImage:
    """One edited copy of ``img``; ``seed`` draws the edit's parameters (angle, crop position,
    colour change), so each image gets its own and a run is repeatable. ``kind`` is one of
    :data:`EDITS`, or two of them joined by ``+`` (applied left to right):

    - ``crop``, ``crop40``: 60 % or 40 % of the area, at a random (off-centre) position;
    - ``rotate``: 5 to 20 degrees either way, same frame (the corners filled black);
      ``rotate-canvas``: the canvas grows to hold the whole rotated photo;
    - ``down8``: 1/8 of the size; ``jpeg10``: JPEG quality 10; ``grey``; ``flip`` (mirror);
      ``blur`` (Gaussian, radius 4);
    - ``colour``: saturation, brightness and contrast each scaled by 0.6 to 1.4;
    - ``frame``: a phone screenshot of the photo: letterboxed on a tall black screen with a
      status bar, then scaled to 720 px wide.
    """
    import random

    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

    if "+" in kind:
        for number, part in enumerate(kind.split("+")):
            img = edit(img, part, seed * 31 + number)
        return img
    draw = random.Random(f"{kind}:{seed}")
    w, h = img.size
    if kind in ("crop", "crop40"):
        side = (0.6 if kind == "crop" else 0.4) ** 0.5
        cw, ch = max(1, round(w * side)), max(1, round(h * side))
        left, top = draw.randint(0, w - cw), draw.randint(0, h - ch)
        return img.crop((left, top, left + cw, top + ch))
    if kind in ("rotate", "rotate-canvas"):
        angle = draw.uniform(5, 20) * draw.choice((-1, 1))
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=kind == "rotate-canvas")
    if kind == "down8":
        return img.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR)
    if kind == "jpeg10":
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=10)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    if kind == "flip":
        return ImageOps.mirror(img)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(4))
    if kind == "colour":
        for enhancer in (ImageEnhance.Color, ImageEnhance.Brightness, ImageEnhance.Contrast):
            img = enhancer(img).enhance(draw.uniform(0.6, 1.4))
        return img
    if kind == "frame":
        screen_w = max(w, h * 9 // 16)
        screen = Image.new("RGB", (screen_w, screen_w * 19 // 9), "black")
        screen.paste(img, ((screen_w - w) // 2, (screen.height - h) // 2))
        ImageDraw.Draw(screen).rectangle((0, 0, screen_w, screen.height // 20), fill="#303030")
        return screen.resize((720, 720 * 19 // 9), Image.Resampling.BILINEAR)
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
    expansions: Sequence[tuple[int, int]] = ((0, 0),),
    batch_size: int = 16,
    progress: Callable[[EvalResult], None] | None = None,
) -> list[EvalResult]:
    """Score every combination of ``specs``, ``inputs`` and ``expansions`` on the labelled
    ``folder``.

    An input of None means the model's own (``space.preprocess.fit``). ``expansions`` are
    (query expansion, database augmentation) neighbour counts (see
    :func:`retrieval_scores`); copy recall is measured without them, on their (0, 0) row.
    Returns one :class:`EvalResult` per combination, in the order asked. Raises
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
    edited = (
        {kind: [edit(img, kind, n) for n, img in enumerate(originals)] for kind in EDITS}
        if copies
        else {}
    )
    same = identical(originals) if copies else np.zeros((0, 0), dtype=bool)
    results = []
    for spec in specs:
        extractor = load_extractor(spec)
        space = extractor.space
        if space.precision == "int8":  # calibrated on the set itself, as a library would be
            _calibrate(extractor, originals)
        local = verify.local_model(space) if copies else None
        local_maps: dict[int, Any] = {}  # the originals' local maps (whatever the input fit)
        for asked in inputs:
            how = asked or space.preprocess.fit
            started = time.perf_counter()

            base = _embed(extractor, originals, how, batch_size)
            views = (
                embed_views(
                    extractor.embed,
                    originals,
                    replace(space.preprocess, fit=cast(Fit, how)),
                    batch_size,
                )
                if copies
                else None
            )
            recall, copy_mode = {}, {}
            for kind, images in edited.items():
                trimmed = [trim_bars(image) for image in images]  # as searches do (Query.trim)
                edited_vectors = _embed(extractor, trimmed, how, batch_size)
                positions = np.arange(len(images))
                top = np.argmax(edited_vectors @ base.T, axis=1)
                recall[kind] = float(np.mean(same[positions, top]))
                if views is not None:  # with their normalised views, as searches do
                    norms = _embed(extractor, [normalised(i) for i in trimmed], how, batch_size)
                    scores = best_of_views(edited_vectors, base, views, norms)
                    top = _checked(
                        scores, trimmed, edited_vectors, views, originals, local, local_maps
                    )
                    copy_mode[kind] = float(np.mean(same[positions, top]))
            for qe, dba in expansions:
                mean_ap, p1, p10, queries = retrieval_scores(base, labels, qe=qe, dba=dba)
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
                    copies=recall if (qe, dba) == (0, 0) else {},
                    copy_mode=copy_mode if (qe, dba) == (0, 0) else {},
                    seconds=time.perf_counter() - started,
                    qe=qe,
                    dba=dba,
                    precision=space.precision,
                )
                log.info("evaluated %s (%s): mAP %.3f", space.label, how, mean_ap)
                if progress is not None:
                    progress(result)
                results.append(result)
    return results


def identical(images: Sequence[PILImage], tolerance: float = 1.0) -> np.ndarray:
    """Which images have the same pixels: bool (N, N), true where the 64 x 64 thumbnails
    differ by less than ``tolerance`` (of 255) on average. An edited copy that finds such a
    twin of its original has found the original: a set cut into tiles holds identical
    tiles of a plain or repeating wallpaper, between which no search can choose."""
    from PIL import Image

    thumbs = np.stack(
        [np.asarray(i.resize((64, 64), Image.Resampling.BILINEAR), np.float32) for i in images]
    ).reshape(len(images), -1)
    same = np.zeros((len(images), len(images)), dtype=bool)
    for row in range(len(images)):
        same[row] = np.abs(thumbs - thumbs[row]).mean(axis=1) < tolerance
    return same


def _checked(
    scores: np.ndarray,
    queries: Sequence[PILImage],
    vectors: np.ndarray,
    views: np.ndarray,
    originals: Sequence[PILImage],
    local: verify.LocalModel | None,
    maps: dict[int, Any],
) -> np.ndarray:
    """The image each query (a row of copy-mode ``scores``, its picture in ``queries`` and
    its vector in ``vectors``) finds first once ties are told apart by the local check, as
    a copy search by a picture does (:mod:`featx_search.verify`; ``views`` are the originals'
    copy views, ``maps`` caches their local maps)."""
    firsts = []
    for row, picture, vector in zip(scores, queries, vectors, strict=True):
        order = np.argsort(-row, kind="stable")[: verify.SHORT_LIST]
        if local is None or verify.tied(row[order].tolist()) < 2:
            firsts.append(int(order[0]))
            continue

        def candidate(
            position: int, order: np.ndarray = order, row: np.ndarray = row, vector: Any = vector
        ) -> tuple[Any, bool]:
            image = int(order[position])
            if image not in maps:
                maps[image] = local.map(originals[image])
            return maps[image], mirrored_best(vector, views[image], float(row[image]))

        query_maps = local.query_maps(picture, SIDE)
        checked = verify.rerank(row[order].tolist(), query_maps, candidate)
        firsts.append(int(order[checked[0]]))
    return np.asarray(firsts, np.int64)


def _calibrate(extractor: Extractor, images: list[PILImage]) -> None:
    from .extract import int8

    spec = extractor.space.preprocess
    chosen = int8.sample(list(range(len(images))), key=str)
    int8.attach(
        extractor,
        None,
        lambda: np.stack([model_input(images[i], spec, spec.fit) for i in chosen]),
    )


def _embed(extractor: Extractor, images: list[PILImage], how: str, batch_size: int) -> np.ndarray:
    spec = extractor.space.preprocess
    parts = [
        extractor.embed(np.stack([model_input(i, spec, how) for i in images[s : s + batch_size]]))
        for s in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def _decoded(path: Path) -> PILImage:
    return decoded(path)  # as a copy-mode space decodes its images; ImageError names the file
