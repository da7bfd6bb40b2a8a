"""Duplicate groups: identical files by content hash, near-duplicates by a blocked range search."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import ConfigError
from .options import Progress, ProgressCallback
from .query import image_date
from .records import ImageFacts

if TYPE_CHECKING:
    from .reader import Reader
    from .space import Space

log = logging.getLogger(__name__)

# Cosine score from which two images count as near-duplicates: resized, re-encoded and mildly
# cropped copies of a photo score above it with the default model, different photos below it
# (docs/benchmarks.md, "Duplicates", has the scores behind it).
DEFAULT_DUP_THRESHOLD = 0.9
# Rows per block of the range search: one block holds BATCH x N float32 distances.
BATCH = 512
# Vectors longer than twice this are pre-filtered on this many main axes (see _project).
PROJECT_DIM = 128
# From this many images on, pairs come from an inverted-file range search (see _ann_pairs).
ANN_MIN_IMAGES = 200_000
# Lists each image's search visits, and about how many images one list holds.
ANN_NPROBE = 12
ANN_LIST_SIZE = 128
ANN_MAX_LISTS = 16_384
# Axes the lists are clustered on (k-means and list assignment only; scores use every axis).
ANN_CLUSTER_DIM = 32
ANN_CHUNK = 20_000
# The inverted lists hold float16 copies of the vectors: an inner product on them is off by at
# most 2^-11 |x| |y| (plus float32 rounding), so pairs within this margin of the threshold
# (times the largest squared norm) are confirmed on the float32 vectors.
ANN_SLACK = 1e-3
DupMethod = Literal["auto", "all", "ann"]
# How many best copy-view matches of each image ``dups --copies`` links at most.
COPY_NEIGHBOURS = 20
DUP_METHODS: tuple[str, ...] = ("auto", "all", "ann")


@dataclass(frozen=True)
class DupMember:
    """One image of a duplicate group; ``score`` is its cosine similarity to the keeper."""

    image_id: int
    path: str
    score: float
    keeper: bool
    identical: bool  # same bytes (SHA-256) as the keeper
    width: int | None
    height: int | None
    date: datetime  # taken (EXIF), else file modification time

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "path": self.path,
            "score": self.score,
            "keeper": self.keeper,
            "identical": self.identical,
            "width": self.width,
            "height": self.height,
            "date": self.date.isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class DupGroup:
    """Images that duplicate each other; the suggested keeper comes first, then the others
    by decreasing score. ``rank`` counts groups from 1, largest first."""

    rank: int
    members: tuple[DupMember, ...]

    @property
    def keeper(self) -> DupMember:
        return self.members[0]

    def __len__(self) -> int:
        return len(self.members)


class _Components:
    """Union-find over positions 0..n-1: single unions (path halving) and vectorised unions
    of many pairs at once (hooking root to smaller root, then pointer jumping)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _flatten(self) -> np.ndarray:
        """Point every position straight at its root; returns the parents (= roots)."""
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent[:] = grand

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union of every pair (a[i], b[i])."""
        parent = self._flatten()
        while len(a):
            ra, rb = parent[a], parent[b]
            apart = ra != rb
            if not apart.any():
                return
            a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
            # Hook the larger root under the smaller one: roots only ever point down, so no
            # cycle forms; where one root gets several hooks, one wins and the rest retry.
            parent[np.maximum(ra, rb)] = np.minimum(ra, rb)
            parent = self._flatten()

    def groups(self) -> list[list[int]]:
        """Components of two or more positions."""
        roots = self._flatten()
        counts = np.bincount(roots, minlength=len(roots))
        members = np.flatnonzero(counts[roots] > 1)
        if not len(members):
            return []
        order = np.argsort(roots[members], kind="stable")
        members, keys = members[order], roots[members][order]
        cuts = np.flatnonzero(np.diff(keys)) + 1
        return [part.tolist() for part in np.split(members, cuts)]


def _keeper_key(fact: ImageFacts) -> tuple[int, float, int]:
    """Sorts the suggested keeper first: most pixels, then oldest, then lowest id."""
    pixels = (fact.width or 0) * (fact.height or 0)
    return (-pixels, image_date(fact).timestamp(), fact.id)


def _link_identical(facts: Sequence[ImageFacts], components: _Components) -> None:
    first: dict[str, int] = {}
    for pos, fact in enumerate(facts):
        if fact.content_hash is None:
            continue
        seen = first.setdefault(fact.content_hash, pos)
        if seen != pos:
            components.union(seen, pos)


def _make_groups(
    facts: Sequence[ImageFacts],
    components: Iterable[list[int]],
    score: Callable[[int, int], float],
) -> list[DupGroup]:
    made = []
    for positions in components:
        ordered = sorted(positions, key=lambda p: _keeper_key(facts[p]))
        keep = ordered[0]
        keeper = facts[keep]
        members = [
            DupMember(
                image_id=facts[p].id,
                path=facts[p].path,
                score=1.0 if p == keep else score(keep, p),
                keeper=p == keep,
                identical=keeper.content_hash is not None
                and facts[p].content_hash == keeper.content_hash,
                width=facts[p].width,
                height=facts[p].height,
                date=image_date(facts[p]),
            )
            for p in ordered
        ]
        members[1:] = sorted(members[1:], key=lambda m: (-m.score, m.path))
        made.append(members)
    made.sort(key=lambda ms: (-len(ms), ms[0].path))
    return [DupGroup(rank, tuple(ms)) for rank, ms in enumerate(made, start=1)]


def exact_duplicates(store: Reader) -> list[DupGroup]:
    """Groups of stored files with identical bytes (same SHA-256), largest first."""
    facts = store.image_facts(None)
    components = _Components(len(facts))
    _link_identical(facts, components)
    return _make_groups(facts, components.groups(), lambda a, b: 1.0)


def _project(vectors: np.ndarray, dim: int, sample: int = 8_000) -> np.ndarray:
    """``vectors`` centred and projected on ``dim`` orthonormal axes close to their main axes
    (a few rounds of subspace iteration on a sample's covariance; cheaper than a full
    eigendecomposition), so that the projection keeps most of the distances.

    An orthogonal projection never lengthens a difference, so two vectors within distance r
    stay within r after it, whichever axes were picked: a range search on the projection
    finds every true pair (and some extra candidates, which are then checked in full).
    """
    rng = np.random.default_rng(0)
    rows = vectors if len(vectors) <= sample else vectors[rng.choice(len(vectors), sample, False)]
    mean = rows.mean(axis=0)
    centred = rows - mean
    cov = (centred.T @ centred).astype(np.float64)
    axes = _orthonormal(cov @ rng.standard_normal((cov.shape[0], dim)))
    for _ in range(3):
        axes = _orthonormal(cov @ axes)
    axes32 = axes.astype(np.float32)
    projected: np.ndarray = vectors @ axes32  # no centred copy of all the vectors
    projected -= mean.astype(np.float32) @ axes32
    return projected


def _orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``columns``' span (float64 (d, k), k <= d).

    Cholesky-QR, twice for accuracy: a few small products, where LAPACK's QR can crawl when
    the BLAS threads compete for busy cores. Falls back to QR when the columns are too close
    to dependent for it.
    """
    q = columns
    try:
        for _ in range(2):
            lower = np.linalg.cholesky(q.T @ q)
            q = np.linalg.solve(lower, q.T).T
    except np.linalg.LinAlgError:
        q, _ = np.linalg.qr(columns)
    return q


