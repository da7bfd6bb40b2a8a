"""The flags of `index` that say which space and how to run: they arrive as an
:class:`ExtractorSpec` and a :class:`SyncOptions` with its :class:`Compute`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..compute import (
    CPU_MICRO_BATCH,
    DEVICES,
    FREEZE_MIN_IMAGES,
    FREEZES,
    OPENVINO_MIN_IMAGES,
    RUNTIMES,
    Compute,
    Device,
    Freeze,
    Runtime,
)
from ..config import (
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    METHODS,
    POOLS,
    PRECISION_CHOICES,
    ExtractorSpec,
    Method,
    Pool,
    PrecisionChoice,
)
from ..options import SyncOptions
from .options import apply, builds

if TYPE_CHECKING:
    from ..ingest import Engine

method_option = click.option(
    "--method",
    type=click.Choice(METHODS),
    help="How layers are read: fx (the graph stops at the layer), hook (forward hooks; "
    "the whole network runs), auto (fx, or hook when the model cannot be traced)  "
    "[default: auto]",
)

_SPEC_OPTIONS = [
    click.option(
        "--model",
        "-m",
        help=f"torchvision model name, {DEFAULT_MODEL}, or "
        f"package.module:factory  [default: {DEFAULT_MODEL}, or the library's space]",
    ),
    click.option(
        "--weights",
        "-w",
        help="Weights name (DEFAULT, IMAGENET1K_V2, ...), 'none' for "
        "seeded random init, or a state-dict file  [default: DEFAULT]",
    ),
    click.option(
        "--layer",
        "-l",
        "layers",
        multiple=True,
        help="FX node to read (repeatable)  [default: the model's own (efficientnet_lite0: "
        "_blocks.12 and _swish_1), else the node feeding the classifier]",
    ),
    click.option(
        "--pool",
        type=click.Choice(POOLS),
        help="Pooling of feature maps  [default: avg]",
    ),
    method_option,
]
precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    help="Number format of the model. auto: the library's space's, else the fastest this "
    "device runs natively (bf16 on CPUs with AVX-512 BF16 or AMX and on GPUs from Ampere, "
    "fp16 on older GPUs and MPS, else fp32; never int8). int8: quantised on the CPU with "
    "OpenVINO, calibrated on up to 300 of the images the first run indexes (needs "
    "featx-search[int8]). Part of the space: another one makes a new space  [default: auto]",
)


def _spec(
    *,
    model: str | None,
    weights: str | None,
    layers: Sequence[str],
    pool: Pool | None,
    precision: PrecisionChoice | None,
    method: Method | None,
) -> ExtractorSpec | None:
    if (
        model is None
        and weights is None
        and not layers
        and pool is None
        and precision is None
        and method is None
    ):
        return None  # keep the library's space
    return ExtractorSpec(
        model=model or DEFAULT_MODEL,
        weights=weights or DEFAULT_WEIGHTS,
        layers=tuple(layers),
        pool=pool,
        precision=precision or "auto",
        method=method or "auto",
    )


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--weights``, ``--layer``, ``--pool`` and ``--method``; with
    :data:`precision_option` somewhere on the command they arrive as ``spec``, an
    :class:`ExtractorSpec`, or None when none is given (the library's space)."""
    keys = ["model", "weights", "layers", "pool", "precision", "method"]
    return apply(builds("spec", _spec, keys)(func), _SPEC_OPTIONS)


