"""/search/* (service/routes/search.py): text search against brute force, image search of
every upload format, search from an indexed image, bad input, micro-batching, and the demo
model's retrieval through the API.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.main import create_app
from service.schemas import ImageSearchResponse, ImageToImageResponse, TextSearchResponse
from tests.image_files import png_header_only
from tests.service_helpers import (
    ClientFactory,
    CountingEncoders,
    ServiceBackend,
    body_of,
    detail_text,
    image_bytes,
    sample_upload,
    shape_image,
)

# --------------------------------------------------------------------------- text search


def brute_force_images(backend: ServiceBackend, query: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of every image for `query`, best first, without FAISS."""
    vectors, _ = backend.encoders.encode_texts([query])
    q = vectors[0] / np.linalg.norm(vectors[0])
    scores = backend.index.vectors("images") @ q
    order = np.argsort(-scores, kind="stable")
    return scores[order], order


def test_text_search_matches_brute_force(client: TestClient, backend: ServiceBackend) -> None:
    k = 5
    response = client.post("/search/text", json={"query": backend.known_query, "k": k})
    body = body_of(TextSearchResponse, response)
    assert body["no_known_words"] is False and body["known_words"] > 0
    assert body["message"] is None
    assert body["took_ms"] >= 0
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, k + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.001 <= s <= 1.001 for s in scores)
    expected_scores, expected_rows = brute_force_images(backend, backend.known_query)
    np.testing.assert_allclose(scores, expected_scores[:k], atol=1e-4)
    assert results[0]["image_id"] == backend.index.image_ids[expected_rows[0]]
    for r in results:
        row = backend.index.image_ids.index(r["image_id"])
        assert r["captions"] == backend.index.captions_of(row)
        image = client.get(r["image_url"])
        assert image.status_code == 200
        assert image.content == backend.index.image_file(r["image_id"]).read_bytes()


def test_get_text_search_equals_post(client: TestClient, backend: ServiceBackend) -> None:
    posted = client.post("/search/text", json={"query": backend.known_query, "k": 4}).json()
    linked = client.get("/search/text", params={"q": backend.known_query, "k": 4}).json()
    strip = lambda body: {k: v for k, v in body.items() if k != "took_ms"}  # noqa: E731
    assert strip(linked) == strip(posted)


def test_default_k_is_10(client: TestClient, backend: ServiceBackend) -> None:
    body = client.post("/search/text", json={"query": backend.known_query}).json()
    assert len(body["results"]) == min(10, len(backend.index.image_ids))
    body = client.get("/search/text", params={"q": backend.known_query}).json()
    assert len(body["results"]) == min(10, len(backend.index.image_ids))


def test_k_above_the_number_of_images_gives_them_all(
    client: TestClient, backend: ServiceBackend
) -> None:
    body = client.post("/search/text", json={"query": backend.known_query, "k": 100}).json()
    assert len(body["results"]) == min(100, len(backend.index.image_ids))
    assert len({r["image_id"] for r in body["results"]}) == len(body["results"])


def test_unknown_words_answer_200_with_the_flag(client: TestClient) -> None:
    for query in ("zzxqj vrrbk", "!!! ???"):
        response = client.post("/search/text", json={"query": query, "k": 5})
        body = body_of(TextSearchResponse, response)
        assert body["no_known_words"] is True
        assert body["known_words"] == 0
        assert body["results"] == []
        assert "vocabulary" in body["message"]


@pytest.mark.parametrize(
    ("payload", "where", "words"),
    [
        ({"query": ""}, "body.query", "at least 1 character"),
        ({"query": "   \t\n "}, "body.query", "empty or only whitespace"),
        ({"query": "red " * 300}, "body.query", "VSEPP_MAX_QUERY_CHARS"),
        ({}, "body.query", "Field required"),
        ({"query": 42}, "body.query", "string"),
        ({"query": "red", "k": 0}, "body.k", "greater than or equal to 1"),
        ({"query": "red", "k": -3}, "body.k", "greater than or equal to 1"),
        ({"query": "red", "k": 101}, "body.k", "between 1 and 100"),
        ({"query": "red", "k": "many"}, "body.k", "integer"),
        ({"query": "red", "k": 2.5}, "body.k", "integer"),
    ],
    ids=[
        "empty",
        "whitespace",
        "too-long",
        "missing",
        "not-a-string",
        "k-zero",
        "k-negative",
        "k-over-max",
        "k-not-int",
        "k-fraction",
    ],
)
def test_bad_text_queries_are_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], where: str, words: str
) -> None:
    response = client.post("/search/text", json=payload)
    assert response.status_code == 422
    text = detail_text(response)
    assert where in text and words in text, text


