"""SQLAlchemy 2.0 typed models of a library (imports neither torch nor faiss)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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


class Base(DeclarativeBase):
    pass


class Root(Base):
    """A folder that was indexed; image paths are stored relative to it."""

    __tablename__ = "roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    images: Mapped[list[Image]] = relationship(back_populates="root")


class Image(Base):
    """One file seen by a scan, in one state: ``indexed`` or ``failed`` (with ``error``)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("root_id", "relpath"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"))
    relpath: Mapped[str] = mapped_column(FsPath)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    # SHA-256 of the file's bytes: finds moved/renamed files and exact duplicates.
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    # When the photo was taken (EXIF DateTimeOriginal, naive local time), if it says.
    taken_at: Mapped[datetime | None] = mapped_column(DateTime(), default=None)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    root: Mapped[Root] = relationship(back_populates="images")


class Space(Base):
    """An embedding space: the resolved spec (JSON) and its fingerprint.

    ``generation`` grows with every committed change to the space's vectors; an index file
    built at an older generation is out of date.
    """

    __tablename__ = "spaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(Text)
    spec_json: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The FAISS index spec for this space (factory string or "auto"); None means "auto".
    index_spec: Mapped[str | None] = mapped_column(Text, default=None)
    # Per-space settings that do not change stored vectors (JSON object), e.g. search params.
    settings_json: Mapped[str | None] = mapped_column(Text, default=None)
    # A learned transform applied to vectors before indexing and to queries (e.g. PCA-whitening),
    # serialised by the module that owns it; None means none.
    transform: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)


class Vector(Base):
    """One image's vector in one space: little-endian float32 bytes (the source of truth)."""

    __tablename__ = "vectors"
    __table_args__ = (Index("ix_vectors_image", "image_id"),)

    space_id: Mapped[int] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class IndexManifest(Base):
    """Which index file is current for a space, and what it must contain."""

    __tablename__ = "index_manifest"

    space_id: Mapped[int] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(64))
    # Ids removed from the stored vectors but still inside an index that cannot delete (HNSW).
    tombstones: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    params_json: Mapped[str | None] = mapped_column(Text, default=None)
    # The file's size in bytes, compared on every open (the checksum is checked when the file
    # is published and by `db check`); None for files published before sizes were recorded.
    nbytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
