"""Which precisions a device runs natively, from what it reports (mocked: a machine has one
CPU), and what ``auto`` resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from featx_search import compute as compute_module
from featx_search.compute import (
    DeviceCaps,
    device_caps,
    native_precisions,
    precisions_of,
    resolve_precision,
)

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
