"""Image files of every kind a user's collection holds, made in memory for the tests."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image


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


def photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients and a disc), not a flat test card."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (7 + 5 * rng.random()))
    g = 128 + 100 * np.cos(y / (9 + 5 * rng.random()))
    b = 255 * (((x - width / 2) ** 2 + (y - height / 3) ** 2) < (height / 4) ** 2)
    rgb = np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@cache
def quirky_images() -> dict[str, bytes]:
    """name -> file bytes: every kind the one decoder must read the same way everywhere."""
    base = photo()
    rgba = base.convert("RGBA")
    alpha = np.zeros((base.height, base.width), np.uint8)
    alpha[:, base.width // 3 :] = 255
    rgba.putalpha(Image.fromarray(alpha, "L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    sixteen = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
    frames = [base, photo(seed=1)]
    return {
        "baseline.jpg": _save(base, "JPEG", quality=92),
        "progressive.jpg": _save(base, "JPEG", quality=92, progressive=True),
        "exif-rotated.jpg": _save(base, "JPEG", quality=92, exif=exif),
        "photo.png": _save(base, "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "grayscale.jpg": _save(base.convert("L"), "JPEG", quality=92),
        "cmyk.jpg": _save(base.convert("CMYK"), "JPEG", quality=92),
        "photo.webp": _save(base, "WEBP", quality=90),
        "palette.png": _save(base.convert("P"), "PNG"),
        "sixteen-bit.png": _save(Image.fromarray(sixteen), "PNG"),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "photo.bmp": _save(base, "BMP"),
        "photo.tiff": _save(base, "TIFF"),
    }
