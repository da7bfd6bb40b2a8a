"""Result listings in every output format: table, JSON lines, CSV, paths, HTML page, montage.

Every command that lists images turns its results into :class:`Section` objects (a query and
its matches, or a duplicate group) and hands them to one of the writers here, so all commands
offer the same formats with the same fields.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decisions import Decision
from .dups import DupGroup
from .errors import ConfigError, ImageError
from .query import Match

FORMATS = ("table", "json", "csv", "paths")
# A contact sheet shows this many queries or groups at most, so that it stays an image a
# viewer can open; the text formats and the HTML page list everything.
MONTAGE_SECTIONS = 50


@dataclass(frozen=True)
class Section:
    """One block of results.

    ``key`` holds the fields repeated on each of its rows in JSON and CSV (``{"query": ...}``
    or ``{"group": ...}``); ``queries`` are image files shown above the results in HTML and
    montages; each row has at least ``path``.
    """

    title: str
    key: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    queries: tuple[str, ...] = ()
    empty: str = "(no results)"


@dataclass
class Listing:
    """Sections plus what the page is about (the HTML title)."""

    title: str
    sections: list[Section] = field(default_factory=list)
    nothing: str = "(no results)"


def match_listing(
    title: str,
    labels: Sequence[str],
    results: Sequence[Sequence[Match]],
    query_files: Sequence[Sequence[str]],
) -> Listing:
    """A listing of search results: one section per query (``labels[i]`` names query ``i``,
    ``query_files[i]`` are the image files it came from)."""
    listing = Listing(title)
    for label, matches, files in zip(labels, results, query_files, strict=True):
        listing.sections.append(
            Section(
                title=f"query: {label}",
                key={"query": label},
                rows=tuple(m.to_dict() for m in matches),
                queries=tuple(files),
            )
        )
    return listing


def dup_listing(title: str, groups: Sequence[DupGroup]) -> Listing:
    """A listing of duplicate groups, the keeper first in each."""
    listing = Listing(title, nothing="no duplicates found")
    for group in groups:
        listing.sections.append(
            Section(
                title=f"group {group.rank}: {len(group)} images, keep {group.keeper.path}",
                key={"group": group.rank, "group_size": len(group)},
                rows=tuple(m.to_dict() for m in group.members),
            )
        )
    return listing


def decision_listing(title: str, decisions: Sequence[Decision]) -> Listing:
    """A listing of decisions on duplicate groups: one section per decision, one row per
    image with its part (keep, duplicate, distinct)."""
    listing = Listing(title, nothing="no decisions recorded")
    for decision in decisions:
        what = (
            "not duplicates"
            if decision.decision == "distinct"
            else f"keep image {decision.keep}"
            if decision.keep is not None
            else "keep (the keeper has left the library)"
        )
        listing.sections.append(
            Section(
                title=f"decision {decision.id} ({decision.decided_at:%Y-%m-%d %H:%M}): {what}",
                key={
                    "decision_id": decision.id,
                    "decision": decision.decision,
                    "decided_at": decision.decided_at.isoformat(timespec="seconds"),
                },
                rows=tuple(
                    {"role": i.role, "image_id": i.image_id, "path": i.path}
                    for i in decision.images
                ),
            )
        )
    return listing


# -- text formats -------------------------------------------------------------------------


def _cells(row: dict[str, Any]) -> str:
    cells = []
    if "rank" in row:
        cells.append(f"{row['rank']:>4}")
    if "role" in row:
        cells.append(f"{row['role']:<9}")
    if "keeper" in row:
        cells.append("keep" if row["keeper"] else "same" if row.get("identical") else "    ")
    if "score" in row:
        cells.append(f"{row['score']:6.3f}")
    if "width" in row:
        size = f"{row['width']}x{row['height']}" if row["width"] else "?"
        cells.append(f"{size:>11}")
    if "date" in row:
        cells.append(str(row["date"])[:10])
    cells.append(str(row["path"]))
    return "  " + "  ".join(cells)


def table_lines(listing: Listing) -> Iterator[str]:
    """Readable lines: a heading per section, then one line per row (rank, score, path...)."""
    if not listing.sections:
        yield listing.nothing
    for section in listing.sections:
        yield section.title
        if not section.rows:
            yield f"  {section.empty}"
        for row in section.rows:
            yield _cells(row)


def json_lines(listing: Listing) -> Iterator[str]:
    """One JSON object per row: the section's key fields, then the row's."""
    for section in listing.sections:
        for row in section.rows:
            yield json.dumps({**section.key, **row})


def csv_text(listing: Listing) -> str:
    """CSV with a header line; columns are the key fields and row fields, in first-seen order."""
    columns: dict[str, None] = {}
    for section in listing.sections:
        columns.update(dict.fromkeys(section.key))
        for row in section.rows:
            columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns) or ["path"], lineterminator="\n")
    writer.writeheader()
    for section in listing.sections:
        for row in section.rows:
            writer.writerow({**section.key, **row})
    return out.getvalue()


def path_lines(listing: Listing) -> Iterator[str]:
    """Each listed path once, in order of first appearance (for pipes such as xargs)."""
    seen: set[str] = set()
    for section in listing.sections:
        for row in section.rows:
            if row["path"] not in seen:
                seen.add(row["path"])
                yield str(row["path"])


def text(listing: Listing, fmt: str) -> Iterator[str]:
    """Lines of ``listing`` in one of :data:`FORMATS`."""
    if fmt == "table":
        return table_lines(listing)
    if fmt == "json":
        return json_lines(listing)
    if fmt == "csv":
        return iter(csv_text(listing).splitlines())
    if fmt == "paths":
        return path_lines(listing)
    raise ConfigError(f"unknown output format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")


# -- files ----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 2em; word-break: break-all; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 200px; background: #fff; border: 1px solid #ddd; padding: 4px; }
figure.query { border: 2px solid #36c; } figure.keeper { border: 2px solid #393; }
figure img { display: block; max-width: 192px; max-height: 192px; margin: auto; }
figcaption { font-size: 12px; word-break: break-all; margin-top: 4px; }
.score { font-weight: bold; } .missing { height: 120px; background: #ddd; color: #900;
  display: flex; align-items: center; justify-content: center; }
"""


