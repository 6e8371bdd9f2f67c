"""GET /: the one-page search UI, and GET /metrics."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from service.deps import MetricsDep
from service.route_class import ServiceRoute

router = APIRouter(route_class=ServiceRoute)

PAGE_PATH = Path(__file__).resolve().parent.parent / "static" / "index.html"
# Everything the page needs is inline or from this server; the browser enforces that.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@cache
def page_html() -> str:
    """The page's HTML, read once."""
    return PAGE_PATH.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, tags=["page"])
async def page() -> HTMLResponse:
    """The search page: a sentence finds images, an image finds captions."""
    return HTMLResponse(
        page_html(),
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    tags=["metrics"],
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Request counts and latency per endpoint, and per search stage, for Prometheus."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
