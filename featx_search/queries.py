"""Every read a library makes, each written once as a named SQLAlchemy Core statement on the
tables of :mod:`featx_search.schema`.

Each statement is static: its inputs are named bind parameters, and a list of ids or hashes
is one parameter holding a JSON array (read with ``json_each``, or PostgreSQL's
``json_array_elements_text``), so that a statement compiles
to one SQL text whatever the list's length. ``scripts/gen_sql.py`` compiles them for SQLite
into :mod:`featx_search.sql_sqlite`, which :class:`~featx_search.reader.Reader` runs with the
standard ``sqlite3`` module (a query never imports SQLAlchemy); a connection through an engine
(:class:`~featx_search.store.Store`, or another database back end) runs the statements here.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Exists,
    Select,
    String,
    bindparam,
    cast,
    exists,
    func,
    select,
)
from sqlalchemy import column as _column
from sqlalchemy import table as _table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from .records import FAILED, INDEXED, Manifest
from .schema import (
    copy_views,
    dup_decision_members,
    dup_decisions,
    images,
    index_manifest,
    roots,
    spaces,
    vectors,
)

# Alembic's own table: not part of our schema, read only to learn the revision.
alembic_version = _table("alembic_version", _column("version_num"))


class _Listed(ColumnElement[bool]):
    """SQL: ``column`` is one of the values of the JSON array bound as ``name``.

    SQLite reads the array with ``json_each``; PostgreSQL with ``json_array_elements_text``,
    its text values cast to the column's type (compiled per dialect below)."""

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a predicate itself: no "= 1" after it on SQLite
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy declares it so)
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name


@compiles(_Listed)
def _listed_sqlite(element: _Listed, compiler: Any, **kw: Any) -> str:
    values = func.json_each(bindparam(element.name, type_=String)).table_valued("value")
    return str(compiler.process(element.column.in_(select(values.c.value)), **kw))


@compiles(_Listed, "postgresql")
def _listed_postgresql(element: _Listed, compiler: Any, **kw: Any) -> str:
    array = cast(bindparam(element.name, type_=String), JSON)
    values = func.json_array_elements_text(array).table_valued("value")
    wanted = select(cast(values.c.value, element.column.type))
    return str(compiler.process(element.column.in_(wanted), **kw))


def _listed(column: Any, name: str) -> ColumnElement[bool]:
    return _Listed(column, name)


def _has_vector(in_space: bool) -> Exists:
    """SQL: the image of the row has a vector (in the space bound as ``space_id``, or in any)."""
    query = select(vectors.c.image_id).where(vectors.c.image_id == images.c.id)
    if in_space:
        query = query.where(vectors.c.space_id == bindparam("space_id"))
    return exists(query)


def _image_facts(in_space: bool, listed: bool) -> Select[Any]:
    query = select(
        images.c.id,
        roots.c.path,
        images.c.relpath,
        images.c.width,
        images.c.height,
        images.c.size,
        images.c.mtime_ns,
        images.c.taken_at,
        images.c.content_hash,
    ).join(roots, roots.c.id == images.c.root_id)
    if in_space:
        query = query.join(vectors, vectors.c.image_id == images.c.id).where(
            vectors.c.space_id == bindparam("space_id")
        )
    if listed:
        query = query.where(_listed(images.c.id, "ids"))
    return query.order_by(images.c.id)


def _vectors(listed: bool) -> Select[Any]:
    query = select(vectors.c.image_id, vectors.c.data).where(
        vectors.c.space_id == bindparam("space_id")
    )
    if listed:
        query = query.where(_listed(vectors.c.image_id, "ids"))
    return query.order_by(vectors.c.image_id)


def _integrity(status: str, has_vector: bool) -> Select[Any]:
    vector = _has_vector(in_space=False)
    return (
        select(func.count())
        .select_from(images)
        .where(images.c.status == status, vector if has_vector else ~vector)
    )


