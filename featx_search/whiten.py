"""PCA-whitening learned from a space's stored vectors, applied where vectors enter the index.

The store keeps raw vectors (the truth); a space may hold a :class:`Whitening` in
``spaces.transform``. Vectors are whitened when they enter the FAISS index and query vectors
before they are searched, so the index of a whitened space holds ``dims``-dimensional vectors.
Pure numpy: applying it never imports torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, LibraryError

if TYPE_CHECKING:
    from .reader import Reader
    from .records import SpaceRecord

# Eigenvalues below this share of the largest are raised to it, so that directions with
# almost no variance are not blown up into noise.
_FLOOR = 1e-4
_FORMAT = 1


@dataclass(frozen=True)
class Whitening:
    """Centre on ``mean`` (D,), project on ``projection`` (D, dims), L2-normalise.

    ``projection`` holds the top ``dims`` principal directions, each scaled by one over the
    square root of its variance, so whitened training vectors have identity covariance.
    """

    mean: np.ndarray
    projection: np.ndarray
    count: int

    @property
    def dim(self) -> int:
        """Input size (the space's vector size)."""
        return int(self.projection.shape[0])

    @property
    def dims(self) -> int:
        """Output size (the index's vector size)."""
        return int(self.projection.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Whiten float32 (N, dim) vectors into L2-normalised float32 (N, dims)."""
        out = (np.asarray(vectors, np.float32) - self.mean) @ self.projection
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.int64(_FORMAT),
            mean=self.mean.astype("<f4"),
            projection=self.projection.astype("<f4"),
            count=np.int64(self.count),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        """Read :meth:`to_bytes` output. Raises :class:`LibraryError` for anything else."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                if int(npz["format"]) != _FORMAT:
                    raise ValueError(f"format {int(npz['format'])}")
                mean, projection = npz["mean"].astype(np.float32), npz["projection"]
                return cls(mean, projection.astype(np.float32), int(npz["count"]))
        except (OSError, ValueError, KeyError) as err:
            raise LibraryError(
                f"the space's stored whitening cannot be read: {err}",
                hint="learn it again with `featx-search whiten DIMS`, or remove it with "
                "`featx-search whiten 0`",
            ) from err


def learn(vectors: np.ndarray, dims: int) -> Whitening:
    """PCA-whitening to ``dims`` dimensions from float32 (N, D) vectors (N > dims).

    Raises :class:`ConfigError` when ``dims`` is not in 1..D or there are too few vectors.
    """
    count, dim = vectors.shape
    if not 1 <= dims <= dim:
        raise ConfigError(
            f"dims {dims} is outside 1..{dim} (the space's vector size)",
            hint=f"choose at most {dim} dimensions, e.g. {min(dim, 256)}",
            param="dims",
        )
    if count <= dims:
        raise ConfigError(
            f"dims {dims} needs more than {dims} indexed images; the space has {count}",
            hint=f"index more images first, or choose fewer than {count} dimensions",
            param="dims",
        )
    data = vectors.astype(np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    values, vectors_ = np.linalg.eigh(centred.T @ centred / (count - 1))
    order = np.argsort(values)[::-1][:dims]
    values = np.maximum(values[order], _FLOOR * max(float(values[order[0]]), 1e-12))
    projection = vectors_[:, order] / np.sqrt(values)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), count)


def stored(store: Reader, record: SpaceRecord) -> Whitening | None:
    """The whitening stored with a space, or None."""
    data = store.transform(record.id)
    return None if data is None else Whitening.from_bytes(data)


def for_index(store: Reader, record: SpaceRecord, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (raw, of the space) as they go into or query the space's index."""
    whitening = stored(store, record)
    return vectors if whitening is None else whitening.apply(vectors)


def index_dim(store: Reader, record: SpaceRecord) -> int:
    """The size of the vectors in a space's index: the whitened size, else the space's."""
    whitening = stored(store, record)
    return record.spec.dim if whitening is None else whitening.dims
