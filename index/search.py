"""Searching a loaded index, and the hits as records: the one home of both, for
`index.query` and the service alike.

`top_images` / `top_captions` search with query vectors and are the one place FAISS's
padding (row -1, where an approximate index found fewer than k) is dropped; `image_hits` /
`caption_hits` are the one place a row of an index becomes a result (the service adds URLs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.columnar import python_values
from index.filters import Condition, Field
from index.records import CAPTURE_FIELDS, META
from index.records import filter_fields as record_fields
from index.store import LoadedIndex
from vsepp.model_dir import EncodersLike


# The hits are not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, 5x slower, and a service makes a page of hits per request.
@dataclass
class ImageHit:
    """An image found for a query."""

    rank: int  # 1 = best
    image_id: str
    score: float  # cosine similarity
    captions: list[str]  # the image's own captions in the index
    width: int | None = None  # upright size, where the index knows it
    height: int | None = None
    meta: dict[str, Any] | None = None  # the list file's other columns (timestamps as ISO text)
    folder: str = ""  # the id's directory, "" at the top
    taken_at: str | None = None  # capture time, ISO 8601 in UTC (`index.capture`)
    taken_at_source: str | None = None  # "exif" or "mtime"
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None  # signed decimal degrees
    lon: float | None = None


@dataclass
class CaptionHit:
    """A caption found for a query."""

    rank: int  # 1 = best
    caption: str
    caption_id: str
    caption_row: int  # row of the caption index
    image_id: str | None  # the image the caption belongs to; None for a corpus caption
    score: float  # cosine similarity


@dataclass(frozen=True)
class Ranked:
    """Rows of an index with their cosine scores, best first, padding (-1) removed."""

    scores: np.ndarray  # float32 [m]
    rows: np.ndarray  # int64 [m]

    def after(self, offset: int) -> Ranked:
        """The results past the first `offset` (a page further down)."""
        return Ranked(self.scores[offset:], self.rows[offset:]) if offset else self


NOTHING = Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64))


def ranked(scores: np.ndarray, rows: np.ndarray) -> Ranked:
    """One query's FAISS answer without its padding."""
    scores, rows = np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)
    keep = rows >= 0
    return Ranked(scores[keep], rows[keep])


def top_images(
    index: LoadedIndex, queries: np.ndarray, k: int, where: np.ndarray | None = None
) -> list[Ranked]:
    """The k images nearest to each query vector (cosine), best first; with `where` (bool
    per image, `image_mask`) among the images it selects only."""
    return _top(index, "images", queries, k, where)


def top_captions(
    index: LoadedIndex, queries: np.ndarray, k: int, where: np.ndarray | None = None
) -> list[Ranked]:
    """The k captions nearest to each query vector (cosine), best first; with `where` (bool
    per caption, `caption_mask`) among the captions it selects only."""
    return _top(index, "captions", queries, k, where)


def _top(
    index: LoadedIndex, side: str, queries: np.ndarray, k: int, where: np.ndarray | None
) -> list[Ranked]:
    q = np.asarray(queries, dtype=np.float32)
    q = q.reshape(1, -1) if q.ndim == 1 else q
    count = len(index.image_ids) if side == "images" else len(index.captions)
    if where is not None:
        count = int(np.count_nonzero(where))
    if min(k, count) < 1:
        return [NOTHING] * len(q)
    search = index.search_images if side == "images" else index.search_captions
    scores, rows = search(q, min(k, count), where)
    return [ranked(s, r) for s, r in zip(scores, rows, strict=True)]


def image_mask(index: LoadedIndex, condition: Condition) -> np.ndarray:
    """bool per image: which images satisfy `condition` (`index.filters`)."""
    return condition.mask(index.image_table)


def caption_mask(index: LoadedIndex, images: np.ndarray) -> np.ndarray:
    """bool per caption: the captions whose image is selected by `images` (a caption tied to
    no image has no field values, so no filter selects it)."""
    rows = index.caption_image_rows
    return (rows >= 0) & images[np.maximum(rows, 0)]


def collapsed(index: LoadedIndex, found: Ranked) -> tuple[Ranked, dict[int, list[int]]]:
    """`found` (image rows, best first) with each near-duplicate group kept once, by its
    best-scoring member, and for each kept row the other rows of its group."""
    groups = index.duplicate_groups
    if groups is None:
        return found, {int(r): [] for r in found.rows}
    labels = np.asarray(groups)[found.rows]
    keys = np.where(labels >= 0, labels, -1 - found.rows)  # an image alone is its own key
    _, first = np.unique(keys, return_index=True)
    keep = np.sort(first)
    rows = found.rows[keep]
    others = {}
    for row, label in zip(rows.tolist(), labels[keep].tolist(), strict=True):
        others[row] = [] if label < 0 else [r for r in index.group_of(row) if r != row]
    return Ranked(found.scores[keep], rows), others


