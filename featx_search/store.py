"""The library database, write side: opening, creating and migrating it, and every write.

The database (SQLite in WAL mode, or PostgreSQL) is the source of truth for metadata and
vectors. :class:`Store` adds
writes (SQLAlchemy Core on the tables of :mod:`featx_search.schema`) and migrations
(Alembic) to the reads of :class:`~.reader.Reader`. It holds the connections, locks,
transactions and retries; the statements of three concerns are beside it, each run in a
transaction the store opens: roots taken in and remapped (:mod:`.store_roots`), claims of
files by concurrent runs (:mod:`.store_claims`) and copy views (:mod:`.store_copies`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from . import store_claims, store_copies
from .config import SpaceSpec
from .connect import (
    Location,
    database_url,
    make_engine,
    one_line,
    server_engine,
    unreachable,
    writable,
)
from .errors import ImageError, LibraryError, ReadOnlyError, SpaceError
from .migrate import alembic_config, alembic_head, check_known_revision
from .reader import Reader
from .records import (
    FAILED,
    INDEXED,
    VECTOR_DTYPE,
    FileResult,
    IndexSettings,
    KnownFile,
    Manifest,
    Move,
    SpaceRecord,
)
from .schema import (
    HEAD_REVISION,
    claims,
    dup_decision_members,
    dup_decisions,
    images,
    index_manifest,
    spaces,
    utcnow,
    vectors,
)
from .store_claims import CLAIM_LEASE_SECONDS as CLAIM_LEASE_SECONDS  # ingest reads it here
from .store_roots import ROOTS_LOCK_KEY, RootMap, inserted_id

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# How long a second indexer waits for the first before giving up.
WRITER_WAIT_SECONDS = 10.0

# The key of a server library's writer lock (pg_advisory_lock): advisory locks belong to one
# database, so one key per database is the library's ("featx-w" in ASCII).
WRITER_LOCK_KEY = 0x66656174782D77

# The first key of a server library's publish lock of a space (pg_advisory_lock(int, int),
# the space's id second: "fxpb"): one writer at a time publishes a space's index.
PUBLISH_LOCK_KEY = 0x66787062

# How often a batch is written when its transaction collides with another writer's, and the
# SQLSTATEs of such collisions: a unique key taken meanwhile, a deadlock, a serialization.
WRITE_TRIES = 3
_COLLISIONS = frozenset({"23505", "40P01", "40001"})

# FULL: a committed batch survives a power cut too (one fsync per batch, small next to the
# model's time); NORMAL could lose the last commits, never corrupt.
_WRITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON")


def _text(message: str) -> str:
    """``message`` made storable as UTF-8 text: undecodable path bytes become ``\\xNN``."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _drop_vectors(conn: Connection, image_ids: Sequence[int]) -> dict[int, list[int]]:
    """Delete every vector of ``image_ids`` in every space; returns {space id: image ids}."""
    if not image_ids:
        return {}
    rows = conn.execute(
        select(vectors.c.space_id, vectors.c.image_id).where(vectors.c.image_id.in_(image_ids))
    )
    by_space: dict[int, list[int]] = {}
    for space, image in rows:
        by_space.setdefault(space, []).append(image)
    conn.execute(delete(vectors).where(vectors.c.image_id.in_(image_ids)))
    return by_space


