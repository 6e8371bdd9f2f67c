"""Checks and result builders shared by the search and embed routes."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import HTTPException, Request

from service.config import Settings
from service.route_class import invalid
from service.schemas import DEFAULT_K
from service.state import Backend


def check_text(text: str, settings: Settings, loc: Sequence[str | int], what: str) -> str:
    """`text` if it is a usable query; else a 422 naming the problem."""
    if not text.strip():
        raise invalid(loc, f"{what} is empty or only whitespace", text)
    if len(text) > settings.max_query_chars:
        raise invalid(
            loc,
            f"{what} is {len(text)} characters long; the limit is "
            f"{settings.max_query_chars} (VSEPP_MAX_QUERY_CHARS)",
            text,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates survive JSON decoding but not the trip into a TF string.
        raise invalid(loc, f"{what} is not valid Unicode text ({exc.reason})") from exc
    return text


def resolve_k(k: int | None, settings: Settings, loc: Sequence[str | int]) -> int:
    """The k to use: the client's within [1, VSEPP_MAX_K], or the default."""
    if k is None:
        return min(DEFAULT_K, settings.max_k)
    if k < 1 or k > settings.max_k:
        raise invalid(loc, f"k must be between 1 and {settings.max_k} (VSEPP_MAX_K), got {k}", k)
    return k


def resolve_offset(offset: int, settings: Settings, loc: Sequence[str | int]) -> int:
    """Results to skip: within [0, VSEPP_MAX_K], a bound like k's."""
    if offset < 0 or offset > settings.max_k:
        raise invalid(
            loc,
            f"offset must be between 0 and {settings.max_k} (VSEPP_MAX_K), got {offset}",
            offset,
        )
    return offset


def url_root(request: Request) -> str:
    """The prefix of the paths the service hands out (a proxy's root_path)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def require_captions(backend: Backend) -> None:
    """409 for an image-to-caption search of an index that holds no captions."""
    if not backend.index.captions:
        raise HTTPException(
            409,
            "the index has no captions, so an image cannot find any: it still answers "
            "text-to-image and image-to-image searches. Add captions with "
            "`index.add --captions FILE` (one caption a line, JSONL or a token file), or "
            "build it from a list with a 'captions' column or a dataset split",
        )
