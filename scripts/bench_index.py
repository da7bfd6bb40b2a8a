#!/usr/bin/env python
"""Indexing speed: featx-search end to end against the bare model, a decode-only pass and the
source article's per-image recipe, on at least 500 real photos. Prints ratios measured side by
side in one run (absolute numbers depend on how busy the machine is).

The photo set is built once into ``bench-data/`` (gitignored) from Debian's
``mate-backgrounds`` photos: ``apt-get download mate-backgrounds`` and ``dpkg -x`` unpack them
into ``bench-data/source`` (or give ``--source DIR`` with any JPEG/PNG photos). Each bench
photo is a seeded random crop of one source photo (aspect 4:3, 3:2, 16:9, 1:1, portrait),
resized so its long side is one of 1280 to 5640 px, re-encoded as a baseline JPEG at
quality 75-95.

For each model (``name`` or ``name:weights``) it measures:

(a) every forward the project can run on this CPU, on already-decoded input: each precision
    (fp32, bf16, fp16; those the CPU only emulates on a few images) in the plain torch graph
    and frozen (TorchScript), fp32 and bf16 in OpenVINO when installed (bf16 there is a
    space OpenVINO computes, the default on CPUs with native bf16, timed as an index run
    prepares it, in throughput streams, and as queries run it, one request:
    ``openvino-1``), int8 (OpenVINO, calibrated on
    the sample itself; when nncf is installed; timed, but not a candidate for L, since it
    loses retrieval quality), and fp32 in the NCHW layout
    for comparison (channels_last is the default); each timed, with the
    smallest cosine between its vectors and the plain fp32 graph's and how many of the
    top-5 neighbours (among the sample, in fp32) its queries keep. The fastest is the one L
    uses; which one the defaults pick (``--precision auto``, ``--runtime auto``,
    ``--freeze auto`` for a run of n images and of a large library) is printed beside it,
(b) ``featx-search index`` with its defaults, as a subprocess on the first n/3 and on all n
    photos (60 and 180, as the issue's check does), each into a new library, --repeat times
    (fastest kept); b = (n - n/3) / (t_n - t_n/3) cancels start-up (imports, model load,
    converting a graph); the small run must outlast the decoders' head start (two batches
    decoded while the model loads), or b comes out above what the pipeline does,
(c) the article's recipe: per image, PIL open, torchvision transforms, the whole model with a
    forward hook on the layer featx-search reads, and ``faiss.IndexFlatIP.add``; in a child
    process with the default OpenMP settings, run before and after (b), fastest kept,
(d) CPU ms/image of the fastest decode (draft/reduce, then resize, crop, normalise) alone,
    on one thread; also the plain full-resolution decode, for comparison.

Then L = 1 / (d / cores + 1 / a), a the fastest forward of (a): the best any pipeline could do
with this decode and this model on this CPU; and b/L, b/c, peak RSS of both (b) runs, and
"steady": one more full run (through the Python API, as the CLI runs it), its images/s from
the commit of its third batch to its last (start-up excluded without subtracting two runs,
whose start-ups vary by a second or more: a new space's first run exports and compiles its
model), fastest of --repeat. Which precisions the CPU runs natively comes from what it reports
(``featx_search.compute.native_precisions``), not from these timings.

Like the CLI, this process sets OMP_WAIT_POLICY=PASSIVE before torch loads, so (a) gets the
same OpenMP setting as (b); (c) keeps the default one, which is faster for its one-image
forwards (3.9 against 3.3 img/s for resnet50 here).

Usage:
    nice -n 10 .venv/bin/python scripts/bench_index.py            # 500 photos, both models
    .venv/bin/python scripts/bench_index.py --n 40 --models efficientnet_lite0   # quick
    .venv/bin/python scripts/bench_index.py --forwards-only --photos DIR   # (a) only: every
        # precision (fp32, bf16, int8, ...) side by side, no index runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featx_search.cli.process import prefer_passive_openmp

RECIPE_CHILD = "FEATX_BENCH_RECIPE_CHILD"

# As the CLI does, before torch loads, for (a) and (b); (c) runs in a child process that keeps
# the default OpenMP settings, as the article's code would run (see recipe_in_child).
if os.environ.get(RECIPE_CHILD) != "1":
    prefer_passive_openmp()
ROOT = Path(__file__).resolve().parent.parent
RECIPE = 2  # bump when the way bench photos are made changes
LONG_SIDES = (1280, 1920, 2560, 3264, 4032, 4608, 5640)
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)
WEIGHTS = {"resnet50": "none", "efficientnet_lite0": "DEFAULT"}  # when --models names none
# Graphs (a) times: the plain torch FX graph, frozen TorchScript, OpenVINO (fp32 only).
GRAPHS = ("plain", "frozen", "openvino")
# What prepare_run is told for "a large library": every conversion auto allows.
LARGE_RUN = 100_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the photo set ------------------------------------------------------------------------


def fetch_source(cache: Path) -> Path:
    """The mate-backgrounds photos, unpacked under ``cache/source`` (apt-get download)."""
    target = cache / "source"
    found = target / "usr/share/backgrounds/mate"
    if found.is_dir():
        return found
    work = cache / "deb"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "mate-backgrounds"], cwd=work, check=True)
    deb = next(work.glob("mate-backgrounds_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True)
    return found


def build_set(cache: Path, source: Path, n: int) -> list[Path]:
    """``n`` bench photos in ``cache/photos-r<RECIPE>`` (made once, reused)."""
    folder = cache / f"photos-r{RECIPE}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not sources:
        raise SystemExit(f"no JPEG/PNG photos under {source}")
    paths = [folder / f"{i:04d}.jpg" for i in range(n)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if todo:
        log(f"making {len(todo)} bench photos in {folder} (once) ...")
    loaded: dict[Path, Image.Image] = {}  # each source decoded once (about 0.5 GB in all)
    for i in todo:
        rng = random.Random(i)
        src_path = sources[i % len(sources)]
        if src_path not in loaded:
            with Image.open(src_path) as src:
                loaded[src_path] = src.convert("RGB")
        img = loaded[src_path]
        w, h = img.size
        aspect = rng.choice(ASPECTS)
        area = rng.uniform(0.45, 1.0)
        cw = min(w, round((w * h * area * aspect) ** 0.5))
        ch = min(h, round(cw / aspect))
        cw = min(cw, round(ch * aspect))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        long_side = LONG_SIDES[i % len(LONG_SIDES)]
        scale = long_side / max(cw, ch)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        img = img.resize(size, Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=3.0)
        tmp = paths[i].with_suffix(".tmp")
        img.save(tmp, "JPEG", quality=rng.randint(75, 95))
        os.replace(tmp, paths[i])
    return paths


def subset(cache: Path, paths: list[Path]) -> Path:
    """A folder holding exactly ``paths`` (hard links), for one ``featx-search index`` run."""
    tag = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:8]
    folder = cache / "sets" / f"first-{len(paths)}-{tag}"
    if folder.is_dir() and len(list(folder.iterdir())) == len(paths):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, p in enumerate(paths):
        name = f"{i:04d}{p.suffix.lower()}"  # names from several folders may collide
        try:
            os.link(p, folder / name)
        except OSError:
            shutil.copy2(p, folder / name)
    return folder


# -- measurements -------------------------------------------------------------------------


def decode_ms(paths: list[Path]) -> tuple[float, float]:
    """CPU ms/image on this thread: (fast decode + preprocess, plain full decode + same)."""
    from featx_search.extract import IMAGENET
    from featx_search.images import decode, decode_file, preprocess

    fast = plain = 0.0
    for p in paths:
        t0 = time.thread_time()
        preprocess(decode_file(p, min_side=IMAGENET.resize).image, IMAGENET)
        t1 = time.thread_time()
        preprocess(decode(p)[0], IMAGENET, reducing_gap=None)
        t2 = time.thread_time()
        fast, plain = fast + t1 - t0, plain + t2 - t1
    return 1000 * fast / len(paths), 1000 * plain / len(paths)


def decoded_inputs(paths: list[Path], spec: object) -> np.ndarray:
    from featx_search.images import load_input

    return np.stack([load_input(p, spec) for p in paths])  # type: ignore[arg-type]


def model_rate(extractor: object, inputs: np.ndarray, batch: int, rounds: int = 2) -> float:
    """Images/s of ``extractor.embed`` over ``inputs`` in batches (after one warm-up batch)."""
    embed = extractor.embed  # type: ignore[attr-defined]
    embed(inputs[:batch])
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(0, len(inputs), batch):
            embed(inputs[i : i + batch])
        best = max(best, len(inputs) / (time.perf_counter() - t0))
    return best


def same_top5(index: np.ndarray, exact: np.ndarray, other: np.ndarray) -> float:
    """Share of the top-5 neighbours in ``index`` (self excluded) that queries embedded with
    another precision (``other``) get in common with the same queries in fp32 (``exact``)."""

    def top5(queries: np.ndarray) -> np.ndarray:
        sims = queries @ index.T
        sims[np.arange(len(queries)), np.arange(len(queries))] = -np.inf
        return np.argsort(-sims, axis=1, kind="stable")[:, :5]

    a, b = top5(exact), top5(other)
    return float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b, strict=True)]))


def parse_model(item: str) -> tuple[str, str]:
    """``name`` or ``name@weights`` -> (name, weights); the weights of :data:`WEIGHTS`, else
    DEFAULT."""
    name, _, weights = item.partition("@")
    return name, weights or WEIGHTS.get(name, "DEFAULT")


@dataclass(frozen=True)
class Forward:
    """One way (a) ran the model: precision, graph, images/s and how its vectors compare
    with the plain fp32 graph's (``error`` says why it could not run)."""

    precision: str
    graph: str
    rate: float = 0.0
    native: bool = True
    images: int = 0
    min_cosine: float = float("nan")
    top5: float = float("nan")
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.precision} {self.graph}"


