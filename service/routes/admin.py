"""POST /admin/reload: swap in a rebuilt index without a restart (on only with a token)."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException

from service.deps import SettingsDep, StateDep
from service.route_class import ServiceRoute
from service.schemas import ErrorResponse, ReloadResponse
from service.state import ReloadRefused
from service.supervisor import tell_siblings

router = APIRouter(prefix="/admin", tags=["admin"], route_class=ServiceRoute)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse, "description": "No bearer token."},
        403: {"model": ErrorResponse, "description": "A wrong bearer token."},
        404: {"model": ErrorResponse, "description": "Admin is off (no VSEPP_ADMIN_TOKEN)."},
        409: {"model": ErrorResponse, "description": "The new index was refused; the old serves."},
    },
)
async def reload_index(
    state: StateDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer VSEPP_ADMIN_TOKEN")] = None,
) -> ReloadResponse:
    """Load the index directory again; the old index serves until the new one is checked.

    With several workers, the others reload right after, each on its own.
    """
    start = time.perf_counter()
    if settings.admin_token is None:
        raise HTTPException(404, "Not Found")  # as if the route did not exist
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401, "send the admin token: Authorization: Bearer ...",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(), expected):
        raise HTTPException(403, "wrong admin token")
    try:
        backend = await state.reload()
    except ReloadRefused as exc:
        raise HTTPException(409, f"reload refused, the old index still serves: {exc}") from exc
    # With several workers this one answers; the others follow on the parent's SIGHUP.
    tell_siblings()
    index = backend.index
    return ReloadResponse(
        status="reloaded",
        build_id=index.manifest.get("build_id"),
        images=len(index.image_ids),
        captions=len(index.captions),
        took_ms=round((time.perf_counter() - start) * 1000.0, 3),
    )
