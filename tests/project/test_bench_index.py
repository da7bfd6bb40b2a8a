"""scripts/bench_index.py's own parts: model names, the limit L, timing every forward with a
tiny model, the printed tables; and (slow) one whole tiny run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from featx_search import Compute, ExtractorSpec
from featx_search.compute import openvino_installed
from featx_search.extract import load_extractor
from tests.support import TINY, load_script, make_photo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # Importing it sets OMP_WAIT_POLICY only before torch loads; here torch is loaded.
    return load_script("bench_index")


def test_models_name_their_weights(bench: ModuleType) -> None:
    assert bench.parse_model("resnet50") == ("resnet50", "none")
    assert bench.parse_model("efficientnet_lite0") == ("efficientnet_lite0", "DEFAULT")
    assert bench.parse_model("tests.models:tiny_cnn@none") == ("tests.models:tiny_cnn", "none")
    assert bench.parse_model("resnet18") == ("resnet18", "DEFAULT")


def test_limit_shares_the_cores_between_decoding_and_the_model(bench: ModuleType) -> None:
    # 20 ms of decode on 2 cores is 10 ms per image; a 100 img/s model 10 ms more.
    assert bench.limit(20.0, 2, 100.0) == pytest.approx(50.0)
    assert bench.limit(0.0, 2, 100.0) == pytest.approx(100.0)


def test_every_precision_and_graph_is_timed(bench: ModuleType) -> None:
    spec = ExtractorSpec(model=TINY.model, weights="none")  # auto, as the CLI's
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((6, 3, 64, 64)).astype(np.float32)
    exact = load_extractor(TINY, Compute(device="cpu", freeze="off", runtime="torch")).embed(inputs)
    rows = bench.forwards(spec, inputs, exact, 4, emulated_images=2)
    labels = [r.label for r in rows]
    want = ["fp32 plain", "fp32 plain NCHW", "fp32 frozen", "bf16 plain", "bf16 frozen"]
    want += ["fp16 plain", "fp16 frozen", "int8 openvino"]
    if openvino_installed():
        want.insert(3, "fp32 openvino")
        want.insert(6, "bf16 openvino")  # a bf16 space OpenVINO computes, as runs prepare it
        want.insert(7, "bf16 openvino-1")  # ... and as queries run it
    assert labels == want
    plain = rows[0]
    assert plain.native and plain.images == 6 and plain.min_cosine > 1 - 1e-5
    assert plain.top5 == 1.0
    quantised = rows[-1]  # calibrated on the inputs; native where the CPU has VNNI or AMX
    assert quantised.error or (quantised.images == 6 and quantised.min_cosine > 0.9)
    for row in rows[:-1]:
        assert row.error or (row.rate > 0 and row.min_cosine > 0.99), row
        # conftest pins this machine to fp32: other precisions count as emulated
        assert row.native == (row.precision == "fp32")
        assert row.error or row.images == (6 if row.native else 2)
    best = bench.fastest(rows)
    assert best.rate == max(r.rate for r in rows[:-1] if not r.error)  # int8 aside
    assert bench.defaults_pick(spec, 10, 4) == "fp32 plain"


def test_report_names_the_fastest_and_the_defaults(bench: ModuleType) -> None:
    forward = bench.Forward
    ran = [
        forward("fp32", "plain", 10.0, images=8, min_cosine=1.0, top5=1.0),
        forward("bf16", "plain", 25.0, images=8, min_cosine=0.999, top5=0.95),
        forward("bf16", "frozen", error="not made (see log)"),
        forward("fp16", "plain", 1.0, native=False, images=2, min_cosine=0.9999, top5=1.0),
    ]
    row = bench.Row(
        model="resnet50",
        forwards=ran,
        best=bench.fastest(ran),
        picked="bf16 plain",
        picked_large="bf16 plain",
        a_default=25.0,
        b=16.0,
        c=4.0,
        limit=bench.limit(20.0, 2, 25.0),
        rss=(1000.0, 1010.0),
        b_steady=17.0,
    )
    text = bench.report([row], cores=2, d_fast=20.0, d_plain=100.0, n=60)
    line = next(x for x in text.splitlines() if x.startswith("resnet50") and "b/L" not in x)
    assert "bf16 plain" in line and "25.0" in line
    assert f"{16.0 / row.limit:7.2f}" in line and f"{16.0 / 4.0:7.2f}" in line
    assert f"{17.0 / row.limit:6.2f}" in line  # steady / L
    assert "not made (see log)" in text
    assert "2.50" in text  # bf16 against fp32 plain
    assert math.isclose(row.limit, 1 / (0.01 + 0.04))


@pytest.mark.slow
def test_a_whole_tiny_run(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(5):
        make_photo(photos / f"{i}.jpg", seed=i, size=(640, 480))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_index.py"),
            *("--photos", str(photos), "--models", f"{TINY.model}@none"),
            *("--repeat", "1", "--sample", "5", "--emulated-images", "2"),
            *("--cache", str(tmp_path / "cache")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "fastest (a)" in out.stdout and "defaults pick" in out.stdout
    assert "fp32 plain" in out.stdout