def graph_of(extractor: Any) -> str:
    """What runs an extractor's graph: ``openvino`` (also a space OpenVINO computes),
    ``frozen`` or ``plain``."""
    if extractor.runtime == "openvino" or extractor.space.engine == "openvino":
        return "openvino"
    return "frozen" if extractor.frozen else "plain"


def forwards(
    spec: Any, inputs: np.ndarray, exact: np.ndarray, batch: int, emulated_images: int
) -> list[Forward]:
    """(a): every precision in every graph that can run it here, each timed on ``inputs``
    (on the first ``emulated_images`` where the CPU only emulates the precision), with its
    vectors against ``exact`` (the plain fp32 graph's on ``inputs``)."""
    from dataclasses import replace

    from featx_search.compute import native_precisions, openvino_installed
    from featx_search.config import PRECISIONS

    native = native_precisions("cpu")
    rows = []
    for precision in PRECISIONS:
        if precision == "int8":
            rows.append(_forward_int8(replace(spec, precision="int8"), inputs, exact, batch))
            continue
        fast = precision in native
        some = inputs if fast else inputs[: max(1, emulated_images)]
        for graph in GRAPHS:
            # OpenVINO runs fp32 graphs, and computes bf16 spaces (their own engine).
            if graph == "openvino" and (
                precision not in ("fp32", "bf16") or not openvino_installed()
            ):
                continue
            rows.append(_forward(replace(spec, precision=precision), graph, some, exact, batch))
            rows[-1] = replace(rows[-1], native=fast)
            if graph == "openvino" and precision == "bf16":  # as queries run it, for comparison
                one = _forward(replace(spec, precision=precision), "openvino-1", some, exact, batch)
                rows.append(replace(one, native=fast))
    # The other layout, for comparison (channels_last is the default on the CPU).
    nchw = _forward(replace(spec, precision="fp32"), "plain", inputs, exact, batch, nchw=True)
    rows.insert(1, replace(nchw, graph="plain NCHW"))
    return rows