STATEMENTS: dict[str, Select[Any]] = {
    "revision": select(alembic_version.c.version_num),
    # -- spaces
    "vector_counts": select(vectors.c.space_id, func.count()).group_by(vectors.c.space_id),
    "spaces": select(spaces.c.id, spaces.c.spec_json, spaces.c.generation).order_by(spaces.c.id),
    "space_shape": select(spaces.c.dim, spaces.c.generation).where(
        spaces.c.id == bindparam("space_id")
    ),
    "transform": select(spaces.c.transform).where(spaces.c.id == bindparam("space_id")),
    "index_settings": select(spaces.c.index_spec, spaces.c.settings_json).where(
        spaces.c.id == bindparam("space_id")
    ),
    # Every field of Manifest is a column of the same name, read in the order of the fields.
    "manifest": select(*(index_manifest.c[f.name] for f in fields(Manifest))).where(
        index_manifest.c.space_id == bindparam("space_id")
    ),
    # -- roots and images
    "roots": select(roots.c.id, roots.c.path).order_by(roots.c.id),
    "image_at": select(images.c.id).where(
        images.c.root_id == bindparam("root_id"), images.c.relpath == bindparam("relpath")
    ),
    "paths": select(images.c.id, roots.c.path, images.c.relpath)
    .join(roots, roots.c.id == images.c.root_id)
    .where(_listed(images.c.id, "ids")),
    "image_facts": _image_facts(in_space=False, listed=False),
    "image_facts_listed": _image_facts(in_space=False, listed=True),
    "image_facts_in_space": _image_facts(in_space=True, listed=False),
    "image_facts_in_space_listed": _image_facts(in_space=True, listed=True),
    # A page of a space's images in path order (browsing), without reading them all.
    "image_facts_page": _image_facts(in_space=True, listed=False)
    .order_by(None)
    .order_by(roots.c.path, images.c.relpath)
    .limit(bindparam("limit"))
    .offset(bindparam("offset")),
    "image_counts": select(images.c.status, func.count()).group_by(images.c.status),
    "failures": select(roots.c.path, images.c.relpath, images.c.error)
    .join(roots, roots.c.id == images.c.root_id)
    .where(images.c.status == FAILED)
    .order_by(roots.c.path, images.c.relpath),
    "known_files": select(
        images.c.id,
        images.c.relpath,
        images.c.size,
        images.c.mtime_ns,
        images.c.status,
        _has_vector(in_space=True),
        images.c.content_hash,
    ).where(images.c.root_id == bindparam("root_id")),
    "stored_sizes": select(images.c.size).distinct(),
    "copies": select(
        images.c.content_hash,
        images.c.id,
        roots.c.path,
        images.c.relpath,
        images.c.status,
        _has_vector(in_space=True),
    )
    .join(roots, roots.c.id == images.c.root_id)
    .where(_listed(images.c.content_hash, "hashes"))
    .order_by(images.c.id),
    "indexed_without_vector": _integrity(INDEXED, has_vector=False),
    "failed_with_vector": _integrity(FAILED, has_vector=True),
    # -- vectors
    "vector_count": select(func.count())
    .select_from(vectors)
    .where(vectors.c.space_id == bindparam("space_id")),
    "vectors": _vectors(listed=False),
    "vectors_listed": _vectors(listed=True),
    "vector_ids": select(vectors.c.image_id)
    .where(vectors.c.space_id == bindparam("space_id"))
    .order_by(vectors.c.image_id),
    # Pages of a space's vectors and of their ids by key (image ids above ``after``), so that
    # a build streams a library of any size in bounded memory (Reader.vector_snapshot).
    "vectors_page": _vectors(listed=False)
    .where(vectors.c.image_id > bindparam("after"))
    .limit(bindparam("limit")),
    "vector_ids_page": select(vectors.c.image_id)
    .where(vectors.c.space_id == bindparam("space_id"), vectors.c.image_id > bindparam("after"))
    .order_by(vectors.c.image_id)
    .limit(bindparam("limit")),
    # -- copy views (copy-mode spaces, see copies.py)
    "copy_view_count": select(func.count())
    .select_from(copy_views)
    .where(copy_views.c.space_id == bindparam("space_id")),
    # Pages of a space's copy views by image id above ``after`` (CopyViews.build).
    "copy_views_page": select(copy_views.c.image_id, copy_views.c.data)
    .where(
        copy_views.c.space_id == bindparam("space_id"), copy_views.c.image_id > bindparam("after")
    )
    .order_by(copy_views.c.image_id)
    .limit(bindparam("limit")),
    "copy_views_listed": select(copy_views.c.image_id, copy_views.c.data)
    .where(copy_views.c.space_id == bindparam("space_id"), _listed(copy_views.c.image_id, "ids"))
    .order_by(copy_views.c.image_id),
    # The images with a vector in the space but no copy views of ``nbytes`` yet (none, or
    # views of an older set of them: what copies.update_views embeds).
    "copy_views_missing": select(vectors.c.image_id)
    .where(
        vectors.c.space_id == bindparam("space_id"),
        ~exists(
            select(copy_views.c.image_id).where(
                copy_views.c.space_id == vectors.c.space_id,
                copy_views.c.image_id == vectors.c.image_id,
                func.length(copy_views.c.data) == bindparam("nbytes"),
            )
        ),
    )
    .order_by(vectors.c.image_id),
    # -- decisions on duplicate groups
    "decisions": select(
        dup_decisions.c.id,
        dup_decisions.c.decision,
        dup_decisions.c.decided_at,
        dup_decision_members.c.image_id,
        dup_decision_members.c.role,
        roots.c.path,
        images.c.relpath,
    )
    .join(dup_decision_members, dup_decision_members.c.decision_id == dup_decisions.c.id)
    .join(images, images.c.id == dup_decision_members.c.image_id)
    .join(roots, roots.c.id == images.c.root_id)
    .order_by(dup_decisions.c.id, dup_decision_members.c.image_id),
}
"""The reads by name: :mod:`.reader` runs them with the parameters each one names."""
