"""Nearest-neighbour queries against a space's index: filters, cut-offs and :class:`Match` rows."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .ann.index import VectorIndex
from .ann.spec import SearchParams
from .errors import ConfigError
from .records import ImageFacts

if TYPE_CHECKING:
    from .copies import CopyIndex
    from .reader import Reader


@dataclass(frozen=True)
class Match:
    """One result: 1-based ``rank``, cosine ``score`` in [-1, 1], the image's id and path."""

    rank: int
    score: float
    image_id: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}", param="k")


def check_threshold(threshold: float | None, param: str = "threshold") -> None:
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ConfigError(
            f"{param} must be a cosine score between -1 and 1, got {threshold}",
            hint="scores are cosine similarities; 0.9 keeps only very close images",
            param=param,
        )


_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2}))?$")


def parse_date(text: str, param: str = "date") -> datetime:
    """A naive datetime from ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM[:SS]``
    (the start of the year, month or day when parts are missing). Raises :class:`ConfigError`."""
    text = text.strip()
    try:
        partial = _PARTIAL_DATE.match(text)
        if partial:
            return datetime(int(partial[1]), int(partial[2] or 1), 1)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{param} {text!r} is not a date",
            hint="use YYYY-MM-DD (or YYYY, YYYY-MM, YYYY-MM-DDTHH:MM)",
            param=param,
        ) from None
    if parsed.tzinfo is not None:  # dates taken are naive local times; compare like with like
        parsed = parsed.astimezone().replace(tzinfo=None)
    return parsed


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Which indexed images a query may return; every given condition must hold.

    - ``under``: the image lies in this folder (recursively).
    - ``glob``: a shell pattern; without a ``/`` it is matched against the file name, with one
      against the whole absolute path (``*`` then also crosses folders). Case follows the OS.
    - ``after`` / ``before``: the date the photo was taken (EXIF), else the file's modification
      time, both naive local time: ``after <= date < before``.
    """

    under: str | None = None
    glob: str | None = None
    after: datetime | None = None
    before: datetime | None = None

    def __post_init__(self) -> None:
        if self.glob is not None and not self.glob:
            raise ConfigError("glob must not be empty", hint="e.g. '*.jpg'", param="glob")
        if self.after and self.before and self.after >= self.before:
            raise ConfigError(
                f"after {self.after:%Y-%m-%d %H:%M} is not before "
                f"before {self.before:%Y-%m-%d %H:%M}",
                hint="after is inclusive, before exclusive: give an earlier after",
                param="after",
            )

    @classmethod
    def from_text(
        cls,
        *,
        under: str | os.PathLike[str] | None = None,
        glob: str | None = None,
        after: str | None = None,
        before: str | None = None,
    ) -> Filters:
        """Filters as a front end receives them: dates as text (see :func:`parse_date`)."""
        return cls(
            under=None if under is None else os.fspath(under),
            glob=glob,
            after=None if after is None else parse_date(after, "after"),
            before=None if before is None else parse_date(before, "before"),
        )

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.under, self.glob, self.after, self.before))

    def folder(self) -> str | None:
        """``under`` as an absolute resolved folder; raises :class:`ConfigError` if missing."""
        if self.under is None:
            return None
        folder = Path(self.under).expanduser().absolute().resolve()
        if not folder.is_dir():
            raise ConfigError(
                f"under {self.under}: no such folder",
                hint="give a folder that was indexed",
                param="under",
            )
        return str(folder)

    def select(self, facts: Iterable[ImageFacts]) -> np.ndarray:
        """The ids (int64, ascending) of the images in ``facts`` that pass every condition."""
        folder = self.folder()
        prefix = folder.rstrip(os.sep) + os.sep if folder else None
        by_name = self.glob is not None and "/" not in self.glob and os.sep not in self.glob
        ids = []
        for fact in facts:
            if prefix is not None and not fact.path.startswith(prefix):
                continue
            if self.glob is not None:
                subject = os.path.basename(fact.path) if by_name else fact.path
                if not fnmatch.fnmatch(subject, self.glob):
                    continue
            if self.after is not None or self.before is not None:
                when = image_date(fact)
                if (self.after is not None and when < self.after) or (
                    self.before is not None and when >= self.before
                ):
                    continue
            ids.append(fact.id)
        return np.array(sorted(ids), dtype=np.int64)


def image_date(fact: ImageFacts) -> datetime:
    """When the photo was taken (EXIF), else the file's modification time (naive local)."""
    if fact.taken_at is not None:
        return fact.taken_at
    return datetime.fromtimestamp(fact.mtime_ns / 1e9)