def _forward(
    spec: Any, graph: str, inputs: np.ndarray, exact: np.ndarray, batch: int, *, nchw: bool = False
) -> Forward:
    """One forward of (a): ``spec`` run by ``graph``, timed on ``inputs``. ``openvino-1``: a
    space OpenVINO computes with the model as queries run it (one infer request, no
    streams: the run is not prepared)."""
    from featx_search import Compute
    from featx_search.extract import load_extractor

    compute = Compute(
        device="cpu",
        channels_last=False if nchw else None,
        freeze="on" if graph == "frozen" else "off",
        runtime="openvino" if graph.startswith("openvino") else "torch",
    )
    extractor = load_extractor(spec, compute)
    if graph != "openvino-1":
        extractor.prepare_run(LARGE_RUN, batch)
        if graph == "openvino":  # attached on the first batch; its streams compiled, timed after
            extractor.embed(inputs[:1])
            if extractor.saved is not None:
                extractor.saved.prepare_run(LARGE_RUN, batch, wait=True)
    if graph_of(extractor) != graph.removesuffix("-1"):  # conversion failed or vectors differed
        return Forward(spec.precision, graph, error="not made (see log)")
    rate = model_rate(extractor, inputs, batch, rounds=2 if len(inputs) == len(exact) else 1)
    got = extractor.embed(inputs)
    return Forward(
        spec.precision,
        graph,
        rate,
        images=len(inputs),
        min_cosine=float(np.min(np.sum(got * exact[: len(inputs)], axis=1))),
        top5=same_top5(exact, exact[: len(inputs)], got),
    )


