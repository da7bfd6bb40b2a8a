"""The FAISS wrapper against brute force; atomic index files, opened by size and verified by
checksum."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

import featx_search.ann.raw as raw_module
from featx_search import Library, LibraryError, Query
from featx_search.ann.files import verify_index
from featx_search.ann.index import VectorIndex
from featx_search.ann.publish import open_index
from featx_search.schema import index_manifest, spaces
from featx_search.store import Store
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
    saved = index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.faiss"]  # no temp file left
    assert saved.nbytes == path.stat().st_size
    assert saved.checksum == raw_module.file_checksum(path)[0]
    loaded = VectorIndex.load(path, dim=8, nbytes=saved.nbytes, checksum=saved.checksum)
    assert sorted(loaded.ids().tolist()) == list(range(10))
    with pytest.raises(LibraryError, match="checksum"):
        VectorIndex.load(path, dim=8, checksum="0" * 64)
    with pytest.raises(LibraryError, match="manifest says"):
        VectorIndex.load(path, dim=8, nbytes=saved.nbytes + 1)
    with pytest.raises(LibraryError, match="expected 16"):
        VectorIndex.load(path, dim=16, nbytes=saved.nbytes)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LibraryError):
        VectorIndex.load(path, dim=8)  # no size to compare: faiss itself refuses the rest


def test_load_restores_the_deserialisation_limit(tmp_path: Path) -> None:
    import faiss

    path = tmp_path / "x.faiss"
    saved = VectorIndex.build(8, np.arange(4), np.eye(4, 8, dtype=np.float32)).save(path)
    before = faiss.get_deserialization_vector_byte_limit()
    VectorIndex.load(path, dim=8, nbytes=saved.nbytes)
    assert faiss.get_deserialization_vector_byte_limit() == before


# -- published files -------------------------------------------------------------------------


@pytest.fixture
def store(library: Library, photos: Path) -> Iterator[Store]:
    """A library of the 12 photos with a published index, seen through its store."""
    library.index([photos], TINY)
    store = Store.open(library.path)
    yield store
    store.close()


def _published(store: Store) -> tuple[Path, int]:
    record = store.spaces()[0]
    manifest = store.manifest(record.id)
    assert manifest is not None and manifest.generation == record.generation
    assert manifest.count == 12
    path = store.index_dir / manifest.filename
    assert manifest.nbytes == path.stat().st_size
    return path, record.id


@pytest.fixture
def no_checksums(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Fails every full read of an index file (what a size-checked open must not need); the
    paths it was asked for are listed."""
    asked: list[Path] = []

    def refuse(path: Path | list[Path]) -> tuple[str, int]:
        first = path[0] if isinstance(path, list) else path
        asked.append(first)
        raise AssertionError(f"{first} was read in full")

    monkeypatch.setattr(raw_module, "file_checksum", refuse)
    monkeypatch.setattr(raw_module, "files_checksum", refuse)
    monkeypatch.setattr("featx_search.ann.index.files_checksum", refuse)
    monkeypatch.setattr("featx_search.ann.files.files_checksum", refuse)
    return asked


def test_published_index_opens_without_reading_the_whole_file(
    store: Store, no_checksums: list[Path]
) -> None:
    _, space_id = _published(store)
    record = store.space(space_id)
    index, generation = open_index(store, record)
    assert generation == record.generation and len(index) == 12
    assert no_checksums == []