def search_vectors(
    store: Reader,
    index: VectorIndex | CopyIndex,
    queries: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    exclude: Sequence[Sequence[int]] = (),
    threshold: float | None = None,
    params: SearchParams | None = None,
) -> list[list[Match]]:
    """The ``k`` nearest stored images for each row of ``queries`` (float32 (Q, dim)).

    ``allowed`` (int64 ids) restricts the candidates inside FAISS, so a row still holds ``k``
    matches when ``k`` allowed images exist. ``exclude[i]`` lists ids row ``i`` must not
    return (the query images themselves). Matches scoring below ``threshold`` are dropped.
    ``params`` override the index's nprobe / efSearch / rerank for these queries.
    """
    check_k(k)
    check_threshold(threshold)
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.dim)
    excluded = [set(map(int, row)) for row in exclude] or [set() for _ in range(len(queries))]
    if len(excluded) != len(queries):
        raise ValueError(f"exclude has {len(excluded)} rows for {len(queries)} queries")
    extra = max((len(row) for row in excluded), default=0)
    if allowed is not None and extra:
        # Filtered: every query shares one selector, so take the union out of it and refill.
        union = np.fromiter(set().union(*excluded), dtype=np.int64)
        allowed = np.setdiff1d(allowed, union)
        extra = 0
    scores, ids = index.search(queries, k + extra, selector=allowed, params=params)
    paths = store.paths(int(i) for i in np.unique(ids) if i >= 0)
    results: list[list[Match]] = []
    for row_scores, row_ids, skip in zip(scores, ids, excluded, strict=True):
        matches: list[Match] = []
        for score, image_id in zip(row_scores, row_ids, strict=True):
            if len(matches) == k:
                break
            if image_id < 0 or int(image_id) in skip or int(image_id) not in paths:
                continue  # FAISS pads with -1; a row deleted meanwhile has no path
            if threshold is not None and score < threshold:
                break  # rows are sorted by score
            matches.append(
                Match(len(matches) + 1, float(score), int(image_id), paths[int(image_id)])
            )
        results.append(matches)
    return results


QE_ALPHA = 3.0
"""How much a neighbour weighs in query expansion: its cosine to the query ** alpha."""


def mix(vectors: np.ndarray, neighbours: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """alpha-weighted expansion: each row of ``vectors`` (L2-normalised (Q, D)) plus its
    ``neighbours`` (Q, n, D) weighted by their cosine ``sims`` (Q, n) ** :data:`QE_ALPHA`
    (a negative cosine weighs nothing), re-normalised; float64 (Q, D). The vector itself
    weighs 1. Query expansion mixes a query with its first results; database-side
    augmentation mixes every stored vector with its nearest neighbours."""
    weights = np.clip(np.asarray(sims, dtype=np.float64), 0, None) ** QE_ALPHA
    mixed = np.asarray(vectors, np.float64) + np.einsum(
        "qn,qnd->qd", weights, np.asarray(neighbours, np.float64)
    )
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    result: np.ndarray = mixed / np.maximum(norms, 1e-12)
    return result


def combine_vectors(vectors: np.ndarray) -> np.ndarray:
    """The normalised mean of L2-normalised ``vectors`` (N, dim): one (1, dim) query that
    looks like all of them."""
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0, keepdims=True)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:
        raise ConfigError(
            "combine: the query images cancel out (their mean vector is zero)",
            hint="search them separately, without combine",
            param="combine",
        )
    combined: np.ndarray = (mean / norm).astype(np.float32)
    return combined
