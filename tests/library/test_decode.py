"""Fast decoding (JPEG draft, reduce-then-resize) gives the same model input and vectors as a
full-resolution decode with one exact resize, within resampling noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featx_search.config import Preprocess
from featx_search.extract import load_extractor
from featx_search.images import decode, preprocess
from tests.support import TINY, make_photo

SPEC = Preprocess()
# Pixel units (0-255). Draft (DCT) and box-reduce filters differ from one exact bilinear pass
# only at strong edges; a wrong size, offset or colour would be far larger everywhere.
MEAN_TOL = 1.5
MAX_TOL = 40.0


def _plain(path: Path) -> np.ndarray:
    """The slow reference: full-resolution decode, one exact resize over the whole image."""
    return preprocess(decode(path)[0], SPEC, reducing_gap=None)


def _fast(path: Path) -> np.ndarray:
    return preprocess(decode(path, min_side=SPEC.resize)[0], SPEC)


def _pixels(diff: np.ndarray) -> np.ndarray:
    return np.abs(diff) * np.asarray(SPEC.std, np.float32)[:, None, None] * 255.0


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("size", [(1300, 1040), (700, 2100)])
def test_fast_decode_gives_the_same_input(tmp_path: Path, ext: str, size: tuple[int, int]) -> None:
    path = make_photo(tmp_path / f"p{ext}", seed=7, size=size)
    plain, fast = _plain(path), _fast(path)
    assert plain.shape == fast.shape == (3, SPEC.crop, SPEC.crop)
    err = _pixels(plain - fast)
    assert err.mean() < MEAN_TOL, (ext, size, err.mean())
    assert err.max() < MAX_TOL, (ext, size, err.max())
    # A shifted or mis-scaled crop would differ by tens of levels on average.
    other = preprocess(decode(make_photo(tmp_path / f"q{ext}", seed=8, size=size))[0], SPEC)
    assert _pixels(plain - other).mean() > 10 * MEAN_TOL


def test_jpeg_draft_decodes_small_and_keeps_the_full_size(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "big.jpg", seed=1, size=(2400, 1600))
    image, size = decode(path, min_side=SPEC.resize)
    assert size == (2400, 1600)
    assert SPEC.resize <= min(image.size) < 2 * SPEC.resize  # 1/4 scale: 600 x 400
    assert decode(path)[0].size == (2400, 1600)


def test_fast_decode_gives_the_same_vectors(tmp_path: Path) -> None:
    extractor = load_extractor(TINY)
    paths = [
        make_photo(tmp_path / f"v{i}{ext}", seed=20 + i, size=(1300, 1040))
        for i, ext in enumerate([".jpg", ".png", ".webp", ".jpg"])
    ]
    plain = extractor.embed(np.stack([_plain(p) for p in paths]))
    fast = extractor.embed(np.stack([_fast(p) for p in paths]))
    cosine = np.sum(plain * fast, axis=1)
    assert cosine.min() > 0.999, cosine
    # Each fast vector is still nearest to its own plain vector.
    assert (np.argmax(fast @ plain.T, axis=1) == np.arange(len(paths))).all()


def test_a_large_image_is_refused_even_when_the_warning_filter_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow only warns between MAX_IMAGE_PIXELS and twice that; decoding turns the warning
    into an error with a process-wide filter, which another thread leaving its own
    catch_warnings block can undo. The size is checked without the filter too."""
    from PIL import Image

    from featx_search import ImageError, images

    photo = make_photo(tmp_path / "big.jpg", 0, size=(160, 120))  # 19,200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # warns above, errors at 2x
    monkeypatch.setattr(images.warnings, "simplefilter", lambda *args, **kwargs: None)
    with pytest.raises(ImageError, match="exceeds limit of 10000 pixels"):
        decode(photo)
