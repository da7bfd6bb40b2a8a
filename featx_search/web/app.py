"""The JSON API: search by upload, similar by id, browse, duplicates, thumbnails and originals
by id.

Every image the server sends is found by its id in the library; no route takes a path from
the client. Uploads are capped while they stream in, decoded in memory with the library's
format allowlist and pixel limit, never written to disk and never indexed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..decisions import DecisionKind, covering
from ..dups import DEFAULT_DUP_THRESHOLD, DupGroup
from ..errors import ConfigError, FeatxError, ImageError, LibraryError, ReadOnlyError, SpaceError
from ..library import parse_selector
from ..options import Query
from ..query import Filters
from .batcher import Batcher
from .guard import ASGIApp, Guard, Receive, Scope, Send, guarded
from .page import add_page

if TYPE_CHECKING:
    from ..library import Library
    from ..query import Match
    from ..records import ImageFacts
    from ..space import Space

log = logging.getLogger(__name__)

MAX_UPLOAD = 20 * 2**20  # bytes of one search request, counted as they arrive
MAX_K = 1000
WARM_DELAY = 1.0  # seconds after start-up before the model loads in the background
THUMB_SIZES = range(32, 1025)
_STATUS = [
    (ReadOnlyError, 403),
    (SpaceError, 404),
    (LibraryError, 503),
    (ConfigError, 422),
    (ImageError, 404),
    (FeatxError, 400),
]


class _TooLarge(Exception):
    pass


class DecisionBody(BaseModel):
    """A decision on a duplicate group, as posted to ``/api/dups/decisions``."""

    image_ids: list[int] = Field(min_length=2, max_length=MAX_K)
    decision: DecisionKind
    keep: int | None = None


def _capped(app: ASGIApp, limit: int) -> ASGIApp:
    """Refuse request bodies over ``limit`` bytes (413), counting what arrives rather than
    trusting ``Content-Length``: past the limit the app reads an error, and whatever answer
    it starts is replaced by the 413."""
    from .guard import _refuse

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        seen = 0
        over = False
        answered = False

        async def counting() -> Any:
            nonlocal seen, over
            if over:
                raise _TooLarge
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                raise _TooLarge
            return message

        async def replacing(message: Any) -> None:
            nonlocal answered
            if not over:
                await send(message)
            elif not answered:
                answered = True
                await _refuse(send, 413, f"the request is larger than {limit} bytes")

        try:
            await app(scope, counting, replacing)
        except _TooLarge:
            if not answered:
                answered = True
                await _refuse(send, 413, f"the request is larger than {limit} bytes")

    return wrapper


def _check_listing(offset: int, limit: int) -> None:
    """A listing page's bounds (browse, duplicates, failures). Raises :class:`ConfigError`."""
    if not 1 <= limit <= MAX_K or offset < 0:
        raise ConfigError(f"limit must be in 1..{MAX_K} and offset 0 or more", param="limit")


def _filters(under: str | None, after: str | None, before: str | None) -> Filters:
    """Filters from form or query fields (an empty field is no filter)."""
    return Filters.from_text(under=under or None, after=after or None, before=before or None)


