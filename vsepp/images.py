"""The one way an image file becomes pixels: in training, indexing, evaluation and serving.

The exported image encoder decodes JPEG and PNG itself (`tf.io.decode_image`), and every
part hands it the file's bytes. What TensorFlow cannot decode, or would decode differently
from what a person sees, PIL first turns into a canonical form that TensorFlow decodes
exactly: a lossless 8-bit RGB PNG, upright per the EXIF orientation, transparency laid over
white. That covers WebP, TIFF, BMP, GIF (first frame), MPO, CMYK and YCCK JPEG, 16-bit,
palette and transparent PNG, and any EXIF-rotated file. A plain RGB or grayscale JPEG or PNG
passes through untouched, so the common case costs one header parse.

The pixel budget is checked from the header before a single pixel is decoded, so a small
file that claims to be 100k x 100k is refused in microseconds.

`min_side` is the model's (`vsepp.model_dir.jpeg_min_side`): a model whose decoder reads
a large JPEG at a reduced DCT scale has the JPEGs PIL converts (EXIF-rotated, CMYK) drafted
the same way, to the smallest scale whose shorter side is >= `min_side`, instead of
decoding 12 megapixels to hand 256 rows on. Every part passes the model's value, so all
of them still see the same pixels.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# PIL format names that are read; MPO is the multi-picture JPEG of many cameras.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "TIFF", "WEBP", "BMP"})
# File name extensions of those formats, for walking folders of images.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"}
)
FORMATS_HINT = "JPEG, PNG, GIF, TIFF, WebP or BMP"
# PIL's own default budget (about 89.5 megapixels): above it a file is taken for a bomb.
DEFAULT_MAX_PIXELS = 89_478_485

# What TensorFlow's decoder reads exactly as PIL would: 8-bit RGB or gray, no alpha.
_PASS_THROUGH_MODES = frozenset({"RGB", "L"})
_ORIENTATION = 0x0112  # the EXIF tag
_TURNING = frozenset({5, 6, 7, 8})  # orientations that swap width and height


class ImageFileError(ValueError):
    """A file that cannot be used as an image.

    `reason` is one of: "unreadable", "empty", "not_an_image", "corrupt", "too_many_pixels",
    "unsupported"; the message says what exactly is wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_image_file(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> bytes:
    """The canonical bytes of the image file at `path` (see `canonical_image_bytes`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageFileError("unreadable", f"cannot read {path}: {e.strerror or e}") from e
    return canonical_image_bytes(data, max_pixels=max_pixels, min_side=min_side)


@dataclass(frozen=True)
class CanonicalImage:
    """An image file in the form the encoder's decoder reads exactly, and its upright size
    (of the file: a drafted PNG has fewer pixels)."""

    data: bytes  # the original bytes, or a lossless 8-bit RGB PNG
    width: int
    height: int


def canonical_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> CanonicalImage:
    """`data` itself where the encoder's decoder reads it as is, else a canonical RGB PNG
    (of a JPEG drafted to the DCT scale `min_side` allows, see the module doc).

    Raises ImageFileError for empty data, data that is no image of a supported format,
    a corrupt file, or more than `max_pixels` pixels.
    """
    if not data:
        raise ImageFileError("empty", "the file is empty")
    with _open(data, max_pixels) as image:
        if _passes_through(image):
            return CanonicalImage(data, *image.size)
        width, height = image.size
        if _orientation(image) in _TURNING:
            width, height = height, width  # made upright by its EXIF orientation
        if min_side is not None and image.format in ("JPEG", "MPO"):
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding; PIL keeps both sides >= these.
            image.draft("RGB", (min_side, min_side))
        rgb = _load_rgb(image)
    out = io.BytesIO()
    # Level 1: the PNG is only a lossless hand-over to the decoder, not something to keep.
    Image.fromarray(rgb).save(out, "PNG", compress_level=1)
    return CanonicalImage(out.getvalue(), width, height)


def canonical_image_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> bytes:
    """The bytes of `canonical_image(data)`."""
    return canonical_image(data, max_pixels=max_pixels, min_side=min_side).data


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image with its header parsed and checked (format, size, pixel budget)."""
    try:
        # The budget is checked below against `max_pixels`; PIL's own guard (its global
        # MAX_IMAGE_PIXELS, which the service sets to the same budget) may refuse first.
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError("too_many_pixels", _too_many_pixels(max_pixels, e)) from e
    except UnidentifiedImageError as e:
        raise ImageFileError(
            "not_an_image", f"the file is not an image that can be read ({FORMATS_HINT})"
        ) from e
    except Exception as e:  # corrupt headers raise all sorts (SyntaxError, struct.error…)
        raise ImageFileError("corrupt", f"the header is truncated or corrupt: {_why(e)}") from e
    if image.format not in SUPPORTED_FORMATS:
        image.close()
        raise ImageFileError(
            "unsupported", f"unsupported image format {image.format}; use {FORMATS_HINT}"
        )
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageFileError("corrupt", f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        image.close()
        raise ImageFileError(
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    return image


def _passes_through(image: Image.Image) -> bool:
    """True when TensorFlow's decoder gives exactly the upright RGB pixels of `image`."""
    if image.format not in ("JPEG", "PNG") or image.mode not in _PASS_THROUGH_MODES:
        return False
    if image.format == "PNG":
        # tRNS makes a gray or RGB PNG transparent; eXIf may rotate it.
        return "transparency" not in image.info and "exif" not in image.info
    return _orientation(image) in (None, 1)


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1 to 8); 0 for an unreadable EXIF block, which PIL's path
    then makes what it can of."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:
        return 0
    return int(value) if isinstance(value, int) else None


def _load_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3] of the first frame, upright, alpha laid over white."""
    try:
        image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError("too_many_pixels", str(e)) from e
    except Exception as e:
        raise ImageFileError(
            "corrupt", f"the {image.format} image is truncated or corrupt: {_why(e)}"
        ) from e
    try:
        return to_rgb_array(image)
    except ImageFileError:
        raise
    except Exception as e:
        raise ImageFileError(
            "unsupported", f"cannot convert the image's colour mode {image.mode!r} to RGB"
        ) from e


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a loaded image of any mode, upright per its EXIF orientation.

    16-bit and float images are scaled down to 8 bits (PIL's own convert would clip them),
    transparent images are laid over white, CMYK/grayscale/palette go through PIL.
    """
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is not worth refusing the picture for
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        upright = image
    if upright is not None:
        image = upright
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageFileError("unsupported", f"cannot convert the image's colour mode {mode!r}")
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


def _too_many_pixels(max_pixels: int, e: Exception) -> str:
    return f"the image has more pixels than the limit of {max_pixels}: {_why(e)}"


def _why(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "…"
