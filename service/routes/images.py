"""GET /images/{image_id}: the files of the indexed images, and nothing else; and
GET /images/{image_id}/duplicates: an image's near-duplicate group."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from service.deps import BackendDep
from service.route_class import ServiceRoute
from service.schemas import DuplicatesResponse, ErrorResponse

router = APIRouter(tags=["images"], route_class=ServiceRoute)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)


def sniff_media_type(path: Path) -> str:
    """The image's content type from its first bytes, else from its name."""
    with path.open("rb") as handle:
        head = handle.read(16)
    for magic, media in _MAGIC:
        if head.startswith(magic):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@router.get(
    "/images/{image_id:path}/duplicates",
    response_model=DuplicatesResponse,
    responses={
        404: {"model": ErrorResponse, "description": "Not an image of the index."},
        503: {"model": ErrorResponse},
    },
)
async def get_duplicates(image_id: str, backend: BackendDep) -> DuplicatesResponse:
    """The near-duplicate group of an image of the index (itself included)."""
    index = backend.index
    row = index.image_row(image_id)
    if row is None:
        raise HTTPException(404, f"no image {image_id[:200]!r} in the index")
    grouping = index.manifest.get("near_duplicates") or {}
    return DuplicatesResponse(
        image_id=image_id,
        group=[index.image_ids[r] for r in index.group_of(row)],
        threshold=grouping.get("threshold"),
    )


@router.get(
    "/images/{image_id:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/*": {}}, "description": "The image file."},
        404: {"model": ErrorResponse, "description": "Not an image of the index."},
        503: {"model": ErrorResponse},
    },
)
async def get_image(image_id: str, backend: BackendDep) -> FileResponse:
    """The stored file of an image of the index, with its content type."""
    not_found = HTTPException(404, f"no image {image_id[:200]!r} in the index")
    path = backend.index.image_file(image_id)
    if path is None:
        raise not_found
    return FileResponse(
        path,
        media_type=sniff_media_type(path),
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
