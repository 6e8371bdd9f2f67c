"""Searching an index with a model, and the hits as records.

`image_hits` / `caption_hits` are the one place a row of an index becomes a result:
`index.query` prints them and the service returns them (adding URLs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from index.store import LoadedIndex
from vsepp.model_dir import EncodersLike


@dataclass(frozen=True)
class ImageHit:
    """An image found for a query."""

    rank: int  # 1 = best
    image_id: str
    score: float  # cosine similarity
    captions: list[str]  # the image's own captions in the index
    width: int | None = None  # upright size, where the index knows it
    height: int | None = None
    meta: dict[str, Any] | None = None  # the list file's other columns


@dataclass(frozen=True)
class CaptionHit:
    """A caption found for a query."""

    rank: int  # 1 = best
    caption: str
    caption_id: str
    caption_row: int  # row of the caption index
    image_id: str | None  # the image the caption belongs to; None for a corpus caption
    score: float  # cosine similarity


def _ranked(scores: np.ndarray, rows: np.ndarray, first_rank: int) -> list[tuple[int, float, int]]:
    """(rank, score, row) best first; FAISS pads missing results with row -1."""
    kept = [(float(s), int(r)) for s, r in zip(scores, rows, strict=True) if r >= 0]
    return [(rank, s, r) for rank, (s, r) in enumerate(kept, start=first_rank)]


def image_hits(
    index: LoadedIndex, scores: np.ndarray, rows: np.ndarray, *, first_rank: int = 1
) -> list[ImageHit]:
    """Hits of one query's image rows and scores (ranks from `first_rank`, for paging)."""
    out = []
    for rank, score, row in _ranked(scores, rows, first_rank):
        record = index.image_records[row]
        out.append(
            ImageHit(
                rank,
                record.image_id,
                score,
                index.captions_of(row),
                record.width,
                record.height,
                record.meta,
            )
        )
    return out


def caption_hits(
    index: LoadedIndex, scores: np.ndarray, rows: np.ndarray, *, first_rank: int = 1
) -> list[CaptionHit]:
    """Hits of one query's caption rows and scores (ranks from `first_rank`, for paging)."""
    out = []
    for rank, score, row in _ranked(scores, rows, first_rank):
        image_row = int(index.caption_image_rows[row])
        image_id = index.image_ids[image_row] if image_row >= 0 else None
        out.append(
            CaptionHit(rank, index.captions[row], index.caption_ids[row], row, image_id, score)
        )
    return out


def search_text(encoders: EncodersLike, loaded: LoadedIndex, text: str, k: int) -> list[ImageHit]:
    """Images for a caption query, best first."""
    vectors, _ = encoders.encode_texts([text])
    scores, rows = loaded.search_images(np.asarray(vectors, np.float32), k)
    return image_hits(loaded, scores[0], rows[0])


def search_image(
    encoders: EncodersLike, loaded: LoadedIndex, blob: bytes, k: int
) -> list[CaptionHit]:
    """Captions for an image file query, best first."""
    vectors = encoders.encode_image_bytes([blob])
    scores, rows = loaded.search_captions(np.asarray(vectors, np.float32), k)
    return caption_hits(loaded, scores[0], rows[0])
