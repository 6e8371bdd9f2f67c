"""The JSON bodies of the search and embed routes, built once.

A route answers with `model_json(Model, **fields)`: a plain dict of the response model's
fields (defaults filled in) rendered by orjson, with no model instance made, validated or
dumped on the way; `response_model` stays in the route's decorator for the OpenAPI document,
and the tests check that every body is what the model would make of it.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


class FastJSON(JSONResponse):
    """A JSON response rendered with orjson (several times faster than json for the
    lists of floats of /embed)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[dict[str, Any], frozenset[str]]:
    """(the defaults of `model`'s optional fields, the names of its required ones)."""
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }
    required = frozenset(model.model_fields) - defaults.keys()
    return defaults, required


def model_body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """`fields` as `model`'s JSON object: every field of it, the left-out ones at their
    defaults. A name the model lacks, or a required field left out, is a bug: TypeError."""
    defaults, required = _fields(model)
    unknown = fields.keys() - defaults.keys() - required
    missing = required - fields.keys()
    if unknown or missing:
        raise TypeError(
            f"{model.__name__}: unknown fields {sorted(unknown)}, missing {sorted(missing)}"
        )
    return {**defaults, **fields}


def model_json(model: type[BaseModel], status_code: int = 200, **fields: Any) -> FastJSON:
    """`fields` as a `model` response (`model_body`), rendered by orjson."""
    return FastJSON(model_body(model, **fields), status_code=status_code)