class Store(Reader):
    """One library database, for writing (reads are :class:`Reader`'s). Open with
    :meth:`open`; close with :meth:`close`. Its reads run the Core statements of
    :mod:`.queries` on its engine, as a second database back end would."""

    def __init__(self, location: Location | Path, *, engine: Engine) -> None:
        super().__init__(location, engine=engine)
        self.engine = engine
        # The server session that holds the writer lock, while this store holds it.
        self._lock_pid: int | None = None
        # Each space's generation after this store's last write_batch (see written_generation).
        self._written: dict[int, int] = {}
        # The roots this store resolved, and where their files are now (see root_for).
        self._root_map = RootMap(self.location)

    @classmethod
    def open(  # type: ignore[override]
        cls,
        path: str | os.PathLike[str] | Location,
        *,
        migrate: bool = True,
        create: bool = True,
    ) -> Store:
        """Open the database at ``path`` (a file, or a server's URL: see :class:`Location`)
        for writing, creating a missing SQLite file if ``create`` (a server's database must
        exist; its tables are created here).

        With ``migrate`` the schema is brought to the newest revision. A database whose
        revision this version does not know raises :class:`LibraryVersionError`; one this
        process may not write raises :class:`ReadOnlyError` (open it with
        :meth:`Reader.open` to query it); a server that cannot be reached raises
        :class:`LibraryError` (password masked).
        """
        location = Location.parse(path)
        if location.path is None:
            engine = server_engine(location.sqlalchemy_url())
        else:
            engine = cls._sqlite_engine(location.path, create=create)
        store = cls(location, engine=engine)
        try:
            current = store.current_revision()
            if current != HEAD_REVISION:  # skips Alembic when up to date
                check_known_revision(location, current)
                if migrate:
                    store.upgrade()
        except DBAPIError as err:
            store.close()
            if location.path is None:
                raise unreachable(location, err) from None
            raise LibraryError(f"cannot open library {location}: {err.orig}") from err
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _sqlite_engine(db: Path, *, create: bool) -> Engine:
        if db.is_dir():
            raise LibraryError(
                f"library path {db} is a folder", hint="give a database file, e.g. photos.db"
            )
        if not create and not db.exists():
            raise LibraryError(
                f"no library at {db}",
                hint=f"check the path, or create it: featx-search --db {db} index FOLDER",
            )
        if not writable(db):
            what = "library" if db.exists() else "folder for a new library"
            raise ReadOnlyError(
                f"cannot write {db}: the {what} is read-only here",
                hint="an existing library still answers queries; to index, choose a "
                "writable place or give write access to it",
            )
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LibraryError(f"cannot create folder for library {db}: {err}") from err
        return make_engine(database_url(db), pragmas=_WRITE_PRAGMAS)

    @contextmanager
    def writer_lock(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the library's writer lock. On SQLite a lock file (``DB.lock``): one writer at
        a time. On a server an advisory lock of the database, held by one connection for the
        whole block: ``shared`` (index runs, which claim their files, see :meth:`claim`)
        lets any number of holders in at once (``pg_advisory_lock_shared``), while an
        exclusive holder (changing a space's index or whitening) is alone.

        Waits up to :data:`WRITER_WAIT_SECONDS`, then raises :class:`LibraryError`. Readers
        never take it. The lock is released if the process dies (the OS drops the file lock;
        the server ends the session of a lost connection).
        """
        if self.location.path is None:
            with self._advisory_lock(shared=shared):
                yield
            return
        from filelock import FileLock, Timeout

        lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        try:
            lock.acquire(timeout=WRITER_WAIT_SECONDS)
        except Timeout:
            raise LibraryError(
                f"another indexer is running on {self.path}",
                hint="wait for it to finish, then run this again; searches work meanwhile",
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _advisory_lock(self, *, shared: bool) -> Iterator[None]:
        mode = "_shared" if shared else ""
        try:
            conn = self.engine.connect()
        except DBAPIError as err:
            raise unreachable(self.location, err) from None
        with conn:
            deadline = time.monotonic() + WRITER_WAIT_SECONDS
            while not conn.execute(
                text(f"SELECT pg_try_advisory_lock{mode}(:key)"), {"key": WRITER_LOCK_KEY}
            ).scalar_one():
                conn.commit()  # end the transaction the probe began
                if time.monotonic() >= deadline:
                    raise LibraryError(
                        f"another indexer is running on {self.location}",
                        hint="wait for it to finish, then run this again; searches work meanwhile",
                    )
                time.sleep(0.2)
            self._lock_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.commit()
            try:
                yield
            finally:
                self._lock_pid = None
                try:
                    conn.execute(
                        text(f"SELECT pg_advisory_unlock{mode}(:key)"), {"key": WRITER_LOCK_KEY}
                    )
                    conn.commit()
                except DBAPIError:  # a lost connection has released it already
                    conn.invalidate()

    def _check_lock(self, conn: Connection, pid: int) -> None:
        """Refuse to commit when the session holding the writer lock is gone (its connection
        dropped): another writer may hold the lock now."""
        held = conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = :pid AND objsubid = 1"
                " AND ((classid::bigint << 32) | objid::bigint) = :key)"
            ),
            {"pid": pid, "key": WRITER_LOCK_KEY},
        ).scalar_one()
        if not held:
            raise LibraryError(
                f"lost the writer lock of library {self.location} (its connection dropped); "
                "nothing of the change in flight was written",
                hint="run it again once the database server is reachable; the run resumes",
            )

    @contextmanager
    def publishing(self, space_id: int) -> Iterator[None]:
        """Hold the publish lock of a space: on a server, an advisory lock of the database
        for the space (waited for, however long), so that of several writers one at a time
        compares the space's manifest with the store and publishes. On SQLite the writer
        lock is exclusive already: nothing is taken."""
        if self.location.path is not None:
            yield
            return
        try:
            conn = self.engine.connect()
        except DBAPIError as err:
            raise unreachable(self.location, err) from None
        keys = {"key": PUBLISH_LOCK_KEY, "space": space_id}
        with conn:
            conn.execute(text("SELECT pg_advisory_lock(:key, :space)"), keys)
            conn.commit()
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key, :space)"), keys)
                    conn.commit()
                except DBAPIError:  # a lost connection has released it already
                    conn.invalidate()

    def _serialize(self, conn: Connection) -> bool:
        """On a server, take the transaction lock of changes to roots and spaces (held until
        ``conn``'s transaction ends); True when taken, False on SQLite (one writer)."""
        if self.location.path is not None:
            return False
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROOTS_LOCK_KEY})
        return True

    @property
    def session(self) -> int | None:
        """The server session (backend pid) that holds this store's writer lock, or None."""
        return self._lock_pid

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection whose work is committed at the end of the block, or rolled back.
        Raises :class:`LibraryError` when a server cannot be reached or the connection to it
        broke (nothing of the block was written)."""
        try:
            conn = self.engine.connect()
        except DBAPIError as err:
            if self.location.path is None:
                raise unreachable(self.location, err) from None
            raise
        try:
            with conn, conn.begin():
                yield conn
                if self._lock_pid is not None:
                    self._check_lock(conn, self._lock_pid)
        except DBAPIError as err:
            if not err.connection_invalidated:
                raise
            raise LibraryError(
                f"lost the connection to library {self.location}: {one_line(err.orig)}",
                hint="nothing of the change in flight was written; run it again once the "
                "database server is back (an index run resumes where it stopped)",
            ) from None

    # -- migrations ---------------------------------------------------------------------

    @staticmethod
    def head_revision() -> str:
        """The schema revision this featx-search reads and writes."""
        return HEAD_REVISION

    def upgrade(self) -> None:
        """Apply every migration up to the newest revision (a no-op when up to date)."""
        from alembic import command

        if self.current_revision() == HEAD_REVISION:
            return
        head = alembic_head()
        if head != HEAD_REVISION:  # a migration was added without updating the constant
            raise RuntimeError(
                f"the newest migration is {head} but schema.HEAD_REVISION is {HEAD_REVISION}"
            )
        cfg = alembic_config(self.engine.url)
        with self.engine.begin() as conn:
            # Processes opening a new server library at once: one migrates, the others then
            # find it at head (Alembic reads the revision after the lock).
            self._serialize(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("library %s migrated to %s", self.location, HEAD_REVISION)

    # -- spaces -------------------------------------------------------------------------

    def ensure_space(self, spec: SpaceSpec) -> SpaceRecord:
        """The stored space with ``spec``'s fingerprint, created when new."""
        for record in self.spaces():
            if record.fingerprint == spec.fingerprint:
                return record
        with self.transaction() as conn:
            if self._serialize(conn):  # another run may have made it meanwhile
                found = conn.execute(
                    select(spaces.c.id, spaces.c.generation).where(
                        spaces.c.fingerprint == spec.fingerprint
                    )
                ).first()
                if found is not None:
                    return self.space(int(found.id))
            result = conn.execute(
                insert(spaces).values(
                    fingerprint=spec.fingerprint,
                    label=spec.label,
                    spec_json=json.dumps(spec.to_dict(), sort_keys=True),
                    dim=spec.dim,
                    generation=0,
                )
            )
            return SpaceRecord(inserted_id(result), spec, 0, 0)

    def set_transform(self, space_id: int, data: bytes | None) -> None:
        """Store (or with None remove) a space's transform. The space's generation grows, so
        its index file is stale and is rebuilt from the stored vectors."""
        with self.transaction() as conn:
            conn.execute(
                update(spaces)
                .where(spaces.c.id == space_id)
                .values(transform=data, generation=spaces.c.generation + 1)
            )

    # -- roots and files ----------------------------------------------------------------

    def root_for(self, folder: Path) -> tuple[int, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved).

        A folder inside a known root uses that root; a folder above known roots absorbs them:
        their files, and the claims of runs writing under them, move to it. On a server such
        a run may be writing still: its next write finds its root taken in and writes under
        the outer one (see :meth:`.RootMap.taken_in`).
        """
        with self.transaction() as conn:
            self._serialize(conn)
            return self._root_map.resolve(conn, folder)

    def move(self, moves: Sequence[Move]) -> None:
        """Give images new paths in one transaction; their vectors (and index ids) stay."""
        if not moves:
            return
        with self.transaction() as conn:
            current = self._root_map.current(conn, [(m.root_id, m.relpath) for m in moves])
            rows = [
                {
                    "_id": m.image_id,
                    "root_id": current[(m.root_id, m.relpath)][0],
                    "relpath": current[(m.root_id, m.relpath)][1],
                    "size": m.size,
                    "mtime_ns": m.mtime_ns,
                }
                for m in moves
            ]
            conn.execute(update(images).where(images.c.id == bindparam("_id")), rows)

    def write_batch(
        self,
        space_id: int,
        results: Sequence[FileResult],
        removed: Iterable[int] = (),
        *,
        claimed_by: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Record a batch of processed files and removals in one transaction.

        A file with a vector becomes ``indexed`` in this space (its vectors in other spaces are
        dropped when its content changed); a file with an error becomes ``failed``. The
        claims of ``claimed_by`` on these files (see :meth:`claim`) end in the same
        transaction. Returns (ids given vectors, ids whose vectors left this space); the
        space's generation after it is :meth:`written_generation`.

        On a server, a transaction that collided with another writer's (the same new file
        inserted by a run of another space, a deadlock) is rolled back and run again, up to
        :data:`WRITE_TRIES` times in all.
        """
        removed = list(removed)
        return self._retrying(
            "a batch", lambda: self._write_batch(space_id, results, removed, claimed_by)
        )

    def _retrying(self, what: str, write: Callable[[], _T]) -> _T:
        """``write`` (one transaction) run again when, on a server, it collided with another
        writer's (see :data:`_COLLISIONS`), up to :data:`WRITE_TRIES` times in all."""
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                return write()
            except DBAPIError as err:
                if self.location.path is not None or attempt == WRITE_TRIES:
                    raise
                if getattr(err.orig, "sqlstate", None) not in _COLLISIONS:
                    raise
                log.info("%s collided with another writer's; writing it again: %s", what, err.orig)
        raise AssertionError("unreachable")

    def _write_batch(
        self,
        space_id: int,
        results: Sequence[FileResult],
        removed: list[int],
        claimed_by: str | None,
    ) -> tuple[list[int], list[int]]:
        now = utcnow()
        with self.transaction() as conn:
            current = self._root_map.current(conn, [(r.root_id, r.relpath) for r in results])
            results = [
                replace(r, root_id=current[key][0], relpath=current[key][1])
                if current[key := (r.root_id, r.relpath)] != key
                else r
                for r in results
            ]
            existing = {
                (root_id, rel): (image_id, size, mtime_ns)
                for image_id, root_id, rel, size, mtime_ns in conn.execute(
                    select(
                        images.c.id,
                        images.c.root_id,
                        images.c.relpath,
                        images.c.size,
                        images.c.mtime_ns,
                    ).where(images.c.relpath.in_({r.relpath for r in results}))
                )
            }
            changes: list[dict[str, Any]] = []
            new: list[dict[str, Any]] = []
            stale: list[int] = []  # new content or undecodable: every stored vector is stale
            for result in results:
                row: dict[str, Any] = {
                    "size": result.size,
                    "mtime_ns": result.mtime_ns,
                    "width": result.width,
                    "height": result.height,
                    "content_hash": result.content_hash,
                    "taken_at": result.taken_at,
                    "status": INDEXED if result.vector is not None else FAILED,
                    "error": None
                    if result.vector is not None
                    else _text(result.error or "unknown error"),
                    "updated_at": now,
                }
                old = existing.get((result.root_id, result.relpath))
                if old is None:
                    new.append({"root_id": result.root_id, "relpath": result.relpath, **row})
                    continue
                if (old[1], old[2]) != (result.size, result.mtime_ns) or result.vector is None:
                    stale.append(old[0])
                changes.append({"_id": old[0], **row})
            if changes:
                conn.execute(update(images).where(images.c.id == bindparam("_id")), changes)
            ids = {key: found[0] for key, found in existing.items()}
            if new:
                conn.execute(insert(images), new)
                ids.update(
                    ((root_id, rel), image_id)
                    for image_id, root_id, rel in conn.execute(
                        select(images.c.id, images.c.root_id, images.c.relpath).where(
                            images.c.relpath.in_({row["relpath"] for row in new})
                        )
                    )
                )
            dropped = _drop_vectors(conn, stale + removed)
            given = [
                (ids[(r.root_id, r.relpath)], r.vector) for r in results if r.vector is not None
            ]
            added = [image_id for image_id, _ in given]
            if given:
                # An unchanged file indexed again (e.g. retried) replaces its vector.
                conn.execute(
                    delete(vectors).where(
                        vectors.c.space_id == space_id, vectors.c.image_id.in_(added)
                    )
                )
                conn.execute(
                    insert(vectors),
                    [
                        {
                            "space_id": space_id,
                            "image_id": image_id,
                            "data": np.asarray(vector, VECTOR_DTYPE).tobytes(),
                        }
                        for image_id, vector in given
                    ],
                )
            if removed:
                conn.execute(delete(images).where(images.c.id.in_(removed)))
            if claimed_by is not None:
                store_claims.unclaim(
                    conn, space_id, [(r.root_id, r.relpath) for r in results], claimed_by
                )
            # Every space that lost or gained vectors has a stale index file now.
            conn.execute(
                update(spaces)
                .where(spaces.c.id.in_({space_id, *dropped}))
                .values(generation=spaces.c.generation + 1)
            )
            # Row-locked by the update until the commit: no other writer's change is in it.
            generation = conn.execute(
                select(spaces.c.generation).where(spaces.c.id == space_id)
            ).scalar_one()
        self._written[space_id] = int(generation)
        return added, sorted(set(dropped.get(space_id, ())) - set(added))

    def written_generation(self, space_id: int) -> int | None:
        """The space's generation right after this store's last :meth:`write_batch` into it
        (None before one): a writer whose index mirrors its own batches knows from it
        whether another writer's batch came in between."""
        return self._written.get(space_id)

    # -- claims of files by concurrent index runs (server libraries) -------------------------

    def database_now(self) -> datetime:
        """The database server's clock (claims' leases are in its time)."""
        with self.transaction() as conn:
            now: datetime = conn.execute(select(func.now())).scalar_one()
        return now

    def claim(
        self,
        space_id: int,
        files: Sequence[tuple[int, str]],
        owner: str,
        *,
        lease: float = CLAIM_LEASE_SECONDS,
    ) -> dict[tuple[int, str], KnownFile | None]:
        """Claim ``files`` ((root id, relative path)) of a space for ``owner`` (an index run)
        for ``lease`` seconds, in one transaction: a file is taken when no run holds it,
        when its holder's lease ran out or its holder's database session ended (a killed
        process), or when ``owner`` holds it already. Returns the files taken, each with
        what the store holds for it now (None: no row), read after the claim, so that a
        file another run wrote meanwhile is seen as written. A file under a root another run
        took in meanwhile is claimed under the root that holds it now (see :class:`.RootMap`),
        and returned under the key it was asked by. Server libraries only.
        """
        if not files:
            return {}
        with self.transaction() as conn:
            current = self._root_map.current(conn, files)
            asked = {key: file for file, key in current.items()}
            got = store_claims.claim(
                conn, space_id, asked, owner, lease=lease, session=self._lock_pid
            )
        return {asked[key]: known for key, known in got.items()}

    def unclaim(self, space_id: int, files: Sequence[tuple[int, str]], owner: str) -> None:
        """End ``owner``'s claims on ``files`` (ones it took but need not embed)."""
        if files:
            with self.transaction() as conn:
                current = self._root_map.current(conn, files)
                store_claims.unclaim(conn, space_id, list(current.values()), owner)

    def renew_claims(self, owner: str, lease: float = CLAIM_LEASE_SECONDS) -> None:
        """Extend every claim of ``owner`` to ``lease`` seconds from now."""
        with self.transaction() as conn:
            conn.execute(
                update(claims)
                .where(claims.c.claimed_by == owner)
                .values(claimed_until=func.now() + timedelta(seconds=lease))
            )

    def release_claims(self, owner: str) -> None:
        """End every claim of ``owner`` (its run is over)."""
        with self.transaction() as conn:
            conn.execute(delete(claims).where(claims.c.claimed_by == owner))

    # -- index manifest -----------------------------------------------------------------

    def set_manifest(self, space_id: int, manifest: Manifest) -> None:
        # Every field of Manifest is a column of the same name.
        values = asdict(manifest)
        with self.transaction() as conn:
            changed = conn.execute(
                update(index_manifest).where(index_manifest.c.space_id == space_id).values(values)
            )
            if changed.rowcount == 0:
                conn.execute(insert(index_manifest).values(space_id=space_id, **values))

    def record_index_size(self, space_id: int, checksum: str, nbytes: int) -> None:
        """Fill in the file size of a manifest written before sizes were recorded (once its
        checksum held); a manifest that moved on meanwhile is left alone. Raises
        :class:`LibraryError` when the database cannot be written."""
        try:
            with self.transaction() as conn:
                conn.execute(
                    update(index_manifest)
                    .where(
                        index_manifest.c.space_id == space_id,
                        index_manifest.c.checksum == checksum,
                        index_manifest.c.nbytes.is_(None),
                    )
                    .values(nbytes=nbytes)
                )
        except DBAPIError as err:
            raise LibraryError(f"cannot record the index file size: {err}") from err

    # -- index settings (spaces.index_spec and the "index" key of spaces.settings_json) ------

    def set_index_settings(self, space_id: int, settings: IndexSettings) -> None:
        """Store a space's index settings (other keys of ``settings_json`` are kept)."""
        with self.transaction() as conn:
            data = _settings_of(conn, space_id)
            own = {"max_memory": settings.max_memory, "params": dict(settings.params)}
            data["index"] = {k: v for k, v in own.items() if v}
            if settings.copies:
                data["copies"] = True
            conn.execute(
                update(spaces)
                .where(spaces.c.id == space_id)
                .values(index_spec=settings.spec, settings_json=json.dumps(data, sort_keys=True))
            )

    def set_copies(self, space_id: int, on: bool) -> None:
        """Whether a space keeps copy views of its images (``copies`` of its
        :class:`IndexSettings`). Turning it off drops the stored views."""
        with self.transaction() as conn:
            data = _settings_of(conn, space_id)
            data.pop("copies", None)
            if on:
                data["copies"] = True
            else:
                store_copies.drop_views(conn, space_id)
            conn.execute(
                update(spaces)
                .where(spaces.c.id == space_id)
                .values(settings_json=json.dumps(data, sort_keys=True))
            )

    def write_views(self, space_id: int, views: Sequence[tuple[int, np.ndarray]]) -> int:
        """Store copy views (image id, float32 (views, dim)) of a space in one transaction;
        those of images whose vector is gone meanwhile are left out. Returns how many were
        written. On a server, a transaction that collided with another run's (the same
        images' views written at once) is run again, up to :data:`WRITE_TRIES` times."""
        if not views:
            return 0

        def write() -> int:
            with self.transaction() as conn:
                return store_copies.write_views(conn, space_id, views)

        return self._retrying("copy views", write)

    # -- decisions on duplicate groups --------------------------------------------------------

    def record_decision(self, decision: str, roles: dict[int, str]) -> int:
        """Store a decision about images (``roles``: image id -> its part), taking them out of
        older decisions (an older one left with fewer than two images is dropped). Returns its
        id. Raises :class:`ImageError` when an image is not in the library."""
        ids = sorted(roles)
        with self.transaction() as conn:
            known = conn.execute(select(images.c.id).where(images.c.id.in_(ids))).scalars()
            missing = sorted(set(ids) - set(known))
            if missing:
                raise ImageError(
                    f"no image with id {missing[0]} in the library",
                    hint="decide about images listed by dups",
                )
            members = dup_decision_members.c
            older = set(
                conn.execute(select(members.decision_id).where(members.image_id.in_(ids)))
                .scalars()
                .all()
            )
            conn.execute(delete(dup_decision_members).where(members.image_id.in_(ids)))
            decision_id = inserted_id(
                conn.execute(insert(dup_decisions).values(decision=decision, decided_at=utcnow()))
            )
            conn.execute(
                insert(dup_decision_members),
                [{"decision_id": decision_id, "image_id": i, "role": roles[i]} for i in ids],
            )
            for old in older:
                left = conn.execute(
                    select(func.count()).where(members.decision_id == old)
                ).scalar_one()
                if left < 2:
                    conn.execute(delete(dup_decisions).where(dup_decisions.c.id == old))
        return decision_id

    def forget_decision(self, decision_id: int) -> bool:
        """Drop a decision; False when there was none with that id."""
        with self.transaction() as conn:
            gone = conn.execute(delete(dup_decisions).where(dup_decisions.c.id == decision_id))
            return bool(gone.rowcount)


def _settings_of(conn: Connection, space_id: int) -> dict[str, Any]:
    """A space's ``settings_json``, parsed (``{}`` when empty), read in ``conn``'s
    transaction; :class:`SpaceError` when there is no such space."""
    row = conn.execute(select(spaces.c.settings_json).where(spaces.c.id == space_id)).first()
    if row is None:
        raise SpaceError(f"no space with id {space_id}")
    data: dict[str, Any] = json.loads(row.settings_json or "{}")
    return data
