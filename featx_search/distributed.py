"""The Ray engine: a sync's files decoded and embedded on Ray Data actors (the ``ray`` extra).

Only decoding and embedding leave the process: the scan, the plan and the store stay with the
caller, whose one writer commits each batch that comes back (:class:`featx_search.ingest.Writer`).
Imported only when ``engine="ray"`` is asked for; Ray itself is imported when an engine runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .compute import Compute
from .config import SpaceSpec
from .errors import ConfigError, FeatxError
from .ingest import Embedded, Outcome, decode
from .options import SyncOptions
from .plan import Job

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'featx-search[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or :class:`ConfigError` saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Core alone is not enough
    except ImportError as err:
        raise ConfigError(
            f"engine 'ray' needs Ray Data, which is not installed ({err})",
            hint=INSTALL_HINT,
            param="engine",
        ) from None
    return ray


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """Ray, initialised: the running instance when this process has one, else the cluster at
    ``address`` (``auto``, ``ray://HOST:10001``), else a local instance sized to this machine;
    what this call started is shut down at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


class _Embedder:
    """One Ray actor's model: the space's extractor, built once from the stored spec, and a
    few decoding threads. A call takes a batch of paths (with their positions in the plan)
    and returns their vectors and outcomes as columns."""

    def __init__(self, spec_json: str, compute: Compute, images: int, batch_size: int) -> None:
        from .extract import extractor_for, reproduces

        self.spec = SpaceSpec.from_dict(json.loads(spec_json))
        self.pool = ThreadPoolExecutor(compute.threads or 1, thread_name_prefix="featx-decode")
        # A featx error here (a worker that would make other vectors) goes back to the
        # driver as data from every call: Ray passes exceptions on only as text.
        self.error: FeatxError | None = None
        try:
            self.extractor = extractor_for(self.spec, compute)
            reproduces(self.extractor, self.spec, writing=True)  # same vectors on every worker
            self.extractor.prepare_run(images, batch_size)
        except FeatxError as err:
            self.error = err

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.error is not None:
            err, n = self.error, len(batch["at"])
            return {
                "at": batch["at"],
                "fatal": np.array([type(err).__name__] * n, dtype=object),
                "message": np.array([err.message] * n, dtype=object),
                "hint": np.array([err.hint or ""] * n, dtype=object),
            }
        preprocess = self.spec.preprocess
        decoded = list(self.pool.map(lambda p: decode(Path(p), preprocess), batch["path"]))
        ok = np.array([array is not None for array, _ in decoded], dtype=bool)
        vectors = np.zeros((len(decoded), self.spec.dim), np.float32)
        if ok.any():
            vectors[ok] = self.extractor.embed(np.stack([a for a, _ in decoded if a is not None]))
        outcomes = [outcome for _, outcome in decoded]
        return {"at": batch["at"], "ok": ok, "vector": vectors, **_columns(outcomes)}


def _columns(outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    """Outcomes as plain columns (strings, "" for none; -1 for no size) for Arrow."""
    return {
        "error": np.array([o.error or "" for o in outcomes], dtype=object),
        "width": np.array([o.size[0] if o.size else -1 for o in outcomes], np.int64),
        "height": np.array([o.size[1] if o.size else -1 for o in outcomes], np.int64),
        "content_hash": np.array([o.content_hash or "" for o in outcomes], dtype=object),
        "taken_at": np.array(
            [o.taken_at.isoformat() if o.taken_at else "" for o in outcomes], dtype=object
        ),
    }


def _outcomes(batch: dict[str, np.ndarray]) -> list[Outcome]:
    """The inverse of :func:`_columns`."""
    return [
        Outcome(
            None if ok else str(error),
            (int(w), int(h)) if w >= 0 else None,
            str(digest) or None,
            datetime.fromisoformat(str(taken)) if taken else None,
        )
        for ok, error, w, h, digest, taken in zip(
            batch["ok"],
            batch["error"],
            batch["width"],
            batch["height"],
            batch["content_hash"],
            batch["taken_at"],
            strict=True,
        )
    ]


def _fatal(block: dict[str, np.ndarray]) -> FeatxError:
    """The error a worker sent back instead of vectors, as the same featx error class."""
    from . import errors

    kind = getattr(errors, str(block["fatal"][0]), FeatxError)
    cls = kind if isinstance(kind, type) and issubclass(kind, FeatxError) else FeatxError
    return cls(str(block["message"][0]), hint=str(block["hint"][0]) or None)


@contextlib.contextmanager
def _quiet(ray: ModuleType) -> Iterator[None]:
    """No Ray Data progress bars or plan printing (the CLI draws its own bar), restored after."""
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = False
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved


class RayEngine:
    """Decoding and embedding on Ray Data (see :class:`featx_search.ingest.Engine`).

    The planned paths become a dataset (``ray.data.from_items``), mapped in batches of
    ``options.batch_size`` by a pool of actors, each holding one extractor built from the
    space's stored spec (refusing a worker whose libraries would change the vectors). The
    pool has ``options.workers`` actors, by default one per ``threads`` CPUs of the cluster
    (``options.compute.threads``, default 1: torch threads and decoding threads of an actor);
    with ``device="cuda"`` one per GPU. Vectors and per-file failures come back to the
    caller, batch by batch, as they finish (not in plan order).

    ``address``: ``auto`` or ``ray://HOST:10001`` for a running cluster; None starts a local
    instance sized to this machine unless this process already runs Ray. Raises
    :class:`ConfigError` when Ray Data is not installed.
    """

    def __init__(self, address: str | None = None) -> None:
        require_ray()
        self.address = address

    def __call__(
        self, jobs: Sequence[Job], spec: SpaceSpec, options: SyncOptions, stop: threading.Event
    ) -> Generator[Embedded, None, None]:
        if not jobs:
            return
        with connected(self.address) as ray, _quiet(ray):
            yield from self._run(ray, jobs, spec, options, stop)

    def _run(
        self,
        ray: ModuleType,
        jobs: Sequence[Job],
        spec: SpaceSpec,
        options: SyncOptions,
        stop: threading.Event,
    ) -> Generator[Embedded, None, None]:
        compute = options.compute
        threads = compute.threads or 1
        resources = ray.cluster_resources()
        gpu = compute.device == "cuda"
        per_actor: dict[str, float] = {"num_gpus": 1} if gpu else {"num_cpus": threads}
        slots = resources.get("GPU", 0) if gpu else resources.get("CPU", 1) // threads
        actors = max(1, min(options.workers or int(slots), len(jobs)))
        compute = replace(compute, threads=threads)
        items = [{"at": i, "path": str(job.info.path)} for i, job in enumerate(jobs)]
        dataset = ray.data.from_items(items).map_batches(
            _Embedder,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "spec_json": json.dumps(spec.to_dict()),
                "compute": compute,
                "images": -(-len(jobs) // actors),
                "batch_size": options.batch_size,
            },
            **per_actor,
        )
        log.info("embedding %d files on %d Ray actors", len(jobs), actors)
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        size = options.batch_size
        try:
            for block in batches:
                if "fatal" in block:
                    raise _fatal(block)
                for start in range(0, len(block["at"]), size):  # a block may hold several
                    batch = {name: column[start : start + size] for name, column in block.items()}
                    ok = np.asarray(batch["ok"], bool)
                    vectors = np.ascontiguousarray(np.asarray(batch["vector"])[ok], np.float32)
                    outcomes = zip(batch["at"].tolist(), _outcomes(batch), strict=True)
                    yield [(jobs[i], outcome) for i, outcome in outcomes], vectors
                if stop.is_set():
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
