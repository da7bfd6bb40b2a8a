"""Copy mode: the views stored beside a space's vectors, the copy index built from them and
searches scored by the best view, checked against a brute-force reference; views going with
their vectors on sync; the CLI flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library, Query, copies
from featx_search.copies import (
    VIEWS,
    CopyIndex,
    best_of_views,
    copy_index_path,
    decoded,
    embed_views,
)
from featx_search.errors import SpaceError
from tests.support import TINY, TINY_ARGS, make_photo, run_cli


def _photos(root: Path, n: int = 6) -> list[Path]:
    return [make_photo(root / f"p{i:02d}.png", seed=i) for i in range(n)]


def _reference(lib: Library, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored vectors and freshly embedded views of ``paths``, by image id."""
    space = lib.space()
    _, ids, vectors = space.vectors()
    by_path = {Path(m.path).name: m.id for m in space.image_facts()}
    order = [by_path[p.name] for p in paths]
    assert sorted(order) == ids.tolist()
    views = embed_views(
        space.extractor().embed, [decoded(p) for p in paths], space.record.spec.preprocess
    )
    position = {int(i): n for n, i in enumerate(ids)}
    ordered_views = np.empty_like(views)
    for row, image_id in enumerate(order):
        ordered_views[position[image_id]] = views[row]
    return ids, vectors, ordered_views


