"""Where and how a model runs: device, number format, CPU threads and memory layout.

None of these is part of an embedding space except the precision, which is chosen in
:class:`~featx_search.config.ExtractorSpec`; here it is turned into a torch dtype, and the
precisions a device runs natively are read from what it reports (CPU feature flags and
oneDNN, CUDA compute capability), which is what ``auto`` resolves from.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from .config import DEFAULT_PRECISION, Engine, Precision, PrecisionChoice, check_choice
from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# Where a model runs: ``auto`` is CUDA, else Apple MPS, else the CPU.
Device = Literal["auto", "cpu", "cuda", "mps"]
# Whether index runs use a frozen TorchScript graph.
Freeze = Literal["auto", "on", "off"]
# What runs the cut graph in index runs.
Runtime = Literal["auto", "torch", "openvino"]

DEVICES: tuple[Device, ...] = get_args(Device)
FREEZES: tuple[Freeze, ...] = get_args(Freeze)
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
# With runtime="auto", an index run that embeds at least this many images on the CPU in fp32
# tries OpenVINO (when installed): converting takes seconds, which a shorter run would not win
# back (docs/benchmarks.md).
OPENVINO_MIN_IMAGES = 1000
# With freeze="auto", an index run that embeds at least this many images on the CPU in fp32
# tries the frozen graph, for the same reason.
FREEZE_MIN_IMAGES = 2000
# Images per model call on the CPU when not given: small calls keep activations in the CPU's
# cache (docs/benchmarks.md).
CPU_MICRO_BATCH = 4
# The quantised precision: never native in the sense of precisions_of (auto does not pick it).
INT8: Precision = "int8"


@dataclass(frozen=True, kw_only=True)
class Compute:
    """How to run a model; none of it changes which space vectors belong to.

    - ``device``: ``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda`` or ``mps``.
    - ``threads``: torch intra-op threads while this model embeds (set and restored around
      each call); ``None`` keeps torch's setting.
    - ``channels_last``: NHWC memory layout for convolutions; ``None`` means on for CPU and
      CUDA, off for MPS.
    - ``micro_batch``: images per model call; a larger batch is embedded in slices of this
      size. ``None`` means :data:`CPU_MICRO_BATCH` on the CPU and the whole batch elsewhere.
    - ``freeze``: for index runs, compile the model graph for inference (TorchScript trace,
      freeze, oneDNN optimisations: batch norm folded into convolutions, prepacked weights).
      ``auto`` tries it on the CPU in fp32 when a run embeds at least
      :data:`FREEZE_MIN_IMAGES` images, and keeps it only when the first batch runs faster
      than the plain graph; ``on`` always uses it, ``off`` never. Vectors agree with the plain
      graph's to float rounding (checked on the first batch). Applies when the model runs in
      torch.
    - ``runtime``: for index runs, what runs the cut graph: ``torch``, or ``openvino``, which
      compiles the same FX graph for this CPU with Intel's OpenVINO (fp32 only, the CPU only;
      needs the ``openvino`` package). ``auto`` uses OpenVINO when it is installed and a CPU
      fp32 run embeds at least :data:`OPENVINO_MIN_IMAGES` images, if its vectors agree with
      torch's on a sample batch and it runs that batch faster. For a new bf16 space on the
      CPU, ``auto`` and ``openvino`` make a space that OpenVINO computes (see
      :func:`engine_for`), ``torch`` one that torch computes. An int8 space, and a space
      OpenVINO computes, runs its OpenVINO model on the CPU whatever these say: ``device``
      auto means the CPU there, and another device or ``runtime`` torch raises
      :class:`ConfigError`.

    Raises :class:`ConfigError` naming the parameter for a value out of range.
    """

    device: Device = "auto"
    threads: int | None = None
    channels_last: bool | None = None
    micro_batch: int | None = None
    freeze: Freeze = "auto"
    runtime: Runtime = "auto"

    def __post_init__(self) -> None:
        check_choice(self.device, DEVICES, "device")
        check_choice(self.freeze, FREEZES, "freeze")
        check_choice(self.runtime, RUNTIMES, "runtime")
        if self.runtime == "openvino" and not openvino_installed():
            raise ConfigError(
                "runtime 'openvino' needs the openvino package, which is not installed",
                hint="pip install openvino, or use runtime auto or torch",
                param="runtime",
            )
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(
                f"micro_batch must be at least 1, got {self.micro_batch}", param="micro_batch"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}", param="threads")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """A :class:`Compute` resolved on this machine: the torch device and layout to use, and the
    process-wide torch settings :func:`applied` sets while the model runs."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    freeze: Freeze = "off"
    micro_batch: int | None = None  # None: the whole batch in one call
    # "auto" only where OpenVINO may be tried (CPU, fp32, installed); place() makes it
    # "torch" elsewhere.
    runtime: Runtime = "torch"
    threads: int | None = None  # torch intra-op threads while running; None: leave as is
    exact_fp32: bool = False  # TF32 off while running (fp32 on CUDA)


