"""PCA-whitening: learned from a library's stored vectors, stored with the space, applied to
the index and to queries; results checked against brute-force search in numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library, Query
from featx_search.errors import ConfigError, LibraryError
from featx_search.whiten import Whitening, learn
from tests.support import TINY, TINY_ARGS, make_photo
from tests.support import run_cli as run


def _vectors(seed: int, n: int = 200, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixed = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * rng.uniform(0.1, 5, d) + 3.0
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)


def test_learned_whitening_decorrelates_the_training_vectors() -> None:
    x = _vectors(0)
    w = learn(x, 6)
    assert (w.dim, w.dims, w.count) == (16, 6, 200)
    projected = (x.astype(np.float64) - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(projected.T), np.eye(6), atol=1e-3)
    out = w.apply(x)
    assert out.dtype == np.float32 and out.shape == (200, 6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # The directions are the top principal components, largest variance first.
    top = np.linalg.eigh(np.cov(x.T.astype(np.float64)))[1][:, ::-1][:, :6]
    cosines = np.abs(np.sum(top * (w.projection / np.linalg.norm(w.projection, axis=0)), axis=0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-3)


def test_whitening_survives_bytes_and_refuses_garbage() -> None:
    w = learn(_vectors(1), 4)
    again = Whitening.from_bytes(w.to_bytes())
    np.testing.assert_array_equal(again.projection, w.projection)
    np.testing.assert_array_equal(again.mean, w.mean)
    assert again.count == w.count
    with pytest.raises(LibraryError, match="whitening cannot be read") as info:
        Whitening.from_bytes(b"not numpy")
    assert info.value.hint is not None and "whiten 0" in info.value.hint


def test_learn_refuses_bad_sizes() -> None:
    with pytest.raises(ConfigError, match=r"dims 17 is outside 1\.\.16"):
        learn(_vectors(2), 17)
    with pytest.raises(ConfigError, match="needs more than 12 indexed images; the space has 10"):
        learn(_vectors(2, n=10), 12)


def _brute(raw: np.ndarray, w: Whitening | None, query: np.ndarray) -> np.ndarray:
    base = raw if w is None else w.apply(raw)
    q = query if w is None else w.apply(query)
    return (q @ base.T)[0]


def test_library_whitening_applies_to_index_queries_and_new_images(
    library: Library, photos: Path, tmp_path: Path
) -> None:
    library.index([photos], TINY)
    query = make_photo(tmp_path / "q.png", seed=99)
    before = library.search(query, Query(k=12))
    report = library.space().whiten(8)
    assert (report.dims, report.learned_from) == (8, 12)
    info = library.space().info()
    assert info.whitened == 8 and info.index_current and info.dim == 32
    _, ids, raw = library.space(info.id).vectors()
    w = learn(raw, 8)
    scores = _brute(raw, w, library.embed([query]))
    after = library.search(query, Query(k=12))
    assert [m.image_id for m in after] == list(ids[np.argsort(-scores, kind="stable")])
    np.testing.assert_allclose([m.score for m in after], np.sort(scores)[::-1], atol=1e-5)
    assert [m.image_id for m in after] != [m.image_id for m in before]
    # similar() whitens the stored vector too: an image is its own best match with score 1.
    first = library.similar(int(ids[0]), Query(k=1))[0]
    assert first.image_id == ids[0] and first.score == pytest.approx(1.0, abs=1e-5)
    # Images indexed later are whitened with what was learned, not learned again.
    extra = make_photo(photos / "new.png", seed=42)
    library.index([photos])
    assert library.spaces()[0].info().whitened == 8
    top = library.search(extra, Query(k=1))[0]
    assert top.path == str(extra) and top.score == pytest.approx(1.0, abs=1e-5)
    _, ids, raw = library.space(info.id).vectors()
    assert len(ids) == 13  # stored vectors stay raw (32-d), the truth
    assert raw.shape == (13, 32)
    # A fresh library object reads the stored whitening and the published index.
    with Library.open(library.location) as again:
        assert [m.image_id for m in again.search(query, Query(k=13))] == [
            m.image_id for m in library.search(query, Query(k=13))
        ]
    library.space().whiten(0)
    assert library.spaces()[0].info().whitened is None
    scores = _brute(raw, None, library.embed([query]))
    np.testing.assert_allclose(
        [m.score for m in library.search(query, Query(k=13))], np.sort(scores)[::-1], atol=1e-5
    )


def test_whiten_errors_keep_the_library(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    with pytest.raises(ConfigError, match="needs more than 12 indexed images"):
        library.space().whiten(12)
    assert library.spaces()[0].info().whitened is None and library.spaces()[0].info().index_current


def test_cli_index_whiten_and_whiten_command(db: Path, photos: Path) -> None:
    summary = json.loads(
        run("--db", db, "index", photos, *TINY_ARGS, "--whiten", "6", "--json").stdout
    )
    assert summary["whiten"] == 6 and summary["added"] == 12
    info = json.loads(run("--db", db, "info", "--json").stdout)
    assert info["spaces"][0]["whitened"] == 6
    assert "whitened=6" in run("--db", db, "info").stdout
    out = run("--db", db, "whiten", "0").stdout
    assert out.startswith("whitening removed from space")
    result = run("--db", db, "whiten", "40", ok=False)
    assert result.exit_code == 1 and "DIMS 40 is outside 1..32" in result.output
