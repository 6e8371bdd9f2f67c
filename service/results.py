"""A search's results as the items of its JSON body, and the cache of image items.

An image item (ImageResult's fields) is all record (id, captions, size, capture fields,
list columns, URLs) but for its rank and score, so the records of the rows a service
keeps showing are made once: making them from the columns costs ~15 µs a row, most of a
text search's CPU on the event loop (benchmarks/README.md, issue 23's profile). The cache
belongs to one loaded index (a reload starts an empty one) and holds at most
IMAGE_ITEMS_KEPT rows, least recently shown out first.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np

from index import LoadedIndex
from index.search import Ranked, caption_hits, image_hits

IMAGE_ITEMS_KEPT = 4096  # rows; an item is about 2 KB of Python objects
# Ids that are their own URL path (quote would return them unchanged).
_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*")


def url_path(image_id: str) -> str:
    """`image_id` as a URL path segment (its "/" kept)."""
    return image_id if _PLAIN.fullmatch(image_id) else quote(image_id, safe="/")


class ResultItems:
    """The JSON items of one loaded index's results, image items cached by (root, row)."""

    def __init__(self, index: LoadedIndex, kept: int = IMAGE_ITEMS_KEPT) -> None:
        self.index = index
        self.kept = kept
        self._images: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def images(
        self,
        ranked: Ranked,
        root: str,
        offset: int = 0,
        duplicates: Mapping[int, list[int]] | None = None,
    ) -> list[dict[str, Any]]:
        """Ranked image rows as ImageResult items (ranks from offset + 1); `duplicates` maps
        a row to the other rows of its group, which the item then carries."""
        rows = ranked.rows.tolist()
        records = self._image_records(rows, root)
        out = []
        for rank, (row, score, record) in enumerate(
            zip(rows, ranked.scores.tolist(), records, strict=True), offset + 1
        ):
            item = {"rank": rank, "score": score, **record, "duplicates": None}
            if duplicates is not None:
                others = duplicates.get(row, [])
                ids = self.index.image_ids.take(np.asarray(others[:100], np.int64))
                item["duplicates"] = {"count": len(others), "image_ids": ids}
            out.append(item)
        return out

    def captions(self, ranked: Ranked, root: str, offset: int = 0) -> list[dict[str, Any]]:
        """Ranked caption rows as CaptionResult items (ranks from offset + 1)."""
        out = []
        for hit in caption_hits(self.index, ranked, first_rank=offset + 1):
            item = dict(vars(hit))
            image_id = hit.image_id
            item["image_url"] = None if image_id is None else f"{root}/images/{url_path(image_id)}"
            out.append(item)
        return out

    def _image_records(self, rows: list[int], root: str) -> list[dict[str, Any]]:
        """The items of `rows` without rank, score and duplicates: cached, or made together."""
        with self._lock:
            found = [self._images.get((root, row)) for row in rows]
            for row, record in zip(rows, found, strict=True):
                if record is not None:
                    self._images.move_to_end((root, row))
        missing = [row for row, record in zip(rows, found, strict=True) if record is None]
        if not missing:
            return found  # type: ignore[return-value]
        scores = np.zeros(len(missing), np.float32)
        by_row = {}
        for row, hit in zip(
            missing,
            image_hits(self.index, Ranked(scores, np.asarray(missing, np.int64))),
            strict=True,
        ):
            record = dict(vars(hit))
            del record["rank"], record["score"]
            path = url_path(hit.image_id)
            record["image_url"] = f"{root}/images/{path}"
            record["thumb_url"] = f"{root}/thumbs/{path}"
            by_row[row] = record
        with self._lock:
            for row, record in by_row.items():
                self._images[(root, row)] = record
            while len(self._images) > self.kept:
                self._images.popitem(last=False)
        return [
            record if record is not None else by_row[row]
            for row, record in zip(rows, found, strict=True)
        ]
