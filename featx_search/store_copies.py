"""Copy views as the store writes them: the ``copy_views`` rows of a copy-mode space (see
:mod:`featx_search.copies`), written and dropped in the caller's transaction. Their reads
are :class:`~.reader.Reader`'s (``copy_views``, ``copy_view_pages``, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection, delete, insert, select

from .records import VECTOR_DTYPE
from .schema import copy_views, vectors


def write_views(conn: Connection, space_id: int, views: Sequence[tuple[int, np.ndarray]]) -> int:
    """Store copy views (image id, float32 (views, dim)) of a space, replacing those stored;
    those of images whose vector is gone are left out. Returns how many were written."""
    wanted = [image_id for image_id, _ in views]
    present = {
        int(image_id)
        for (image_id,) in conn.execute(
            select(vectors.c.image_id).where(
                vectors.c.space_id == space_id, vectors.c.image_id.in_(wanted)
            )
        )
    }
    rows = [
        {
            "space_id": space_id,
            "image_id": image_id,
            "data": np.ascontiguousarray(array, VECTOR_DTYPE).tobytes(),
        }
        for image_id, array in views
        if image_id in present
    ]
    conn.execute(
        delete(copy_views).where(
            copy_views.c.space_id == space_id, copy_views.c.image_id.in_(present)
        )
    )
    if rows:
        conn.execute(insert(copy_views), rows)
    return len(rows)


def drop_views(conn: Connection, space_id: int) -> None:
    """Drop every copy view of a space (copy mode turned off)."""
    conn.execute(delete(copy_views).where(copy_views.c.space_id == space_id))
