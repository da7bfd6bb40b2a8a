"""The FAISS wrapper against brute force, and atomic, checksummed index files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library, LibraryError
from featx_search.index import VectorIndex, open_index
from tests.support import TINY


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    data, queries = _unit(rng, 300, 24), _unit(rng, 7, 24)
    ids = rng.choice(10**6, size=300, replace=False).astype(np.int64)
    index = VectorIndex.build(24, ids, data)
    scores, found = index.search(queries, 10)
    sims = queries @ data.T
    for q in range(len(queries)):
        order = np.argsort(-sims[q])[:10]
        np.testing.assert_array_equal(found[q], ids[order])
        np.testing.assert_allclose(scores[q], sims[q][order], rtol=1e-5, atol=1e-6)


def test_add_replaces_and_remove_deletes() -> None:
    rng = np.random.default_rng(2)
    data = _unit(rng, 5, 8)
    index = VectorIndex.build(8, np.arange(5), data)
    index.add(np.array([3]), data[:1])  # id 3 now holds row 0's vector
    assert len(index) == 5
    _, found = index.search(data[:1], 2)
    assert set(found[0]) == {0, 3}
    assert index.remove(np.array([0, 3, 99])) == 2
    assert sorted(index.ids().tolist()) == [1, 2, 4]
    _, found = index.search(data[:1], 5)
    assert 0 not in found[0] and 3 not in found[0]


def test_k_larger_than_index_and_empty_index() -> None:
    index = VectorIndex(4)
    scores, ids = index.search(np.ones((2, 4), np.float32), 5)
    assert scores.shape == (2, 0) and ids.shape == (2, 0)
    index.add(np.array([7]), np.ones((1, 4), np.float32) / 2)
    _, ids = index.search(np.ones((1, 4), np.float32), 5)
    assert ids.tolist() == [[7]]


def test_save_is_atomic_and_checksummed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex.build(8, np.arange(10), _unit(rng, 10, 8))
    path = tmp_path / "x.faiss"
    checksum = index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.faiss"]  # no temp file left
    loaded = VectorIndex.load(path, dim=8, checksum=checksum)
    assert sorted(loaded.ids().tolist()) == list(range(10))
    with pytest.raises(LibraryError, match="checksum"):
        VectorIndex.load(path, dim=8, checksum="0" * 64)
    with pytest.raises(LibraryError, match="expected 16"):
        VectorIndex.load(path, dim=16, checksum=checksum)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LibraryError):
        VectorIndex.load(path, dim=8, checksum=checksum)


def _indexed(library: Library, photos: Path) -> tuple[Path, int]:
    library.index([photos], spec=TINY)
    info = library.spaces()[0]
    store = library._store
    manifest = store.manifest(info.id)
    assert manifest is not None and manifest.generation == info.generation
    assert manifest.count == 12
    return store.index_dir / manifest.filename, info.id


def test_published_index_is_loaded(library: Library, photos: Path) -> None:
    path, space_id = _indexed(library, photos)
    assert path.exists()
    record = library._store.space(space_id)
    index, generation = open_index(library._store, record)
    assert generation == record.generation and len(index) == 12


@pytest.mark.parametrize("damage", ["delete", "truncate", "foreign"])
def test_damaged_index_is_rebuilt_from_store(
    library: Library, photos: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, space_id = _indexed(library, photos)
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        VectorIndex.build(32, np.arange(3), np.eye(3, 32, dtype=np.float32)).save(path)
    store = library._store
    with caplog.at_level(logging.WARNING, logger="featx_search"):
        index, _ = open_index(store, store.space(space_id))
    assert "rebuilding" in caplog.text
    assert sorted(index.ids().tolist()) == sorted(store.vectors(space_id)[1].tolist())
    # Searching still finds every image as its own best match.
    for image in sorted(photos.rglob("*.*"))[:3]:
        with Library.open(library.path) as again:
            assert again.search(image, k=1)[0].path == str(image)


def test_stale_manifest_means_rebuild(library: Library, photos: Path) -> None:
    _, space_id = _indexed(library, photos)
    store = library._store
    # Simulate a crash after a committed batch but before the index was published.
    from sqlalchemy import update

    from featx_search.schema import spaces

    with store.transaction() as s:
        s.execute(
            update(spaces).where(spaces.c.id == space_id).values(generation=spaces.c.generation + 1)
        )
    record = store.space(space_id)
    index, generation = open_index(store, record)
    assert generation == record.generation and len(index) == 12
    assert not library.spaces()[0].index_current
