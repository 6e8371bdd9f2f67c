"""Turning untrusted image bytes into an RGB uint8 array, or a clear reason why not.

The pixel budget is checked from the header (`Image.open` parses only that) before a single
pixel is decoded, so a small file that claims to be 100k x 100k is refused in microseconds.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# PIL format names the service decodes; MPO is the multi-picture JPEG of many cameras.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "TIFF", "WEBP", "BMP"})
# Declared content types of an upload that are accepted (the bytes decide in the end);
# browsers and curl send an image/* type, other clients often octet-stream or nothing.
SUPPORTED_CONTENT_TYPES = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/png",
        "image/x-png",
        "image/apng",
        "image/gif",
        "image/tiff",
        "image/webp",
        "image/bmp",
        "image/x-bmp",
        "image/x-ms-bmp",
        "application/octet-stream",
    }
)
FORMATS_HINT = "JPEG, PNG, GIF, TIFF, WebP or BMP"


class ImageRejected(Exception):
    """An upload that cannot be used, with the HTTP status and the reason for the client."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def configure_pil(max_pixels: int) -> None:
    """Make PIL's own decompression-bomb guard match the service's pixel budget.

    PIL warns above MAX_IMAGE_PIXELS and raises above twice that; the warning is turned into
    an error so that no size between the two slips through as a mere log line.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def check_content_type(content_type: str | None) -> None:
    """Refuse (415) a declared type that is not an image format the service reads."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media not in SUPPORTED_CONTENT_TYPES:
        raise ImageRejected(
            415, f"unsupported content type {media!r} for the file; send {FORMATS_HINT}"
        )


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an image file to a uint8 [H, W, 3] RGB array (first frame of an animation).

    Raises ImageRejected: 400 for bytes that are not an image or are truncated/corrupt,
    413 for more than `max_pixels` pixels, 415 for a format or colour mode not supported.
    """
    if not data:
        raise ImageRejected(400, "the uploaded file is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(413, _too_many_pixels(max_pixels, exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            400, f"the uploaded file is not an image that can be read ({FORMATS_HINT})"
        ) from exc
    except Exception as exc:  # corrupt headers raise all sorts (SyntaxError, struct.error…)
        raise ImageRejected(
            400, f"the image is truncated or its header is corrupt: {_reason(exc)}"
        ) from exc

    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageRejected(
                415, f"unsupported image format {image.format}; send {FORMATS_HINT}"
            )
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected(400, f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRejected(
                413,
                f"image is {width}x{height} = {width * height} pixels; the limit is "
                f"{max_pixels} (VSEPP_MAX_IMAGE_PIXELS)",
            )
        try:
            image.seek(0)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(413, _too_many_pixels(max_pixels, exc)) from exc
        except Exception as exc:
            raise ImageRejected(
                400, f"the {image.format} image is truncated or corrupt: {_reason(exc)}"
            ) from exc
        try:
            return to_rgb_array(image)
        except ImageRejected:
            raise
        except Exception as exc:
            raise ImageRejected(
                415, f"cannot convert the image's colour mode {image.mode!r} to RGB"
            ) from exc


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a loaded image of any mode, upright per its EXIF orientation.

    16-bit and float images are scaled down to 8 bits (PIL's own convert would clip them),
    transparent images are laid over white, CMYK/grayscale/palette go through PIL.
    """
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is not worth refusing the picture for
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        upright = image
    if upright is not None:
        image = upright
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(415, f"cannot convert the image's colour mode {mode!r} to RGB")
    return np.ascontiguousarray(array)


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if data.size and float(data.max()) <= 1.0:
            data = data * 255.0
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    data = values.astype(np.int64)
    # "I;16*" is 16 bits by definition; "I" (32-bit) holds 16-bit PNGs in older Pillows.
    if mode.startswith("I;16") or (data.size and int(data.max()) > 255):
        data = np.clip(data, 0, 65535)
        return np.rint(data / 257.0).astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def _too_many_pixels(max_pixels: int, exc: Exception) -> str:
    return (
        f"image has more pixels than the limit of {max_pixels} (VSEPP_MAX_IMAGE_PIXELS): "
        f"{_reason(exc)}"
    )


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"
