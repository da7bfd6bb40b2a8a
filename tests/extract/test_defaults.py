"""Model defaults (layers, pooling, input fit): resolved into the space, and spaces made with
older defaults still open after the defaults change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx_search import ExtractorSpec, Library, Preprocess, Query
from featx_search import extract as extract_module
from featx_search.errors import ConfigError
from featx_search.extract import registry
from featx_search.images import preprocess
from tests.support import TINY, make_photo


def test_full_fit_squashes_the_whole_frame() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 300, 3), np.uint8))
    spec = Preprocess(resize=64, crop=32, fit="full")
    squashed = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    expected = ((squashed - np.asarray(spec.mean) * 255) / (np.asarray(spec.std) * 255)).transpose(
        2, 0, 1
    )
    out = preprocess(img, spec, reducing_gap=None)  # one exact filter pass, as above
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # A centre crop of the same image sees only its middle: different input.
    assert np.abs(preprocess(img, Preprocess(resize=64, crop=32)) - out).max() > 0.1


def test_fit_enters_the_fingerprint_only_when_not_crop() -> None:
    crop = Preprocess()
    assert "fit" not in crop.to_dict()  # fingerprints of existing spaces do not move
    assert Preprocess.from_dict(crop.to_dict()) == crop
    full = Preprocess(fit="full")
    assert full.to_dict()["fit"] == "full" and Preprocess.from_dict(full.to_dict()) == full
    with pytest.raises(ConfigError, match="fit must be one of crop, full, got 'stretch'"):
        Preprocess(fit="stretch")


# TINY as a built-in model whose default layer and pooling are node 3 and max.
_NEW_DEFAULTS = registry.ModelEntry(
    name=TINY.model, build=registry.build_factory, layers=("3",), pool="max"
)


def test_pool_none_resolves_to_the_model_default(monkeypatch: pytest.MonkeyPatch) -> None:
    space = extract_module.load_extractor(TINY).space
    assert TINY.pool is None and space.pool == "avg" and space.layers == ("4",)
    monkeypatch.setitem(registry.BUILTIN, TINY.model, _NEW_DEFAULTS)
    space = extract_module.load_extractor(TINY).space
    assert (space.layers, space.pool, space.dim) == (("3",), "max", 32)
    explicit = ExtractorSpec(model=TINY.model, weights="none", layers=("1",), pool="avg")
    assert extract_module.load_extractor(explicit).space.layers == ("1",)


def test_a_space_made_with_old_defaults_still_opens(
    db: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = make_photo(tmp_path / "q.png", seed=7)
    with Library.open(db) as lib:
        lib.index([photos], TINY)
        before = lib.search(query, Query(k=5))
    monkeypatch.setitem(registry.BUILTIN, TINY.model, _NEW_DEFAULTS)
    with Library.open(db) as lib:
        (space,) = lib.spaces()
        assert (space.info().layers, space.info().pool) == (("4",), "avg")
        assert lib.search(query, Query(k=5)) == before
        make_photo(photos / "later.png", seed=50)
        assert lib.index([photos]).added == 1  # still the old space, not a new one
        assert len(lib.spaces()) == 1


def test_space_keeps_its_stored_input_handling(db: Path, photos: Path) -> None:
    """A space stored with another input fit than the model's current default (as lite0
    spaces made before the full-frame default) still opens for queries and indexing."""
    import json

    from sqlalchemy import update

    from featx_search.config import SpaceSpec
    from featx_search.schema import spaces

    with Library.open(db) as lib:
        lib.index([photos / "a"], TINY)
        record = lib.space().record
        data = record.spec.to_dict()
        data["preprocess"]["fit"] = "full"
        moved = SpaceSpec.from_dict(data)
        with lib._store.transaction() as s:
            s.execute(
                update(spaces)
                .where(spaces.c.id == record.id)
                .values(spec_json=json.dumps(data), fingerprint=moved.fingerprint)
            )
    with Library.open(db) as lib:
        hits = lib.search(photos / "a" / "img01.jpg", Query(k=3))
        assert len(hits) == 3
        assert lib.index([photos / "b"]).added == 6