class _Thumbs:
    """Data-URI thumbnails, each file encoded once per page."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def uri(self, path: str) -> str | None:
        if path not in self._cache:
            from .thumbs import thumbnail_jpeg

            try:
                data = base64.b64encode(thumbnail_jpeg(path)).decode("ascii")
                self._cache[path] = f"data:image/jpeg;base64,{data}"
            except ImageError:
                self._cache[path] = None
        return self._cache[path]


def _figure(thumbs: _Thumbs, path: str, css: str, caption: str) -> str:
    uri = thumbs.uri(path)
    esc = html.escape(path)
    picture = (
        f'<img src="{uri}" alt="{esc}" title="{esc}">'
        if uri
        else '<div class="missing">cannot read image</div>'
    )
    return (
        f'<figure class="{css}">{picture}<figcaption>{caption}'
        f"<br><code>{esc}</code></figcaption></figure>"
    )


def html_page(listing: Listing) -> str:
    """A self-contained HTML page: thumbnails are embedded as data: URIs, so it works offline
    and can be mailed or moved. Query images are outlined blue, suggested keepers green."""
    thumbs = _Thumbs()
    title = html.escape(listing.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    if not listing.sections:
        parts.append(f"<p>{html.escape(listing.nothing)}</p>")
    for section in listing.sections:
        parts.append(f'<section><h2>{html.escape(section.title)}</h2><div class="grid">')
        for path in section.queries:
            parts.append(_figure(thumbs, path, "query", "query"))
        for row in section.rows:
            bits = []
            if "rank" in row:
                bits.append(f"#{row['rank']}")
            if row.get("keeper"):
                bits.append("keep")
            elif row.get("identical"):
                bits.append("identical")
            bits.append(f'<span class="score">{row["score"]:.3f}</span>')
            if row.get("width"):
                bits.append(f"{row['width']}x{row['height']}")
            if "date" in row:
                bits.append(html.escape(str(row["date"])[:10]))
            css = "result keeper" if row.get("keeper") else "result"
            parts.append(_figure(thumbs, str(row["path"]), css, " ".join(bits)))
        if not section.rows:
            parts.append(f"<p>{html.escape(section.empty)}</p>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(listing: Listing, out: str | os.PathLike[str]) -> Path:
    """Write :func:`html_page` to ``out`` (atomically); returns the path."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    # Paths that are not valid UTF-8 keep their bad bytes visible instead of failing the page.
    tmp.write_bytes(html_page(listing).encode("utf-8", "backslashreplace"))
    os.replace(tmp, target)
    return target


def write_montage(listing: Listing, out: str | os.PathLike[str]) -> Path:
    """A contact sheet image of ``listing``: one block per section (the first
    :data:`MONTAGE_SECTIONS`), query images first."""
    from .thumbs import Tile, contact_sheet

    rows = []
    for section in listing.sections[:MONTAGE_SECTIONS]:
        tiles = [Tile(path, "query", Path(path).name) for path in section.queries]
        for row in section.rows:
            label = f"#{row['rank']} " if "rank" in row else ""
            if row.get("keeper") or row.get("identical"):
                label = "keep " if row.get("keeper") else "same "
            tiles.append(
                Tile(str(row["path"]), f"{label}{row['score']:.3f}", Path(row["path"]).name)
            )
        rows.append((section.title, tiles))
    if not rows:
        rows.append((listing.nothing, []))
    left = len(listing.sections) - MONTAGE_SECTIONS
    if left > 0:
        rows.append((f"... and {left} more (see --html or --json for all)", []))
    return contact_sheet(rows, out)
