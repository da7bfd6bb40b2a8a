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

For each model it measures:

(a) the bare extractor on already-decoded input (precision, layout and graph the pipeline
    uses on a large library: ``--runtime auto`` and ``--freeze auto`` decide, as for a run of
    2000+ images, whether OpenVINO or a frozen TorchScript graph runs it; the plain torch
    graph's rate is printed too, with the largest change of a cosine similarity between the
    sample photos that the used graph makes),
(b) ``featx-search index`` as a subprocess on the first n/5 and on all n photos, each into a
    new library, --repeat times (fastest kept); b = (n - n/5) / (t_n - t_n/5) cancels
    start-up (imports, model load, and converting or freezing the graph). Both runs get the
    ``--runtime`` and ``--freeze`` that (a) decided: runs this small would not convert by
    themselves (see ``OPENVINO_MIN_IMAGES`` and ``FREEZE_MIN_IMAGES``),
(c) the article's recipe: per image, PIL open, torchvision transforms, the whole model with a
    forward hook on the layer featx-search reads, and ``faiss.IndexFlatIP.add``; in a child
    process with the default OpenMP settings, run before and after (b), fastest kept,
(d) CPU ms/image of the fastest decode (draft/reduce, then resize, crop, normalise) alone,
    on one thread; also the plain full-resolution decode, for comparison.

Then L = 1 / (d / cores + 1 / a), the best any pipeline could do with this decode and this
model, and b/L, b/c, peak RSS of both (b) runs, and "b run": the n photos over the
``embed_seconds`` that ``index --json`` reports for its own pipeline (start-up excluded
without subtracting two runs, whose start-ups vary by a second or two). A side table
compares, on the same decoded input, channels_last on and off, and fp32 with bf16: speed,
and how many of the top-5 neighbours (among the sample, in fp32) a bf16 query keeps.

Like the CLI, this process sets OMP_WAIT_POLICY=PASSIVE before torch loads, so (a) gets the
same OpenMP setting as (b); (c) keeps the default one, which is faster for its one-image
forwards (3.9 against 3.3 img/s for resnet50 here).

Usage:
    nice -n 10 .venv/bin/python scripts/bench_index.py            # 500 photos, both models
    .venv/bin/python scripts/bench_index.py --n 40 --models efficientnet_lite0   # quick
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
from pathlib import Path

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
WEIGHTS = {"resnet50": "none", "efficientnet_lite0": "DEFAULT"}


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


