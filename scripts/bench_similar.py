"""Time the whole `featx-search similar` command (a fresh process each time) on a library of
10,000 images, next to baselines measured in the same run (also `similar --copies` on the same
library made a copy-mode space, with synthetic copy views, and `search --copies` where the
local check of a tie runs, on a small library of one photo saved five times); then a cold
`similar` on a library of 1,000,000 images.

    nice -n 10 .venv/bin/python scripts/bench_similar.py            # --n 10000 --repeat 5
    nice -n 10 .venv/bin/python scripts/bench_similar.py --cold-only --cold-n 100000

The libraries are built by scripts/synthetic_library.py (real efficientnet_lite0 embeddings
of sample photos, mixed and perturbed; see there). Every command runs --repeat times,
interleaved so that machine noise hits all of them alike; medians are printed with their
ratio to `featx-search --help` (interpreter and CLI start-up) and to one `search` of a real
photo through torch (FEATX_QUERY_MODEL=0: it imports torch and builds the model); `search`
with the space's saved query model (OpenVINO, no torch) is timed among the commands.

The cold part runs `similar ID -k 10` in fresh processes on the --cold-n library: first with
the library's files (database and index file) dropped from the page cache where the kernel
allows it (posix_fadvise DONTNEED: no root needed, nothing else evicted), then with them
cached. Each child prints its peak resident memory (VmHWM from /proc/self/status), which
counts the pages of the memory-mapped index file that the search touched.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from synthetic_library import DATA, build, build_copies, photos_folder

CLI = [sys.executable, "-m", "featx_search"]
# Runs the CLI in this process, then reports the process's peak RSS on stderr (also when the
# command exits through SystemExit, as click does).
CHILD = """
import runpy, sys
sys.argv = ["featx-search", *sys.argv[1:]]
try:
    runpy.run_module("featx_search", run_name="__main__")
