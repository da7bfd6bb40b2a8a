"""Roots as the store writes them: a folder above known roots takes them in, and the files a
run writes by (root id, relative path) found under the root that holds them now.

:class:`RootMap` is a :class:`~.store.Store`'s: it remembers the folder of each root the
store resolved, so that a run whose root another run took in meanwhile (on a server, several
index runs write at once) writes under the outer root. Its methods work in the caller's
transaction; the store takes the roots lock around them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, CursorResult, bindparam, delete, insert, select, text, update

from .connect import Location
from .errors import LibraryError
from .reader import _inside
from .reads import CoreReads
from .schema import claims, images, roots

# The key of a transaction's advisory lock around changes to roots and spaces on a server
# ("fxrt"): concurrent index runs make a folder's root or a new space once. Writes of files
# by (root id, relative path) take it shared (see RootMap.taken_in): a root is never taken
# in by a run on a folder above it while another run writes under it.
ROOTS_LOCK_KEY = 0x66787274

File = tuple[int, str]
"""A file by (root id, relative path), as runs plan, claim and write it."""


def inserted_id(result: CursorResult[Any]) -> int:
    """The id of the row ``result`` inserted."""
    key = result.inserted_primary_key
    if key is None:
        raise LibraryError("the database gave no id for a new row")
    return int(key[0])


def _roots(conn: Connection) -> list[tuple[int, str]]:
    return [(int(root_id), path) for root_id, path in CoreReads(conn).rows("roots")]


def _take_in(conn: Connection, outer_id: int, folder: str, root_id: int, root: str) -> None:
    """Move the files of ``root`` (inside ``folder``), and the claims of runs writing under
    it, to the root ``outer_id`` of ``folder``; then drop ``root``."""
    prefix = os.path.relpath(root, folder)
    moved = [
        {"_id": image_id, "root_id": outer_id, "relpath": os.path.join(prefix, rel)}
        for image_id, rel in conn.execute(
            select(images.c.id, images.c.relpath).where(images.c.root_id == root_id)
        )
    ]
    if moved:
        conn.execute(update(images).where(images.c.id == bindparam("_id")), moved)
    held = [
        {**row._asdict(), "root_id": outer_id, "relpath": os.path.join(prefix, row.relpath)}
        for row in conn.execute(select(claims).where(claims.c.root_id == root_id))
    ]
    if held:  # the old ones go with their root (ON DELETE CASCADE)
        conn.execute(insert(claims), held)
    conn.execute(delete(roots).where(roots.c.id == root_id))


class RootMap:
    """The roots one store resolved (id -> folder), and where their files are now."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._paths: dict[int, str] = {}

    def resolve(self, conn: Connection, folder: Path) -> tuple[int, Path]:
        """The id and path of the root that holds ``folder`` (absolute, resolved), made when
        none does, in ``conn``'s transaction (the caller holds the roots lock alone). A
        folder above known roots takes them in: their files and claims move to it."""
        folder_str = str(folder)
        known = _roots(conn)
        for root_id, root in known:
            if folder_str == root or _inside(folder_str, root):
                self._paths[root_id] = root
                return root_id, Path(root)
        new_id = inserted_id(conn.execute(insert(roots).values(path=folder_str)))
        for root_id, root in known:
            if _inside(root, folder_str):
                _take_in(conn, new_id, folder_str, root_id, root)
        self._paths[new_id] = folder_str
        return new_id, folder

    def taken_in(self, conn: Connection, root_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
        """The roots among ``root_ids`` (each resolved by :meth:`resolve`) that a run on a
        folder above them has taken in since, each with the root that holds it now and its
        folder relative to that root. On a server, also takes the roots lock shared until
        ``conn``'s transaction ends, so that no root is taken in before this transaction's
        writes by (root id, relative path) commit. On SQLite (one writer) no other run takes
        a root in: empty, nothing read."""
        if self.location.path is not None:
            return {}
        conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ROOTS_LOCK_KEY})
        wanted = set(root_ids)
        if not wanted:
            return {}
        present = set(conn.execute(select(roots.c.id).where(roots.c.id.in_(wanted))).scalars())
        if wanted <= present:
            return {}
        current = _roots(conn)
        outer: dict[int, tuple[int, str]] = {}
        for root_id in wanted - present:
            folder = self._paths.get(root_id)
            found = next(
                (
                    (other_id, os.path.relpath(folder, other))
                    for other_id, other in current
                    if folder is not None and (folder == other or _inside(folder, other))
                ),
                None,
            )
            if found is None:
                raise LibraryError(
                    f"the root {folder or root_id} of this index run left library "
                    f"{self.location} while it ran",
                    hint="run it again: it resumes under the library's roots as they are now",
                )
            outer[root_id] = found
        return outer

    def current(self, conn: Connection, files: Iterable[File]) -> dict[File, File]:
        """``files`` by their key in the store now: a file under a root taken in (see
        :meth:`taken_in`) under the root that holds it now. Takes the roots lock shared on
        a server."""
        files = list(files)
        outer = self.taken_in(conn, {root_id for root_id, _ in files})
        current: dict[File, File] = {}
        for root_id, relpath in files:
            if root_id in outer:
                other_id, prefix = outer[root_id]
                moved = relpath if prefix == os.curdir else os.path.join(prefix, relpath)
                current[(root_id, relpath)] = (other_id, moved)
            else:
                current[(root_id, relpath)] = (root_id, relpath)
        return current