def create_app(
    library: Library,
    *,
    guard: Guard | None = None,
    max_upload: int = MAX_UPLOAD,
    thumbs: str | os.PathLike[str] | None = None,
    warm: bool = True,
) -> ASGIApp:
    """The web app over ``library``: an ASGI application (FastAPI inside, behind the host,
    token and upload-size checks). ``thumbs`` is the thumbnail cache folder (default: beside
    the library, or a temporary folder when that cannot be written). With ``warm`` the model
    of the default space loads in the background shortly after the server starts (its ASGI
    lifespan), so that the first upload search is quick."""
    guard = guard or Guard()
    batcher = Batcher(name="featx-infer")
    searcher = Batcher(64, name="featx-search", on_thread=_search_threads)
    groups_cache: dict[Any, list[DupGroup]] = {}
    groups_lock = threading.Lock()
    cache = _thumb_folder(library) if thumbs is None else Path(thumbs)
    cache.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The model loads once the server has been answering for a moment: importing torch
        # holds the interpreter for a while, and the first pages should not wait for it.
        timer = threading.Timer(WARM_DELAY, _warm, args=(library,)) if warm else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        yield
        if timer is not None:
            timer.cancel()
        batcher.close()
        searcher.close()

    api = FastAPI(title="featx-search", docs_url=None, redoc_url=None, lifespan=lifespan)

    @api.exception_handler(FeatxError)
    async def featx_error(request: Request, err: FeatxError) -> JSONResponse:
        status = next(code for kind, code in _STATUS if isinstance(err, kind))
        return JSONResponse(
            {"error": err.message, "hint": err.hint, "status": status}, status_code=status
        )

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(err.detail), "status": err.status_code}, status_code=err.status_code
        )

    def space(selector: str | None) -> Space:
        return library.space(parse_selector(selector))

    def ranked(target: Space, query: Query) -> int:
        """How many images a query ranks: the space's indexed images, or those passing the
        filters."""
        if query.filters.active:
            return int(query.filters.select(target.image_facts()).size)
        return len(target.index())

    def rows(
        matches: list[Match], query: Query, offset: int, total: int, facts: dict[int, ImageFacts]
    ) -> dict[str, Any]:
        """A page of results: ``matches[offset:]``, with sizes from ``facts`` (by id)."""
        picked = matches[offset:]
        if len(matches) < query.k:  # the threshold (or the library) ran out first
            total = len(matches)
        return {
            "results": [
                {
                    "rank": m.rank,
                    "score": m.score,
                    "image_id": m.image_id,
                    "path": m.path,
                    "width": facts[m.image_id].width if m.image_id in facts else None,
                    "height": facts[m.image_id].height if m.image_id in facts else None,
                }
                for m in picked
            ],
            "total": total,
            "more": offset + len(picked) < total,
        }

    async def answer(
        kind: str,
        space_id: str | None,
        query: Query,
        offset: int,
        item: Any,
        find: Callable[[Space, Sequence[Any], Query], list[list[Match]]],
    ) -> dict[str, Any]:
        """A page of results for one search, made on the search thread together with the
        searches of the same kind, space and query (but any ``k`` and ``offset``) waiting
        with it: ``find(space, items, query)`` answers them all with the largest ``k``."""

        def work(batch: Sequence[tuple[Any, Query, int]]) -> list[dict[str, Any]]:
            target = space(space_id)
            biggest = replace(query, k=max(q.k for _, q, _ in batch))
            found = find(target, [i for i, _, _ in batch], biggest)
            total = ranked(target, query)
            pages = [
                (matches[: q.k], q, start)
                for matches, (_, q, start) in zip(found, batch, strict=True)
            ]
            shown = sorted({m.image_id for matches, _, start in pages for m in matches[start:]})
            facts = {f.id: f for f in target.image_facts(shown)}  # one read for the batch
            return [rows(matches, q, start, total, facts) for matches, q, start in pages]

        key = (kind, space_id, replace(query, k=1))
        page_of_results: dict[str, Any] = await searcher.submit(key, (item, query, offset), work)
        return page_of_results

    def page(k: int, offset: int) -> int:
        if not 1 <= k <= MAX_K or not 0 <= offset <= 10 * MAX_K:
            raise ConfigError(f"k must be in 1..{MAX_K} and offset in 0..{10 * MAX_K}", param="k")
        return k + offset

    @api.get("/api/info")
    def info() -> dict[str, Any]:
        """Spaces, image counts and the state of each index."""
        return library.info().to_dict()

    @api.get("/api/failures")
    def failures(offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """Files that could not be indexed, by path, with the reason."""
        _check_listing(offset, limit)
        found = library.failures()
        return {
            "failures": [
                {"path": path, "error": error} for path, error in found[offset : offset + limit]
            ],
            "total": len(found),
        }

    @api.get("/api/images/{image_id}/similar")
    async def similar(
        image_id: int,
        k: int = 10,
        offset: int = 0,
        threshold: float | None = None,
        space_id: str | None = None,
    ) -> dict[str, Any]:
        """The images most like an indexed one, from its stored vector (no model)."""
        query = Query(k=page(k, offset), threshold=threshold)
        return await answer(
            "similar", space_id, query, offset, image_id, lambda t, ids, q: t.similar(list(ids), q)
        )

    @api.post("/api/search")
    async def search(
        image: Annotated[UploadFile, File()],
        k: Annotated[int, Form()] = 10,
        offset: Annotated[int, Form()] = 0,
        space_id: Annotated[str | None, Form()] = None,
        under: Annotated[str | None, Form()] = None,
        after: Annotated[str | None, Form()] = None,
        before: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """The indexed images most like an uploaded one (kept in memory, never stored)."""
        from ..images import decode_bytes

        data = await image.read()
        try:
            picture = decode_bytes(data, image.filename or "upload")
        except ImageError as err:
            raise HTTPException(415, err.message) from None
        query = Query(k=page(k, offset), filters=_filters(under, after, before))
        target = space(space_id)
        vector = await batcher.embed(target, picture, trim=query.trim)
        return await answer(
            "search",
            space_id,
            query,
            offset,
            vector,
            lambda t, vectors, q: t.search_vectors(np.stack(vectors), q),
        )

    @api.get("/api/images")
    def browse(
        offset: int = 0,
        limit: int = 50,
        under: str | None = None,
        after: str | None = None,
        before: str | None = None,
        space_id: str | None = None,
    ) -> dict[str, Any]:
        """Indexed images by path, a page at a time."""
        _check_listing(offset, limit)
        target = space(space_id)
        filters = _filters(under, after, before)
        if filters.active:
            facts = target.image_facts()
            chosen = set(filters.select(facts).tolist())
            kept = sorted((f for f in facts if f.id in chosen), key=lambda f: f.path)
            total, shown = len(kept), kept[offset : offset + limit]
        else:
            total, shown = len(target.index()), target.browse(offset, limit)
        return {
            "results": [
                {"image_id": f.id, "path": f.path, "width": f.width, "height": f.height}
                for f in shown
            ],
            "total": total,
            "more": offset + len(shown) < total,
        }

    def groups_of(threshold: float, exact: bool, space_id: str | None) -> list[DupGroup]:
        """Duplicate groups, kept while the space's vectors do not change: paging through
        them, or coming back to a threshold, does not compare everything again."""
        target = None if exact else space(space_id)
        key = (None if target is None else (target.id, target.generation), threshold, exact)
        with groups_lock:
            found = groups_cache.pop(key, None)
        if found is None:
            found = (
                library.duplicates(exact=True) if target is None else target.duplicates(threshold)
            )
        with groups_lock:
            groups_cache[key] = found
            while len(groups_cache) > 4:
                groups_cache.pop(next(iter(groups_cache)))
        return found

    @api.get("/api/dups")
    def dups(
        threshold: float = DEFAULT_DUP_THRESHOLD,
        offset: int = 0,
        limit: int = 20,
        exact: bool = False,
        undecided: bool = False,
        space_id: str | None = None,
    ) -> dict[str, Any]:
        """Groups of duplicates, largest first, each with its suggested keeper first (from
        stored vectors: no model), and the decision that covers the group, if any.
        ``undecided`` leaves out groups that have one."""
        _check_listing(offset, limit)
        decided = library.decisions()
        listed = []
        for group in groups_of(threshold, exact, space_id):
            ids = [m.image_id for m in group.members]
            decision = covering(decided, ids)
            if undecided and decision is not None:
                continue
            listed.append((group, ids, decision))
        return {
            "groups": [
                {
                    "rank": group.rank,
                    "key": "-".join(map(str, sorted(ids))),
                    "members": [m.to_dict() for m in group.members],
                    "decision": None if decision is None else decision.to_dict(),
                }
                for group, ids, decision in listed[offset : offset + limit]
            ],
            "total": len(listed),
        }

    @api.get("/api/dups/decisions", response_model=None)
    def decisions(format: Literal["json", "csv"] = "json") -> dict[str, Any] | Response:
        """The decisions recorded on duplicate groups, oldest first; ``format=csv`` gives
        one row per image with its part (keep, duplicate, distinct), as
        ``featx-search dups --decisions --csv`` does."""
        recorded = library.decisions()
        if format == "csv":
            from ..output import csv_text, decision_listing

            return Response(
                csv_text(decision_listing("decisions", recorded)),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="dup-decisions.csv"'},
            )
        return {"decisions": [d.to_dict() for d in recorded]}

    @api.post("/api/dups/decisions")
    def decide(body: DecisionBody) -> dict[str, Any]:
        """Record a decision on a group: keep one image (the others are its duplicates), or
        the images are not duplicates. Only recorded: no file is deleted or moved."""
        return library.decide(body.image_ids, body.decision, keep=body.keep).to_dict()

    @api.delete("/api/dups/decisions/{decision_id}")
    def forget(decision_id: int) -> dict[str, Any]:
        """Drop a recorded decision (undo)."""
        try:
            library.forget_decision(decision_id)
        except ConfigError as err:
            raise HTTPException(404, err.message) from None
        return {"deleted": decision_id}

    def stored_file(image_id: int) -> tuple[Path, str]:
        try:
            path = Path(library.image_path(image_id))
        except ImageError:
            raise HTTPException(404, f"no image with id {image_id}") from None
        try:
            stat = path.stat()
        except OSError:
            raise HTTPException(404, f"the file of image {image_id} is gone") from None
        return path, f"{image_id}-{stat.st_size}-{stat.st_mtime_ns}"

    @api.get("/api/images/{image_id}/thumbnail")
    async def thumbnail(image_id: int, request: Request, size: int = 192) -> Response:
        """A JPEG thumbnail, made once and kept in the thumbnail cache."""
        if size not in THUMB_SIZES:
            raise ConfigError(f"size must be in 32..1024, got {size}", param="size")
        path, version = stored_file(image_id)
        etag = '"' + hashlib.sha256(f"{version}-{size}".encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        cached = cache / f"{etag.strip(chr(34))}.jpg"
        if cached.is_file():
            return Response(cached.read_bytes(), media_type="image/jpeg", headers=headers)
        from ..thumbs import thumbnail_jpeg

        data = await run_in_threadpool(thumbnail_jpeg, path, size)
        _store_thumb(cached, data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @api.get("/api/images/{image_id}/file")
    def original(image_id: int) -> FileResponse:
        """The original file, found by id."""
        path, _ = stored_file(image_id)
        return FileResponse(path)

    @api.get("/api/docs", response_class=HTMLResponse)
    def docs() -> str:
        """This API's routes, from its OpenAPI schema (no scripts, works offline)."""
        items = []
        for route, methods in api.openapi()["paths"].items():
            for method, op in methods.items():
                summary = op.get("description") or op.get("summary", "")
                items.append(f"<li><code>{method.upper()} {route}</code>: {summary}</li>")
        return (
            "<!doctype html><meta charset=utf-8><title>featx-search API</title>"
            "<h1>featx-search API</h1><p>Schema: <a href=/openapi.json>/openapi.json</a></p>"
            f"<ul>{''.join(items)}</ul>"
        )

    add_page(api)
    return guarded(_capped(api, max_upload), guard)


def _search_threads() -> None:
    """Let the search thread's FAISS calls use every core: it runs the searches of all
    requests, batched (the OpenMP thread count is per calling thread)."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)


def _warm(library: Library) -> None:
    """Load the default space's model ahead of the first upload search: its query model
    when it has one (no torch in the server), else its extractor."""
    try:
        space = library.space()
        if space.query_model() is None:
            space.extractor()
    except FeatxError as err:  # searches will say it again, with the same message
        log.warning("the model could not be loaded ahead of time: %s", err)


def _thumb_folder(library: Library) -> Path:
    folder = library.path.with_name(library.path.name + ".thumbs")
    try:
        folder.mkdir(exist_ok=True)
        probe = folder / ".probe"
        probe.touch()
        probe.unlink()
    except OSError:  # a read-only library: keep thumbnails for this run only
        folder = Path(tempfile.mkdtemp(prefix="featx-thumbs-"))
    return folder


def _store_thumb(target: Path, data: bytes) -> None:
    tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as err:
        log.debug("thumbnail not cached: %s", err)
