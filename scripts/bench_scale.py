#!/usr/bin/env python
"""Past one machine, measured on one: (a) the Ray engine against the local engine.

(a) A sync with the Ray engine (a Ray instance sized to this machine, started once, as a
    cluster would be) against the local engine, on the same real photos
    (scripts/synthetic_library.py's ``photos_folder``: Debian's mate-backgrounds, copied until
    there are ``--n``), each into a new library, in this process. Steady images/s counts
    from the first committed batch to the last, so it leaves out what a run pays once (the
    Ray actors' start and model load, printed apart as start-up); the whole sync's rate
    includes it. The ratio ray/local of the steady rates is what Ray costs per image (issue
    16 asks for at least 0.8). Both engines choose the model's graph the same way
    (``--runtime``/``--freeze`` auto), and use the default batch size, workers and threads.

(b) With ``--vectors N`` (issue 16 asks for 10,000,000): a library of N synthetic 256-d
    vectors written straight into a new store, its on-disk IVF index built under a 64 MiB
    budget, beside one of 200,000: build time, the build's peak RSS, query latency and
    recall@10 of the memory-mapped index. scripts/bench_ondisk.py does the work (run as a
    child; its docstring says how); a 10,000,000 library takes about 2 hours and 40 GB of
    disk (``--work DIR``).

Usage:
    nice -n 10 .venv/bin/python scripts/bench_scale.py --n 120
    .venv/bin/python scripts/bench_scale.py --skip-ray --vectors 10000000 --work DIR   # (b)
    .venv/bin/python scripts/bench_scale.py --n 30 --model tests.models:tiny_cnn --weights none
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_library import cpu_model, photos_folder  # noqa: E402


def bench_photos(source: Path, n: int, folder: Path) -> list[Path]:
    """``n`` photos in ``folder``: the source photos, copied as often as needed (a fresh
    library treats copies as distinct files)."""
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not found:
        raise SystemExit(f"no photos under {source}")
    made = []
    for i in range(n):
        photo = found[i % len(found)]
        target = folder / f"copy{i // len(found)}" / f"{i:04d}{photo.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target)
        made.append(target)
    return made


def index_run(photos: list[Path], engine: Any, work: Path, spec: Any) -> dict[str, float]:
    """One sync of ``photos`` (linked into a fresh folder) into a new library, in this
    process: the steady images/s (from the first committed batch to the last), the report's
    embed seconds (from the first file handed to the engine to the last batch committed: the
    Ray actors start and load the model in it), added and failed."""
    from featx_search import Library, Progress

    folder = Path(tempfile.mkdtemp(dir=work))
    for photo in photos:
        target = folder / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)
    ticks: list[tuple[float, int]] = []

    def tick(step: Progress) -> None:
        ticks.append((time.perf_counter(), step.done))

    with Library.open(folder / "lib.db", create=True) as lib:
        space = lib.create_space(spec)
        report = space.sync([folder], engine=engine, progress=tick)
    shutil.rmtree(folder)
    if len(ticks) < 3 or ticks[-1][0] <= ticks[0][0]:
        raise SystemExit(f"too few batches to time ({len(ticks)}): use a larger --n")
    (t0, d0), (t1, d1) = ticks[0], ticks[-1]
    return {
        "steady": (d1 - d0) / (t1 - t0),
        "embed": report.embed_seconds,
        "added": report.added,
        "failed": report.failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=120, help="photos (default 120)")
    parser.add_argument("--photos", type=Path, help="folder of real photos")
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine, fastest kept")
    parser.add_argument("--model", help="model (default: the default model)")
    parser.add_argument("--weights", help="weights (default: the model's default)")
    parser.add_argument("--skip-ray", action="store_true", help="leave out (a)")
    parser.add_argument("--vectors", type=int, help="(b): a library of this many vectors")
    parser.add_argument("--work", type=Path, help="(b): folder for its libraries (default: temp)")
    args = parser.parse_args()
    if not args.skip_ray:
        ray_part(args)
    if args.vectors:
        ondisk = [sys.executable, str(ROOT / "scripts" / "bench_ondisk.py")]
        ondisk += ["--sizes", f"200000,{args.vectors}", "--dim", "256", "--budget", "64M"]
        if args.work:
            ondisk += ["--work", str(args.work)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        print("\n# bench_scale (b): the on-disk index, by scripts/bench_ondisk.py", flush=True)
        sys.exit(subprocess.run(ondisk, env=env).returncode)


def ray_part(args: argparse.Namespace) -> None:
    """(a): the Ray engine against the local engine (see the module's doc)."""
    import ray

    from featx_search import ExtractorSpec
    from featx_search.distributed import RayEngine

    spec = ExtractorSpec(
        **{k: v for k, v in (("model", args.model), ("weights", args.weights)) if v}
    )
    source = photos_folder(args.photos)
    # One Ray instance for every Ray run, as a cluster would be: its start is not timed.
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    engines = {"local": None, "ray": RayEngine()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        photos = bench_photos(source, args.n, work / "photos")
        for name, engine in engines.items():
            tries = [index_run(photos, engine, work, spec) for _ in range(args.repeat)]
            best = max(tries, key=lambda r: r["steady"])
            whole = len(photos) / best["embed"]
            startup = best["embed"] - len(photos) / best["steady"]
            rows.append((name, best["steady"], whole, startup, best["failed"]))
    ray.shutdown()
    print(
        f"# bench_scale (a): {args.n} photos from {source}; {cpu_model()}, {os.cpu_count()} cores"
    )
    print("| engine | images/s (steady) | images/s (whole sync) | start-up s | failed |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, steady, whole, startup, failed in rows:
        print(f"| {name} | {steady:.2f} | {whole:.2f} | {startup:.1f} | {failed} |")
    ratio = rows[1][1] / rows[0][1]
    print(f"\nray / local (steady images/s): {ratio:.2f} (target at least 0.8)")


if __name__ == "__main__":
    main()
