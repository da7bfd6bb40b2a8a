"""scripts/bench_serve.py's own parts: percentiles, the table, the RSS line, the multipart body,
its options, and the client threads against a tiny local HTTP server (no featx server, no
timing assertions)."""

from __future__ import annotations

import email
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import pytest

from tests.support import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports synthetic_library beside it
    return load_script("bench_serve")


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy(bench: ModuleType, n: int) -> None:
    values = np.random.default_rng(n).exponential(0.01, n).tolist()
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


def test_percentile_refuses_nothing_and_bad_q(bench: ModuleType) -> None:
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        bench.percentile([1.0], 101)


def test_run_reports_milliseconds_and_rate(bench: ModuleType) -> None:
    run = bench.Run(10_000, 8, "similar", tuple(i / 1000 for i in range(1, 101)), 2.0)
    assert run.p50_ms == pytest.approx(50.5)
    assert run.p99_ms == pytest.approx(99.01)
    assert run.rate == pytest.approx(50.0)


def test_table_has_one_row_per_run_with_every_column(bench: ModuleType) -> None:
    runs = [
        bench.Run(10_000, 1, "similar", (0.002, 0.004), 0.5),
        bench.Run(100_000, 32, "upload search", (0.25,) * 3, 1.5),
    ]
    lines = bench.format_table(runs).splitlines()
    assert len(lines) == 2 + len(runs)
    assert {line.count("|") for line in lines} == {8}
    assert lines[2] == "| 10,000 | 1 | similar | 2 | 3.0 | 4.0 | 4.0 |"
    assert lines[3] == "| 100,000 | 32 | upload search | 3 | 250.0 | 250.0 | 2.0 |"
    assert bench.find_run(runs, 100_000, 32, "upload search") is runs[1]
    assert bench.find_run(runs, 100_000, 8, "upload search") is None


def test_rss_summary_grows_from_the_first_sample(bench: ModuleType) -> None:
    line = bench.rss_summary([100 * 1024, 150 * 1024, 110 * 1024])
    assert "first 100 MiB" in line and "last 110 MiB" in line and "max 150 MiB" in line
    assert line.endswith("1.100")
    with pytest.raises(ValueError, match="two RSS samples"):
        bench.rss_summary([100])


def test_multipart_body_parses_back(bench: ModuleType) -> None:
    data = bytes(range(256)) * 10 + b"\r\n--not-a-boundary\r\n"
    body, content_type = bench.multipart({"k": "10"}, "image", "photo.jpg", data)
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.is_multipart()
    parts = {part.get_param("name", header="content-disposition"): part for part in message.walk()}
    assert parts["k"].get_payload(decode=True) == b"10"
    assert parts["image"].get_filename() == "photo.jpg"
    assert parts["image"].get_content_type() == "image/jpeg"
    assert parts["image"].get_payload(decode=True) == data


def test_options_full_quick_and_overrides(bench: ModuleType, tmp_path: Path) -> None:
    full = bench.parse_args([])
    assert full.sizes == [10_000, 100_000] and full.clients == [1, 8, 32]
    assert full.rss_requests == 10_000
    quick = bench.parse_args(["--quick", "--clients", "2", "--data", str(tmp_path)])
    assert quick.sizes == [10_000] and quick.clients == [2]  # a given option wins
    assert quick.requests == bench.QUICK["requests"] < full.requests
    assert quick.data == tmp_path


@pytest.mark.parametrize(
    "argv",
    [["--sizes", "10000,x"], ["--clients", "0"], ["--requests", "0"], ["--rss-requests", "1500"]],
)
def test_options_refuse_bad_values(bench: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_photo_is_the_largest_jpeg_under_two_megabytes(bench: ModuleType, tmp_path: Path) -> None:
    for name, size in [("a/big.jpg", 3 * 2**20), ("b/mid.JPG", 600_000), ("small.jpg", 1000)]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"\0" * size)
    (tmp_path / "huge.png").write_bytes(b"\0" * 900_000)
    assert bench.pick_photo(tmp_path) == tmp_path / "b" / "mid.JPG"


# -- the client threads ----------------------------------------------------------------------


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: ClassVar[list[tuple[str, int]]] = []
    fail_on = "/never"

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.client_address[1]))
        status = 500 if self.path == self.fail_on else 200
        body = b'{"results": []}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Local:
    """What ``load`` needs of a server: connections and its output."""

    def __init__(self, port: int) -> None:
        self.port = port

    def connect(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def output(self) -> str:
        return ""


@pytest.fixture
def local() -> Iterator[tuple[_Local, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Local(httpd.server_address[1]), handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_load_makes_warmup_then_exactly_the_timed_requests(
    bench: ModuleType, local: tuple[_Local, type[_Counting]]
) -> None:
    server, handler = local
    plan = [bench.getter(f"/item/{i}") for i in range(5)]
    latencies, seconds = bench.load(server, plan, clients=3, total=40, warmup=2)
    assert len(latencies) == 40 and all(t > 0 for t in latencies) and seconds > 0
    assert len(handler.seen) == 40 + 3 * 2
    assert len({port for _, port in handler.seen}) == 3  # one keep-alive connection each
    timed = [path for path, _ in handler.seen[6:]]
    assert sorted(timed) == sorted(f"/item/{i % 5}" for i in range(40))


def test_load_fails_on_an_error_status(
    bench: ModuleType, local: tuple[_Local, type[_Counting]]
) -> None:
    server, handler = local
    handler.fail_on = "/item/3"
    plan = [bench.getter(f"/item/{i}") for i in range(5)]
    with pytest.raises(RuntimeError, match="HTTP 500"):
        bench.load(server, plan, clients=2, total=20, warmup=0)
