"""service.imaging: untrusted bytes -> RGB uint8, or a 4xx reason; bombs refused from the header."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.imaging import ImageRejected, check_content_type, decode_image
from tests.test_service_support import image_bytes, shape_image

MAX = 10_000_000
JPEG = image_bytes(shape_image("red", "square", size=256), "JPEG", quality=95)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a tiny (wrong) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_round_trips() -> None:
    image = shape_image("red", "square")
    out = decode_image(image_bytes(image, "PNG"), max_pixels=MAX)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert np.array_equal(out, np.asarray(image))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("grayscale jpeg", lambda im: image_bytes(im.convert("L"), "JPEG")),
        ("cmyk jpeg", lambda im: image_bytes(im.convert("CMYK"), "JPEG")),
        ("tiff", lambda im: image_bytes(im, "TIFF")),
        ("webp", lambda im: image_bytes(im, "WEBP", lossless=True)),
        ("bmp", lambda im: image_bytes(im, "BMP")),
        ("palette png", lambda im: image_bytes(im.convert("P"), "PNG")),
        ("1-bit png", lambda im: image_bytes(im.convert("1"), "PNG")),
        ("la png", lambda im: image_bytes(im.convert("LA"), "PNG")),
    ],
)
def test_formats_and_modes_become_rgb_uint8(name: str, make: object) -> None:
    data = make(shape_image("blue", "circle"))  # type: ignore[operator]
    out = decode_image(data, max_pixels=MAX)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3), name
    assert out.flags["C_CONTIGUOUS"]


def test_cmyk_jpeg_keeps_its_colour() -> None:
    out = decode_image(
        image_bytes(shape_image("red", "square").convert("CMYK"), "JPEG", quality=95),
        max_pixels=MAX,
    )
    r, g, b = out[32, 32].astype(int)
    assert r > 150 and g < 100 and b < 100


def test_rgba_is_laid_over_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((4, 4), (255, 0, 0, 255))
    out = decode_image(image_bytes(image, "PNG"), max_pixels=MAX)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[4, 4]) == (255, 0, 0)


def test_palette_transparency_is_laid_over_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    out = decode_image(image_bytes(image, "PNG", transparency=0), max_pixels=MAX)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (255, 0, 0)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    data = image_bytes(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = decode_image(data, max_pixels=MAX)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_gif_gives_its_first_frame() -> None:
    frames = [shape_image("red", "square"), shape_image("blue", "square")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    out = decode_image(buffer.getvalue(), max_pixels=MAX)
    r, _g, b = out[32, 32].astype(int)
    assert r > 150 and b < 100


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(image_bytes(image, "JPEG", exif=exif), max_pixels=MAX)
    assert out.shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"hello, this is text", 400, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, 400, ""),
        (JPEG[:300], 400, "truncated"),
        (JPEG[: len(JPEG) * 2 // 3], 400, "truncated"),
        (image_bytes(shape_image("red", "square"), "PNG")[:-30], 400, ""),
        (image_bytes(shape_image("red", "square"), "ICO"), 415, "unsupported image format"),
        (image_bytes(shape_image("red", "square"), "PPM"), 415, "unsupported image format"),
    ],
    ids=[
        "empty",
        "text",
        "png-garbage",
        "jpeg-cut-in-header",
        "jpeg-cut-in-data",
        "truncated-png",
        "ico",
        "ppm",
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, status: int, words: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, max_pixels=MAX)
    assert caught.value.status_code == status
    assert words in caught.value.detail


def test_decompression_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    start = time.perf_counter()
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_header_only(100_000, 100_000), max_pixels=MAX)
    assert caught.value.status_code == 413
    assert "pixels" in caught.value.detail
    assert loads == [], "pixels were decoded before the size check"
    assert time.perf_counter() - start < 1.0


def test_pixel_budget_is_the_service_setting() -> None:
    data = image_bytes(shape_image("red", "square"), "PNG")  # 64 x 64 = 4096 pixels
    assert decode_image(data, max_pixels=4096).shape == (64, 64, 3)
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, max_pixels=4095)
    assert caught.value.status_code == 413
    assert "64x64" in caught.value.detail and "VSEPP_MAX_IMAGE_PIXELS" in caught.value.detail


def test_pil_bomb_guard_is_turned_into_a_413(monkeypatch: pytest.MonkeyPatch) -> None:
    # With PIL's own guard below our budget, its error must still come out as a 413.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected) as caught:
        decode_image(image_bytes(shape_image("red", "square"), "PNG"), max_pixels=MAX)
    assert caught.value.status_code == 413


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "image/jpeg", "IMAGE/PNG; charset=x", "application/octet-stream", None, ""],
)
def test_image_content_types_pass(content_type: str | None) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/pdf", "image/svg+xml", "video/mp4"]
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        check_content_type(content_type)
    assert caught.value.status_code == 415
    assert content_type in caught.value.detail
