"""A :class:`Space` is one embedding space of a library: its record, whitening, index and
extractor, loaded once and kept while the store does not move on."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from .ann.spec import SearchParams
from .compute import Compute
from .dups import DEFAULT_DUP_THRESHOLD, DupGroup, DupMethod, near_duplicates
from .errors import ConfigError, ImageError
from .images import ImageInput, describe, load_input, load_rgb, preprocess, trim_bars
from .options import ProgressCallback, Query, SyncOptions
from .query import Match, check_threshold, combine_vectors, mix, search_vectors
from .records import ImageFacts, SpaceRecord
from .reports import IndexReport, RecallReport, SpaceInfo, WhitenReport

if TYPE_CHECKING:
    from .ann.index import VectorIndex
    from .ann.publish import BuildInfo
    from .copies import CopyIndex, ViewsReport
    from .extract import Extractor
    from .extract.query_model import QueryModel
    from .handle import StoreHandle
    from .ingest import Engine
    from .reader import Reader
    from .shards import ShardSet
    from .store import Store
    from .whiten import Whitening

log = logging.getLogger(__name__)

Written = tuple[IndexReport, "VectorIndex", int | None]
"""What a write run gives to publish: its report, the index it kept in step with its writes,
and the store's generation that index mirrors (None: it missed another writer's change)."""

StoredImage = int | str | os.PathLike[str]
"""An image already in the library: its id, or the path of its file."""


# What a cached index and whitening were loaded from: the space's generation and the
# published manifest (generation and checksum). When it moves on, they are loaded again.
_State = tuple[int, tuple[int, str] | None]


class Space:
    """One embedding space of a library. Get it from :meth:`Library.space`,
    :meth:`Library.spaces` or :meth:`Library.create_space`.

    A space holds its vectors' meaning (model, weights, layers, pooling, input handling),
    and caches what it needs to answer queries: its whitening and index (loaded on first use,
    loaded again when the library changes) and its extractor (built once, on the first query
    that needs a model). It is safe to share between threads.
    """

    def __init__(self, stores: StoreHandle, record: SpaceRecord) -> None:
        self._stores = stores
        self._first = record
        self._extractors: dict[Compute, Extractor] = {}
        self._query_model: QueryModel | None = None
        self._query_model_looked = False
        self._model_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._cached: tuple[_State, Whitening | None, VectorIndex] | None = None
        self._copies: tuple[tuple[int, int], CopyIndex] | None = None

    # -- what it is ---------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._first.id

    @property
    def fingerprint(self) -> str:
        """A short hash of everything that gives the vectors their meaning."""
        return self._first.fingerprint

    @property
    def label(self) -> str:
        """A readable name: model, layers and pooling."""
        return self._first.label

    @property
    def dim(self) -> int:
        """The size of the space's vectors (before any whitening)."""
        return self._first.spec.dim

    @property
    def record(self) -> SpaceRecord:
        """The space as stored now (count and generation read afresh)."""
        return self._store.space(self.id)

    @property
    def count(self) -> int:
        """Images with a vector in this space."""
        return self.record.count

    @property
    def generation(self) -> int:
        """Grows with every change to the space's vectors."""
        return self._now().generation

    @property
    def _store(self) -> Reader:
        return self._stores.reader

    def __repr__(self) -> str:
        return f"<Space {self.id} {self.fingerprint} {self.label}>"

    def info(self) -> SpaceInfo:
        """The space with its counts and the state of its index."""
        from .upkeep import space_info

        return space_info(self, self._store)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[int, np.ndarray, np.ndarray]:
        """The stored vectors (raw, float32 (N, dim)) of ``ids`` or of every image, with their
        ids (int64, ascending) and the generation they were read at."""
        return self._store.vectors(self.id, ids)

    def image_facts(self, ids: Sequence[int] | None = None) -> list[ImageFacts]:
        """Path, size, date and content hash of the space's images (of ``ids`` or all)."""
        return self._store.image_facts(self.id, ids)

    def browse(self, offset: int = 0, limit: int = 50) -> list[ImageFacts]:
        """A page of the space's images in path order (read without reading them all)."""
        return self._store.image_facts_page(self.id, offset, limit)

    # -- cached state -------------------------------------------------------------------

    def _now(self) -> SpaceRecord:
        """The stored record without its vector count (which costs a scan)."""
        return self._store.space(self.id, counts=False)

    def _state(self, record: SpaceRecord | None = None) -> _State:
        record = record or self._now()
        manifest = self._store.manifest(record.id)
        published = None if manifest is None else (manifest.generation, manifest.checksum)
        return record.generation, published

    def _loaded(self) -> tuple[Whitening | None, VectorIndex]:
        record = self._now()
        state = self._state(record)
        cached = self._cached
        if cached is not None and cached[0] == state:
            return cached[1], cached[2]
        with self._index_lock:  # one thread loads; the others wait and share it
            cached = self._cached
            if cached is None or cached[0] != state:
                from .ann.publish import open_index
                from .whiten import stored

                whitening = stored(self._store, record)
                index, _ = open_index(self._store, record, mmap=None)
                cached = self._cached = (state, whitening, index)
        return cached[1], cached[2]

    def whitening(self) -> Whitening | None:
        """The PCA-whitening stored with the space, or None (see :meth:`whiten`). Cached
        with the index once that is loaded; read alone (no faiss) before."""
        cached = self._cached
        if cached is not None and cached[0] == self._state():
            return cached[1]
        from .whiten import stored

        return stored(self._store, self._now())

    def index(self) -> VectorIndex:
        """The space's vector index at the store's current generation (shared: read only)."""
        return self._loaded()[1]

    def for_index(self, vectors: np.ndarray) -> np.ndarray:
        """Raw vectors of the space as they go into or query its index (whitened or not)."""
        whitening = self.whitening()
        return vectors if whitening is None else whitening.apply(vectors)

    def forget(self) -> None:
        """Drop the cached index and whitening (they load again on next use)."""
        self._cached = None
        self._copies = None

    def extractor(
        self,
        compute: Compute | None = None,
        *,
        writing: bool = False,
        calibration: Callable[[], np.ndarray] | None = None,
    ) -> Extractor:
        """The model that makes this space's vectors, built once per ``compute`` (under a
        lock, so threads share one). For ``writing`` the vectors must match the stored ones
        exactly; queries tolerate another torch/torchvision release, with a warning.

        An int8 space's model is the one saved beside its index files; when there is none
        yet and the space holds no vectors, ``calibration()`` gives the images (float32
        (N, 3, H, W), preprocessed) to quantise it on, and it is saved (see
        :mod:`featx_search.extract.int8`). Raises :class:`SpaceError` when it is missing and
        cannot be made: nothing to calibrate on, or vectors that another model would not
        match. A space that OpenVINO computes runs its saved query model, which is its
        engine; when there is none it is exported from the torch graph and saved first
        (kept in memory where it cannot be saved)."""
        from .extract import extractor_for, int8, reproduces

        key = compute or Compute()
        with self._model_lock:
            extractor = self._extractors.get(key)
            if extractor is None:
                extractor = self._extractors[key] = extractor_for(self._first.spec, key)
        reproduces(extractor, self._first.spec, writing=writing)
        if self._first.spec.precision == "int8" and extractor.int8 is None:
            with self._model_lock:
                if self._store.read_only or self.count > 0:
                    calibration = None  # nowhere to save it, or vectors made by a lost model
                int8.attach(extractor, self._store.index_dir, calibration)
        if self._first.spec.engine == "openvino" and extractor.saved is None:
            with self._model_lock:
                if extractor.saved is None:
                    self._attach_openvino(extractor)
        return extractor

    def _attach_openvino(self, extractor: Extractor) -> None:
        """Make ``extractor`` (of a space OpenVINO computes) run the space's saved model,
        saving it first unless the library is read-only; without one, it exports its own
        on its first batch. Callers hold the model lock."""
        from .extract import query_model

        spec, index_dir = self._first.spec, self._store.index_dir
        if not self._store.read_only:
            query_model.make(spec, lambda: extractor, index_dir)
        threads = extractor.placement.threads if extractor.placement is not None else None
        saved = query_model.load(index_dir, spec, threads=threads)
        if saved is not None:
            extractor.use_saved(saved)

    def adopt(self, extractor: Extractor, compute: Compute | None = None) -> None:
        """Use ``extractor`` (built for this space) instead of building it again."""
        with self._model_lock:
            self._extractors.setdefault(compute or Compute(), extractor)

    # -- queries ------------------------------------------------------------------------

    def embed(self, images: Sequence[ImageInput], *, trim: bool = False) -> np.ndarray:
        """Vectors of ``images`` (paths or PIL images) in this space: float32 (N, dim); with
        ``trim`` frame bars are cut away first (as searches do, see :class:`Query`). Raises
        :class:`ImageError` naming the first image that cannot be decoded.

        The model is the space's saved query model when it has one (no torch import: see
        :meth:`save_query_model`), else its extractor, so that every search by a picture
        (the CLI's, the web server's, this API's) embeds it the same way."""
        spec = self._first.spec.preprocess
        return self._run_model(np.stack([load_input(image, spec, trim=trim) for image in images]))

    def _run_model(self, batch: np.ndarray) -> np.ndarray:
        query_model = self.query_model()
        if query_model is not None:
            return query_model.embed(batch)
        return self.extractor().embed(batch)

    def _embed_copies(
        self, images: Sequence[ImageInput], *, trim: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy-mode queries: the vectors of ``images`` and of their normalised views (see
        :func:`featx_search.copies.normalised`), float32 (N, dim) each, in one batch."""
        from .copies import normalised

        spec = self._first.spec.preprocess
        inputs = []
        for image in images:
            picture = load_rgb(image, min_side=spec.resize)
            picture = trim_bars(picture) if trim else picture
            inputs += [preprocess(picture, spec), preprocess(normalised(picture), spec)]
        vectors = self._run_model(np.stack(inputs))
        return vectors[0::2], vectors[1::2]

    def _verified(
        self,
        images: Sequence[ImageInput],
        vectors: np.ndarray,
        rows: list[list[Match]],
        *,
        trim: bool = True,
    ) -> list[list[Match]]:
        """``rows`` (one per query picture in ``images``, embedded as ``vectors``) with the
        results that tie with the first reordered by local evidence (see
        :mod:`featx_search.verify`; a tied query is decoded again at the views' size, trimmed
        when ``trim``); unchanged where nothing ties or the space's model has no local map."""
        from . import verify
        from .copies import SIDE, decoded, mirrored_best

        if all(verify.tied([m.score for m in row]) < 2 for row in rows):
            return rows
        model = verify.local_model(self._first.spec, self._store.index_dir)
        if model is None:
            return rows

        def candidate(
            row: list[Match], vector: np.ndarray, views: dict[int, np.ndarray], position: int
        ) -> tuple[np.ndarray, bool] | None:
            match = row[position]
            try:
                found = model.map(decoded(match.path))
            except ImageError as err:  # moved or unreadable since: it keeps its score
                log.info("local check skips %s: %s", match.path, err.message)
                return None
            return found, mirrored_best(vector, views.get(match.image_id), match.score)

        out = []
        for image, vector, row in zip(images, vectors, rows, strict=True):
            scores = [m.score for m in row]
            count = verify.tied(scores)
            if count < 2:
                out.append(row)
                continue
            views = self._store.copy_views(self.id, [m.image_id for m in row[:count]], self.dim)
            picture = load_rgb(image, min_side=SIDE)
            maps = model.query_maps(trim_bars(picture) if trim else picture, SIDE)
            order = verify.rerank(scores, maps, functools.partial(candidate, row, vector, views))
            out.append([replace(row[p], rank=n + 1) for n, p in enumerate(order)])
        return out

    def _stored_norms(self, ids: Sequence[int]) -> np.ndarray:
        """The stored normalised views of images ``ids``: float32 (N, dim), zeros for an
        image without them (a zero row never wins)."""
        from .copies import NORM, VIEWS

        views = self._store.copy_views(self.id, ids, self.dim)
        norms = np.zeros((len(ids), self.dim), np.float32)
        for row, image_id in enumerate(ids):
            stored = views.get(int(image_id))
            if stored is not None and len(stored) == len(VIEWS):
                norms[row] = stored[NORM]
        return norms

    def query_model(self) -> QueryModel | None:
        """The space's saved query model, compiled for this CPU (once per handle), or
        ``None`` when it has none (or it is unusable here)."""
        from .extract import int8, query_model

        with self._model_lock:
            if not self._query_model_looked:
                spec = self._first.spec
                if spec.precision == "int8":  # its saved model is its query model
                    self._query_model = int8.load(self._store.index_dir, spec)
                else:
                    self._query_model = query_model.load(self._store.index_dir, spec)
                self._query_model_looked = True
            return self._query_model

    def saved_model(self) -> QueryModel | None:
        """The space's query model when it may also write the space's vectors (a model made
        from torch's graph of exactly this space, of an fp32 space or of one OpenVINO
        computes), else ``None``."""
        from .extract import query_model

        model = self.query_model()  # the one this handle loaded, compiled once
        return model if model is not None and query_model.writes(model) else None

    def save_query_model(self) -> Path | None:
        """Save the space's query model beside its index files unless it has one: its
        extractor (built if needed) exported to OpenVINO with the pooling, checked against
        torch, so that a fresh process embeds query photos without importing torch. Returns
        the folder when one was written; ``None`` when one exists, the space cannot have one
        (not read with FX, OpenVINO missing, ``FEATX_QUERY_MODEL=0``) or the library is
        read-only."""
        from .extract import query_model

        if self._store.read_only:
            return None
        made = query_model.make(self._first.spec, self.extractor, self._store.index_dir)
        return None if made is None else made.folder

    def save_local_model(self, *, build: bool = False) -> Path | None:
        """Save the local model of the copy searches' check (see :mod:`featx_search.verify`)
        beside the index files unless one is saved: a check in a later process then neither
        imports torch nor builds the model. It is the one this process built in torch for a
        check, or with ``build`` one built now (what ``index --copies`` asks, so that the
        first copy search does not pay for it). Returns the folder when one was written."""
        from . import verify
        from .extract import query_model

        spec, index_dir = self._first.spec, self._store.index_dir
        if self._store.read_only or not query_model.enabled() or verify.saved(spec, index_dir):
            return None
        model = verify.built_in_torch(spec) or (verify.local_model(spec) if build else None)
        return None if model is None else verify.save_local(model, spec, index_dir)

    @overload
    def search(self, images: ImageInput, query: Query | None = None) -> list[Match]: ...
    @overload
    def search(
        self, images: list[ImageInput] | tuple[ImageInput, ...], query: Query | None = None
    ) -> list[list[Match]]: ...
    def search(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        query: Query | None = None,
    ) -> list[Match] | list[list[Match]]:
        """The images most like ``images`` (a path or PIL image, or a list of them, embedded
        in one batch): a list of matches, best first, or one such list per query image."""
        query = query or Query()
        one = not isinstance(images, (list, tuple))
        batch: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            return []
        for image in batch:
            if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
                raise ImageError(
                    f"query image not found: {describe(image)}",
                    hint="give the path of an image file",
                )
        selves: list[list[int]] = [[] for _ in batch]
        if query.exclude_self:
            for row, image in zip(selves, batch, strict=True):
                if isinstance(image, (str, os.PathLike)):
                    found = self._store.image_id(Path(image).expanduser().absolute().resolve())
                    row.extend([] if found is None else [found])
        if query.copies:  # the pictures and their normalised views (see copies.normalised)
            vectors, norms = self._embed_copies(batch, trim=query.trim)
            if not query.verify or query.combine:
                found_rows = self._query(vectors, selves, query, norms)
            else:  # enough results for the local check of a tie, then the k asked
                from . import verify

                wider = replace(query, k=max(query.k, verify.SHORT_LIST))
                listed = self._query(vectors, selves, wider, norms)
                found_rows = self._verified(batch, vectors, listed, trim=query.trim)
                found_rows = [row[: query.k] for row in found_rows]
        else:
            found_rows = self._query(self.embed(batch, trim=query.trim), selves, query)
        return found_rows[0] if one and not query.combine else found_rows

    @overload
    def similar(self, images: StoredImage, query: Query | None = None) -> list[Match]: ...
    @overload
    def similar(
        self, images: list[StoredImage] | tuple[StoredImage, ...], query: Query | None = None
    ) -> list[list[Match]]: ...
    def similar(
        self,
        images: StoredImage | list[StoredImage] | tuple[StoredImage, ...],
        query: Query | None = None,
    ) -> list[Match] | list[list[Match]]:
        """The images most like images already in the space (ids or paths), from their stored
        vectors: no model is loaded. The image itself comes first unless ``exclude_self``."""
        query = query or Query()
        one = not isinstance(images, (list, tuple))
        batch: list[StoredImage] = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            return []
        named = [self._stored_id(image) for image in batch]
        _, found, vectors = self.vectors([i for _, i in named if i is not None])
        by_id = dict(zip(found.tolist(), vectors, strict=True))
        for name, image_id in named:
            if image_id not in by_id:
                raise ImageError(
                    f"{name} is not indexed in space {self.fingerprint} ({self.label})",
                    hint="index it first, or search with the image file instead",
                )
        ids = [int(i) for _, i in named if i is not None]
        norms = self._stored_norms(ids) if query.copies else None
        rows = self._query(np.stack([by_id[i] for i in ids]), [[i] for i in ids], query, norms)
        return rows[0] if one and not query.combine else rows

    def search_vectors(self, vectors: np.ndarray, query: Query | None = None) -> list[list[Match]]:
        """The images nearest to raw vectors of this space (from :meth:`embed`, or any encoder
        of the space's size): float32 (dim,) or (N, dim); one list of matches per row."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ConfigError(
                f"vectors must have shape (N, {self.dim}) for space {self.fingerprint}, "
                f"got {np.shape(vectors)}",
                hint="use vectors from Space.embed or an encoder of the space's size",
                param="vectors",
            )
        return self._query(array, [[] for _ in array], query or Query())

    def _query(
        self,
        vectors: np.ndarray,
        selves: list[list[int]],
        query: Query,
        norms: np.ndarray | None = None,
    ) -> list[list[Match]]:
        """``norms``: the queries' normalised views, for a copy search (see
        :meth:`CopyIndex.with_norms`)."""
        if query.combine:
            vectors = combine_vectors(vectors)
            norms = None if norms is None or not norms.any() else combine_vectors(norms)
            selves = [sorted({i for row in selves for i in row})]
        allowed = None
        if query.filters.active:
            allowed = query.filters.select(self._store.image_facts(self.id))
        index: VectorIndex | CopyIndex
        if query.copies:  # raw vectors against the views (not whitened)
            whitening, index = None, self.copy_index().with_norms(norms)
            searched = vectors
        else:
            whitening, index = self._loaded()
            searched = vectors if whitening is None else whitening.apply(vectors)

        def find(queries: np.ndarray, k: int, threshold: float | None) -> list[list[Match]]:
            return search_vectors(
                self._store,
                index,
                queries,
                k,
                allowed=allowed,
                exclude=selves if query.exclude_self else (),
                threshold=threshold,
                params=self.search_params(query.params),
            )

        if query.expand:
            first = find(searched, query.expand + 1, None)
            searched = self._expanded(searched, first, selves, query.expand, whitening)
        if not query.augment or query.copies:
            return find(searched, query.k, query.threshold)
        from . import augment

        def neighbours_of(stored: np.ndarray, k: int) -> list[list[Match]]:
            return search_vectors(
                self._store, index, stored, k, params=self.search_params(query.params)
            )

        wide = find(searched, max(query.k, augment.SHORT_LIST), None)
        return augment.rerank(
            searched,
            wide,
            selves,
            query.augment,
            query.k,
            query.threshold,
            lambda ids: self._stored_by_id(ids, whitening),
            neighbours_of,
        )

    def _expanded(
        self,
        queries: np.ndarray,
        found: list[list[Match]],
        selves: list[list[int]],
        n: int,
        whitening: Whitening | None,
    ) -> np.ndarray:
        """Each query mixed with its first ``n`` results other than itself (alpha-QE), in the
        space the index searches (whitened when the space is)."""
        picked = [
            [m for m in row if m.image_id not in own][:n]
            for row, own in zip(found, selves, strict=True)
        ]
        by_id = self._stored_by_id(sorted({m.image_id for row in picked for m in row}), whitening)
        mixed = []
        for vector, row in zip(queries, picked, strict=True):
            row = [m for m in row if m.image_id in by_id]  # deleted meanwhile: left out
            if not row:
                mixed.append(vector)
                continue
            neighbours = np.stack([by_id[m.image_id] for m in row])[None]
            scores = np.array([[m.score for m in row]])
            mixed.append(mix(vector[None], neighbours, scores)[0])
        return np.asarray(mixed, dtype=np.float32)

    def _stored_by_id(
        self, ids: Sequence[int], whitening: Whitening | None
    ) -> dict[int, np.ndarray]:
        """The stored vectors of those of ``ids`` still stored, as the index holds them
        (whitened when the space is): image id -> (d,)."""
        _, found, raw = self.vectors(ids)
        stored = raw if whitening is None or not len(raw) else whitening.apply(raw)
        return dict(zip(found.tolist(), stored, strict=True))

    @property
    def copies(self) -> bool:
        """Whether the space keeps copy views of its images (see :meth:`keep_copies`)."""
        return self._store.index_settings(self.id).copies

    def copy_index(self) -> CopyIndex:
        """The space's copy index (see :mod:`featx_search.copies`), cached while the space's
        generation and number of views stay. Raises :class:`SpaceError` unless the space
        keeps copy views."""
        from .copies import CopyIndex
        from .errors import SpaceError

        if not self.copies:
            raise SpaceError(
                f"space {self.fingerprint} ({self.label}) keeps no copy views",
                hint="index it with --copies (Space.keep_copies) first",
            )
        key = (self.generation, self._store.copy_view_count(self.id))
        with self._index_lock:
            cached = self._copies
            if cached is None or cached[0] != key:
                cached = self._copies = (key, CopyIndex.open(self))
        return cached[1]

    def keep_copies(
        self,
        on: bool = True,
        *,
        progress: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ViewsReport | None:
        """Make the space a copy-mode space (``on``) and embed the copy views of the images
        it holds that have none yet (see :func:`featx_search.copies.update_views`); every
        later :meth:`sync` keeps them up to date. ``on=False`` drops the views. Returns what
        was embedded, or None when turned off."""
        from .copies import update_views

        store = self._stores.writer()
        with store.writer_lock():
            if self.copies != on:
                store.set_copies(self.id, on)
            if not on:
                return None
            return update_views(self, store, progress=progress, stop=stop)

    def search_params(self, override: SearchParams | None = None) -> SearchParams:
        """The space's fixed search params (see :meth:`configure_index`) with ``override``'s
        values on top."""
        fixed = SearchParams.from_dict(self._store.index_settings(self.id).params)
        return fixed.merged(override)

    def _stored_id(self, image: StoredImage) -> tuple[str, int | None]:
        """How ``image`` is named in errors, and its id (None: no such stored file)."""
        if isinstance(image, int):
            return f"image id {image}", image
        found = self._store.image_id(Path(image).expanduser().absolute().resolve())
        return os.fspath(image), found

    def duplicates(
        self,
        threshold: float = DEFAULT_DUP_THRESHOLD,
        *,
        candidates: DupMethod = "auto",
        progress: ProgressCallback | None = None,
        copies: bool = False,
    ) -> list[DupGroup]:
        """Groups of images whose vectors score at least ``threshold`` (or whose bytes are
        identical), largest first, each with a suggested keeper, from the stored vectors
        (neither a model nor the space's index is loaded). ``candidates``: how pairs are
        found (``all`` pairs, exact; ``ann``, an inverted-file range search; ``auto``, ann
        from 200,000 images on; see :func:`featx_search.dups.near_duplicates`). With
        ``copies`` (a copy-mode space) images are also linked through their copy views
        (crops, smaller or turned copies of one another)."""
        check_threshold(threshold)
        return near_duplicates(self, threshold, progress=progress, method=candidates, copies=copies)

    # -- changes ------------------------------------------------------------------------

    def sync(
        self,
        paths: Iterable[str | os.PathLike[str]],
        options: SyncOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
        engine: Engine | None = None,
    ) -> IndexReport:
        """Bring the space up to date with the image files under ``paths`` (folders,
        recursively, or single files) and publish its index. Only new and changed files are
        embedded; moved files keep their vectors; files gone from a scanned folder are
        removed. ``progress`` is called after every committed batch; setting ``stop`` ends
        the run after the batch in flight (a later sync resumes). ``engine`` decodes and
        embeds elsewhere (:class:`featx_search.distributed.RayEngine`; default: threads of
        this process). Raises :class:`LibraryError` when another process is writing to the
        library."""
        from .ingest import run_sync

        def run(store: Store, progress: ProgressCallback) -> Written:
            return run_sync(
                self,
                store,
                list(paths),
                options or SyncOptions(),
                progress=progress,
                stop=stop,
                engine=engine,
            )

        return self._write(run, progress, shared=True, copies=True, stop=stop)

    def ingest(
        self,
        shards: ShardSet,
        mapping: Sequence[tuple[str, str]] = (),
        *,
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """Load Parquet shards of this space (written by :func:`featx_search.shards.write_shards`)
        with their paths remapped by ``mapping`` (FROM, TO prefixes) and publish the index.
        Files stored with the same size and mtime are left as they are, so a second ingest
        changes nothing; nothing is removed. Raises :class:`SpaceError` for shards of
        another space (their fingerprint differs)."""
        from .errors import SpaceError
        from .shards import ingest_shards

        if shards.fingerprint != self.fingerprint:
            raise SpaceError(
                f"shards in {shards.folder} are of space {shards.fingerprint} "
                f"({shards.spec.label}), not of space {self.fingerprint} ({self.label})",
                hint="embed them with this space's model options, or ingest them into a new "
                "space (--new-space)",
            )

        def run(store: Store, progress: ProgressCallback) -> Written:
            return ingest_shards(self.id, store, shards, mapping, progress=progress, stop=stop)

        return self._write(run, progress)

    def _write(
        self,
        run: Callable[[Store, ProgressCallback], Written],
        progress: ProgressCallback | None,
        *,
        shared: bool = False,
        copies: bool = False,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """``run`` under the writer lock with the activity file, then the index published.
        ``shared``: other runs that claim their files may write a server library at once.
        ``copies``: a copy-mode space then embeds its missing copy views (see
        :func:`featx_search.copies.update_views`) unless ``stop`` was set."""
        from .activity import ActivityFile

        store = self._stores.writer()
        with store.writer_lock(shared=shared), ActivityFile(file=store.activity_file) as activity:
            report, index, generation = run(store, activity.wrap(progress))
            activity.phase("publishing")
            self._settle(store, index, generation)
            if copies and not (stop is not None and stop.is_set()) and self.copies:
                from .copies import update_views

                activity.phase("copy views")
                update_views(self, store, stop=stop)
        return report

    def plan(
        self, paths: Iterable[str | os.PathLike[str]], options: SyncOptions | None = None
    ) -> IndexReport:
        """What :meth:`sync` would do, listed in ``changes``: nothing is written and no model
        is loaded."""
        from .plan import plan_report

        options = options or SyncOptions()
        return plan_report(
            self._store,
            (self.id, self.fingerprint, self.label),
            list(paths),
            retry_failed=options.retry_failed,
            prune_empty=options.prune_empty,
        )

    def configure_index(
        self,
        index: str | None = None,
        *,
        max_memory: int | str | None = None,
        params: SearchParams | None = None,
    ) -> BuildInfo | None:
        """Change the space's index: ``index`` a FAISS factory string or ``auto``,
        ``max_memory`` (bytes, or a size such as ``2G``) the budget ``auto`` plans for,
        ``params`` nprobe / ef_search / rerank fixed for its searches. Rebuilds and publishes
        the index when the kind it should have changed; returns what was built, or None."""
        from .upkeep import configure_index

        if index is None and max_memory is None and params is None:
            return None
        store = self._stores.writer()
        with store.writer_lock():
            return configure_index(self, store, index, max_memory, params)

    def rebuild(self) -> BuildInfo:
        """Rebuild the index from the stored vectors (nothing is embedded) and publish it."""
        from .upkeep import rebuild

        store = self._stores.writer()
        with store.writer_lock():
            return rebuild(self, store)

    def whiten(self, dims: int) -> WhitenReport:
        """Learn PCA-whitening to ``dims`` dimensions from the stored vectors (0 removes it).
        Vectors are whitened as they enter the index, queries before they are searched; the
        stored vectors do not change. Rebuilds and publishes the index."""
        from .upkeep import whiten

        store = self._stores.writer()
        with store.writer_lock():
            return whiten(self, store, dims)

    def _settle(
        self, store: Store, index: VectorIndex | None = None, generation: int | None = None
    ) -> BuildInfo | None:
        from .upkeep import settle

        return settle(self, store, index, generation)

    def recall(
        self, k: int = 10, sample: int = 200, *, seed: int = 0, params: SearchParams | None = None
    ) -> RecallReport:
        """Recall@k of the index against exact search, on ``sample`` stored vectors (each
        asks for its k nearest other images). Reads every stored vector of the space, in
        chunks."""
        from .upkeep import recall

        return recall(self, self._store, k, sample, seed, params)
