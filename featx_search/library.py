"""The public facade: :class:`Library` opens a library, indexes folders and searches it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .compute import Compute
from .config import ExtractorSpec
from .dups import DEFAULT_DUP_THRESHOLD, DupGroup
from .errors import ConfigError, ImageError, LayerError, SpaceError
from .images import ImageInput, describe, load_input
from .indexspec import AUTO, SearchParams, parse_memory
from .ingest import IndexReport, ProgressCallback
from .query import Filters, Match, check_k, check_threshold, combine_vectors, search_vectors
from .reader import IndexSettings, Reader, SpaceRecord

if TYPE_CHECKING:
    from .extract import Extractor, Layer
    from .index import BuildInfo, VectorIndex
    from .store import Store

log = logging.getLogger(__name__)

ENV_DB = "FEATX_DB"


def default_db_path() -> Path:
    """``$FEATX_DB`` when set, else ``library.db`` in the per-user data directory."""
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB]).expanduser()
    from platformdirs import user_data_path

    return user_data_path("featx-search") / "library.db"


@dataclass(frozen=True)
class SpaceInfo:
    """An embedding space of a library, as shown by ``info``."""

    id: int
    fingerprint: str
    label: str
    model: str
    weights: str
    layers: tuple[str, ...]
    pool: str
    dim: int
    count: int
    generation: int
    index_generation: int | None
    whitened: int | None = None  # the index's vector size when PCA-whitening is on
    # the requested index spec ("auto" or a FAISS factory string) and the built one
    index_spec: str = "auto"
    index_kind: str | None = None

    @property
    def index_current(self) -> bool:
        """True when the published index file matches the stored vectors."""
        return self.index_generation == self.generation

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "label": self.label,
            "model": self.model,
            "weights": self.weights,
            "layers": list(self.layers),
            "pool": self.pool,
            "dim": self.dim,
            "count": self.count,
            "generation": self.generation,
            "index_generation": self.index_generation,
            "index_current": self.index_current,
            "whitened": self.whitened,
            "index_spec": self.index_spec,
            "index_kind": self.index_kind,
        }


@dataclass(frozen=True)
class CheckReport:
    """What :meth:`Library.check` found: ``problems`` (damage) and ``notes`` (harmless)."""

    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LibraryInfo:
    """Summary of a library: where it is, schema revision, images by state, spaces."""

    path: str
    revision: str | None
    images: dict[str, int]
    spaces: list[SpaceInfo]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "revision": self.revision,
            "images": dict(self.images),
            "spaces": [s.to_dict() for s in self.spaces],
        }


class Library:
    """A photo library: a SQLite database plus FAISS index files beside it.

    Use as a context manager::

        with Library.open("photos.db") as lib:
            report = lib.index(["~/Pictures"], spec=ExtractorSpec(model="resnet50"))
            for match in lib.search("query.jpg", k=5):
                print(match.rank, f"{match.score:.3f}", match.path)
    """

    def __init__(self, store: Reader) -> None:
        # A Reader (plain sqlite3) until something writes; then the Store (SQLAlchemy).
        self._store = store
        self._extractors: dict[tuple[ExtractorSpec, Compute], Extractor] = {}
        self._indexes: dict[int, tuple[int, VectorIndex]] = {}

    @classmethod
    def open(cls, db: str | os.PathLike[str] | None = None, *, create: bool = True) -> Library:
        """Open the library at ``db`` (default: :func:`default_db_path`) and migrate it to the
        current schema. A missing library is created, or with ``create=False`` refused.
        Raises :class:`LibraryError`."""
        path = Path(db if db is not None else default_db_path())
        reader = Reader.open(path)  # at the newest schema: no SQLAlchemy until a write
        if reader is not None:
            return cls(reader)
        from .store import Store

        return cls(Store.open(path, create=create))

    def _writer(self) -> Store:
        """The library's :class:`Store`, opened on the first write (it imports SQLAlchemy)."""
        from .store import Store

        if not isinstance(self._store, Store):
            reader = self._store
            self._store = Store.open(reader.path, create=False)
            reader.close()
        return self._store

    @property
    def path(self) -> Path:
        """The database file."""
        return self._store.path

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- spaces -------------------------------------------------------------------------

    def spaces(self) -> list[SpaceInfo]:
        """Every embedding space, oldest first."""
        out = []
        for record in self._store.spaces():
            manifest = self._store.manifest(record.id)
            settings = self._store.index_settings(record.id)
            spec = record.spec
            out.append(
                SpaceInfo(
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
                    whitened=_whitened(self._store, record),
                    index_spec=settings.spec or AUTO,
                    index_kind=_kind(manifest.kind) if manifest else None,
                )
            )
        return out

    def _record(self, space: str | None) -> SpaceRecord:
        records = self._store.spaces()
        if not records:
            raise SpaceError(
                f"library {self.path} has no images yet",
                hint="index a folder first: featx-search index PATH",
            )
        if space is None:
            if len(records) == 1:
                return records[0]
            raise SpaceError(
                f"library {self.path} has {len(records)} spaces; choose one with --space",
                hint="spaces: "
                + "; ".join(f"{r.fingerprint} ({r.label}, {r.count} images)" for r in records),
            )
        found = [
            r
            for r in records
            if space in (str(r.id), r.label) or r.fingerprint.startswith(space.lower())
        ]
        if len(found) == 1:
            return found[0]
        listing = "; ".join(f"{r.fingerprint} ({r.label})" for r in records)
        problem = "matches several spaces" if found else "matches no space"
        raise SpaceError(f"--space {space!r} {problem}", hint=f"spaces: {listing}")

    def _extractor(self, spec: ExtractorSpec, compute: Compute | None = None) -> Extractor:
        key = (spec, compute or Compute())
        if key not in self._extractors:
            from .extract import load_extractor

            self._extractors[key] = load_extractor(*key)
        return self._extractors[key]

    def _extractor_for(
        self, record: SpaceRecord, *, writing: bool, compute: Compute | None = None
    ) -> Extractor:
        """The extractor of a stored space. Vectors for the store must match the space exactly;
        queries tolerate a torch/torchvision release change (with a warning)."""
        extractor = self._extractor(record.spec.request, compute)
        resolved = replace(record.spec.request, layers=record.spec.layers, pool=record.spec.pool)
        if extractor.space.fingerprint != record.fingerprint and resolved != record.spec.request:
            # Made with a model's default layers or pooling, which have changed since: rebuild
            # the space from what it resolved to.
            extractor = self._extractor(resolved, compute)
        if extractor.space.preprocess != record.spec.preprocess:
            # The input handling stored with the space wins over the model's current default
            # (inputs are prepared from record.spec.preprocess everywhere).
            extractor.space = replace(extractor.space, preprocess=record.spec.preprocess)
        if extractor.space.fingerprint != record.fingerprint:
            now, then = extractor.space.identity(), record.spec.identity()
            keys = [key for key in then if then[key] != now[key]]
            changed = ", ".join(f"{key}: {then[key]} -> {now[key]}" for key in keys)
            if not writing and set(keys) <= {"torch", "torchvision"}:
                log.warning(
                    "space %s was built with other library versions (%s); query vectors may "
                    "differ slightly from stored ones",
                    record.fingerprint,
                    changed,
                )
                return extractor
            raise SpaceError(
                f"space {record.fingerprint} ({record.label}) cannot be reproduced here "
                f"({changed})",
                hint="index again with explicit --model/--weights/--layer to make a new space",
            )
        return extractor

    # -- indexing -----------------------------------------------------------------------

    def index(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        spec: ExtractorSpec | None = None,
        space: str | None = None,
        batch_size: int = 16,
        workers: int | None = None,
        progress: ProgressCallback | None = None,
        dry_run: bool = False,
        retry_failed: bool = False,
        prune_empty: bool = False,
        index_spec: str | None = None,
        max_memory: int | str | None = None,
        compute: Compute | None = None,
    ) -> IndexReport:
        """Index the image files under ``paths`` (folders, recursively, or single files).

        The space is ``spec`` when given, else the stored space ``space``, else the library's
        only space, else the default :class:`ExtractorSpec`. Only new and changed files are
        embedded; moved files keep their vectors; files gone from a scanned folder are removed,
        except under folders that cannot be read or are empty (``prune_empty`` removes those
        too). Failed files are tried again when they change, or with ``retry_failed``.
        ``dry_run`` writes nothing and lists the changes in :attr:`IndexReport.changes`.
        ``progress`` is called after every committed batch. Ctrl-C (in the main thread)
        stops after the batch in flight: the report says ``interrupted``, and the same call
        later resumes. Raises :class:`LibraryError` when another indexer holds the library.
        ``index_spec`` (a FAISS factory string or ``auto``) and ``max_memory`` (bytes or a
        size such as ``2G``, for ``auto``) change the space's index before it is updated.
        ``workers`` threads decode ahead of the model; ``compute`` says where and how the
        model runs (device, threads, layout), which does not change the space.
        """
        from .ingest import run_index

        paths = list(paths)
        if spec is None and (space is not None or self._store.spaces()):
            record = self._record(space)
        else:
            resolved = self._extractor(spec or ExtractorSpec(), compute).space
            if dry_run:
                stored = [r for r in self._store.spaces() if r.fingerprint == resolved.fingerprint]
                record = stored[0] if stored else SpaceRecord(-1, resolved, 0, 0)
            else:
                record = self._writer().ensure_space(resolved)
        if dry_run:
            return run_index(
                self._writer(),
                lambda: self._extractor_for(record, writing=True, compute=compute),
                record,
                paths,
                dry_run=True,
                retry_failed=retry_failed,
                prune_empty=prune_empty,
            )
        store = self._writer()
        with store.writer_lock():
            self._set_index_settings(record, index_spec, max_memory)
            report = run_index(
                store,
                lambda: self._extractor_for(record, writing=True, compute=compute),
                record,
                paths,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                retry_failed=retry_failed,
                prune_empty=prune_empty,
            )
            _publish_if_needed(store, record)
        self._indexes.pop(record.id, None)
        return report

    def _set_index_settings(
        self,
        record: SpaceRecord,
        index_spec: str | None,
        max_memory: int | str | None,
        params: SearchParams | None = None,
    ) -> None:
        from .index import check_spec

        if index_spec is None and max_memory is None and params is None:
            return
        old = self._store.index_settings(record.id)
        spec = old.spec
        if index_spec is not None:
            checked = check_spec(index_spec, record.spec.dim)
            spec = None if checked == AUTO else checked
        budget = old.max_memory if max_memory is None else parse_memory(max_memory)
        fixed = dict(old.params)
        if params is not None:
            fixed.update(params.to_dict())
        self._writer().set_index_settings(record.id, IndexSettings(spec, budget, fixed))

    def reindex(
        self,
        *,
        space: str | None = None,
        index_spec: str | None = None,
        max_memory: int | str | None = None,
        params: SearchParams | None = None,
    ) -> BuildInfo:
        """Rebuild a space's index from its stored vectors (nothing is re-embedded, torch is
        not imported) and publish it. ``index_spec`` / ``max_memory`` change the space's index
        first (see :meth:`index`); ``params`` fix nprobe / efSearch / rerank for the space's
        searches. Returns a :class:`BuildInfo` (spec built, vectors, tuned params, bytes)."""
        from .index import rebuild_index

        record = self._record(space)
        store = self._writer()
        with store.writer_lock():
            self._set_index_settings(record, index_spec, max_memory, params)
            built = rebuild_index(store, record)
        self._indexes.pop(record.id, None)
        return built

    def recall(
        self,
        *,
        space: str | None = None,
        k: int = 10,
        sample: int = 200,
        seed: int = 0,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> RecallReport:
        """Recall@k of the space's current index against exact search, measured on ``sample``
        stored vectors (each asks for its k nearest other images). Reads every stored vector
        of the space for the exact answers."""
        from .index import recall_at_k

        check_k(k)
        if sample < 1:
            raise ConfigError(f"--sample must be at least 1, got {sample}")
        record = self._record(space)
        index = self._index(record)
        params = self._params(record, nprobe, ef_search, rerank)
        from .whiten import for_index

        _, ids, vectors = self._store.vectors(record.id)
        vectors = for_index(self._store, record, vectors)  # as they are in the index
        started = time.perf_counter()
        value = recall_at_k(index, ids, vectors, k=k, sample=sample, seed=seed, params=params)
        return RecallReport(
            space=record.fingerprint,
            spec=index.spec,
            count=len(ids),
            k=k,
            queries=min(sample, len(ids)),
            recall=value,
            params=index.params.merged(params).to_dict(),
            seconds=time.perf_counter() - started,
        )

    def _params(
        self,
        record: SpaceRecord,
        nprobe: int | None,
        ef_search: int | None,
        rerank: int | None,
    ) -> SearchParams:
        """The space's fixed search params overridden by the per-call ones."""
        fixed = SearchParams.from_dict(self._store.index_settings(record.id).params)
        return fixed.merged(SearchParams(nprobe=nprobe, ef_search=ef_search, rerank=rerank))

    # -- queries ------------------------------------------------------------------------

    def _index(self, record: SpaceRecord) -> VectorIndex:
        from .index import open_index

        cached = self._indexes.get(record.id)
        if cached is not None and cached[0] == record.generation:
            return cached[1]
        index, generation = open_index(self._store, record, mmap=None)
        self._indexes[record.id] = (generation, index)
        return index

    def embed(self, images: Sequence[ImageInput], *, space: str | None = None) -> np.ndarray:
        """Vectors of ``images`` (paths or PIL images) in a space: float32 (N, dim).

        Raises :class:`ImageError` naming the first image that cannot be decoded.
        """
        return self._embed(self._record(space), images)

    def _embed(self, record: SpaceRecord, images: Sequence[ImageInput]) -> np.ndarray:
        extractor = self._extractor_for(record, writing=False)
        batch = np.stack([load_input(image, record.spec.preprocess) for image in images])
        return extractor.embed(batch)

    def search(
        self,
        query: ImageInput,
        *,
        k: int = 10,
        space: str | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
        exclude_self: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> list[Match]:
        """The ``k`` most similar indexed images to ``query`` (a path or PIL image), best first.

        See :meth:`search_many` for the options.
        """
        return self.search_many(
            [query],
            k=k,
            space=space,
            filters=filters,
            threshold=threshold,
            exclude_self=exclude_self,
            nprobe=nprobe,
            ef_search=ef_search,
            rerank=rerank,
        )[0]

    def similar(
        self,
        image: str | os.PathLike[str] | int,
        *,
        k: int = 10,
        space: str | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
        exclude_self: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> list[Match]:
        """The ``k`` images most similar to an indexed image, given by path or image id.

        Uses the stored vector: no model is loaded (torch is not imported). The image itself
        comes first unless ``exclude_self``. Raises :class:`ImageError` when the image is not
        indexed in the space. See :meth:`search_many` for the options.
        """
        return self.similar_many(
            [image],
            k=k,
            space=space,
            filters=filters,
            threshold=threshold,
            exclude_self=exclude_self,
            nprobe=nprobe,
            ef_search=ef_search,
            rerank=rerank,
        )[0]

    def similar_many(
        self,
        images: Sequence[str | os.PathLike[str] | int],
        *,
        k: int = 10,
        space: str | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
        exclude_self: bool = False,
        combine: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> list[list[Match]]:
        """:meth:`similar` for several indexed images (paths or ids): one list per image, or
        with ``combine`` a single list for the normalised mean of their vectors. No model is
        loaded. Options as in :meth:`search_many`."""
        check_k(k)
        check_threshold(threshold)
        if not images:
            return []
        record = self._record(space)
        image_ids = [self._stored_id(record, image) for image in images]
        _, ids, vectors = self._store.vectors(record.id, image_ids)
        by_id = dict(zip(ids.tolist(), vectors, strict=True))
        queries = np.stack([by_id[i] for i in image_ids])
        selves = [[i] for i in image_ids]
        params = self._params(record, nprobe, ef_search, rerank)
        return self._query(
            record, queries, selves, k, filters, threshold, exclude_self, combine, params
        )

    def image_path(self, image: str | os.PathLike[str] | int) -> str:
        """The absolute path of a stored image given by id (or a path, returned absolute).
        Raises :class:`ImageError` for an unknown id."""
        if not isinstance(image, int):
            return str(Path(image).expanduser().absolute())
        found = self._store.paths([image]).get(image)
        if found is None:
            raise ImageError(f"no image with id {image}", hint="see the image_id of a result")
        return found

    def _stored_id(self, record: SpaceRecord, image: str | os.PathLike[str] | int) -> int:
        if isinstance(image, int):
            image_id: int | None = image
            name = f"image id {image}"
        else:
            name = os.fspath(image)
            image_id = self._store.image_id(Path(image).expanduser().absolute().resolve())
        if image_id is None or len(self._store.vectors(record.id, [image_id])[1]) == 0:
            raise ImageError(
                f"{name} is not indexed in space {record.fingerprint} ({record.label})",
                hint="index it first, or use `featx-search search` for any image file",
            )
        return image_id

    def search_many(
        self,
        queries: Sequence[ImageInput],
        *,
        k: int = 10,
        space: str | None = None,
        filters: Filters | None = None,
        threshold: float | None = None,
        exclude_self: bool = False,
        combine: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> list[list[Match]]:
        """:meth:`search` for several queries at once (embedded in one batch).

        - ``filters`` (:class:`Filters`) limit which images may be returned; they are applied
          inside the FAISS search, so ``k`` results come back whenever ``k`` images pass.
        - ``threshold``: drop matches whose cosine score is below it.
        - ``exclude_self``: never return a query image itself (when it is indexed).
        - ``combine``: search once with the normalised mean of all query vectors; the result
          is a list holding one list of matches.
        - ``nprobe`` (IVF indexes), ``ef_search`` (HNSW) and ``rerank`` (PQ/SQ codes)
          override the index's tuned defaults for this query: higher is slower and more exact.
        """
        check_k(k)
        check_threshold(threshold)
        if not queries:
            return []
        record = self._record(space)
        params = self._params(record, nprobe, ef_search, rerank)
        for query in queries:
            if isinstance(query, (str, os.PathLike)) and not Path(query).is_file():
                raise ImageError(
                    f"query image not found: {describe(query)}",
                    hint="give the path of an image file",
                )
        selves: list[list[int]] = [[] for _ in queries]
        if exclude_self:
            for row, query in zip(selves, queries, strict=True):
                if isinstance(query, (str, os.PathLike)):
                    found = self._store.image_id(Path(query).expanduser().absolute().resolve())
                    row.extend([] if found is None else [found])
        params = self._params(record, nprobe, ef_search, rerank)
        vectors = self._embed(record, queries)
        return self._query(
            record, vectors, selves, k, filters, threshold, exclude_self, combine, params
        )

    def _query(
        self,
        record: SpaceRecord,
        vectors: np.ndarray,
        selves: list[list[int]],
        k: int,
        filters: Filters | None,
        threshold: float | None,
        exclude_self: bool,
        combine: bool,
        params: SearchParams,
    ) -> list[list[Match]]:
        if combine:
            vectors = combine_vectors(vectors)
            selves = [sorted({i for row in selves for i in row})]
        allowed = None
        if filters is not None and filters.active:
            allowed = filters.select(self._store.image_facts(record.id))
        from .whiten import for_index

        return search_vectors(
            self._store,
            self._index(record),
            for_index(self._store, record, vectors),  # whitened when the space has it
            k,
            allowed=allowed,
            exclude=selves if exclude_self else (),
            threshold=threshold,
            params=params,
        )

    def duplicates(
        self,
        *,
        threshold: float = DEFAULT_DUP_THRESHOLD,
        exact: bool = False,
        space: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DupGroup]:
        """Groups of duplicate images, largest first, each with a suggested keeper.

        With ``exact`` only byte-identical files (same SHA-256) are grouped and no space is
        needed. Otherwise images whose vectors score at least ``threshold`` are linked (an
        exact range search over the space's stored vectors, in blocks; never an N x N matrix)
        and so are identical files; a group is a connected component. Neither a model nor
        the FAISS index is loaded. ``progress(done, total)`` is
        called after each batch of the range search.
        """
        from .dups import exact_duplicates, near_duplicates

        check_threshold(threshold)
        if exact:
            return exact_duplicates(self._store)
        record = self._record(space)
        return near_duplicates(self._store, record, threshold, progress=progress)

    # -- whitening ----------------------------------------------------------------------

    def whiten(self, dims: int, *, space: str | None = None) -> WhitenReport:
        """Learn PCA-whitening to ``dims`` dimensions from the space's stored vectors and store
        it with the space (``dims=0`` removes it). From then on vectors are whitened as they
        enter the space's index, and queries before they are searched; the stored vectors are
        not changed, and images indexed later are whitened with what was learned now.

        Rebuilds and publishes the space's index. Raises :class:`ConfigError` when ``dims`` is
        larger than the vectors or not below the number of indexed images.
        """
        from .index import open_index, publish_index
        from .whiten import learn

        if dims < 0:
            raise ConfigError(f"--whiten must be 0 (off) or more, got {dims}")
        record = self._record(space)
        store = self._writer()
        with store.writer_lock():
            _, _, vectors = store.vectors(record.id)
            whitening = learn(vectors, dims) if dims else None
            store.set_transform(record.id, whitening.to_bytes() if whitening is not None else None)
            current = store.space(record.id)
            index, generation = open_index(store, current)
            publish_index(store, current, index, generation)
        self._indexes.pop(record.id, None)
        return WhitenReport(record.fingerprint, record.label, dims, len(vectors))

    # -- state --------------------------------------------------------------------------

    def info(self) -> LibraryInfo:
        """Schema revision, image counts by state, and every space with its index state."""
        return LibraryInfo(
            path=str(self.path),
            revision=self._store.current_revision(),
            images=self._store.image_counts(),
            spaces=self.spaces(),
        )

    def check(self) -> CheckReport:
        """Verify the library: SQLite integrity and foreign keys, image states, and that each
        space's index holds exactly the stored ids (a stale or damaged index file is rebuilt
        in memory and noted, since the store is the truth)."""
        from .index import open_index

        problems = self._store.integrity_problems()
        notes: list[str] = []
        for record in self._store.spaces():
            manifest = self._store.manifest(record.id)
            if manifest is None or manifest.generation != record.generation:
                notes.append(
                    f"space {record.fingerprint}: index file behind the store (rebuilt on next use)"
                )
            index, _ = open_index(self._store, record)
            if sorted(index.ids().tolist()) != self._store.vector_ids(record.id).tolist():
                problems.append(
                    f"space {record.fingerprint}: index ids differ from the stored vectors"
                )
        return CheckReport(problems, notes)

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed."""
        return self._store.failures()


@dataclass(frozen=True)
class WhitenReport:
    """What :meth:`Library.whiten` did: the space, the whitened size (0: off) and how many
    stored vectors it was learned from."""

    space: str
    label: str
    dims: int
    learned_from: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _whitened(store: Reader, record: SpaceRecord) -> int | None:
    from .whiten import stored

    whitening = stored(store, record)
    return None if whitening is None else whitening.dims


@dataclass(frozen=True)
class RecallReport:
    """What :meth:`Library.recall` measured: recall@k of a space's index against exact
    search over ``queries`` stored vectors, with the params it ran with."""

    space: str
    spec: str
    count: int
    k: int
    queries: int
    recall: float
    params: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "spec": self.spec,
            "count": self.count,
            "k": self.k,
            "queries": self.queries,
            "recall": round(self.recall, 4),
            "params": dict(self.params),
            "seconds": round(self.seconds, 3),
        }


def _kind(kind: str) -> str:
    from .index import LEGACY_KIND

    return "Flat" if kind == LEGACY_KIND else kind


def _publish_if_needed(store: Store, record: SpaceRecord) -> None:
    """Publish the space's index when its file is missing, stale or of another spec than the
    space wants now (e.g. after ``--index`` changed it on a run that embedded nothing)."""
    from .index import rebuild_index, wanted_spec

    current = store.space(record.id)
    manifest = store.manifest(record.id)
    if (
        manifest is None
        or manifest.generation != current.generation
        or _kind(manifest.kind) != wanted_spec(store, current)
    ):
        rebuild_index(store, current)


@dataclass(frozen=True)
class SchemaStatus:
    """A library database's schema revision next to the newest one this version knows."""

    path: str
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_status(db: str | os.PathLike[str] | None = None) -> SchemaStatus:
    """The schema revision of ``db`` without migrating it. Raises :class:`LibraryError`."""
    from .store import Store

    store = Store.open(db if db is not None else default_db_path(), migrate=False, create=False)
    try:
        return SchemaStatus(str(store.path), store.current_revision(), store.head_revision())
    finally:
        store.close()


def upgrade_schema(db: str | os.PathLike[str] | None = None) -> SchemaStatus:
    """Migrate ``db`` to the newest schema revision; returns the status afterwards."""
    with Library.open(db, create=False) as lib:
        return schema_status(lib.path)


def list_layers(spec: ExtractorSpec, *, pattern: str | None = None) -> list[Layer]:
    """Every FX node of ``spec.model`` with its output shape for one image and its cost; the
    default layer is marked. ``pattern`` keeps the names that contain it, or match it as a
    glob when it holds ``*``, ``?`` or ``[``. Builds the model (so it may raise
    :class:`ModelError` / :class:`WeightsError`); a pattern that matches nothing raises
    :class:`LayerError`."""
    import fnmatch

    from .extract import list_layers as _list_layers

    rows = _list_layers(spec)
    if pattern is None:
        return rows
    glob = any(c in pattern for c in "*?[")
    kept = [
        r for r in rows if (fnmatch.fnmatchcase(r.name, pattern) if glob else pattern in r.name)
    ]
    if not kept:
        raise LayerError(
            f"no layer of {spec.model} matches --filter {pattern!r}",
            hint=f"run `featx-search layers {spec.model}` without --filter to see every name",
        )
    return kept
