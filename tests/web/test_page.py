"""The search page: how its files are served (test client), and the page itself in a real
headless browser against a live server (drop a photo, "similar", back, duplicate review)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest

from featx_search import Library, Progress
from featx_search.activity import ActivityFile
from featx_search.web import Guard, create_app
from featx_search.web.page import FILES
from tests.cli.test_browser import _browser
from tests.support import load_script, run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

STATIC = Path(__file__).resolve().parents[2] / "featx_search" / "web" / "static"
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"


@pytest.fixture
def lib(indexed: Path) -> Iterator[Library]:
    with Library.open(indexed) as library:
        yield library


@pytest.fixture
def client(lib: Library, tmp_path: Path) -> TestClient:
    guard = Guard(hosts=("testserver",))
    return TestClient(create_app(lib, guard=guard, thumbs=tmp_path / "thumbs", warm=False))


def test_the_page_and_its_files_are_served_with_their_types(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.content == (STATIC / "index.html").read_bytes()
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        answer = client.get(f"/static/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].startswith(kind), name
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.content == (STATIC / name).read_bytes()
    assert f"/static/{'app.js'}" in page.text and "/static/style.css" in page.text
    assert set(FILES) == {p.name for p in STATIC.iterdir()}  # every shipped file is listed


def test_only_the_listed_files_are_ever_served(client: TestClient) -> None:
    for attempt in [
        "/static/../app.py",
        "/static/%2e%2e%2fapp.py",
        "/static/..%2f..%2fpyproject.toml",
        "/static/%2Fetc%2Fpasswd",
        "/static/unknown.js",
        "/static/index.html",  # the page lives at / only
        "/static/",
        "/static/__init__.py",
        "/static/APP.JS",
    ]:
        answer = client.get(attempt)
        assert answer.status_code == 404, attempt
        assert answer.headers["content-type"] == "application/json", attempt
        assert b"def create_app" not in answer.content and b"[project]" not in answer.content


def test_the_token_link_works_for_the_page(lib: Library, tmp_path: Path) -> None:
    guard = Guard(hosts=("testserver",), token="s3cret")
    locked = TestClient(create_app(lib, guard=guard, thumbs=tmp_path / "t", warm=False))
    assert locked.get("/").status_code == 401
    link = locked.get("/", params={"token": "s3cret"}, follow_redirects=False)
    assert link.status_code == 303 and link.headers["location"] == "/"
    followed = locked.get("/", params={"token": "s3cret"})  # the client keeps the cookie
    assert followed.status_code == 200 and "<title>featx-search</title>" in followed.text
    assert locked.get("/static/app.js").status_code == 200


def test_serve_prints_the_page_address(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    result = run_cli("--db", indexed, "serve", "--port", "8123", "--token", "s3cret")
    assert "at http://127.0.0.1:8123/?token=s3cret\n" in result.output
    assert started == [{"host": "127.0.0.1", "port": 8123, "log_level": "warning"}]


# -- in a browser -------------------------------------------------------------------------------


def _hash(page: Any) -> str:
    return str(page.evaluate("() => location.hash"))


def _cards(page: Any) -> list[str]:
    return list(page.locator("#grid .card").evaluate_all("cs => cs.map(c => c.dataset.path)"))


def _best(page: Any) -> set[str]:
    """The ids of the results that score 1.000 (the query image, and any exact copy)."""
    return set(
        page.locator("#grid .card").evaluate_all(
            "cs => cs.filter(c => c.querySelector('.score').textContent === '1.000')"
            ".map(c => c.dataset.id)"
        )
    )


def test_search_similar_back_and_duplicate_review_in_a_browser(
    indexed: Path, photos: Path, tmp_path: Path
) -> None:
    sync_playwright, chromium = _browser()
    shots = load_script("web_screenshot")
    shutil.copy(photos / "a" / "img01.jpg", photos / "b" / "copy.jpg")
    (photos / "b" / "broken.jpg").write_bytes(b"not a picture")
    run_cli("--db", indexed, "index", photos, "-q")
    query = photos / "b" / "img04.jpg"
    problems: list[str] = []

    with (
        Library.open(indexed) as library,
        shots.serving(library, tmp_path / "thumbs") as url,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "request",
                lambda r: (
                    None if r.url.startswith((url, "blob:", "data:")) else problems.append(r.url)
                ),
            )
            page.goto(url)
            shots.wait_for_results(page)
            shots.wait_for_thumbnails(page, "#grid", 12)
            assert len(_cards(page)) == 13  # browsing: the whole library, by path

            # Drop a photo: the most similar is itself, with its score shown.
            shots.drop_file(page, query)
            shots.wait_for_results(page)
            shots.wait_for_thumbnails(page, "#grid", 8)
            assert "upload=" in _hash(page)
            dropped = _cards(page)
            assert dropped[0] == str(query)
            assert page.locator("#summary").inner_text().endswith("most like the uploaded photo")
            assert page.locator("#query-image").evaluate("i => i.naturalWidth") > 0

            # "similar" on the third result: the URL names it and it comes first.
            third = page.locator("#grid .card").nth(2)
            third_id = third.get_attribute("data-id")
            third.locator("button.similar").click()
            shots.wait_until(page, "(id) => location.hash.includes('similar=' + id)", third_id)
            shots.wait_for_results(page)
            assert third_id in _best(page) and _cards(page) != dropped

            # Back: the upload query again, from the image kept in the tab.
            page.go_back()
            shots.wait_until(page, "() => location.hash.includes('upload=')")
            shots.wait_for_results(page)
            assert _cards(page) == dropped

            page.reload()  # the upload is kept in the tab: reload shows the same results
            shots.wait_for_results(page)
            assert _cards(page) == dropped

            # Paste an image, then pick one with the file picker: a new query each time.
            pasted = photos / "a" / "img05.jpg"
            page.evaluate(
                """async (bytes) => {
                    const data = new DataTransfer();
                    const file = new File([new Uint8Array(bytes)], "p.jpg", { type: "image/jpeg" });
                    data.items.add(file);
                    document.body.dispatchEvent(
                        new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
                }""",
                list(pasted.read_bytes()),
            )
            shots.wait_for_results(page)
            assert _cards(page)[0] == str(pasted)
            picked = photos / "b" / "img08.jpg"
            before = _hash(page)
            page.set_input_files("#picker", picked)
            shots.wait_until(page, "(h) => location.hash !== h", before)
            shots.wait_for_results(page)
            assert _cards(page)[0] == str(picked)
            page.go_back()
            page.go_back()
            shots.wait_for_results(page)
            assert _cards(page) == dropped

            # The keyboard: move, `s` for similar of the selected, Enter for the large view.
            second_id = page.locator("#grid .card").nth(1).get_attribute("data-id")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("s")
            shots.wait_until(page, "(id) => location.hash.includes('similar=' + id)", second_id)
            shots.wait_for_results(page)
            assert second_id in _best(page)
            page.keyboard.press("Enter")
            shots.wait_until(page, "() => document.querySelector('#viewer-image').naturalWidth > 0")
            page.keyboard.press("Escape")
            assert page.locator("#viewer").is_hidden()
            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("Escape")
            shot = tmp_path / "page.png"
            page.screenshot(path=shot)

            # Duplicates: the copy and its original, the keeper first; keep it with `k`.
            page.goto(f"{url}#dups&threshold=0.999")
            shots.wait_until(page, "() => document.querySelector('#dups-summary').textContent")
            shots.wait_for_thumbnails(page, "#groups", 2)
            members = page.locator("#groups .group .member").evaluate_all(
                "ms => ms.map(m => Number(m.dataset.id))"
            )
            assert len(members) == 2
            page.keyboard.press("k")
            _settle(page, "() => document.querySelector('.group.decided')")
            page.screenshot(path=tmp_path / "dups.png")
            kept = _decisions(url)
            page.keyboard.press("u")  # undo: the decision is deleted
            _settle(page, "() => !document.querySelector('.group.decided')")
            undone = _decisions(url)

            # Status: counts, and the progress of an index run while it goes on.
            page.goto(f"{url}#status")
            _settle(page, "() => document.querySelector('#status-facts').textContent")
            assert "images indexed13" in page.locator("#status-facts").inner_text().replace(
                "\n", ""
            )
            assert page.locator("#status-progress").is_hidden()
            _settle(page, "() => document.querySelector('#failures tbody').rows.length === 1")
            assert "broken.jpg" in page.locator("#failures").inner_text()
            with ActivityFile(indexed) as run:
                run.wrap(None)(Progress(done=3, total=13))
                _settle(page, "() => document.querySelector('#status-bar').value === 3")
                assert page.locator("#status-bar-text").inner_text() == "embedding: 3 of 13"
                assert page.locator("#indexing").is_visible()  # in the header too
            _settle(page, "() => document.querySelector('#status-progress').hidden")
        finally:
            browser.close()

    assert problems == []
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 1000
    (stored,) = kept
    assert stored["decision"] == "keep" and stored["keep"] == members[0]
    assert sorted(stored["image_ids"]) == sorted(members)
    assert undone == []


def _settle(page: Any, script: str) -> None:
    """Wait until ``script`` holds or the page shows an error (which fails the test)."""
    shots = load_script("web_screenshot")
    shots.wait_until(page, f"() => ({script})() || !document.querySelector('#message').hidden")
    assert page.locator("#message").is_hidden(), page.locator("#message-text").inner_text()


def _decisions(url: str) -> list[dict[str, Any]]:
    with urlopen(url + "api/dups/decisions") as answer:
        return list(json.load(answer)["decisions"])
