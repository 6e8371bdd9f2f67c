"""GET /health: 503 until the model and the index are loaded, then their facts."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import StateDep
from service.route_class import ServiceRoute
from service.schemas import HealthResponse, NotReadyResponse

router = APIRouter(tags=["health"], route_class=ServiceRoute)


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": NotReadyResponse, "description": "Loading, or loading failed."}},
)
async def health(state: StateDep) -> HealthResponse | JSONResponse:
    """Ready or not, and what is loaded."""
    if state.backend is None:
        body = (
            NotReadyResponse(status="error", detail=f"loading failed: {state.error}")
            if state.error is not None
            else NotReadyResponse(status="loading", detail="loading the model and the index")
        )
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    return HealthResponse(status="ok", **state.facts())
