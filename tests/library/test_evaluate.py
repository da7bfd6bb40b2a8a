"""eval: retrieval metrics against a brute-force reference, edits, combinations, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx_search import ExtractorSpec, copies
from featx_search.errors import ConfigError
from featx_search.evaluation import (
    EDITS,
    edit,
    evaluate,
    identical,
    labelled_images,
    model_input,
    retrieval_scores,
)
from featx_search.extract import load_extractor
from featx_search.images import load_rgb, preprocess, trim_bars
from tests.support import TINY, TINY_ARGS, make_photo
from tests.support import run_cli as run


def _reference_ap(sims: np.ndarray, labels: list[str], i: int) -> float | None:
    """AP of query i the textbook way: sum of precision@k at each relevant rank / relevant."""
    ranked = sorted((j for j in range(len(labels)) if j != i), key=lambda j: (-sims[i, j], j))
    relevant = [labels[j] == labels[i] for j in ranked]
    if not any(relevant):
        return None
    total, found = 0.0, 0
    for k, rel in enumerate(relevant, start=1):
        if rel:
            found += 1
            total += found / k
    return total / sum(relevant)


def test_retrieval_scores_match_a_reference() -> None:
    # By hand: a0's neighbours are b0 (0.9), a1 (0.5), b1 (0.1): AP = 1/2, P@1 = 0.
    v = np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(0.75), 0.0], [0.9, 0.0, np.sqrt(0.19)]])
    v = np.vstack([v, [0.1, -0.5, np.sqrt(1 - 0.26)]]).astype(np.float32)
    labels = ["a", "a", "b", "b"]
    sims = v.astype(np.float64) @ v.T
    assert _reference_ap(sims, labels, 0) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = [str(c) for c in rng.integers(0, 4, 40)]
    labels[0] = "lonely"  # a query without another image of its class is left out
    mean_ap, p1, p10, queries = retrieval_scores(x, labels)
    sims = x.astype(np.float64) @ x.T
    aps = [a for a in (_reference_ap(sims, labels, i) for i in range(40)) if a is not None]
    assert queries == 39 == len(aps)
    assert mean_ap == pytest.approx(np.mean(aps))
    order = [
        np.argsort(-np.where(np.eye(40, dtype=bool)[i], -9, sims[i]))[:10] for i in range(1, 40)
    ]
    same = [[labels[j] == labels[i + 1] for j in row] for i, row in enumerate(order)]
    assert p1 == pytest.approx(np.mean([s[0] for s in same]))
    assert p10 == pytest.approx(np.mean([np.mean(s) for s in same]))
    with pytest.raises(ConfigError, match="no class has two images"):
        retrieval_scores(x[:2], ["a", "b"])


def _expanded_reference(x: np.ndarray, labels: list[str], qe: int, dba: int) -> float:
    """mAP with query expansion (on the stored vectors) and database augmentation, the slow
    way: for every query the whole database is augmented again without it (fewer images than
    the short list that searches re-score)."""
    alpha = 3.0
    aps = []
    n = len(x)
    for i in range(n):
        database = x.astype(np.float64).copy()
        if dba:
            for j in range(n):
                others = [k for k in range(n) if k not in (i, j)]
                near = sorted(others, key=lambda k: -float(x[j] @ x[k]))[:dba]
                mixed = x[j] + sum(max(float(x[j] @ x[k]), 0) ** alpha * x[k] for k in near)
                database[j] = mixed / np.linalg.norm(mixed)
        query = x[i].astype(np.float64)
        if qe:
            others = [k for k in range(n) if k != i]
            near = sorted(others, key=lambda k: -float(x[k] @ query))[:qe]
            mixed = query + sum(max(float(x[k] @ query), 0) ** alpha * x[k] for k in near)
            query = mixed / np.linalg.norm(mixed)
        sims = np.full((n, n), -9.0)
        sims[i] = database @ query
        sims[i, i] = -9.0
        ap = _reference_ap(sims, labels, i)
        if ap is not None:
            aps.append(ap)
    return float(np.mean(aps))


@pytest.mark.parametrize(("qe", "dba"), [(2, 0), (0, 2), (3, 2)])
def test_query_expansion_and_augmentation_match_a_reference(qe: int, dba: int) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8))
    labels = [str(c) for c in rng.integers(0, 4, 30)]
    x = centres[[int(c) for c in labels]] + rng.normal(scale=0.9, size=(30, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    mean_ap, _, _, _ = retrieval_scores(x, labels, qe=qe, dba=dba)
    assert mean_ap == pytest.approx(_expanded_reference(x, labels, qe, dba), abs=1e-9)
    assert mean_ap != pytest.approx(retrieval_scores(x, labels)[0], abs=1e-6)


def test_edits() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 160, 3), np.uint8))
    out = {kind: edit(img, kind, seed=3) for kind in EDITS}
    assert out["down8"].size == (20, 10)
    assert abs(out["crop"].size[0] * out["crop"].size[1] / (160 * 80) - 0.6) < 0.02
    assert abs(out["crop40"].size[0] * out["crop40"].size[1] / (160 * 80) - 0.4) < 0.02
    assert out["rotate"].size == img.size and out["rotate-canvas"].size > img.size
    assert np.asarray(out["rotate"])[0, 0].sum() == 0  # a corner left black
    grey = np.asarray(out["grey"])
    assert out["grey"].mode == "RGB" and (grey[..., 0] == grey[..., 2]).all()
    np.testing.assert_array_equal(np.asarray(out["flip"]), np.asarray(img)[:, ::-1])
    assert out["frame"].size == (720, 1520)
    assert all(o.mode == "RGB" for o in out.values())
    # Parameters come from the seed: the same seed repeats, another seed differs.
    assert edit(img, "crop40", seed=3).tobytes() == out["crop40"].tobytes()
    assert edit(img, "colour", seed=4).tobytes() != out["colour"].tobytes()
    both = edit(img, "flip+colour", seed=3)
    assert both.size == img.size and both.tobytes() != out["flip"].tobytes()
    with pytest.raises(ConfigError, match="unknown edit 'warp'"):
        edit(img, "warp")


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """Three classes of four synthetic photos; each class shares its colours and shapes."""
    root = tmp_path / "classes"
    for c, name in enumerate(["cats", "dogs", "owls"]):
        for i in range(4):
            make_photo(root / name / f"{i}.png", seed=100 * c + i)
    (root / "notes.txt").write_text("not an image, and outside any class")
    return root


def test_evaluate_scores_every_combination_against_a_reference(classes: Path) -> None:
    specs = [TINY, ExtractorSpec(model=TINY.model, weights="none", pool="max", layers=("1", "3"))]
    results = evaluate(classes, specs, inputs=("crop", "full"), copies=True)
    assert [(r.pool, r.input) for r in results] == [
        ("avg", "crop"),
        ("avg", "full"),
        ("max", "crop"),
        ("max", "full"),
    ]
    rows = labelled_images(classes)
    assert len(rows) == 12 and {label for _, label in rows} == {"cats", "dogs", "owls"}
    for result, spec in zip(results, [specs[0], specs[0], specs[1], specs[1]], strict=True):
        extractor = load_extractor(spec)
        images = [load_rgb(p, min_side=448) for p, _ in rows]
        base = extractor.embed(
            np.stack([model_input(i, extractor.space.preprocess, result.input) for i in images])
        )
        expected = retrieval_scores(base, [label for _, label in rows])
        assert (result.map, result.p1, result.p10, result.queries) == pytest.approx(expected)
        assert result.images == 12 and result.dim == extractor.space.dim
        assert list(result.copies) == list(EDITS)
        assert all(0.0 <= v <= 1.0 for v in result.copies.values())
        assert result.copy_recall == pytest.approx(np.mean(list(result.copies.values())))
    # Mirrored and greyed copies of random-init features still find their originals.
    assert results[0].copies["flip"] >= 0.5
    # Copy mode: each original scored by the best of its vector and its copy views, the
    # normalised ones against the copy's normalised view.
    extractor = load_extractor(TINY)
    spec = replace(extractor.space.preprocess, fit="crop")
    originals = [copies.decoded(p) for p, _ in rows]
    base = extractor.embed(np.stack([preprocess(i, spec) for i in originals]))
    views = copies.embed_views(extractor.embed, originals, spec)
    for kind in ("crop40", "rotate+grey", "colour"):
        trimmed = [trim_bars(edit(i, kind, n)) for n, i in enumerate(originals)]
        queries = extractor.embed(np.stack([preprocess(i, spec) for i in trimmed]))
        norms = extractor.embed(np.stack([preprocess(copies.normalised(i), spec) for i in trimmed]))
        top = np.argmax(copies.best_of_views(queries, base, views, norms), axis=1)
        assert results[0].copy_mode[kind] == pytest.approx(np.mean(top == np.arange(12)))
    assert list(results[3].copy_mode) == list(EDITS)
    assert results[3].copy_mode_recall == pytest.approx(
        np.mean(list(results[3].copy_mode.values()))
    )


def test_evaluate_refuses_a_folder_without_classes(tmp_path: Path) -> None:
    make_photo(tmp_path / "flat" / "only" / "a.png", seed=1)
    with pytest.raises(ConfigError, match="needs at least two subfolders"):
        evaluate(tmp_path / "flat", [TINY])
    with pytest.raises(ConfigError, match="evaluation folder not found"):
        evaluate(tmp_path / "missing", [TINY])
    with pytest.raises(ConfigError, match="unknown --input 'zoom'"):
        evaluate(tmp_path / "flat", [TINY], inputs=("zoom",))


def test_eval_cli_json_and_table(classes: Path) -> None:
    out = run("eval", classes, *TINY_ARGS, "--pool", "avg", "--pool", "gem", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["pool"] for r in rows] == ["avg", "gem"] and rows[0]["layers"] == ["4"]
    assert rows[0]["copies"] == {} and 0 <= rows[0]["map"] <= 1
    table = run("eval", classes, *TINY_ARGS, "-l", "1+3", "--copies").stdout.splitlines()
    assert table[0].split()[:7] == ["model", "layers", "pool", "input", "prec", "dim", "mAP"]
    assert "flip" in table[0] and "1+3" in table[1] and len(table) == 3
    assert table[2].split()[:2] == ["copy", "mode"] and len(table[2].split()) == len(EDITS) + 3
    assert table[1].split()[4] == "fp32"
    # Precisions to compare: one row each, in the order asked.
    args = ["--model", TINY.model, "--weights", "none", "--precision", "fp32"]
    out = run("eval", classes, *args, "--precision", "bf16", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    out = run("eval", classes, *TINY_ARGS, "--qe", "0", "--qe", "2", "--dba", "1", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["qe"], r["dba"]) for r in rows] == [(0, 1), (2, 1)]
    table = run("eval", classes, *TINY_ARGS, "--qe", "1").stdout.splitlines()
    assert table[0].split()[6:9] == ["qe", "dba", "mAP"] and table[1].split()[6:8] == ["1", "0"]
    bad = run("eval", classes / "cats", *TINY_ARGS, ok=False)
    assert bad.exit_code == 1 and "needs at least two subfolders" in bad.output


def test_identical_images_count_as_the_original(tmp_path: Path) -> None:
    a = Image.open(make_photo(tmp_path / "a.png", seed=1)).convert("RGB")
    b = Image.open(make_photo(tmp_path / "b.png", seed=2)).convert("RGB")
    twin = a.copy()
    same = identical([a, b, twin, a.resize((80, 60))])
    assert same[0, 2] and same[2, 0] and same.diagonal().all()
    assert not same[0, 1] and not same[1, 2] and not same[1, 3]
