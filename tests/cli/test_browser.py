"""The HTML result page in a real headless browser (Chromium driven by Playwright): every
thumbnail loads and every result is shown, with no network access.

Locally the test is skipped, with the reason, when Playwright or a Chromium binary is missing;
with ``CI`` set it fails instead, so CI (which installs both, see ``.ci/run``) always runs it.
Set ``FEATX_CHROMIUM`` to use another Chromium/Chrome binary.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support import TINY, run_cli

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> tuple[Any, str]:
    """(playwright.sync_api.sync_playwright, chromium path), or skip / fail with the reason."""

    def missing(reason: str) -> Any:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {reason}")
        pytest.skip(reason)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")
    explicit = os.environ.get("FEATX_CHROMIUM")
    found = explicit or next((p for name in CANDIDATES if (p := shutil.which(name))), None)
    if not found or not Path(found).exists():
        missing("no Chromium found (apt-get install chromium, or set FEATX_CHROMIUM)")
    return sync_playwright, str(found)


def _cli(*args: str | Path) -> str:
    return run_cli(*args).stdout


def test_html_page_shows_every_result_with_its_thumbnail(
    db: Path, photos: Path, tmp_path: Path
) -> None:
    sync_playwright, chromium = _browser()
    (photos / "b" / "odd name & <tag>.png").write_bytes((photos / "b" / "img00.png").read_bytes())
    _cli("--db", db, "index", photos, "--model", TINY.model, "--weights", "none", "-q")
    page_file = tmp_path / "results.html"
    queries = [photos / "a" / "img01.jpg", photos / "b" / "img00.png"]
    args = ["--db", db, "search", *queries, "-k", "6"]
    rows = [json.loads(line) for line in _cli(*args, "--json").splitlines()]
    _cli(*args, "--html", page_file)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(offline=True)  # thumbnails must be embedded
            requests: list[str] = []
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                """() => Array.from(document.images).map(img => ({
                    ok: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
                    shown: img.getBoundingClientRect().width > 0,
                    alt: img.alt}))"""
            )
            captions = page.locator("figure.result figcaption code").all_inner_texts()
            headings = page.locator("h2").all_inner_texts()
        finally:
            browser.close()
    assert len(images) == len(rows) + len(queries)
    assert all(img["ok"] and img["shown"] for img in images), images
    assert captions == [r["path"] for r in rows]  # every result, in order, escaped correctly
    assert headings == [f"query: {q}" for q in queries]
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