def openvino_installed() -> bool:
    """Whether the optional OpenVINO runtime can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


class _Settings:
    """Process-wide torch settings shared by every model that runs: the first caller to enter
    saves what was there, the last to leave restores it (threads may overlap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[int, bool, bool] | None = None

    @contextmanager
    def applied(self, placement: Placement) -> Iterator[None]:
        import torch

        with self._lock:
            if self._users == 0:
                self._saved = (
                    torch.get_num_threads(),
                    torch.backends.cudnn.allow_tf32,
                    torch.backends.cuda.matmul.allow_tf32,
                )
            self._users += 1
            if placement.threads is not None and torch.get_num_threads() != placement.threads:
                torch.set_num_threads(placement.threads)
            if placement.exact_fp32:
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._saved is not None:
                    threads, cudnn_tf32, matmul_tf32 = self._saved
                    if torch.get_num_threads() != threads:
                        torch.set_num_threads(threads)
                    torch.backends.cudnn.allow_tf32 = cudnn_tf32
                    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
                    self._saved = None


_SETTINGS = _Settings()


@contextmanager
def applied(placement: Placement | None) -> Iterator[None]:
    """Run the block with ``placement``'s torch threads and TF32 setting, restored afterwards.

    Torch holds these per process; while several threads run models at once, the last one to
    enter sets them and the last one to leave restores what was there before the first."""
    if placement is None or (placement.threads is None and not placement.exact_fp32):
        yield
        return
    with _SETTINGS.applied(placement):
        yield


def resolve_device(device: Device) -> str:
    """``auto`` -> the best device present; an explicit device that is missing raises
    :class:`ConfigError`."""
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (device == "cuda" and not cuda) or (device == "mps" and not mps):
        raise ConfigError(
            f"device {device!r} is not available here",
            hint="use device auto or cpu (this torch build or machine has no such device)",
            param="device",
        )
    return device


def torch_dtype(precision: Precision) -> torch.dtype:
    """The dtype torch runs ``precision`` in; int8's torch graph is its fp32 original, which
    OpenVINO quantises (extract/int8.py)."""
    import torch

    return {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "int8": torch.float32,
    }[precision]


# CPU feature flags (Linux /proc/cpuinfo names) that mean a number format runs natively: x86
# AVX-512 BF16 or AMX-BF16 and AVX-512 FP16 or AMX-FP16; on Arm the BF16 extension. AVX-512
# alone is not enough: oneDNN then emulates bf16 with conversions, slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPU_FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
# CUDA compute capabilities with fast fp16 (tensor cores from Volta 7.0; Tegra X1 5.3, P100
# 6.0 and Tegra X2 6.2 before) and native bf16 (Ampere 8.0 on).
CUDA_FP16_CAPABILITY = (7, 0)
CUDA_FP16_OLDER = frozenset({(5, 3), (6, 0), (6, 2)})
CUDA_BF16_CAPABILITY = (8, 0)
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, kw_only=True)
class DeviceCaps:
    """What a device reports about the number formats it runs; read by :func:`device_caps`.

    - ``kind``: ``cpu``, ``cuda`` or ``mps``.
    - ``cpu_flags``: the CPU's feature flags (``/proc/cpuinfo``; empty where unknown).
    - ``onednn_bf16``, ``onednn_fp16``: whether torch's oneDNN runs these formats on this CPU
      at all (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, ``..._fp16_...``).
    - ``cuda_capability``: the GPU's compute capability; ``cuda_bf16``:
      ``torch.cuda.is_bf16_supported(including_emulation=False)``.
    """

    kind: str
    cpu_flags: frozenset[str] = frozenset()
    onednn_bf16: bool = False
    onednn_fp16: bool = False
    cuda_capability: tuple[int, int] | None = None
    cuda_bf16: bool = False


