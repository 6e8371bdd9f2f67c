"""The OpenAPI document with the limits the server enforces, taken from the same Settings.

The request models are static, but `k`, the query length and the number of texts to embed
are bounded by VSEPP_* settings checked at run time. A client generated from the schema
must reject what the server rejects, so the document is completed from the app's Settings
once, when it is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from fastapi import FastAPI

from index.filters import json_schema as filter_schema
from service.config import Settings
from service.imaging import SUPPORTED_CONTENT_TYPES
from service.schemas import DEFAULT_K, FILTER_REF


@cache
def not_blank_pattern() -> str:
    """A regex for "holds a character that is not whitespace", whitespace being exactly
    what `str.strip()` removes (the server's check). `\\S` would not do: its meaning differs
    between regex dialects (Python counts U+001C..U+001F as space, ECMA-262 does not)."""
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    return "[^" + "".join(f"\\u{ord(c):04x}" for c in spaces) + "]"


ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
MIN_SCORE_TEXT = "Drop results whose cosine score is lower (a relevance cut-off)."
FILTER_TEXT = "A condition on the images' fields as JSON text (the Filter schema)."
BODY_ERRORS = {
    "400": "The body could not be read or parsed (malformed JSON or multipart).",
    "413": "The request body is larger than the limit (VSEPP_MAX_JSON_BYTES or "
    "VSEPP_MAX_UPLOAD_BYTES).",
    "415": "The Content-Type cannot carry the body this endpoint takes.",
}


def _k_schema(settings: Settings, what: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.max_k,
        "default": min(DEFAULT_K, settings.max_k),
        "title": "K",
        "description": f"How many {what}; 1 to VSEPP_MAX_K ({settings.max_k}).",
    }


def _offset_schema(settings: Settings) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 0,
        "maximum": settings.max_k,
        "default": 0,
        "title": "Offset",
        "description": f"Results to skip (paging); 0 to VSEPP_MAX_K ({settings.max_k}).",
    }


def _text_schema(settings: Settings, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.max_query_chars,
        "pattern": not_blank_pattern(),
        "description": f"{description} Not blank; at most VSEPP_MAX_QUERY_CHARS "
        f"({settings.max_query_chars}) characters.",
    }


def _limit_properties(props: dict[str, Any], settings: Settings, what: str, media: str) -> None:
    """Bound the properties of a request body (JSON object or multipart form) in place."""
    if media == "multipart/form-data":
        # A form field is text: it is given or left out, it cannot be null.
        if "min_score" in props:
            props["min_score"] = {"type": "number", "minimum": -1.0, "maximum": 1.0,
                                  "title": "Min Score", "description": MIN_SCORE_TEXT}  # fmt: skip
        if "filter" in props:
            props["filter"] = {"type": "string", "title": "Filter", "description": FILTER_TEXT}
    if "k" in props:
        props["k"] = _k_schema(settings, what)
    if "offset" in props:
        props["offset"] = _offset_schema(settings)
    if "query" in props:
        props["query"] = {"title": "Query", **_text_schema(settings, "The sentence.")}
    if "texts" in props:
        props["texts"] = {
            "type": "array",
            "title": "Texts",
            "minItems": 1,
            "maxItems": settings.max_embed_texts,
            "items": _text_schema(settings, "One text."),
            "description": f"At most VSEPP_MAX_EMBED_TEXTS ({settings.max_embed_texts}).",
        }
    if "file" in props:
        # An empty file is refused (400); its bytes must be one of the image types.
        props["file"] = {
            **props["file"],
            "type": "string",
            "format": "binary",
            "minLength": 1,
        }


def _what(path: str) -> str:
    return "captions" if "caption" in path or path in ("/search/image",) else "images"


def apply_limits(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`doc` (FastAPI's OpenAPI dict) completed in place with the enforced limits and the
    error answers every operation can give."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Filter"] = filter_schema(FILTER_REF["$ref"])
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            what = _what(path)
            for param in op.get("parameters", []):
                if param["name"] == "k":
                    param["schema"] = _k_schema(settings, what)
                elif param["name"] == "offset":
                    param["schema"] = _offset_schema(settings)
                elif param["name"] == "q":
                    param["schema"] = {"title": "Q", **_text_schema(settings, "The sentence.")}
                elif param["name"] == "filter":
                    # JSON text in the URL: the parameter's content is the Filter schema.
                    param.pop("schema", None)
                    param["content"] = {"application/json": {"schema": FILTER_REF}}
            body = op.get("requestBody")
            if body is None:
                continue
            for media, content in body.get("content", {}).items():
                ref = content.get("schema", {}).get("$ref", "")
                component = schemas.get(ref.rsplit("/", 1)[-1])
                if component is not None:
                    _limit_properties(component.get("properties", {}), settings, what, media)
                if media == "multipart/form-data":
                    content["encoding"] = {
                        "file": {"contentType": ", ".join(sorted(SUPPORTED_CONTENT_TYPES))}
                    }
            responses = op.setdefault("responses", {})
            for code, description in BODY_ERRORS.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                )
            _ = method
    return doc


def install(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` return the document with `settings`' limits in it."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = apply_limits(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
