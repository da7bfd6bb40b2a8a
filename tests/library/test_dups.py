"""Duplicate groups: planted copies found with the pretrained model, grouping against a
brute-force connected-components reference, batching, keepers and exact (hash) mode."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from featx_search import DupGroup, ExtractorSpec, Library
from featx_search.dups import near_duplicates
from tests.support import TINY, make_photo, run_cli


def scene(kind: int, seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A synthetic picture of one of six clearly different kinds (checkerboard, rings,
    stripes, waves, blobs, dots): unlike noise-dominated test photos, a pretrained model
    tells these apart the way it tells different photos apart."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:
        s = int(rng.integers(12, 40))
        m = (xx // s + yy // s) % 2
    elif kind == 1:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        m = (np.sin(np.hypot(xx - cx, yy - cy) / rng.uniform(4, 12)) > 0).astype(float)
    elif kind == 2:
        m = (np.sin((xx * rng.uniform(0.5, 1.5) + yy) / rng.uniform(3, 9)) > 0).astype(float)
    elif kind == 3:
        m = (np.sin(xx / rng.uniform(10, 30)) * np.cos(yy / rng.uniform(10, 30)) + 1) / 2
    elif kind == 4:
        m = np.zeros((h, w))
        for _ in range(6):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 60)
            m += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        m = np.clip(m, 0, 1)
    else:
        m = yy / h
    arr = (c1 * m[..., None] + c2 * (1 - m[..., None])).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if kind == 5:
        draw = ImageDraw.Draw(img)
        for _ in range(40):
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(3, 12))
            draw.ellipse(
                [x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
    return img


def test_planted_copies_are_found_and_different_images_are_not(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    for kind in range(6):
        scene(kind, kind).save(root / f"scene{kind}.jpg", quality=92)
    with Image.open(root / "scene4.jpg") as src:
        src.load()
        src.resize((160, 120)).save(root / "more" / "scene4_small.jpg")  # resized
        src.save(root / "more" / "scene4_q20.jpg", quality=20)  # re-encoded
        src.crop((16, 12, 304, 228)).save(root / "more" / "scene4_crop.png")  # cropped
    shutil.copy(root / "scene3.jpg", root / "more" / "scene3 copy.jpg")  # byte-identical
    old = datetime(2015, 5, 5).timestamp()
    os.utime(root / "more" / "scene3 copy.jpg", (old, old))  # the older of the two
    db = tmp_path / "lib.db"
    with Library.open(db) as lib:
        lib.index([root], ExtractorSpec())  # efficientnet_lite0, pretrained
        # Copies score >= 0.84 against their original here; different scenes <= 0.72.
        groups = lib.duplicates(threshold=0.8)
        exact = lib.duplicates(exact=True)
    names = [[Path(m.path).name for m in g.members] for g in groups]
    assert names[0][0] == "scene4.jpg"  # the largest group first, its keeper first
    assert sorted(names[0]) == sorted(
        ["scene4.jpg", "scene4_small.jpg", "scene4_q20.jpg", "scene4_crop.png"]
    )
    assert names[1] == ["scene3 copy.jpg", "scene3.jpg"]  # same size: the oldest is kept
    assert len(groups) == 2  # no different scene joined a group
    assert groups[1].members[1].identical and groups[1].members[1].score == pytest.approx(1.0)
    assert [m.score for m in groups[0].members[1:]] == sorted(
        (m.score for m in groups[0].members[1:]), reverse=True
    )
    assert [[Path(m.path).name for m in g.members] for g in exact] == [names[1]]


def _components(n: int, edges: list[tuple[int, int]]) -> list[set[int]]:
    """Connected components by repeated merging (a slow, obvious reference)."""
    comps = [{i} for i in range(n)]
    for a, b in edges:
        ca = next(c for c in comps if a in c)
        cb = next(c for c in comps if b in c)
        if ca is not cb:
            ca |= cb
            comps.remove(cb)
    return [c for c in comps if len(c) > 1]


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dups") / "photos"
    for i in range(30):
        make_photo(root / f"p{i:02d}.png", seed=300 + i, size=(96, 72))
    shutil.copy(root / "p05.png", root / "p05 again.png")
    db = root.parent / "lib.db"
    with Library.open(db) as lib:
        lib.index([root], TINY)
    return db


def _as_sets(groups: list[DupGroup]) -> list[frozenset[int]]:
    return sorted((frozenset(m.image_id for m in g.members) for g in groups), key=sorted)


@pytest.mark.parametrize("quantile", [0.9, 0.97, 0.995])
def test_groups_are_the_connected_components_of_a_brute_force_graph(
    tiny_library: Path, quantile: float
) -> None:
    with Library.open(tiny_library, create=False) as lib:
        space = lib.space()
        _, ids, vectors = space.vectors()
        sims = vectors @ vectors.T
        upper = sims[np.triu_indices(len(ids), 1)]
        threshold = float(np.quantile(upper, quantile))
        edges = [
            (a, b)
            for a in range(len(ids))
            for b in range(a + 1, len(ids))
            if sims[a, b] >= threshold
        ]
        want = sorted(
            (frozenset(int(ids[i]) for i in comp) for comp in _components(len(ids), edges)),
            key=sorted,
        )
        assert want and max(map(len, want)) < len(ids)  # a graph worth checking
        runs = [("all", 1, 128), ("all", 7, 8), ("all", 512, 4), ("ann", 512, 8)]
        for method, batch, project in runs:  # neither batches, projection nor index matter
            got = near_duplicates(space, threshold, batch=batch, project_dim=project, method=method)
            assert _as_sets(got) == want
            assert [len(g) for g in got] == sorted((len(g) for g in got), reverse=True)
            for g in got:  # every score is the keeper's cosine similarity
                keep = int(np.searchsorted(ids, g.keeper.image_id))
                for m in g.members[1:]:
                    other = int(np.searchsorted(ids, m.image_id))
                    assert m.score == pytest.approx(float(sims[keep, other]), abs=1e-5)


def test_identical_files_group_even_above_any_threshold(tiny_library: Path) -> None:
    with Library.open(tiny_library, create=False) as lib:
        groups = lib.duplicates(threshold=1.0)
        exact = lib.duplicates(exact=True)
    assert _as_sets(groups) == _as_sets(exact)
    assert [sorted(Path(m.path).name for m in g.members) for g in exact] == [
        ["p05 again.png", "p05.png"]
    ]
    assert exact[0].members[1].identical and exact[0].keeper.keeper


def test_keeper_has_most_pixels(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    big = make_photo(root / "big.png", seed=1, size=(200, 150))
    with Image.open(big) as img:
        img.resize((100, 75)).save(root / "small.png")
    old = datetime(2001, 1, 1).timestamp()
    os.utime(root / "small.png", (old, old))  # older, but fewer pixels
    with Library.open(tmp_path / "lib.db") as lib:
        lib.index([root], TINY)
        [group] = lib.duplicates(threshold=0.9)
    assert [Path(m.path).name for m in group.members] == ["big.png", "small.png"]
    assert (group.keeper.width, group.keeper.height) == (200, 150)


def test_projection_never_lengthens_a_difference() -> None:
    from featx_search.dups import _project

    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 300)) @ rng.normal(size=(300, 300))  # correlated axes
    vectors = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    projected = _project(vectors, 16)
    assert projected.shape == (40, 16)
    a, b = rng.integers(0, 40, 500), rng.integers(0, 40, 500)
    full = np.linalg.norm(vectors[a] - vectors[b], axis=1)
    short = np.linalg.norm(projected[a] - projected[b], axis=1)
    assert np.all(short <= full + 1e-5)
    assert short.sum() > 0.5 * full.sum()  # and the main axes keep much of the distance


def test_dups_cli_finds_the_same_groups_with_either_candidate_search(tiny_library: Path) -> None:
    args = ["--db", tiny_library, "dups", "--threshold", "0.95", "--json", "-q"]
    every = run_cli(*args, "--candidates", "all").output
    indexed = run_cli(*args, "--candidates", "ann").output
    assert every == indexed and '"keeper": true' in every
    bad = run_cli(*args, "--candidates", "some", ok=False)
    assert bad.exit_code == 2 and "--candidates" in bad.output


def test_vectorised_unions_match_single_unions() -> None:
    from featx_search.dups import _Components

    rng = np.random.default_rng(5)
    n = 300
    edges = rng.integers(0, n, (260, 2))
    one, many = _Components(n), _Components(n)
    for a, b in edges:
        one.union(int(a), int(b))
    for part in np.array_split(edges, 7):  # several calls, each with repeated roots
        many.union_many(part[:, 0], part[:, 1])
    want = sorted(map(sorted, _components(n, [(int(a), int(b)) for a, b in edges])))
    assert sorted(map(sorted, one.groups())) == want
    assert sorted(map(sorted, many.groups())) == want


@pytest.fixture(scope="module")
def crowded_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    """4,000 vectors made as scripts/synthetic_library.py makes them: mixes of three of only
    10 base vectors plus noise, so they crowd along a few main axes (where a projection
    on them proposes most pairs), with 20 groups of planted near-copies (cosine 0.95-0.995)."""
    from featx_search.store import Store
    from tests.support import load_script, synthetic_spec

    synthetic = load_script("synthetic_library")
    tmp = tmp_path_factory.mktemp("crowded")
    rng = np.random.default_rng(11)
    base = rng.standard_normal((10, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    db = tmp / "lib.db"
    store = Store.open(db)
    try:
        planted = synthetic.write_rows(
            store, 4000, base, synthetic_spec(384).to_dict(), folder=tmp, verbose=False
        )
    finally:
        store.close()
    return db, planted


@pytest.mark.parametrize("threshold", [0.85, 0.9])
def test_ann_candidates_find_what_all_pairs_find_on_crowded_vectors(
    crowded_library: tuple[Path, list[list[int]]],
    threshold: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featx_search import dups

    db, planted = crowded_library
    monkeypatch.setattr(dups, "ANN_LIST_SIZE", 32)  # 125 lists, of which each image visits 8
    with Library.open(db, create=False) as lib:
        space = lib.space()
        _, ids, vectors = space.vectors()
        reference = near_duplicates(space, threshold, method="all")
        indexed = near_duplicates(space, threshold, method="ann")
    # The reference itself, checked on every pair of the full vectors.
    sims = vectors @ vectors.T
    rows, cols = np.nonzero(np.triu(sims >= threshold, 1))
    assert len(rows) > 100  # pairs beyond the planted ones: a crowded library
    links = dups._Components(len(ids))
    links.union_many(rows, cols)
    want = sorted(frozenset(int(ids[p]) for p in g) for g in links.groups())
    assert sorted(_as_sets(reference)) == want
    assert _as_sets(indexed) == _as_sets(reference)
    assert [[m.score for m in g.members] for g in indexed] == [
        [m.score for m in g.members] for g in reference
    ]
    found = _as_sets(indexed)
    assert len(planted) >= 20 and all(any(set(p) <= g for g in found) for p in planted)
