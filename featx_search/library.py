"""The public facade: :class:`Library` opens a library, gives its :class:`Space` handles, and
passes short calls through to the default space."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, cast, overload

import numpy as np

from .compute import Compute
from .config import Engine, ExtractorSpec, Precision
from .connect import Location
from .dups import DEFAULT_DUP_THRESHOLD, DupGroup, DupMethod
from .errors import ConfigError, ImageError, SpaceError
from .handle import StoreHandle
from .images import ImageInput
from .options import ProgressCallback, Query, SyncOptions
from .query import Match, check_threshold
from .records import SpaceRecord
from .reports import CheckReport, IndexReport, LibraryInfo, SpaceInfo
from .space import Space, StoredImage

if TYPE_CHECKING:
    from .decisions import Decision, DecisionKind
    from .reader import Reader

ENV_DB = "FEATX_DB"

SpaceSelector = int | str
"""Picks a space of a library: its id (an int), else its exact label, else a unique prefix of
its fingerprint (a str)."""


def default_db_path() -> Path:
    """``$FEATX_DB`` when set, else ``library.db`` in the per-user data directory (see
    :func:`default_location` for a ``$FEATX_DB`` that is a database URL)."""
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB]).expanduser()
    from platformdirs import user_data_path

    return user_data_path("featx-search") / "library.db"


def default_location() -> Location:
    """Where the default library is: ``$FEATX_DB`` (a file path or a database URL) when set,
    else ``library.db`` in the per-user data directory."""
    if os.environ.get(ENV_DB):
        return Location.parse(os.environ[ENV_DB])
    return Location.parse(default_db_path())


def parse_selector(text: str | None) -> SpaceSelector | None:
    """A space selector as a user types it: digits are an id, anything else a label or a
    fingerprint prefix."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


