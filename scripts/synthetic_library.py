"""Build large libraries for benchmarks without embedding 100,000 images.

Real embeddings come first: the sample photos (Debian's mate-backgrounds, fetched with
``apt-get download`` as scripts/demo does, or any folder given with --photos) are indexed
with the default model (efficientnet_lite0), and a few edits of each (flip, crops, grey,
colour shift) are embedded too. Every synthetic vector is then a random mix of three real
ones plus noise, re-normalised, so scores between them look like those of a real library
(most pairs far apart, some close). About 1% of them get 1-3 planted near-copies (cosine
about 0.95-0.995 to their original), a fifth of those copies with the same content hash
(byte-identical files). Rows are written straight into the store with plausible sizes,
dates and paths (the files do not exist), and the FAISS index is published.

    .venv/bin/python scripts/synthetic_library.py --n 10000   # prints the library path

Libraries are cached in bench-data/ by size and seed; planted groups are saved beside them
(``*.planted.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from featx_search.store import Store

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"
CHUNK = 2000


def photos_folder(given: Path | None) -> Path:
    """A folder of real photos: ``given``, else demo-data/photos, else mate-backgrounds."""
    if given is not None:
        return given
    for folder in (DATA / "photos", ROOT / "demo-data" / "photos"):
        if folder.is_dir() and any(folder.rglob("*.jpg")):
            return folder
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        print("fetching sample photos: apt-get download mate-backgrounds", file=sys.stderr)
        subprocess.run(["apt-get", "download", "-q", "mate-backgrounds"], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("mate-backgrounds_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        shutil.copytree(f"{tmp}/x/usr/share/backgrounds/mate", DATA / "photos")
    return DATA / "photos"


def cpu_model() -> str:
    """The CPU's model name from ``lscpu``, which every benchmark prints beside its numbers
    (newer ``lscpu`` indents it under the vendor; its ``BIOS Model name`` is passed over)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def real_vectors(photos: Path) -> tuple[np.ndarray, dict[str, object], Path]:
    """Embeddings of the photos and of edits of them: (float32 (M, dim), space spec dict,
    seed library path)."""
    from PIL import Image, ImageOps

    from featx_search import ExtractorSpec, Library
    from featx_search.store import Store

    seed_db = DATA / "seed.db"
    cache, cache_spec = DATA / "base-vectors.npy", DATA / "base-vectors.json"
    if cache.exists() and cache_spec.exists():
        return np.load(cache), json.loads(cache_spec.read_text()), seed_db
    with Library.open(seed_db) as lib:
        lib.index([photos], spec=ExtractorSpec())
        edits = []
        for path in sorted(p for p in photos.rglob("*") if p.suffix.lower() in {".jpg", ".png"}):
            with Image.open(path) as img:
                img.draft("RGB", (640, 640))
                small = img.convert("RGB")
            small.thumbnail((640, 640))
            w, h = small.size
            edits += [
                ImageOps.mirror(small),
                small.crop((0, 0, w * 2 // 3, h * 2 // 3)),
                small.crop((w // 3, h // 3, w, h)),
                ImageOps.grayscale(small).convert("RGB"),
                Image.eval(small, lambda v: min(255, int(v * 1.3))),
            ]
        extra = np.concatenate([lib.embed(edits[i : i + 16]) for i in range(0, len(edits), 16)])
    store = Store.open(seed_db)
    try:
        record = store.spaces()[0]
        _, _, stored = store.vectors(record.id)
        spec = record.spec.to_dict()
    finally:
        store.close()
    base = np.concatenate([stored, extra]).astype(np.float32)
    np.save(cache, base)
    cache_spec.write_text(json.dumps(spec))
    return base, spec, seed_db


def _normalise(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out.astype(np.float32)


def write_rows(
    store: Store,
    n: int,
    base: np.ndarray,
    spec: dict[str, object],
    *,
    seed: int = 0,
    folder: Path,
    verbose: bool = True,
) -> list[list[int]]:
    """Write ``n`` synthetic images (rows and vectors mixed from ``base``, in the space of
    ``spec``) under the root ``folder`` into ``store``, :data:`CHUNK` per batch; returns the
    planted groups of near-copies (image ids). No index is built."""
    from featx_search.config import SpaceSpec
    from featx_search.records import FileResult

    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    record = store.ensure_space(SpaceSpec.from_dict(spec))
    root_id, _ = store.root_for(folder)
    sizes = [(4000, 3000), (1920, 1080), (3024, 4032), (800, 600), (2048, 1536)]
    start = datetime(2012, 1, 1)
    planted: list[list[int]] = []
    made = 0
    while made < n:
        count = min(CHUNK, n - made)
        picks = rng.integers(0, len(base), (count, 3))
        mix = np.einsum("ij,ijk->ik", rng.dirichlet([1.0, 1.0, 1.0], count), base[picks])
        mix = _normalise(mix)
        noise = rng.standard_normal((count, dim), dtype=np.float32)
        noise *= (rng.uniform(0.3, 0.9, count) / np.sqrt(dim))[:, None].astype(np.float32)
        vectors = _normalise(mix + noise)
        hashes = [hashlib.sha256(f"{seed}-{made + i}".encode()).hexdigest() for i in range(count)]
        groups: list[list[int]] = []  # positions inside this chunk
        originals = rng.choice(count, max(1, count // 100), replace=False)
        copies, copy_hashes = [], []
        for original in originals:
            members = [int(original)]
            for _ in range(int(rng.integers(1, 4))):
                if made + count + len(copies) >= n:
                    break
                r = rng.uniform(0.1, 0.3)
                jitter = rng.standard_normal(dim).astype(np.float32) * (r / np.sqrt(dim))
                copies.append(_normalise((vectors[original] + jitter)[None])[0])
                same = rng.random() < 0.2
                copy_hashes.append(hashes[original] if same else f"copy-{made}-{len(copies)}")
                members.append(count + len(copies) - 1)
            if len(members) > 1:
                groups.append(members)
        if copies:
            vectors = np.concatenate([vectors, np.stack(copies)])
            hashes += copy_hashes
        results = []
        for i, vector in enumerate(vectors):
            w, h = sizes[int(rng.integers(0, len(sizes)))]
            when = start + timedelta(seconds=int(rng.integers(0, 12 * 365 * 86400)))
            number = made + i
            results.append(
                FileResult(
                    root_id=root_id,
                    relpath=f"{number // 1000:03d}/img{number:06d}.jpg",
                    size=int(rng.integers(200_000, 8_000_000)),
                    mtime_ns=int(when.timestamp() * 1e9),
                    vector=vector,
                    width=w,
                    height=h,
                    content_hash=hashes[i],
                    taken_at=when if rng.random() < 0.7 else None,
                )
            )
        added, _ = store.write_batch(record.id, results)
        planted += [[added[p] for p in members] for members in groups]
        made += len(results)
        if verbose:
            print(f"  {made}/{n}", file=sys.stderr, end="\r")
    if verbose:
        print(file=sys.stderr)
    return planted


def build(n: int, *, seed: int = 0, photos: Path | None = None) -> Path:
    """The library of ``n`` synthetic images (built once, then reused); returns its path."""
    from featx_search.ann.publish import rebuild_index
    from featx_search.store import Store

    db = DATA / f"synthetic-{n}-s{seed}.db"
    planted_file = db.with_suffix(".planted.json")
    if db.exists() and planted_file.exists():
        return db
    for stale in (db, planted_file):
        stale.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(db.name + ".indexes"), ignore_errors=True)
    base, spec, _ = real_vectors(photos_folder(photos))
    store = Store.open(db)
    print(f"writing {n} synthetic vectors into {db}", file=sys.stderr)
    planted = write_rows(store, n, base, spec, seed=seed, folder=DATA / f"synthetic-{n}-photos")
    record = store.spaces()[0]
    # the index the space wants at this size (auto: Flat, then IVF), built once and published
    rebuild_index(store, store.space(record.id))
    store.close()
    planted_file.write_text(json.dumps(planted))
    return db


def build_copies(n: int, *, seed: int = 0, photos: Path | None = None) -> Path:
    """A copy of the library of ``n`` images made a copy-mode space, each image given
    synthetic copy views (its vector plus noise, cosine about 0.8-0.95 to it, one row per
    view as ``index --copies`` stores them), and its copy index built (built once, then
    reused); returns its path."""
    from featx_search.copies import VIEWS, CopyIndex
    from featx_search.library import Library
    from featx_search.store import Store

    db = DATA / f"synthetic-{n}-s{seed}-copies{len(VIEWS)}.db"  # views of this set
    done = db.with_suffix(".done")
    if db.exists() and done.exists():
        return db
    source = build(n, seed=seed, photos=photos)
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(db.name + ".indexes"), ignore_errors=True)
    with sqlite3.connect(source) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # a consistent copy, WAL included
    shutil.copytree(source.with_name(source.name + ".indexes"), db.with_name(db.name + ".indexes"))
    rng = np.random.default_rng(seed + 1)
    store = Store.open(db)
    record = store.spaces()[0]
    store.set_copies(record.id, True)
    print(f"writing {n} x {len(VIEWS)} synthetic copy views into {db}", file=sys.stderr)
    with store.vector_snapshot(record.id) as stored:
        pages = list(stored.chunks(500))
    for ids, vectors in pages:
        noise = rng.standard_normal((len(ids), len(VIEWS), vectors.shape[1])).astype(np.float32)
        scale = rng.uniform(0.01, 0.02, (len(ids), len(VIEWS), 1)).astype(np.float32)
        views = vectors[:, None, :] + noise * scale
        views /= np.linalg.norm(views, axis=2, keepdims=True)
        store.write_views(record.id, list(zip(ids.tolist(), views, strict=True)))
    store.close()
    with Library.open(db) as lib:
        CopyIndex.open(lib.space())  # built and saved once
    done.write_text("ok")
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", type=Path, help="real photos to draw embeddings from")
    args = parser.parse_args()
    print(build(args.n, seed=args.seed, photos=args.photos))


if __name__ == "__main__":
    main()
