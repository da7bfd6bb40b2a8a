"""Copy mode: a space that also keeps views of each image (crops, a small copy, a strongly
compressed copy, turned copies), so that an edited copy of an image finds the original.

A copy-mode space (``index --copies``, :meth:`Space.keep_copies`) stores, beside each image's
vector, the vectors of :data:`VIEWS` of it in the ``copy_views`` table (the truth; they go
with the image's vector). A copy search (``similar --copies``, ``dups --copies``,
``Query(copies=True)``) scores an image as the best of its vector and its views against the
query; the last view, the image with its colours normalised (:func:`normalised`), is
only compared with the query's own normalised view (``norms``), less :data:`NORM_PENALTY`,
so that a copy whose colours, brightness or contrast were changed finds it. The views are
searched in one flat index (``FINGERPRINT.copies.faiss`` in the index
folder, a cache rebuilt from the store when the space's generation or its number of views
moved), each view under the id ``image_id * VIEW_SLOTS + view`` (view 0: the image's own
vector); :class:`CopyIndex` maps hits back to images, best view first, one per image.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from .ann.index import VectorIndex
    from .ann.spec import SearchParams
    from .config import Preprocess
    from .reader import Reader
    from .space import Space
    from .store import Store

log = logging.getLogger(__name__)

# Images are decoded at this shorter side before their views are cut (as eval decodes them).
SIDE = 448
# The views kept of each image, besides the image itself, in order: name and parameter.
#   crop: a window of half the area on a 3 x 3 grid (x, y position in 0, 0.5, 1);
#   down8: 1/8 of the size; jpeg10: JPEG quality 10; turn: turned by a few degrees, the
#   canvas grown to hold the whole photo; tilt: turned in the same frame (corners black);
#   crop-jpeg10: the crops again, at JPEG quality 10 (a small crop of a compressed copy);
#   grey: in shades of grey; mirror: flipped left to right; tilt-grey: the tilts in grey;
#   blur: a Gaussian blur of radius 4 (at SIDE; radius 2 at the model's 224);
#   norm: each channel standardised (:func:`normalised`), compared only with the query's
#   own normalised view (the last view, whatever the others).
VIEWS: tuple[tuple[str, Any], ...] = (
    *(("crop", (x, y)) for y in (0.0, 0.5, 1.0) for x in (0.0, 0.5, 1.0)),
    ("down8", None),
    ("jpeg10", None),
    ("turn", -12.0),
    ("turn", 12.0),
    ("tilt", -12.0),
    ("tilt", 12.0),
    *(("crop-jpeg10", (x, y)) for y in (0.0, 0.5, 1.0) for x in (0.0, 0.5, 1.0)),
    ("grey", None),
    ("mirror", None),
    ("tilt-grey", -12.0),
    ("tilt-grey", 12.0),
    ("blur", 4.0),
    ("norm", None),
)
# The mirrored view's index among VIEWS (see featx_search.verify).
MIRROR = [kind for kind, _ in VIEWS].index("mirror")
# The normalised view's index among VIEWS and its slot in a copy index.
NORM = len(VIEWS) - 1
NORM_SLOT = NORM + 1
# A normalised pair scores this much less than its cosine: it wins only where no plain pair
# comes close (a changed colour), not over a crop that matches in its own colours.
NORM_PENALTY = 0.01
# The normalised view's spread: each channel to mean 128, standard deviation NORM_SPREAD
# (a channel of one level, spread under 1, stays at 128).
NORM_SPREAD = 50.0
# Ids per image in a copy index: view v of image i is i * VIEW_SLOTS + v (v = 0: the image).
VIEW_SLOTS = 32
# The crops' share of the image's area.
CROP_AREA = 0.5
# A large copy index holds the views projected on their COMPACT_DIMS main axes (uncentred,
# so that inner products keep their meaning) and quantised to a byte per dimension; its
# best CANDIDATES images per query are then scored exactly.
COMPACT_DIMS = 256
COMPACT_SPEC = "SQ8"
COMPACT_FROM = 20_000
CANDIDATES = 50
TRAIN_SAMPLE = 8_000
# Slack for the byte quantisation when a compact score bounds an exact one.
MARGIN = 0.02


def views_nbytes(dim: int) -> int:
    """The bytes of one image's stored views at ``dim`` dimensions (float32 (VIEWS, dim)):
    views stored at another size are from an older :data:`VIEWS` and embedded again."""
    return len(VIEWS) * dim * 4


def views_of(img: PILImage) -> list[PILImage]:
    """The :data:`VIEWS` of a decoded RGB image, in order."""
    from PIL import Image, ImageFilter

    w, h = img.size
    side = CROP_AREA**0.5
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    out = []
    for kind, arg in VIEWS:
        if kind in ("crop", "crop-jpeg10"):
            left, top = round((w - cw) * arg[0]), round((h - ch) * arg[1])
            crop = img.crop((left, top, left + cw, top + ch))
            out.append(crop if kind == "crop" else _jpeg(crop, 10))
        elif kind == "down8":
            out.append(img.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR))
        elif kind == "jpeg10":
            out.append(_jpeg(img, 10))
        elif kind == "grey":
            out.append(img.convert("L").convert("RGB"))
        elif kind == "mirror":
            out.append(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        elif kind in ("turn", "tilt"):
            expand = kind == "turn"
            out.append(img.rotate(arg, resample=Image.Resampling.BILINEAR, expand=expand))
        elif kind == "tilt-grey":
            turned = img.rotate(arg, resample=Image.Resampling.BILINEAR)
            out.append(turned.convert("L").convert("RGB"))
        elif kind == "blur":
            out.append(img.filter(ImageFilter.GaussianBlur(arg)))
        elif kind == "norm":
            out.append(normalised(img))
        else:  # pragma: no cover - VIEWS is fixed above
            raise AssertionError(kind)
    return out


def normalised(img: PILImage) -> PILImage:
    """``img`` (RGB) with each channel standardised to mean 128 and spread
    :data:`NORM_SPREAD`: the same picture whatever its brightness and contrast, and nearly
    whatever its saturation (the copy-mode view compared with a query's own)."""
    from PIL import Image

    pixels = np.asarray(img.convert("RGB"), np.float32)
    mean, spread = pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))
    out = (pixels - mean) / np.maximum(spread, 1e-3) * NORM_SPREAD + 128
    out[..., spread < 1] = 128
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _jpeg(img: PILImage, quality: int) -> PILImage:
    from PIL import Image

    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def decoded(path: str | os.PathLike[str]) -> PILImage:
    """The image at ``path`` decoded for its views: upright RGB, shorter side :data:`SIDE`
    (or less when the file is smaller). Raises :class:`ImageError`."""
    from PIL import Image

    from .images import load_rgb

    img = load_rgb(path, min_side=SIDE)
    scale = SIDE / min(img.size)
    if scale < 1:
        img = img.resize(
            (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
        )
    return img


def embed_views(
    embed: Callable[[np.ndarray], np.ndarray],
    images: Sequence[PILImage],
    spec: Preprocess,
    batch_size: int = 32,
) -> np.ndarray:
    """The views' vectors of ``images``: float32 (N, len(VIEWS), dim), each view preprocessed
    as ``spec`` says and embedded by ``embed`` (a space's model) in batches."""
    from .images import preprocess

    inputs = [view for img in images for view in views_of(img)]
    parts = [
        embed(np.stack([preprocess(v, spec) for v in inputs[s : s + batch_size]]))
        for s in range(0, len(inputs), batch_size)
    ]
    vectors = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    return vectors.reshape(len(images), len(VIEWS), -1).astype(np.float32, copy=False)


def mirrored_best(query: np.ndarray, views: np.ndarray | None, score: float) -> bool:
    """Whether ``query`` (dim,) found an image with ``score`` through its mirrored view:
    ``views`` (the image's (VIEWS, dim), or None) has that view at the score."""
    if views is None or len(views) != len(VIEWS):
        return False
    return float(query @ views[MIRROR]) >= score - 1e-4


def best_of_views(
    queries: np.ndarray, base: np.ndarray, views: np.ndarray, norms: np.ndarray | None = None
) -> np.ndarray:
    """Copy-mode scores of float32 ``queries`` (Q, dim) against images with vectors ``base``
    (N, dim) and views (N, len(VIEWS), dim): (Q, N), each the best of the image and its
    views; the normalised view (the last) counts only against ``norms`` (Q, dim), the
    queries' own normalised views (see :func:`normalised`), less :data:`NORM_PENALTY`."""
    scores = queries @ base.T
    if views.size:
        plain = views[:, :NORM]
        scores = np.maximum(scores, np.einsum("qd,nvd->qnv", queries, plain).max(axis=2))
        if norms is not None and views.shape[1] > NORM:
            scores = np.maximum(scores, norms @ views[:, NORM].T - NORM_PENALTY)
    return np.asarray(scores)


@dataclass(frozen=True)
class ViewsReport:
    """What :func:`update_views` did: images given views, images that could not be read,
    and the images of the space holding views afterwards."""

    added: int
    failed: int
    total: int

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "failed": self.failed, "total": self.total}


