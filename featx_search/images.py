"""Safe image decoding and preprocessing into model input arrays (the only user of PIL)."""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from .config import Preprocess
from .errors import ImageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# A query or input image: a file path or an in-memory PIL image.
ImageInput: TypeAlias = "str | os.PathLike[str] | PILImage"

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)
# Pillow plugins allowed to decode; anything else (e.g. an EPS renamed .jpg) is refused.
# HEIF comes from the optional pillow-heif package (the `heic` extra).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF")
# Transparent pixels are shown over mid grey, not black, so alpha does not dominate the vector.
BACKGROUND = (128, 128, 128)


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


@functools.cache
def _formats() -> tuple[str, ...]:
    from PIL import Image

    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        pass
    else:
        register_heif_opener()
    Image.init()  # register every plugin, then keep the allowed ones this Pillow has
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def load_rgb(source: ImageInput, *, min_side: int = 0) -> PILImage:
    """Decode ``source`` (a path or a PIL image) to an upright RGB image.

    JPEGs are decoded at the smallest DCT scale whose shorter side is still >= ``min_side``
    (other formats have no cheap partial decode; :func:`preprocess` shrinks them fast).
    EXIF orientation is applied, alpha is composited over :data:`BACKGROUND`, animations give
    their first frame. Raises :class:`ImageError` naming the file for anything undecodable,
    including decompression bombs.
    """
    return decode(source, min_side=min_side)[0]


@dataclass(frozen=True)
class DecodedFile:
    """An image file read once: its upright RGB pixels, full-resolution upright size, the
    SHA-256 of its bytes and the date it was taken (EXIF, naive local time) if recorded."""

    image: PILImage
    size: tuple[int, int]
    content_hash: str
    taken_at: datetime | None


def hash_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes. Raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def decode_file(path: str | os.PathLike[str], *, min_side: int = 0) -> DecodedFile:
    """Read ``path`` once, hash its bytes and decode it as :func:`decode` does.

    Raises :class:`ImageError` naming the file when it cannot be read or decoded.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, FileNotFoundError) and os.path.islink(name):
            reason = f"broken symbolic link to {os.readlink(name)}"
        raise ImageError(f"cannot read {name}: {reason}", hint="check the file") from err
    if not data:
        raise ImageError(f"cannot decode {name}: empty file (0 bytes)")
    taken: list[datetime | None] = []
    image, size = _decode(io.BytesIO(data), name, min_side, taken)
    return DecodedFile(image, size, hashlib.sha256(data).hexdigest(), taken[0] if taken else None)


def decode_bytes(data: bytes, name: str) -> PILImage:
    """Decode an image held in memory (an upload) to upright RGB, with the same format
    allowlist and decompression-bomb limit as files. Raises :class:`ImageError` naming it."""
    return _decode(io.BytesIO(data), name, 0, [])[0]


def decode(source: ImageInput, *, min_side: int = 0) -> tuple[PILImage, tuple[int, int]]:
    """:func:`load_rgb`, plus the upright (width, height) of the full-resolution image."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return _decode(source, getattr(source, "filename", None) or "<image>", min_side, [])
    return _decode(os.fspath(source), os.fspath(source), min_side, [])


def _decode(
    source: PILImage | str | io.BytesIO,
    name: str,
    min_side: int,
    taken: list[datetime | None],
) -> tuple[PILImage, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                source.load()
                return _upright_rgb(source, source.size)
            with Image.open(source, formats=_formats()) as img:
                size = img.size
                # Checked here too: the filter above is process-wide, and another thread
                # leaving its own catch_warnings block can restore the filters without it.
                limit = Image.MAX_IMAGE_PIXELS
                if limit and size[0] * size[1] > limit:
                    raise Image.DecompressionBombWarning(
                        f"Image size ({size[0] * size[1]} pixels) exceeds limit of {limit} "
                        "pixels, could be decompression bomb DOS attack."
                    )
                taken.append(_taken_at(img))
                if img.format == "JPEG" and min_side > 0:
                    img.draft("RGB", (min_side, min_side))
                img.load()
                return _upright_rgb(img, size)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        MemoryError,
    ) as err:
        reason = str(err) or type(err).__name__
        if isinstance(err, UnidentifiedImageError):
            reason = "not an image in a format read here"
        hint = "formats read: " + ", ".join(sorted({f.lower() for f in _formats()}))
        if "HEIF" not in _formats() and name.lower().endswith((".heic", ".heif")):
            reason = "HEIC/HEIF needs the optional pillow-heif package"
            hint = "pip install 'featx-search[heic]'"
        raise ImageError(f"cannot decode {name}: {reason}", hint=hint) from err


_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME = 0x0132