def test_bounds_come_from_settings(make_client: ClientFactory) -> None:
    client = make_client(max_k=3, max_query_chars=10)
    assert client.post("/search/text", json={"query": "red", "k": 3}).status_code == 200
    too_many = client.post("/search/text", json={"query": "red", "k": 4})
    assert too_many.status_code == 422 and "between 1 and 3" in detail_text(too_many)
    assert client.post("/search/text", json={"query": "r" * 10}).status_code == 200
    too_long = client.post("/search/text", json={"query": "r" * 11})
    assert too_long.status_code == 422 and "limit is 10" in detail_text(too_long)
    # Without k the default 10 is clipped to the maximum rather than refused.
    assert len(client.post("/search/text", json={"query": "red"}).json()["results"]) == 3


def test_lone_surrogates_are_422_not_500(client: TestClient) -> None:
    response = client.post(
        "/search/text",
        content=b'{"query": "red \\ud800 square"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "body.query" in detail_text(response)
    assert "\ufffd" in response.json()["detail"][0]["input"]  # echoed, made encodable


def test_get_text_search_checks_its_parameters(client: TestClient) -> None:
    assert client.get("/search/text").status_code == 422
    assert "query.q" in detail_text(client.get("/search/text"))
    blank = client.get("/search/text", params={"q": "  "})
    assert blank.status_code == 422 and "whitespace" in detail_text(blank)
    bad_k = client.get("/search/text", params={"q": "red", "k": "0"})
    assert bad_k.status_code == 422 and "query.k" in detail_text(bad_k)
    big_k = client.get("/search/text", params={"q": "red", "k": "1000"})
    assert big_k.status_code == 422 and "VSEPP_MAX_K" in detail_text(big_k)


def test_text_search_wants_json(client: TestClient) -> None:
    response = client.post(
        "/search/text", content=b"query=red", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in detail_text(response)
    broken = client.post(
        "/search/text", content=b'{"query": "red"', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    assert "JSON" in detail_text(broken)


# --------------------------------------------------------------------------- image search


def test_image_search_returns_captions_best_first(
    client: TestClient, backend: ServiceBackend
) -> None:
    response = client.post("/search/image", files=sample_upload(backend), data={"k": "7"})
    body = body_of(ImageSearchResponse, response)
    results = body["results"]
    assert [r["rank"] for r in results] == list(range(1, 8))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    with Image.open(backend.sample_image) as image:
        assert (body["width"], body["height"]) == image.size
    for r in results:
        row = r["caption_row"]
        assert r["caption"] == backend.index.captions[row]
        assert r["caption_id"] == backend.index.caption_ids[row]
        assert r["image_id"] == backend.index.image_ids[backend.index.caption_image_rows[row]]
        assert r["image_url"].startswith("/images/")
    # The file's vector, searched directly, gives the same captions.
    vector = backend.encoders.encode_image_bytes([backend.sample_image.read_bytes()])
    _, rows = backend.index.search_captions(vector, 7)
    assert [r["caption_row"] for r in results] == rows[0].tolist()


def test_image_search_default_k(client: TestClient, backend: ServiceBackend) -> None:
    body = client.post("/search/image", files=sample_upload(backend)).json()
    assert len(body["results"]) == min(10, len(backend.index.captions))


def _gif(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    second = shape_image("blue", "circle")
    image.save(buffer, format="GIF", save_all=True, append_images=[second], duration=50)
    return buffer.getvalue()


def _rgba_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    alpha.paste(255, (10, 10, 54, 54))
    rgba.putalpha(alpha)
    return image_bytes(rgba, "PNG")


def _png16(image: Image.Image) -> bytes:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return image_bytes(Image.fromarray(gray), "PNG")


UPLOAD_VARIANTS: dict[str, tuple[Callable[[Image.Image], bytes], str]] = {
    "jpeg": (lambda im: image_bytes(im, "JPEG", quality=95), "image/jpeg"),
    "gif": (_gif, "image/gif"),
    "tiff": (lambda im: image_bytes(im, "TIFF"), "image/tiff"),
    "webp": (lambda im: image_bytes(im, "WEBP", lossless=True), "image/webp"),
    "cmyk-jpeg": (lambda im: image_bytes(im.convert("CMYK"), "JPEG", quality=95), "image/jpeg"),
    "png16": (_png16, "image/png"),
    "rgba-png": (_rgba_png, "image/png"),
    "grayscale-jpeg": (lambda im: image_bytes(im.convert("L"), "JPEG"), "image/jpeg"),
    "bmp": (lambda im: image_bytes(im, "BMP"), "image/bmp"),
    "octet-stream": (lambda im: image_bytes(im, "PNG"), "application/octet-stream"),
}


@pytest.mark.parametrize("variant", list(UPLOAD_VARIANTS))
def test_image_formats_are_decoded_and_searched(
    client: TestClient, backend: ServiceBackend, variant: str
) -> None:
    make, content_type = UPLOAD_VARIANTS[variant]
    data = make(shape_image("red", "square"))
    response = client.post(
        "/search/image", files={"file": (f"x.{variant}", data, content_type)}, data={"k": "3"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (64, 64)
    assert len(body["results"]) == 3


def test_missing_file_is_422(client: TestClient) -> None:
    response = client.post("/search/image", data={"k": "3"}, files={"other": ("x", b"1")})
    assert response.status_code == 422
    assert "body.file" in detail_text(response) and "required" in detail_text(response)


def test_file_sent_as_text_field_is_422(client: TestClient) -> None:
    response = client.post("/search/image", files={"file": (None, b"not a file")})
    assert response.status_code == 422
    assert "body.file" in detail_text(response)


@pytest.mark.parametrize("k", ["0", "-1", "abc", "101"])
def test_image_search_checks_k(client: TestClient, backend: ServiceBackend, k: str) -> None:
    response = client.post("/search/image", files=sample_upload(backend), data={"k": k})
    assert response.status_code == 422
    assert "body.k" in detail_text(response)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "words"),
    [
        (b"%PDF-1.4 not an image", "image/png", 400, "not an image"),
        (b"", "image/png", 400, "empty"),
        (
            image_bytes(shape_image("red", "square", size=256), "JPEG")[:1500],
            "image/jpeg",
            400,
            "truncated",
        ),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, "image/svg+xml"),
        (b"%PDF-1.4", "application/pdf", 415, "application/pdf"),
        (b"hello", "text/plain", 415, "text/plain"),
        (image_bytes(shape_image("red", "square"), "ICO"), "image/png", 415, "ICO"),
        (png_header_only(100_000, 100_000), "image/png", 413, "VSEPP_MAX_IMAGE_PIXELS"),
    ],
    ids=["not-image", "empty", "truncated-jpeg", "svg", "pdf", "text", "ico", "bomb"],
)
def test_bad_uploads_are_4xx_with_a_reason(
    client: TestClient, data: bytes, content_type: str, status: int, words: str
) -> None:
    for path in ("/search/image", "/embed/image"):
        response = client.post(path, files={"file": ("upload", data, content_type)})
        assert response.status_code == status, (path, response.text)
        assert words in detail_text(response), (path, detail_text(response))
    assert client.get("/health").status_code == 200  # still serving


def test_pixel_budget_comes_from_settings(
    make_client: ClientFactory, backend: ServiceBackend
) -> None:
    client = make_client(max_image_pixels=4095)
    data = image_bytes(shape_image("red", "square"), "PNG")  # 4096 pixels
    response = client.post("/search/image", files={"file": ("x.png", data, "image/png")})
    assert response.status_code == 413
    assert "4096 pixels" in detail_text(response)


def test_upload_wants_multipart(client: TestClient) -> None:
    response = client.post("/search/image", json={"file": "abc"})
    assert response.status_code == 415
    assert "multipart/form-data" in detail_text(response)
    raw = client.post("/search/image", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert raw.status_code == 415


# --------------------------------------------------------------------------- indexed-image search


def test_image_to_captions_and_image_to_image(client: TestClient, backend: ServiceBackend) -> None:
    image_id = backend.index.image_ids[0]
    answer = client.get("/search/image-to-captions", params={"image_id": image_id, "k": 5})
    captions = body_of(ImageSearchResponse, answer)
    assert len(captions["results"]) == 5
    scores = [r["score"] for r in captions["results"]]
    assert scores == sorted(scores, reverse=True)
    answer = client.get("/search/image-to-image", params={"image_id": image_id, "k": 3})
    images = body_of(ImageToImageResponse, answer)
    assert len(images["results"]) == 3
    assert images["results"][0]["image_id"] == image_id
    assert images["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("path", ["/search/image-to-captions", "/search/image-to-image"])
@pytest.mark.parametrize("image_id", ["nope.png", "../manifest.json", "/etc/passwd"])
def test_indexed_image_search_of_an_unknown_image_is_404(
    client: TestClient, path: str, image_id: str
) -> None:
    response = client.get(path, params={"image_id": image_id})
    assert response.status_code == 404
    assert "no image" in detail_text(response)


# --------------------------------------------------------------------------- batching


async def _concurrent_text_searches(
    app: Any, queries: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(
            *(client.post("/search/text", json={"query": q, "k": k}) for q, k in queries)
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


def _queries(backend: ServiceBackend) -> list[tuple[str, int]]:
    words = backend.index.captions[:16]
    return [(text, 1 + i % 7) for i, text in enumerate(words)]


def test_concurrent_queries_are_batched_with_the_same_results(backend: ServiceBackend) -> None:
    queries = _queries(backend)
    batched_encoders = CountingEncoders(backend.encoders, text_delay_s=0.05)
    batched_app = create_app(
        Settings(batch_window_ms=20, batch_max=64), batched_encoders, backend.index
    )
    direct_encoders = CountingEncoders(backend.encoders)
    direct_app = create_app(Settings(batch_max=1), direct_encoders, backend.index)

    batched = asyncio.run(_concurrent_text_searches(batched_app, queries))
    direct = asyncio.run(_concurrent_text_searches(direct_app, queries))

    assert sum(batched_encoders.text_batches) == len(queries)
    assert len(batched_encoders.text_batches) < len(queries) // 2, batched_encoders.text_batches
    assert max(batched_encoders.text_batches) > 1
    assert direct_encoders.text_batches == [1] * len(queries)
    for (query, k), one, other in zip(queries, batched, direct, strict=True):
        assert len(one["results"]) == k == len(other["results"]), query
        assert [r["image_id"] for r in one["results"]] == [r["image_id"] for r in other["results"]]
        np.testing.assert_allclose(
            [r["score"] for r in one["results"]], [r["score"] for r in other["results"]], atol=1e-5
        )
        assert one["known_words"] == other["known_words"]


def test_batch_sizes_are_in_the_metrics(backend: ServiceBackend) -> None:
    app = create_app(
        Settings(batch_window_ms=20), CountingEncoders(backend.encoders, 0.02), backend.index
    )
    asyncio.run(_concurrent_text_searches(app, _queries(backend)))
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert "vsepp_text_batch_size_count 16.0" not in text  # batched: fewer batches than queries
    assert "vsepp_text_batch_size_sum 16.0" in text


def test_batching_can_be_switched_off(make_client: ClientFactory) -> None:
    client = make_client(batch_max=1)
    assert client.get("/health").json()["batching"]["enabled"] is False
    assert client.post("/search/text", json={"query": "red"}).status_code == 200


def test_demo_model_finds_described_images_and_own_captions(
    client: TestClient, backend: ServiceBackend
) -> None:
    """Through the API, the real demo model retrieves far above chance both ways: a caption's
    image among the top 5 images, an image's own captions among the top 5 captions."""
    index = backend.index
    n = len(index.image_ids)
    text_hits = image_hits = 0
    for row, image_id in enumerate(index.image_ids):
        query = index.captions_of(row)[0]
        found = client.post("/search/text", json={"query": query, "k": 5}).json()["results"]
        text_hits += image_id in [r["image_id"] for r in found]
        path = index.image_file(image_id)
        assert path is not None
        with path.open("rb") as f:
            caps = client.post(
                "/search/image", files={"file": (path.name, f, "image/jpeg")}, data={"k": "5"}
            ).json()["results"]
        image_hits += image_id in [c["image_id"] for c in caps]
    chance = 5 / n
    assert text_hits / n >= max(0.5, 3 * chance), (text_hits, n)
    assert image_hits / n >= max(0.5, 3 * chance), (image_hits, n)
