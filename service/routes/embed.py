"""Embedding endpoints: vectors in the joint space, for clients that search elsewhere."""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, File, HTTPException, Response, UploadFile

from service.deps import BackendDep, SettingsDep, StateDep
from service.imaging import ImageRejected
from service.responses import model_json
from service.route_class import ServiceRoute, invalid
from service.routes.helpers import check_text
from service.schemas import EmbedResponse, EmbedTextRequest, ErrorResponse
from service.uploads import read_upload

router = APIRouter(prefix="/embed", tags=["embed"], route_class=ServiceRoute)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


@router.post(
    "/text",
    response_model=EmbedResponse,
    responses={415: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def embed_text(
    body: EmbedTextRequest, backend: BackendDep, settings: SettingsDep
) -> Response:
    """One vector per text, with the number of its words the model knows."""
    start = time.perf_counter()
    if len(body.texts) > settings.max_embed_texts:
        raise invalid(
            ("body", "texts"),
            f"{len(body.texts)} texts; the limit is {settings.max_embed_texts} "
            "(VSEPP_MAX_EMBED_TEXTS)",
        )
    texts = [
        check_text(text, settings, ("body", "texts", i), f"texts[{i}]")
        for i, text in enumerate(body.texts)
    ]
    vectors, known = await anyio.to_thread.run_sync(backend.engine.embed_texts, texts)
    return model_json(
        EmbedResponse,
        vectors=vectors.tolist(),
        dim=int(vectors.shape[1]),
        model_hash=backend.encoders.model_hash,
        known_words=[int(n) for n in known],
        took_ms=_ms(start),
    )


@router.post(
    "/image",
    response_model=EmbedResponse,
    responses={code: {"model": ErrorResponse} for code in (400, 413, 415, 503)},
)
async def embed_image(
    backend: BackendDep,
    settings: SettingsDep,
    state: StateDep,
    file: Annotated[UploadFile, File(description="The image (JPEG, PNG, GIF, TIFF, WebP, BMP).")],
) -> Response:
    """The vector of an uploaded image."""
    start = time.perf_counter()
    data = await read_upload(file, settings.max_upload_bytes)
    engine = backend.engine

    def work() -> np.ndarray:
        return engine.embed_image(engine.decode(data, settings.max_image_pixels).data)

    try:
        vector = await anyio.to_thread.run_sync(work, limiter=state.image_limiter())
    except ImageRejected as exc:
        raise HTTPException(exc.status_code, exc.detail) from exc
    return model_json(
        EmbedResponse,
        vectors=[vector.tolist()],
        dim=int(vector.shape[0]),
        model_hash=backend.encoders.model_hash,
        took_ms=_ms(start),
    )