def _forward_int8(spec: Any, inputs: np.ndarray, exact: np.ndarray, batch: int) -> Forward:
    """The int8 forward of (a): the model quantised by NNCF on ``inputs`` (kept in memory, as
    ``eval`` does), run by OpenVINO. ``native``: the CPU has VNNI or AMX-INT8."""
    from featx_search import Compute
    from featx_search.compute import _cpu_flags, openvino_installed
    from featx_search.extract import int8, load_extractor

    native = bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if not (openvino_installed() and int8.nncf_installed()):
        return Forward("int8", "openvino", native=native, error="openvino or nncf not installed")
    extractor = load_extractor(spec, Compute(device="cpu"))
    t0 = time.perf_counter()
    int8.attach(extractor, None, lambda: inputs)
    log(f"   int8 calibrated on {len(inputs)} images in {time.perf_counter() - t0:.1f} s")
    rate = model_rate(extractor, inputs, batch)
    got = extractor.embed(inputs)
    return Forward(
        "int8",
        "openvino",
        rate,
        native=native,
        images=len(inputs),
        min_cosine=float(np.min(np.sum(got * exact, axis=1))),
        top5=same_top5(exact, exact, got),
    )


def fastest(rows: list[Forward]) -> Forward:
    """The fastest forward that ran, int8 aside: it loses retrieval quality, so no default
    runs it (docs/benchmarks.md), and L is what the defaults could reach."""
    return max((r for r in rows if not r.error and r.precision != "int8"), key=lambda r: r.rate)


def limit(decode_ms: float, cores: int, rate: float) -> float:
    """L: images/s when ``cores`` decode (``decode_ms`` CPU ms each) beside a model running
    ``rate`` images/s (decoding and the model share the cores)."""
    return 1 / (decode_ms / 1000 / cores + 1 / rate)


def defaults_pick(spec: Any, images: int, batch: int) -> str:
    """What ``featx-search index`` with its defaults runs for ``images`` images: precision
    and graph."""
    from featx_search import Compute
    from featx_search.extract import load_extractor

    extractor = load_extractor(spec, Compute(device="cpu"))
    extractor.prepare_run(images, batch)
    return f"{extractor.space.precision} {graph_of(extractor)}"


# A full run through the Python API (what the CLI runs), printing when each batch was committed.
STEADY = """
import json, sys, time
from featx_search import ExtractorSpec, Library
marks = []
spec = ExtractorSpec(model=sys.argv[3], weights=sys.argv[4])
with Library.open(sys.argv[1]) as lib:
    lib.index([sys.argv[2]], spec, progress=lambda p: marks.append((time.perf_counter(), p.done)))
print(json.dumps(marks))
"""


