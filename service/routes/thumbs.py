"""GET /thumbs/{image_id}?size=N: cached JPEG thumbnails of the indexed images."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from PIL import Image

from service.deps import BackendDep, SettingsDep, StateDep
from service.route_class import ServiceRoute, invalid
from service.schemas import ErrorResponse
from vsepp.atomic import write_bytes_atomic
from vsepp.images import ImageFileError, canonical_image

router = APIRouter(tags=["images"], route_class=ServiceRoute)

THUMB_SIZES = (128, 256, 512)  # a few fixed sizes, so the cache stays small and warm


def _cache_dir(configured: Path | None) -> Path:
    if configured is not None:
        return configured
    return Path(tempfile.gettempdir()) / f"vsepp-thumbs-{os.getuid()}"


def thumbnail(source: Path, size: int, cache: Path, max_pixels: int) -> bytes:
    """A JPEG of at most size x size, upright (EXIF), made once per file and size."""
    st = source.stat()
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{size}".encode()
    path = cache / f"{hashlib.sha256(key).hexdigest()[:32]}.jpg"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    # The one decoder's canonical form is upright and opaque; PIL reads it exactly. A JPEG
    # is read at the smallest DCT scale that still covers the thumbnail (PIL's draft).
    canonical = canonical_image(source.read_bytes(), max_pixels=max_pixels, min_side=size)
    with Image.open(io.BytesIO(canonical.data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))
        picture = image.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85, optimize=True)
    data = out.getvalue()
    write_bytes_atomic(path, data)
    return data


@router.get(
    "/thumbs/{image_id:path}",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The thumbnail."},
        404: {"model": ErrorResponse, "description": "Not an image of the index."},
        503: {"model": ErrorResponse},
    },
)
async def get_thumbnail(
    image_id: str,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    size: Annotated[
        int,
        Query(
            description=f"Longest side: one of {THUMB_SIZES}.",
            json_schema_extra={"enum": list(THUMB_SIZES)},
        ),
    ] = 256,
) -> Response:
    """A thumbnail of an image of the index, at most size x size, kept in a cache."""
    if size not in THUMB_SIZES:
        raise invalid(("query", "size"), f"size must be one of {THUMB_SIZES}, got {size}", size)
    not_found = HTTPException(404, f"no image {image_id[:200]!r} in the index")
    source = backend.index.image_file(image_id)
    if source is None:
        raise not_found
    cache = _cache_dir(settings.thumb_cache_dir)
    try:
        data = await anyio.to_thread.run_sync(
            thumbnail, source, int(size), cache, settings.max_image_pixels,
            limiter=state.image_limiter(),
        )  # fmt: skip
    except (ImageFileError, OSError) as exc:
        raise HTTPException(404, f"image {image_id[:200]!r} cannot be shown: {exc}") from exc
    return Response(
        data,
        media_type="image/jpeg",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
