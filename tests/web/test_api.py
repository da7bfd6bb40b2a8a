"""The web API through FastAPI's test client: routes, and what a hostile client may try."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from featx_search import ConfigError, Library
from featx_search.web import Guard, check_bind, create_app
from tests.support import run_cli

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

HOSTS = ("testserver", "127.0.0.1", "localhost")


@pytest.fixture
def lib(indexed: Path) -> Iterator[Library]:
    with Library.open(indexed) as library:
        yield library


def _client(lib: Library, tmp_path: Path, **kwargs: object) -> TestClient:
    guard = kwargs.pop("guard", Guard(hosts=HOSTS))
    app = create_app(lib, guard=guard, thumbs=tmp_path / "thumbs", warm=False, **kwargs)  # type: ignore[arg-type]
    return TestClient(app)


def _jpeg(photo: Path) -> bytes:
    return photo.read_bytes()


def _id(client: TestClient, name: str) -> int:
    rows = client.get("/api/images", params={"limit": 100}).json()["results"]
    return next(r["image_id"] for r in rows if r["path"].endswith(name))


def test_every_route_answers(lib: Library, photos: Path, tmp_path: Path) -> None:
    client = _client(lib, tmp_path)
    info = client.get("/api/info").json()
    assert info["images"] == {"indexed": 12} and len(info["spaces"]) == 1
    listing = client.get("/api/images", params={"limit": 5, "offset": 10}).json()
    assert listing["total"] == 12 and len(listing["results"]) == 2
    under_a = client.get("/api/images", params={"under": str(photos / "a")}).json()
    assert under_a["total"] == 6
    target = _id(client, "img01.jpg")
    similar = client.get(f"/api/images/{target}/similar", params={"k": 3}).json()
    assert [r["rank"] for r in similar["results"]] == [1, 2, 3]
    assert similar["results"][0]["image_id"] == target
    assert {"score", "path", "width", "height"} <= set(similar["results"][0])
    paged = client.get(f"/api/images/{target}/similar", params={"k": 2, "offset": 1}).json()
    assert [r["image_id"] for r in paged["results"]] == [
        r["image_id"] for r in similar["results"][1:3]
    ]
    upload = {"image": ("q.jpg", _jpeg(photos / "a" / "img01.jpg"), "image/jpeg")}
    found = client.post("/api/search", files=upload, data={"k": "2"}).json()
    assert found["results"][0]["image_id"] == target and len(found["results"]) == 2
    thumb = client.get(f"/api/images/{target}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    again = client.get(
        f"/api/images/{target}/thumbnail",
        params={"size": 64},
        headers={"If-None-Match": thumb.headers["etag"]},
    )
    assert again.status_code == 304 and list((tmp_path / "thumbs").glob("*.jpg"))
    original = client.get(f"/api/images/{target}/file")
    assert original.content == (photos / "a" / "img01.jpg").read_bytes()
    shutil.copy(photos / "a" / "img01.jpg", photos / "b" / "copy.jpg")
    run_cli("--db", lib.path, "index", photos, "-q")
    groups = client.get("/api/dups", params={"threshold": 0.999}).json()
    assert groups["total"] == 1
    (group,) = groups["groups"]
    assert {m["path"].rsplit("/", 1)[1] for m in group["members"]} == {"img01.jpg", "copy.jpg"}
    assert group["members"][0]["keeper"] and not group["members"][1]["keeper"]
    assert client.get("/api/dups", params={"exact": True}).json()["total"] == 1
    assert client.get("/api/dups", params={"limit": 0}).status_code == 422
    assert client.get("/api/failures").json() == {"failures": [], "total": 0}
    (photos / "b" / "broken.jpg").write_bytes(b"not a picture")
    run_cli("--db", lib.path, "index", photos, "-q")
    (failed,) = client.get("/api/failures").json()["failures"]
    assert failed["path"].endswith("broken.jpg") and failed["error"]
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert "/api/images/{image_id}/similar" in client.get("/api/docs").text


def test_errors_are_json_with_a_fitting_status(lib: Library, photos: Path, tmp_path: Path) -> None:
    client = _client(lib, tmp_path)
    missing = client.get("/api/images/999999/file")
    assert missing.status_code == 404 and "999999" in missing.json()["error"]
    assert client.get("/api/images/999999/similar").status_code == 404
    assert client.get("/api/images/1/similar", params={"k": 0}).status_code == 422
    assert client.get("/api/images/1/thumbnail", params={"size": 5000}).status_code == 422
    assert client.get("/api/images", params={"after": "last week"}).status_code == 422
    text = {"image": ("notes.jpg", b"this is not an image", "image/jpeg")}
    refused = client.post("/api/search", files=text)
    assert refused.status_code == 415 and "not an image" in refused.json()["error"]
    assert client.post("/api/search").status_code == 422  # no image field


def test_paths_from_the_client_are_never_served(lib: Library, photos: Path, tmp_path: Path) -> None:
    client = _client(lib, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (photos / "a" / "link.jpg").symlink_to(secret)
    for attempt in [
        "/api/images/../../etc/passwd/file",
        "/api/images/%2e%2e%2fsecret.txt/file",
        f"/api/images/{secret}/file",
        "/api/images/..%2F..%2Fsecret.txt/thumbnail",
        "/api/images/1%2F..%2F2/file",
    ]:
        answer = client.get(attempt)
        assert answer.status_code in (404, 422), attempt
        assert b"do not serve" not in answer.content
    run_cli("--db", lib.path, "index", photos, "-q")  # the link is not indexed: no image
    assert all(
        not r["path"].endswith("link.jpg") for r in client.get("/api/images").json()["results"]
    )


def test_uploads_are_capped_while_they_stream(lib: Library, photos: Path, tmp_path: Path) -> None:
    client = _client(lib, tmp_path, max_upload=4096)
    big = {"image": ("big.jpg", b"\xff" * 10_000, "image/jpeg")}
    assert client.post("/api/search", files=big).status_code == 413
    # A lying Content-Length does not help: the bytes are counted as they arrive.
    body = b"--b\r\nContent-Disposition: form-data; name=image; filename=x.jpg\r\n\r\n"
    body += b"\xff" * 10_000 + b"\r\n--b--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=b", "content-length": "100"}
    lying = client.post("/api/search", content=body, headers=headers)
    assert lying.status_code in (400, 413)
    bomb = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(bomb, "PNG")  # 144 Mpixel, a few hundred KB
    fine = _client(lib, tmp_path)
    refused = fine.post("/api/search", files={"image": ("b.png", bomb.getvalue(), "image/png")})
    assert refused.status_code == 415


def test_host_and_token_are_checked(lib: Library, tmp_path: Path) -> None:
    client = _client(lib, tmp_path)
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400
    locked = _client(lib, tmp_path, guard=Guard(hosts=HOSTS, token="s3cret"))
    assert locked.get("/api/info").status_code == 401
    assert locked.get("/api/info", headers={"Authorization": "Bearer nope"}).status_code == 403
    ok = locked.get("/api/info", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    link = locked.get("/api/docs", params={"token": "s3cret"}, follow_redirects=False)
    assert link.status_code == 303 and "featx_token=s3cret" in link.headers["set-cookie"]
    locked.cookies.set("featx_token", "s3cret")
    assert locked.get("/api/info").status_code == 200
    assert "access-control-allow-origin" not in ok.headers


def test_binding_beyond_loopback_needs_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="token is required") as err:
        check_bind("0.0.0.0", None)
    assert err.value.param == "host"
    check_bind("0.0.0.0", "s3cret")
    result = run_cli("serve", "--host", "0.0.0.0", ok=False)
    assert result.exit_code == 1 and "token is required" in result.output


def test_dup_decisions_are_stored_listed_and_undone(
    lib: Library, photos: Path, tmp_path: Path
) -> None:
    shutil.copy(photos / "a" / "img01.jpg", photos / "b" / "copy.jpg")
    shutil.copy(photos / "a" / "img05.jpg", photos / "b" / "copy5.jpg")
    client = _client(lib, tmp_path)
    target = _id(client, "img01.jpg")
    assert client.get(f"/api/images/{target}/similar", params={"k": 2}).json()["total"] == 12
    run_cli("--db", lib.path, "index", photos, "-q")  # another writer publishes
    # The running app answers from the new index generation, without a restart.
    found = client.get(f"/api/images/{target}/similar", params={"k": 2}).json()
    assert found["total"] == 14 and found["more"]
    assert {r["path"].rsplit("/", 1)[1] for r in found["results"]} == {"img01.jpg", "copy.jpg"}
    listed = client.get("/api/dups", params={"threshold": 0.999}).json()
    assert listed["total"] == 2 and all(g["decision"] is None for g in listed["groups"])
    group = listed["groups"][0]
    ids = [m["image_id"] for m in group["members"]]
    assert group["key"] == "-".join(map(str, sorted(ids)))
    stored = client.post(
        "/api/dups/decisions", json={"image_ids": ids, "decision": "keep", "keep": ids[1]}
    )
    assert stored.status_code == 200 and stored.json()["keep"] == ids[1]
    again = client.get("/api/dups", params={"threshold": 0.999}).json()
    assert again["groups"][0]["decision"]["id"] == stored.json()["id"]
    rest = client.get("/api/dups", params={"threshold": 0.999, "undecided": True}).json()
    assert rest["total"] == 1 and rest["groups"][0]["key"] != group["key"]
    exported = client.get("/api/dups/decisions", params={"format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert {line.split(",")[3] for line in exported.text.splitlines()[1:]} == {
        "keep",
        "duplicate",
    }
    assert [d["id"] for d in client.get("/api/dups/decisions").json()["decisions"]] == [
        stored.json()["id"]
    ]
    assert all(p.exists() for p in (photos / "b" / "copy.jpg", photos / "a" / "img01.jpg"))
    bad = client.post("/api/dups/decisions", json={"image_ids": ids, "decision": "delete"})
    assert bad.status_code == 422
    unknown = client.post(
        "/api/dups/decisions", json={"image_ids": [ids[0], 999999], "decision": "distinct"}
    )
    assert unknown.status_code == 404
    gone = client.delete(f"/api/dups/decisions/{stored.json()['id']}")
    assert gone.json() == {"deleted": stored.json()["id"]}
    assert client.delete(f"/api/dups/decisions/{stored.json()['id']}").status_code == 404
    assert client.get("/api/dups/decisions").json()["decisions"] == []


def test_uploads_that_arrive_together_share_a_model_call(
    lib: Library, photos: Path, tmp_path: Path
) -> None:
    import asyncio

    from PIL import Image

    from featx_search.web.batcher import Batcher

    space = lib.space()
    pictures = [Image.open(p).convert("RGB") for p in sorted(photos.rglob("*.jpg"))[:6]]
    batcher = Batcher(max_batch=4)

    async def together() -> list[object]:
        return list(await asyncio.gather(*(batcher.embed(space, p) for p in pictures)))

    vectors = asyncio.run(together())
    batcher.close()
    # The first picture runs alone (nothing else waits yet); the rest arrive while it runs.
    assert batcher.batches < len(pictures)
    expected = space.embed(pictures)
    for got, want in zip(vectors, expected, strict=True):
        assert abs(got - want).max() < 1e-5  # type: ignore[operator]


def test_info_shows_an_index_run_in_another_process(
    lib: Library, photos: Path, tmp_path: Path
) -> None:
    import os

    from featx_search.activity import ActivityFile
    from featx_search.options import Progress

    client = _client(lib, tmp_path)
    assert client.get("/api/info").json()["indexing"] is None
    with ActivityFile(lib.path) as activity:
        activity.wrap(None)(Progress(3, 8))
        running = client.get("/api/info").json()["indexing"]
        assert running["pid"] == os.getpid()
        assert (running["phase"], running["done"], running["total"]) == ("embedding", 3, 8)
    assert client.get("/api/info").json()["indexing"] is None
    # A file left by a process that died shows nothing.
    with ActivityFile(lib.path) as activity:
        text = activity.path.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999')
        activity.path.write_text(text)
        assert client.get("/api/info").json()["indexing"] is None


def test_the_app_starts_and_stops_with_its_lifespan(lib: Library, tmp_path: Path) -> None:
    app = create_app(lib, guard=Guard(hosts=HOSTS), thumbs=tmp_path / "thumbs", warm=True)
    with TestClient(app) as client:  # runs the ASGI lifespan: start-up schedules the model
        assert client.get("/api/info").status_code == 200


def test_searches_that_arrive_together_share_one_faiss_call(
    lib: Library, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from featx_search.space import Space

    client = _client(lib, tmp_path)
    ids = [r["image_id"] for r in client.get("/api/images").json()["results"]]
    asks = [
        (i, k, offset)
        for i, k, offset in zip(ids[:6], [1, 3, 5, 2, 4, 6], [0, 2, 0, 1, 3, 0], strict=True)
    ]
    asks.append((999_999, 3, 0))  # not indexed: its own 404, the others still answered
    alone = [
        client.get(f"/api/images/{i}/similar", params={"k": k, "offset": o}) for i, k, o in asks
    ]

    calls: list[int] = []
    similar = Space.similar
    first = threading.Event()

    def counted(self: Space, images: object, query: object = None) -> object:
        calls.append(len(images))  # type: ignore[arg-type]
        if not first.is_set():  # hold the first batch so that the others queue behind it
            first.set()
            time.sleep(0.5)
        return similar(self, images, query)  # type: ignore[arg-type]

    monkeypatch.setattr(Space, "similar", counted)
    app = create_app(lib, guard=Guard(hosts=HOSTS), thumbs=tmp_path / "thumbs", warm=False)

    def ask(one: tuple[int, int, int]) -> tuple[int, object]:
        i, k, offset = one
        answer = TestClient(app).get(f"/api/images/{i}/similar", params={"k": k, "offset": offset})
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(ask, asks))
    assert together == [(a.status_code, a.json()) for a in alone]
    assert together[-1][0] == 404 and all(status == 200 for status, _ in together[:-1])
    # Fewer FAISS calls than requests, one of them for several requests (the batch that met
    # the unknown id failed and was retried a request at a time, which adds calls of one).
    assert max(calls) > 1 and calls.count(1) < len(calls)
