"""Load a live `featx-search serve` with concurrent clients: latency and throughput of
`similar` by id and of upload search, the server's memory over many requests, and its start-up.

    nice -n 10 .venv/bin/python scripts/bench_serve.py --data /work/main/bench-data
    nice -n 10 .venv/bin/python scripts/bench_serve.py --quick          # 10k, 1 and 8 clients

For each library size (built by scripts/synthetic_library.py, cached in --data) the script
starts `python -m featx_search --db LIB serve --port P` as a child process and times how long
it takes until `GET /api/info` first answers 200 and until a first upload search answers.
Then, for each number of clients, every client (a thread with one keep-alive
`http.client.HTTPConnection`) makes its warm-up requests, and all of them together make a
fixed number of timed requests: `GET /api/images/{id}/similar?k=10` with random indexed ids,
then `POST /api/search` with a real JPEG photo (multipart field `image`, k=10). The table
gives p50 and p99 latency and requests per second.

The bare embedding speed is measured in this process while the server idles, before and after
the client runs: the model the server embeds uploads with (the space's query model, saved
first as `index` does, else its extractor) embeds batches of the same photo, decoded, trimmed
and preprocessed as the server does for an upload (the model call alone is timed too). Upload
search with 8 clients is compared with it (target: at least 0.8 of it), and `similar` p99 with
8 clients on the largest library with 50 ms. A library at an older schema is migrated before
its server is started, so that start-up is timed without the migration. Last, on the largest
library, 8 clients make --rss-requests `similar` requests while the server's resident memory
(VmRSS) is read every 1,000 requests; the first 1,000 are the warm-up, so growth is the last
sample over the first.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from synthetic_library import DATA, build, cpu_model, photos_folder

if TYPE_CHECKING:
    from featx_search.space import Space

CLI = [sys.executable, "-m", "featx_search"]
K = 10
RSS_EVERY = 1000
RSS_CLIENTS = 8
RATIO_CLIENTS = 8  # the concurrency both targets are stated for
UPLOAD_TARGET = 0.8  # upload search throughput / bare embedding throughput, at least
SIMILAR_P99_TARGET_MS = 50.0
STARTUP_TARGET_S = 1.0
# Defaults of a full run and of --quick, for every option left unset.
FULL = {
    "sizes": "10000,100000",
    "clients": "1,8,32",
    "requests": 2000,
    "upload_requests": 200,
    "warmup": 5,
    "rss_requests": 10_000,
    "embed_images": 96,
}
QUICK = {
    "sizes": "10000",
    "clients": "1,8",
    "requests": 300,
    "upload_requests": 40,
    "warmup": 2,
    "rss_requests": 3000,
    "embed_images": 32,
}


# -- pure helpers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolating linearly between the two
    nearest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Run:
    """The timed part of one configuration: per-request latencies (s) and the wall time (s)
    from the moment all clients were warm until the last answer."""

    size: int
    clients: int
    route: str
    latencies: tuple[float, ...]
    seconds: float

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.latencies, 50)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.latencies, 99)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def format_table(runs: Sequence[Run]) -> str:
    """A markdown table: images x clients x route -> requests, p50 ms, p99 ms, req/s."""
    lines = [
        "| images | clients | route | requests | p50 ms | p99 ms | req/s |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r.size:,} | {r.clients} | {r.route} | {len(r.latencies):,} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.rate:.1f} |"
        )
    return "\n".join(lines)


def find_run(runs: Sequence[Run], size: int, clients: int, route: str) -> Run | None:
    return next((r for r in runs if (r.size, r.clients, r.route) == (size, clients, route)), None)


def rss_summary(samples_kib: Sequence[int]) -> str:
    """One line about the server's VmRSS samples, taken every RSS_EVERY requests; the first
    sample closes the warm-up, so growth is last / first."""
    if len(samples_kib) < 2:
        raise ValueError("need at least two RSS samples (one after the warm-up, one later)")
    first, last, peak = samples_kib[0], samples_kib[-1], max(samples_kib)
    return (
        f"first {first / 1024:.0f} MiB, last {last / 1024:.0f} MiB, max {peak / 1024:.0f} MiB, "
        f"growth last/first after warm-up {last / first:.3f}"
    )


def multipart(fields: dict[str, str], name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text ``fields`` and one file field ``name``:
    (body, Content-Type header value)."""
    boundary = "featx-bench-" + os.urandom(8).hex()
    parts = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="{name}"; filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _int_list(text: str) -> list[int]:
    values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas: {text}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options; those left unset take FULL's values, or QUICK's with --quick."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="where libraries are cached")
    parser.add_argument("--photos", type=Path, help="real photos (see synthetic_library.py)")
    parser.add_argument("--photo", type=Path, help="the JPEG to upload (default: from --photos)")
    parser.add_argument("--sizes", help="library sizes, comma-separated")
    parser.add_argument("--clients", help="numbers of concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, help="timed similar requests per configuration")
    parser.add_argument("--upload-requests", type=int, help="timed uploads per configuration")
    parser.add_argument("--warmup", type=int, help="untimed requests per client first")
    parser.add_argument("--rss-requests", type=int, help="similar requests of the memory run")
    parser.add_argument("--embed-images", type=int, help="images of each bare embedding run")
    parser.add_argument("--seed", type=int, default=0, help="of the random ids")
    parser.add_argument("--quick", action="store_true", help="a short run: 10k, 1 and 8 clients")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.sizes = _int_list(args.sizes)
        args.clients = _int_list(args.clients)
    except (argparse.ArgumentTypeError, ValueError) as err:
        parser.error(str(err))
    for key in ("requests", "upload_requests", "rss_requests", "embed_images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.rss_requests < 2 * RSS_EVERY:
        parser.error(f"--rss-requests must be at least {2 * RSS_EVERY}")
    return args


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vm_rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmRSS:")))


class Server:
    """`featx-search --db DB serve` in a child process on a free port; stopped on exit."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = free_port()
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [*CLI, "--db", str(db), "serve", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def connect(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.output()}")

    def wait_for(self, request: Request, deadline_s: float = 300) -> float:
        """Seconds from spawning the server until ``request`` first answers 200 (a refused
        connection or a 503 is tried again; any other status is an error)."""
        while True:
            self._alive()
            try:
                conn = self.connect(timeout=deadline_s)
                try:
                    status, body = request(conn)
                finally:
                    conn.close()
            except OSError:
                status, body = 0, b""
            if status == 200:
                return time.perf_counter() - self.started
            if status not in (0, 503):
                raise RuntimeError(f"{status}: {body[:500]!r}")
            if time.perf_counter() - self.started > deadline_s:
                raise RuntimeError(f"no answer after {deadline_s} s:\n{self.output()}")
            time.sleep(0.005)


Request = Callable[[http.client.HTTPConnection], tuple[int, bytes]]


def getter(path: str) -> Request:
    def request(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()

    return request


def poster(path: str, body: bytes, content_type: str) -> Request:
    headers = {"Content-Type": content_type}

    def request(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    return request


# -- the clients ------------------------------------------------------------------------------


def load(
    server: Server,
    plan: Sequence[Request],
    clients: int,
    total: int,
    warmup: int,
    start: int = 0,
) -> tuple[list[float], float]:
    """``clients`` threads, each on its own keep-alive connection, make ``warmup`` requests
    each, wait for one another, then share ``total`` timed requests, taking turns through
    ``plan`` from ``start``. Returns (latencies in seconds, wall seconds of the timed part)."""
    counter = itertools.count()
    take = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    marks: dict[str, float] = {}

    def go() -> None:
        marks["start"] = time.perf_counter()

    ready = threading.Barrier(clients, action=go)

    def client(number: int) -> None:
        conn = server.connect()
        mine: list[float] = []
        try:
            for i in range(warmup):
                conn = call(conn, plan[(number * warmup + i) % len(plan)])
            ready.wait()
            while True:
                with take:
                    i = next(counter)
                if i >= total or errors:
                    break
                began = time.perf_counter()
                conn = call(conn, plan[(start + i) % len(plan)])
                mine.append(time.perf_counter() - began)
        except Exception as err:  # reported by the main thread
            errors.append(f"{type(err).__name__}: {err}")
            ready.abort()
        finally:
            conn.close()
            with take:
                latencies.extend(mine)

    def call(conn: http.client.HTTPConnection, request: Request) -> http.client.HTTPConnection:
        try:
            status, body = request(conn)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()  # the server closed the keep-alive connection: one new try
            conn = server.connect()
            status, body = request(conn)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return conn

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - marks.get("start", time.perf_counter())
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, first: {errors[0]}\n{server.output()}")
    return latencies, seconds


# -- the bare model ---------------------------------------------------------------------------


def bare_embedding(space: Space, data: bytes, images: int, batch: int) -> tuple[float, float]:
    """Images per second of the model the server embeds uploads with (the space's query
    model, else its extractor) on batches of ``batch`` copies of the JPEG ``data``, each
    decoded from bytes and preprocessed as an upload is (one batch of warm-up): (with
    decoding and preprocessing, the model call alone)."""
    import numpy as np

    from featx_search.images import decode_bytes, load_input

    extractor = space.query_model() or space.extractor()
    spec = space.record.spec.preprocess

    def one_batch(n: int) -> float:
        pictures = [load_input(decode_bytes(data, "photo.jpg"), spec, trim=True) for _ in range(n)]
        began = time.perf_counter()
        extractor.embed(np.stack(pictures))
        return time.perf_counter() - began

    one_batch(batch)
    done, model_s = 0, 0.0
    began = time.perf_counter()
    while done < images:
        n = min(batch, images - done)
        model_s += one_batch(n)
        done += n
    return done / (time.perf_counter() - began), done / model_s


def pick_photo(photos: Path) -> Path:
    """A camera-sized JPEG: the largest under 2 MB of the folder (the name breaks ties)."""
    jpegs = sorted(p for p in photos.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    fitting = [p for p in jpegs if p.stat().st_size < 2 * 2**20] or jpegs
    if not fitting:
        raise SystemExit(f"no JPEG photo in {photos}: give one with --photo")
    return max(fitting, key=lambda p: (p.stat().st_size, str(p)))


# -- the run ----------------------------------------------------------------------------------


@dataclass
class SizeReport:
    size: int
    info_s: float
    upload_s: float
    bare: list[tuple[float, float]]
    rss: list[int]


def bench_size(
    args: argparse.Namespace, size: int, photo: bytes, runs: list[Run], last: bool
) -> SizeReport:
    from featx_search import Library

    db = build(size, photos=args.photos)
    upload_body, content_type = multipart({"k": str(K)}, "image", "photo.jpg", photo)
    upload = poster("/api/search", upload_body, content_type)
    with Library.open(db) as writable:  # migrated now if it must be, not while serving
        writable.space().save_query_model()  # as `index` leaves one
    with Library.open(db, read_only=True) as lib, Server(db) as server:
        info_s = server.wait_for(getter("/api/info"))
        upload_s = server.wait_for(upload)
        print(
            f"{size:,} images: /api/info answered {info_s:.2f} s after spawning serve "
            f"(target <= {STARTUP_TARGET_S:.0f} s), the first upload search {upload_s:.2f} s",
            flush=True,
        )
        space = lib.space()
        ids = [f.id for f in space.image_facts()]
        rng = random.Random(args.seed)
        paths = [f"/api/images/{rng.choice(ids)}/similar?k={K}" for _ in range(4096)]
        similar = [getter(p) for p in paths]
        bare = [bare_embedding(space, photo, args.embed_images, RATIO_CLIENTS)]
        for clients in args.clients:
            for route, plan, total in (
                ("similar", similar, args.requests),
                ("upload search", [upload], args.upload_requests),
            ):
                latencies, seconds = load(server, plan, clients, total, args.warmup)
                runs.append(Run(size, clients, route, tuple(latencies), seconds))
                print(format_table(runs[-1:]).splitlines()[-1], flush=True)
        bare.append(bare_embedding(space, photo, args.embed_images, RATIO_CLIENTS))
        rss: list[int] = []
        if last:
            for chunk in range(args.rss_requests // RSS_EVERY):
                load(server, similar, RSS_CLIENTS, RSS_EVERY, 0, start=chunk * RSS_EVERY)
                rss.append(vm_rss_kib(server.process.pid))
    return SizeReport(size, info_s, upload_s, bare, rss)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the server's CLI sets it
    import synthetic_library

    synthetic_library.DATA = args.data  # build() and photos_folder() read it at call time
    photo_path = args.photo or pick_photo(photos_folder(args.photos))
    photo = photo_path.read_bytes()
    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; upload {photo_path} "
        f"({len(photo) / 2**20:.2f} MiB); k={K}",
        flush=True,
    )
    runs: list[Run] = []
    reports = [
        bench_size(args, size, photo, runs, last=size == max(args.sizes)) for size in args.sizes
    ]
    print()
    print(format_table(runs))
    print()
    for report in reports:
        verdict = "met" if report.info_s <= STARTUP_TARGET_S else "NOT met"
        print(
            f"start-up at {report.size:,}: /api/info {report.info_s:.2f} s "
            f"(target <= {STARTUP_TARGET_S:.0f} s: {verdict}), first upload search "
            f"{report.upload_s:.2f} s"
        )
        bare = statistics.mean(b for b, _ in report.bare)
        print(
            f"bare embedding at {report.size:,} (decode + preprocess + model, batches of "
            f"{RATIO_CLIENTS}, in this process): "
            + ", ".join(f"{b:.1f}" for b, _ in report.bare)
            + f" img/s (before, after the clients; mean {bare:.1f}); the model call alone "
            + ", ".join(f"{m:.1f}" for _, m in report.bare)
            + " img/s"
        )
        found = find_run(runs, report.size, RATIO_CLIENTS, "upload search")
        if found is not None:
            ratio = found.rate / bare
            verdict = "met" if ratio >= UPLOAD_TARGET else "NOT met"
            print(
                f"upload search with {RATIO_CLIENTS} clients / bare embedding at "
                f"{report.size:,}: {ratio:.2f} (target >= {UPLOAD_TARGET}: {verdict})"
            )
    largest = max(args.sizes)
    found = find_run(runs, largest, RATIO_CLIENTS, "similar")
    if found is not None:
        verdict = "met" if found.p99_ms < SIMILAR_P99_TARGET_MS else "NOT met"
        print(
            f"similar p99 with {RATIO_CLIENTS} clients at {largest:,}: {found.p99_ms:.1f} ms "
            f"(target < {SIMILAR_P99_TARGET_MS:.0f} ms: {verdict})"
        )
    rss = next(r.rss for r in reports if r.size == largest)
    print(
        f"server RSS over {len(rss) * RSS_EVERY:,} similar requests at {largest:,} "
        f"({RSS_CLIENTS} clients, read every {RSS_EVERY:,}): {rss_summary(rss)}"
    )
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
