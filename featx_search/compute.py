"""Where and how a model runs: device, number format, CPU threads and memory layout.

None of these is part of an embedding space except the precision, which is chosen in
:class:`~featx_search.config.ExtractorSpec`; here it is only turned into a torch dtype and
checked against what the device runs fast.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import DEFAULT_PRECISION
from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
FREEZES: tuple[str, ...] = ("auto", "on", "off")
RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino")
# With runtime="auto", an index run that embeds at least this many images on the CPU in fp32
# tries OpenVINO (when installed). Exporting and converting took 6 to 12 s here and saves 12
# to 20 ms per image (efficientnet_lite0, resnet50), so it pays for itself after some 300 to
# 1000 images.
OPENVINO_MIN_IMAGES = 1000
# With freeze="auto", an index run that embeds at least this many images on the CPU in fp32
# tries the frozen graph. Freezing resnet50 costs about 13 s here and saves about 7 ms per
# image, so it pays for itself after some 1800 images (README, "Speed").
FREEZE_MIN_IMAGES = 2000
# Images per model call on the CPU when not given. On this machine (2 cores, 32 MiB L3), with
# OpenMP's default waiting (as in a Python program using the API), calls of 4 images ran
# fastest for both measured models: 1.8x faster than 16 for efficientnet_lite0 and 1.1x for
# resnet50, as their activations stay in cache. With the CLI's passive waiting
# (prefer_passive_openmp) 4 and 16 ran alike (README, "Speed").
CPU_MICRO_BATCH = 4


@dataclass(frozen=True, kw_only=True)
class Compute:
    """How to run a model; none of it changes which space vectors belong to.

    - ``device``: ``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda`` or ``mps``.
    - ``threads``: torch intra-op threads (process-wide); ``None`` keeps torch's default, one
      per core.
    - ``channels_last``: NHWC memory layout for convolutions; ``None`` means on for CPU and
      CUDA, where it measured faster (README, "Speed"), off for MPS.
    - ``micro_batch``: images per model call; a larger batch is embedded in slices of this
      size. ``None`` means :data:`CPU_MICRO_BATCH` on the CPU and the whole batch elsewhere.
    - ``freeze``: for index runs, compile the model graph for inference (TorchScript trace,
      freeze, oneDNN optimisations: batch norm folded into convolutions, prepacked weights).
      ``auto`` tries it on the CPU in fp32 when a run embeds at least
      :data:`FREEZE_MIN_IMAGES` images, and keeps it only when the first batch runs faster
      than the plain graph (resnet50: about 1.4x here; efficientnet_lite0: slower, so not
      kept); ``on`` always uses it, ``off`` never. Vectors agree with the plain graph's to
      float rounding (checked on the first batch). Applies when the model runs in torch.
    - ``runtime``: for index runs, what runs the cut graph: ``torch``, or ``openvino``, which
      compiles the same FX graph for this CPU with Intel's OpenVINO (fp32 only, the CPU only;
      needs the ``openvino`` package). ``auto`` uses OpenVINO when it is installed and a CPU
      fp32 run embeds at least :data:`OPENVINO_MIN_IMAGES` images, if its vectors agree with
      torch's on a sample batch and it runs that batch faster (resnet50 1.5 to 2.1x,
      efficientnet_lite0 3 to 4.5x here; README, "Speed"). Queries always run in torch.
    """

    device: str = "auto"
    threads: int | None = None
    channels_last: bool | None = None
    micro_batch: int | None = None
    freeze: str = "auto"
    runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(
                f"unknown --device {self.device!r}", hint=f"choose one of: {', '.join(DEVICES)}"
            )
        if self.freeze not in FREEZES:
            raise ConfigError(
                f"unknown --freeze {self.freeze!r}", hint=f"choose one of: {', '.join(FREEZES)}"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"unknown --runtime {self.runtime!r}", hint=f"choose one of: {', '.join(RUNTIMES)}"
            )
        if self.runtime == "openvino" and not openvino_installed():
            raise ConfigError(
                "--runtime openvino needs the openvino package, which is not installed",
                hint="pip install openvino, or use --runtime auto or torch",
            )
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class Placement:
    """A :class:`Compute` resolved on this machine: the torch device and layout to use."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    freeze: str = "off"
    micro_batch: int | None = None  # None: the whole batch in one call
    # "auto" only where OpenVINO may be tried (CPU, fp32, installed); place() makes it
    # "torch" elsewhere.
    runtime: str = "torch"


def openvino_installed() -> bool:
    """Whether the optional OpenVINO runtime can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def prefer_passive_openmp() -> bool:
    """Make torch's OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY``).

    While indexing, decoding threads share the cores with the model's threads; spinning
    threads burn the time the decoders need, and on a busy machine 2 spinning model threads
    ran slower than 1 (README, "Speed"). Only works before torch is imported; a value the user
    set is kept. Returns True when the setting is in effect.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def resolve_device(device: str) -> str:
    """``auto`` -> the best device present; an explicit device that is missing raises
    :class:`ConfigError`."""
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (device == "cuda" and not cuda) or (device == "mps" and not mps):
        raise ConfigError(
            f"--device {device} is not available here",
            hint="use --device auto or cpu (this torch build or machine has no such device)",
        )
    return device


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@functools.cache
def fast_precisions(device: str) -> tuple[str, ...]:
    """The precisions ``device`` runs natively (not emulated), fp32 first.

    On CPU bf16 needs AVX-512 BF16 or AMX (oneDNN says so); fp16 needs AVX-512 FP16 or AMX-FP16.
    """
    import torch

    found = [DEFAULT_PRECISION]
    if device == "cpu":
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            found.append("bf16")
        if torch.ops.mkldnn._is_mkldnn_fp16_supported():
            found.append("fp16")
    elif device == "cuda":
        if torch.cuda.is_bf16_supported():
            found.append("bf16")
        found.append("fp16")
    elif device == "mps":
        found.append("fp16")
    return tuple(found)


def place(model: nn.Module, precision: str, compute: Compute) -> tuple[nn.Module, Placement]:
    """Move ``model`` (in place) to the device, dtype and layout ``compute`` resolves to.

    Applies ``compute.threads`` to torch. A precision the device only emulates still works,
    with a warning that it is slow. fp32 on CUDA stays true fp32 (TF32 is switched off), so an
    fp32 space means the same vectors on every device.
    """
    import torch

    device = resolve_device(compute.device)
    if compute.runtime == "openvino" and (device != "cpu" or precision != DEFAULT_PRECISION):
        raise ConfigError(
            f"--runtime openvino runs {DEFAULT_PRECISION} models on the CPU only, "
            f"not {precision} on {device}",
            hint=f"use --device cpu and --precision {DEFAULT_PRECISION}, or --runtime auto",
        )
    if compute.threads is not None:
        torch.set_num_threads(compute.threads)
    if precision not in fast_precisions(device):
        log.warning(
            "precision %s is not native on this %s (native: %s); it works, but slowly",
            precision,
            device,
            ", ".join(fast_precisions(device)),
        )
    if device == "cuda" and precision == DEFAULT_PRECISION:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
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
    return model, Placement(device, dtype, channels_last, compute.freeze, micro_batch, runtime)


def to_input(batch: torch.Tensor, placement: Placement) -> torch.Tensor:
    """A float32 CPU batch (B, 3, H, W) as the placed model takes it."""
    import torch

    batch = batch.to(device=placement.device, dtype=placement.dtype, non_blocking=True)
    if placement.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
