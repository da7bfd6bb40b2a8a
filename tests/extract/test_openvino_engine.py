"""bf16 spaces that OpenVINO computes (engine ``openvino``): what makes one, what a later run
embeds with (the saved model, no torch), and that every route gives the same vectors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library, Query, SyncOptions
from featx_search import compute as compute_module
from featx_search.compute import Compute, engine_for
from featx_search.config import SpaceSpec
from featx_search.errors import ConfigError
from featx_search.extract import extractor as extractor_module
from tests.support import TINY, make_photo

AUTO = replace(TINY, precision="auto")


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with native bf16, query models on (the suite turns them off)."""
    monkeypatch.setattr(compute_module, "native_precisions", lambda device: ("bf16", "fp32"))
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")


def _folder(root: Path, first_seed: int, count: int) -> Path:
    for seed in range(first_seed, first_seed + count):
        make_photo(root / f"img{seed:02d}.jpg", seed=seed)
    return root


def _vectors(db: Path) -> dict[str, np.ndarray]:
    with Library.open(db) as lib:
        space = lib.space()
        _, ids, vectors = space.vectors()
        paths = {fact.id: fact.path for fact in space.image_facts()}
        return {paths[int(i)]: vectors[k] for k, i in enumerate(ids)}


def test_engine_follows_precision_device_runtime_and_openvino(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert engine_for("bf16", "cpu", Compute()) == "openvino"
    assert engine_for("bf16", "cpu", Compute(runtime="openvino")) == "openvino"
    assert engine_for("bf16", "cpu", Compute(runtime="torch")) == "torch"
    assert engine_for("bf16", "cuda", Compute()) == "torch"
    assert engine_for("fp32", "cpu", Compute()) == "torch"
    assert engine_for("fp16", "cpu", Compute()) == "torch"
    monkeypatch.setattr(compute_module, "openvino_installed", lambda: False)
    assert engine_for("bf16", "cpu", Compute()) == "torch"


def test_only_bf16_spaces_name_an_engine(bf16_cpu: None, tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(AUTO).record.spec
    assert space.identity()["engine"] == "openvino"
    torch_twin = replace(space, engine="torch")
    assert "engine" not in torch_twin.identity()
    assert torch_twin.fingerprint != space.fingerprint
    assert SpaceSpec.from_dict(space.to_dict()) == space
    with pytest.raises(ConfigError, match="engine"):
        replace(space, precision="fp32")


def test_later_runs_embed_with_the_saved_model_and_every_route_agrees(
    bf16_cpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = _folder(tmp_path / "photos" / "first", 0, 6)
    later = _folder(tmp_path / "photos" / "later", 10, 5)
    db = tmp_path / "lib.db"
    with Library.open(db) as lib:
        report = lib.index([first], AUTO)
        space = lib.space()
        assert (report.added, report.precision) == (6, "bf16")
        assert space.record.spec.engine == "openvino"
        # The first run saved the model it embedded with, beside the index files.
        assert (db.parent / f"{db.name}.indexes" / f"{space.fingerprint}.query").is_dir()

    def no_torch_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a torch model was built")

    # A later run of any size embeds with the saved model: no torch model is built.
    with monkeypatch.context() as patch:
        patch.setattr(extractor_module, "load_extractor", no_torch_model)
        with Library.open(db) as lib:
            assert lib.index([later], AUTO).added == 5
            photo = next(later.glob("*.jpg"))
            best = lib.search(photo, Query(k=1))[0]
            assert best.path == str(photo) and best.score > 0.999

    # The same files through the model exported in memory (query models off): the same
    # vectors, since it is the same graph compiled the same way.
    monkeypatch.setenv("FEATX_QUERY_MODEL", "0")
    other = tmp_path / "other.db"
    with Library.open(other) as lib:
        lib.index([first, later], AUTO)
        assert lib.space().fingerprint == space.fingerprint
    saved, in_memory = _vectors(db), _vectors(other)
    assert saved.keys() == in_memory.keys() and len(saved) == 11
    assert max(float(np.abs(saved[p] - in_memory[p]).max()) for p in saved) < 1e-6


def test_a_space_openvino_computes_refuses_runtime_torch(bf16_cpu: None, tmp_path: Path) -> None:
    """Runtime torch cannot go on in a space OpenVINO computes: one clear error, no second
    space made beside it."""
    photos = _folder(tmp_path / "photos", 0, 3)
    db = tmp_path / "lib.db"
    with Library.open(db) as lib:
        lib.index([photos], AUTO)
    make_photo(photos / "new.jpg", seed=50)
    torch_runtime = SyncOptions(compute=Compute(runtime="torch"))
    with Library.open(db) as lib:
        with pytest.raises(ConfigError) as caught:
            lib.index([photos], AUTO, options=torch_runtime)
        assert caught.value.param == "runtime" and "OpenVINO" in caught.value.message
        assert len(lib.spaces()) == 1 and lib.space().count == 3
