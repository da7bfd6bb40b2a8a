"""Output formats of every listing command (search, similar, dups): each one parses and
carries the same rows."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.support import TINY_ARGS, make_photo
from tests.support import run_cli as run


@pytest.fixture
def listed(indexed: Path, photos: Path) -> Path:
    """The indexed library with an identical copy of one photo synced in."""
    shutil.copy(photos / "a" / "img01.jpg", photos / "b" / "img01 copy.jpg")
    run("--db", indexed, "index", photos, "-q")
    return indexed


class Images(HTMLParser):
    """Collects <img> sources and result figures of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.figures: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values["src"] or "")
        if tag == "figure":
            self.figures.append(values.get("class") or "")


def parse_html(path: Path) -> Images:
    parser = Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _commands(photos: Path) -> dict[str, list[str | Path]]:
    return {
        "search": ["search", photos / "a" / "img03.png", photos / "b" / "img00.png", "-k", "3"],
        "similar": ["similar", photos / "a" / "img05.jpg", "-k", "4", "--under", photos / "b"],
        "dups": ["dups", "--threshold", "0.9999"],
    }


@pytest.mark.parametrize("command", ["search", "similar", "dups"])
def test_every_format_parses_and_agrees(
    listed: Path, photos: Path, tmp_path: Path, command: str
) -> None:
    args = [*_commands(photos)[command], "--db", listed]
    rows = [json.loads(line) for line in run(*args, "--json").stdout.splitlines()]
    assert rows, "the command should list something"
    assert all(Path(r["path"]).is_file() and isinstance(r["score"], float) for r in rows)

    table = run(*args).stdout.splitlines()
    assert sum(line.startswith("  ") for line in table) == len(rows)
    assert all(any(line.endswith(r["path"]) for line in table) for r in rows)

    from_csv = list(csv.DictReader(io.StringIO(run(*args, "--csv").stdout)))
    assert len(from_csv) == len(rows)
    for got, want in zip(from_csv, rows, strict=True):
        assert got.keys() == want.keys()
        assert got["path"] == want["path"] and float(got["score"]) == pytest.approx(want["score"])

    paths = run(*args, "--paths").stdout.splitlines()
    assert paths == list(dict.fromkeys(r["path"] for r in rows))

    page, sheet = tmp_path / "out" / "page.html", tmp_path / "sheet.jpg"
    result = run(*args, "--html", page, "--montage", sheet)
    assert result.stdout.splitlines() == table  # files come on top of the table
    parsed = parse_html(page)
    assert sum("result" in css for css in parsed.figures) == len(rows)
    assert all(src.startswith("data:image/jpeg;base64,") for src in parsed.sources)
    for src in parsed.sources:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as thumb:
            assert max(thumb.size) <= 192
    with Image.open(sheet) as img:
        assert img.format == "JPEG" and img.width > 100 and img.height > 100


def test_search_json_fields_and_query_thumbnails(
    listed: Path, photos: Path, tmp_path: Path
) -> None:
    query = photos / "a" / "img03.png"
    out = run("--db", listed, "search", query, "-k", "2", "--json").stdout
    assert [set(json.loads(line)) for line in out.splitlines()] == [
        {"query", "rank", "score", "image_id", "path"}
    ] * 2
    page = tmp_path / "p.html"
    run("--db", listed, "similar", query, "1", "-k", "2", "--combine", "--html", page)
    parsed = parse_html(page)
    assert parsed.figures.count("query") == 2 and len(parsed.sources) == 4


def test_dups_rows(listed: Path, photos: Path) -> None:
    rows = [
        json.loads(line)
        for line in run("--db", listed, "dups", "--exact", "--json").stdout.splitlines()
    ]
    assert [(r["group"], r["group_size"], r["keeper"], r["identical"]) for r in rows] == [
        (1, 2, True, True),
        (1, 2, False, True),
    ]
    assert {Path(r["path"]).name for r in rows} == {"img01.jpg", "img01 copy.jpg"}
    assert set(rows[0]) >= {"image_id", "path", "score", "width", "height", "date"}


def test_empty_listings_and_bad_files(listed: Path, photos: Path, tmp_path: Path) -> None:
    none = run("--db", listed, "similar", photos / "a" / "img03.png", "--glob", "*.gif")
    assert none.stdout.splitlines()[1] == "  (no results)"
    page = tmp_path / "none.html"
    run("--db", listed, "similar", photos / "a" / "img03.png", "--glob", "*.gif", "--html", page)
    assert "(no results)" in page.read_text(encoding="utf-8")
    nothing = tmp_path / "empty"
    nothing.mkdir()
    make_photo(nothing / "only.png", seed=1)
    empty_db = tmp_path / "empty.db"
    run("--db", empty_db, "index", nothing, *TINY_ARGS, "-q")
    assert run("--db", empty_db, "dups").stdout == "no duplicates found\n"
    assert run("--db", empty_db, "dups", "--json").stdout == ""
    bad = run("--db", listed, "dups", "--montage", tmp_path / "x.gif", ok=False)
    assert bad.exit_code == 1 and "--montage " in bad.output
    assert "x.gif: unknown image type .gif" in bad.output
    # A result whose file has gone is shown without a thumbnail instead of failing the page.
    (photos / "a" / "img05.jpg").unlink()
    page = tmp_path / "gone.html"
    run("--db", listed, "search", photos / "a" / "img03.png", "-k", "12", "--html", page)
    text = page.read_text(encoding="utf-8")
    assert "cannot read image" in text and str(photos / "a" / "img05.jpg") in text
