"""The one definition of a library's tables (SQLAlchemy Core) and of the schema revision they
are at. Reads (:mod:`.reader`), writes (:mod:`.store`) and migrations (``migrations/``) all use
these objects; no other module spells a table or column name in SQL."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# The revision of the newest migration in migrations/versions: a database at it is read and
# written without Alembic. tests/store/test_store.py checks it against Alembic's head, and
# Store.upgrade refuses to run when the two disagree.
HEAD_REVISION = "8110f08c8ae4"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FsPath(TypeDecorator[str]):
    """A file-system path stored as its raw bytes: names that are not valid UTF-8 (kept by
    Python as surrogate escapes) survive the round trip instead of failing to encode."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> bytes | None:
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value: bytes | None, dialect: Any) -> str | None:
        return None if value is None else os.fsdecode(value)


metadata = MetaData()

roots = Table(
    "roots",
    metadata,
    # A folder that was indexed; image paths are stored relative to it.
    Column("id", Integer, primary_key=True),
    Column("path", FsPath, nullable=False, unique=True),
    Column("added_at", DateTime(timezone=True), nullable=False, default=utcnow),
)

images = Table(
    "images",
    metadata,
    # One file seen by a scan, in one state: "indexed" or "failed" (with an error).
    Column("id", Integer, primary_key=True),
    Column("root_id", ForeignKey("roots.id", ondelete="CASCADE"), nullable=False),
    Column("relpath", FsPath, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("width", Integer),
    Column("height", Integer),
    # SHA-256 of the file's bytes: finds moved/renamed files and exact duplicates.
    Column("content_hash", String(64), index=True),
    # When the photo was taken (EXIF DateTimeOriginal, naive local time), if it says.
    Column("taken_at", DateTime()),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow),
    UniqueConstraint("root_id", "relpath"),
)

spaces = Table(
    "spaces",
    metadata,
    # An embedding space: the resolved spec (JSON) and its fingerprint. "generation" grows
    # with every committed change to the space's vectors; an index file built at an older
    # generation is out of date.
    Column("id", Integer, primary_key=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("label", Text, nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("generation", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow),
    # The FAISS index spec for this space (factory string or "auto"); NULL means "auto".
    Column("index_spec", Text),
    # Per-space settings that do not change stored vectors (JSON object), e.g. search params.
    Column("settings_json", Text),
    # A learned transform applied to vectors before indexing and to queries (PCA-whitening),
    # serialised by the module that owns it; NULL means none.
    Column("transform", LargeBinary),
)

vectors = Table(
    "vectors",
    metadata,
    # One image's vector in one space: little-endian float32 bytes (the source of truth).
    Column("space_id", ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Index("ix_vectors_image", "image_id"),
)

copy_views = Table(
    "copy_views",
    metadata,
    # A copy-mode space's extra views of one image (crops, a small copy, turned copies; see
    # copies.py): little-endian float32 bytes, (views, dim) row by row. They belong to the
    # image's vector in the space and go with it (replaced, dropped, the image removed).
    Column("space_id", Integer, primary_key=True),
    Column("image_id", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
    ForeignKeyConstraint(
        ["space_id", "image_id"],
        ["vectors.space_id", "vectors.image_id"],
        ondelete="CASCADE",
    ),
)

index_manifest = Table(
    "index_manifest",
    metadata,
    # Which index file is current for a space, and what it must contain.
    Column("space_id", ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("filename", Text, nullable=False),
    Column("kind", String(64), nullable=False),
    # Ids removed from the stored vectors but still inside an index that cannot delete (HNSW).
    Column("tombstones", Integer, nullable=False, default=0, server_default="0"),
    Column("params_json", Text),
    # The file's size in bytes, compared on every open (the checksum is checked when the file
    # is published and by `db check`); NULL for files published before sizes were recorded.
    Column("nbytes", BigInteger),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow),
)

dup_decisions = Table(
    "dup_decisions",
    metadata,
    # What a person decided about a group of duplicates: "keep" (one member is the keeper,
    # the others are duplicates of it) or "distinct" (not duplicates of each other). Only
    # recorded: nothing here ever deletes or moves a file.
    Column("id", Integer, primary_key=True),
    Column("decision", String(16), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False, default=utcnow),
)

dup_decision_members = Table(
    "dup_decision_members",
    metadata,
    # The images a decision is about, each with its part in it ("keep", "duplicate" or
    # "distinct"). An image belongs to one decision at most: a newer decision takes it over.
    Column("decision_id", ForeignKey("dup_decisions.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),
    Index("ix_dup_decision_members_decision", "decision_id"),
)

claims = Table(
    "claims",
    metadata,
    # A file an index run has taken to embed into a space, so that several runs writing one
    # server library at once never embed it twice: held by ``claimed_by`` (a run) until
    # ``claimed_until``, or while the database session ``session`` (the run's writer-lock
    # connection) lives, whichever ends first; then another run may take it. Rows are
    # deleted when the file is written. SQLite libraries (one writer) never write here.
    Column("space_id", ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True),
    Column("root_id", ForeignKey("roots.id", ondelete="CASCADE"), primary_key=True),
    Column("relpath", FsPath, primary_key=True),
    Column("claimed_by", String(64), nullable=False),
    Column("claimed_until", DateTime(timezone=True), nullable=False),
    Column("session", Integer),
    Index("ix_claims_claimed_by", "claimed_by"),
)
