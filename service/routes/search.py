"""Search endpoints: a sentence finds images, an image finds captions."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile

from index.search import Ranked
from service.deps import BackendDep, SettingsDep, StateDep
from service.imaging import ImageRejected
from service.responses import fast_json
from service.route_class import ServiceRoute
from service.routes.helpers import (
    caption_results,
    check_text,
    image_results,
    require_captions,
    resolve_k,
    resolve_offset,
)
from service.schemas import (
    ErrorResponse,
    ImageSearchResponse,
    ImageToImageResponse,
    TextSearchRequest,
    TextSearchResponse,
)
from service.search import TextQuery
from service.state import Backend
from service.uploads import read_upload
from vsepp.images import CanonicalImage

router = APIRouter(prefix="/search", tags=["search"], route_class=ServiceRoute)

NO_KNOWN_WORDS = (
    "none of the words of the query are in the model's vocabulary, so there is nothing to "
    "search with; try other (English) words"
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such image in the index."},
    413: {"model": ErrorResponse, "description": "Upload too large in bytes or pixels."},
    415: {"model": ErrorResponse, "description": "Unsupported content type or image format."},
    400: {"model": ErrorResponse, "description": "Not an image, or a truncated one."},
    503: {"model": ErrorResponse, "description": "Model and index not loaded yet."},
    409: {"model": ErrorResponse, "description": "The index holds no captions to search."},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in codes}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


async def _text_search(
    request: Request, backend: Backend, query: str, k: int, start: float, offset: int = 0
) -> Response:
    hits = await backend.text_batcher.submit(TextQuery(query, k + offset, backend.engine))
    if hits.known_words <= 0:
        return fast_json(
            TextSearchResponse(
                results=[],
                took_ms=_ms(start),
                known_words=0,
                no_known_words=True,
                message=NO_KNOWN_WORDS,
            )
        )
    return fast_json(
        TextSearchResponse(
            results=image_results(request, backend, hits.ranked.after(offset), offset),
            took_ms=_ms(start),
            known_words=hits.known_words,
            no_known_words=False,
        )
    )


@router.post("/text", response_model=TextSearchResponse, responses=_errors(415, 503))
async def search_text(
    body: TextSearchRequest, request: Request, backend: BackendDep, settings: SettingsDep
) -> Response:
    """Images for a sentence, best first (cosine similarity)."""
    start = time.perf_counter()
    k = resolve_k(body.k if "k" in body.model_fields_set else None, settings, ("body", "k"))
    offset = resolve_offset(body.offset, settings, ("body", "offset"))
    query = check_text(body.query, settings, ("body", "query"), "query")
    return await _text_search(request, backend, query, k, start, offset)


@router.get("/text", response_model=TextSearchResponse, responses=_errors(503))
async def search_text_get(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, description="The sentence.")],
    k: Annotated[int | None, Query(ge=1, description="How many images (default 10).")] = None,
    offset: Annotated[int, Query(ge=0, description="Results to skip (paging).")] = 0,
) -> Response:
    """The same search as POST /search/text, as a link: /search/text?q=a+dog&k=10."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    skip = resolve_offset(offset, settings, ("query", "offset"))
    query = check_text(q, settings, ("query", "q"), "query")
    return await _text_search(request, backend, query, k_used, start, skip)


@router.post(
    "/image",
    response_model=ImageSearchResponse,
    responses=_errors(400, 409, 413, 415, 503),
)
async def search_image(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    file: Annotated[UploadFile, File(description="The image (JPEG, PNG, GIF, TIFF, WebP, BMP).")],
    k: Annotated[int | None, Form(ge=1, description="How many captions (default 10).")] = None,
) -> Response:
    """Captions for an uploaded image, best first (cosine similarity)."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("body", "k"))
    require_captions(backend)
    data = await read_upload(file, settings.max_upload_bytes)
    engine = backend.engine

    def work() -> tuple[Ranked, CanonicalImage]:
        image = engine.decode(data, settings.max_image_pixels)
        return engine.search_captions(engine.embed_image(image.data), k_used), image

    try:
        ranked, image = await anyio.to_thread.run_sync(work, limiter=state.image_limiter())
    except ImageRejected as exc:
        raise HTTPException(exc.status_code, exc.detail) from exc
    return fast_json(
        ImageSearchResponse(
            results=caption_results(request, backend, ranked),
            took_ms=_ms(start),
            height=image.height,
            width=image.width,
        )
    )


def _row_of(backend: Backend, image_id: str) -> int:
    row = backend.index.image_row(image_id)
    if row is None:
        raise HTTPException(404, f"no image {image_id[:200]!r} in the index")
    return row


async def _indexed_image_vector(backend: Backend, state: StateDep, row: int) -> np.ndarray:
    try:
        return await anyio.to_thread.run_sync(
            backend.engine.embed_indexed_image, row, limiter=state.image_limiter()
        )
    except FileNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get(
    "/image-to-captions",
    response_model=ImageSearchResponse,
    responses=_errors(404, 409, 503),
)
async def search_indexed_image_captions(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    image_id: Annotated[str, Query(min_length=1, description="An image_id of the index.")],
    k: Annotated[int | None, Query(ge=1, description="How many captions (default 10).")] = None,
) -> ImageSearchResponse:
    """Captions for an image of the index (what clicking a result on the page does)."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    require_captions(backend)
    row = _row_of(backend, image_id)
    vector = await _indexed_image_vector(backend, state, row)
    ranked = await anyio.to_thread.run_sync(backend.engine.search_captions, vector, k_used)
    return ImageSearchResponse(
        results=caption_results(request, backend, ranked), took_ms=_ms(start)
    )


@router.get(
    "/image-to-image",
    response_model=ImageToImageResponse,
    responses=_errors(404, 503),
)
async def search_indexed_image_images(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    image_id: Annotated[str, Query(min_length=1, description="An image_id of the index.")],
    k: Annotated[int | None, Query(ge=1, description="How many images (default 10).")] = None,
    offset: Annotated[int, Query(ge=0, description="Results to skip (paging).")] = 0,
) -> ImageToImageResponse:
    """Images of the index nearest to one of its images."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    skip = resolve_offset(offset, settings, ("query", "offset"))
    row = _row_of(backend, image_id)
    vector = await _indexed_image_vector(backend, state, row)
    ranked = await anyio.to_thread.run_sync(backend.engine.search_images, vector, k_used + skip)
    return ImageToImageResponse(
        results=image_results(request, backend, ranked.after(skip), skip), took_ms=_ms(start)
    )
