"""Crash safety: damaged index files, interrupted runs, a killed indexer, concurrent readers."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from featx_search import LibraryError
from featx_search.index import VectorIndex


def test_forged_length_in_index_file_is_refused_not_allocated(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    path = tmp_path / "x.faiss"
    VectorIndex.build(8, np.arange(10), vectors).save(path)
    data = bytearray(path.read_bytes())
    # The flat codes are stored as a 64-bit count of floats followed by the raw vectors.
    start = bytes(data).find(vectors.tobytes())
    assert struct.unpack("<Q", data[start - 8 : start]) == (vectors.size,)
    data[start - 8 : start] = struct.pack("<Q", 1 << 29)  # claims 2 GiB
    path.write_bytes(data)
    checksum = hashlib.sha256(data).hexdigest()  # even with a matching manifest checksum
    with pytest.raises(LibraryError, match="deserialization_vector_byte_limit"):
        VectorIndex.load(path, dim=8, checksum=checksum)