def test_a_file_of_another_size_is_refused_by_its_size(
    store: Store, no_checksums: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    path, space_id = _published(store)
    with path.open("ab") as fh:
        fh.write(b"\0" * 16)  # faiss itself would read this file happily
    with caplog.at_level(logging.WARNING, logger="featx_search"):
        index, _ = open_index(store, store.space(space_id))
    assert "manifest says" in caplog.text and "rebuilding" in caplog.text
    assert len(index) == 12 and no_checksums == []


def test_a_flipped_byte_passes_open_and_is_caught_by_check(
    library: Library, store: Store, photos: Path
) -> None:
    path, space_id = _published(store)
    record = store.space(space_id)
    assert verify_index(store, record) == []
    assert library.check().ok
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the id map: faiss reads it without complaint
    path.write_bytes(bytes(data))
    index, _ = open_index(store, record)  # the size matches: opened, not hashed
    assert len(index) == 12
    problems = verify_index(store, record)
    assert len(problems) == 1 and "checksum" in problems[0]
    report = library.check()
    assert not report.ok and any("checksum" in p for p in report.problems)


def test_verify_index_reports_a_missing_or_resized_file(store: Store) -> None:
    path, space_id = _published(store)
    record = store.space(space_id)
    path.write_bytes(path.read_bytes()[:100])
    problems = verify_index(store, record)
    assert any("100 bytes" in p for p in problems)
    path.unlink()
    assert any("cannot be read" in p for p in verify_index(store, record))


@pytest.fixture
def checksums(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose checksum is computed while the test runs, in order."""
    calls: list[Path] = []
    real = raw_module.files_checksum

    def counting(paths: list[Path]) -> tuple[str, int]:
        calls.extend(paths)
        return real(paths)

    monkeypatch.setattr("featx_search.ann.index.files_checksum", counting)
    return calls


def test_manifest_without_a_size_is_checked_by_checksum_once(
    store: Store, checksums: list[Path]
) -> None:
    """A manifest published before sizes were recorded (the migration leaves nbytes NULL)."""
    path, space_id = _published(store)
    with store.transaction() as s:
        s.execute(update(index_manifest).values(nbytes=None))
    record = store.space(space_id)
    index, _ = open_index(store, record)  # the checksum holds: the size is recorded
    assert len(index) == 12 and checksums == [path]
    manifest = store.manifest(space_id)
    assert manifest is not None and manifest.nbytes == path.stat().st_size
    open_index(store, record)
    assert checksums == [path]  # from now on the size is enough


def test_manifest_without_a_size_and_a_damaged_file_is_rebuilt(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    path, space_id = _published(store)
    with store.transaction() as s:
        s.execute(update(index_manifest).values(nbytes=None))
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="featx_search"):
        index, _ = open_index(store, store.space(space_id))
    assert "checksum" in caplog.text and len(index) == 12
    manifest = store.manifest(space_id)
    assert manifest is not None and manifest.nbytes is None  # a damaged file earns no size


@pytest.mark.parametrize("damage", ["delete", "truncate", "foreign"])
def test_damaged_index_is_rebuilt_from_store(
    library: Library, store: Store, photos: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, space_id = _published(store)
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        foreign = VectorIndex.build(32, np.arange(3), np.eye(3, 32, dtype=np.float32))
        saved = foreign.save(path)
        with store.transaction() as s:  # even with a manifest that vouches for its size
            s.execute(update(index_manifest).values(nbytes=saved.nbytes))
    with caplog.at_level(logging.WARNING, logger="featx_search"):
        index, _ = open_index(store, store.space(space_id))
    assert "rebuilding" in caplog.text
    assert sorted(index.ids().tolist()) == sorted(store.vectors(space_id)[1].tolist())
    # Searching still finds every image as its own best match.
    for image in sorted(photos.rglob("*.*"))[:3]:
        with Library.open(library.path) as again:
            assert again.search(image, Query(k=1))[0].path == str(image)


def test_stale_manifest_means_rebuild(library: Library, store: Store) -> None:
    _, space_id = _published(store)
    # Simulate a crash after a committed batch but before the index was published.
    from sqlalchemy import update

    with store.transaction() as s:
        s.execute(
            update(spaces).where(spaces.c.id == space_id).values(generation=spaces.c.generation + 1)
        )
    record = store.space(space_id)
    index, generation = open_index(store, record)
    assert generation == record.generation and len(index) == 12
    assert not library.spaces()[0].info().index_current


def test_library_published_before_sizes_checks_the_checksum_once(
    db: Path, photos: Path, checksums: list[Path]
) -> None:
    from alembic import command

    from featx_search.migrate import alembic_config

    with Library.open(db) as lib:
        lib.index([photos], TINY)
    command.downgrade(alembic_config(f"sqlite:///{db}"), "5b0d36316739")  # before nbytes
    image = sorted(photos.rglob("*.jpg"))[0]
    with Library.open(db) as lib:  # migrates: the manifest has no size yet
        assert lib.similar(image, Query(k=1))[0].path == str(image)
    assert len(checksums) == 1
    with Library.open(db) as lib:  # the size was recorded: opened without hashing
        assert lib.similar(image, Query(k=1))[0].path == str(image)
        assert lib.check().ok
    assert len(checksums) == 1
