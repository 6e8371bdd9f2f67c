"""Exception handlers: every error answer is JSON with a `detail`, safe to encode.

Validation errors echo the client's input back; a JSON string may hold a lone surrogate
("\\ud800") that cannot be written as UTF-8, so answers are scrubbed before rendering
rather than failing with a 500 while reporting a 422.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from vsepp.model_dir import EncoderFailure

logger = logging.getLogger(__name__)

MAX_ECHO_CHARS = 500  # echoed client input beyond this is cut


def scrub(value: Any) -> Any:
    """`value` with strings made encodable (bad code points -> U+FFFD) and long ones cut."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            text = value
        except UnicodeEncodeError:
            text = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


async def validation_error(request: Request, exc: Exception) -> Response:
    """422 with FastAPI's list of errors (field, message, input), scrubbed."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": scrub(jsonable_encoder(exc.errors()))}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    """Any HTTPException as {"detail": ...} (no body where HTTP allows none)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    if exc.status_code < 200 or exc.status_code in (204, 205, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": scrub(exc.detail)}, status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path: Starlette's 405 names only those of the
    first route that matched the path (POST /search/text hides GET /search/text)."""
    routes: Sequence[BaseRoute] = getattr(request.app.state, "method_routes", ())
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches({**request.scope, "method": ""})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def encoder_failure(request: Request, exc: Exception) -> Response:
    """The model failed (graph, kernel, memory), not the request: 500 naming that much."""
    logger.exception("the encoder failed on %s %s", request.method, request.url.path)
    name = type(exc.__cause__).__name__ if exc.__cause__ is not None else type(exc).__name__
    detail = f"the encoder failed ({name}), not because of the request; see the server log"
    return JSONResponse({"detail": detail}, status_code=500)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered 500 without internals."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Register the handlers on `app`; `routes` are every route, for 405's Allow header
    (FastAPI nests included routers, so app.routes does not list them)."""
    app.state.method_routes = [
        *(r for r in app.router.routes if getattr(r, "methods", None)),
        *routes,
    ]
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(EncoderFailure, encoder_failure)
    app.add_exception_handler(Exception, unexpected_error)
