"""The Python API end to end: indexing, searching, spaces, keeping in sync."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx_search import ExtractorSpec, ImageError, Library, Query, SpaceError, SyncOptions
from tests.support import RESNET18, TINY, make_photo


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("spec", [TINY, RESNET18], ids=["tiny", "resnet18"])
def test_every_image_finds_itself_first(
    library: Library, photos: Path, spec: ExtractorSpec
) -> None:
    report = library.index([photos], spec, options=SyncOptions(batch_size=5))
    assert (report.added, report.failed, report.unchanged) == (12, 0, 0)
    results = library.search(list(_files(photos)), Query(k=3))
    for path, matches in zip(_files(photos), results, strict=False):
        assert matches[0].path == str(path)
        assert matches[0].score >= 0.999
        assert [m.rank for m in matches] == [1, 2, 3]


def test_ranking_equals_brute_force(library: Library, photos: Path, tmp_path: Path) -> None:
    library.index([photos], TINY)
    space = library.spaces()[0]
    _, ids, matrix = space.vectors()
    queries = [make_photo(tmp_path / f"q{i}.jpg", seed=100 + i) for i in range(3)]
    vectors = library.embed(queries)
    for query, vector in zip(queries, vectors, strict=False):
        sims = matrix @ vector
        order = np.argsort(-sims, kind="stable")
        matches = library.search(query, Query(k=12))
        assert [m.image_id for m in matches] == ids[order].tolist()
        np.testing.assert_allclose([m.score for m in matches], sims[order], atol=1e-5)
        assert all(a.score >= b.score for a, b in itertools.pairwise(matches))


def test_two_spaces_stay_apart(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    # Layer "4" is already pooled to 1x1, so read the 4-D map before it for a real max pool.
    library.index(
        [photos], ExtractorSpec(model=TINY.model, weights="none", layers=("3",), pool="max")
    )
    spaces = library.spaces()
    assert len(spaces) == 2 and spaces[0].fingerprint != spaces[1].fingerprint
    assert [s.count for s in spaces] == [12, 12]
    assert library.space().id == spaces[1].id  # the newest is the default
    with pytest.raises(SpaceError, match="matches no space") as err:
        library.search(_files(photos)[0], space="nosuchspace")
    assert spaces[0].fingerprint in str(err.value) and spaces[1].fingerprint in str(err.value)
    query = _files(photos)[0]
    newest = library.search(query, Query(k=12))
    by_space = {
        s.fingerprint: library.search(query, Query(k=12), space=s.fingerprint[:8]) for s in spaces
    }
    avg, mx = by_space.values()
    assert avg[0].path == mx[0].path == str(query)
    assert [m.score for m in newest] == [m.score for m in mx]
    # Same images, different vectors: the scores must differ between spaces.
    assert [m.score for m in avg] != pytest.approx([m.score for m in mx])
    for space in spaces:
        _, _ids, matrix = space.vectors()
        assert matrix.shape == (12, space.dim)


def test_rerun_is_incremental(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    again = library.index([photos])  # the library's only space is reused
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 12, 0)
    changed = photos / "b" / "img00.png"
    make_photo(changed, seed=999)
    os.utime(changed, ns=(1, 1_000_000_000))
    (photos / "a" / "img01.jpg").unlink()
    make_photo(photos / "new" / "fresh.png", seed=1234)
    report = library.index([photos])
    assert (report.added, report.updated, report.unchanged, report.removed) == (1, 1, 10, 1)
    assert library.spaces()[0].count == 12
    assert library.search(changed, Query(k=1))[0].path == str(changed)
    paths = {m.path for m in library.search(changed, Query(k=50))}
    assert str(photos / "a" / "img01.jpg") not in paths
    assert str(photos / "new" / "fresh.png") in paths


def test_bad_file_is_recorded_and_run_goes_on(library: Library, photos: Path) -> None:
    (photos / "broken.jpg").write_text("not an image at all")
    report = library.index([photos], TINY)
    assert (report.added, report.failed) == (12, 1)
    failures = library.failures()
    assert len(failures) == 1 and failures[0][0] == str(photos / "broken.jpg")
    assert "cannot decode" in failures[0][1]
    assert library.info().images == {"indexed": 12, "failed": 1}
    # Unchanged failures are not retried; a fixed file is.
    assert library.index([photos]).failed == 0
    make_photo(photos / "broken.jpg", seed=77)
    fixed = library.index([photos])
    assert fixed.updated == 1 and library.failures() == []


def test_missing_root_changes_nothing(library: Library, photos: Path, tmp_path: Path) -> None:
    library.index([photos], TINY)
    report = library.index([tmp_path / "unplugged-drive"])
    assert report.missing == [str(tmp_path / "unplugged-drive")]
    assert library.spaces()[0].count == 12


def test_subfolder_and_single_file_share_the_root(library: Library, photos: Path) -> None:
    library.index([photos / "a"], TINY)
    library.index([photos / "b" / "img00.png"])
    assert library.spaces()[0].count == 7
    report = library.index([photos])  # the parent absorbs both
    assert (report.added, report.unchanged) == (5, 7)
    assert library.search(photos / "a" / "img01.jpg", Query(k=1))[0].path == str(
        photos / "a" / "img01.jpg"
    )


def test_reopened_library_searches_without_reindexing(db: Path, photos: Path) -> None:
    with Library.open(db) as lib:
        lib.index([photos], TINY)
    with Library.open(db) as lib:
        assert lib.spaces()[0].info().index_current
        assert lib.search(_files(photos)[3], Query(k=1))[0].path == str(_files(photos)[3])


def test_search_accepts_pil_images(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    path = _files(photos)[2]
    with Image.open(path) as img:
        assert library.search(img, Query(k=1))[0].path == str(path)


def test_query_errors_name_the_file(library: Library, photos: Path, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no images yet"):
        library.search(_files(photos)[0])
    library.index([photos], TINY)
    with pytest.raises(ImageError, match=r"nope\.jpg"):
        library.search(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"bad\.png"):
        library.search(bad)


def test_unknown_space_lists_the_spaces(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    with pytest.raises(SpaceError, match="matches no space") as err:
        library.search(_files(photos)[0], space="zzzz")
    assert library.spaces()[0].fingerprint in str(err.value)


def test_default_path_follows_featx_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATX_DB", str(tmp_path / "env.db"))
    with Library.open() as lib:
        assert lib.path == (tmp_path / "env.db").resolve()
    assert (tmp_path / "env.db").exists()


def test_torch_release_change_warns_on_query_and_refuses_writes(
    db: Path, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import sqlite3

    with Library.open(db) as lib:
        lib.index([photos], TINY)
    with sqlite3.connect(db) as conn:
        (spec_json,) = conn.execute("select spec_json from spaces").fetchone()
        spec = json.loads(spec_json)
        spec["torch"] = "1.0.0"
        conn.execute("update spaces set spec_json = ?", (json.dumps(spec),))
    query = photos / "a" / "img01.jpg"
    with Library.open(db) as lib, caplog.at_level("WARNING", logger="featx_search"):
        assert lib.search(query, Query(k=1))[0].path == str(query)
        assert "other library versions" in caplog.text
        make_photo(photos / "late.jpg", seed=4321)
        with pytest.raises(SpaceError, match=r"torch: 1\.0\.0 ->"):
            lib.index([photos])
        assert lib.spaces()[0].count == 12


def test_similar_uses_stored_vectors(library: Library, photos: Path, tmp_path: Path) -> None:
    library.index([photos], TINY)
    path = photos / "b" / "img04.jpg"
    by_path = library.similar(path, Query(k=5))
    by_search = library.search(path, Query(k=5))
    assert [m.image_id for m in by_path] == [m.image_id for m in by_search]
    np.testing.assert_allclose([m.score for m in by_path], [m.score for m in by_search], atol=1e-5)
    assert by_path[0].path == str(path)
    assert library.similar(by_path[0].image_id, Query(k=5)) == by_path
    with pytest.raises(ImageError, match="not indexed"):
        library.similar(make_photo(tmp_path / "outside.jpg", seed=5))
    with pytest.raises(ImageError, match="image id 99999"):
        library.similar(99999)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes")
def test_non_utf8_file_name_round_trips(library: Library, photos: Path) -> None:
    odd = os.fsdecode(bytes(photos / "a") + b"/caf\xe9.jpg")  # Latin-1 bytes, not UTF-8
    make_photo(Path(odd), seed=31)
    (photos / "zero.jpg").write_bytes(b"")
    report = library.index([photos], TINY)
    assert (report.added, report.failed) == (13, 1)
    assert library.search(odd, Query(k=1))[0].path == odd
    assert library.similar(odd, Query(k=1))[0].path == odd
    assert library.index([photos]).unchanged == 14


def test_stored_size_is_full_resolution_and_upright(library: Library, tmp_path: Path) -> None:
    folder = tmp_path / "big"
    src = make_photo(folder / "src.png", seed=8, size=(1200, 900))
    with Image.open(src) as img:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display: width and height swap
        img.convert("RGB").save(folder / "rotated.jpg", exif=exif)
    src.unlink()
    library.index([folder], TINY)  # decoded with JPEG draft scaling to ~1/4 size
    (facts,) = library._store.image_facts(None)
    assert (facts.width, facts.height) == (900, 1200)


def test_second_indexer_fails_clearly_and_writes_nothing(
    library_db: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's lock file, PostgreSQL's advisory lock: a second writer waits, then stops."""
    import subprocess
    import time

    from featx_search import LibraryError
    from featx_search import store as store_module

    db = library_db
    with Library.open(db) as lib:
        lib.index([photos / "a"], TINY)
    # A real second process holds the writer lock, as a running indexer would.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from featx_search.store import Store\n"
            f"s = Store.open({str(db)!r})\n"
            "with s.writer_lock():\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store_module, "WRITER_WAIT_SECONDS", 0.3)
        with Library.open(db) as lib:
            started = time.monotonic()
            with pytest.raises(LibraryError, match="another indexer is running"):
                lib.index([photos])
            assert time.monotonic() - started >= 0.3
            assert lib.spaces()[0].count == 6  # nothing half-written
            assert lib.search(photos / "a" / "img01.jpg", Query(k=1))[0].path == str(
                photos / "a" / "img01.jpg"
            )  # readers still work
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    with Library.open(db) as lib:  # the lock dies with its process
        assert lib.index([photos]).added == 6


