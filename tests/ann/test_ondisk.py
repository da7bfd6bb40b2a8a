"""Indexes larger than memory: streamed builds, on-disk IVF lists (memory-mapped, published
as a pair), ``auto`` under a small budget, and recall computed in chunks."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featx_search import ConfigError, Library, Query
from featx_search.ann.index import VectorIndex
from featx_search.ann.publish import (
    build_from_store,
    open_index,
    rebuild_index,
    recall_from_store,
)
from featx_search.ann.raw import check_spec
from featx_search.ann.tuning import recall_at_k
from featx_search.cli import cli
from featx_search.records import FileResult, IndexSettings
from featx_search.store import Store
from tests.support import TINY, make_photo, synthetic_spec

DIM = 24
N = 2400  # IVF16 trains on all of them (TRAIN_PER_LIST * 16 < 20,000)
SPEC = "IVF16,Flat"


pytestmark = pytest.mark.usefixtures("faiss_one_thread")


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, DIM))
    x = centres[rng.integers(0, 30, n)] + 0.7 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def vector_store(library_db: str, tmp_path: Path) -> Iterator[tuple[Store, int, np.ndarray]]:
    """A library (SQLite, then PostgreSQL) whose one space holds N clustered vectors with
    gaps in their ids (every third image has none)."""
    store = Store.open(library_db)
    try:
        record = store.ensure_space(synthetic_spec(DIM))
        root_id, _ = store.root_for(tmp_path.resolve())
        vectors = _clustered(N + N // 2, seed=3)
        results = [
            FileResult(root_id, f"v{i:05d}.png", 1, 1, vector=None if i % 3 == 2 else vectors[i])
            for i in range(len(vectors))
        ]
        store.write_batch(record.id, results)
        yield store, record.id, vectors
    finally:
        store.close()


def _search(index: VectorIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from featx_search import SearchParams

    return index.search(queries, 10, params=SearchParams(nprobe=4))


def test_chunked_builds_answer_like_the_in_memory_build(
    vector_store: tuple[Store, int, np.ndarray], tmp_path: Path
) -> None:
    store, space_id, _ = vector_store
    record = store.space(space_id)
    _, ids, vectors = store.vectors(space_id)
    assert len(ids) == N
    whole = VectorIndex.build(DIM, ids, vectors, spec=SPEC)
    queries = vectors[::97]
    want_scores, want_ids = _search(whole, queries)
    # in memory, streamed from the store in chunks that do not divide N
    chunked, generation = build_from_store(store, record, SPEC, chunk=257)
    assert generation == record.generation and not chunked.ondisk
    # on disk: the same trained quantizer, the lists written to a file
    lists = tmp_path / "built" / "x.ivfdata"
    ondisk, _ = build_from_store(store, record, "ondisk:" + SPEC, ivfdata=lists, chunk=257)
    assert ondisk.ondisk and ondisk.read_only and ondisk.ivfdata == lists and lists.exists()
    for index in (chunked, ondisk):
        assert len(index) == N and index.params == whole.params
        got_scores, got_ids = _search(index, queries)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_scores, want_scores)
    assert sorted(ondisk.ids().tolist()) == ids.tolist()


def test_build_without_a_file_for_the_lists_maps_a_private_copy(
    vector_store: tuple[Store, int, np.ndarray],
) -> None:
    store, space_id, vectors = vector_store
    index, _ = build_from_store(store, store.space(space_id), "ondisk:" + SPEC)
    assert index.ondisk and index.ivfdata is None  # cannot be published
    assert not any(store.index_dir.glob(".build-*"))  # its files are already unlinked
    assert _search(index, vectors[:3])[1][0, 0] == 1


def _library_with_vectors(db: Path, tmp_path: Path, n: int = N) -> tuple[int, np.ndarray]:
    store = Store.open(db)
    try:
        record = store.ensure_space(synthetic_spec(DIM))
        root_id, _ = store.root_for(tmp_path.resolve())
        vectors = _clustered(n, seed=5)
        store.write_batch(
            record.id,
            [FileResult(root_id, f"v{i:05d}.png", 1, 1, vector=vectors[i]) for i in range(n)],
        )
        return record.id, vectors
    finally:
        store.close()


def _ondisk_lists(index: VectorIndex) -> object:
    import faiss

    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.raw).invlists)


def test_published_ondisk_index_is_memory_mapped_and_moves_with_its_folder(
    db: Path, tmp_path: Path
) -> None:
    import faiss

    space_id, vectors = _library_with_vectors(db, tmp_path)
    with Library.open(db) as lib:
        built = lib.space().configure_index("ondisk:" + SPEC)
        assert built is not None and built.spec == "ondisk:" + SPEC and built.count == N
        exact = [m.image_id for m in lib.space().similar(7, Query(k=5))]
        assert exact[0] == 7
        assert lib.check().problems == []
    folder = db.with_name(db.name + ".indexes")
    names = sorted(p.suffix for p in folder.iterdir() if not p.name.startswith("."))
    assert names == [".faiss", ".ivfdata"]
    # the library moved elsewhere: the lists are found beside the index file
    moved = tmp_path / "moved" / db.name
    moved.parent.mkdir()
    shutil.copy(db, moved)
    shutil.copytree(folder, moved.with_name(moved.name + ".indexes"))
    shutil.rmtree(folder)
    store = Store.open(moved)
    try:
        record = store.space(space_id)
        index, generation = open_index(store, record)
        assert generation == record.generation and index.ondisk and index.read_only
        assert isinstance(_ondisk_lists(index), faiss.OnDiskInvertedLists)
        mapped = Path(_ondisk_lists(index).filename)  # type: ignore[attr-defined]
        assert mapped.parent == store.index_dir
        _, found = _search(index, vectors[6:7])
        assert found[0].tolist()[:5] == exact
    finally:
        store.close()


def test_ondisk_index_follows_syncs(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(8):
        make_photo(photos / "more" / f"m{i}.png", seed=300 + i)
    space = library.create_space(TINY, index="ondisk:IVF16,Flat")
    library.index([photos])
    info = space.info()
    assert info.index_kind == "ondisk:IVF16,Flat" and info.index_current
    trained: list[int] = []
    real = VectorIndex.train_on

    def counting(self: VectorIndex, sample: np.ndarray) -> None:
        trained.append(len(sample))
        real(self, sample)

    monkeypatch.setattr(VectorIndex, "train_on", counting)
    extra = make_photo(photos / "c" / "late.png", seed=99)
    library.index([photos])  # the sync cannot change the lists: the publish writes them again
    assert trained == []  # into the same trained lists
    assert space.info().index_current and space.info().count == info.count + 1
    assert library.search(extra, Query(k=1))[0].path == str(extra)
    victim = sorted(photos.rglob("*.png"))[0]
    os.remove(victim)
    library.index([photos])
    assert str(victim.resolve()) not in [m.path for m in library.similar(str(extra), Query(k=30))]
    folder = library.path.with_name(library.path.name + ".indexes")
    assert len(list(folder.glob("*.ivfdata"))) == 1  # the older pairs are gone
    # back to auto: a library this small is exact, in memory
    assert space.configure_index("auto") is not None
    assert space.info().index_kind == "Flat" and not list(folder.glob("*.ivfdata"))


def test_chunked_recall_equals_unchunked_recall(
    vector_store: tuple[Store, int, np.ndarray],
) -> None:
    store, space_id, _ = vector_store
    record = store.space(space_id)
    _, ids, vectors = store.vectors(space_id)
    index = VectorIndex.build(DIM, ids, vectors, spec=SPEC, tune=False)
    index.params = index.params.merged(None)
    from featx_search import SearchParams

    params = SearchParams(nprobe=1)  # low enough that recall is not 1
    whole = recall_at_k(index, ids, vectors, k=10, sample=150, seed=4, params=params)
    assert 0.3 < whole < 1.0
    for chunk in (61, 1000, 10**6):
        got, count = recall_from_store(
            store, record, index, k=10, sample=150, seed=4, params=params, chunk=chunk
        )
        assert count == N and got == whole


def test_a_crash_before_the_manifest_leaves_the_old_index_serving(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space_id, vectors = _library_with_vectors(db, tmp_path)
    with Library.open(db) as lib:
        lib.space().configure_index("ondisk:" + SPEC)
    store = Store.open(db)
    try:
        old = store.manifest(space_id)
        assert old is not None
        before = sorted(p.name for p in store.index_dir.iterdir())

        def crash(*args: object, **kwargs: object) -> None:
            assert len(list(store.index_dir.glob("*.ivfdata"))) == 2  # old and new lists
            raise KeyboardInterrupt  # e.g. Ctrl-C between writing the lists and publishing

        monkeypatch.setattr(store, "set_manifest", crash)
        with pytest.raises(KeyboardInterrupt):
            rebuild_index(store, store.space(space_id))
        monkeypatch.undo()
        assert store.manifest(space_id) == old
        assert sorted(p.name for p in store.index_dir.iterdir()) == before  # new pair dropped
        # kill -9 at the same point: the new pair stays on disk, unnamed by the manifest
        record = store.space(space_id)
        stray = store.index_dir / f"{record.fingerprint}-g{record.generation}-dead.ivfdata"
        index, _ = build_from_store(store, record, "ondisk:" + SPEC, ivfdata=stray)
        index.save(stray.with_suffix(".faiss"))
        served, _ = open_index(store, record)
        assert served.ivfdata is not None and served.ivfdata.name != stray.name
        assert _search(served, vectors[:1])[1][0, 0] == 1
        # the next publish removes the strays
        rebuild_index(store, store.space(space_id))
        names = [p.name for p in store.index_dir.iterdir() if not p.name.startswith(".")]
        assert len(names) == 2 and stray.name not in names
    finally:
        store.close()


def test_ondisk_specs_are_checked() -> None:
    assert check_spec("ondisk:IVF16,Flat") == "ondisk:IVF16,Flat"
    assert check_spec("ondisk:IVF16,PQ8") == "ondisk:IVF16,PQ8"
    for bad in ("ondisk:HNSW32", "ondisk:Flat", "ondisk:"):
        with pytest.raises(ConfigError, match="IVF") as err:
            check_spec(bad)
        assert err.value.param == "index"
    with pytest.raises(ConfigError, match="lists on disk"):
        VectorIndex.build(DIM, np.arange(2000), _clustered(2000), spec="ondisk:" + SPEC)


def test_cli_reindex_on_disk_and_recall(db: Path, tmp_path: Path) -> None:
    _library_with_vectors(db, tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--db", str(db), "reindex", "--index", "auto", "--max-memory", "1K", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["spec"] == "ondisk:IVF32,Flat"
    result = runner.invoke(cli, ["--db", str(db), "info", "--recall", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["spec"] == "ondisk:IVF32,Flat" and report["recall"] >= 0.9


def test_settings_budget_reaches_auto(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featx_search.ann.publish as publish_module
    from featx_search.ann.publish import wanted_spec
    from featx_search.ann.spec import default_budget

    budget = default_budget()
    assert budget is not None and 2**28 < budget < os.sysconf("SC_PAGE_SIZE") * os.sysconf(
        "SC_PHYS_PAGES"
    )
    space_id, _ = _library_with_vectors(db, tmp_path, n=300)
    store = Store.open(db)
    try:
        record = store.space(space_id)
        assert wanted_spec(store, record) == "Flat"
        store.set_index_settings(space_id, IndexSettings(None, 1024, {}))
        assert wanted_spec(store, record) == "ondisk:IVF16,Flat"
        # without a budget of its own a space plans for the machine's (here made tiny)
        store.set_index_settings(space_id, IndexSettings(None, None, {}))
        monkeypatch.setattr(publish_module, "default_budget", lambda: 1024)
        assert wanted_spec(store, record) == "ondisk:IVF16,Flat"
    finally:
        store.close()


def test_a_read_only_reader_streams_the_same_vectors(db: Path, tmp_path: Path) -> None:
    from featx_search.reader import Reader

    space_id, vectors = _library_with_vectors(db, tmp_path, n=700)
    reader = Reader.open(db, read_only=True)
    try:
        with reader.vector_snapshot(space_id) as snapshot:
            assert snapshot.count == 700
            pages = list(snapshot.chunks(256))
            assert [len(ids) for ids, _ in pages] == [256, 256, 188]
            np.testing.assert_array_equal(np.concatenate([v for _, v in pages]), vectors)
            ids, picked = snapshot.pick(np.array([0, 255, 256, 699]))
            assert ids.tolist() == [1, 256, 257, 700]
            np.testing.assert_array_equal(picked, vectors[[0, 255, 256, 699]])
        # an on-disk build in a reader that cannot write beside the library maps a temp copy
        index, _ = build_from_store(reader, reader.space(space_id), "ondisk:IVF16,Flat")
        assert len(index) == 700 and index.ivfdata is None
    finally:
        reader.close()
