"""int8 spaces: the model quantised by NNCF on the library's own images, saved with the space
and reused, so that vectors never change between runs."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featx_search import ExtractorSpec, Library
from featx_search.errors import ConfigError, SpaceError
from featx_search.extract import int8
from tests.support import TINY, make_photo, run_cli

pytest.importorskip("openvino")
pytest.importorskip("nncf")

ROOT = Path(__file__).resolve().parents[2]
INT8 = ExtractorSpec(model=TINY.model, weights="none", precision="int8")
INT8_ARGS = ["--model", TINY.model, "--weights", "none", "--precision", "int8"]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each quantisation of this test calibrated on."""
    calls: list[int] = []
    quantise = int8.quantise

    def counting(extractor: Any, calibration: np.ndarray) -> Any:
        calls.append(len(calibration))
        return quantise(extractor, calibration)

    monkeypatch.setattr(int8, "quantise", counting)
    return calls


def _vectors(lib: Library) -> np.ndarray:
    """The space's stored vectors in the order of their paths."""
    space = lib.space()
    paths = {facts.id: facts.path for facts in space.image_facts()}
    _, ids, vectors = space.vectors()
    order = sorted(range(len(ids)), key=lambda row: paths[int(ids[row])])
    return vectors[order]


def test_int8_space_indexes_searches_and_stays_close_to_fp32(
    photos: Path, db: Path, tmp_path: Path, counted: list[int]
) -> None:
    with Library.open(db) as lib:
        report = lib.index([photos], INT8)
        space = lib.space()
        assert report.added == 12 and report.precision == "int8"
        assert space.label.endswith("/int8") and counted == [12]
        folder = int8.folder_for(space._store.index_dir, space._first.spec)
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["fingerprint"] == space.fingerprint and meta["calibration_images"] == 12
        quantised = _vectors(lib)
        photo = photos / "a" / "img01.jpg"
        found = lib.search(photo)
        assert found[0].path == str(photo) and found[0].score == pytest.approx(1.0, abs=1e-4)
    with Library.open(tmp_path / "fp32.db") as lib:
        lib.index([photos], TINY)
        plain = _vectors(lib)
        assert lib.space().fingerprint != space.fingerprint  # precision is part of the space
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(quantised * plain, axis=1)
    assert cosines.min() > 0.99, cosines

    # Each photo's nearest other photo is mostly the same in both precisions.
    def nearest(v: np.ndarray) -> np.ndarray:
        return np.argmax(v @ v.T - 2 * np.eye(len(v)), axis=1)

    assert np.mean(nearest(quantised) == nearest(plain)) >= 0.75


def test_the_saved_model_is_reused_not_calibrated_again(
    photos: Path, db: Path, counted: list[int]
) -> None:
    run_cli("--db", db, "index", photos, *INT8_ARGS, "-q")
    with Library.open(db) as lib:
        space = lib.space()
        xml = int8.folder_for(space._store.index_dir, space._first.spec) / "model.xml"
        first = _vectors(lib)
    written = xml.stat().st_mtime_ns
    for i in range(12, 15):
        make_photo(photos / "c" / f"new{i}.jpg", seed=i)
    (photos / "a" / "img01.jpg").unlink()
    make_photo(photos / "a" / "img01.jpg", seed=99)  # changed: embedded again
    result = run_cli("--db", db, "index", photos, "-q")
    assert counted == [12], result.output  # the first run's calibration only
    assert xml.stat().st_mtime_ns == written
    with Library.open(db) as lib:
        again = lib.space().embed([photos / "b" / "img00.png"])  # a fresh process's model
        now = _vectors(lib)
    assert len(now) == 15
    # Sorted paths: a/img01 is row 0 in both, b/img00 row 6; c/ comes last now.
    np.testing.assert_array_equal(now[1:12], first[1:12])  # unchanged photos kept
    assert not np.allclose(now[0], first[0])  # the changed one embedded again
    np.testing.assert_allclose(again[0], first[6], atol=1e-6)  # the saved model, same vectors