def test_changed_file_leaves_no_stale_vector_in_other_spaces(
    library: Library, photos: Path
) -> None:
    library.index([photos], TINY)
    other = ExtractorSpec(model=TINY.model, weights="none", layers=("3",), pool="max")
    library.index([photos], other)
    second = library.spaces()[1].info()
    changed = photos / "b" / "img00.png"
    make_photo(changed, seed=555)
    os.utime(changed, ns=(1, 2_000_000_000))
    assert library.index([photos], TINY).updated == 1
    after = {s.id: s.info() for s in library.spaces()}
    # The other space lost the image's old vector, so its index file is out of date ...
    assert after[second.id].count == 11
    assert after[second.id].generation > second.generation
    assert not after[second.id].index_current
    # ... and its searches never return the image with its old content.
    hits = library.search(photos / "a" / "img01.jpg", Query(k=20), space=second.fingerprint)
    assert str(changed) not in {m.path for m in hits} and len(hits) == 11
    assert library.index([photos], space=second.fingerprint).added == 1
    assert library.similar(changed, Query(k=1), space=second.fingerprint)[0].path == str(changed)


def test_first_searches_from_many_threads_all_succeed(db: Path, photos: Path) -> None:
    # Issue 13, point 10: a cold library shared by threads builds each space's extractor
    # once; builds of two spaces at once, and searches running meanwhile, do not collide
    # in torch.fx's process-wide tracing state.
    from concurrent.futures import ThreadPoolExecutor

    with Library.open(db) as lib:
        lib.index([photos], RESNET18)
        lib.index([photos], ExtractorSpec(model="resnet18", weights="none", layers=("layer3",)))
    files = _files(photos)
    with Library.open(db) as lib:
        ids = [s.id for s in lib.spaces()]
        calls = [(files[i % len(files)], ids[i % 2]) for i in range(16)]
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda c: lib.search(c[0], Query(k=1), space=c[1]), calls))
    assert [matches[0].path for matches in found] == [str(path) for path, _ in calls]


def test_a_stored_space_is_found_again_without_building_its_model(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata
    from dataclasses import replace

    import featx_search.extract as extract_module

    with Library.open(db) as lib:
        made = lib.create_space(RESNET18).fingerprint

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(extract_module, "load_extractor", no_model)
    with Library.open(db) as lib:
        assert lib.create_space(RESNET18).fingerprint == made
        assert lib.create_space(replace(RESNET18, precision="auto")).fingerprint == made
        # Made by another torch release than the one here: built again, its weights hashed.
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1")
        with pytest.raises(AssertionError, match="built"):
            lib.create_space(RESNET18)