finally:
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    print(f"VmHWM {peak} kB", file=sys.stderr)
"""


def wall(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``args`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of ``featx-search ARGS`` in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - started
    found = re.search(r"VmHWM (\d+) kB", done.stderr)
    if found is None:
        raise RuntimeError(f"the child printed no VmHWM: {done.stderr[-500:]}")
    return seconds, int(found.group(1))


def evict(paths: list[Path]) -> None:
    """Ask the kernel to drop these files' clean pages from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def library_files(db: Path) -> list[Path]:
    """The database (with its WAL) and the index files of a library."""
    files = [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return files + sorted(db.with_name(db.name + ".indexes").glob("*.faiss"))


def cold(n: int, repeat: int, photos: Path) -> None:
    """Cold `similar ID -k 10` on the library of ``n`` images: fresh processes, with the
    library's files evicted from the page cache and then cached."""
    db = build(n, photos=photos)
    files = library_files(db)
    size = sum(p.stat().st_size for p in files)
    ids = [str(1 + (i * 7919) % n) for i in range(repeat)]
    evicted, cached = [], []
    for image in ids:  # a different image each time: nothing of it is cached by an earlier one
        evict(files)
        evicted.append(cold_run(["--db", str(db), "similar", image, "-k", "10"]))
    for image in ids:
        cached.append(cold_run(["--db", str(db), "similar", image, "-k", "10"]))
    print(f"cold similar: {db} ({n} images, {size / 2**30:.2f} GiB of files); {repeat} runs")
    print(f"{'similar ID -k 10, fresh process':<45} {'wall s':>7} {'max s':>7} {'peak RSS':>10}")
    for name, runs in (("files evicted from the page cache", evicted), ("files cached", cached)):
        wall_s = statistics.median(w for w, _ in runs)
        worst = max(w for w, _ in runs)
        peak = max(r for _, r in runs) / 1024
        print(f"  {name:<43} {wall_s:7.3f} {worst:7.3f} {peak:7.0f} MiB")
    verdict = "under" if statistics.median(w for w, _ in evicted) < 1 else "NOT under"
    print(f"cold similar (evicted, median): {verdict} 1 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--photos", type=Path)
    parser.add_argument(
        "--cold-n", type=int, default=1_000_000, help="images in the cold-start library"
    )
    parser.add_argument("--cold-only", action="store_true", help="only the cold-start part")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start part")
    args = parser.parse_args()
    photos = photos_folder(args.photos)
    if not args.cold_only:
        warm(args.n, args.repeat, photos)
    if not args.no_cold:
        cold(args.cold_n, args.repeat, photos)


def tied_library(photos: Path) -> tuple[Path, Path]:
    """A copy-mode library of one photo saved five times (JPEG quality 95 down to 75), and a
    crop of it: a search of the crop ties the five within 0.02, so the local check of
    `search --copies` (featx_search/verify.py) decodes and maps all five, its worst case.
    Built once; returns (database, query picture)."""
    from PIL import Image

    folder = DATA / "tied-photos"
    db = DATA / "tied.db"
    query = DATA / "tied-query.png"
    if db.exists() and query.exists():
        return db, query
    source = next(p for p in sorted(photos.rglob("*.jpg")))
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as img:
        img = img.convert("RGB")
        for quality in (95, 90, 85, 80, 75):
            img.save(folder / f"q{quality}.jpg", quality=quality)
        w, h = img.size
        img.crop((w // 5, h // 5, w // 5 + w * 2 // 3, h // 5 + h * 2 // 3)).save(query)
    shutil.rmtree(db.with_name(db.name + ".indexes"), ignore_errors=True)
    db.unlink(missing_ok=True)
    subprocess.run(
        [*CLI, "--db", str(db), "index", str(folder), "--copies", "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return db, query


def warm(n: int, repeat: int, photos: Path) -> None:
    """The table of `similar` commands on the library of ``n`` images next to baselines."""
    db = str(build(n, photos=photos))
    root = DATA / f"synthetic-{n}-photos"
    some = ["17", "4242", str(n // 2)]
    base = [*CLI, "--db", db]
    commands = {
        "--help (start-up only)": [*CLI, "--help"],
        "similar ID -k 10": [*base, "similar", some[0], "-k", "10"],
        "similar PATH -k 10 --json": [
            *base,
            "similar",
            str(root / "004" / "img004242.jpg"),
            "-k",
            "10",
            "--json",
        ],
        "similar ID --under DIR --after DATE": [
            *base,
            "similar",
            some[1],
            "--under",
            str(root / "003"),
            "--after",
            "2018-01-01",
        ],
        "similar ID --glob '*7.jpg' --threshold 0.5": [
            *base,
            "similar",
            some[2],
            "--glob",
            "*7.jpg",
            "--threshold",
            "0.5",
        ],
        # Database-side augmentation: one more index search, of the first 100 results.
        "similar ID -k 10 --dba 3": [*base, "similar", some[0], "-k", "10", "--dba", "3"],
        "similar 3 IDs --combine --exclude-self": [
            *base,
            "similar",
            *some,
            "--combine",
            "--exclude-self",
        ],
    }
    # The same library as a copy-mode space (synthetic views: see build_copies).
    copies = [*CLI, "--db", str(build_copies(n, photos=photos))]
    commands["similar ID -k 10 --copies (copy mode)"] = [
        *copies,
        "similar",
        some[0],
        "-k",
        "10",
        "--copies",
    ]
    commands["similar ID --copies --under DIR --json"] = [
        *copies,
        "similar",
        some[1],
        "--copies",
        "--under",
        str(root / "003"),
        "--json",
    ]
    query = next(p for p in sorted(photos.rglob("*.jpg")))
    # With the space's query model (the warm-up run below saves it when missing).
    commands["search PHOTO -k 10 (query model, no torch)"] = [
        *base,
        "search",
        str(query),
        "-k",
        "10",
    ]
    # A copy search by a picture runs the model twice: the picture and its normalised view.
    commands["search PHOTO -k 10 --copies (copy mode)"] = [
        *copies,
        "search",
        str(query),
        "-k",
        "10",
        "--copies",
    ]
    # The worst case of its local check: five results tied with the first, each decoded and
    # mapped (torch imported and the model built in the fresh process; see tied_library).
    tied, crop = tied_library(photos)
    commands["search CROP -k 10 --copies, 5 tied: checked"] = [
        *CLI,
        "--db",
        str(tied),
        "search",
        str(crop),
        "-k",
        "10",
        "--copies",
    ]
    commands["search CROP -k 10 --copies --no-verify"] = [
        *commands["search CROP -k 10 --copies, 5 tied: checked"],
        "--no-verify",
    ]
    root.mkdir(parents=True, exist_ok=True)  # --under needs the folder to exist
    (root / "003").mkdir(exist_ok=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for command in commands.values():
        wall(command)  # warm the page cache once: we time the process, not the disk
    for _ in range(repeat):
        for name, command in commands.items():
            times[name].append(wall(command))
    without = {**os.environ, "FEATX_QUERY_MODEL": "0"}
    search, search_cpu = wall([*base, "search", str(query), "-k", "10"], env=without)
    startup = statistics.median(w for w, _ in times["--help (start-up only)"])
    print(f"library: {db} ({n} images); medians of {repeat} runs, fresh processes")
    print(f"{'command':<45} {'wall s':>7} {'cpu s':>6} {'x --help':>9} {'/ search':>9}")
    for name, values in times.items():
        median = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:<45} {median:7.3f} {cpu:6.2f} {median / startup:9.2f} {median / search:9.3f}")
    name = "search PHOTO -k 10 (torch: FEATX_QUERY_MODEL=0)"
    print(f"{name:<45} {search:7.3f} {search_cpu:6.2f} {search / startup:9.2f}")
    worst = max(
        statistics.median(w for w, _ in v) for k, v in times.items() if k.startswith("similar")
    )
    print(f"slowest similar: {worst:.3f} s wall ({'under' if worst < 1 else 'NOT under'} 1 s)")
    fast = statistics.median(w for w, _ in times["search PHOTO -k 10 (query model, no torch)"])
    print(f"cold search PHOTO: {fast:.3f} s wall ({'under' if fast < 2 else 'NOT under'} 2 s)")
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