def by_capture_time(index: LoadedIndex, found: Ranked, *, newest_first: bool) -> Ranked:
    """`found` (image rows) ordered by capture time, oldest or newest first; images without
    one come last, and equal times keep their score order."""
    taken = index.image_table.column("taken_at").take(pa.array(found.rows))
    valid = taken.is_valid().to_numpy(zero_copy_only=False)
    times = pc.fill_null(taken.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    key = -times if newest_first else times
    order = np.lexsort((np.arange(len(key)), key, ~valid))
    return Ranked(found.scores[order], found.rows[order])


def filter_fields(index: LoadedIndex) -> dict[str, Field]:
    """The fields a filter may name on this index."""
    return record_fields(index.image_table)


# The image table's columns a hit carries, besides its list's own (META) columns.
HIT_COLUMNS = ("image_id", "width", "height", "folder", *CAPTURE_FIELDS)


def image_hits(index: LoadedIndex, found: Ranked, *, first_rank: int = 1) -> list[ImageHit]:
    """The records of ranked image rows (ranks from `first_rank`, for paging).

    The page's rows are taken from the columns together (one Arrow take, then a list per
    column): a service builds a page per request, and a Python record per row cost it most
    of a request's CPU.
    """
    if not len(found.rows):
        return []
    table = index.image_table
    meta = [name for name in table.column_names if name.startswith(META)]
    page = table.select([*HIT_COLUMNS, *meta]).take(pa.array(found.rows, pa.int64()))
    columns = {name: python_values(page.column(name)) for name in page.column_names}
    n = len(found.rows)
    metas: list[dict[str, Any] | None] = [None] * n
    if meta:
        metas = [{name[len(META) :]: columns[name][i] for name in meta} for i in range(n)]
    return [
        ImageHit(rank, image_id, score, caps, width, height, meta_of, folder, *capture)
        for rank, image_id, score, caps, width, height, meta_of, folder, *capture in zip(
            range(first_rank, first_rank + n),
            columns["image_id"],
            found.scores.tolist(),
            captions_of_rows(index, found.rows),
            columns["width"],
            columns["height"],
            metas,
            columns["folder"],
            *(columns[name] for name in CAPTURE_FIELDS),
            strict=True,
        )
    ]


def captions_of_rows(index: LoadedIndex, image_rows: np.ndarray) -> list[list[str]]:
    """The captions of each image row, in caption order (one take for all of them)."""
    parts = [index.caption_rows_of(int(row)) for row in image_rows]
    texts = index.captions.take(np.concatenate(parts)) if parts else []
    out, at = [], 0
    for part in parts:
        out.append(texts[at : at + len(part)])
        at += len(part)
    return out


def caption_hits(index: LoadedIndex, found: Ranked, *, first_rank: int = 1) -> list[CaptionHit]:
    """The records of ranked caption rows (ranks from `first_rank`, for paging)."""
    if not len(found.rows):
        return []
    rows = found.rows
    image_rows = index.caption_image_rows[rows]
    known = image_rows >= 0
    image_ids: list[str | None] = [None] * len(rows)
    for i, image_id in zip(
        np.flatnonzero(known), index.image_ids.take(image_rows[known]), strict=True
    ):
        image_ids[int(i)] = image_id
    return [
        CaptionHit(rank, text, caption_id, row, image_id, score)
        for rank, text, caption_id, row, image_id, score in zip(
            range(first_rank, first_rank + len(rows)),
            index.captions.take(rows),
            index.caption_ids.take(rows),
            rows.tolist(),
            image_ids,
            found.scores.tolist(),
            strict=True,
        )
    ]


def search_text(encoders: EncodersLike, loaded: LoadedIndex, text: str, k: int) -> list[ImageHit]:
    """Images for a caption query, best first."""
    vectors, _ = encoders.encode_texts([text])
    return image_hits(loaded, top_images(loaded, np.asarray(vectors, np.float32), k)[0])


def search_image(
    encoders: EncodersLike, loaded: LoadedIndex, blob: bytes, k: int
) -> list[CaptionHit]:
    """Captions for an image file query, best first."""
    vectors = encoders.encode_image_bytes([blob])
    return caption_hits(loaded, top_captions(loaded, np.asarray(vectors, np.float32), k)[0])
