"""service.imaging: declared content types, and the HTTP status of each refused image."""

from __future__ import annotations

import pytest

from service.imaging import ImageRejected, canonical_upload, check_content_type
from tests.image_files import png_header_only
from tests.service_helpers import image_bytes, shape_image

MAX = 10_000_000


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"hello, this is text", 400, "not an image"),
        (image_bytes(shape_image("red", "square"), "ICO"), 415, "unsupported image format"),
        (png_header_only(100_000, 100_000), 413, "VSEPP_MAX_IMAGE_PIXELS"),
    ],
    ids=["empty", "text", "ico", "bomb"],
)
def test_refused_uploads_get_their_status(data: bytes, status: int, words: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        canonical_upload(data, max_pixels=MAX, min_side=None)
    assert caught.value.status_code == status
    assert words in caught.value.detail


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
