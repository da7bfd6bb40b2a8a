"""Options as values: what a query asks for, how a sync runs, and what progress reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .ann.spec import SearchParams
from .compute import Compute
from .errors import ConfigError
from .query import Filters, check_k, check_threshold

MAX_EXPAND = 50


@dataclass(frozen=True, kw_only=True)
class Query:
    """How to answer a search: ``k`` results per query, best first.

    - ``filters`` limit which images may be returned; they apply inside the FAISS search,
      so ``k`` results come back whenever ``k`` images pass.
    - ``threshold``: drop matches whose cosine score is below it.
    - ``exclude_self``: never return a query image itself (when it is indexed).
    - ``combine``: search once with the normalised mean of all query vectors (one result
      list for all queries).
    - ``params``: nprobe (IVF), ef_search (HNSW) and rerank (PQ/SQ codes) for these queries,
      over the space's own; higher is slower and more exact.
    - ``trim``: query images given as pictures (search by image) lose the dark or bright bars
      a screenshot or a letterbox put around them before they are embedded (see
      :func:`featx_search.images.trim_bars`); the stored images are embedded as they are.
    - ``expand``: query expansion (alpha-QE): search, mix the query with its first
      ``expand`` results (weighted by their score cubed), and search again. It helps
      "more of this kind" searches on some collections and hurts on others (measured in
      docs/benchmarks.md), so it is off (0) by default.
    - ``augment``: database-side augmentation: the first results (up to 100) are scored
      against each one's vector mixed with its ``augment`` nearest stored images (see
      :mod:`featx_search.augment`), which become the scores; "more of this kind" gets better
      on every evaluation set (docs/benchmarks.md), for one more search of the short list.
      Off (0) by default; not applied to copy searches.
    - ``copies``: look for copies of the query (crops, smaller or compressed copies, turned
      or recoloured ones): each image scores the best of its vector and its copy views, its
      normalised view against the query's own (see :mod:`featx_search.copies`; a search by
      a picture embeds that view too, a second model run). Only a copy-mode space answers
      it (``index --copies``); whitening is not applied.
    - ``verify``: in a copy search by a picture, results that tie with the first (within
      0.02) are told apart by local evidence: where the query's local features agree in
      place (see :mod:`featx_search.verify`). It changes their order, not their scores. It
      runs the local model ``index --copies`` saves (:meth:`Space.save_local_model`); without
      one the first check builds the model in torch (a few seconds) and saves it.
    """

    k: int = 10
    filters: Filters = field(default_factory=Filters)
    threshold: float | None = None
    exclude_self: bool = False
    combine: bool = False
    params: SearchParams = field(default_factory=SearchParams)
    expand: int = 0
    trim: bool = True
    augment: int = 0
    copies: bool = False
    verify: bool = True

    def __post_init__(self) -> None:
        check_k(self.k)
        check_threshold(self.threshold)
        if not 0 <= self.expand <= MAX_EXPAND:
            raise ConfigError(
                f"expand must be in 0..{MAX_EXPAND}, got {self.expand}",
                hint="query expansion mixes in a few first results: try 1 or 2",
                param="expand",
            )
        if not 0 <= self.augment <= MAX_EXPAND:
            raise ConfigError(
                f"augment must be in 0..{MAX_EXPAND}, got {self.augment}",
                hint="database-side augmentation mixes in a few neighbours: try 1 to 3",
                param="augment",
            )


@dataclass(frozen=True, kw_only=True)
class SyncOptions:
    """How a sync runs.

    ``batch_size`` images go through the model at once and are committed together;
    ``workers`` threads decode ahead of the model (default: one per core, at most 8);
    ``retry_failed`` tries files that failed before even when they have not changed;
    ``prune_empty`` removes the stored files of a scanned folder that is empty (an empty
    folder is otherwise taken for an unmounted drive and its files kept); ``compute`` says
    where and how the model runs, which never changes the space.
    """

    batch_size: int = 16
    workers: int | None = None
    retry_failed: bool = False
    prune_empty: bool = False
    compute: Compute = field(default_factory=Compute)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be at least 1, got {self.batch_size}", param="batch_size"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}", param="workers")


@dataclass(frozen=True)
class Progress:
    """Passed to a progress callback: ``done`` of ``total`` units (images embedded, vectors
    compared), the last ``path`` handled when there is one, ``failed`` files so far and the
    seconds since the operation started."""

    done: int
    total: int
    path: str = ""
    failed: int = 0
    elapsed: float = 0.0


ProgressCallback = Callable[[Progress], None]
"""The one callback type of every long operation (sync, duplicates)."""
