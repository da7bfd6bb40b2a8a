"""Claims as the store writes them: the ``claims`` rows by which concurrent index runs on a
server library take files to embed (see :meth:`~.store.Store.claim` and
:class:`featx_search.claims.Claims`), in the caller's transaction."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta

from sqlalchemy import Connection, column, delete, func, or_, select, table

from .records import KnownFile
from .schema import claims, images, vectors
from .store_roots import File

# How long a claim on a file to embed lasts unless renewed (see Store.claim): a writer that
# died without its session ending (a machine lost) holds its files this long at most.
CLAIM_LEASE_SECONDS = 60.0

# The server's sessions (pg_stat_activity): a claim whose session is not among them is free.
_activity = table("pg_stat_activity", column("pid"))


def claim(
    conn: Connection,
    space_id: int,
    files: Iterable[File],
    owner: str,
    *,
    lease: float,
    session: int | None,
) -> dict[File, KnownFile | None]:
    """Claim ``files`` (their keys in the store now) of a space for ``owner`` for ``lease``
    seconds of the server's clock, for the server session ``session``: a file is taken when
    no run holds it, when its holder's lease ran out or its holder's session ended, or when
    ``owner`` holds it already. Returns the files taken, each with what the store holds for
    it (None: no row), read after the claim. PostgreSQL only."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    keys = sorted(files, key=lambda key: (key[0], os.fsencode(key[1])))
    until = conn.execute(select(func.now())).scalar_one() + timedelta(seconds=lease)
    rows = [
        {
            "space_id": space_id,
            "root_id": root_id,
            "relpath": relpath,
            "claimed_by": owner,
            "claimed_until": until,
            "session": session,
        }
        for root_id, relpath in keys
    ]
    insert_claims = pg_insert(claims).values(rows)
    new = insert_claims.excluded
    taken = conn.execute(
        insert_claims.on_conflict_do_update(
            index_elements=[claims.c.space_id, claims.c.root_id, claims.c.relpath],
            set_={
                "claimed_by": new.claimed_by,
                "claimed_until": new.claimed_until,
                "session": new.session,
            },
            where=or_(
                claims.c.claimed_by == new.claimed_by,
                claims.c.claimed_until < func.now(),
                claims.c.session.is_(None),
                claims.c.session.not_in(select(_activity.c.pid)),
            ),
        ).returning(claims.c.root_id, claims.c.relpath)
    ).all()
    got: dict[File, KnownFile | None] = {
        (int(root_id), relpath): None for root_id, relpath in taken
    }
    has = (
        select(vectors.c.image_id)
        .where(vectors.c.space_id == space_id, vectors.c.image_id == images.c.id)
        .exists()
    )
    for root_id, rels in _by_root(got).items():
        for image_id, relpath, size, mtime_ns, status, has_vector, digest in conn.execute(
            select(
                images.c.id,
                images.c.relpath,
                images.c.size,
                images.c.mtime_ns,
                images.c.status,
                has,
                images.c.content_hash,
            ).where(images.c.root_id == root_id, images.c.relpath.in_(rels))
        ):
            got[(root_id, relpath)] = KnownFile(
                image_id, size, mtime_ns, status, bool(has_vector), digest
            )
    return got


def unclaim(conn: Connection, space_id: int, files: Sequence[File], owner: str) -> None:
    """End ``owner``'s claims on ``files`` (their keys in the store now)."""
    for root_id, rels in _by_root(files).items():
        conn.execute(
            delete(claims).where(
                claims.c.space_id == space_id,
                claims.c.root_id == root_id,
                claims.c.relpath.in_(rels),
                claims.c.claimed_by == owner,
            )
        )


def _by_root(files: Iterable[File]) -> dict[int, list[str]]:
    by_root: dict[int, list[str]] = {}
    for root_id, relpath in files:
        by_root.setdefault(root_id, []).append(relpath)
    return by_root
