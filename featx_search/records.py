"""The records a library's reads and writes pass around, and the image states: plain frozen
dataclasses, so that modules which only handle them import no database library."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .config import SpaceSpec

INDEXED = "indexed"
FAILED = "failed"
VECTOR_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class SpaceRecord:
    """A space as stored: its id, spec, number of vectors (-1 when read without counting,
    see :meth:`Reader.spaces`) and generation."""

    id: int
    spec: SpaceSpec
    count: int
    generation: int

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass(frozen=True)
class KnownFile:
    """What the store knows about one file under a root."""

    id: int
    size: int
    mtime_ns: int
    status: str
    has_vector: bool
    content_hash: str | None = None


@dataclass(frozen=True)
class StoredCopy:
    """A stored image with a given content hash: where it was, and its state in a space."""

    id: int
    path: Path
    root: Path
    status: str
    has_vector: bool


@dataclass(frozen=True)
class Move:
    """A stored image found at a new place: same row and vectors, new path, size and time."""

    image_id: int
    root_id: int
    relpath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FileResult:
    """The outcome of processing one file, written by :meth:`Store.write_batch`."""

    root_id: int
    relpath: str
    size: int
    mtime_ns: int
    vector: np.ndarray | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    content_hash: str | None = None
    taken_at: datetime | None = None


@dataclass(frozen=True)
class ImageFacts:
    """What queries filter on and duplicate finding ranks by, for one stored image."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    taken_at: datetime | None
    content_hash: str | None


@dataclass(frozen=True)
class Manifest:
    generation: int
    count: int
    checksum: str
    filename: str
    kind: str
    # removed vectors still inside the file (HNSW) and the file's tuned search params (JSON)
    tombstones: int = 0
    params_json: str | None = None
    # the file's size in bytes (None: published before sizes were recorded)
    nbytes: int | None = None


@dataclass(frozen=True)
class IndexSettings:
    """How a space's index is chosen: its spec (None: ``auto``), the memory budget of
    ``auto`` in bytes (None: none), and search params the user fixed for the space.
    ``copies``: the space keeps copy views of its images (see :mod:`featx_search.copies`;
    set with :meth:`Store.set_copies`, kept by :meth:`Store.set_index_settings`)."""

    spec: str | None = None
    max_memory: int | None = None
    params: dict[str, int] = field(default_factory=dict)
    copies: bool = False
