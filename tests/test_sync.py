"""Keeping a library in step with its folders: hashes, moves, dry runs, retries, interrupts."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select

from featx_search import Library
from featx_search.schema import Image

from .conftest import TINY, make_photo


def _rows(library: Library) -> dict[str, Image]:
    with library._store.transaction() as s:
        return {img.relpath: img for img in s.scalars(select(Image))}


def test_content_hash_and_date_taken_are_recorded(library: Library, tmp_path: Path) -> None:
    root = tmp_path / "p"
    plain = make_photo(root / "plain.jpg", seed=1)
    dated = root / "dated.jpg"
    img = PILImage.open(plain)
    exif = img.getexif()
    exif.get_ifd(0x8769)[0x9003] = "2019:07:04 18:30:05"
    img.save(dated, exif=exif)
    library.index([root], spec=TINY)
    rows = _rows(library)
    for name in ("plain.jpg", "dated.jpg"):
        expected = hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert rows[name].content_hash == expected
    assert rows["dated.jpg"].taken_at == datetime(2019, 7, 4, 18, 30, 5)
    assert rows["plain.jpg"].taken_at is None
