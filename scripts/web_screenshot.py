"""Screenshots of the search page for the docs: serve a library on a free loopback port and
photograph the results view and the duplicates view in headless Chromium at 1280x800.

    .venv/bin/python scripts/web_screenshot.py                 # the demo library (scripts/demo)
    .venv/bin/python scripts/web_screenshot.py --db lib.db --query photo.jpg

Writes docs/web-page.png and docs/web-dups.png (``--out`` to put them elsewhere). The results
view searches with ``--query`` (default: the demo's query photo) dropped onto the page, or
shows the images similar to the first one when there is no query photo. Thumbnails go to a
temporary folder, so the library's folder is not written to. ``serving`` is also what the
browser test uses to run a live server.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo-data"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SIZE = {"width": 1280, "height": 800}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(library: Any, thumbs: Path, *, warm: bool = False) -> Iterator[str]:
    """Serve ``library`` (a :class:`featx_search.Library`) on a free loopback port in a
    background thread; yields the page's base URL and stops the server on exit."""
    import uvicorn

    from featx_search.web import create_app

    app = create_app(library, thumbs=thumbs, warm=warm)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def drop_file(page: Any, path: Path, target: str = "#drop") -> None:
    """Drop the file at ``path`` onto ``target`` as a user dragging it from a file manager
    would: a ``drop`` event whose DataTransfer holds the file."""
    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    page.evaluate(
        """([selector, bytes, name, type]) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], name, { type }));
            const target = document.querySelector(selector);
            const how = { dataTransfer: data, bubbles: true, cancelable: true };
            target.dispatchEvent(new DragEvent("dragover", how));
            target.dispatchEvent(new DragEvent("drop", how));
        }""",
        [target, list(path.read_bytes()), path.name, kind],
    )


def wait_until(page: Any, script: str, arg: Any = None, timeout: float = 60) -> Any:
    """Poll ``script`` (a JavaScript function of ``arg``) until it returns a truthy value.
    Playwright's ``wait_for_function`` evaluates text in the page, which the page's
    Content-Security-Policy forbids; ``evaluate`` is not subject to it."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(script, arg)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {script}")
        time.sleep(0.1)
    return value


def wait_for_results(page: Any) -> None:
    """Wait until the grid shows the first page of the query in the page's URL."""
    wait_until(
        page,
        """() => {
            const grid = document.querySelector("#grid");
            const idle = grid.getAttribute("aria-busy") === "false";
            return grid.dataset.query === location.hash && idle;
        }""",
    )


def wait_for_thumbnails(page: Any, selector: str, at_least: int = 1) -> None:
    """Wait until the first ``at_least`` images under ``selector`` have loaded."""
    wait_until(
        page,
        """([selector, n]) => {
            const images = Array.from(document.querySelectorAll(selector + " img"));
            const loaded = (i) => i.complete && i.naturalWidth > 0;
            return images.length >= n && images.slice(0, n).every(loaded);
        }""",
        [selector, at_least],
    )


def chromium() -> str:
    found = next((p for name in CHROMIUM if (p := shutil.which(name))), None)
    if found is None:
        sys.exit("web_screenshot: no Chromium found (apt-get install chromium)")
    return found


def shoot(db: Path, query: Path | None, out: Path, threshold: float) -> None:
    from playwright.sync_api import sync_playwright

    from featx_search import Library

    out.mkdir(parents=True, exist_ok=True)
    with (
        Library.open(db, read_only=True) as library,
        tempfile.TemporaryDirectory() as thumbs,
        serving(library, Path(thumbs), warm=query is not None) as url,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport=SIZE, color_scheme="light")
            page.goto(url)
            wait_for_results(page)
            if query is not None:
                drop_file(page, query)
            else:
                page.locator("#grid .card button.similar").first.click()
            wait_for_results(page)
            wait_for_thumbnails(page, "#grid", min(8, page.locator("#grid .card").count()))
            page.screenshot(path=out / "web-page.png")
            page.goto(f"{url}#dups&threshold={threshold}")
            wait_until(page, "() => document.querySelector('#dups-summary').textContent", None, 120)
            if page.locator("#groups .group").count():
                wait_for_thumbnails(page, "#groups")
            page.screenshot(path=out / "web-dups.png")
        finally:
            browser.close()
    print(f"wrote {out / 'web-page.png'} and {out / 'web-dups.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=DEMO / "demo.db", help="the library")
    parser.add_argument("--query", type=Path, default=None, help="photo to drop on the page")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs")
    parser.add_argument("--threshold", type=float, default=0.9, help="duplicates threshold")
    args = parser.parse_args(argv)
    if not args.db.exists():
        sys.exit(f"web_screenshot: no library at {args.db} (run scripts/demo, or give --db)")
    query = args.query
    if query is None and args.db == DEMO / "demo.db" and (DEMO / "query.jpg").exists():
        query = DEMO / "query.jpg"
    shoot(args.db, query, args.out, args.threshold)


if __name__ == "__main__":
    main()