def _exact_pairs(
    reduced: np.ndarray, radius_sq: float, batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Every pair (a < b) of rows of ``reduced`` within squared distance ``radius_sq``, by a
    blocked all-pairs search: (a, b, rows done so far) per block of ``batch`` rows."""
    total = len(reduced)
    norms = np.einsum("ij,ij->i", reduced, reduced)
    for start in range(0, total, batch):
        stop = min(start + batch, total)
        block = reduced[start:stop] @ reduced[start:].T  # this block against itself and later
        block *= -2.0
        block += norms[start:stop, None]
        block += norms[None, start:]
        rows, cols = np.nonzero(block <= radius_sq)
        a, b = rows + start, cols + start
        keep = b > a  # each pair once, never an image with itself
        yield a[keep], b[keep], stop


def _ann_pairs(
    vectors: np.ndarray, threshold: float, nprobe: int = ANN_NPROBE
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]]:
    """Pairs (a < b) of rows of ``vectors`` whose inner product may reach ``threshold``,
    drawn from an inverted-file index over them, in chunks of :data:`ANN_CHUNK` rows:
    (a, b, sure, rows done so far), ``sure`` marking the pairs whose score is above the
    threshold by more than the float16 error (the others need a check on the vectors).

    The lists are k-means clusters of the vectors projected on their
    :data:`ANN_CLUSTER_DIM` main axes (cheap to train and assign; about
    :data:`ANN_LIST_SIZE` images each); each image goes into its nearest list and is
    compared with the images of its ``nprobe`` nearest lists, on float16 copies of the full
    vectors: a pre-filter on a few axes proposes far too many pairs where vectors crowd
    along their main axes. Near-duplicates lie far inside the threshold, so they share a
    list or sit in neighbouring ones; a pair whose images fall in lists neither one visits
    is missed. Queries run in list order, so that the lists they visit stay in cache. The
    cost grows with N x nprobe x :data:`ANN_LIST_SIZE` instead of N x N. Memory: float16
    vectors (half the float32 ones) and the list numbers."""
    from .ann.raw import faiss_module

    faiss = faiss_module()
    begun = time.perf_counter()
    total, dim = vectors.shape
    nlist = max(1, min(ANN_MAX_LISTS, total // ANN_LIST_SIZE))
    nprobe = min(nprobe, nlist)
    reduced = _project(vectors, min(ANN_CLUSTER_DIM, dim)) if dim > ANN_CLUSTER_DIM else vectors
    reduced = np.ascontiguousarray(reduced, dtype=np.float32)
    kmeans = faiss.Kmeans(
        reduced.shape[1],
        nlist,
        niter=10,
        seed=0,
        max_points_per_centroid=32,
        min_points_per_centroid=1,
    )
    sample = np.random.default_rng(0).choice(total, min(total, 32 * nlist), replace=False)
    kmeans.train(reduced[np.sort(sample)])
    coarse_dis, lists = kmeans.index.search(reduced, nprobe)  # nearest lists first
    log.info(
        "ann lists: %d lists, clustered and assigned in %.1f s", nlist, time.perf_counter() - begun
    )
    del reduced
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.by_residual = False  # codes of the vectors themselves: no quantizer needed
    index.is_trained = True  # float16 needs no training
    for start in range(0, total, ANN_CHUNK):
        rows = np.ascontiguousarray(vectors[start : start + ANN_CHUNK], dtype=np.float32)
        first = np.ascontiguousarray(lists[start : start + ANN_CHUNK, 0], dtype=np.int64)
        ids = np.arange(start, start + len(rows), dtype=np.int64)
        index.add_core(len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(ids), faiss.swig_ptr(first))
    index.nprobe = nprobe
    largest = max(
        float(
            np.einsum("ij,ij->i", vectors[lo : lo + ANN_CHUNK], vectors[lo : lo + ANN_CHUNK]).max()
        )
        for lo in range(0, total, ANN_CHUNK)
    )
    slack = ANN_SLACK * max(1.0, largest)
    log.info("ann index: float16 vectors added in %.1f s", time.perf_counter() - begun)
    order = np.argsort(lists[:, 0], kind="stable")
    for start in range(0, total, ANN_CHUNK):
        chunk = order[start : start + ANN_CHUNK]
        lims, scores, found = index.range_search_preassigned(
            vectors[chunk], threshold - slack, lists[chunk], coarse_dis[chunk]
        )
        a = np.repeat(chunk, np.diff(lims.astype(np.int64)))
        keep = found > a  # each pair once (it is found from both ends), never an image itself
        yield (
            a[keep],
            found[keep].astype(np.int64),
            scores[keep] >= threshold + slack,
            min(start + ANN_CHUNK, total),
        )
    log.info("ann range search (nprobe %d): done at %.1f s", nprobe, time.perf_counter() - begun)


def _link_copies(
    space: Space,
    ids: np.ndarray,
    vectors: np.ndarray,
    threshold: float,
    components: _Components,
) -> int:
    """Link each image to the images whose best copy view scores ``threshold`` against it;
    returns the links made."""
    index = space.copy_index()
    position = {int(image_id): n for n, image_id in enumerate(ids)}
    linked = 0
    for lo in range(0, len(ids), BATCH):
        for row, image_id, _ in index.linked(
            vectors[lo : lo + BATCH], COPY_NEIGHBOURS + 1, threshold
        ):
            other = position.get(image_id)
            if other is not None and other != lo + row:
                components.union(lo + row, other)
                linked += 1
    return linked


def near_duplicates(
    space: Space,
    threshold: float,
    *,
    progress: ProgressCallback | None = None,
    batch: int = BATCH,
    project_dim: int = PROJECT_DIM,
    method: DupMethod = "auto",
    copies: bool = False,
) -> list[DupGroup]:
    """Groups of images in a space linked by a cosine score of at least ``threshold`` (or by
    identical bytes), as connected components, largest first.

    With ``copies`` (a copy-mode space only) an image is also linked to the images one of
    whose copy views scores at least ``threshold`` against it, among its
    :data:`COPY_NEIGHBOURS` best (crops, smaller or turned copies of another image; see
    :mod:`featx_search.copies`): a flat search of every vector over all the views.

    ``method`` says how candidate pairs are found: ``all`` compares every pair in blocks of
    ``batch`` rows on the vectors projected on their ``project_dim`` main axes (a lossless
    pre-filter, see :func:`_project`; no N x N matrix; the work grows with N squared) and
    confirms each on the full vectors: exact, the reference. ``ann`` range-searches an
    inverted-file index over float16 copies of the full vectors (see :func:`_ann_pairs`;
    the work grows with N, a pair lying in lists the search does not visit can be missed)
    and confirms the pairs within float16 error of the threshold. ``auto`` is ``ann`` from
    :data:`ANN_MIN_IMAGES` images on. Memory: the vectors, plus their projection and one
    block of distances (``all``) or their float16 copy (``ann``, half the vectors).
    """
    if method not in DUP_METHODS:
        raise ConfigError(
            f"unknown duplicates method {method!r}",
            hint=f"choose one of: {', '.join(DUP_METHODS)}",
            param="method",
        )
    started = time.perf_counter()
    generation, ids, vectors = space.vectors()
    facts = space.image_facts()
    if [f.id for f in facts] != ids.tolist():  # changed between the two reads: read again
        generation, ids, vectors = space.vectors()
        facts = space.image_facts(ids.tolist())
    read = time.perf_counter() - started
    total, dim = vectors.shape
    components = _Components(total)
    _link_identical(facts, components)
    use_ann = (method == "ann" or (method == "auto" and total >= ANN_MIN_IMAGES)) and total > 1
    pairs: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]]
    if use_ann:
        pairs = _ann_pairs(vectors, threshold)
    else:
        reduced = _project(vectors, project_dim) if dim > 2 * project_dim and total > 1 else vectors
        # Unit vectors scoring >= t lie within squared distance 2 - 2t; the slack covers
        # rounding and vectors whose norm is not exactly 1.
        radius_sq = 2.0 - 2.0 * threshold + 1e-3
        pairs = ((a, b, None, done) for a, b, done in _exact_pairs(reduced, radius_sq, batch))
    proposed = confirmed = 0
    for a, b, sure, done in pairs:
        proposed += len(a)
        if sure is not None:  # linked at once; the rest is checked below
            components.union_many(a[sure], b[sure])
            confirmed += int(sure.sum())
            a, b = a[~sure], b[~sure]
        for lo in range(0, len(a), 50_000):  # confirm on the full vectors, in bounded chunks
            pa, pb = a[lo : lo + 50_000], b[lo : lo + 50_000]
            scores = np.einsum("ij,ij->i", vectors[pa], vectors[pb])
            ok = scores >= threshold
            components.union_many(pa[ok], pb[ok])
            confirmed += int(ok.sum())
        if progress is not None:
            progress(Progress(done, total, elapsed=time.perf_counter() - started))
    if copies and total > 1:
        confirmed += _link_copies(space, ids, vectors, threshold, components)
    log.info(
        "near-duplicates (%s): %d vectors (generation %d), %d pairs proposed, %d confirmed; "
        "%.1f s (%.1f s reading vectors and facts)",
        "ann" if use_ann else "all pairs",
        total,
        generation,
        proposed,
        confirmed,
        time.perf_counter() - started,
        read,
    )
    return _make_groups(
        facts, components.groups(), lambda a, b: float(np.dot(vectors[a], vectors[b]))
    )
