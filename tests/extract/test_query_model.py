"""Query models: a space's cut graph saved as OpenVINO IR, so that a fresh process embeds a
query photo without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featx_search import Library
from featx_search.extract import query_model
from featx_search.images import load_input
from tests.support import TINY_ARGS, run_cli

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter: search one photo, then say whether torch was imported.
_SEARCH = """
import json, sys
from featx_search import Library
with Library.open(sys.argv[1], read_only=True) as lib:
    vector = lib.space().embed([sys.argv[2]])[0]
    found = lib.search(sys.argv[2])
print(json.dumps({"torch": "torch" in sys.modules, "ids": [m.image_id for m in found],
                  "vector": vector.tolist()}))
"""


def _fresh_search(db: Path, photo: Path, *, enabled: bool) -> dict[str, object]:
    env = {**os.environ, "FEATX_QUERY_MODEL": "1" if enabled else "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SEARCH, str(db), str(photo)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    )
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_index_saves_a_query_model_that_searches_without_torch(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    result = run_cli("--db", db, "index", photos, *TINY_ARGS)
    assert "query model" in result.output
    with Library.open(db) as lib:
        folder = query_model.folder_for(lib.space()._store.index_dir, lib.space()._first.spec)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["max_difference"] <= query_model.TOLERANCE
    photo = photos / "a" / "img01.jpg"
    fast = _fresh_search(db, photo, enabled=True)
    slow = _fresh_search(db, photo, enabled=False)
    assert fast["torch"] is False and slow["torch"] is True
    assert fast["ids"] == slow["ids"]
    assert np.abs(np.array(fast["vector"]) - np.array(slow["vector"])).max() < 1e-4


def test_a_query_model_of_another_space_is_not_used(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")
    with Library.open(db) as lib:
        space = lib.space()
        folder = query_model.folder_for(space._store.index_dir, space._first.spec)
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "fingerprint": "0" * 16}))
        assert space.query_model() is None  # refused: made for another space
        assert space.save_query_model() == folder  # made again, for this one
    answer = _fresh_search(db, photos / "b" / "img00.png", enabled=True)
    assert answer["torch"] is False


def test_a_query_model_that_disagrees_with_torch_is_not_saved(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")  # no query model (turned off)
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    monkeypatch.setattr(query_model, "TOLERANCE", -1.0)  # no difference is small enough
    with Library.open(db) as lib:
        space = lib.space()
        assert space.save_query_model() is None
        folder = query_model.folder_for(space._store.index_dir, space._first.spec)
        assert not folder.exists()
        assert not list(folder.parent.glob(".query-*"))  # no staging folder left behind


def test_a_bf16_space_gets_an_fp32_query_model_checked_against_its_fp32_twin(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    args = [a if a != "fp32" else "bf16" for a in TINY_ARGS]
    result = run_cli("--db", db, "index", photos, *args, "--runtime", "torch")
    assert "query model" in result.output
    photo = photos / "a" / "img01.jpg"
    fast = _fresh_search(db, photo, enabled=True)
    slow = _fresh_search(db, photo, enabled=False)  # torch, in the space's bf16
    assert fast["torch"] is False and slow["torch"] is True
    with Library.open(db) as lib:
        space = lib.space()
        assert space.record.spec.precision == "bf16"
        folder = query_model.folder_for(space._store.index_dir, space._first.spec)
        assert json.loads((folder / "meta.json").read_text())["precision"] == "fp32"
        twin = query_model._twin_extractor(space._first.spec)
        assert twin.space.precision == "fp32"
        expected = twin.embed(np.stack([load_input(photo, space.record.spec.preprocess)]))[0]
    got, rounded = np.array(fast["vector"]), np.array(slow["vector"])
    assert np.abs(got - expected).max() < 1e-4  # the fp32 function of the space
    assert np.abs(got - rounded).max() > 1e-6  # not the bf16 one ...
    assert float(got @ rounded) > 0.99  # ... but close to it


def test_searches_by_picture_use_the_query_model_even_where_torch_is_loaded(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from featx_search.web.app import _warm

    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")
    photo = photos / "a" / "img01.jpg"
    with Library.open(db) as lib:
        _warm(lib)  # what the web server does when it starts
        space = lib.space()
        assert space._extractors == {} and space.query_model() is not None
        cold = space.embed([photo])
        space.extractor()  # torch loaded in this process (as eval or index would)
        assert np.array_equal(space.embed([photo]), cold)  # still the query model


_INDEX = """
import json, runpy, sys
sys.argv = ["featx-search", "--db", sys.argv[1], "index", sys.argv[2], "-q"]
try:
    runpy.run_module("featx_search", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps({"torch": "torch" in sys.modules}))
"""


def test_a_small_run_into_an_fp32_space_embeds_with_its_saved_model_without_torch(
    photos: Path, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    run_cli("--db", db, "index", photos / "a", *TINY_ARGS, "-q")  # makes the saved model
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _INDEX, str(db), str(photos)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == {"torch": False}
    reference = tmp_path / "torch.db"  # every file embedded by torch
    run_cli("--db", reference, "index", photos, *TINY_ARGS, "-q", env={"FEATX_QUERY_MODEL": "0"})
    vectors = {}
    for library in (db, reference):
        with Library.open(library) as lib:
            _, ids, matrix = lib.space().vectors()
            paths = [f.path for f in lib.space().image_facts(ids.tolist())]
            vectors[library] = dict(zip(paths, matrix, strict=True))
    assert vectors[db].keys() == vectors[reference].keys()
    assert any("/b/" in path for path in vectors[db])  # the second run's files
    for path, vector in vectors[reference].items():
        assert np.abs(vectors[db][path] - vector).max() < 1e-4


def test_a_saved_model_made_by_another_torch_release_does_not_write(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    run_cli("--db", db, "index", photos / "a", *TINY_ARGS, "-q")
    with Library.open(db) as lib:
        space = lib.space()
        assert space.saved_model() is not None
        folder = query_model.folder_for(space._store.index_dir, space._first.spec)
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "exact": False}))
        assert space.saved_model() is None  # searches may still use it; writes may not
        assert space.query_model() is not None


def test_a_run_splits_batches_across_openvino_streams_with_the_same_vectors(
    photos: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")
    with Library.open(db) as lib:
        space = lib.space()
        model = query_model.load(space._store.index_dir, space.record.spec)
        assert model is not None
        batch = np.stack(
            [load_input(p, space.record.spec.preprocess) for p in sorted(photos.rglob("*.jpg"))]
        )
        assert len(batch) >= 3
        whole = model.embed(batch)  # one latency request
        model.prepare_run(images=1000, batch_size=1)  # batches of one image: nothing to split
        assert model.streams == 1
        model.prepare_run(images=1000, batch_size=16, wait=True)
        if (os.cpu_count() or 1) >= 2:
            assert model.streams >= 2  # OpenVINO runs a stream per core or so
        split = model.embed(batch)
        assert split.shape == whole.shape
        assert np.abs(split - whole).max() < 1e-5
        assert np.abs(model.embed(batch[:1]) - whole[:1]).max() < 1e-5  # a query, one image
