"""Every file a scan sees ends in one recorded state: a generated corpus of awkward files."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from featx_search import Library
from featx_search import images as images_module
from featx_search.images import BACKGROUND, decode_file
from tests.support import TINY


def _photo(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2, : size[0] // 2] = (250, 20, 20)  # a red top-left quarter
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _bomb_png(path: Path) -> None:
    """A tiny PNG whose header declares 60000 x 60000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _transparent(mode: str, path: Path) -> None:
    """Left half opaque red (or white for L), right half fully transparent black."""
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :48] = (255, 0, 0, 255) if mode != "LA" else (255, 255, 255, 255)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("RGB").quantize(4)
        img.info["transparency"] = img.getpixel((90, 10))
        img.save(path, transparency=img.getpixel((90, 10)))
        return
    img.save(path)


def _corpus(root: Path) -> dict[str, str]:
    """Write the corpus; returns file name -> expected state."""
    root.mkdir(parents=True)
    expected: dict[str, str] = {}

    def add(name: str, state: str, write: Callable[[Path], object]) -> None:
        write(root / name)
        expected[name] = state

    add("zero.jpg", "failed", lambda p: p.write_bytes(b""))
    good = io.BytesIO()
    _photo(1).save(good, "JPEG", quality=90)
    add(
        "truncated.jpg",
        "failed",
        lambda p: p.write_bytes(good.getvalue()[: len(good.getvalue()) // 3]),
    )
    add("text.jpg", "failed", lambda p: p.write_text("this is not a picture\n"))
    add("bomb.png", "failed", _bomb_png)
    add("ppm-in-disguise.png", "failed", lambda p: _photo(2).save(p, "PPM"))
    add(
        "sixteen-bit.png",
        "indexed",
        lambda p: Image.fromarray((np.arange(64 * 96).reshape(64, 96) * 10).astype(np.uint16)).save(
            p
        ),
    )
    add("cmyk.jpg", "indexed", lambda p: _photo(3).convert("CMYK").save(p, "JPEG"))
    add("palette.png", "indexed", lambda p: _transparent("P", p))
    add("la.png", "indexed", lambda p: _transparent("LA", p))
    add("rgba.png", "indexed", lambda p: _transparent("RGBA", p))

    def rotated(p: Path) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
        _photo(4, (96, 64)).save(p, "JPEG", exif=exif, quality=95)

    add("rotated.jpg", "indexed", rotated)

    def animated(p: Path) -> None:
        frames = [Image.new("RGB", (64, 48), c) for c in ((250, 0, 0), (0, 0, 250))]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)

    add("animated.gif", "indexed", animated)
    add("photo.webp", "indexed", lambda p: _photo(5).save(p, "WEBP"))
    add("photo.bmp", "indexed", lambda p: _photo(6).save(p, "BMP"))
    add("photo.tiff", "indexed", lambda p: _photo(7).save(p, "TIFF"))
    add("broken-link.jpg", "failed", lambda p: p.symlink_to(root / "nowhere.jpg"))
    add("loop-a.jpg", "failed", lambda p: p.symlink_to(root / "loop-b.jpg"))
    add("loop-b.jpg", "failed", lambda p: p.symlink_to(root / "loop-a.jpg"))
    add("good-link.jpg", "indexed", lambda p: p.symlink_to(root / "photo.bmp"))
    name = os.fsdecode(b"caf\xe9-latin1.png")
    add(name, "indexed", lambda p: _photo(8).save(p, "PNG"))
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        add("phone.heic", "indexed", lambda p: _photo(9).save(p, "HEIF"))
    except ImportError:
        pass
    (root / "loopdir").symlink_to(root, target_is_directory=True)  # a folder loop: not followed
    (root / "notes.txt").write_text("not an image name: not scanned")
    return expected


def test_every_file_ends_in_its_expected_state(library: Library, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    expected = _corpus(root)
    report = library.index([root], TINY)
    failed = {Path(p).name: reason for p, reason in library.failures()}
    indexed = {Path(m.path).name for m in library.space().image_facts()}
    states = {name: "failed" for name in failed} | {name: "indexed" for name in indexed}
    assert states == expected
    assert report.failed == len(failed) and report.added == len(indexed)
    for name, reason in failed.items():
        assert str(root / name) in reason and "cannot" in reason, (name, reason)
    assert (
        "decompression bomb" in failed["bomb.png"].lower() or "exceeds limit" in failed["bomb.png"]
    )
    assert "broken symbolic link" in failed["broken-link.jpg"]
    assert "empty file" in failed["zero.jpg"]
    assert "not an image" in failed["text.jpg"] and "not an image" in failed["ppm-in-disguise.png"]
    assert "symbolic links" in failed["loop-a.jpg"].lower()
    # A second run opens nothing and changes nothing.
    again = library.index([root])
    assert (again.added, again.updated, again.failed, again.removed) == (0, 0, 0, 0)
    assert again.unchanged == len(expected)


def _pixel(path: Path, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(decode_file(path).image.getpixel(xy))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_shown_over_grey(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"{mode}.png"
    _transparent(mode, path)
    assert _pixel(path, (90, 30)) == BACKGROUND
    assert _pixel(path, (10, 30)) in ((255, 0, 0), (255, 255, 255))


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    source = _photo(4, (96, 64))
    source.save(path, "JPEG", exif=exif, quality=95)
    got = decode_file(path)
    assert got.size == (64, 96) and got.image.size == (64, 96)
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    diff = np.abs(np.asarray(got.image, np.int16) - np.asarray(upright, np.int16))
    assert diff.mean() < 1.0
    # the red quarter, top-left when stored, is top-right once upright
    assert got.image.getpixel((60, 5))[0] > 200 and got.image.getpixel((5, 5))[0] < 250


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "a.gif"
    frames = [Image.new("RGB", (64, 48), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, _, b = _pixel(path, (10, 10))
    assert r > 200 and b < 50


def test_sixteen_bit_png_keeps_its_range(tmp_path: Path) -> None:
    path = tmp_path / "16.png"
    ramp = np.tile(np.linspace(0, 65535, 96), (64, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    arr = np.asarray(decode_file(path).image)
    assert arr[:, 0].max() < 10 and arr[:, -1].min() > 245  # scaled, not clipped to white


def test_unreadable_file_is_recorded(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = photos / "a" / "img01.jpg"
    if os.geteuid() != 0:
        secret.chmod(0)
    else:  # root reads everything: refuse the open the way the OS would for a user
        real_open = open

        def guarded(file: object, *args: object, **kwargs: object) -> object:
            if os.fspath(file) == str(secret):  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", str(secret))
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(images_module, "open", guarded, raising=False)
    report = library.index([photos], TINY)
    assert (report.added, report.failed) == (11, 1)
    ((path, reason),) = library.failures()
    assert path == str(secret) and "Permission denied" in reason