micro_batch_option = click.option(
    "--micro-batch",
    type=click.IntRange(min=1),
    help="Images per model call  [default: "
    f"{CPU_MICRO_BATCH} on the CPU, which measured fastest; the whole batch on a GPU]",
)
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads the model uses (torch intra-op); with --engine ray, CPUs per actor  "
    "[default: cores; Ray: 1]",
)
device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the model runs; auto picks CUDA, else MPS, else the CPU.",
)
_GRAPH_OPTIONS = [
    click.option(
        "--channels-last/--no-channels-last",
        default=None,
        help="NHWC memory layout for convolutions  [default: on for cpu and cuda]",
    ),
    click.option(
        "--freeze",
        type=click.Choice(FREEZES),
        default="auto",
        show_default=True,
        help="Compile the model graph for inference (TorchScript + oneDNN); auto does so on the "
        f"CPU for runs of {FREEZE_MIN_IMAGES}+ images, keeping it only when it measures faster.",
    ),
    click.option(
        "--runtime",
        type=click.Choice(RUNTIMES),
        default="auto",
        show_default=True,
        help="What runs the model graph: torch, or OpenVINO (CPU; the openvino package). fp32: "
        f"auto uses OpenVINO for CPU runs of {OPENVINO_MIN_IMAGES}+ images when installed, "
        "if it gives torch's vectors and measures faster. A new bf16 space on the CPU is "
        "computed by OpenVINO unless torch is asked for (part of the space).",
    ),
]


def graph_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How the model graph runs: ``--channels-last``, ``--freeze`` and ``--runtime`` (read by
    :data:`builds_sync_options`)."""
    return apply(func, _GRAPH_OPTIONS)


batch_size_option = click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per committed transaction (and per step of the progress bar).",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Decoding threads; with --engine ray, model actors  [default: cores; Ray: the "
    "cluster's CPUs / --threads]",
)
retry_failed_option = click.option(
    "--retry-failed", is_flag=True, help="Try files that failed before again."
)
prune_empty_option = click.option(
    "--prune-empty",
    is_flag=True,
    help="Remove the stored files of a folder that is now empty (kept by default: an "
    "unmounted drive looks empty).",
)


def _sync_options(
    *,
    batch_size: int,
    workers: int | None,
    retry_failed: bool,
    prune_empty: bool,
    device: Device,
    threads: int | None,
    channels_last: bool | None,
    micro_batch: int | None,
    freeze: Freeze,
    runtime: Runtime,
) -> SyncOptions:
    compute = Compute(
        device=device,
        threads=threads,
        channels_last=channels_last,
        micro_batch=micro_batch,
        freeze=freeze,
        runtime=runtime,
    )
    return SyncOptions(
        batch_size=batch_size,
        workers=workers,
        retry_failed=retry_failed,
        prune_empty=prune_empty,
        compute=compute,
    )


builds_sync_options = builds(
    "options",
    _sync_options,
    [
        "batch_size",
        "workers",
        "retry_failed",
        "prune_empty",
        "device",
        "threads",
        "channels_last",
        "micro_batch",
        "freeze",
        "runtime",
    ],
)
"""Makes the values of the batch, worker, retry, prune and compute options (placed on the
command one by one, in the order its help lists them) arrive as ``options``, a
:class:`SyncOptions` with its :class:`Compute`."""

builds_embed_options = builds(
    "options",
    functools.partial(_sync_options, retry_failed=False, prune_empty=False),
    [
        "batch_size",
        "workers",
        "device",
        "threads",
        "channels_last",
        "micro_batch",
        "freeze",
        "runtime",
    ],
)
"""The same for `embed`, which has no library: no retry or prune options."""

ENGINES = ("local", "ray")
_ENGINE_OPTIONS = [
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="local",
        show_default=True,
        help="Where files are decoded and embedded: threads of this process, or Ray Data "
        "actors (the ray extra; --workers actors, --threads CPUs each). The scan and the "
        "library stay here either way.",
    ),
    click.option(
        "--ray-address",
        metavar="auto|ray://HOST:10001",
        help="The Ray cluster to run on  [default: a local Ray instance sized to this machine]",
    ),
]


def _engine(*, engine: str, ray_address: str | None) -> Engine | None:
    if engine == "local":
        if ray_address is not None:
            raise click.BadParameter("needs --engine ray", param_hint="--ray-address")
        return None
    from ..distributed import RayEngine  # Ray is imported only for this engine

    return RayEngine(ray_address)


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--engine`` and ``--ray-address``, arriving as ``engine``: None for the local engine,
    else a :class:`featx_search.distributed.RayEngine`."""
    return apply(builds("engine", _engine, ["engine", "ray_address"])(func), _ENGINE_OPTIONS)
