"""Speed options: every combination of batch size, decode workers, threads, layout and
precision indexes every file, with vectors equal to a plain one-image-at-a-time reference;
precision is part of the space (fp32 fingerprints unchanged); bad options fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from featx_search import Compute, ConfigError, ExtractorSpec, Library, Query, SyncOptions
from featx_search import compute as compute_module
from featx_search.cli import cli
from featx_search.compute import openvino_installed, resolve_device
from featx_search.config import SpaceSpec
from featx_search.extract import Extractor, load_extractor
from featx_search.images import is_image_name, load_input
from tests.support import TINY

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="openvino is not installed")
# Cosine of each stored vector with the fp32 reference: exact for fp32, format noise else.
MIN_COSINE = {"fp32": 1 - 1e-5, "fp16": 0.999, "bf16": 0.99}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_image_name(p))


@pytest.fixture(scope="module")
def reference() -> Extractor:
    """The fp32 extractor with the plainest settings: CPU, NCHW, torch's threads."""
    return load_extractor(TINY, Compute(device="cpu", channels_last=False))


# A covering set (not the full product): batch size, decode workers, model threads,
# channels_last (None: automatic), precision, freeze, micro-batch (None: automatic), runtime.
COMBOS: list[tuple[int, int, int | None, bool | None, str, str, int | None, str]] = [
    (1, 1, 1, False, "fp32", "off", None, "torch"),
    (5, 3, None, True, "fp32", "on", 2, "torch"),
    (16, 2, 2, None, "fp32", "auto", None, "auto"),
    (4, 1, None, True, "bf16", "on", 16, "auto"),
    (7, 2, 1, False, "fp16", "auto", 3, "torch"),
    (3, 2, None, False, "fp32", "on", 1, "torch"),
    (5, 2, 1, True, "fp32", "auto", 2, "openvino"),
    (16, 1, None, None, "fp32", "off", None, "openvino"),
]


@pytest.mark.parametrize(
    (
        "batch_size",
        "workers",
        "threads",
        "channels_last",
        "precision",
        "freeze",
        "micro_batch",
        "runtime",
    ),
    COMBOS,
)
def test_every_option_combination_indexes_correctly(
    library: Library,
    photos: Path,
    reference: Extractor,
    batch_size: int,
    workers: int,
    threads: int | None,
    channels_last: bool | None,
    precision: str,
    freeze: str,
    micro_batch: int | None,
    runtime: str,
) -> None:
    if runtime == "openvino" and not openvino_installed():
        pytest.skip("openvino is not installed")
    threads_before = torch.get_num_threads()
    compute = Compute(
        device="cpu",
        threads=threads,
        channels_last=channels_last,
        freeze=freeze,
        micro_batch=micro_batch,
        runtime=runtime,
    )
    try:
        report = library.index(
            [photos],
            replace(TINY, precision=precision),
            options=SyncOptions(batch_size=batch_size, workers=workers, compute=compute),
        )
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    assert threads_after == threads_before  # set only while the model runs
    assert (report.added, report.failed) == (12, 0), report.failures
    space = library.spaces()[0]
    assert space.count == 12
    _, ids, stored = space.vectors()
    image_ids = {facts.path: facts.id for facts in space.image_facts()}
    files = _files(photos)
    expected = reference.embed(np.stack([load_input(p, reference.space.preprocess) for p in files]))
    by_id = dict(zip(ids.tolist(), stored, strict=True))
    for path, want in zip(files, expected, strict=True):
        got = by_id[image_ids[str(path.resolve())]]
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        assert float(got @ want) >= MIN_COSINE[precision], (path, precision)
    # Retrieval is the same: every photo finds itself first.
    for path, matches in zip(files, library.search(files, Query(k=1)), strict=True):
        assert matches[0].path == str(path)


def test_precision_is_part_of_the_space() -> None:
    fp32 = load_extractor(TINY, Compute(device="cpu")).space
    torch_cpu = Compute(device="cpu", runtime="torch")
    bf16 = load_extractor(replace(TINY, precision="bf16"), torch_cpu).space
    assert "precision" not in fp32.identity()  # fp32 fingerprints are the ones from before
    assert bf16.identity()["precision"] == "bf16"
    assert fp32.fingerprint != bf16.fingerprint
    assert bf16.label.endswith("/bf16") and not fp32.label.endswith("fp32")
    again = SpaceSpec.from_dict(bf16.to_dict())
    assert again.fingerprint == bf16.fingerprint and again.request.precision == "bf16"
    # A stored spec from before precision existed reads back as fp32, same fingerprint.
    old = fp32.to_dict()
    del old["request"]["precision"]
    assert SpaceSpec.from_dict(old).fingerprint == fp32.fingerprint


def test_layout_and_threads_do_not_change_the_space() -> None:
    a = load_extractor(TINY, Compute(device="cpu", channels_last=True))
    b = load_extractor(TINY, Compute(device="cpu", channels_last=False, threads=1))
    torch.set_num_threads(torch.get_num_threads())
    assert a.space.fingerprint == b.space.fingerprint
    assert a.placement is not None and a.placement.channels_last
    batch = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(a.embed(batch), b.embed(batch), atol=1e-5)


