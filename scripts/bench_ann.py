"""Benchmark index types: build time, memory, queries/s (1 and 2 threads), recall@10.

Vectors that behave like real embeddings (random Gaussian vectors do not: their
neighbourhoods are meaningless) are made in three steps, each cached under --cache:

1. real embeddings: every sample photo and ~24 edits of it (crops, flips, rotations, colour,
   blur, JPEG re-encoding, downscaling) through the default model (efficientnet_lite0, 1280-d);
2. PCA of those to --dim dimensions (1M x 1280 floats would need 5 GB);
3. expansion to --n vectors in two levels, like a real library: "virtual photos" (a real
   vector moved part of the way towards another one, plus noise along the real principal
   directions, at about the spread between real photos) and "edits" of each (noise at
   about the spread between real edits of one photo). Queries are fresh edits of stored
   virtual photos, so their true neighbours are their siblings.

Photos come from --photos, else from the Debian package mate-backgrounds, fetched with
`apt-get download` into --cache (like scripts/demo). Exact search (Flat) gives the ground
truth. Every index is built through featx_search.ann.index.VectorIndex, so nprobe / efSearch are
the defaults the library tunes (recall@10 >= 0.95 on stored vectors); PQ codes are
re-ranked from the float vectors in memory (the library reads them from SQLite).

    nice -n 10 .venv/bin/python scripts/bench_ann.py --n 100000 --dim 256
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads slow
# k-means (IVF / PQ training) down many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featx_search.ann.index import VectorIndex, _array_fetch  # noqa: E402
from featx_search.ann.spec import SearchParams, choose_spec, is_ondisk, ivf_size  # noqa: E402

EDITS = 24


def fetch_photos(cache: Path) -> Path:
    target = cache / "photos"
    if target.exists() and any(target.rglob("*.jpg")):
        return target
    work = cache / "deb"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "mate-backgrounds"], cwd=work, check=True)
    deb = next(work.glob("mate-backgrounds_*.deb"))
    subprocess.run(["dpkg", "-x", deb.name, "x"], cwd=work, check=True)
    (work / "x/usr/share/backgrounds/mate").rename(target)
    return target


def edits(img: object, rng: np.random.Generator) -> list[object]:
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    assert isinstance(img, Image.Image)
    w, h = img.size
    out: list[Image.Image] = [img, ImageOps.mirror(img)]
    for _ in range(EDITS - 2):
        kind = rng.integers(0, 6)
        if kind == 0:
            f = rng.uniform(0.5, 0.9)
            x0, y0 = rng.integers(0, int(w * (1 - f)) + 1), rng.integers(0, int(h * (1 - f)) + 1)
            out.append(img.crop((x0, y0, x0 + int(w * f), y0 + int(h * f))))
        elif kind == 1:
            out.append(img.rotate(float(rng.uniform(-20, 20)), expand=True, fillcolor="grey"))
        elif kind == 2:
            out.append(ImageEnhance.Color(img).enhance(float(rng.uniform(0.2, 1.8))))
        elif kind == 3:
            out.append(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 4)))))
        elif kind == 4:
            import io

            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rng.integers(5, 30)))
            out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        else:
            s = float(rng.uniform(0.15, 0.4))
            out.append(img.resize((max(32, int(w * s)), max(32, int(h * s)))))
    return out


def real_embeddings(photos: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    path = cache / "real.npz"
    if path.exists():
        data = np.load(path)
        return data["vectors"], data["photo"]
    from featx_search import ExtractorSpec
    from featx_search.extract import load_extractor
    from featx_search.images import decode, preprocess

    extractor = load_extractor(ExtractorSpec())
    spec = extractor.space.preprocess
    rng = np.random.default_rng(0)
    vectors, owner = [], []
    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    for i, file in enumerate(files):
        img, _ = decode(file, min_side=512)
        batch = np.stack([preprocess(e, spec) for e in edits(img, rng)])  # type: ignore[arg-type]
        vectors.append(extractor.embed(batch))
        owner += [i] * len(batch)
        print(f"  embedded {file.name} and its edits", file=sys.stderr)
    out = np.concatenate(vectors).astype(np.float32), np.asarray(owner)
    np.savez(path, vectors=out[0], photo=out[1])
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(
    real: np.ndarray, owner: np.ndarray, n: int, dim: int, queries: int, cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    path = cache / f"vectors-{n}-{dim}.npz"
    if path.exists():
        data = np.load(path)
        return data["base"], data["queries"]
    mean = real.mean(axis=0)
    _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
    dim = min(dim, len(s))
    basis, spread = vt[:dim], s[:dim] / np.sqrt(len(real))
    low = _unit((real - mean) @ basis.T)
    # typical distances: between edits of one photo, and between photos
    d_edit = np.mean(
        [
            np.linalg.norm(low[owner == p] - low[owner == p].mean(0), axis=1).mean()
            for p in set(owner)
        ]
    )
    centres = np.stack([low[owner == p].mean(0) for p in sorted(set(owner))])
    d_photo = np.linalg.norm(centres - centres.mean(0), axis=1).mean()
    print(f"  edit spread {d_edit:.3f}, photo spread {d_photo:.3f}", file=sys.stderr)
    rng = np.random.default_rng(1)
    shape = spread / np.linalg.norm(spread)  # noise follows the real principal directions

    def noise(count: int, size: float) -> np.ndarray:
        return rng.normal(size=(count, dim)).astype(np.float32) * shape * size

    per = 50  # edits per virtual photo
    n_virtual = max(1, n // per)
    a, b = rng.integers(0, len(low), n_virtual), rng.integers(0, len(low), n_virtual)
    t = rng.uniform(0, 0.5, (n_virtual, 1)).astype(np.float32)
    virtual = _unit(low[a] + t * (low[b] - low[a]) + noise(n_virtual, 0.5 * d_photo))
    base = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        idx = np.arange(start, min(n, start + 100_000)) % n_virtual
        base[start : start + len(idx)] = _unit(virtual[idx] + noise(len(idx), d_edit))
    q = _unit(virtual[rng.integers(0, n_virtual, queries)] + noise(queries, d_edit))
    np.savez(path, base=base, queries=q)
    return base, q


def qps(
    index: VectorIndex, queries: np.ndarray, threads: int, params: SearchParams | None
) -> float:
    import faiss

    faiss.omp_set_num_threads(threads)
    best = 0.0
    for _ in range(2):
        started = time.perf_counter()
        if threads == 1:
            for row in queries:  # one query at a time, as a user would search
                index.search(row[None], 10, params=params)
        else:
            index.search(queries, 10, params=params)
        best = max(best, len(queries) / (time.perf_counter() - started))
    return best


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-data")
    parser.add_argument("--specs", help="comma-free list separated by ';' (default: a set)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    import faiss

    photos = args.photos or fetch_photos(args.cache)
    real, owner = real_embeddings(photos, args.cache)
    base, queries = synthetic(real, owner, args.n, args.dim, args.queries, args.cache)
    n, dim = base.shape
    ids = np.arange(1, n + 1, dtype=np.int64)
    nlist = ivf_size(n)
    flat_bytes = n * dim * 4
    specs = (
        args.specs.split(";")
        if args.specs
        else [
            "Flat",
            "HNSW32",
            f"IVF{nlist},Flat",
            f"IVF{nlist},PQ{dim // 4}",
            f"IVF{nlist},PQ{dim // 8}",
        ]
    )
    auto = choose_spec(n, dim)
    auto_small = choose_spec(n, dim, flat_bytes // 16)
    specs += [s for s in (auto, auto_small) if s not in specs]
    print(f"{n} vectors x {dim}-d from {len(real)} real lite0 embeddings; {len(queries)} queries")
    print(
        f"auto -> {auto}; auto with --max-memory {flat_bytes // 16} (1/16 of Flat) -> {auto_small}"
    )
    rows = []
    truth = None
    flat_qps: dict[int, float] = {}
    for spec in specs:
        gc.collect()
        faiss.omp_set_num_threads(1)  # builds on one thread: comparable on a shared machine
        started = time.perf_counter()
        lists = None  # an ondisk: spec (auto under a budget) maps its lists from a temp file
        if is_ondisk(spec):
            lists = Path(tempfile.mkdtemp(prefix="bench-ann-")) / "lists.ivfdata"
        index = VectorIndex.build(dim, ids, base, spec=spec, ivfdata=lists)
        build = time.perf_counter() - started
        index.fetch = _array_fetch(ids, base)
        memory = index.nbytes
        _, found = index.search(queries, 10)
        if truth is None:
            if spec != "Flat":
                sys.exit("the first spec must be Flat (it gives the ground truth)")
            truth = found
        r = recall(found, truth)
        q1 = qps(index, queries, 1, None)
        q2 = qps(index, queries, 2, None)
        if spec == "Flat":
            flat_qps = {1: q1, 2: q2}
        tags = [t for t, s in (("auto", auto), ("auto 1/16", auto_small)) if s == spec]
        rows.append(
            (
                spec + (f" [{', '.join(tags)}]" if tags else ""),
                build,
                memory,
                q1,
                q2,
                r,
                index.params,
            )
        )
        print(
            f"{rows[-1][0]:<26} build (1t) {build:7.1f} s  memory {memory / 2**20:8.1f} MiB "
            f"({memory / flat_bytes:5.3f} x Flat)  "
            f"qps 1t {q1:8.0f} ({q1 / flat_qps[1]:6.1f} x Flat)  "
            f"2t {q2:8.0f} ({q2 / flat_qps[2]:6.1f} x Flat)  recall@10 {r:.3f}  "
            f"{index.params.to_dict()}",
            flush=True,
        )
        del index
    print("\nratios are measured side by side in this run; absolute times vary on a shared machine")


if __name__ == "__main__":
    main()