def _taken_at(img: PILImage) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTime) as a naive datetime; None when absent or bad."""
    try:
        exif = img.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
        if not isinstance(raw, str):
            return None
        return datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:  # dates are a nicety: a malformed EXIF block must not fail the file
        return None


def _upright_rgb(img: PILImage, size: tuple[int, int]) -> tuple[PILImage, tuple[int, int]]:
    from PIL import ImageOps

    if img.getexif().get(0x0112) in (5, 6, 7, 8):  # orientations that swap width and height
        size = (size[1], size[0])
    return _to_rgb(ImageOps.exif_transpose(img) or img), size


def _to_rgb(img: PILImage) -> PILImage:
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# Large downscales first box-reduce by an integer factor, leaving at least this ratio to the
# real filter: much faster on full-size PNG/WebP/TIFF, same result up to resampling noise.
REDUCING_GAP = 2.0


def preprocess(
    img: PILImage, spec: Preprocess, *, reducing_gap: float | None = REDUCING_GAP
) -> np.ndarray:
    """Resize the shorter side to ``spec.resize``, centre-crop ``spec.crop``, normalise (or,
    with ``spec.fit == "full"``, resize the whole image to ``crop`` x ``crop``, normalise).

    ``reducing_gap`` is Pillow's two-step resize (``None``: one exact filter pass over the
    whole image, slow for large images). Returns a float32 array of shape (3, crop, crop).
    """
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[
        spec.interpolation
    ]
    if spec.fit == "full":
        img = img.resize((spec.crop, spec.crop), resample, reducing_gap=reducing_gap)
    else:
        width, height = img.size
        scale = spec.resize / min(width, height)
        size = (max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale)))
        img = img.resize(size, resample, reducing_gap=reducing_gap)
        left = (size[0] - spec.crop) // 2
        top = (size[1] - spec.crop) // 2
        img = img.crop((left, top, left + spec.crop, top + spec.crop))
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    arr = (np.asarray(img, dtype=np.float32) - mean) * inv_std
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def load_input(source: ImageInput, spec: Preprocess, *, trim: bool = False) -> np.ndarray:
    """Decode and preprocess one image: float32 (3, crop, crop); with ``trim`` its frame bars
    are cut away first (:func:`trim_bars`). Raises :class:`ImageError`."""
    picture = load_rgb(source, min_side=spec.resize)
    return preprocess(trim_bars(picture) if trim else picture, spec)


# A frame bar is a run of rows (or columns) of one dark or bright colour along opposite edges.
_BAR_TOLERANCE = 12  # largest difference from the row's first pixel, per channel
_BAR_DARK, _BAR_BRIGHT = 60, 245  # a bar's mean level is below the first or above the second
_BAR_MIN = 0.02  # each of the two opposite bars covers at least this share of the side
_KEEP_MIN = 0.2  # what is left covers at least this share of each side
# A resized screenshot blends the bar into the photo's first lines: up to _SEAM_MAX lines
# whose every pixel lies between the bar's and the next line's (within _BAR_TOLERANCE) and
# that differ from the next line by more than _SEAM_STEP go with the bar. A flat picture
# (a one-colour wallpaper) is otherwise found by its seam, not by its colour.
_SEAM_MAX = 2
_SEAM_STEP = 2


def _plain(lines: np.ndarray) -> np.ndarray:
    """Which of ``lines`` (int16 (n, length, 3)) look like a bar: uniform, and dark or
    bright."""
    level = lines.mean(axis=(1, 2))
    flat = np.abs(lines - lines[:, :1, :]).max(axis=(1, 2)) <= _BAR_TOLERANCE
    bars: np.ndarray = flat & ((level < _BAR_DARK) | (level > _BAR_BRIGHT))
    return bars


def _bar_span(size: int, lines: Callable[[int, int], np.ndarray]) -> tuple[int, int]:
    """What is left of a side of ``size`` lines once its bars are cut: (start, end), or
    (0, size) when it has no bar at both ends. ``lines(a, b)`` gives lines a to b. Only the
    lines at the two ends are read unless both ends are bars."""
    need = math.ceil(_BAR_MIN * size)
    if not (_plain(lines(0, need)).all() and _plain(lines(size - need, size)).all()):
        return 0, size  # the common case, decided from 4 % of the picture
    bars = _plain(lines(0, size))
    start = int(np.argmin(bars)) if not bars.all() else size
    end = size - (int(np.argmin(bars[::-1])) if not bars.all() else size)
    if start < _BAR_MIN * size or size - end < _BAR_MIN * size or end - start < _KEEP_MIN * size:
        return 0, size  # not a bar on both sides: leave this direction alone
    for _ in range(_SEAM_MAX):
        if end - start <= _KEEP_MIN * size + 2:
            break
        cut_start = _seam(lines(start - 1, start + 2))
        cut_end = _seam(lines(end - 2, end + 1)[::-1])
        start, end = start + int(cut_start), end - int(cut_end)
        if not (cut_start or cut_end):
            break
    return start, end


def _seam(lines: np.ndarray) -> bool:
    """Whether the middle of three lines (int16 (3, length, 3): the bar's last, then inward)
    is a blend of the bar and the line after it."""
    bar, line, inner = (part.astype(np.int32) for part in lines)
    low, high = np.minimum(bar, inner), np.maximum(bar, inner)
    between = bool(((line >= low - _BAR_TOLERANCE) & (line <= high + _BAR_TOLERANCE)).all())
    return between and int(np.abs(line - inner).max()) > _SEAM_STEP


def trim_bars(picture: PILImage) -> PILImage:
    """``picture`` without the bars a screenshot or a letterbox put around a photo: runs of
    uniform dark or bright rows at both the top and the bottom (or columns at both sides),
    each at least 2 % of the side. A photo with a dark sky or a white wall along one edge
    keeps it; a picture that would lose more than 80 % of a side is returned as it is."""
    rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
    width, height = rgb.size

    def rows(a: int, b: int) -> np.ndarray:
        return np.asarray(rgb.crop((0, a, width, b)), dtype=np.int16)

    def columns(a: int, b: int) -> np.ndarray:
        return np.asarray(rgb.crop((a, 0, b, height)), dtype=np.int16).transpose(1, 0, 2)

    top, bottom = _bar_span(height, rows)
    left, right = _bar_span(width, columns)
    if (top, bottom, left, right) == (0, height, 0, width):
        return picture
    return picture.crop((left, top, right, bottom))


def describe(source: ImageInput) -> str:
    """A printable name for a query image: its path, or ``<image>`` for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return getattr(source, "filename", None) or "<image>"
