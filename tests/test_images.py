"""vsepp.images, the one decoder: what the encoder's TensorFlow decoder sees of each file.

`pixels` decodes exactly as the exported image encoder does (canonical form, then
`tf.io.decode_image`), so these tests check the pixels every part of the project gets.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.image_files import png_header_only, quirky_images
from tests.service_helpers import image_bytes, shape_image
from training.images import decode_image
from vsepp.images import ImageFileError, canonical_image, canonical_image_bytes

MAX = 10_000_000
JPEG = image_bytes(shape_image("red", "square", size=256), "JPEG", quality=95)


def pixels(data: bytes, max_pixels: int = MAX) -> np.ndarray:
    """uint8 [H, W, 3] as the exported image encoder decodes `data`."""
    return decode_image(canonical_image_bytes(data, max_pixels=max_pixels)).numpy()


def test_plain_jpeg_and_png_pass_through_untouched() -> None:
    png = image_bytes(shape_image("red", "square"), "PNG")
    gray = image_bytes(shape_image("red", "square").convert("L"), "JPEG")
    for data in (JPEG, png, gray):
        assert canonical_image_bytes(data, max_pixels=MAX) is data


def test_rgb_png_round_trips() -> None:
    image = shape_image("red", "square")
    out = pixels(image_bytes(image, "PNG"))
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert np.array_equal(out, np.asarray(image))


@pytest.mark.parametrize("name", sorted(quirky_images()))
def test_every_kind_becomes_rgb_uint8(name: str) -> None:
    out = pixels(quirky_images()[name])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("tiff", lambda im: image_bytes(im, "TIFF")),
        ("webp", lambda im: image_bytes(im, "WEBP", lossless=True)),
        ("bmp", lambda im: image_bytes(im, "BMP")),
        ("palette png", lambda im: image_bytes(im.convert("P"), "PNG")),
    ],
)
def test_lossless_formats_keep_their_pixels(name: str, make: object) -> None:
    data = make(shape_image("blue", "circle"))  # type: ignore[operator]
    shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(pixels(data), shown), name


def test_canonical_form_is_a_fixed_point() -> None:
    once = canonical_image_bytes(image_bytes(shape_image("red", "square"), "WEBP"))
    assert canonical_image_bytes(once) is once


def test_cmyk_jpeg_keeps_its_colour() -> None:
    out = pixels(image_bytes(shape_image("red", "square").convert("CMYK"), "JPEG", quality=95))
    r, g, b = out[32, 32].astype(int)
    assert r > 150 and g < 100 and b < 100


def test_rgba_is_laid_over_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((4, 4), (255, 0, 0, 255))
    out = pixels(image_bytes(image, "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[4, 4]) == (255, 0, 0)


def test_palette_transparency_is_laid_over_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    out = pixels(image_bytes(image, "PNG", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (255, 0, 0)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    data = image_bytes(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = pixels(data)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_gif_gives_its_first_frame() -> None:
    frames = [shape_image("red", "square"), shape_image("blue", "square")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    r, _g, b = pixels(buffer.getvalue())[32, 32].astype(int)
    assert r > 150 and b < 100


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = image_bytes(image, "JPEG", exif=exif)
    assert pixels(data).shape == (40, 20, 3)
    canonical = canonical_image(data)
    assert (canonical.width, canonical.height) == (20, 40)


def test_a_large_rotated_jpeg_is_drafted_to_the_models_min_side() -> None:
    from tests.image_files import photo

    stored = photo(1600, 1200, seed=4).transpose(Image.Transpose.ROTATE_90)  # 1200 x 1600
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(stored, "JPEG", quality=90, exif=exif)
    full = canonical_image(data, max_pixels=MAX)
    drafted = canonical_image(data, max_pixels=MAX, min_side=256)
    # Both report the upright file's size; the drafted PNG holds 1/4 of each side.
    assert (full.width, full.height) == (drafted.width, drafted.height) == (1600, 1200)
    small = decode_image(drafted.data).numpy()
    assert small.shape == (300, 400, 3) and decode_image(full.data).shape == (1200, 1600, 3)
    # The same picture: the full decode shrunk by PIL sits within a few grey levels of it.
    shrunk = Image.open(io.BytesIO(full.data)).resize((400, 300), Image.Resampling.BOX)
    assert np.abs(np.asarray(shrunk, np.float32) - small).mean() < 3.0
    # The draft is a fixed point too, and a JPEG that passes through is left as it is.
    assert canonical_image_bytes(drafted.data, min_side=256) == drafted.data
    assert canonical_image_bytes(JPEG, min_side=64) is JPEG


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "empty", "empty"),
        (b"hello, this is text", "not_an_image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not_an_image", ""),
        (JPEG[:300], "corrupt", "truncated"),
        (image_bytes(shape_image("red", "square"), "ICO"), "unsupported", "unsupported"),
        (image_bytes(shape_image("red", "square"), "PPM"), "unsupported", "unsupported"),
    ],
    ids=["empty", "text", "png-garbage", "jpeg-cut-in-header", "ico", "ppm"],
)
def test_bad_bytes_are_refused_with_a_reason(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ImageFileError) as caught:
        canonical_image(data, max_pixels=MAX)
    assert caught.value.reason == reason
    assert words in str(caught.value)


def test_decompression_bomb_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(ImageFileError) as caught:
        canonical_image(png_header_only(100_000, 100_000), max_pixels=MAX)
    assert caught.value.reason == "too_many_pixels"
    assert "pixels" in str(caught.value)
    assert loads == [], "pixels were decoded before the size check"


def test_pixel_budget_is_the_callers() -> None:
    data = image_bytes(shape_image("red", "square"), "PNG")  # 64 x 64 = 4096 pixels
    assert canonical_image(data, max_pixels=4096).width == 64
    with pytest.raises(ImageFileError, match="64x64") as caught:
        canonical_image(data, max_pixels=4095)
    assert caught.value.reason == "too_many_pixels"


def test_pil_bomb_guard_is_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # With PIL's own guard below the budget, its error still says "too many pixels".
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageFileError) as caught:
        canonical_image(image_bytes(shape_image("red", "square"), "PNG"), max_pixels=MAX)
    assert caught.value.reason == "too_many_pixels"
