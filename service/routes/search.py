"""Search endpoints: a sentence finds images, an image finds captions."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)

from index.filters import Condition, FilterError, parse
from index.search import Ranked, by_capture_time, collapsed, filter_fields
from service.config import Settings
from service.deps import BackendDep, SettingsDep, StateDep, loaded_backend, service_state
from service.imaging import ImageRejected
from service.responses import model_json
from service.route_class import ServiceRoute, invalid
from service.routes.helpers import (
    check_text,
    require_captions,
    resolve_k,
    resolve_offset,
    url_root,
)
from service.schemas import (
    ErrorResponse,
    ImageSearchResponse,
    ImageToImageResponse,
    Sort,
    TextSearchRequest,
    TextSearchResponse,
)
from service.search import Hits, TextQuery
from service.state import Backend
from service.uploads import read_upload
from vsepp.images import CanonicalImage

router = APIRouter(prefix="/search", tags=["search"], route_class=ServiceRoute)

NOTHING_SELECTED = "the filter selects no image of the index, so there is nothing to search"
FILTER_TEXT = (
    "A condition on the images' fields as URL-encoded JSON (the Filter schema), e.g. "
    '{"field": "folder", "eq": "holiday"}.'
)
MIN_SCORE = "Drop results whose cosine score is lower (a relevance cut-off)."
FilterQuery = Annotated[str | None, Query(description=FILTER_TEXT)]
MinScoreQuery = Annotated[float | None, Query(ge=-1.0, le=1.0, description=MIN_SCORE)]
CollapseQuery = Annotated[
    bool, Query(description="Show each near-duplicate group once, by its best member.")
]
SortQuery = Annotated[
    Sort, Query(description="score (default), taken_at (oldest first) or -taken_at.")
]

NO_KNOWN_WORDS = (
    "none of the words of the query are in the model's vocabulary, so there is nothing to "
    "search with; try other (English) words"
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such image in the index."},
    413: {"model": ErrorResponse, "description": "Upload too large in bytes or pixels."},
    415: {"model": ErrorResponse, "description": "Unsupported content type or image format."},
    400: {
        "model": ErrorResponse,
        "description": "A filter that names a field the index lacks, compares a value of "
        "another type, holds a malformed date or is not JSON; for an upload, not an image "
        "or a truncated one.",
    },
    503: {"model": ErrorResponse, "description": "Model and index not loaded yet."},
    409: {"model": ErrorResponse, "description": "The index holds no captions to search."},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in codes}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


@dataclass(frozen=True)
class Narrowing:
    """A request's filter (parsed against the index it will search), cut-off and order."""

    where: Condition | None = None
    min_score: float | None = None
    sort: Sort = "score"
    collapse: bool = False

    def pool(self, k: int, offset: int, settings: Settings) -> int:
        """How many candidates to search for: the page, or the pool a cut-off, a collapse
        or a sort by date works on."""
        if self.min_score is None and self.sort == "score" and not self.collapse:
            return k + offset
        return max(k + offset, settings.sort_pool)


def narrowing(
    backend: Backend,
    where: dict[str, Any] | None,
    min_score: float | None = None,
    sort: Sort = "score",
    collapse: bool = False,
) -> Narrowing:
    """The request's options, or 400 naming what is wrong in its filter."""
    if sort != "score" and "taken_at" not in backend.index.image_table.column_names:
        raise HTTPException(400, f"sort: {sort}: this index has no capture times (taken_at)")
    if where is None:
        return Narrowing(None, min_score, sort, collapse)
    try:
        condition = parse(where, filter_fields(backend.index))
    except FilterError as exc:
        raise HTTPException(400, str(exc)) from exc
    return Narrowing(condition, min_score, sort, collapse)


async def _no_empty_fields(request: Request, names: tuple[str, ...]) -> None:
    """422 for a number field of a form that is there but empty: the form parser reads it as
    left out, which would accept what the schema (a number) refuses."""
    form = await request.form()  # parsed once already: this is the cached form
    for name in names:
        if form.get(name) == "":
            raise invalid(("body", name), f"{name} is empty: give a number or leave it out", "")


