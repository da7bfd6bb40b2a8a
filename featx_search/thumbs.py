"""Thumbnails and contact sheets for result pages (PIL drawing; decoding is images.py's)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ImageError
from .images import load_rgb

THUMB_SIDE = 192  # longest side of a thumbnail, in pixels
CAPTION_HEIGHT = 30
PAD = 6
SHEET_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def thumbnail_jpeg(path: str | os.PathLike[str], side: int = THUMB_SIDE) -> bytes:
    """A JPEG thumbnail of an image file (upright, longest side ``side``).

    Raises :class:`ImageError` naming the file when it cannot be read or decoded.
    """
    img = load_rgb(path, min_side=side)
    img.thumbnail((side, side))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


@dataclass(frozen=True)
class Tile:
    """One cell of a contact sheet: an image file and up to two caption lines under it."""

    path: str
    caption: str
    detail: str = ""


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[Tile]]],
    out: str | os.PathLike[str],
    *,
    columns: int = 6,
    side: int = THUMB_SIDE // 4 * 3,
) -> Path:
    """Draw ``rows`` (a title and its tiles each) as one image and save it to ``out`` (format
    from the suffix: .jpg, .png or .webp). A tile wraps to the next line after ``columns``.
    An image that cannot be decoded is drawn as a grey cell saying so. Returns the path."""
    from PIL import Image, ImageDraw

    target = Path(out)
    kind = SHEET_FORMATS.get(target.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"out {out}: unknown image type {target.suffix or '(no suffix)'}",
            hint="end the file name with .jpg, .png or .webp",
            param="out",
        )
    cell_w, cell_h = side + PAD, side + CAPTION_HEIGHT + PAD
    title_h = 18
    lines = 0
    for _title, tiles in rows:
        lines += max(1, -(-len(tiles) // columns))
    width = PAD + columns * cell_w
    height = PAD + len(rows) * title_h + lines * cell_h
    sheet = Image.new("RGB", (width, max(height, 1)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = PAD
    for title, tiles in rows:
        draw.text((PAD, y + 2), title[:160], fill=(0, 0, 0))
        y += title_h
        for i, tile in enumerate(tiles):
            col, line = i % columns, i // columns
            x0, y0 = PAD + col * cell_w, y + line * cell_h
            try:
                img = load_rgb(tile.path, min_side=side)
                img.thumbnail((side, side))
                sheet.paste(img, (x0 + (side - img.width) // 2, y0 + (side - img.height) // 2))
            except ImageError:
                draw.rectangle([x0, y0, x0 + side, y0 + side], fill=(200, 200, 200))
                draw.text((x0 + 4, y0 + side // 2), "unreadable", fill=(120, 0, 0))
            draw.text((x0, y0 + side + 2), tile.caption[:30], fill=(0, 0, 0))
            draw.text((x0, y0 + side + 15), tile.detail[-30:], fill=(90, 90, 90))
        y += max(1, -(-len(tiles) // columns)) * cell_h
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    sheet.save(tmp, kind, **({"quality": 88} if kind == "JPEG" else {}))
    os.replace(tmp, target)
    return target
