"""The copy searches' local check (featx_search.verify): agreement of local features in
place, the reordering of a tie and only of a tie, the node it cuts at, and a copy search by
a picture that hands its tie to the check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

from featx_search import Library, Query, copies, verify
from featx_search.config import ExtractorSpec
from featx_search.extract import load_extractor
from featx_search.extract.cut import node_names
from featx_search.query import Match
from tests.models import strided_cnn
from tests.support import run_cli

STRIDED = ExtractorSpec(model="tests.models:strided_cnn", weights="none", precision="fp32")


def _unit(shape: tuple[int, ...], seed: int) -> np.ndarray:
    cells = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return cells / np.linalg.norm(cells, axis=0, keepdims=True)


def test_agreement_is_the_share_of_cells_that_agree_in_place() -> None:
    candidate = _unit((32, 12, 16), seed=1)
    window = candidate[:, 3:9, 5:13]  # a crop: every cell has its twin at one shift
    assert verify.agreement([window], candidate) == pytest.approx(1.0)
    # the query the larger map (the candidate a crop of it): the candidate's cells count
    assert verify.agreement([candidate], window) == pytest.approx(1.0)
    other = _unit((32, 6, 8), seed=2)  # the same kind of cells, nowhere in place
    assert verify.agreement([other], candidate) < 0.2
    # half the cells moved elsewhere: about half agree on the shift
    half = window.copy()
    half[:, :3] = _unit((32, 3, 8), seed=3)
    assert 0.35 < verify.agreement([half], candidate) < 0.65
    # the best of the query's scales counts
    assert verify.agreement([other, window], candidate) == pytest.approx(1.0)


def test_only_a_tie_with_the_first_is_reordered() -> None:
    maps = {0: _unit((8, 4, 4), 10), 1: _unit((8, 4, 4), 11), 2: _unit((8, 4, 4), 12)}
    asked: list[int] = []

    def candidate(position: int) -> tuple[np.ndarray, bool]:
        asked.append(position)
        return maps[position], False

    def query(mirrored: bool) -> list[np.ndarray]:
        # as it is, a crop of the second result; mirrored, one of the first
        return [maps[0 if mirrored else 1][:, 1:3, 1:3]]

    assert verify.tied([0.95, 0.94, 0.80]) == 2
    assert verify.rerank([0.95, 0.94, 0.80], query, candidate) == [1, 0, 2]
    assert sorted(asked) == [0, 1]  # the third is not within the margin: not read
    asked.clear()
    assert verify.rerank([0.99, 0.90, 0.80], query, candidate) == [0, 1, 2]
    assert asked == []  # a clear first: nothing is read
    # a result whose picture cannot be read keeps its score
    assert verify.rerank([0.95, 0.94], query, lambda p: None) == [0, 1]
    # results matched through their mirrored view are compared with the mirrored maps
    assert verify.rerank([0.94, 0.95], query, lambda p: (maps[p], True)) == [0, 1]
    # a flat query has no maps: nothing is read, the order stands
    assert verify.rerank([0.95, 0.94], lambda mirrored: [], candidate) == [0, 1]
    assert asked == []
    scores = [0.9] * 8
    assert verify.tied(scores) == verify.SHORT_LIST
    assert verify.tied([]) == 0


def test_the_local_node_is_the_last_map_at_a_sixteenth_of_the_input() -> None:
    model = strided_cnn().eval()
    nodes = node_names(model, "strided")
    assert verify.local_node(model, nodes, 64) == "7"  # 64 / 16 = 4 cells after the 4th ReLU
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert verify.local_node(model, node_names(model, "shallow"), 64) is None
    # a model with named blocks: the end of the last block at 1/16, not a node inside the
    # next block that still runs at 1/16 before it halves the map
    resnet = torchvision.models.resnet50().eval()  # layer4.0 halves in its second conv
    nodes = node_names(resnet, "resnet50")
    assert verify.local_node(resnet, nodes, 64) == "layer3.5.relu_2"


def test_a_flat_picture_has_no_local_evidence() -> None:
    grey = Image.new("RGB", (120, 90), (128, 128, 128))
    assert verify.flat(grey)
    model = verify.local_model(load_extractor(STRIDED).space)
    assert model is not None and model.node == "7"
    assert model.query_maps(grey, 448)(False) == []
    rng = np.random.default_rng(0)
    textured = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    assert not verify.flat(textured)
    maps = model.query_maps(textured, 448)
    plain, mirrored = maps(False), maps(True)
    assert len(plain) == len(mirrored) == len(verify.SCALES)
    shorter = [m.shape[1] for m in plain]
    assert shorter == sorted(shorter) and shorter[-1] == 448 // verify.STRIDE
    expected = ImageOps.mirror(textured).resize((597, 448), Image.Resampling.BILINEAR)
    assert np.allclose(mirrored[-1], model.map(expected))


def _noise(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)  # blobs of 16 px at 448
    Image.fromarray(small).resize((576, 448), Image.Resampling.NEAREST).save(path)
    return path


def test_a_tie_in_a_copy_search_by_a_picture_is_told_apart_by_local_evidence(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    first, second = _noise(photos / "a.png", 1), _noise(photos / "b.png", 2)
    crop = tmp_path / "crop.png"
    with Image.open(second) as img:
        img.crop((100, 60, 420, 300)).save(crop)
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(STRIDED)
        space.sync([photos])
        ids = {Path(m.path).name: m.id for m in space.image_facts()}
        tie = [
            Match(1, 0.95, ids["a.png"], str(first)),  # the wrong one first, by a hair
            Match(2, 0.94, ids["b.png"], str(second)),
        ]
        vectors, _ = space._embed_copies([crop], trim=True)
        checked = space._verified([crop], vectors, [tie])[0]
        assert [m.path for m in checked] == [str(second), str(first)]
        assert [m.rank for m in checked] == [1, 2]
        assert [m.score for m in checked] == [0.94, 0.95]  # scores stay the cosines
        # no tie: the order stands
        clear = [tie[0], Match(2, 0.5, ids["b.png"], str(second))]
        assert space._verified([crop], vectors, [clear])[0] == clear

        # a mirrored crop: compared mirrored back where its vector found the image through
        # the image's mirrored view, and so told apart; else it agrees with nothing
        space.keep_copies()
        mirrored = tmp_path / "mirrored.png"
        with Image.open(crop) as picture:
            picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
        vectors, _ = space._embed_copies([mirrored], trim=True)
        views = space._store.copy_views(space.id, [ids["b.png"]], space.dim)[ids["b.png"]]
        through_mirror = float(vectors[0] @ views[copies.MIRROR])
        tie = [
            Match(1, through_mirror + 0.001, ids["a.png"], str(first)),
            Match(2, through_mirror, ids["b.png"], str(second)),
        ]
        assert space._verified([mirrored], vectors, [tie])[0][0].path == str(second)
        above = [replace(m, score=m.score + 0.05) for m in tie]  # not its mirrored view's score
        assert space._verified([mirrored], vectors, [above])[0] == above

        # the picture found second has gone since: it keeps its score, the order stands
        second.rename(tmp_path / "gone.png")
        assert space._verified([mirrored], vectors, [tie])[0] == tie
        # a copy search asks the check for more results than k, then gives k
        found = space.search(crop, Query(copies=True, k=1))
        assert len(found) == 1


def test_the_local_model_is_saved_for_later_processes_and_maps_as_torch_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")  # the tests' default is off
    monkeypatch.setattr(verify, "_models", {})  # none built by other tests
    photos = tmp_path / "photos"
    photos.mkdir()
    picture = _noise(photos / "a.png", 3)
    with Library.open(tmp_path / "lib.db") as lib:
        space = lib.create_space(STRIDED)
        space.sync([photos])
        assert space.save_local_model() is None  # no check ran: nothing built to save
        spec, index_dir = space.record.spec, space._store.index_dir
        torch_model = verify.local_model(spec)
        assert torch_model is not None and torch_model.runtime == "torch"
        folder = space.save_local_model()
        assert folder is not None and (folder / "meta.json").is_file()
        assert space.save_local_model() is None  # saved once
        monkeypatch.setattr(verify, "_models", {})  # a later process
        saved = verify.local_model(spec, index_dir)
        assert saved is not None and saved.runtime == "openvino" and saved.node == "7"
        with Image.open(picture) as img:
            rgb = img.convert("RGB").resize((200, 150))
        assert np.abs(saved.map(rgb) - torch_model.map(rgb)).max() <= verify.TOLERANCE
        # a file for another space is not used
        (folder / "meta.json").write_text('{"fingerprint": "other"}')
        monkeypatch.setattr(verify, "_models", {})
        fallback = verify.local_model(spec, index_dir)
        assert fallback is not None and fallback.runtime == "torch"


def test_index_with_copies_saves_the_local_model_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATX_QUERY_MODEL", "1")
    monkeypatch.setattr(verify, "_models", {})
    photos = tmp_path / "photos"
    photos.mkdir()
    _noise(photos / "a.png", 4)
    db = tmp_path / "lib.db"
    args = ["--model", STRIDED.model, "--weights", "none", "--precision", "fp32"]
    first = run_cli("--db", db, "index", photos, *args, "--copies")
    assert "saved the space's local model" in first.output
    with Library.open(db, create=False) as lib:
        space = lib.space()
        assert verify.saved(space.record.spec, space._store.index_dir)
    again = run_cli("--db", db, "index", photos, *args)
    assert "local model" not in again.output  # saved already
    plain = tmp_path / "plain.db"  # not a copy-mode space: no local model
    assert "local model" not in run_cli("--db", plain, "index", photos, *args).output
