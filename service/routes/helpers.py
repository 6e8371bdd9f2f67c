"""Checks and result builders shared by the search and embed routes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from urllib.parse import quote

from fastapi import Request

from index.search import caption_hits, image_hits
from service.config import Settings
from service.routing import invalid
from service.schemas import DEFAULT_K, CaptionResult, ImageResult
from service.search import Ranked
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


def image_url(request: Request, image_id: str) -> str:
    """The path under which GET /images/{image_id} serves an image."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return f"{root}/images/{quote(image_id, safe='/')}"


def image_results(request: Request, backend: Backend, ranked: Ranked) -> list[ImageResult]:
    """Ranked image rows as response items."""
    hits = image_hits(backend.index, ranked.scores, ranked.rows)
    return [ImageResult(**asdict(h), image_url=image_url(request, h.image_id)) for h in hits]


def caption_results(request: Request, backend: Backend, ranked: Ranked) -> list[CaptionResult]:
    """Ranked caption rows as response items."""
    hits = caption_hits(backend.index, ranked.scores, ranked.rows)
    return [CaptionResult(**asdict(h), image_url=image_url(request, h.image_id)) for h in hits]
