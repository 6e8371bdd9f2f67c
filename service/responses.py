"""The JSON response class of the search and embed routes.

Routes build their response model once and return it through `FastJSON`: FastAPI then
neither validates the model a second time against `response_model` (which stays in the
decorator for the OpenAPI document) nor encodes it with the standard library's json.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


class FastJSON(JSONResponse):
    """A JSON response rendered with orjson (several times faster than json for the
    lists of floats of /embed)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def fast_json(model: BaseModel, status_code: int = 200) -> FastJSON:
    """`model` (already validated when it was built) as a FastJSON response."""
    return FastJSON(model.model_dump(), status_code=status_code)
