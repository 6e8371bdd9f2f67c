"""Pure ASGI middleware: request-body limits, and per-request metrics plus one log line."""

from __future__ import annotations

import json
import logging
import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

access_logger = logging.getLogger("service.access")

# Room for the multipart boundaries, part headers and the small `k` field of an upload.
MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit; FastAPI re-raises HTTPExceptions
    met while reading a body, so this reaches the exception handlers as a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimitMiddleware:
    """Refuse request bodies over a limit (413): at once when Content-Length says so, else
    while the body streams in, before the rest of it is read.

    Multipart bodies (uploads) get VSEPP_MAX_UPLOAD_BYTES plus room for the form's framing;
    everything else VSEPP_MAX_JSON_BYTES.
    """

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_json_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-type", "").lower().startswith("multipart/"):
            limit = self.max_upload_bytes + MULTIPART_OVERHEAD
            detail = (
                f"upload is larger than the limit of {self.max_upload_bytes} bytes "
                "(VSEPP_MAX_UPLOAD_BYTES)"
            )
        else:
            limit = self.max_json_bytes
            detail = (
                f"request body is larger than the limit of {limit} bytes (VSEPP_MAX_JSON_BYTES)"
            )

        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _error(scope, receive, send, 400, "Content-Length is not a number")
                return
            if length > limit:
                await _error(scope, receive, send, 413, detail)
                return

        received = 0
        exceeded = False
        response_started = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(detail)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                response_started = True
                if exceeded and message["status"] != 413:
                    # Some layer turned our error into another answer: say what happened.
                    replaced = True
                    await _error(scope, receive, send, 413, detail)
                    return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            # Only reached when something between here and FastAPI let it through.
            if response_started:
                raise
            await _error(scope, receive, send, 413, detail)
        if exceeded:
            access_logger.debug("refused a body over %d bytes", limit)


async def _error(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)


class ObservabilityMiddleware:
    """Count and time every request by route template; log one JSON line per request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            endpoint = _endpoint(scope)
            method = str(scope.get("method", ""))
            self.metrics.observe_request(method, endpoint, status, seconds)
            access_logger.info(
                json.dumps(
                    {
                        "event": "request",
                        "method": method,
                        "endpoint": endpoint,
                        "path": str(scope.get("path", ""))[:200],
                        "status": status,
                        "latency_ms": round(seconds * 1000.0, 3),
                    },
                    ensure_ascii=False,
                )
            )


def _endpoint(scope: Scope) -> str:
    """The route template that answered ('/images/{image_id:path}'), never the raw path,
    so label values stay few whatever clients send."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"