def test_devices_resolve_here() -> None:
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' is not available") as err:
            resolve_device("cuda")
        assert err.value.hint


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: Compute(device="tpu"), "device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        (lambda: Compute(threads=0), "threads must be at least 1, got 0"),
        (lambda: Compute(freeze="yes"), "freeze must be one of auto, on, off, got 'yes'"),
        (lambda: Compute(micro_batch=0), "micro_batch must be at least 1, got 0"),
        (
            lambda: ExtractorSpec(precision="fp8"),
            "precision must be one of auto, fp32, bf16, fp16, int8, got 'fp8'",
        ),
    ],
)
def test_bad_options_fail_clearly(make: Callable[[], object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        make()
    assert err.value.hint or "at least" in pattern


def test_cli_speed_options(photos: Path, db: Path) -> None:
    runner = CliRunner()
    args = ["--db", str(db), "index", str(photos), "-m", TINY.model, "-w", "none", "-q"]
    fast = ["--workers", "2", "--threads", "1", "--device", "cpu", "--no-channels-last"]
    result = runner.invoke(cli, [*args, *fast, "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, [*args, "--precision", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert '"added": 12' in result.output and "/bf16" in result.output
    with Library.open(db) as lib:
        assert sorted("/bf16" in s.label for s in lib.spaces()) == [False, True]
    result = runner.invoke(cli, [*args, "--device", "tpu"])
    assert result.exit_code != 0 and "tpu" in result.output


@pytest.mark.parametrize(("given", "passive"), [(None, True), ("ACTIVE", False)])
def test_openmp_threads_sleep_unless_told_otherwise(given: str | None, passive: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import os, sys; from featx_search.cli.process import prefer_passive_openmp as p; "
        "print(p(), os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(passive), given or "PASSIVE", "False"]


def _batch(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 3, 224, 224)).astype(np.float32)


def test_frozen_graph_gives_the_plain_vectors(reference: Extractor) -> None:
    frozen = load_extractor(TINY, Compute(device="cpu", freeze="on"))
    frozen.prepare_run(1, 4)  # "on": frozen whatever the run's size
    assert frozen.frozen
    assert frozen.space.fingerprint == reference.space.fingerprint
    for n in (4, 1, 7):  # other batch sizes than the traced one
        np.testing.assert_allclose(frozen.embed(_batch(n)), reference.embed(_batch(n)), atol=1e-5)


def test_freeze_auto_needs_a_long_cpu_run_and_a_faster_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featx_search.compute import FREEZE_MIN_IMAGES
    from featx_search.extract import runtimes

    def make() -> Extractor:
        return load_extractor(TINY, Compute(device="cpu", runtime="torch"))  # freeze="auto"

    short = make()
    short.prepare_run(FREEZE_MIN_IMAGES - 1, 16)
    assert not short.frozen  # not worth its start-up cost
    # The first batch is timed on both graphs; the faster one is kept.
    timings = iter([1.0, 2.0])  # plain, frozen
    monkeypatch.setattr(runtimes, "seconds", lambda graph, inputs: next(timings))
    slower = make()
    slower.prepare_run(FREEZE_MIN_IMAGES, 16)
    assert not slower.frozen
    timings = iter([2.0, 1.0])
    faster = make()
    faster.prepare_run(FREEZE_MIN_IMAGES, 16)
    assert faster.frozen
    bf16 = load_extractor(replace(TINY, precision="bf16"), Compute(device="cpu"))
    bf16.prepare_run(10 * FREEZE_MIN_IMAGES, 16)
    assert not bf16.frozen and bf16.runtime == "torch"  # auto freezes fp32 only
    off = load_extractor(TINY, Compute(device="cpu", freeze="off", runtime="torch"))
    off.prepare_run(10 * FREEZE_MIN_IMAGES, 16)
    assert not off.frozen


def test_a_graph_that_cannot_be_frozen_runs_plain(
    reference: Extractor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked = load_extractor(replace(TINY, method="hook"), Compute(device="cpu", freeze="on"))
    hooked.prepare_run(1, 4)
    assert not hooked.frozen  # hooks read the eager model's modules: nothing to trace
    broken = load_extractor(TINY, Compute(device="cpu", freeze="on"))

    def untraceable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    broken.prepare_run(4, 4)
    assert not broken.frozen and "could not make the frozen graph" in caplog.text
    np.testing.assert_allclose(broken.embed(_batch()), reference.embed(_batch()), atol=1e-5)


@needs_openvino
def test_openvino_runtime_gives_the_plain_vectors(reference: Extractor) -> None:
    compiled = load_extractor(TINY, Compute(device="cpu", runtime="openvino", micro_batch=4))
    assert compiled.space.fingerprint == reference.space.fingerprint  # not part of the space
    compiled.prepare_run(1, 4)  # asked for: used whatever the run's size
    assert compiled.runtime == "openvino" and not compiled.frozen
    assert not isinstance(compiled._graph, torch.nn.Module)
    for n in (4, 1, 7):  # other batch sizes than the converted one
        np.testing.assert_allclose(compiled.embed(_batch(n)), reference.embed(_batch(n)), atol=1e-5)
    # A Library keeps the extractor for later searches, which may come from several threads.
    batches = [_batch(n) for n in (1, 2, 3, 4, 5, 6)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(compiled.embed, batches))
    for batch, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, reference.embed(batch), atol=1e-5)


@needs_openvino
def test_openvino_auto_needs_a_long_cpu_fp32_run_and_a_faster_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from featx_search.compute import OPENVINO_MIN_IMAGES
    from featx_search.extract import runtimes

    def make(**kwargs: str) -> Extractor:
        return load_extractor(TINY, Compute(device="cpu", freeze="off", **kwargs))

    short = make()
    short.prepare_run(OPENVINO_MIN_IMAGES - 1, 16)
    assert short.runtime == "torch"  # not worth converting
    timings = iter([1.0, 2.0])  # plain, openvino
    monkeypatch.setattr(runtimes, "seconds", lambda graph, inputs: next(timings))
    slower = make()
    slower.prepare_run(OPENVINO_MIN_IMAGES, 16)
    assert slower.runtime == "torch"
    timings = iter([2.0, 1.0])
    faster = make()
    faster.prepare_run(OPENVINO_MIN_IMAGES, 16)
    assert faster.runtime == "openvino"
    never = make(runtime="torch")
    never.prepare_run(10 * OPENVINO_MIN_IMAGES, 16)
    assert never.runtime == "torch"
    # Not installed: auto quietly runs torch; asking for it fails with a hint.
    monkeypatch.setattr(compute_module, "openvino_installed", lambda: False)
    missing = make()
    missing.prepare_run(10 * OPENVINO_MIN_IMAGES, 16)
    assert missing.runtime == "torch"
    with pytest.raises(ConfigError, match="needs the openvino package") as err:
        Compute(runtime="openvino")
    assert "pip install openvino" in (err.value.hint or "")


@needs_openvino
def test_openvino_is_refused_for_what_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="fp32 and bf16 models on the CPU only, not fp16 on cpu"):
        load_extractor(replace(TINY, precision="fp16"), Compute(device="cpu", runtime="openvino"))
    # bf16 with runtime openvino (or auto) makes a space OpenVINO computes; with torch, torch.
    openvino = load_extractor(replace(TINY, precision="bf16"), Compute(runtime="openvino"))
    assert openvino.space.engine == "openvino"
    bf16 = load_extractor(replace(TINY, precision="bf16"), Compute(device="cpu", runtime="torch"))
    bf16.prepare_run(100_000, 16)
    assert bf16.runtime == "torch" and bf16.space.engine == "torch"


@needs_openvino
def test_openvino_conversion_sends_no_usage_statistics(tmp_path: Path) -> None:
    # Importing openvino and each convert_model report to Google Analytics (openvino-telemetry)
    # and keep a client id under ~/intel unless the user opted out; featx-search must not.
    code = (
        "from featx_search import Compute\n"
        "from featx_search.extract import load_extractor\n"
        "from tests.support import TINY\n"
        "e = load_extractor(TINY, Compute(device='cpu', runtime='openvino'))\n"
        "e.prepare_run(4, 4)\n"
        "print(e.runtime)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)  # where openvino-telemetry keeps its files on Linux and macOS
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["openvino"]
    assert list(tmp_path.iterdir()) == []  # no ~/intel: no client id, no consent check


@needs_openvino
def test_a_graph_openvino_cannot_convert_runs_in_torch(
    reference: Extractor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unconvertible(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(torch.export, "export", unconvertible)
    broken = load_extractor(TINY, Compute(device="cpu", runtime="openvino", freeze="on"))
    broken.prepare_run(4, 4)
    assert "could not make the openvino graph" in caplog.text
    assert broken.runtime == "torch" and broken.frozen  # the next choice down
    np.testing.assert_allclose(broken.embed(_batch()), reference.embed(_batch()), atol=1e-5)
    hooked = load_extractor(replace(TINY, method="hook"), Compute(device="cpu", runtime="openvino"))
    hooked.prepare_run(4, 4)
    assert hooked.runtime == "torch" and "run in plain torch" in caplog.text


def test_micro_batches_give_the_same_vectors(reference: Extractor) -> None:
    from featx_search.compute import CPU_MICRO_BATCH

    sliced = load_extractor(TINY, Compute(device="cpu", channels_last=False, micro_batch=3))
    default = load_extractor(TINY, Compute(device="cpu"))
    assert default.placement is not None and default.placement.micro_batch == CPU_MICRO_BATCH
    calls: list[int] = []
    graph = sliced._graph
    sliced._graph = lambda inputs: (calls.append(len(inputs)), graph(inputs))[1]
    batch = _batch(7)
    np.testing.assert_allclose(sliced.embed(batch), reference.embed(batch), atol=1e-5)
    assert calls == [3, 3, 1]  # the model saw slices, the caller one batch
