"""Pure ASGI middleware: request-body limits, and per-request metrics plus one log line."""

from __future__ import annotations

import json
import logging
import time

import anyio
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

access_logger = logging.getLogger("service.access")

# Room for the multipart boundaries, part headers and the small `k` field of an upload.
MULTIPART_OVERHEAD = 64 * 1024
# After a 413, how long the rest of the body may take to be read off (see BodyLimitMiddleware).
DRAIN_SECONDS = 10.0
CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit; FastAPI re-raises HTTPExceptions
    met while reading a body, so this reaches the exception handlers as a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimitMiddleware:
    """Refuse request bodies over a limit (413): at once when Content-Length says so, else
    while the body streams in, before the rest of it is kept.

    Multipart bodies (uploads) get VSEPP_MAX_UPLOAD_BYTES plus room for the form's framing;
    everything else VSEPP_MAX_JSON_BYTES.

    A client that writes its whole body before it reads (Python's http.client, many SDKs)
    would see a connection reset instead of the 413 if the server closed with the body
    still coming: the kernel answers unread data with a RST. So after the 413's bytes are
    written the rest of the body is read and thrown away, chunk by chunk, up to
    `max_drain_bytes` in all and `drain_seconds` (what nginx's lingering close does); a
    body declared larger than that is not waited for. Nothing of it is kept.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_upload_bytes: int,
        max_json_bytes: int,
        max_drain_bytes: int = 0,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes
        self.max_drain_bytes = max_drain_bytes
        self.drain_seconds = drain_seconds

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
        length: int | None = None
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _error(scope, receive, send, 400, "Content-Length is not a number")
                return
            if length > limit:
                drain = self._may_drain(headers, length)
                await _error(
                    scope, receive, send, 413, detail, drain=drain, drain_s=self.drain_seconds
                )
                return

        received = 0
        exceeded = False
        body_done = False
        response_started = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(detail)
            return message

        def drain_budget() -> int:
            # Nothing to drain once the body has ended: a further receive() would only
            # wait for the client to disconnect.
            if not exceeded or body_done:
                return 0
            return self._may_drain(headers, length) - received

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                response_started = True
                if exceeded and message["status"] != 413:
                    # Some layer turned our error into another answer: say what happened.
                    replaced = True
                    await _error(
                        scope, receive, send, 413, detail,
                        drain=drain_budget(), drain_s=self.drain_seconds,
                    )  # fmt: skip
                    return
                if exceeded:
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            elif exceeded and not message.get("more_body", False):
                # The 413 is written; read off the rest of the body before the close.
                await send({**message, "more_body": True})
                await _drain(receive, drain_budget(), self.drain_seconds)
                await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            # Only reached when something between here and FastAPI let it through.
            if response_started:
                raise
            await _error(
                scope, receive, send, 413, detail, drain=drain_budget(), drain_s=self.drain_seconds
            )
        if exceeded:
            access_logger.debug("refused a body over %d bytes", limit)

    def _may_drain(self, headers: Headers, declared: int | None) -> int:
        """How many body bytes to read off after a 413 (0: close at once)."""
        if "100-continue" in headers.get("expect", "").lower():
            return 0  # the client waits for our answer before it sends: nothing to drain
        if declared is not None and declared > self.max_drain_bytes:
            return 0  # not worth waiting for; such a client sees a reset
        return self.max_drain_bytes


async def _drain(receive: Receive, budget: int, seconds: float) -> None:
    """Read and discard request body chunks until the body ends, `budget` bytes have been
    read, `seconds` have passed or the client went away."""
    if budget <= 0:
        return
    read = 0
    with anyio.move_on_after(seconds):
        while read < budget:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    *,
    drain: int = 0,
    drain_s: float = DRAIN_SECONDS,
) -> None:
    """Answer `status` with a JSON detail and close; first read off up to `drain` bytes
    of the body that nobody will use, after the answer's bytes are written."""
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    if drain <= 0:
        await response(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": True})
    await _drain(receive, drain, drain_s)
    await send({"type": "http.response.body", "body": b""})


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
            if access_logger.isEnabledFor(logging.INFO):  # no line built to be dropped
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
