"""Filters fused with the vector search: the condition language, the selected search against
brute force over the selected rows, and the HTTP options (filter, min_score, sort) over a
real uvicorn."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import pyarrow as pa
import pytest

from index import build, builder
from index.budget import candidates
from index.faiss_index import build_index, search_selected
from index.filters import Field, FilterError, parse
from index.records import filter_fields
from index.store import load_index
from index.streaming import ArraySource, build_streaming
from service.config import Settings
from service.main import create_app
from tests.index_helpers import DIM, FakeEncoders, clustered_vectors, fake_image
from tests.service_helpers import uvicorn_in_thread, wait_healthy

# --------------------------------------------------------------------------- the language

UTC = dt.UTC


@pytest.fixture
def table() -> pa.Table:
    return pa.table(
        {
            "folder": pa.array(["", "holiday", "holiday/beach", "work", None]),
            "width": pa.array([640, 1024, 800, None, 300], pa.int64()),
            "lat": pa.array([48.1, None, -33.9, 51.5, 0.0]),
            "taken_at": pa.array(
                [
                    dt.datetime(2019, 5, 1, 10, tzinfo=UTC),
                    dt.datetime(2023, 7, 14, 22, 30, tzinfo=UTC),
                    dt.datetime(2023, 7, 15, 8, tzinfo=UTC),
                    None,
                    dt.datetime(2024, 1, 1, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "meta.starred": pa.array([True, False, True, None, False]),
        }
    )


def _rows(table: pa.Table, condition: dict[str, Any]) -> list[int]:
    return np.flatnonzero(parse(condition, filter_fields(table)).mask(table)).tolist()


def test_leaves_and_combinations_select_the_rows(table: pa.Table) -> None:
    assert _rows(table, {"field": "folder", "eq": "holiday"}) == [1]
    assert _rows(table, {"field": "folder", "prefix": "holiday"}) == [1, 2]
    assert _rows(table, {"field": "folder", "in": ["", "work"]}) == [0, 3]
    assert _rows(table, {"field": "width", "gte": 800}) == [1, 2]
    assert _rows(table, {"field": "lat", "lt": 0}) == [2]
    assert _rows(table, {"field": "starred", "eq": True}) == [0, 2]  # a list column, short name
    assert _rows(table, {"field": "meta.starred", "ne": True}) == [1, 4]
    # No value matches no comparison, only exists: false and a not.
    assert _rows(table, {"field": "width", "exists": False}) == [3]
    assert _rows(table, {"not": {"field": "width", "gte": 800}}) == [0, 3, 4]
    both = {"and": [{"field": "folder", "prefix": "holiday"}, {"field": "starred", "eq": True}]}
    assert _rows(table, both) == [2]
    either = {"or": [{"field": "folder", "eq": "work"}, {"field": "lat", "eq": 0.0}]}
    assert _rows(table, either) == [3, 4]


def test_dates_compare_as_instants(table: pa.Table) -> None:
    # 2023-07-15T00:00+02:00 is 2023-07-14T22:00Z: the photo of 22:30Z is after it.
    after = {"field": "taken_at", "gt": "2023-07-15T00:00:00+02:00"}
    assert _rows(table, after) == [1, 2, 4]
    assert _rows(table, {"field": "taken_at", "lt": "2023-01-01"}) == [0]  # a date: UTC midnight
    in_2023 = {
        "and": [
            {"field": "taken_at", "gte": "2023-01-01T00:00:00Z"},
            {"field": "taken_at", "lt": "2024-01-01T00:00:00Z"},
        ]
    }
    assert _rows(table, in_2023) == [1, 2]


@pytest.mark.parametrize(
    ("condition", "where", "says"),
    [
        ({"field": "colour", "eq": "red"}, "filter.field", "unknown field 'colour'; the index has"),
        ({"field": "width", "eq": "wide"}, "filter.eq", "width' is int: expected an integer"),
        ({"field": "folder", "gt": 3}, "filter.gt", "is string: expected a string"),
        ({"field": "taken_at", "gte": "last May"}, "filter.gte", "not an ISO 8601 date"),
        ({"field": "width", "near": 3}, "filter.near", "unknown operator 'near'"),
        ({"field": "width", "gt": 1, "lt": 9}, "filter", "exactly one operator"),
        ({"field": "starred", "gt": True}, "filter.gt", "gt does not apply to bool"),
        ({"field": "width", "prefix": "6"}, "filter.prefix", "prefix is for text fields"),
        ({"field": "width", "in": []}, "filter.in", "non-empty list"),
        ({"and": [{"field": "width", "eq": 1}, {"or": "x"}]}, "filter.and[1].or", "non-empty"),
        ({"and": [], "or": []}, "filter", "stands alone"),
        ({"field": "width", "exists": "yes"}, "filter.exists", "true or false"),
        ([], "filter", "expected an object"),
    ],
)
def test_bad_conditions_name_the_place(
    table: pa.Table, condition: Any, where: str, says: str
) -> None:
    with pytest.raises(FilterError, match="^" + re.escape(f"{where}: ")):
        parse(condition, filter_fields(table))
    with pytest.raises(FilterError, match=says):
        parse(condition, filter_fields(table))


def test_depth_and_length_are_bounded(table: pa.Table) -> None:
    deep: dict[str, Any] = {"field": "width", "gt": 1}
    for _ in range(8):
        deep = {"not": deep}
    with pytest.raises(FilterError, match=r"nested deeper than 8 levels"):
        parse(deep, filter_fields(table))
    long = {"or": [{"field": "width", "eq": i} for i in range(65)]}
    with pytest.raises(FilterError, match=r"filter.or\[64\]: more than 64 comparisons"):
        parse(long, filter_fields(table))


# --------------------------------------------------------------------------- selected search

N = 3000
SELECTIVITIES = (0.5, 0.05, 0.001, "one", "none")


def _mask(n: int, selectivity: float | str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = {"one": 1, "none": 0}.get(str(selectivity)) if isinstance(selectivity, str) else None
    if count is None:
        count = max(1, round(float(selectivity) * n))
    mask = np.zeros(n, bool)
    mask[rng.choice(n, count, replace=False)] = True
    return mask


def _brute_force(queries: np.ndarray, x: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    rows = np.flatnonzero(mask)
    scores = queries @ x[rows].T
    order = np.lexsort((np.broadcast_to(rows, scores.shape), -scores), axis=1)[:, :k]
    return rows[order]


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    x = clustered_vectors(N, 32, clusters=30, seed=3)
    rng = np.random.default_rng(4)
    q = x[rng.choice(N, 40, replace=False)] + 0.3 * rng.standard_normal((40, 32)).astype("f4")
    return x, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("selectivity", SELECTIVITIES)
@pytest.mark.parametrize("exact_rows", [0, 10**9])  # the selector path and the exact path
def test_a_flat_index_equals_brute_force_over_the_selection(
    vectors: tuple[np.ndarray, np.ndarray], selectivity: float | str, exact_rows: int
) -> None:
    x, q = vectors
    index, _ = build_index(x, "flat")
    mask = _mask(N, selectivity, seed=7)
    scores, rows = search_selected(index, q, 10, mask, exact_rows=exact_rows)
    truth = _brute_force(q, x, mask, min(10, int(mask.sum())))
    np.testing.assert_array_equal(rows, truth)
    assert np.isin(rows, np.flatnonzero(mask)).all()
    if len(truth[0]):
        np.testing.assert_allclose(scores[:, 0], np.max(q @ x[mask].T, axis=1), atol=1e-5)


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq", "ivf_hnsw_ondisk"])
@pytest.mark.parametrize("selectivity", SELECTIVITIES)
def test_approximate_indexes_reach_the_selection(
    vectors: tuple[np.ndarray, np.ndarray],
    index_type: str,
    selectivity: float | str,
    tmp_path: Path,
) -> None:
    x, q = vectors
    index = _approximate(x, index_type, tmp_path)
    mask = _mask(N, selectivity, seed=11)
    k = min(10, int(mask.sum()))
    truth = _brute_force(q, x, mask, k)
    for exact_rows in (0, 10**9):
        _, rows = search_selected(index, q, 10, mask, exact_rows=exact_rows)
        found = rows[rows >= 0]
        assert np.isin(found, np.flatnonzero(mask)).all()
        if k:
            recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(rows, truth, strict=True)])
            assert recall >= 0.95, (index_type, selectivity, exact_rows, recall)
        else:
            assert rows.shape == (len(q), 0)


def _approximate(x: np.ndarray, index_type: str, tmp_path: Path) -> faiss.Index:
    if index_type != "ivf_hnsw_ondisk":
        params = {
            "hnsw": {"M": 16},
            "ivf": {"nlist": 40},
            "ivfpq": {"nlist": 40, "m": 8, "nbits": 6},
        }
        return build_index(x, index_type, seed=0, **params[index_type])[0]
    # What a memory budget builds: IVF with an HNSW quantizer and SQ8 codes in on-disk lists.
    choice = next(
        c for c in candidates(N, x.shape[1], chunk_rows=1000) if c.params.get("code") == "SQ8"
    )
    return build_streaming(ArraySource(x), choice, tmp_path, recall_queries=100).index


# --------------------------------------------------------------------------- over HTTP

FOLDERS = ("", "holiday", "holiday/beach", "work")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A list of 80 photos in four folders with typed columns, indexed flat and served."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for i in range(80):
        image_id = "/".join(p for p in (FOLDERS[i % 4], f"p{i:03d}.jpg") if p)
        path = root / "files" / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fake_image(image_id))
        rows.append(
            {
                "path": str(path),
                "image_id": image_id,
                "rating": i % 5,
                "starred": i % 3 == 0,
                "kind": ("cat", "dog")[i % 2],
                "captions": [f"a photo {image_id} of a {('cat', 'dog')[i % 2]}"],
            }
        )
    listing = root / "photos.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "index"
    encoders = FakeEncoders(dim=DIM)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(builder, "load_encoders", lambda *_: encoders)
    try:
        argv = [
            "--model_dir",
            "m",
            "--list",
            str(listing),
            "--index_dir",
            str(out),
            "--index_type",
            "flat",
        ]
        assert build.main(argv) == 0
    finally:
        monkey.undo()
    app = create_app(Settings(index_dir=out, sort_pool=50), encoders, None)
    with uvicorn_in_thread(app) as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_healthy(client, timeout_s=30)
        yield base, out


def _truth(out: Path, text: str, keep: Any, k: int) -> list[str]:
    """Brute force over the images `keep(record_meta, image_id)` selects."""
    loaded = load_index(out)
    q = FakeEncoders(dim=DIM).encode_texts([text])[0][0]
    x = loaded.vectors("images")
    selected = [
        r for r, rec in enumerate(loaded.image_records) if keep(rec.meta or {}, rec.image_id)
    ]
    scores = x[selected] @ q
    order = np.lexsort((np.asarray(selected), -scores))[:k]
    return [loaded.image_ids[selected[i]] for i in order]


@pytest.mark.parametrize(
    ("condition", "keep"),
    [
        (
            {"field": "folder", "eq": "holiday"},
            lambda m, i: i.rsplit("/", 1)[0] == "holiday" and "/" in i and i.count("/") == 1,
        ),
        ({"field": "folder", "prefix": "holiday"}, lambda m, i: i.startswith("holiday")),
        (
            {"and": [{"field": "rating", "gte": 3}, {"field": "starred", "eq": True}]},
            lambda m, i: m["rating"] >= 3 and m["starred"],
        ),
        ({"field": "image_id", "eq": "work/p003.jpg"}, lambda m, i: i == "work/p003.jpg"),
    ],
)
def test_a_filtered_text_search_equals_brute_force_over_the_selection(
    served: tuple[str, Path], condition: dict[str, Any], keep: Any
) -> None:
    base, out = served
    text = "a photo of a dog"
    with httpx.Client(base_url=base, timeout=30) as client:
        got = client.post("/search/text", json={"query": text, "k": 10, "filter": condition})
        assert got.status_code == 200, got.text
        ids = [r["image_id"] for r in got.json()["results"]]
        assert ids == _truth(out, text, keep, 10)
        # The GET form carries the same filter as URL-encoded JSON.
        params = {"q": text, "k": 10, "filter": json.dumps(condition)}
        assert [
            r["image_id"] for r in client.get("/search/text", params=params).json()["results"]
        ] == ids


def test_min_score_nothing_selected_and_bad_requests(served: tuple[str, Path]) -> None:
    base, _ = served
    with httpx.Client(base_url=base, timeout=30) as client:
        every = client.post("/search/text", json={"query": "a photo p010.jpg", "k": 80}).json()
        scores = [r["score"] for r in every["results"]]
        cut = scores[4]
        got = client.post(
            "/search/text", json={"query": "a photo p010.jpg", "k": 3, "min_score": cut}
        ).json()
        assert got["passed"] == sum(s >= cut for s in scores) >= 5
        assert [r["score"] for r in got["results"]] == scores[:3]
        page2 = client.post(
            "/search/text",
            json={"query": "a photo p010.jpg", "k": 3, "offset": 3, "min_score": cut},
        ).json()
        assert [r["score"] for r in page2["results"]] == [s for s in scores[3:6] if s >= cut]
        none = client.post(
            "/search/text", json={"query": "x", "filter": {"field": "rating", "gt": 99}}
        )
        assert none.status_code == 200 and none.json()["results"] == []
        assert "selects no image" in none.json()["message"]
        bad = client.post(
            "/search/text", json={"query": "x", "filter": {"field": "colour", "eq": "red"}}
        )
        assert bad.status_code == 400 and "unknown field 'colour'" in bad.json()["detail"]
        assert "'folder'" in bad.json()["detail"] and "'rating'" in bad.json()["detail"]
        typed = client.get(
            "/search/text", params={"q": "x", "filter": '{"field": "rating", "eq": "5"}'}
        )
        assert typed.status_code == 400 and typed.json()["detail"].startswith("filter.eq: ")
        broken = client.get("/search/text", params={"q": "x", "filter": "{not json"})
        assert broken.status_code == 400 and "not JSON" in broken.json()["detail"]
        # A misspelt option is never ignored: it would widen the search silently.
        misspelt = client.post("/search/text", json={"query": "x", "fliter": {}})
        assert misspelt.status_code == 422 and "fliter" in misspelt.text
        embed = client.post("/embed/text", json={"texts": ["x"], "normalise": True})
        assert embed.status_code == 422 and "normalise" in embed.text


def test_filters_on_the_other_searches(served: tuple[str, Path]) -> None:
    base, _ = served
    holiday = json.dumps({"field": "folder", "prefix": "holiday"})
    with httpx.Client(base_url=base, timeout=30) as client:
        images = client.get(
            "/search/image-to-image",
            params={"image_id": "work/p003.jpg", "k": 20, "filter": holiday},
        ).json()
        assert len(images["results"]) == 20
        assert all(r["image_id"].startswith("holiday") for r in images["results"])
        captions = client.get(
            "/search/image-to-captions",
            params={"image_id": "work/p003.jpg", "k": 20, "filter": holiday},
        ).json()
        assert captions["results"] and all(
            r["image_id"].startswith("holiday") for r in captions["results"]
        )
        upload = client.post(
            "/search/image",
            files={"file": ("a.png", fake_image("work/p003.jpg"), "image/png")},
            data={"k": "5", "filter": holiday},
        )
        assert upload.status_code == 200, upload.text
        assert all(r["image_id"].startswith("holiday") for r in upload.json()["results"])


def test_openapi_describes_the_filter(served: tuple[str, Path]) -> None:
    base, _ = served
    doc = httpx.get(f"{base}/openapi.json", timeout=30).json()
    schema = doc["components"]["schemas"]["Filter"]
    titles = {branch["title"] for branch in schema["oneOf"]}
    assert {"eq comparison", "in comparison", "exists comparison", "and", "or", "not"} <= titles
    body = doc["components"]["schemas"]["TextSearchRequest"]
    assert body["additionalProperties"] is False and "filter" in body["properties"]
    assert {p["name"] for p in doc["paths"]["/search/text"]["get"]["parameters"]} >= {
        "filter",
        "min_score",
        "sort",
    }


def test_fields_name_what_the_index_has() -> None:
    fields = filter_fields(pa.table({"folder": pa.array(["a"]), "meta.folder": pa.array([1])}))
    assert fields["folder"] == Field("folder", "string", "folder")  # the built-in wins
    assert fields["meta.folder"].kind == "int"


def test_fields_lists_what_a_filter_can_name(served: tuple[str, Path]) -> None:
    base, _ = served
    got = httpx.get(f"{base}/fields", timeout=30).json()
    kinds = {f["name"]: f["kind"] for f in got["fields"]}
    assert kinds["folder"] == "string" and kinds["rating"] == "int"
    assert kinds["starred"] == "bool" and kinds["kind"] == "string"
    assert "meta.rating" not in kinds  # one name for one column
    rating = next(f for f in got["fields"] if f["name"] == "rating")
    assert (rating["min"], rating["max"], rating["missing"]) == (0, 4, 0)
    assert {(f["folder"], f["images"]) for f in got["folders"]} == {
        ("", 20),
        ("holiday", 20),
        ("holiday/beach", 20),
        ("work", 20),
    }