def precisions_of(caps: DeviceCaps) -> tuple[Precision, ...]:
    """The precisions a device with ``caps`` runs natively, fastest first; fp32 always, last.

    CPU: bf16 with AVX-512 BF16, AMX-BF16 or Arm BF16 (and oneDNN's bf16), fp16 with
    AVX-512 FP16 or AMX-FP16 (and oneDNN's fp16). CUDA: bf16 from compute capability 8.0
    (when torch says so), fp16 from 7.0 (and on 5.3, 6.0, 6.2). MPS: fp16. Decided from what
    the device reports, never from timing.
    """
    found: list[Precision] = []
    if caps.kind == "cpu":
        if caps.onednn_bf16 and caps.cpu_flags & CPU_BF16_FLAGS:
            found.append("bf16")
        if caps.onednn_fp16 and caps.cpu_flags & CPU_FP16_FLAGS:
            found.append("fp16")
    elif caps.kind == "cuda" and caps.cuda_capability is not None:
        capability = caps.cuda_capability
        if caps.cuda_bf16 and capability >= CUDA_BF16_CAPABILITY:
            found.append("bf16")
        if capability >= CUDA_FP16_CAPABILITY or capability in CUDA_FP16_OLDER:
            found.append("fp16")
    elif caps.kind == "mps":
        found.append("fp16")
    return (*found, DEFAULT_PRECISION)


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def device_caps(device: str) -> DeviceCaps:
    """What the resolved ``device`` (``cpu``, ``cuda``, ``cuda:N`` or ``mps``) reports."""
    import torch

    kind = device.split(":")[0]
    if kind == "cpu":
        mkldnn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        return DeviceCaps(
            kind=kind,
            cpu_flags=_cpu_flags(),
            onednn_bf16=mkldnn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            onednn_fp16=mkldnn and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()),
        )
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return DeviceCaps(
            kind=kind,
            cuda_capability=(major, minor),
            cuda_bf16=bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        )
    return DeviceCaps(kind=kind)


@functools.cache
def native_precisions(device: str) -> tuple[Precision, ...]:
    """The precisions the resolved ``device`` runs natively (not emulated), fastest first,
    fp32 last (see :func:`precisions_of`)."""
    return precisions_of(device_caps(device))


def resolve_precision(precision: PrecisionChoice, device: str) -> Precision:
    """``auto`` -> the fastest precision the resolved ``device`` runs natively; others as
    they are."""
    return native_precisions(device)[0] if precision == "auto" else precision


