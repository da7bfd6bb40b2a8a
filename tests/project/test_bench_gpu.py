"""scripts/bench_gpu.py: the budget that trims its grid, the photos it makes, and one whole tiny
run on the CPU (a tiny model, 6 small photos, two index runs) whose tables and JSON hold the
rows they should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests.support import TINY, load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports bench_index and synthetic_library
    return load_script("bench_gpu")


def test_budget_skips_what_would_not_fit(bench: ModuleType) -> None:
    now = [0.0]
    budget = bench.Budget(100.0, clock=lambda: now[0])
    assert budget.allows("index", "first")  # guessed 30 s
    now[0] = 40.0
    budget.took("index", 40.0)
    assert budget.allows("index", "second")  # 40 s more: 80 of 100
    now[0] = 80.0
    budget.took("index", 30.0)  # the longest so far counts: 40 s
    assert not budget.allows("index", "third")
    assert budget.allows("other", "no guess for this kind")
    assert len(budget.skipped) == 1 and budget.skipped[0].startswith("third: skipped at 80 s")
    unlimited = bench.Budget(0.0)
    unlimited.took("index", 1e9)
    assert unlimited.allows("index", "anything")


def test_made_photos_are_reused(bench: ModuleType, tmp_path: Path) -> None:
    assert bench.make_photos(tmp_path, 3, (200, 120), jobs=2) == 3
    assert bench.make_photos(tmp_path, 4, (200, 120), jobs=2) == 1
    paths = bench.list_photos(tmp_path)
    assert [p.name for p in paths] == [f"synth-200x120-{i:05d}.jpg" for i in range(4)]
    with Image.open(paths[0]) as img:
        assert img.size == (200, 120) and img.format == "JPEG"
    assert paths[0].read_bytes() != paths[1].read_bytes()


def test_a_whole_tiny_run_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench_gpu.py"),
            *("--device", "cpu", "--photos", str(tmp_path / "photos"), "--make", "6"),
            *("--size", "320x240", "--models", f"{TINY.model},no_such_model"),
            *("--precisions", "fp32,bf16", "--batch-sizes", "4", "--sample", "6"),
            *("--forward-images", "8", "--index-precisions", "fp32"),
            *("--index-batch-sizes", "4", "--workers", "2,1", "--budget-s", "600"),
            *("--out", str(tmp_path / "out")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "out" / "bench_gpu.json").read_text())
    assert data["machine"]["device"] == "cpu" and data["machine"]["cores"] >= 1
    assert data["photos"]["n"] == 6 and data["photos"]["made_now"] == 6
    model = f"{TINY.model}@none"
    # CPU ms on one thread, then images/s on each --workers count of threads
    assert [(r["model"], r["threads"]) for r in data["decode"]] == [(model, t) for t in (1, 2, 1)]
    assert data["decode"][0]["cpu_ms"] > 0 and data["decode"][1]["images_per_s"] > 0
    forward = [(r["precision"], r["batch"]) for r in data["forward"]]
    assert forward == [("fp32", 4), ("bf16", 4)]
    assert data["forward"][0]["min_cos_fp32"] is None
    assert data["forward"][1]["min_cos_fp32"] > 0.99  # bf16 against fp32's vectors
    runs = data["index"]
    assert [(r["precision"], r["batch"], r["workers"]) for r in runs] == [
        ("fp32", 4, 2),
        ("fp32", 4, 1),
    ]
    for r in runs:
        assert "error" not in r, r
        assert r["added"] == 6 and r["failed"] == 0 and r["images_per_s"] > 0
    assert any("no_such_model@none: not run" in note for note in data["notes"])
    # The printed tables and the markdown file are the same, one row per measurement.
    text = (tmp_path / "out" / "bench_gpu.md").read_text()
    assert text.strip() in out.stdout
    rows = [line for line in text.splitlines() if line.startswith(f"| {model} |")]
    assert len(rows) == 3 + 2 + 2
    assert rows[-2].split("|")[10].strip() in ("decode", "model")  # bound by
