#!/usr/bin/env python
"""Indexing speed on a GPU (or, for its test, the CPU): the bare model per precision and batch
size, ``featx-search index`` end to end over a grid of precision, batch size and decode
workers, and decoding alone, so that the tables show whether a run is bound by decoding or by
the model. Made for one prepared run on a lent CUDA machine (docs/benchmarks.md, "Indexing
on a GPU").

On the photos of ``--photos`` (``--make N`` synthesises N there first when it holds fewer:
seeded smooth colour fields with grain, ``--size`` px, baseline JPEG quality 90, so the
script needs no photo set on a bare machine), for each model
(``name@weights``, weights ``none`` by default: random init, as fast as trained weights):

(a) the bare forward through the project's extractor (``load_extractor`` with
    ``Compute(device=..., runtime="torch", freeze="off")``) on already-decoded input (the
    decoded sample tiled to ``--forward-images``), per precision and batch size, images/s
    (``bench_index.model_rate``: numpy in, numpy out, so the copies to and from the device
    count), with the smallest cosine between its vectors and fp32's,
(b) ``featx-search index`` on all the photos into a new library, one subprocess per point of
    the grid ``--index-precisions`` x ``--index-batch-sizes`` x ``--workers`` (``--device``
    given; ``--micro-batch`` left at its default, the whole batch on a GPU), images/s over
    the run's own ``embed_seconds`` (``index --json``; start-up excluded),
(c) decoding alone: CPU ms/image on one thread (``bench_index.decode_ms``: draft decode, then
    resize, crop, normalise) and images/s of ``ingest.decode`` (what index runs) on each
    ``--workers`` count of threads.

``--budget-s`` trims the run to fit: each step is skipped, with a note, when the longest step
of its kind so far would not fit in what is left. Markdown tables go to stdout and, with
``--out DIR``, to ``DIR/bench_gpu.md`` beside ``DIR/bench_gpu.json``; both are rewritten
after every step, so a run cut short still leaves what it measured.

Usage:
    python3 scripts/bench_gpu.py --make 2000 --budget-s 400 --out $OUT   # on the GPU machine
    .venv/bin/python scripts/bench_gpu.py --device cpu --photos bench-data/photos-r2 \\
        --models resnet50 --index-precisions fp32 --workers 2 --batch-sizes 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bench_index import decode_ms, decoded_inputs, model_rate
from synthetic_library import cpu_model

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "bench-data" / "gpu-photos"  # gitignored
SUFFIXES = (".jpg", ".jpeg", ".png")
# A step of a kind not timed yet is assumed to take this long (seconds) against --budget-s.
FIRST_GUESS = {"forward": 20.0, "index": 30.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- photos -----------------------------------------------------------------------------------


def synth_photo(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A photo-sized JPEG (quality 90): a smooth colour field, mid-sized blotches and fine
    grain, blended; differs per seed. Its file size and draft decode time are close to those
    of ``bench_index``'s photos (docs/benchmarks.md, "Indexing on a GPU")."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size

    def layer(cw: int, ch: int, resample: Image.Resampling) -> Image.Image:
        small = rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8)
        return Image.fromarray(small, "RGB").resize((w, h), resample)

    base = layer(int(rng.integers(3, 8)), int(rng.integers(2, 6)), Image.Resampling.BICUBIC)
    blotches = layer(max(2, w // 24), max(2, h // 24), Image.Resampling.BICUBIC)
    grain = layer(max(2, w // 2), max(2, h // 2), Image.Resampling.BILINEAR)
    picture = Image.blend(Image.blend(base, blotches, 0.35), grain, 0.15)
    tmp = path.with_suffix(".tmp")
    picture.save(tmp, "JPEG", quality=90)
    os.replace(tmp, path)


def make_photos(folder: Path, n: int, size: tuple[int, int], jobs: int) -> int:
    """Make ``synth-WxH-NNNNN.jpg`` 0..n-1 in ``folder`` where missing (threads: PIL lets go
    of the GIL while it resizes and encodes); returns how many were made."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = [folder / f"synth-{w}x{h}-{i:05d}.jpg" for i in range(n)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        log(f"making {len(todo)} photos of {w}x{h} in {folder} ...")
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            list(pool.map(lambda job: synth_photo(job[0], job[1], size), todo))
    return len(todo)


