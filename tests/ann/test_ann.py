"""Index types, the auto rule, tombstones, reindex, recall and memory-mapped loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featx_search import (
    ConfigError,
    Library,
    LibraryError,
    Query,
    SearchParams,
)
from featx_search.ann.index import VectorIndex, _array_fetch
from featx_search.ann.publish import open_index, publish_index
from featx_search.ann.spec import choose_spec, estimate_bytes, parse_memory, resolve_spec
from featx_search.ann.tuning import exact_neighbours, recall_at_k
from featx_search.cli import cli
from featx_search.records import FileResult, Manifest
from featx_search.store import Store
from tests.support import TINY, make_photo, synthetic_spec

# Small codebooks (4-bit PQ) keep training fast; the behaviour under test is the same.
SPECS = [
    "Flat",
    "HNSW16",
    "IVF16,Flat",
    "IVF16,PQ8x4",
    "PQ8x4",
    "SQ8",
    "HNSW16,SQ8",
]
DIM = 32


def _clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Unit vectors in 40 clusters: neighbourhoods that mean something, unlike plain noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


pytestmark = pytest.mark.usefixtures("faiss_one_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    vectors = _clustered(1500)
    ids = np.random.default_rng(1).choice(10**6, size=len(vectors), replace=False)
    return ids.astype(np.int64), vectors


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> dict[str, VectorIndex]:
    ids, vectors = data
    return {spec: VectorIndex.build(DIM, ids, vectors, spec=spec) for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS)
def test_each_type_returns_exact_top1_for_stored_vectors(
    built: dict[str, VectorIndex], data: tuple[np.ndarray, np.ndarray], spec: str
) -> None:
    ids, vectors = data
    index = built[spec]
    assert index.spec == spec and len(index) == len(ids)
    rows = np.arange(0, len(ids), 7)
    # lossy codes are re-ranked from the exact vectors: a generous pool makes top-1 exact
    scores, found = index.search(vectors[rows], 1, params=SearchParams(rerank=50))
    np.testing.assert_array_equal(found[:, 0], ids[rows])
    if not index.lossy or spec.startswith("HNSW"):
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=2e-2)
    # the defaults chosen at build time reach the recall target on this data
    assert recall_at_k(index, ids, vectors, sample=100) >= 0.9


@pytest.mark.parametrize("spec", SPECS)
def test_deleted_and_replaced_vectors_never_come_back(
    data: tuple[np.ndarray, np.ndarray], spec: str, tmp_path: Path
) -> None:
    ids, vectors = data
    index = VectorIndex.build(DIM, ids, vectors, spec=spec, tune=False)
    gone = ids[:200]
    assert index.remove(gone) == 200
    assert index.remove(gone) == 0  # twice is a no-op
    # id ids[200] now holds the vector of row 0 (an update)
    index.add(ids[200:201], vectors[:1])
    assert len(index) == len(ids) - 200
    live = set(ids[200:].tolist())
    assert set(index.ids().tolist()) == live
    # the lossy types re-rank from the store; here the "store" holds the replaced row too
    store_vectors = vectors.copy()
    store_vectors[200] = vectors[0]
    index.fetch = _array_fetch(ids, store_vectors)
    params = SearchParams(nprobe=16, ef_search=256, rerank=50)
    for idx in (index, _reload(index, tmp_path)):
        _, found = idx.search(vectors[:300], 20, params=params)
        assert not np.isin(found, gone).any()
        assert found[0, 0] == ids[200]  # the replaced vector is found under its new id
        _, found = idx.search(vectors[200:201], 5, params=params)
        # the old vector of ids[200] is gone: its nearest is now something else, at most
        # ids[200] itself through its new vector (never twice)
        assert list(found[0]).count(ids[200]) <= 1
    if spec.startswith("HNSW"):
        assert index.tombstones == 201


def _reload(index: VectorIndex, tmp_path: Path) -> VectorIndex:
    path = tmp_path / "x.faiss"
    saved = index.save(path)
    loaded = VectorIndex.load(path, dim=DIM, nbytes=saved.nbytes, spec=index.spec)
    loaded.fetch, loaded.params = index.fetch, index.params
    return loaded


@pytest.mark.slow
def test_opq_behaves_like_the_others(data: tuple[np.ndarray, np.ndarray]) -> None:
    # OPQ trains a rotation by alternating with PQ: about a minute here
    ids, vectors = data
    index = VectorIndex.build(DIM, ids, vectors, spec="OPQ8,IVF16,PQ8x4")
    rows = np.arange(0, len(ids), 7)
    _, found = index.search(vectors[rows], 1, params=SearchParams(rerank=50, nprobe=16))
    np.testing.assert_array_equal(found[:, 0], ids[rows])
    index.remove(ids[:100])
    _, found = index.search(vectors[:100], 10)
    assert not np.isin(found, ids[:100]).any()


def test_hnsw_tombstones_and_threshold(data: tuple[np.ndarray, np.ndarray]) -> None:
    ids, vectors = data
    index = VectorIndex.build(DIM, ids[:500], vectors[:500], spec="HNSW16", tune=False)
    index.remove(ids[:50])
    assert index.tombstones == 50 and len(index) == 450
    assert not index.needs_compaction  # 50 <= 0.2 * 450
    index.remove(ids[50:100])
    assert index.needs_compaction  # 100 > 0.2 * 400


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ8x4", "SQ8"])
def test_selector_restricts_every_type(
    built: dict[str, VectorIndex], data: tuple[np.ndarray, np.ndarray], spec: str
) -> None:
    import faiss

    ids, vectors = data
    allowed = ids[::3]
    selector = faiss.IDSelectorBatch(allowed)
    _, found = built[spec].search(
        vectors[:20], 5, selector=selector, params=SearchParams(nprobe=16)
    )
    assert np.isin(found[found >= 0], allowed).all()
    assert (found[:, 0] >= 0).all()


def test_exact_neighbours_equals_argsort() -> None:
    x = _clustered(700, seed=5)
    q = x[:9]
    scores, rows = exact_neighbours(x, q, 10, chunk=128)
    sims = q @ x.T
    for i in range(len(q)):
        np.testing.assert_allclose(scores[i], np.sort(sims[i])[::-1][:10], rtol=1e-5)
        np.testing.assert_allclose(sims[i][rows[i]], scores[i], rtol=1e-5)


# -- the auto rule (docs/how-it-works.md) ------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "dim", "budget", "expected"),
    [
        (0, 512, None, "Flat"),
        (12, 512, None, "Flat"),
        (19_999, 512, None, "Flat"),
        (20_000, 512, None, "IVF512,Flat"),
        (100_000, 512, None, "IVF1024,Flat"),
        (1_000_000, 512, None, "IVF4096,Flat"),
        (1_000_000, 1280, None, "IVF4096,Flat"),
        (10_000_000, 512, None, "IVF16384,Flat"),
        (1_000_000, 512, "3G", "IVF4096,Flat"),
        (1_000_000, 512, "1G", "ondisk:IVF4096,Flat"),  # the floats do not fit
        (1_000_000, 1280, "256M", "ondisk:IVF4096,Flat"),
        (10_000_000, 256, "3G", "ondisk:IVF16384,Flat"),
        (10_000, 512, "10M", "ondisk:IVF256,Flat"),  # small but over budget as floats
    ],
)
def test_auto_picks_the_documented_type(
    n: int, dim: int, budget: str | None, expected: str
) -> None:
    assert choose_spec(n, dim, parse_memory(budget)) == expected
    assert resolve_spec("auto", n, dim, parse_memory(budget)) == expected


def test_auto_choice_fits_its_budget() -> None:
    for n in (30_000, 300_000, 3_000_000):
        for budget in (50 * 2**20, 500 * 2**20, 5 * 2**30):
            spec = choose_spec(n, 256, budget)
            assert estimate_bytes(spec, n, 256) <= budget


def test_untrainable_spec_waits_as_flat() -> None:
    assert resolve_spec("IVF4096,Flat", 1000, 64, None) == "Flat"
    assert resolve_spec("IVF4096,Flat", 4096, 64, None) == "IVF4096,Flat"
    assert resolve_spec("PQ16", 255, 64, None) == "Flat"
    assert resolve_spec("HNSW32", 3, 64, None) == "HNSW32"


@pytest.mark.parametrize(
    ("text", "expected"), [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29)]
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected
    assert parse_memory(str(expected)) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "2X"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="max_memory"):
        parse_memory(text)


# -- a library of synthetic vectors ----------------------------------------------------------


def _vector_library(db: Path, tmp_path: Path, n: int = 1200) -> tuple[int, np.ndarray]:
    """A library whose one space holds ``n`` clustered vectors (no images are embedded)."""
    spec = synthetic_spec(DIM)
    store = Store.open(db)
    try:
        record = store.ensure_space(spec)
        root_id, _ = store.root_for(tmp_path.resolve())
        vectors = _clustered(n, seed=3)
        results = [FileResult(root_id, f"v{i:05d}.png", 1, 1, vector=vectors[i]) for i in range(n)]
        store.write_batch(record.id, results)
        return record.id, vectors
    finally:
        store.close()


def _manifest(db: Path, space_id: int) -> Manifest | None:
    store = Store.open(db)
    try:
        return store.manifest(space_id)
    finally:
        store.close()


def test_reindex_switches_type_and_keeps_results(db: Path, tmp_path: Path) -> None:
    space_id, vectors = _vector_library(db, tmp_path)
    with Library.open(db) as lib:
        space = lib.space()
        exact = [m.image_id for m in space.similar(5, Query(k=5))]
        for spec in ["HNSW16", "IVF16,Flat", "IVF16,PQ8x4", "auto"]:
            built = space.configure_index(spec)
            assert built is not None and built.spec == ("Flat" if spec == "auto" else spec)
            assert built.count == len(vectors)
            info = space.info()
            assert info.index_kind == built.spec and info.index_current
            assert info.index_spec == spec
            got = [m.image_id for m in space.similar(5, Query(k=5))]
            assert got[0] == exact[0] and len(set(got) & set(exact)) >= 4
        report = space.recall(sample=50)
        assert report.recall == 1.0 and report.spec == "Flat"
    # a new handle loads the published file without rebuilding
    manifest = _manifest(db, space_id)
    assert manifest is not None and manifest.kind == "Flat"


def test_index_grows_without_rebuild_and_deletes_stick(
    library: Library, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = library.create_space(TINY, index="HNSW16")
    library.index([photos])
    info = space.info()
    assert info.index_kind == "HNSW16" and info.index_spec == "HNSW16"
    import featx_search.ann.publish as publish_module

    calls: list[str] = []
    real = publish_module.build_from_store

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("build")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(publish_module, "build_from_store", counting)
    extra = make_photo(photos / "c" / "new.png", seed=99)
    library.index([photos])
    assert calls == []  # the HNSW index grew in place
    assert library.search(extra, Query(k=1))[0].path == str(extra)
    # one image deleted: a tombstone, not a rebuild; it never comes back
    victim = sorted(photos.rglob("*.jpg"))[0]
    victim_id = next(f.id for f in space.image_facts() if f.path == str(victim.resolve()))
    os.remove(victim)
    library.index([photos])
    assert calls == []
    manifest = _manifest(library.path, info.id)
    assert manifest is not None and manifest.tombstones == 1
    assert victim_id not in [m.image_id for m in library.similar(str(extra), Query(k=20))]
    # more deletions pass the threshold: the index is rebuilt without tombstones
    for path in sorted(photos.rglob("*.png"))[:4]:
        os.remove(path)
    library.index([photos])
    assert calls == ["build"]
    manifest = _manifest(library.path, info.id)
    assert manifest is not None and manifest.tombstones == 0 and manifest.count == 8


def test_untrainable_spec_is_flat_until_the_space_grows(library: Library, photos: Path) -> None:
    space = library.create_space(TINY, index="IVF16,Flat")
    library.index([photos])
    info = space.info()
    assert info.index_spec == "IVF16,Flat" and info.index_kind == "Flat"
    for i in range(5):
        make_photo(photos / "more" / f"m{i}.png", seed=200 + i)
    library.index([photos])
    info = space.info()
    assert info.count == 17 and info.index_kind == "IVF16,Flat" and info.index_current
    query = Query(k=1, params=SearchParams(nprobe=16))
    for image in sorted(photos.rglob("*.*"))[:4]:
        assert library.search(image, query)[0].path == str(image)


def test_bad_spec_is_refused_and_nothing_changes(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    space = library.space()
    for bad, match in [("IVF,Flat", "not a FAISS index spec"), ("IDMap,Flat", "IDMap")]:
        with pytest.raises(ConfigError, match=match) as err:
            space.configure_index(bad)
        assert err.value.param == "index"
    assert space.info().index_spec == "auto"
    with pytest.raises(ConfigError, match="nprobe must be at least 1"):
        library.similar(1, Query(params=SearchParams(nprobe=0)))


def test_large_files_load_memory_mapped(db: Path, tmp_path: Path) -> None:
    space_id, vectors = _vector_library(db, tmp_path, n=300)
    with Library.open(db) as lib:
        lib.space().configure_index("Flat")
    store = Store.open(db)
    try:
        record = store.space(space_id)
        index, _ = open_index(store, record, mmap=True)
        assert index.read_only
        _, found = index.search(vectors[:5], 1)
        assert len(set(found[:, 0].tolist())) == 5
        with pytest.raises(LibraryError, match="read only"):
            index.add(np.array([1]), vectors[:1])
        # the query path maps files over the threshold and reads small ones
        small, _ = open_index(store, record, mmap=None)
        assert not small.read_only
        publish_index(store, record, small, record.generation)
    finally:
        store.close()


def test_cli_reindex_info_recall_and_search_options(db: Path, photos: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--db", str(db), "index", str(photos), "-m", TINY.model, "-w", "none", "--index",
         "HNSW16", "--max-memory", "1G", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["--db", str(db), "info"])
    assert result.exit_code == 0, result.output
    assert "HNSW16" in result.output
    result = runner.invoke(cli, ["--db", str(db), "info", "--recall", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["spec"] == "HNSW16" and report["recall"] >= 0.9 and report["k"] == 10
    result = runner.invoke(cli, ["--db", str(db), "reindex", "--index", "auto", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["spec"] == "Flat"
    result = runner.invoke(cli, ["--db", str(db), "info", "--recall"])
    assert result.exit_code == 0, result.output
    assert "recall@10 = 1.000" in result.output
    image = sorted(photos.rglob("*.png"))[0]
    result = runner.invoke(
        cli, ["--db", str(db), "similar", str(image), "-k", "1", "--nprobe", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["path"] == str(image)
    result = runner.invoke(cli, ["--db", str(db), "reindex", "--index", "IVF,Flat"])
    assert result.exit_code == 1 and "not a FAISS index spec" in result.output
    result = runner.invoke(cli, ["--db", str(db), "reindex", "--max-memory", "lots"])
    assert result.exit_code == 1 and "Hint:" in result.output