def steady_rate(folder: Path, model: str, skip: int) -> float:
    """Images/s of one `index` run of ``folder`` with the defaults into a new library, from
    its ``skip``-th committed image to its last: the pipeline without its start-up, from
    one run (no difference of two)."""
    name, weights = parse_model(model)
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        args = [f"{tmp}/bench.db", str(folder), name, weights]
        out = subprocess.run(
            [sys.executable, "-c", STEADY, *args], stdout=subprocess.PIPE, text=True, check=True
        )
    marks = [m for m in json.loads(out.stdout.strip().splitlines()[-1]) if m[1] > 0]
    start = next((m for m in marks if m[1] >= skip), marks[0])
    end = marks[-1]
    if end[1] <= start[1]:
        return float("nan")  # too few photos for a rate after the start
    return float((end[1] - start[1]) / (end[0] - start[0]))


PEAK_RSS = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def run_cli(folder: Path, model: str, extra: list[str]) -> tuple[float, float, float]:
    model, weights = parse_model(model)
    """Seconds, peak RSS (MiB) and the reported ``embed_seconds`` (the run without its
    start-up) of ``featx-search index folder`` into a new library."""
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "featx_search",
            "--db",
            f"{tmp}/bench.db",
            "index",
            str(folder),
            "-m",
            model,
            "-w",
            weights,
            "--json",
            *extra,
        ]
        t0 = time.perf_counter()
        # A small wrapper forks the CLI: a child forked from this (large) process would
        # report this process's memory as its own peak.
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *cmd], stdout=subprocess.PIPE, text=True
        )
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with {out.returncode}")
    report, peak = out.stdout.strip().rsplit("\n", 1)
    return seconds, int(peak) / 1024, json.loads(report)["embed_seconds"]