@pytest.mark.parametrize("compact", [False, True])
def test_copy_search_scores_the_best_view_as_brute_force(
    tmp_path: Path, library_db: str, compact: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compact:  # projected, quantised candidates, then scored exactly
        monkeypatch.setattr(copies, "COMPACT_FROM", 0)
        monkeypatch.setattr(copies, "COMPACT_DIMS", 8)
    paths = _photos(tmp_path / "photos")
    with Library.open(library_db) as lib:
        space = lib.create_space(TINY)
        space.sync([tmp_path / "photos"])
        assert not space.copies
        with pytest.raises(SpaceError, match="keeps no copy views"):
            space.similar(paths[0], Query(copies=True))
        report = space.keep_copies()
        assert report is not None and (report.added, report.failed, report.total) == (6, 0, 6)
        assert space.copies
        assert space.copy_index().index.spec == ("SQ8" if compact else "Flat")
        assert space.copy_index().index.dim == (8 if compact else space.dim)
        ids, vectors, views = _reference(lib, paths)
        # a query that is none of the images: a half-size crop of one
        crop = decoded(paths[2]).crop((0, 0, 250, 200))
        query = space.embed([crop])
        norm = space.embed([copies.normalised(crop)])  # compared with the normalised views
        expected = best_of_views(query, vectors, views, norm)[0]
        assert not np.allclose(expected, best_of_views(query, vectors, views)[0])
        found = space.search(crop, Query(copies=True, k=6))
        assert [m.image_id for m in found] == ids[np.argsort(-expected, kind="stable")].tolist()
        np.testing.assert_allclose([m.score for m in found], np.sort(expected)[::-1], atol=1e-4)
        # the plain search scores the stored vectors only
        plain = space.search(crop, Query(k=6))
        np.testing.assert_allclose(
            [m.score for m in plain], np.sort(query @ vectors.T)[0][::-1], atol=1e-4
        )
        # pairs for dups --copies: every image against all, above a threshold
        every = best_of_views(vectors, vectors, views)
        ranked = np.sort(every.ravel())  # halfway between two scores: no rounding tie
        at = int(np.argmax(np.diff(ranked[len(ranked) // 2 :]))) + len(ranked) // 2
        threshold = float(ranked[at] + ranked[at + 1]) / 2
        want_pairs = {
            (row, int(ids[col])) for row, col in zip(*np.nonzero(every >= threshold), strict=True)
        }
        linked = space.copy_index().linked(vectors, 6, threshold)
        assert {(row, image) for row, image, _ in linked} == want_pairs
        for row, image, score in linked:
            assert score == pytest.approx(every[row, list(ids).index(image)], abs=1e-4)
        # similar: stored vectors as queries, filtered, the image itself excluded
        rows = space.similar([int(ids[0]), int(ids[1])], Query(copies=True, k=3, exclude_self=True))
        for image_id, row in zip(ids[:2], rows, strict=True):
            own = views[ids == image_id][:, copies.NORM]  # its stored normalised view
            scores = best_of_views(vectors[ids == image_id], vectors, views, own)[0]
            scores[ids == image_id] = -np.inf
            want = ids[np.argsort(-scores, kind="stable")][:3]
            assert [m.image_id for m in row] == want.tolist()


def test_views_go_with_their_vectors_and_the_index_follows(tmp_path: Path, library_db: str) -> None:
    root = tmp_path / "photos"
    paths = _photos(root)
    with Library.open(library_db) as lib:
        space = lib.create_space(TINY)
        space.sync([root])
        space.keep_copies()
        index = space.copy_index()
        assert len(index) == 6 * (len(VIEWS) + 1)
        paths[0].unlink()  # removed: its views go
        make_photo(paths[1], seed=99)  # changed: its views are embedded again
        os.utime(paths[1], (1e9, 1e9))
        make_photo(root / "new.png", seed=50)  # new: views embedded by the sync
        space.sync([root])
        assert lib._store.copy_view_count(space.id) == 6
        assert len(lib._store.copy_views_missing(space.id, copies.views_nbytes(space.dim))) == 0
        index = space.copy_index()
        assert len(index) == 6 * (len(VIEWS) + 1)
        ids, vectors, views = _reference(lib, [*paths[1:], root / "new.png"])
        scores = best_of_views(vectors[:1], vectors, views, views[:1, copies.NORM])[0]
        found = space.similar(int(ids[0]), Query(copies=True, k=6))
        np.testing.assert_allclose([m.score for m in found], np.sort(scores)[::-1], atol=1e-4)
        # turned off: views dropped, searches refused
        assert space.keep_copies(False) is None
        assert lib._store.copy_view_count(space.id) == 0
        with pytest.raises(SpaceError):
            space.copy_index()


def test_copy_index_file_is_a_cache(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 3)
    db = tmp_path / "lib.db"
    with Library.open(db) as lib:
        space = lib.create_space(TINY)
        space.sync([tmp_path / "photos"])
        space.keep_copies()
        path = copy_index_path(lib._store, space.fingerprint)
        assert path.is_file()
        first = space.similar(1, Query(copies=True))
        path.write_bytes(b"damaged")  # a damaged cache is built again, same answers
        space.forget()
        assert space.similar(1, Query(copies=True)) == first
        assert path.stat().st_size > 100
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["key"]["views"] == 3
        assert len(CopyIndex.open(space)) == 3 * (len(VIEWS) + 1)


def test_a_copy_with_other_colours_finds_its_original_through_the_normalised_views(
    tmp_path: Path,
) -> None:
    from PIL import ImageEnhance

    paths = _photos(tmp_path / "photos", 5)
    original = decoded(paths[2])
    changed = ImageEnhance.Contrast(ImageEnhance.Brightness(original).enhance(0.6)).enhance(1.4)
    # brightness and contrast leave nothing the normalised view sees
    gap = np.abs(
        np.asarray(copies.normalised(changed), np.int16)
        - np.asarray(copies.normalised(original), np.int16)
    )
    assert gap.mean() < 3
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(TINY)
        space.sync([tmp_path / "photos"])
        space.keep_copies()
        plain = space.search(changed, Query(k=5))
        found = space.search(changed, Query(copies=True, k=1))[0]
        assert found.path == str(paths[2]) and found.score > 0.98
        # the plain vector, and the best of the plain views, score the original lower
        assert next(m.score for m in plain if m.path == str(paths[2])) < found.score - 0.01
        scores, ids = space.copy_index().search(space.embed([changed], trim=True), 5)
        assert scores[0][ids[0] == found.image_id][0] < found.score - 0.005


def test_views_of_an_older_view_set_are_embedded_again(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 3)
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(TINY)
        space.sync([tmp_path / "photos"])
        space.keep_copies()
        store = lib._store
        _, ids, _ = space.vectors()
        full = store.copy_views(space.id, [int(ids[0])], space.dim)[int(ids[0])]
        # image 1 as a library indexed before the last views were added left it
        store.write_views(space.id, [(int(ids[0]), full[:-2])])
        nbytes = copies.views_nbytes(space.dim)
        assert store.copy_views_missing(space.id, nbytes).tolist() == [int(ids[0])]
        space.forget()
        assert len(CopyIndex.open(space)) == 3 * (len(VIEWS) + 1)  # read, padded
        assert space.similar(int(ids[0]), Query(copies=True, k=1))[0].image_id == ids[0]
        report = space.keep_copies()
        assert report is not None and report.added == 1
        assert len(store.copy_views_missing(space.id, nbytes)) == 0
        again = store.copy_views(space.id, [int(ids[0])], space.dim)[int(ids[0])]
        np.testing.assert_allclose(again, full, atol=1e-5)


def test_cli_index_similar_and_dups_with_copies(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    paths = _photos(root, 4)
    crop = decoded(paths[3]).crop((10, 10, 260, 200))
    crop.save(root / "crop.jpg", quality=40)
    db = tmp_path / "lib.db"
    run_cli("--db", db, "index", root, *TINY_ARGS, "--copies", "-q")
    with Library.open(db, create=False) as lib:
        assert lib.space().copies
        assert lib._store.copy_view_count(lib.space().id) == 5
        want = lib.space().similar(root / "crop.jpg", Query(copies=True, k=3))
    out = run_cli("--db", db, "similar", root / "crop.jpg", "--copies", "-k", "3", "--json")
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["image_id"] for r in rows] == [m.image_id for m in want]
    assert [r["score"] for r in rows] == pytest.approx([m.score for m in want], abs=1e-3)
    plain = run_cli("--db", db, "dups", "--threshold", "0.999", "--json").output
    copies = run_cli("--db", db, "dups", "--threshold", "0.999", "--copies", "--json").output
    assert len(copies.splitlines()) >= len(plain.splitlines())
    # a space without views: one clear error line
    db2 = tmp_path / "plain.db"
    run_cli("--db", db2, "index", root, *TINY_ARGS, "-q")
    result = run_cli("--db", db2, "similar", root / "crop.jpg", "--copies", ok=False)
    assert result.exit_code != 0 and "keeps no copy views" in result.output


def test_db_copy_carries_the_views(tmp_path: Path) -> None:
    from featx_search.transfer import copy_library

    _photos(tmp_path / "photos", 3)
    source, copy = tmp_path / "a.db", tmp_path / "b.db"
    with Library.open(source) as lib:
        space = lib.create_space(TINY)
        space.sync([tmp_path / "photos"])
        space.keep_copies()
        want = space.similar(1, Query(copies=True))
    report = copy_library(source, copy, chunk=2)
    assert report.ok
    with Library.open(copy, create=False) as lib:
        assert lib.space().copies and lib._store.copy_view_count(lib.space().id) == 3
        assert lib.space().similar(1, Query(copies=True)) == want


def test_a_stopped_sync_leaves_views_to_the_next(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "photos"
    _photos(root, 3)
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(TINY)
        space.sync([root])
        space.keep_copies()
        make_photo(root / "new.png", seed=70)
        stop = threading.Event()
        stop.set()  # stopped: at most the batch in flight is written, no views embedded
        space.sync([root], stop=stop)
        missing = lib._store.copy_views_missing(space.id, copies.views_nbytes(space.dim))
        assert lib._store.copy_view_count(space.id) == 3
        space.sync([root])  # resumes: the new file and its views
        assert len(lib._store.copy_views_missing(space.id, copies.views_nbytes(space.dim))) == 0
        assert lib._store.copy_view_count(space.id) == space.count
        assert len(missing) == space.count - 3
