"""Keeping a space's index in step with its settings: what ``info`` reports of it, changing
its index type or budget, rebuilding, whitening, recall, and the one decision to publish.

The :class:`~featx_search.space.Space` methods of the same names call these with the store
they hold (the writer, under its lock, for changes).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .ann.spec import AUTO, SearchParams, parse_memory
from .errors import ConfigError
from .query import check_k
from .records import IndexSettings
from .reports import RecallReport, SpaceInfo, WhitenReport

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .ann.publish import BuildInfo
    from .reader import Reader
    from .space import Space
    from .store import Store


def space_info(space: Space, store: Reader) -> SpaceInfo:
    """The space with its counts and the state of its index."""
    from .ann.files import kind_spec

    record = store.space(space.id)
    manifest = store.manifest(record.id)
    settings = store.index_settings(record.id)
    whitening = space.whitening()
    spec = record.spec
    return SpaceInfo(
        id=record.id,
        fingerprint=record.fingerprint,
        label=record.label,
        model=spec.model,
        weights=spec.weights,
        layers=spec.layers,
        pool=spec.pool,
        dim=spec.dim,
        count=record.count,
        generation=record.generation,
        index_generation=manifest.generation if manifest else None,
        whitened=None if whitening is None else whitening.dims,
        index_spec=settings.spec or AUTO,
        index_kind=None if manifest is None else kind_spec(manifest.kind),
        precision=spec.precision,
    )


def settle(
    space: Space,
    store: Store,
    index: VectorIndex | None = None,
    generation: int | None = None,
) -> BuildInfo | None:
    """Publish the space's index when its file is missing, behind the store or of another
    kind than the space wants now: ``index`` (kept up to date by a sync) when it mirrors
    the store's current generation (``generation``; None: the one read here), else one
    rebuilt from the store. The one place that decides to publish; on a server library
    under the space's publish lock, so that of several writers one at a time decides."""
    from .ann.files import kind_spec
    from .ann.publish import publish_index, rebuild_index, wanted_spec

    with store.publishing(space.id):
        record = store.space(space.id)
        manifest = store.manifest(space.id)
        space.forget()
        if manifest is not None and manifest.generation == record.generation:
            if kind_spec(manifest.kind) == wanted_spec(store, record):
                return None
            return rebuild_index(store, record)
        if index is None or (generation is not None and generation != record.generation):
            return rebuild_index(store, record)
        if generation is None and store.location.path is None:
            return rebuild_index(store, record)  # other writers: only a known generation is safe
        publish_index(store, record, index, record.generation)
        return None


def configure_index(
    space: Space,
    store: Store,
    index: str | None,
    max_memory: int | str | None,
    params: SearchParams | None,
) -> BuildInfo | None:
    """Store the space's new index settings and publish what they call for."""
    from .ann.raw import check_spec

    old = store.index_settings(space.id)
    spec = old.spec
    if index is not None:
        checked = check_spec(index, space.dim)
        spec = None if checked == AUTO else checked
    budget = old.max_memory if max_memory is None else parse_memory(max_memory)
    fixed = {**old.params, **(params.to_dict() if params else {})}
    store.set_index_settings(space.id, IndexSettings(spec, budget, fixed))
    return settle(space, store)


def rebuild(space: Space, store: Store) -> BuildInfo:
    """Rebuild the space's index from the stored vectors and publish it."""
    from .ann.publish import rebuild_index

    built = rebuild_index(store, store.space(space.id))
    space.forget()
    return built


def whiten(space: Space, store: Store, dims: int) -> WhitenReport:
    """Learn (``dims`` > 0) or remove (0) the space's whitening; rebuild and publish."""
    from .ann.publish import rebuild_index
    from .whiten import learn

    if dims < 0:
        raise ConfigError(f"dims must be 0 (off) or more, got {dims}", param="dims")
    _, _, vectors = store.vectors(space.id)
    whitening = learn(vectors, dims) if dims else None
    store.set_transform(space.id, None if whitening is None else whitening.to_bytes())
    rebuild_index(store, store.space(space.id))
    space.forget()
    return WhitenReport(space.fingerprint, space.label, dims, len(vectors))


def recall(
    space: Space, store: Reader, k: int, sample: int, seed: int, params: SearchParams | None
) -> RecallReport:
    """Recall@k of the space's index against exact search on ``sample`` stored vectors (the
    exact neighbours computed by streaming the store in chunks)."""
    from .ann.publish import recall_from_store

    check_k(k)
    if sample < 1:
        raise ConfigError(f"sample must be at least 1, got {sample}", param="sample")
    index = space.index()
    merged = space.search_params(params)
    started = time.perf_counter()
    record = store.space(space.id, counts=False)
    value, count = recall_from_store(
        store, record, index, k=k, sample=sample, seed=seed, params=merged
    )
    return RecallReport(
        space=space.fingerprint,
        spec=index.spec,
        count=count,
        k=k,
        queries=min(sample, count),
        recall=value,
        params=index.params.merged(merged).to_dict(),
        seconds=time.perf_counter() - started,
    )
