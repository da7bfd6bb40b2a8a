"""The search page: ``index.html`` with its script and style, shipped in the package and
served from a fixed list of names read once when the app is built."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

# Every file the page route may send, with its type; a name not listed here is a 404.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page(api: FastAPI) -> None:
    """Add ``GET /`` (the page) and ``GET /static/{name}`` (its script and style) to ``api``.
    The files are read here, once; no path from a request ever reaches the file system."""
    folder = resources.files(__package__ or "featx_search.web") / "static"
    files = {name: (folder / name).read_bytes() for name in FILES}

    def send(name: str) -> Response:
        return Response(files[name], media_type=FILES[name], headers=HEADERS)

    @api.get("/", include_in_schema=False)
    def index() -> Response:
        return send("index.html")

    @api.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404, f"no page file named {name!r}")
        return send(name)