def list_photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = (0, 0)
    if min(size) < 16:
        raise SystemExit(f"--size: expected WIDTHxHEIGHT of at least 16 px, got {text!r}")
    return size


# -- the budget -------------------------------------------------------------------------------


class Budget:
    """Seconds the whole run may take (0: no limit). A step runs when the longest step of its
    kind so far (or :data:`FIRST_GUESS`) still fits; otherwise it is noted as skipped."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()
        self.longest: dict[str, float] = {}
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.seconds else float("inf")

    def allows(self, kind: str, what: str) -> bool:
        guess = self.longest.get(kind, FIRST_GUESS.get(kind, 0.0))
        if guess <= self.left():
            return True
        self.skipped.append(
            f"{what}: skipped at {self.elapsed():.0f} s, about {guess:.0f} s would pass "
            f"--budget-s {self.seconds:g}"
        )
        log(f"   {self.skipped[-1]}")
        return False

    def took(self, kind: str, seconds: float) -> None:
        self.longest[kind] = max(seconds, self.longest.get(kind, 0.0))


# -- the machine ------------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on: GPU (torch and nvidia-smi), CPU, cores, versions,
    the precisions the device runs natively (what ``--precision auto`` resolves from)."""
    import torch

    from featx_search.compute import native_precisions

    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "native_precisions": list(native_precisions(device)),
        "load_average": round(os.getloadavg()[0], 1),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["capability"] = f"{props.major}.{props.minor}"
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["nvidia_smi"] = smi.stdout.strip().splitlines()[-1] if smi.stdout else ""
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = "not available"
    return info


# -- measurements -----------------------------------------------------------------------------


def parse_model(item: str) -> tuple[str, str]:
    """``name`` or ``name@weights`` -> (name, weights); weights ``none`` unless given."""
    name, _, weights = item.partition("@")
    return name, weights or "none"


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def decode_rates(
    sample: Sequence[Path], paths: Sequence[Path], preprocess: Any, workers: Sequence[int]
) -> list[dict[str, Any]]:
    """(c) per model: CPU ms/image on one thread over ``sample``, and images/s of
    ``ingest.decode`` (read, hash, draft decode, preprocess: what an index run's decoders do)
    over ``paths`` on each thread count."""
    from featx_search.ingest import decode

    rows: list[dict[str, Any]] = []
    t0 = time.thread_time()
    for p in sample:
        decode(p, preprocess)
    rows.append({"threads": 1, "cpu_ms": 1000 * (time.thread_time() - t0) / len(sample)})
    for w in workers:
        with ThreadPoolExecutor(w) as pool:
            list(pool.map(lambda p: decode(p, preprocess), paths[:w]))  # threads started
            t0 = time.perf_counter()
            list(pool.map(lambda p: decode(p, preprocess), paths))
            rows.append({"threads": w, "images_per_s": len(paths) / (time.perf_counter() - t0)})
    return rows


