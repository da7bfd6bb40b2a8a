"""Which precisions a device runs natively, from what it reports (mocked: a machine has one
CPU), and what ``auto`` resolves to."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from featx_search import ExtractorSpec, Library, Query, SyncOptions
from featx_search import compute as compute_module
from featx_search.compute import (
    Compute,
    DeviceCaps,
    device_caps,
    native_precisions,
    precisions_of,
    resolve_precision,
)
from tests.support import TINY, make_photo, run_cli

AUTO = replace(TINY, precision="auto")
AUTO_ARGS = ["--model", TINY.model, "--weights", "none"]  # no --precision: auto

pytestmark = pytest.mark.real_precisions

ZEN4 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"})
SKYLAKE_X = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
SAPPHIRE_RAPIDS = SKYLAKE_X | {"avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"}
GRANITE_RAPIDS = SAPPHIRE_RAPIDS | {"amx_fp16"}


@pytest.mark.parametrize(
    ("caps", "want"),
    [
        # AVX-512 BF16 (Zen 4, Cooper Lake): bf16.
        (DeviceCaps(kind="cpu", cpu_flags=ZEN4, onednn_bf16=True), ("bf16", "fp32")),
        # AVX-512 without BF16: oneDNN runs bf16 by conversions (emulated), so fp32 only.
        (DeviceCaps(kind="cpu", cpu_flags=SKYLAKE_X, onednn_bf16=True), ("fp32",)),
        # AVX2 only.
        (DeviceCaps(kind="cpu", cpu_flags=frozenset({"avx2", "fma"})), ("fp32",)),
        # AMX with AVX-512 FP16 (Sapphire Rapids): bf16 first, fp16 too when oneDNN has it.
        (
            DeviceCaps(kind="cpu", cpu_flags=SAPPHIRE_RAPIDS, onednn_bf16=True, onednn_fp16=True),
            ("bf16", "fp16", "fp32"),
        ),
        (
            DeviceCaps(kind="cpu", cpu_flags=GRANITE_RAPIDS, onednn_bf16=True, onednn_fp16=False),
            ("bf16", "fp32"),
        ),
        # AMX-BF16 alone counts.
        (
            DeviceCaps(kind="cpu", cpu_flags=frozenset({"amx_bf16"}), onednn_bf16=True),
            ("bf16", "fp32"),
        ),
        # The flag without a torch build whose oneDNN runs bf16: fp32.
        (DeviceCaps(kind="cpu", cpu_flags=ZEN4, onednn_bf16=False), ("fp32",)),
        # Arm with the BF16 extension (Graviton 3, Apple M2 under Linux).
        (
            DeviceCaps(kind="cpu", cpu_flags=frozenset({"asimd", "bf16"}), onednn_bf16=True),
            ("bf16", "fp32"),
        ),
        # Unknown flags (no /proc/cpuinfo): fp32.
        (DeviceCaps(kind="cpu", onednn_bf16=True, onednn_fp16=True), ("fp32",)),
        # CUDA: Ampere and later bf16 then fp16; Volta / Turing fp16; Pascal 6.1 fp32; P100 fp16.
        (DeviceCaps(kind="cuda", cuda_capability=(9, 0), cuda_bf16=True), ("bf16", "fp16", "fp32")),
        (DeviceCaps(kind="cuda", cuda_capability=(8, 6), cuda_bf16=True), ("bf16", "fp16", "fp32")),
        (DeviceCaps(kind="cuda", cuda_capability=(7, 5), cuda_bf16=False), ("fp16", "fp32")),
        # torch may call bf16 supported on Turing (emulated): the capability decides.
        (DeviceCaps(kind="cuda", cuda_capability=(7, 5), cuda_bf16=True), ("fp16", "fp32")),
        (DeviceCaps(kind="cuda", cuda_capability=(6, 1)), ("fp32",)),
        (DeviceCaps(kind="cuda", cuda_capability=(6, 0)), ("fp16", "fp32")),
        (DeviceCaps(kind="cuda"), ("fp32",)),
        (DeviceCaps(kind="mps"), ("fp16", "fp32")),
    ],
)
def test_native_precisions_follow_the_reported_capabilities(
    caps: DeviceCaps, want: tuple[str, ...]
) -> None:
    assert precisions_of(caps) == want


@pytest.fixture
def fresh_cache() -> object:
    native_precisions.cache_clear()
    yield
    native_precisions.cache_clear()


def _fake_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, *, bf16: bool, fp16: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(compute_module, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: fp16)


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize(
    ("flags", "bf16", "fp16", "native", "auto"),
    [
        (
            "fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni",
            True,
            False,
            ("bf16", "fp32"),
            "bf16",
        ),
        ("fpu avx2 avx512f avx512bw avx512vl avx512dq", True, False, ("fp32",), "fp32"),
        ("fpu avx2 fma", False, False, ("fp32",), "fp32"),
        (
            "fpu avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
            True,
            True,
            ("bf16", "fp16", "fp32"),
            "bf16",
        ),
    ],
)
def test_cpu_capabilities_are_read_from_cpuinfo_and_onednn(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: str,
    bf16: bool,
    fp16: bool,
    native: tuple[str, ...],
    auto: str,
) -> None:
    _fake_cpu(monkeypatch, tmp_path, flags, bf16=bf16, fp16=fp16)
    caps = device_caps("cpu")
    assert caps.kind == "cpu" and "avx512f" in caps.cpu_flags | {"avx512f"}
    assert native_precisions("cpu") == native
    assert resolve_precision("auto", "cpu") == auto
    assert resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice stays
    assert resolve_precision("fp16", "cpu") == "fp16"


@pytest.mark.usefixtures("fresh_cache")
def test_arm_features_line_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n")
    monkeypatch.setattr(compute_module, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert "bf16" in device_caps("cpu").cpu_flags


@pytest.mark.usefixtures("fresh_cache")
def test_no_cpuinfo_means_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(compute_module, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert device_caps("cpu").cpu_flags == frozenset()
    assert native_precisions("cpu") == ("fp32",)


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize(
    ("capability", "bf16", "auto"),
    [((8, 0), True, "bf16"), ((7, 0), False, "fp16"), ((6, 1), False, "fp32")],
)
def test_cuda_capabilities_are_read_from_torch(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], bf16: bool, auto: str
) -> None:
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return bf16

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    caps = device_caps("cuda")
    assert caps == DeviceCaps(kind="cuda", cuda_capability=capability, cuda_bf16=bf16)
    assert asked == [False]  # native support, not torch's emulation
    assert resolve_precision("auto", "cuda") == auto


@pytest.mark.usefixtures("fresh_cache")
def test_mps_runs_fp16() -> None:
    assert device_caps("mps") == DeviceCaps(kind="mps")
    assert resolve_precision("auto", "mps") == "fp16"


def test_this_machine_reports_fp32_last() -> None:
    """Whatever this CPU is, fp32 is always there and last; no timing is involved."""
    found = native_precisions("cpu")
    assert found[-1] == "fp32" and len(set(found)) == len(found)


def _machine(monkeypatch: pytest.MonkeyPatch, *native: str) -> None:
    """From now on this process runs on a CPU whose native precisions are ``native``."""
    monkeypatch.setattr(compute_module, "native_precisions", lambda device: (*native, "fp32"))


def test_auto_is_fixed_when_a_space_is_made_and_kept_on_another_machine(
    monkeypatch: pytest.MonkeyPatch, db: Path, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _machine(monkeypatch, "bf16")
    with Library.open(db) as lib:
        report = lib.index([photos], AUTO)
        space = lib.space()
        assert report.precision == "bf16" and space.record.spec.precision == "bf16"
        assert space.record.spec.request.precision == "bf16"  # the request says what auto chose
        # OpenVINO computes a new bf16 space on the CPU (where it is installed).
        assert space.record.spec.engine == "openvino"
        assert space.label.endswith("/bf16/openvino")
        made = space.fingerprint
    # Another machine without native bf16: the same spec goes on in the space's bf16 (with
    # a warning), instead of making an fp32 space beside it.
    _machine(monkeypatch)
    make_photo(photos / "c" / "new.jpg", seed=99)
    with Library.open(db) as lib, caplog.at_level(logging.WARNING):
        plan = lib.plan([photos], AUTO)
        assert (plan.space, plan.added) == (made, 1)
        report = lib.index([photos], AUTO)
        assert (report.space, report.added, report.precision) == (made, 1, "bf16")
        assert [s.fingerprint for s in lib.spaces()] == [made]
        assert lib.info().spaces[0].precision == "bf16"
    assert "this CPU has no native bf16" in caplog.text
    # An explicit precision still makes its own space.
    with Library.open(db) as lib:
        report = lib.index([photos], replace(TINY, precision="fp32"))
        assert report.space != made and report.precision == "fp32"
        # Now two spaces answer auto: the one this machine runs natively is chosen.
        assert lib.create_space(AUTO).record.spec.precision == "fp32"
        _machine(monkeypatch, "bf16")
        assert lib.create_space(AUTO).record.spec.precision == "bf16"


def test_an_old_fp32_space_stays_the_space_of_auto(
    monkeypatch: pytest.MonkeyPatch, db: Path, photos: Path
) -> None:
    """A library made when fp32 was the default holds requests that say fp32: on a bf16
    machine, auto goes on in that space rather than indexing everything again."""
    _machine(monkeypatch)
    with Library.open(db) as lib:
        lib.index([photos], replace(TINY, precision="fp32"))
        old = lib.space()
        assert "precision" not in old.record.spec.identity()  # fp32 fingerprints are the old ones
    _machine(monkeypatch, "bf16")
    with Library.open(db) as lib:
        report = lib.index([photos], AUTO)
        assert (report.space, report.added, report.precision) == (old.fingerprint, 0, "fp32")


def test_a_stored_bf16_space_opens_and_embeds_in_bf16(
    monkeypatch: pytest.MonkeyPatch, db: Path, photos: Path
) -> None:
    """A bf16 space that torch computes (made before OpenVINO computed bf16 spaces, or with
    runtime torch) keeps its fingerprint and queries in torch's bf16, whatever the runtime
    asked for later."""
    bf16 = replace(TINY, precision="bf16")
    with Library.open(db) as lib:
        lib.index([photos], bf16, options=SyncOptions(compute=Compute(runtime="torch")))
        made = lib.space().fingerprint
        assert lib.space().record.spec.engine == "torch"
        assert "engine" not in lib.space().record.spec.identity()  # fingerprints as before
    with Library.open(db) as lib:
        space = lib.space()
        assert space.fingerprint == made
        extractor = space.extractor()
        assert extractor.space.fingerprint == made
        assert str(extractor.placement.dtype) == "torch.bfloat16"  # type: ignore[union-attr]
        assert lib.search(next(photos.rglob("*.jpg")), Query(k=1))[0].score > 0.99


def test_cli_shows_the_resolved_precision(
    monkeypatch: pytest.MonkeyPatch, db: Path, photos: Path
) -> None:
    _machine(monkeypatch, "bf16")
    result = run_cli("--db", db, "index", photos, *AUTO_ARGS)
    assert "computed in bf16)" in result.output, result.output
    assert "precision=bf16" in run_cli("--db", db, "info").output
    result = run_cli("--db", db, "index", photos, *AUTO_ARGS, "--precision", "fp32", "--json")
    assert json.loads(result.output)["precision"] == "fp32"
    result = run_cli("--db", db, "index", photos, *AUTO_ARGS, "--precision", "fp8", ok=False)
    assert result.exit_code != 0 and "--precision" in result.output


def test_a_spec_answers_its_own_space_and_auto_any_precision() -> None:
    bf16 = replace(TINY, precision="bf16")
    assert TINY.answers(TINY) and not TINY.answers(bf16) and not bf16.answers(TINY)
    assert AUTO.answers(TINY) and AUTO.answers(bf16) and AUTO.answers(AUTO)
    assert not AUTO.answers(replace(bf16, pool="gem"))  # only the precision is left open
    assert ExtractorSpec().precision == "auto"
    # Stored requests from before auto read back as they were stored.
    assert ExtractorSpec.from_dict({"model": "m", "weights": "none"}).precision == "fp32"