@dataclass(frozen=True)
class ImageQuery:
    """The options of an image search given in a URL (GET forms)."""

    filter: str | None
    min_score: float | None
    sort: Sort
    collapse: bool

    def narrowing(self, backend: Backend) -> Narrowing:
        return narrowing(
            backend, filter_param(self.filter), self.min_score, self.sort, self.collapse
        )


def image_query(
    filter: FilterQuery = None,
    min_score: MinScoreQuery = None,
    sort: SortQuery = "score",
    collapse: CollapseQuery = False,
) -> ImageQuery:
    """FastAPI dependency: the URL options of /search/text and /search/image-to-image."""
    return ImageQuery(filter, min_score, sort, collapse)


ImageQueryDep = Annotated[ImageQuery, Depends(image_query)]


def filter_param(text: str | None) -> dict[str, Any] | None:
    """The `filter` of a GET or multipart form: JSON text, or 400."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"filter: not JSON ({exc.msg} at character {exc.pos})") from exc
    if value is None:
        return None  # JSON null: no filter, as in a JSON body
    if not isinstance(value, dict):
        raise HTTPException(400, "filter: expected a JSON object")
    return value


@dataclass(frozen=True)
class Paged:
    """The page a request asked for, and what it says besides its results."""

    ranked: Ranked
    passed: int | None = None
    message: str | None = None
    duplicates: dict[int, list[int]] | None = None  # with collapse: row -> the others


def _page(backend: Backend, hits: Hits, narrow: Narrowing, k: int, offset: int) -> Paged:
    """The cut-off, then the collapse (in score order), then the order, then the page."""
    ranked, passed, duplicates = hits.ranked, None, None
    if narrow.min_score is not None:
        keep = ranked.scores >= narrow.min_score
        ranked = Ranked(ranked.scores[keep], ranked.rows[keep])
        passed = len(ranked.rows)
    if narrow.collapse:
        ranked, duplicates = collapsed(backend.index, ranked)
    if narrow.sort != "score" and len(ranked.rows):
        ranked = by_capture_time(backend.index, ranked, newest_first=narrow.sort == "-taken_at")
    page = ranked.after(offset)
    page = Ranked(page.scores[:k], page.rows[:k])
    message = None
    if hits.selected == 0:
        message = NOTHING_SELECTED
    elif passed == 0:
        message = f"no result reached min_score {narrow.min_score}"
    return Paged(page, passed, message, duplicates)


async def _text_search(
    request: Request,
    backend: Backend,
    settings: Settings,
    query: str,
    k: int,
    start: float,
    offset: int,
    narrow: Narrowing,
) -> Response:
    pool = narrow.pool(k, offset, settings)
    hits = await backend.text_batcher.submit(TextQuery(query, pool, backend.engine, narrow.where))
    if hits.known_words <= 0:
        return model_json(
            TextSearchResponse,
            results=[],
            took_ms=_ms(start),
            known_words=0,
            no_known_words=True,
            message=NO_KNOWN_WORDS,
        )
    paged = _page(backend, hits, narrow, k, offset)
    return model_json(
        TextSearchResponse,
        results=backend.items.images(paged.ranked, url_root(request), offset, paged.duplicates),
        took_ms=_ms(start),
        known_words=hits.known_words,
        no_known_words=False,
        passed=paged.passed,
        message=paged.message,
    )


@router.post("/text", response_model=TextSearchResponse, responses=_errors(400, 415, 503))
async def search_text(body: TextSearchRequest, request: Request) -> Response:
    """Images for a sentence, best first (cosine similarity)."""
    start = time.perf_counter()
    state = service_state(request)
    backend, settings = loaded_backend(state), state.settings
    k = resolve_k(body.k if "k" in body.model_fields_set else None, settings, ("body", "k"))
    offset = resolve_offset(body.offset, settings, ("body", "offset"))
    query = check_text(body.query, settings, ("body", "query"), "query")
    narrow = narrowing(backend, body.filter, body.min_score, body.sort, body.collapse)
    return await _text_search(request, backend, settings, query, k, start, offset, narrow)


@router.get("/text", response_model=TextSearchResponse, responses=_errors(400, 503))
async def search_text_get(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, description="The sentence.")],
    options: ImageQueryDep,
    k: Annotated[int | None, Query(ge=1, description="How many images (default 10).")] = None,
    offset: Annotated[int, Query(ge=0, description="Results to skip (paging).")] = 0,
) -> Response:
    """The same search as POST /search/text, as a link: /search/text?q=a+dog&k=10."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    skip = resolve_offset(offset, settings, ("query", "offset"))
    query = check_text(q, settings, ("query", "q"), "query")
    narrow = options.narrowing(backend)
    return await _text_search(request, backend, settings, query, k_used, start, skip, narrow)


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
    filter: Annotated[str | None, Form(description=FILTER_TEXT)] = None,
    min_score: Annotated[float | None, Form(ge=-1.0, le=1.0, description=MIN_SCORE)] = None,
) -> Response:
    """Captions for an uploaded image, best first (cosine similarity)."""
    start = time.perf_counter()
    await _no_empty_fields(request, ("k", "min_score"))
    k_used = resolve_k(k, settings, ("body", "k"))
    require_captions(backend)
    narrow = narrowing(backend, filter_param(filter), min_score)
    data = await read_upload(file, settings.max_upload_bytes)
    engine = backend.engine
    pool = narrow.pool(k_used, 0, settings)

    def work() -> tuple[Hits, CanonicalImage]:
        image = engine.decode(data, settings.max_image_pixels)
        return engine.search_captions(engine.embed_image(image.data), pool, narrow.where), image

    try:
        hits, image = await anyio.to_thread.run_sync(work, limiter=state.image_limiter())
    except ImageRejected as exc:
        raise HTTPException(exc.status_code, exc.detail) from exc
    paged = _page(backend, hits, narrow, k_used, 0)
    return model_json(
        ImageSearchResponse,
        results=backend.items.captions(paged.ranked, url_root(request)),
        took_ms=_ms(start),
        height=image.height,
        width=image.width,
        passed=paged.passed,
        message=paged.message,
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
    responses=_errors(400, 404, 409, 503),
)
async def search_indexed_image_captions(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    image_id: Annotated[str, Query(min_length=1, description="An image_id of the index.")],
    k: Annotated[int | None, Query(ge=1, description="How many captions (default 10).")] = None,
    filter: FilterQuery = None,
    min_score: MinScoreQuery = None,
) -> Response:
    """Captions for an image of the index (what clicking a result on the page does)."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    require_captions(backend)
    narrow = narrowing(backend, filter_param(filter), min_score)
    row = _row_of(backend, image_id)
    vector = await _indexed_image_vector(backend, state, row)
    hits = await anyio.to_thread.run_sync(
        backend.engine.search_captions, vector, narrow.pool(k_used, 0, settings), narrow.where
    )
    paged = _page(backend, hits, narrow, k_used, 0)
    return model_json(
        ImageSearchResponse,
        results=backend.items.captions(paged.ranked, url_root(request)),
        took_ms=_ms(start),
        passed=paged.passed,
        message=paged.message,
    )


@router.get(
    "/image-to-image",
    response_model=ImageToImageResponse,
    responses=_errors(400, 404, 503),
)
async def search_indexed_image_images(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    image_id: Annotated[str, Query(min_length=1, description="An image_id of the index.")],
    options: ImageQueryDep,
    k: Annotated[int | None, Query(ge=1, description="How many images (default 10).")] = None,
    offset: Annotated[int, Query(ge=0, description="Results to skip (paging).")] = 0,
) -> Response:
    """Images of the index nearest to one of its images."""
    start = time.perf_counter()
    k_used = resolve_k(k, settings, ("query", "k"))
    skip = resolve_offset(offset, settings, ("query", "offset"))
    narrow = options.narrowing(backend)
    row = _row_of(backend, image_id)
    vector = await _indexed_image_vector(backend, state, row)
    hits = await anyio.to_thread.run_sync(
        backend.engine.search_images, vector, narrow.pool(k_used, skip, settings), narrow.where
    )
    paged = _page(backend, hits, narrow, k_used, skip)
    return model_json(
        ImageToImageResponse,
        results=backend.items.images(paged.ranked, url_root(request), skip, paged.duplicates),
        took_ms=_ms(start),
        passed=paged.passed,
        message=paged.message,
    )
