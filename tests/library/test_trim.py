"""Frame bars around a query picture (screenshots, letterboxes) are cut away before it is
embedded; the photo itself is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from featx_search import Library, Query
from featx_search.evaluation import edit
from featx_search.images import trim_bars
from tests.support import TINY, make_photo


def _framed(photo: Image.Image, bar: int, colour: str = "black") -> Image.Image:
    screen = Image.new("RGB", (photo.width, photo.height + 2 * bar), colour)
    screen.paste(photo, (0, bar))
    return screen


def test_bars_on_both_sides_are_cut_and_one_dark_edge_is_kept(tmp_path: Path) -> None:
    photo = Image.open(make_photo(tmp_path / "p.png", seed=1, size=(120, 80))).convert("RGB")
    assert trim_bars(_framed(photo, 30)).tobytes() == photo.tobytes()
    assert trim_bars(_framed(photo, 30, "white")).tobytes() == photo.tobytes()
    pillarbox = Image.new("RGB", (170, 80), "black")  # bars left and right
    pillarbox.paste(photo, (25, 0))
    assert trim_bars(pillarbox).tobytes() == photo.tobytes()
    one_edge = Image.new("RGB", (120, 110), "black")  # a dark sky along the top only
    one_edge.paste(photo, (0, 30))
    assert trim_bars(one_edge).size == one_edge.size
    thin = _framed(photo, 1)  # under 2 % of the side: not a frame
    assert trim_bars(thin).size == thin.size
    blank = Image.new("RGB", (100, 100), "black")  # nothing but bar: left as it is
    assert trim_bars(blank).size == blank.size


def test_a_screenshot_of_an_indexed_photo_finds_it(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(8):
        make_photo(root / f"p{i}.png", seed=40 + i, size=(160, 120))
    framed = _framed(Image.open(root / "p3.png").convert("RGB"), 70)
    query = tmp_path / "screenshot.png"
    framed.save(query)
    with Library.open(tmp_path / "lib.db") as lib:
        lib.index([root], TINY)
        space = lib.space()
        trimmed = space.embed([query], trim=True)[0]
        original = space.embed([root / "p3.png"])[0]
        assert float(trimmed @ original) > 0.999
        best = lib.search(query, Query(k=1))[0]
        assert best.path.endswith("p3.png") and best.score > 0.999
        untrimmed = lib.search(query, Query(k=1, trim=False))[0]
        assert untrimmed.score < best.score - 1e-3


def test_the_seams_of_a_resized_screenshot_go_with_its_bars(tmp_path: Path) -> None:
    # a one-colour wallpaper on a phone screen, scaled: its first and last lines are blends
    # of grey and black, and a flat picture would be found by them rather than by its colour
    flat = Image.new("RGB", (341, 320), (128, 128, 128))
    for kind in ("frame", "frame+down8"):
        shot = edit(flat, kind)
        trimmed = np.asarray(trim_bars(shot), np.int16)
        assert np.abs(trimmed - 128).max() <= 1, kind
        assert abs(trimmed.shape[0] / trimmed.shape[1] - 320 / 341) < 0.05
    photo = Image.open(make_photo(tmp_path / "p.png", seed=3, size=(160, 120))).convert("RGB")
    kept = trim_bars(edit(photo, "frame"))  # a photo loses its seams at most
    assert kept.width == 720 and 535 <= kept.height <= 542  # 540 scaled, seams at most
    root = tmp_path / "photos"
    root.mkdir()
    for level in (40, 90, 128, 170, 230):
        Image.new("RGB", (341, 320), (level, level, level)).save(root / f"grey{level}.png")
    query = tmp_path / "shot.png"
    edit(flat, "frame").save(query)
    with Library.open(tmp_path / "lib.db") as lib:
        lib.index([root], TINY)
        best = lib.search(query, Query(k=1))[0]
        assert best.path.endswith("grey128.png") and best.score > 0.999