PEAK_RSS = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def run_cli(folder: Path, model: str, extra: list[str]) -> tuple[float, float, float]:
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
            WEIGHTS[model],
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

    built = build(ExtractorSpec(model=model_name, weights=WEIGHTS[model_name]))
    model = built.model.eval()
    layer = default_layer(model, node_names(model, model_name))
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
    parser.add_argument("--n", type=int, default=500, help="photos for (b); n/5 is the small run")
    parser.add_argument("--models", default="resnet50,efficientnet_lite0")
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
    parser.add_argument("--bf16-images", type=int, default=8, help="queries for the bf16 check")
    parser.add_argument(
        "--extra", default="", help="more `index` options for (b), e.g. '--workers 1'"
    )
    args = parser.parse_args()

    from featx_search import Compute, ExtractorSpec
    from featx_search.compute import FREEZE_MIN_IMAGES, OPENVINO_MIN_IMAGES
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
    small = max(1, args.n // 5)
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
    graph_rows = []
    for model in args.models.split(","):
        spec = ExtractorSpec(model=model, weights=WEIGHTS[model])
        with section(f"{model}: bare model (a), precisions and layouts"):
            fp32 = load_extractor(spec, Compute(device="cpu", freeze="off", runtime="torch"))
            inputs = decoded_inputs(sample, fp32.space.preprocess)
            a_plain = model_rate(fp32, inputs, args.batch_size)
            exact = fp32.embed(inputs)
            tuned = load_extractor(spec, Compute(device="cpu"))  # runtime, freeze: "auto"
            t0 = time.perf_counter()
            tuned.prepare_run(max(FREEZE_MIN_IMAGES, OPENVINO_MIN_IMAGES), args.batch_size)
            graph_s = time.perf_counter() - t0
            a = model_rate(tuned, inputs, args.batch_size)
            # Largest change of any query-to-sample cosine against the plain graph; layout or
            # micro-batch changes alone move them by about 4e-7 here.
            drift = float(np.abs((tuned.embed(inputs) - exact) @ exact.T).max())
            graph = (
                "openvino" if tuned.runtime == "openvino" else "frozen" if tuned.frozen else "plain"
            )
            del tuned
            nchw = load_extractor(spec, Compute(device="cpu", channels_last=False))
            a_nchw = model_rate(nchw, inputs, args.batch_size, rounds=1)
            # bf16 is emulated (slow) on CPUs without AVX-512 BF16 / AMX: a few images only.
            few = inputs[: args.bf16_images]
            bf16 = load_extractor(
                ExtractorSpec(model=model, weights=WEIGHTS[model], precision="bf16"),
                Compute(device="cpu"),
            )
            bf16.embed(few[:2])
            t0 = time.perf_counter()
            low = bf16.embed(few)
            a_bf16 = len(few) / (time.perf_counter() - t0)
            same = same_top5(exact, exact[: len(few)], low)
            del nchw, bf16
        with section(f"{model}: article recipe (c), first of two"):
            c_runs = [recipe_in_child(model, sample[:32])]
        with section(f"{model}: featx-search index, {small} and {args.n} photos (b)"):
            extra = [
                *("--runtime", "openvino" if graph == "openvino" else "torch"),
                *("--freeze", "on" if graph == "frozen" else "off"),
                *args.extra.split(),
            ]
            # Interleaved repeats, fastest of each: a start-up that happens to be slow in one
            # run would otherwise move b a lot (it is a difference of two times).
            small_runs, full_runs = [], []
            for _ in range(args.repeat):
                small_runs.append(run_cli(subset(args.cache, paths[:small]), model, extra))
                full_runs.append(run_cli(subset(args.cache, paths), model, extra))
            (t_small, rss_small, _), (t_full, rss_full, _) = min(small_runs), min(full_runs)
            b = (args.n - small) / (t_full - t_small)
            # Cross-check without the subtraction: the CLI's own timing of its pipeline.
            b_run = args.n / min(embed for *_, embed in full_runs)
            log(f"   index runs: {t_small:.1f} s for {small}, {t_full:.1f} s for {args.n} photos")
        with section(f"{model}: article recipe (c), second of two"):
            # Before and after (b), fastest kept: on a shared machine one short loop can
            # land in a busy moment, and a slow (c) would flatter b/c.
            c_runs.append(recipe_in_child(model, sample[:32]))
            c = max(c_runs)
        limit = 1 / (d_fast / 1000 / cores + 1 / a)
        rows.append((model, a, a_nchw, a_bf16, same, b, c, limit, rss_small, rss_full, b_run))
        graph_rows.append((model, graph, graph_s, a_plain, a, drift))

    print(
        f"\nload average now {os.getloadavg()[0]:.1f} on {cores} cores (busy machine: "
        "compare ratios, not absolute numbers)"
    )
    print(
        f"decode (d), CPU ms/image on one thread: fast {d_fast:.1f}, plain {d_plain:.1f} "
        f"({d_plain / d_fast:.1f}x)"
    )
    head = f"{'model':<20}{'a img/s':>9}{'b img/s':>9}{'c img/s':>9}{'L img/s':>9}"
    print(head + f"{'b/L':>7}{'b/c':>7}{'RSS n/5':>9}{'RSS n':>8}{'RSS +%':>8}{'b run':>7}")
    for model, a, _, _, _, b, c, limit, rss_small, rss_full, b_run in rows:
        grow = 100 * (rss_full / rss_small - 1)
        print(
            f"{model:<20}{a:9.1f}{b:9.1f}{c:9.1f}{limit:9.1f}{b / limit:7.2f}{b / c:7.2f}"
            f"{rss_small:8.0f}M{rss_full:7.0f}M{grow:7.1f}%{b_run:7.1f}"
        )
    print(
        "b run: images / embed_seconds of the fastest full run, as `index --json` reports it "
        "(a cross-check of b without the subtraction of two runs)"
    )
    print(f"\n{'model':<20}{'fp32 NHWC':>10}{'fp32 NCHW':>10}{'bf16 NHWC':>10}{'top-5 same':>11}")
    for (model, _, a_nchw, a_bf16, same, *_), (_, _, _, a_plain, _, _) in zip(
        rows, graph_rows, strict=True
    ):
        print(f"{model:<20}{a_plain:10.1f}{a_nchw:10.1f}{a_bf16:10.1f}{100 * same:10.0f}%")
    print(
        f"\n{'model':<20}{'graph':>9}{'took s':>8}{'a plain':>9}{'a used':>8}{'x':>6}"
        f"{'max dcos':>10}"
    )
    for model, graph, took, plain, used, drift in graph_rows:
        print(
            f"{model:<20}{graph:>9}{took:8.1f}{plain:9.1f}{used:8.1f}{used / plain:6.2f}"
            f"{drift:10.1e}"
        )


if __name__ == "__main__":
    main()