def test_a_query_uses_the_saved_model_without_torch(photos: Path, db: Path) -> None:
    run_cli("--db", db, "index", photos, *INT8_ARGS, "-q")
    script = (
        "import json, sys\n"
        "from featx_search import Library\n"
        "with Library.open(sys.argv[1], read_only=True) as lib:\n"
        "    found = lib.search(sys.argv[2])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'top': str(found[0].path)}))\n"
    )
    photo = photos / "b" / "img04.jpg"
    done = subprocess.run(
        [sys.executable, "-c", script, str(db), str(photo)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    answer = json.loads(done.stdout)
    assert answer == {"torch": False, "top": str(photo)}


def test_a_lost_model_stops_the_run_instead_of_making_other_vectors(photos: Path, db: Path) -> None:
    run_cli("--db", db, "index", photos, *INT8_ARGS, "-q")
    with Library.open(db) as lib:
        space = lib.space()
        folder = int8.folder_for(space._store.index_dir, space._first.spec)
    (folder / "meta.json").unlink()
    make_photo(photos / "c" / "new.jpg", seed=50)
    result = run_cli("--db", db, "index", photos, ok=False)
    assert result.exit_code != 0
    assert "has no int8 model" in result.output, result.output
    with Library.open(db) as lib, pytest.raises(SpaceError, match="has no int8 model"):
        lib.search(photos / "a" / "img01.jpg")


def test_missing_nncf_is_one_clear_error(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int8, "nncf_installed", lambda: False)
    real_import = builtins.__import__

    def no_nncf(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "nncf" or name.startswith("nncf."):
            raise ImportError("No module named 'nncf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    with pytest.raises(ConfigError, match="needs the nncf package") as caught:
        int8.require_nncf()
    assert "featx-search[int8]" in (caught.value.hint or "")
    result = run_cli("--db", db, "index", photos, *INT8_ARGS, ok=False)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("needs the nncf package" in line for line in lines), result.output
    assert "pip install 'featx-search[int8]'" in result.output
    assert "Traceback" not in result.output


def test_int8_is_not_for_gpus_torch_or_shards(tmp_path: Path, photos: Path) -> None:
    from featx_search.compute import Compute
    from featx_search.extract import load_extractor

    with pytest.raises(ConfigError, match="CPU only"):
        load_extractor(INT8, Compute(device="cuda"))
    with pytest.raises(ConfigError, match="not in torch"):
        load_extractor(INT8, Compute(runtime="torch"))
    result = run_cli("embed", photos, "-o", tmp_path / "shards", *INT8_ARGS, ok=False)
    assert "needs a library" in result.output


def test_eval_calibrates_in_memory(tmp_path: Path) -> None:
    from featx_search.evaluation import evaluate

    for label in ("x", "y"):
        for i in range(3):
            make_photo(tmp_path / "set" / label / f"{i}.jpg", seed=i + (10 if label == "y" else 0))
    fp32, quantised = evaluate(tmp_path / "set", [TINY, INT8])
    assert quantised.precision == "int8"
    assert abs(quantised.map - fp32.map) < 0.2
    assert not list(tmp_path.glob("**/*.int8"))


def test_the_calibration_sample_does_not_depend_on_scan_order() -> None:
    paths = [f"/photos/{folder}/{i}.jpg" for folder in "abc" for i in range(200)]
    chosen = int8.sample(paths, key=str)
    assert len(chosen) == int8.CALIBRATION_IMAGES
    assert sorted(int8.sample(list(reversed(paths)), key=str)) == sorted(chosen)
    assert {path.split("/")[2] for path in chosen} == {"a", "b", "c"}  # spread over folders
    assert sorted(int8.sample(paths[:5], key=str, n=10)) == sorted(paths[:5])  # all of few


def test_other_engines_are_refused(photos: Path, db: Path) -> None:
    def engine(*args: Any) -> Any:
        raise AssertionError("not called")

    with Library.open(db) as lib:
        space = lib.create_space(INT8)
        with pytest.raises(ConfigError, match="local engine only"):
            space.sync([photos], engine=engine)
