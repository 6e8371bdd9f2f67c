"""The route class of every router, and the service's validation errors.

ServiceRoute answers 415 before the body is parsed when a request's Content-Type cannot
carry the body the route expects (JSON or a multipart form), instead of letting it surface
as a confusing "field required".
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import HTTPException, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class ServiceRoute(APIRoute):
    """An APIRoute that checks the Content-Type of a body against what the route reads."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body_field = self.body_field
        if body_field is None:
            return handler
        expects_form = isinstance(body_field.field_info, params.Form)
        expected = "multipart/form-data" if expects_form else "application/json"

        async def checked(request: Request) -> Response:
            if request.method in _BODY_METHODS:
                got = media_type(request)
                ok = got == expected or (
                    not expects_form and got.startswith("application/") and got.endswith("+json")
                )
                if not ok:
                    raise HTTPException(
                        status_code=415,
                        detail=f"unsupported content type {got or '(none)'!r}: "
                        f"this endpoint takes {expected}",
                    )
            return await handler(request)

        return checked


def invalid(loc: Sequence[str | int], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 error shaped like FastAPI's own, for checks that depend on settings."""
    error: dict[str, Any] = {"type": "value_error", "loc": tuple(loc), "msg": msg}
    if isinstance(value, str) and len(value) > 200:
        value = value[:200] + "…"
    if value is not None:
        error["input"] = value
    return RequestValidationError([error])
