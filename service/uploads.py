"""Reading an uploaded file: its declared type checked first, its bytes read with a bound."""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

from service.imaging import ImageRejected, check_content_type

CHUNK_BYTES = 64 * 1024


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, read in chunks and refused (413) as soon as they pass `max_bytes`.

    The declared content type is checked first (415), so nothing is read for a PDF.
    """
    try:
        check_content_type(upload.content_type)
    except ImageRejected as exc:
        raise HTTPException(exc.status_code, exc.detail) from exc
    if upload.size is not None and upload.size > max_bytes:
        raise HTTPException(413, _too_large(max_bytes))
    buffer = bytearray()
    while chunk := await upload.read(CHUNK_BYTES):
        if len(buffer) + len(chunk) > max_bytes:
            raise HTTPException(413, _too_large(max_bytes))
        buffer += chunk
    if not buffer:
        raise HTTPException(400, "the uploaded file is empty")
    return bytes(buffer)


def _too_large(max_bytes: int) -> str:
    return f"upload is larger than the limit of {max_bytes} bytes (VSEPP_MAX_UPLOAD_BYTES)"