def update_views(
    space: Space,
    store: Store,
    *,
    batch: int = 16,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ViewsReport:
    """Embed and store the views of every image of ``space`` that has a vector but no views
    (one transaction per ``batch`` images, so an interrupted run loses that batch at most),
    then build and save the space's copy index. A file that cannot be read any more is
    skipped (it keeps no views; the next run tries again). ``progress(done, todo)`` after
    each batch."""
    missing = store.copy_views_missing(space.id, views_nbytes(space.dim))
    added = failed = 0
    if len(missing):
        extractor = space.extractor(writing=True)
        spec = space.record.spec.preprocess
        for start in range(0, len(missing), batch):
            if stop is not None and stop.is_set():
                break
            ids = [int(i) for i in missing[start : start + batch]]
            paths = store.paths(ids)
            images, kept = [], []
            for image_id in ids:
                if image_id not in paths:
                    continue  # removed meanwhile
                try:
                    images.append(decoded(paths[image_id]))
                    kept.append(image_id)
                except ImageError as err:
                    failed += 1
                    log.warning("no copy views for %s: %s", paths[image_id], err)
            if images:
                vectors = embed_views(extractor.embed, images, spec)
                added += store.write_views(space.id, list(zip(kept, vectors, strict=True)))
            if progress is not None:
                progress(min(start + batch, len(missing)), len(missing))
    CopyIndex.open(space, store)  # built and saved now, not by the first search
    return ViewsReport(added, failed, store.copy_view_count(space.id))


class CopyIndex:
    """A copy-mode space's views in one index, searched as images: :meth:`search` has
    :meth:`VectorIndex.search`'s shape, with image ids, each image scored by its best view.

    Small spaces search every view exactly (``Flat``). From :data:`COMPACT_FROM` views on,
    the index holds them projected on their :data:`COMPACT_DIMS` main axes and quantised
    (:data:`COMPACT_SPEC`: a 23rd of the bytes at 1,472 dimensions, so that a fresh
    ``similar`` process loads it fast); its best :data:`CANDIDATES` images (at least 4 k)
    are then scored exactly, from their stored vector and views. Open with :meth:`open`.

    A handle from :meth:`with_norms` also searches the queries' normalised views against the
    images' (see :func:`best_of_views`)."""

    def __init__(
        self,
        index: VectorIndex,
        dim: int,
        exact: ExactViews | None = None,
        projection: Projection | None = None,
        image_ids: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.index = index
        self.dim = dim
        self.exact = exact
        self.projection = projection
        self.image_ids = image_ids
        self.norms: np.ndarray | None = None

    def with_norms(self, norms: np.ndarray | None) -> CopyIndex:
        """This index for queries whose normalised views are ``norms`` (float32 (Q, dim), a
        row per query of the next :meth:`search`; None: none)."""
        bound = copy.copy(self)
        bound.norms = None if norms is None else np.ascontiguousarray(norms, np.float32)
        return bound

    def _projected(self, queries: np.ndarray) -> np.ndarray:
        if self.projection is None:
            return queries
        return np.ascontiguousarray(queries @ self.projection.matrix.T, np.float32)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def open(cls, space: Space, store: Reader | None = None) -> CopyIndex:
        """The space's copy index: its cached file when it was built at the space's current
        generation and number of views, else built from the store (and saved, unless the
        library is read only)."""
        from .ann.index import VectorIndex

        reader = store or space._store
        space_id, dim = space.id, space.dim

        def exact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            _, found, vectors = reader.vectors(space_id, ids.tolist())
            views = reader.copy_views(space_id, found.tolist(), dim)
            stacked = np.zeros((len(found), len(VIEWS), dim), np.float32)
            for row, image_id in enumerate(found.tolist()):
                if image_id in views:  # an older, shorter set: zeros after (never best)
                    kept = views[image_id][: len(VIEWS)]
                    stacked[row, : len(kept)] = kept
                else:  # no views yet: its own vector stands in for them
                    stacked[row, :] = vectors[row]
            return found, vectors, stacked

        def image_ids() -> np.ndarray:
            return reader.vector_ids(space_id)

        key = {
            "generation": space.generation,
            "views": reader.copy_view_count(space_id),
            "per_image": len(VIEWS),
        }
        path = copy_index_path(reader, space.fingerprint)
        meta = path.with_suffix(".json")
        try:
            saved = json.loads(meta.read_text())
            if saved.get("key") == key and path.stat().st_size == saved.get("nbytes"):
                projection = None
                if saved["spec"] != "Flat":
                    matrix = np.load(path.with_suffix(".axes.npy"))
                    if matrix.shape != (saved["dims"], dim):
                        raise ValueError("axes of another shape")
                    projection = Projection(matrix.astype(np.float32), float(saved["residual"]))
                index = VectorIndex.load(
                    path,
                    dim=dim if projection is None else len(projection.matrix),
                    nbytes=saved["nbytes"],
                    spec=saved["spec"],
                    mmap=True,
                )
                return cls(index, dim, None if projection is None else exact, projection, image_ids)
        except (OSError, ValueError, KeyError):
            pass  # missing or damaged: built again below
        except Exception as err:  # a damaged file faiss refuses
            log.warning("copy index %s unreadable (%s); building it again", path, err)
        index, projection = build_copy_index(reader, space_id, dim)
        if not reader.read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                record: dict[str, Any] = {"key": key, "spec": index.spec}
                if projection is not None:
                    _save_array(path.with_suffix(".axes.npy"), projection.matrix)
                    record.update(dims=len(projection.matrix), residual=projection.residual)
                record["nbytes"] = index.save(path).nbytes
                _write_json(meta, record)
            except OSError as err:
                log.warning("cannot save the copy index %s: %s", path, err)
        return cls(index, dim, None if projection is None else exact, projection, image_ids)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        selector: Any = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` images per query row: (scores float32 (Q, k'), image ids int64 (Q, k')),
        each image once with its best view's score (see :func:`best_of_views`, with this
        handle's ``norms``); ``selector`` an int64 array of allowed image ids (or None). -1
        pads rows with fewer images."""
        queries = np.ascontiguousarray(queries, np.float32)
        norms = self.norms
        if norms is not None and norms.shape != queries.shape:
            raise ValueError(f"norms of shape {norms.shape} for queries {queries.shape}")
        allowed = None
        if selector is not None:
            ids = np.asarray(selector, np.int64)
            allowed = (ids[:, None] * VIEW_SLOTS + np.arange(NORM_SLOT)).ravel()
        wanted = k if self.exact is None else max(CANDIDATES, 4 * k)
        # k images lie among k * (views + 1) hits
        scores, ids = self.index.search(
            self._projected(queries), wanted * (len(VIEWS) + 1), selector=allowed, params=params
        )
        norm_scores = norm_ids = None
        if norms is not None:  # the normalised views only, against the queries' own
            images = np.asarray(selector if selector is not None else self._all_images(), np.int64)
            norm_scores, norm_ids = self.index.search(
                self._projected(norms),
                wanted,
                selector=images * VIEW_SLOTS + NORM_SLOT,
                params=params,
            )
            norm_scores = norm_scores - NORM_PENALTY
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for row in range(len(queries)):
            found_scores, found = _first_per_image(scores[row], ids[row], wanted)
            if norm_scores is not None and norm_ids is not None:
                more = _first_per_image(norm_scores[row], norm_ids[row], wanted, norms=True)
                found_scores, found = _merged(found_scores, found, *more)
            if self.exact is not None and len(found):
                found, vectors, views = self.exact(np.sort(found))
                exact = best_of_views(
                    queries[row : row + 1],
                    vectors,
                    views,
                    None if norms is None else norms[row : row + 1],
                )[0]
                order = np.argsort(-exact, kind="stable")
                found_scores, found = exact[order], found[order]
            n = min(k, len(found))
            out_scores[row, :n], out_ids[row, :n] = found_scores[:n], found[:n]
        return out_scores, out_ids

    def _all_images(self) -> np.ndarray:
        if self.image_ids is not None:
            return self.image_ids()
        raise ValueError("a copy index without its image ids cannot search normalised views")

    def linked(self, queries: np.ndarray, k: int, threshold: float) -> list[tuple[int, int, float]]:
        """(query row, image id, score) for each of the ``k`` best images of each row of
        ``queries`` whose best view scores at least ``threshold``. A compact index proposes
        the images whose score bounds an exact one above ``threshold`` and they are scored
        exactly once for the whole batch (``dups --copies``; a search per row would read the
        views of 50 images each)."""
        queries = np.ascontiguousarray(queries, np.float32)
        projected = self._projected(queries)
        scores, ids = self.index.search(projected, k * (len(VIEWS) + 1))
        floors = np.full(len(queries), threshold, np.float32)
        if self.projection is not None:
            # exact - compact = (query off the axes) . (view off the axes) <= |one| |other|
            off = np.sqrt(
                np.clip(np.sum(queries**2, axis=1) - np.sum(projected**2, axis=1), 0, None)
            )
            floors = threshold - off * self.projection.residual - MARGIN
        proposed: list[tuple[int, int, float]] = []
        for row in range(len(queries)):
            found_scores, found = _first_per_image(scores[row], ids[row], k)
            proposed.extend(
                (row, int(i), float(x))
                for x, i in zip(found_scores, found, strict=True)
                if x >= floors[row]
            )
        if self.exact is None or not proposed:
            return [p for p in proposed if p[2] >= threshold]
        wanted = np.unique(np.array([image for _, image, _ in proposed], np.int64))
        found, vectors, views = self.exact(wanted)
        where = {int(image): n for n, image in enumerate(found)}
        out = []
        for row, image, _ in proposed:
            if image in where:
                n = where[image]
                exact = float(
                    best_of_views(queries[row : row + 1], vectors[n : n + 1], views[n : n + 1])[
                        0, 0
                    ]
                )
                if exact >= threshold:
                    out.append((row, image, exact))
        return out


ExactViews = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Stored vectors and views of image ids: (ids found, (M, dim), (M, views, dim))."""


def _first_per_image(
    scores: np.ndarray, view_ids: np.ndarray, limit: int, *, norms: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The first hit of each image among sorted view hits, at most ``limit`` images; hits
    of normalised views are left out, unless ``norms`` (a search of them only)."""
    kept = (view_ids >= 0) & ((view_ids % VIEW_SLOTS == NORM_SLOT) == norms)
    images = np.where(kept, view_ids // VIEW_SLOTS, -1)
    seen: set[int] = set()
    kept = []
    for position, image in enumerate(images.tolist()):
        if image >= 0 and image not in seen:
            seen.add(image)
            kept.append(position)
            if len(kept) == limit:
                break
    return scores[kept].astype(np.float32), images[kept].astype(np.int64)


def _merged(
    scores: np.ndarray, images: np.ndarray, more_scores: np.ndarray, more: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two lists of (score, image), each best first, as one: each image with its best score,
    best first."""
    best: dict[int, float] = {}
    for score, image in zip(
        np.concatenate([scores, more_scores]).tolist(),
        np.concatenate([images, more]).tolist(),
        strict=True,
    ):
        if score > best.get(image, -np.inf):
            best[image] = score
    order = sorted(best, key=lambda image: -best[image])
    return (
        np.array([best[i] for i in order], np.float32),
        np.array(order, np.int64),
    )


def copy_index_path(store: Reader, fingerprint: str) -> Path:
    return store.index_dir / f"{fingerprint}.copies.faiss"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _view_rows(store: Reader, space_id: int, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(view ids, vectors) of a space: its vectors as view 0, then its stored views."""
    with store.vector_snapshot(space_id) as stored:
        for ids, vectors in stored.chunks(8192):
            yield ids * VIEW_SLOTS, vectors
    for ids, views in store.copy_view_pages(space_id, dim):
        count = views.shape[1]
        view_ids = ids[:, None] * VIEW_SLOTS + np.arange(1, count + 1)
        yield view_ids.ravel(), views.reshape(-1, dim)


@dataclass(frozen=True)
class Projection:
    """A compact copy index's axes: ``matrix`` float32 (dims, dim) with orthonormal rows
    (the main axes of the views, not centred), and ``residual``, the largest norm of an
    indexed view off those axes."""

    matrix: np.ndarray
    residual: float


def build_copy_index(
    store: Reader, space_id: int, dim: int
) -> tuple[VectorIndex, Projection | None]:
    """An index of a space's vectors and views under view ids (see :data:`VIEW_SLOTS`):
    ``Flat`` below :data:`COMPACT_FROM` of them, else :data:`COMPACT_SPEC` over their
    projection on the main axes of a sample (two passes over the store)."""
    from .ann.index import VectorIndex

    total = store.space(space_id).count + store.copy_view_count(space_id) * len(VIEWS)
    if total < COMPACT_FROM or dim <= COMPACT_DIMS:
        index = VectorIndex(dim, spec="Flat")
        for ids, vectors in _view_rows(store, space_id, dim):
            index.add(ids, vectors)
        return index, None
    step = max(1, total // TRAIN_SAMPLE)
    sample = np.concatenate([vectors[::step] for _, vectors in _view_rows(store, space_id, dim)])
    # main axes of the raw (uncentred) rows: inner products are kept, not covariances
    _, axes = np.linalg.eigh(sample.T.astype(np.float64) @ sample)
    matrix = np.ascontiguousarray(axes[:, ::-1][:, :COMPACT_DIMS].T, np.float32)
    index = VectorIndex(COMPACT_DIMS, spec=COMPACT_SPEC)
    index.train_on(sample @ matrix.T)
    residual = 0.0
    for ids, vectors in _view_rows(store, space_id, dim):
        projected = vectors @ matrix.T
        off = np.sum(vectors**2, axis=1) - np.sum(projected**2, axis=1)
        residual = max(residual, float(np.sqrt(max(0.0, float(off.max())))))
        index.add(ids, projected)
    return index, Projection(matrix, residual)


def _save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