class Library:
    """A photo library: a database (a SQLite file, or PostgreSQL) plus FAISS index files
    (beside the file, or in this machine's cache for a server library).

    Use as a context manager::

        with Library.open("photos.db") as lib:
            lib.index(["~/Pictures"], ExtractorSpec(model="resnet50"))
            for match in lib.search("query.jpg", Query(k=5)):
                print(match.rank, f"{match.score:.3f}", match.path)

    Each embedding space is a :class:`Space` (:meth:`space`, :meth:`spaces`); the search
    methods here pass through to the default one (the only space, or the newest).
    A library may be shared by threads.
    """

    def __init__(self, store: Reader) -> None:
        self._stores = StoreHandle(store)
        self._spaces: dict[int, Space] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        db: str | os.PathLike[str] | Location | None = None,
        *,
        create: bool = True,
        read_only: bool = False,
        index_dir: str | os.PathLike[str] | None = None,
    ) -> Library:
        """Open the library at ``db`` (default: :func:`default_location`) and migrate it to
        the current schema. ``db`` is a SQLite file's path or a database server's URL
        (``postgresql+psycopg://user:password@host:5432/photos``, see :class:`Location`). A
        missing library is created (a server's database must exist: its tables are made), or
        with ``create=False`` refused.

        Index files live beside a SQLite file and, for a server library, in this machine's
        cache folder (keyed by the database); ``index_dir`` puts them elsewhere.

        A library on storage this process may not write (a read-only folder or mount, a file
        without write permission), or any library with ``read_only``, is opened read-only:
        queries work, and anything that would write raises :class:`ReadOnlyError`.
        Raises :class:`LibraryError`."""
        location = Location.parse(db) if db is not None else default_location()
        if index_dir is not None:
            location = location.with_local_dir(Path(index_dir))
        from .reader import Reader

        reader = Reader.open(location, read_only=read_only)  # at the newest schema: no Alembic
        if reader is not None:
            return cls(reader)
        from .store import Store

        return cls(Store.open(location, create=create))

    @property
    def path(self) -> Path:
        """The database file of a SQLite library. A server library has no file (see
        :attr:`location`): its path is ``library`` in this machine's folder for it (where its
        index files are), so that files kept beside a database (thumbnails) land there."""
        if self.location.path is not None:
            return self.location.path
        return self._store.index_dir / "library"

    @property
    def location(self) -> Location:
        """Where the library's database is: a file or a server (``str()`` masks a password)."""
        return self._stores.location

    @property
    def _store(self) -> Reader:
        return self._stores.reader

    def close(self) -> None:
        self._stores.close()

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

    def _handle(self, record: SpaceRecord) -> Space:
        with self._lock:  # one Space per space, so its caches are shared
            space = self._spaces.get(record.id)
            if space is None:
                space = self._spaces[record.id] = Space(self._stores, record)
            return space

    def spaces(self) -> list[Space]:
        """Every embedding space, oldest first."""
        return [self._handle(record) for record in self._store.spaces(counts=False)]

    def space(self, selector: SpaceSelector | None = None) -> Space:
        """A space of the library: with no ``selector`` the only one, or the newest when there
        are several; else see :data:`SpaceSelector`. Raises :class:`SpaceError` when the
        library has no space or the selector matches none or several."""
        records = self._store.spaces(counts=False)
        if not records:
            raise SpaceError(
                f"library {self.location} has no images yet",
                hint="index a folder first: featx-search index PATH",
            )
        if selector is None:
            return self._handle(records[-1])
        if isinstance(selector, int):
            found = [r for r in records if r.id == selector]
        else:
            found = [r for r in records if r.label == selector]
            found = found or [r for r in records if r.fingerprint.startswith(selector.lower())]
        if len(found) == 1:
            return self._handle(found[0])
        listing = "; ".join(
            f"{r.id}: {r.fingerprint} ({r.label}, {r.count} images)" for r in self._store.spaces()
        )
        problem = "matches several spaces" if found else "matches no space"
        raise SpaceError(f"space {selector!r} {problem}", hint=f"spaces: {listing}")

    def create_space(
        self,
        spec: ExtractorSpec | None = None,
        *,
        index: str = "auto",
        max_memory: int | str | None = None,
        compute: Compute | None = None,
    ) -> Space:
        """The space of ``spec`` (default: :class:`ExtractorSpec`'s defaults), made when the
        library does not hold it yet. This builds the model, whose weights are part of the
        space's fingerprint, unless a stored space was made from the same request by the
        same torch releases (see :meth:`_made_here`). ``index`` (a FAISS factory string or
        ``auto``) and ``max_memory`` set the space's index (for an existing space, when
        given).

        A precision of ``auto`` means the precision of a space made from the same spec
        (precision aside), so that another machine goes on in it; of several, the one this
        device runs natively; with none, the fastest precision this device runs natively.
        The space answering it keeps its engine (torch or OpenVINO, see
        :data:`~featx_search.config.Engine`); a new one gets this device's."""
        from .extract import load_extractor

        store = self._stores.writer()  # a read-only library refuses before a model loads
        records = store.spaces()
        spec, engine = self._pinned(spec or ExtractorSpec(), compute or Compute(), records)
        stored = self._made_here(spec, engine, records)
        if stored is not None:  # no model to build: this request made it with these releases
            space, fresh = self._handle(stored), False
        else:
            extractor = load_extractor(spec, compute, engine)
            known = {r.fingerprint for r in store.spaces()}  # again: building took a while
            if extractor.space.precision == "int8" and extractor.space.fingerprint not in known:
                from .extract.int8 import require_nncf

                require_nncf()  # before the space is made: its first run quantises
            space = self._handle(store.ensure_space(extractor.space))
            space.adopt(extractor, compute)
            fresh = space.fingerprint not in known
        if fresh or index != "auto" or max_memory is not None:
            space.configure_index(index, max_memory=max_memory)
        return space

    @staticmethod
    def _made_here(
        spec: ExtractorSpec, engine: Engine | None, records: Sequence[SpaceRecord]
    ) -> SpaceRecord | None:
        """The stored space that ``spec`` (its precision pinned, see :meth:`_pinned`) would
        make again, found without building the model: the one space made from this very
        request (and ``engine``) by the torch and torchvision releases installed here, with
        weights that cannot have changed since (a named set or none, not a file) of a model
        whose code cannot have either (torchvision's or a built-in one, not a factory).
        ``None`` when any of that is not so: then the model is built and its weights hashed."""
        from importlib import metadata

        from .extract.weights import is_path

        if spec.precision == "auto" or ":" in spec.model or is_path(spec.weights):
            return None
        found = [
            r
            for r in records
            if r.spec.request == spec and (engine is None or r.spec.engine == engine)
        ]
        if len(found) != 1:
            return None
        try:
            here = (metadata.version("torch"), metadata.version("torchvision"))
        except metadata.PackageNotFoundError:
            return None
        made = (found[0].spec.torch_version, found[0].spec.torchvision_version)
        return found[0] if made == here else None

    @staticmethod
    def _pinned(
        spec: ExtractorSpec, compute: Compute, records: Sequence[SpaceRecord]
    ) -> tuple[ExtractorSpec, Engine | None]:
        """``spec`` with ``auto`` precision fixed to a stored space's (see
        :meth:`create_space`), and the engine of the stored space it then answers; ``auto``
        and ``None`` when no stored space answers it. Of several, the precision and engine
        this device would choose."""
        from .compute import engine_for, resolve_device, resolve_precision

        answering = [r.spec for r in records if spec.answers(r.spec.request)]
        if not answering:
            return spec, None
        if spec.precision == "auto":
            precisions = [s.precision for s in answering]
            chosen = precisions[-1]
            if len(set(precisions)) > 1:
                here = resolve_precision("auto", resolve_device(compute.device))
                chosen = here if here in precisions else chosen
            spec = replace(spec, precision=chosen)
        engines = [s.engine for s in answering if s.precision == spec.precision]
        if len(set(engines)) > 1:
            device = resolve_device(compute.device)
            here_engine = engine_for(cast(Precision, spec.precision), device, compute)
            return spec, here_engine if here_engine in engines else engines[-1]
        return spec, engines[-1] if engines else None

    def space_for(
        self,
        spec: ExtractorSpec | None = None,
        selector: SpaceSelector | None = None,
        *,
        compute: Compute | None = None,
    ) -> Space:
        """The space a sync writes to: ``spec``'s (made if new) when given, else the selected
        or default space, else (an empty library) the default spec's. A new space's ``auto``
        precision is the one ``compute``'s device runs fastest."""
        if spec is not None or (selector is None and not self._store.spaces()):
            return self.create_space(spec, compute=compute)
        return self.space(selector)

    # -- changes ------------------------------------------------------------------------

    def index(
        self,
        paths: Iterable[str | os.PathLike[str]],
        spec: ExtractorSpec | None = None,
        *,
        space: SpaceSelector | None = None,
        options: SyncOptions | None = None,
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """Sync the image files under ``paths`` into the space of ``spec`` (made if new), or
        the selected ``space``, or the default one (see :meth:`Space.sync`)."""
        target = self.space_for(spec, space, compute=options.compute if options else None)
        return target.sync(paths, options, progress=progress, stop=stop)

    def ingest(
        self,
        folder: str | os.PathLike[str],
        *,
        space: SpaceSelector | None = None,
        new_space: bool = False,
        mapping: Sequence[tuple[str, str]] = (),
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        """Load the Parquet shards in ``folder`` (see ``featx-search embed``) into the space
        they were embedded in, their paths remapped by ``mapping`` (see :meth:`Space.ingest`).
        The space is the selected one, else the library's space of the shards' fingerprint,
        else its only space; an empty library (or ``new_space``) gets the shards' space, made
        from their manifest without loading a model. Raises :class:`SpaceError` when the
        shards are of another space than the one they would go into."""
        from .shards import ShardSet

        shards = ShardSet.open(folder)
        records = self._store.spaces()
        same = [r for r in records if r.fingerprint == shards.fingerprint]
        if space is not None:
            target = self.space(space)
        elif same:
            target = self._handle(same[0])
        elif new_space or not records:
            target = self._handle(self._stores.writer().ensure_space(shards.spec))
            target.configure_index("auto")
        else:
            target = self.space()  # the only space, or SpaceError listing them
        return target.ingest(shards, mapping, progress=progress, stop=stop)

    def plan(
        self,
        paths: Iterable[str | os.PathLike[str]],
        spec: ExtractorSpec | None = None,
        *,
        space: SpaceSelector | None = None,
        options: SyncOptions | None = None,
    ) -> IndexReport:
        """What :meth:`index` would do, listed in the report's ``changes``: no model is loaded
        and nothing is written. A ``spec`` that no stored space was made from plans a new
        space (every file would be added)."""
        from .plan import plan_report

        records = self._store.spaces()
        if spec is not None:
            found = [r for r in records if spec.answers(r.spec.request)]
            if not found:
                options = options or SyncOptions()
                return plan_report(
                    self._store,
                    (-1, "", f"{spec.model} (new space)"),
                    paths,
                    retry_failed=options.retry_failed,
                    prune_empty=options.prune_empty,
                )
            return self._handle(found[-1]).plan(paths, options)
        if space is None and not records:
            return self.plan(paths, ExtractorSpec(), options=options)
        return self.space(space).plan(paths, options)

    def remove(self, images: Iterable[StoredImage]) -> int:
        """Forget images (ids, files, or folders: everything stored under them) and their
        vectors in every space; the files are not touched. Returns how many were removed.
        Raises :class:`ImageError` for an id or path that holds no stored image."""
        facts = self._store.image_facts(None)
        by_id = {f.id: f for f in facts}
        chosen: set[int] = set()
        for image in images:
            if isinstance(image, int):
                found = [image] if image in by_id else []
            else:
                path = str(Path(image).expanduser().absolute().resolve())
                prefix = path.rstrip(os.sep) + os.sep
                found = [f.id for f in facts if f.path == path or f.path.startswith(prefix)]
            if not found:
                raise ImageError(f"{image!s} holds no stored image", hint="see `featx-search info`")
            chosen.update(found)
        if not chosen:
            return 0
        store = self._stores.writer()
        with store.writer_lock():
            records = store.spaces()
            store.write_batch(records[0].id if records else 0, [], sorted(chosen))
            for record in records:
                self._handle(record)._settle(store)
        return len(chosen)

    # -- queries (the default space) ----------------------------------------------------

    @overload
    def search(
        self, images: ImageInput, query: Query | None = None, *, space: SpaceSelector | None = None
    ) -> list[Match]: ...
    @overload
    def search(
        self,
        images: list[ImageInput] | tuple[ImageInput, ...],
        query: Query | None = None,
        *,
        space: SpaceSelector | None = None,
    ) -> list[list[Match]]: ...
    def search(
        self,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...],
        query: Query | None = None,
        *,
        space: SpaceSelector | None = None,
    ) -> list[Match] | list[list[Match]]:
        """:meth:`Space.search` in the selected or default space."""
        return self.space(space).search(images, query)

    @overload
    def similar(
        self, images: StoredImage, query: Query | None = None, *, space: SpaceSelector | None = None
    ) -> list[Match]: ...
    @overload
    def similar(
        self,
        images: list[StoredImage] | tuple[StoredImage, ...],
        query: Query | None = None,
        *,
        space: SpaceSelector | None = None,
    ) -> list[list[Match]]: ...
    def similar(
        self,
        images: StoredImage | list[StoredImage] | tuple[StoredImage, ...],
        query: Query | None = None,
        *,
        space: SpaceSelector | None = None,
    ) -> list[Match] | list[list[Match]]:
        """:meth:`Space.similar` in the selected or default space."""
        return self.space(space).similar(images, query)

    def embed(
        self,
        images: list[ImageInput] | tuple[ImageInput, ...],
        *,
        space: SpaceSelector | None = None,
    ) -> np.ndarray:
        """:meth:`Space.embed` in the selected or default space."""
        return self.space(space).embed(images)

    def duplicates(
        self,
        threshold: float = DEFAULT_DUP_THRESHOLD,
        *,
        exact: bool = False,
        space: SpaceSelector | None = None,
        candidates: DupMethod = "auto",
        progress: ProgressCallback | None = None,
        copies: bool = False,
    ) -> list[DupGroup]:
        """Groups of duplicate images, largest first (see :meth:`Space.duplicates`, which
        ``candidates`` and ``copies`` are passed to). With ``exact`` only byte-identical
        files (same SHA-256) are grouped and no space is used."""
        from .dups import exact_duplicates

        check_threshold(threshold)
        if exact:
            return exact_duplicates(self._store)
        return self.space(space).duplicates(
            threshold, candidates=candidates, progress=progress, copies=copies
        )

    def decide(
        self, image_ids: Iterable[int], decision: DecisionKind, *, keep: int | None = None
    ) -> Decision:
        """Record a decision about a group of images: ``"keep"`` the image ``keep`` (the
        others are its duplicates), or ``"distinct"`` (they are not duplicates). Nothing is
        deleted or moved; see :mod:`featx_search.decisions`. Raises :class:`ConfigError`
        for bad arguments, :class:`ImageError` for an id not in the library and
        :class:`ReadOnlyError` on a read-only library."""
        from .decisions import roles

        parts = roles(image_ids, decision, keep)
        decision_id = self._stores.writer().record_decision(decision, dict(parts))
        return next(d for d in self._store.decisions() if d.id == decision_id)

    def decisions(self) -> list[Decision]:
        """Every recorded decision on duplicate groups, oldest first."""
        return self._store.decisions()

    def forget_decision(self, decision_id: int) -> None:
        """Drop a recorded decision (undo). Raises :class:`ConfigError` when there is none
        with that id."""
        if not self._stores.writer().forget_decision(decision_id):
            raise ConfigError(f"no decision with id {decision_id}", param="decision_id")

    def image_path(self, image: StoredImage) -> str:
        """The absolute path of a stored image given by id (or a path, returned absolute).
        Raises :class:`ImageError` for an unknown id."""
        if not isinstance(image, int):
            return str(Path(image).expanduser().absolute())
        found = self._store.paths([image]).get(image)
        if found is None:
            raise ImageError(f"no image with id {image}", hint="see the image_id of a result")
        return found

    # -- state --------------------------------------------------------------------------

    def info(self) -> LibraryInfo:
        """Schema revision, image counts by state, every space with its index state, and the
        index run going on in any process (if one is)."""
        from .activity import current_activity

        spaces: list[SpaceInfo] = [space.info() for space in self.spaces()]
        return LibraryInfo(
            path=str(self.location),
            revision=self._store.current_revision(),
            images=self._store.image_counts(),
            spaces=spaces,
            indexing=current_activity(file=self._store.activity_file),
        )

    def check(self) -> CheckReport:
        """Verify the library: SQLite integrity and foreign keys, image states, each space's
        published index file against its manifest (size and full checksum), and that each
        space's index holds exactly the stored ids (a stale index file is rebuilt in memory
        and noted, since the store is the truth)."""
        from .ann.files import verify_index
        from .ann.publish import open_index

        problems = self._store.integrity_problems()
        notes: list[str] = []
        for record in self._store.spaces():
            manifest = self._store.manifest(record.id)
            if manifest is None or manifest.generation != record.generation:
                notes.append(
                    f"space {record.fingerprint}: index file behind the store (rebuilt on next use)"
                )
            problems.extend(verify_index(self._store, record))
            index, _ = open_index(self._store, record)
            if sorted(index.ids().tolist()) != self._store.vector_ids(record.id).tolist():
                problems.append(
                    f"space {record.fingerprint}: index ids differ from the stored vectors"
                )
        return CheckReport(problems, notes)

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed."""
        return self._store.failures()