def forward_rows(
    spec: Any,
    device: str,
    precision: str,
    inputs: np.ndarray,
    unique: int,
    batches: Sequence[int],
    reference: np.ndarray | None,
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """(a) for one precision: images/s per batch size, and the vectors of the first
    ``unique`` inputs (the reference when this is fp32)."""
    from dataclasses import replace

    from featx_search import Compute
    from featx_search.extract import load_extractor

    compute = Compute(device=device, runtime="torch", freeze="off")  # type: ignore[arg-type]
    extractor = load_extractor(replace(spec, precision=precision), compute)
    vectors = extractor.embed(inputs[:unique])
    min_cos = float(np.min(np.sum(vectors * reference, axis=1))) if reference is not None else None
    rows = []
    for batch in batches:
        rate = model_rate(extractor, inputs, batch)
        rows.append({"batch": batch, "images_per_s": rate, "min_cos_fp32": min_cos})
        log(f"   {precision} batch {batch}: {rate:.1f} img/s")
    del extractor
    free_device_memory(device)
    return rows, vectors


def free_device_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def index_run(
    folder: Path,
    model: str,
    weights: str,
    device: str,
    precision: str,
    batch: int,
    workers: int,
    timeout: float,
) -> dict[str, Any]:
    """(b): ``featx-search index folder`` into a new library in a subprocess; its JSON
    report with the wall seconds, or ``error`` (the last line it printed)."""
    with tempfile.TemporaryDirectory(prefix="featx-gpu-") as tmp:
        cmd = [
            sys.executable,
            *("-m", "featx_search", "--db", f"{tmp}/bench.db", "index", str(folder)),
            *("-m", model, "-w", weights, "--device", device, "--precision", precision),
            *("--batch-size", str(batch), "--workers", str(workers), "--json"),
        ]
        # faulthandler: a run that hangs is stopped with SIGABRT and prints every thread's stack.
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        t0 = time.perf_counter()
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            try:
                _, stderr = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                _, stderr = child.communicate()
            log("\n".join(stderr.strip().splitlines()[-60:]))
            return {"error": f"timed out after {timeout:.0f} s (stacks in the log)"}
        wall = time.perf_counter() - t0
    if child.returncode != 0:
        lines = (stderr or stdout).strip().splitlines()
        log("\n".join(lines[-20:]))
        return {"error": f"exit {child.returncode}: {lines[-1] if lines else ''}"[:200]}
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    report["wall_seconds"] = wall
    return report


# -- the run ----------------------------------------------------------------------------------


class Run:
    """Everything measured so far, written out after every step."""

    def __init__(self, out: Path | None, info: dict[str, Any], budget: Budget) -> None:
        self.out = out
        self.budget = budget
        self.data: dict[str, Any] = {
            "machine": info,
            "photos": {},
            "decode": [],
            "forward": [],
            "index": [],
            "notes": [],
            "skipped": budget.skipped,
        }

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.budget.elapsed(), 1)
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "bench_gpu.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "bench_gpu.md").write_text(tables(self.data) + "\n")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from featx_search.config import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="JPEG/PNG photos to index")
    parser.add_argument(
        "--make", type=int, default=0, help="synthesise this many photos in --photos first"
    )
    parser.add_argument("--size", default="2000x1333", help="size of synthesised photos")
    parser.add_argument("--models", default="resnet50,efficientnet_lite0", help="name[@weights]")
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="(a) precisions")
    parser.add_argument("--batch-sizes", default="16,64,256", help="(a) batch sizes")
    parser.add_argument("--sample", type=int, default=64, help="photos decoded for (a) and (c)")
    parser.add_argument(
        "--forward-images", type=int, default=1024, help="(a) inputs: the sample tiled to this"
    )
    parser.add_argument("--index-precisions", default="bf16,fp16", help="(b) precisions")
    parser.add_argument("--index-batch-sizes", default="256,64", help="(b) batch sizes")
    parser.add_argument("--workers", default="16,8,4", help="(b) and (c) decode threads")
    parser.add_argument("--budget-s", type=float, default=0.0, help="trim to fit (0: no limit)")
    parser.add_argument(
        "--step-timeout", type=float, default=120.0, help="seconds one index run may take"
    )
    parser.add_argument("--out", type=Path, help="write bench_gpu.json and bench_gpu.md here")
    args = parser.parse_args(argv)
    args.size = parse_size(args.size)
    for name in ("precisions", "index_precisions"):
        bad = [p for p in _names(getattr(args, name)) if p not in PRECISIONS or p == "int8"]
        if bad:
            parser.error(f"--{name.replace('_', '-')}: {bad} not among fp32, bf16, fp16")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    jobs = os.cpu_count() or 1
    made = make_photos(args.photos, args.make, args.size, jobs) if args.make else 0
    paths = list_photos(args.photos) if args.photos.is_dir() else []
    if not paths:
        raise SystemExit(f"--photos: no JPEG/PNG photos under {args.photos} (hint: --make N)")

    import torch

    from featx_search import ExtractorSpec

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here "
            "(hint: --device cpu)"
        )
    device = args.device
    run = Run(args.out, machine(args.device), budget)
    workers = _ints(args.workers)
    sample = sorted(random.Random(0).sample(paths, min(args.sample, len(paths))))
    from PIL import Image

    sides = []
    for p in paths:
        with Image.open(p) as img:
            sides.append(max(img.size))
    run.data["photos"] = {
        "folder": str(args.photos),
        "n": len(paths),
        "made_now": made,
        "long_side_px": [min(sides), max(sides)],
        "mean_kib": round(sum(p.stat().st_size for p in paths) / len(paths) / 1024),
    }
    fast, plain = decode_ms(sample)
    run.data["decode_ms"] = {"draft": fast, "full": plain}
    log(f"{len(paths)} photos; decode {fast:.1f} ms/image (draft), {plain:.1f} (full size)")
    run.save()
    for item in _names(args.models):
        name, weights = parse_model(item)
        model = f"{name}@{weights}"
        spec = ExtractorSpec(model=name, weights=weights)
        try:
            from featx_search.extract.registry import build

            preprocess = build(spec).preprocess
        except Exception as err:  # a model this machine cannot build: note it, go on
            run.data["notes"].append(f"{model}: not run, {first_line(err)}")
            log(run.data["notes"][-1])
            run.save()
            continue
        log(f"-- {model}: decode (c)")
        # Threads timed on 16 photos each (at least the sample): a short pass is noisy.
        many = paths[: max(len(sample), 16 * max(workers, default=1))]
        for row in decode_rates(sample, many, preprocess, workers):
            run.data["decode"].append({"model": model, **row})
        inputs = decoded_inputs(sample, preprocess)
        unique = len(inputs)
        reps = -(-max(args.forward_images, *_ints(args.batch_sizes)) // unique)
        inputs = np.concatenate([inputs] * reps)[: max(args.forward_images, unique)]
        reference = None
        for precision in _names(args.precisions):
            what = f"(a) {model} {precision}"
            if not budget.allows("forward", what):
                continue
            log(f"-- {what} on {len(inputs)} inputs")
            t0 = time.perf_counter()
            try:
                rows, vectors = forward_rows(
                    spec, args.device, precision, inputs, unique, _ints(args.batch_sizes), reference
                )
            except Exception as err:
                rows, vectors = [{"error": first_line(err)}], None
                log(f"   {rows[0]['error']}")
                free_device_memory(device)
            if precision == "fp32" and vectors is not None:
                reference = vectors
            budget.took("forward", time.perf_counter() - t0)
            run.data["forward"].extend({"model": model, "precision": precision, **r} for r in rows)
            run.save()
        del inputs
        for w in workers:
            for precision in _names(args.index_precisions):
                for batch in _ints(args.index_batch_sizes):
                    what = f"(b) {model} {precision} batch {batch} workers {w}"
                    if not budget.allows("index", what):
                        continue
                    log(f"-- {what}")
                    t0 = time.perf_counter()
                    timeout = min(args.step_timeout, max(30.0, budget.left()))
                    report = index_run(
                        args.photos, name, weights, args.device, precision, batch, w, timeout
                    )
                    budget.took("index", time.perf_counter() - t0)
                    row = {"model": model, "precision": precision, "batch": batch, "workers": w}
                    if "error" in report:
                        row["error"] = report["error"]
                    else:
                        row.update(
                            added=report["added"],
                            failed=report["failed"],
                            embed_seconds=report["embed_seconds"],
                            seconds=report["seconds"],
                            wall_seconds=round(report["wall_seconds"], 2),
                            images_per_s=report["added"] / max(report["embed_seconds"], 1e-9),
                        )
                        log(f"   {row['images_per_s']:.1f} img/s, {row['wall_seconds']:.1f} s")
                    run.data["index"].append(row)
                    run.save()
    run.save()
    print(tables(run.data))


# -- tables -----------------------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}"


def tables(data: dict[str, Any]) -> str:
    """The run as markdown: the machine, then (c), (a) and (b), then what was skipped."""
    m = data["machine"]
    photos = data.get("photos") or {}
    gpu = (
        f"{m['gpu']} ({m['gpu_memory_gib']} GiB, capability {m['capability']}; nvidia-smi: "
        f"{m.get('nvidia_smi', '')})"
        if "gpu" in m
        else "no GPU"
    )
    out = [
        f"Device {m['device']}: {gpu}. CPU {m['cpu']}, {m['cores']} cores, load average "
        f"{m['load_average']} at the start. Python {m['python']}, torch {m['torch']}"
        + (f" (CUDA {m['cuda']})" if m.get("cuda") else "")
        + f"; native precisions: {', '.join(m['native_precisions'])}.",
    ]
    if photos:
        out.append(
            f"{photos['n']} photos in {photos['folder']}, long side "
            f"{photos['long_side_px'][0]}-{photos['long_side_px'][1]} px, "
            f"{photos['mean_kib']} KiB on average."
        )
    if "decode_ms" in data:
        d = data["decode_ms"]
        out.append(
            f"Decode as bench_index measures it, CPU ms/image on one thread: "
            f"{d['draft']:.1f} draft, {d['full']:.1f} full size."
        )
    out += ["", "(c) decoding alone (`ingest.decode`)", ""]
    out += ["| model | threads | images/s | CPU ms/image |", "| --- | ---: | ---: | ---: |"]
    for r in data["decode"]:
        out.append(
            f"| {r['model']} | {r['threads']} | {_num(r.get('images_per_s'))} "
            f"| {_num(r.get('cpu_ms'))} |"
        )
    out += ["", "(a) the bare forward on decoded input", ""]
    out += ["| model | precision | batch | images/s | min cos vs fp32 |"]
    out += ["| --- | --- | ---: | ---: | ---: |"]
    for r in data["forward"]:
        if "error" in r:
            out.append(f"| {r['model']} | {r['precision']} | - | {r['error']} | - |")
            continue
        out.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {_num(r['images_per_s'])} "
            f"| {_num(r['min_cos_fp32'], 5)} |"
        )
    decode = {(r["model"], r["threads"]): r.get("images_per_s") for r in data["decode"]}
    forward = {
        (r["model"], r["precision"], r["batch"]): r["images_per_s"]
        for r in data["forward"]
        if "error" not in r
    }
    out += ["", "(b) `featx-search index`, end to end (images/s over `embed_seconds`)", ""]
    out += [
        "| model | precision | batch | workers | images/s | run s | start-up s "
        "| (c) images/s | (a) images/s | bound by | of that bound |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in data["index"]:
        head = f"| {r['model']} | {r['precision']} | {r['batch']} | {r['workers']} |"
        if "error" in r:
            out.append(f"{head} {r['error']} | - | - | - | - | - | - |")
            continue
        c = decode.get((r["model"], r["workers"]))
        a = forward.get((r["model"], r["precision"], r["batch"]))
        bound, share = "-", None  # both limits measured: the lower one bounds the run
        if c and a:
            limit, bound = min((c, "decode"), (a, "model"))
            share = r["images_per_s"] / limit
        out.append(
            f"{head} {_num(r['images_per_s'])} | {_num(r['wall_seconds'])} "
            f"| {_num(r['wall_seconds'] - r['embed_seconds'])} | {_num(c)} | {_num(a)} "
            f"| {bound} | {_num(share, 2)} |"
        )
    for note in data["notes"] + data["skipped"]:
        out.append(f"\n- {note}")
    out.append(f"\nWhole run {data.get('elapsed_s', 0):.0f} s.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