def recipe_rate(model_name: str, paths: list[Path]) -> float:
    """Images/s of the article's per-image loop (c)."""
    import faiss
    import torch
    from torchvision import transforms

    from featx_search.config import ExtractorSpec
    from featx_search.extract.cut import default_layer, node_names
    from featx_search.extract.registry import build

    name, weights = parse_model(model_name)
    built = build(ExtractorSpec(model=name, weights=weights))
    model = built.model.eval()
    layer = default_layer(model, node_names(model, name))
    pre = built.preprocess
    transform = transforms.Compose(
        [
            transforms.Resize(pre.resize),
            transforms.CenterCrop(pre.crop),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    seen: dict[str, torch.Tensor] = {}
    model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("out", out)
    )
    index: faiss.Index | None = None

    def one(path: Path) -> None:
        nonlocal index
        img = Image.open(path).convert("RGB")
        with torch.no_grad():
            model(transform(img).unsqueeze(0))
        vector = seen["out"].flatten(1).numpy().astype(np.float32)
        faiss.normalize_L2(vector)
        if index is None:
            index = faiss.IndexFlatIP(vector.shape[1])
        index.add(vector)

    one(paths[0])  # warm-up
    t0 = time.perf_counter()
    for p in paths[1:]:
        one(p)
    return (len(paths) - 1) / (time.perf_counter() - t0)


def recipe_in_child(model_name: str, paths: list[Path]) -> float:
    """(c) in a fresh process with the default OpenMP settings (this process makes OpenMP
    threads sleep while they wait, as the CLI does; that slows the article's one-image
    forwards, and a slowed (c) would flatter b/c)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env[RECIPE_CHILD] = "1"
    out = subprocess.run(
        [sys.executable, __file__, "--recipe", model_name, *map(str, paths)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


@contextmanager
def section(title: str) -> Iterator[None]:
    log(f"-- {title} ...")
    t0 = time.perf_counter()
    yield
    log(f"   ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--recipe":  # the child of recipe_in_child
        print(recipe_rate(sys.argv[2], [Path(p) for p in sys.argv[3:]]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="photos for (b); n/3 is the small run")
    parser.add_argument(
        "--models",
        default="resnet50,efficientnet_lite0",
        help="name or name@weights, comma-separated (resnet50 runs with weights none)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-data")
    parser.add_argument("--source", type=Path, help="photos to build from (default: apt-get)")
    parser.add_argument(
        "--photos",
        type=Path,
        help="time these JPEG/PNG photos as they are instead of building a set (e.g. photos "
        "no one here made); --n is then their number",
    )
    parser.add_argument("--sample", type=int, default=48, help="photos for (a), (c), (d)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (b) size")
    parser.add_argument(
        "--emulated-images",
        type=int,
        default=8,
        help="images (a) times a precision on that the CPU only emulates (slow)",
    )
    parser.add_argument(
        "--extra", default="", help="more `index` options for (b), e.g. '--workers 1'"
    )
    parser.add_argument(
        "--forwards-only",
        action="store_true",
        help="measure (a) only: every precision and graph side by side (minutes, not hours)",
    )
    args = parser.parse_args()

    from dataclasses import replace

    from featx_search import Compute, ExtractorSpec
    from featx_search.extract import load_extractor

    cores = os.cpu_count() or 1
    if args.photos:
        paths = sorted(
            p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if len(paths) < 5:
            raise SystemExit(f"need at least 5 JPEG/PNG photos under {args.photos}")
        args.n = len(paths)
    else:
        paths = build_set(args.cache, args.source or fetch_source(args.cache), args.n)
    small = max(1, args.n // 3)
    # Seeded, not every k-th photo: the long sides cycle through LONG_SIDES.
    sample = sorted(random.Random(0).sample(paths, min(args.sample, len(paths))))
    sizes = [Image.open(p).size for p in paths]
    log(
        f"{len(paths)} photos, long side {min(max(s) for s in sizes)}-"
        f"{max(max(s) for s in sizes)} px; {cores} cores; load average {os.getloadavg()[0]:.1f}"
    )
    with section("decode (d)"):
        d_fast, d_plain = decode_ms(sample)
    rows = []
    for model in args.models.split(","):
        name, weights = parse_model(model)
        spec = ExtractorSpec(model=name, weights=weights)  # precision auto, as the CLI's
        with section(f"{model}: every forward (a)"):
            fp32 = load_extractor(
                replace(spec, precision="fp32"),
                Compute(device="cpu", freeze="off", runtime="torch"),
            )
            inputs = decoded_inputs(sample, fp32.space.preprocess)
            exact = fp32.embed(inputs)
            del fp32
            ran = forwards(spec, inputs, exact, args.batch_size, args.emulated_images)
            best = fastest(ran)
            picked_n = defaults_pick(spec, args.n, args.batch_size)
            picked_large = defaults_pick(spec, LARGE_RUN, args.batch_size)
            a_default = next((r.rate for r in ran if r.label == picked_n), float("nan"))
        if args.forwards_only:
            print(forward_table(model, ran, picked_n))
            continue
        with section(f"{model}: article recipe (c), first of two"):
            c_runs = [recipe_in_child(model, sample[:32])]
        with section(f"{model}: featx-search index with its defaults, {small} and {args.n} (b)"):
            extra = args.extra.split()
            # Interleaved repeats, fastest of each: a start-up that happens to be slow in one
            # run would otherwise move b a lot (it is a difference of two times).
            small_runs, full_runs = [], []
            runs = range(args.repeat)
            for _ in runs:
                small_runs.append(run_cli(subset(args.cache, paths[:small]), model, extra))
                full_runs.append(run_cli(subset(args.cache, paths), model, extra))
            (t_small, rss_small, _), (t_full, rss_full, _) = min(small_runs), min(full_runs)
            b = (args.n - small) / (t_full - t_small)
            log(f"   index runs: {t_small:.1f} s for {small}, {t_full:.1f} s for {args.n} photos")
            # Cross-check without the subtraction: one full run timed after its first three
            # batches (fastest of --repeat).
            skip = min(3 * args.batch_size, small)
            b_steady = max(steady_rate(subset(args.cache, paths), model, skip) for _ in runs)
            log(f"   steady: {b_steady:.1f} img/s after the first {skip} photos")
        with section(f"{model}: article recipe (c), second of two"):
            # Before and after (b), fastest kept: on a shared machine one short loop can
            # land in a busy moment, and a slow (c) would flatter b/c.
            c_runs.append(recipe_in_child(model, sample[:32]))
            c = max(c_runs)
        rows.append(
            Row(
                model=model,
                forwards=ran,
                best=best,
                picked=picked_n,
                picked_large=picked_large,
                a_default=a_default,
                b=b,
                c=c,
                limit=limit(d_fast, cores, best.rate),
                rss=(rss_small, rss_full),
                b_steady=b_steady,
            )
        )
    if rows:
        print(report(rows, cores=cores, d_fast=d_fast, d_plain=d_plain, n=args.n))


@dataclass(frozen=True, kw_only=True)
class Row:
    """One model's measurements."""

    model: str
    forwards: list[Forward]
    best: Forward
    picked: str  # what the defaults run for the (b) run, "precision graph"
    picked_large: str  # ... and for a large library
    a_default: float  # (a) of what the defaults picked
    b: float
    c: float
    limit: float
    rss: tuple[float, float]
    b_steady: float


def report(rows: list[Row], *, cores: int, d_fast: float, d_plain: float, n: int) -> str:
    """The printed tables: limits and ratios, then every forward of (a)."""
    from featx_search.compute import native_precisions

    out = [
        f"\nload average now {os.getloadavg()[0]:.1f} on {cores} cores (busy machine: "
        "compare ratios, not absolute numbers)",
        f"native precisions of this CPU (from what it reports): "
        f"{', '.join(native_precisions('cpu'))}",
        f"decode (d), CPU ms/image on one thread: fast {d_fast:.1f}, plain {d_plain:.1f} "
        f"({d_plain / d_fast:.1f}x)",
        f"{'model':<20}{'fastest (a)':>16}{'a img/s':>9}{'defaults pick':>15}{'a img/s':>9}"
        f"{'b img/s':>9}{'c img/s':>9}{'L img/s':>9}{'b/L':>7}{'b/c':>7}{'RSS n/3':>9}"
        f"{'RSS n':>8}{'RSS +%':>8}{'steady':>8}{'st/L':>6}",
    ]
    for r in rows:
        grow = 100 * (r.rss[1] / r.rss[0] - 1)
        out.append(
            f"{r.model:<20}{r.best.label:>16}{r.best.rate:9.1f}{r.picked:>15}{r.a_default:9.1f}"
            f"{r.b:9.1f}{r.c:9.1f}{r.limit:9.1f}{r.b / r.limit:7.2f}{r.b / r.c:7.2f}"
            f"{r.rss[0]:8.0f}M{r.rss[1]:7.0f}M{grow:7.1f}%{r.b_steady:8.1f}"
            f"{r.b_steady / r.limit:6.2f}"
        )
    out.append(
        f"defaults pick: what `index` with its defaults runs for {n} photos (for a large "
        "library: " + "; ".join(f"{r.model} {r.picked_large}" for r in rows) + "). "
        "L uses the fastest forward. steady: a full run's images/s after its first three "
        "batches, from their commit times (a cross-check of b without the subtraction of two "
        "runs, whose start-ups vary by a second or more); st/L: steady / L"
    )
    out.append(
        f"\n{'model':<20}{'forward':>16}{'native':>8}{'images':>8}{'img/s':>8}{'x fp32':>8}"
        f"{'min cos':>10}{'top-5 same':>11}"
    )
    out.extend(_forward_rows(r.model, r.forwards) for r in rows)
    return "\n".join(out)


def _forward_rows(model: str, forwards: list[Forward]) -> str:
    base = next((f.rate for f in forwards if f.label == "fp32 plain"), float("nan"))
    out = []
    for f in forwards:
        if f.error:
            out.append(f"{model:<20}{f.label:>16}{'yes' if f.native else 'no':>8}  {f.error}")
            continue
        out.append(
            f"{model:<20}{f.label:>16}{'yes' if f.native else 'no':>8}{f.images:8d}"
            f"{f.rate:8.1f}{f.rate / base:8.2f}{f.min_cosine:10.5f}{100 * f.top5:10.0f}%"
        )
    return "\n".join(out)


def forward_table(model: str, forwards: list[Forward], picked: str) -> str:
    """(a) alone, for --forwards-only."""
    from featx_search.compute import native_precisions

    return "\n".join(
        [
            f"\nload average now {os.getloadavg()[0]:.1f}; native precisions of this CPU: "
            f"{', '.join(native_precisions('cpu'))}; the defaults pick {picked}",
            f"{'model':<20}{'forward':>16}{'native':>8}{'images':>8}{'img/s':>8}{'x fp32':>8}"
            f"{'min cos':>10}{'top-5 same':>11}",
            _forward_rows(model, forwards),
        ]
    )


if __name__ == "__main__":
    main()