def place(
    model: nn.Module, precision: Precision, compute: Compute, engine: Engine = "torch"
) -> tuple[nn.Module, Placement]:
    """Move ``model`` (in place) to the device, dtype and layout ``compute`` resolves to.
    A space that OpenVINO computes (``engine``, and int8) keeps its torch graph in fp32 on
    the CPU, to be exported.

    Changes no process-wide setting: ``compute.threads``, and TF32 off for fp32 on CUDA (so
    that an fp32 space means the same vectors on every device), go into the placement, which
    :func:`applied` applies while the model runs. A precision the device only emulates still
    works, with a warning that it is slow.
    """
    import torch

    if precision == INT8:
        return _place_for_openvino(model, compute)
    if engine == "openvino":
        if precision not in native_precisions("cpu"):
            log.warning(
                "this CPU has no native %s: OpenVINO computes the space's vectors in fp32 "
                "here, close to but not the same as %s ones",
                precision,
                precision,
            )
        return _place_for_openvino(model, compute, f"a {precision} space computed by OpenVINO")
    device = resolve_device(compute.device)
    if compute.runtime == "openvino" and (device != "cpu" or precision != DEFAULT_PRECISION):
        raise ConfigError(
            f"runtime 'openvino' runs fp32 and bf16 models on the CPU only, "
            f"not {precision} on {device}",
            hint="use device cpu and precision fp32 or bf16, or runtime auto",
            param="runtime",
        )
    if precision not in native_precisions(device):
        log.warning(
            "precision %s is not native on this %s (native: %s); it works, but slowly",
            precision,
            device,
            ", ".join(native_precisions(device)),
        )
    channels_last = compute.channels_last
    if channels_last is None:
        channels_last = device in ("cpu", "cuda")
    dtype = torch_dtype(precision)
    model.to(device=device, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    micro_batch = compute.micro_batch
    if micro_batch is None and device == "cpu":
        micro_batch = CPU_MICRO_BATCH
    runtime = compute.runtime
    if runtime == "auto" and not (
        device == "cpu" and precision == DEFAULT_PRECISION and openvino_installed()
    ):
        runtime = "torch"
    return model, Placement(
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        freeze=compute.freeze,
        micro_batch=micro_batch,
        runtime=runtime,
        threads=compute.threads,
        exact_fp32=device == "cuda" and precision == DEFAULT_PRECISION,
    )


def engine_for(precision: Precision, device: str, compute: Compute) -> Engine:
    """What computes a new space of ``precision`` on the resolved ``device``: OpenVINO for
    bf16 on the CPU where it is installed and ``compute.runtime`` is not torch (it runs bf16
    faster than torch and starts without it, docs/benchmarks.md); torch otherwise."""
    if (
        precision == "bf16"
        and device == "cpu"
        and compute.runtime != "torch"
        and openvino_installed()
    ):
        return "openvino"
    return "torch"


def _place_for_openvino(
    model: nn.Module, compute: Compute, what: str = "precision int8"
) -> tuple[nn.Module, Placement]:
    """``what`` (int8, or a space OpenVINO computes) runs in OpenVINO on the CPU: the torch
    graph stays fp32 on the CPU (it is what gets exported, and quantised for int8), and
    ``auto`` means the CPU even where a GPU is present."""
    import torch

    if compute.device not in ("auto", "cpu"):
        raise ConfigError(
            f"{what} runs on the CPU only, not on {compute.device}",
            hint="use device auto or cpu, or another precision",
            param="device",
        )
    if compute.runtime == "torch":
        raise ConfigError(
            f"{what} runs in OpenVINO, not in torch",
            hint="use runtime auto or openvino, or another precision",
            param="runtime",
        )
    model.to(device="cpu", dtype=torch.float32)
    return model, Placement(
        device="cpu",
        dtype=torch.float32,
        channels_last=False,
        micro_batch=compute.micro_batch,
        runtime="openvino",
        threads=compute.threads,
    )


def to_input(batch: torch.Tensor, placement: Placement) -> torch.Tensor:
    """A float32 CPU batch (B, 3, H, W) as the placed model takes it."""
    import torch

    batch = batch.to(device=placement.device, dtype=placement.dtype, non_blocking=True)
    if placement.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
