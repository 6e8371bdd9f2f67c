"""The items of a search's JSON body (service/results.py): the cache of image items gives
what building them afresh gives, stays within its bound, and belongs to one index.

On the session's demo index (tests/conftest.py's `backend` fixture).
"""

from __future__ import annotations

import numpy as np

from index.search import Ranked
from service.results import ResultItems, url_path
from tests.service_helpers import ServiceBackend


def _ranked(rows: list[int]) -> Ranked:
    return Ranked(np.linspace(0.9, 0.1, len(rows)).astype(np.float32), np.asarray(rows, np.int64))


def test_cached_items_are_the_items_built_afresh(backend: ServiceBackend) -> None:
    cached = ResultItems(backend.index, kept=8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = rng.choice(len(backend.index.image_ids), 6, replace=False).tolist()
        ranked = _ranked(rows)
        fresh = ResultItems(backend.index, kept=0).images(ranked, "/root", offset=3)
        assert cached.images(ranked, "/root", offset=3) == fresh
        assert [item["rank"] for item in fresh] == [4, 5, 6, 7, 8, 9]
        assert [item["score"] for item in fresh] == ranked.scores.tolist()
        assert len(cached._images) <= 8
    # The proxy's root is part of an item (its URLs), so part of its key.
    row = [int(rng.integers(len(backend.index.image_ids)))]
    other = cached.images(_ranked(row), "")[0]
    assert other["image_url"] == f"/images/{url_path(other['image_id'])}"


def test_an_item_is_a_copy_the_caller_may_change(backend: ServiceBackend) -> None:
    items = ResultItems(backend.index)
    first = items.images(_ranked([0, 1]), "")
    first[0]["rank"] = 99
    first[0]["duplicates"] = {"count": 1, "image_ids": ["x"]}
    again = items.images(_ranked([0, 1]), "")
    assert again[0]["rank"] == 1 and again[0]["duplicates"] is None


def test_url_paths_quote_what_a_path_cannot_hold() -> None:
    assert url_path("holiday/2023/img_01.jpg") == "holiday/2023/img_01.jpg"
    assert url_path("a b/ü?#.jpg") == "a%20b/%C3%BC%3F%23.jpg"
    assert url_path("") == ""
