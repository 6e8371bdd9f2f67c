"""Untrusted uploads: declared content types, and the HTTP answer for a refused image.

Decoding itself is `vsepp.images`, the one decoder that indexing and training use too, so an
uploaded file embeds exactly as the same file did when it was indexed.
"""

from __future__ import annotations

import warnings

from PIL import Image

from vsepp.images import FORMATS_HINT, CanonicalImage, ImageFileError, canonical_image

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


# HTTP status of each reason an image file is refused (vsepp.images.ImageFileError).
_STATUS = {"too_many_pixels": 413, "unsupported": 415}


def rejected(error: ImageFileError) -> ImageRejected:
    """The HTTP answer to an upload the one decoder refused: 400, 413 or 415."""
    detail = str(error)
    if error.reason == "too_many_pixels":
        detail += " (VSEPP_MAX_IMAGE_PIXELS)"
    if error.reason == "empty":
        detail = "the uploaded file is empty"
    return ImageRejected(_STATUS.get(error.reason, 400), detail)


def canonical_upload(data: bytes, *, max_pixels: int, min_side: int | None) -> CanonicalImage:
    """The upload in the encoder's canonical form (`vsepp.images`; `min_side`, the model's
    `jpeg_min_side`), or ImageRejected."""
    try:
        return canonical_image(data, max_pixels=max_pixels, min_side=min_side)
    except ImageFileError as e:
        raise rejected(e) from e
