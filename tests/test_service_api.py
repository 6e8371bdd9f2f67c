"""The HTTP API through FastAPI's TestClient: every endpoint, every bad input, the schema.

The service runs on the session's tiny demo model and its index (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import random
import socket
import string
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.main import create_app
from service.routes.page import PAGE_PATH
from tests.image_files import png_header_only
from tests.service_helpers import (
    CountingEncoders,
    ServiceBackend,
    image_bytes,
    shape_image,
    uvicorn_in_thread,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's notice about httpx vs httpx2
    from fastapi.testclient import TestClient

ClientFactory = Callable[..., TestClient]
SMALL_UPLOAD = 200_000


@pytest.fixture(scope="module")
def backend(service_backend: ServiceBackend) -> ServiceBackend:
    return service_backend


@pytest.fixture
def make_client(backend: ServiceBackend) -> Iterator[ClientFactory]:
    """Build an app (with settings overrides) and enter a TestClient on it."""
    opened: list[TestClient] = []

    def make(
        encoders: Any = None,
        index: Any = None,
        raise_server_exceptions: bool = True,
        **settings: Any,
    ) -> TestClient:
        app = create_app(
            Settings(**settings),
            encoders if encoders is not None else backend.encoders,
            index if index is not None else backend.index,
        )
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def detail_text(response: httpx.Response) -> str:
    """The `detail` of an error answer as one string (FastAPI's list or our sentence)."""
    body = response.json()
    assert "detail" in body, body
    detail = body["detail"]
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
    assert isinstance(detail, str)
    return detail


def sample_upload(backend: ServiceBackend) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (backend.sample_image.name, backend.sample_image.read_bytes(), "image/png")}


# --------------------------------------------------------------------------- health


def test_health_reports_model_and_index(client: TestClient, backend: ServiceBackend) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"]["model_hash"] == backend.encoders.model_hash
    assert body["model"]["embed_dim"] == backend.encoders.embed_dim
    assert body["index"]["images"] == len(backend.index.image_ids)
    assert body["index"]["captions"] == len(backend.index.captions)
    assert body["index"]["model_hash"] == backend.encoders.model_hash
    assert body["batching"] == {"enabled": True, "window_ms": 0.0, "max_batch": 32}


def test_health_is_503_until_loaded_then_200(
    backend: ServiceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import service.state

    release = threading.Event()

    def slow_load(settings: Settings, encoders: Any, index: Any) -> tuple[Any, Any]:
        assert release.wait(10)
        return backend.encoders, backend.index

    monkeypatch.setattr(service.state, "load_objects", slow_load)
    app = create_app(Settings(model_dir=Path("/nowhere"), index_dir=Path("/nowhere")))
    with TestClient(app) as client:
        loading = client.get("/health")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        refused = client.post("/search/text", json={"query": "red"})
        assert refused.status_code == 503
        assert "loading" in detail_text(refused)
        release.set()
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            import time

            time.sleep(0.02)
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/search/text", json={"query": "red"}).status_code == 200


def test_failed_load_is_a_503_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSEPP_MODEL_DIR", raising=False)
    app = create_app(Settings(model_dir=None, index_dir=None))
    with TestClient(app) as client:
        for _ in range(200):
            body = client.get("/health").json()
            if body["status"] != "loading":
                break
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "error"
        assert "VSEPP_MODEL_DIR" in response.json()["detail"]
        refused = client.get("/search/text", params={"q": "red"})
        assert refused.status_code == 503
        assert "VSEPP_MODEL_DIR" in detail_text(refused)


def test_an_index_of_another_model_is_refused(backend: ServiceBackend) -> None:
    other = CountingEncoders(backend.encoders)
    other.model_hash = "some-other-model"
    with pytest.raises(ValueError, match="rebuild the index"):
        create_app(Settings(), other, backend.index)


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
    assert response.status_code == 200
    body = response.json()
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
        assert response.status_code == 200
        body = response.json()
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
    assert response.status_code == 200, response.text
    body = response.json()
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


def test_oversized_upload_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=SMALL_UPLOAD)
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    data = image_bytes(Image.fromarray(noise), "PNG")
    assert len(data) > SMALL_UPLOAD + 64 * 1024  # over the body limit too
    response = client.post("/search/image", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 413
    assert "VSEPP_MAX_UPLOAD_BYTES" in detail_text(response)
    # Over the file bound but under the body bound: refused by the chunked reader.
    just_over = b"\x89PNG\r\n\x1a\n" + b"\x00" * SMALL_UPLOAD
    response = client.post("/search/image", files={"file": ("big.png", just_over, "image/png")})
    assert response.status_code == 413
    assert str(SMALL_UPLOAD) in detail_text(response)
    assert client.get("/health").status_code == 200


def test_oversized_json_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_json_bytes=1000)
    response = client.post("/embed/text", json={"texts": ["red"] * 500})
    assert response.status_code == 413
    assert "VSEPP_MAX_JSON_BYTES" in detail_text(response)


async def _call_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes]
) -> tuple[int, dict[str, Any], int, int]:
    """Run one POST /search/image through the ASGI app; (status, body, chunks consumed
    when the answer started, chunks consumed in all)."""
    consumed = 0
    at_start = -1

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal at_start
        if message["type"] == "http.response.start":
            at_start = consumed
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/search/image",
        "raw_path": b"/search/image",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], json.loads(body), at_start, consumed


def test_body_is_refused_while_it_streams_in(backend: ServiceBackend) -> None:
    app = create_app(Settings(max_upload_bytes=SMALL_UPLOAD), backend.encoders, backend.index)
    boundary = b"vsepp-boundary"
    head = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    total_chunks = 400  # 400 x 64 KiB = 25 MiB if it were all read

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(total_chunks):
            yield b"\x00" * 65536

    headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]  # no length
    status, body, at_start, consumed = asyncio.run(_call_asgi(app, headers, chunks()))
    assert status == 413
    assert "VSEPP_MAX_UPLOAD_BYTES" in body["detail"]
    # The answer was decided and written once the limit was passed ...
    assert at_start <= (SMALL_UPLOAD + 64 * 1024) // 65536 + 2, at_start
    # ... and the rest read off (and dropped), so that the client gets to read it.
    assert consumed == total_chunks + 1

    # With draining off, nothing past the limit is read at all.
    app = create_app(
        Settings(max_upload_bytes=SMALL_UPLOAD, max_drain_bytes=0), backend.encoders, backend.index
    )
    status, _, at_start, consumed = asyncio.run(_call_asgi(app, headers, chunks()))
    assert status == 413 and consumed == at_start <= (SMALL_UPLOAD + 64 * 1024) // 65536 + 2


def test_draining_stops_at_its_bound(backend: ServiceBackend) -> None:
    drain = 1024 * 1024
    app = create_app(
        Settings(max_upload_bytes=SMALL_UPLOAD, max_drain_bytes=drain),
        backend.encoders,
        backend.index,
    )

    def endless() -> Iterator[bytes]:
        yield (
            b"--b\r\n"
            b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        while True:
            yield b"\x00" * 65536

    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    status, _, _, consumed = asyncio.run(_call_asgi(app, headers, endless()))
    assert status == 413
    assert consumed <= drain // 65536 + 2, consumed


def test_content_length_over_the_bound_is_refused_before_reading(
    backend: ServiceBackend,
) -> None:
    app = create_app(Settings(max_upload_bytes=SMALL_UPLOAD), backend.encoders, backend.index)

    def never() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    headers = [
        (b"content-type", b"multipart/form-data; boundary=x"),
        (b"content-length", str(10**9).encode()),
    ]
    status, body, _, consumed = asyncio.run(_call_asgi(app, headers, never()))
    assert (status, consumed) == (413, 0)
    assert "VSEPP_MAX_UPLOAD_BYTES" in body["detail"]


# --------------------------------------------------------------------------- images


def test_indexed_images_are_served_with_their_type(
    client: TestClient, backend: ServiceBackend
) -> None:
    image_id = backend.index.image_ids[0]
    response = client.get(f"/images/{image_id}")
    assert response.status_code == 200
    path = backend.index.image_file(image_id)
    assert response.content == path.read_bytes()
    with Image.open(path) as image:
        assert image.format is not None
        expected = Image.MIME[image.format]
    assert response.headers["content-type"] == expected
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/images/not-there.png",
        "/images/shapes/not-there.png",
        "/images/manifest.json",
        "/images/images.json",
        "/images/%2e%2e/manifest.json",
        "/images/%2e%2e%2fmanifest.json",
        "/images/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/images/..%2f..%2f..%2fetc%2fpasswd",
        "/images/shapes/%2e%2e/%2e%2e/manifest.json",
        "/images/%2fetc%2fpasswd",
        "/images//etc/passwd",
        "/images/%252e%252e%252fmanifest.json",
        "/images/shapes%5c..%5c..%5cmanifest.json",
        "/images/red_square.png%00.png",
        "/images/C:%5cWindows%5cwin.ini",
    ],
)
def test_anything_but_an_indexed_image_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.headers["content-type"].startswith("application/json")
    assert "model_hash" not in response.text and "root:" not in response.text


# --------------------------------------------------------------------------- indexed-image search


def test_image_to_captions_and_image_to_image(client: TestClient, backend: ServiceBackend) -> None:
    image_id = backend.index.image_ids[0]
    captions = client.get("/search/image-to-captions", params={"image_id": image_id, "k": 5}).json()
    assert len(captions["results"]) == 5
    scores = [r["score"] for r in captions["results"]]
    assert scores == sorted(scores, reverse=True)
    images = client.get("/search/image-to-image", params={"image_id": image_id, "k": 3}).json()
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


# --------------------------------------------------------------------------- embeddings


def test_embed_text(client: TestClient, backend: ServiceBackend) -> None:
    texts = [backend.known_query, "zzxqj"]
    response = client.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["dim"] == backend.encoders.embed_dim
    assert body["model_hash"] == backend.encoders.model_hash
    expected, known = backend.encoders.encode_texts(texts)
    np.testing.assert_allclose(np.array(body["vectors"]), expected, atol=1e-6)
    assert body["known_words"] == known.tolist()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"texts": []}, "at least 1 item"),
        ({"texts": ["red", "  "]}, "body.texts.1: texts[1] is empty"),
        ({"texts": "red"}, "valid list"),
        ({"texts": ["red"] * 300}, "VSEPP_MAX_EMBED_TEXTS"),
    ],
)
def test_embed_text_checks_its_input(
    client: TestClient, payload: dict[str, Any], words: str
) -> None:
    response = client.post("/embed/text", json=payload)
    assert response.status_code == 422
    assert words in detail_text(response), detail_text(response)


def test_embed_image(client: TestClient, backend: ServiceBackend) -> None:
    response = client.post("/embed/image", files=sample_upload(backend))
    assert response.status_code == 200
    body = response.json()
    # The uploaded file embeds as it did when it was indexed: one decoder for both.
    row = backend.index.image_row(backend.sample_image.name)
    indexed = backend.index.vectors("images")[row]
    np.testing.assert_allclose(np.array(body["vectors"][0]), indexed, atol=1e-5)
    assert body["dim"] == backend.encoders.embed_dim


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


# --------------------------------------------------------------------------- metrics and logs


def test_metrics_count_requests_by_route_template(
    client: TestClient, backend: ServiceBackend
) -> None:
    client.post("/search/text", json={"query": backend.known_query, "k": 2})
    client.post("/search/image", files=sample_upload(backend), data={"k": "2"})
    client.get(f"/images/{backend.index.image_ids[0]}")
    client.get("/images/not-there.png")
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'vsepp_http_requests_total{endpoint="/search/text",method="POST",status="200"} 1.0' in text
    )
    assert 'endpoint="/images/{image_id:path}",method="GET",status="200"} 1.0' in text
    assert 'endpoint="/images/{image_id:path}",method="GET",status="404"} 1.0' in text
    assert 'endpoint="(unmatched)",method="GET",status="404"} 1.0' in text
    assert "not-there" not in text and backend.index.image_ids[0] not in text
    assert 'vsepp_http_request_duration_seconds_bucket{endpoint="/search/image"' in text
    for stage, modality in (
        ("encode", "text"),
        ("search", "text"),
        ("decode", "image"),
        ("encode", "image"),
        ("search", "image"),
    ):
        assert (
            f'vsepp_stage_duration_seconds_count{{modality="{modality}",stage="{stage}"}}' in text
        )


def test_one_structured_log_line_per_request(
    client: TestClient, backend: ServiceBackend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/search/text", params={"q": backend.known_query})
        client.get("/images/nothing.png")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 2
    assert lines[0]["endpoint"] == "/search/text" and lines[0]["status"] == 200
    assert lines[1]["endpoint"] == "/images/{image_id:path}" and lines[1]["status"] == 404
    assert all(line["latency_ms"] >= 0 and line["method"] == "GET" for line in lines)


# --------------------------------------------------------------------------- page, CORS, settings


def test_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert html == PAGE_PATH.read_text(encoding="utf-8")
    for element in ("query", "k", "results", "upload", "captions", "error", "dropzone", "preview"):
        assert f'id="{element}"' in html
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert 'src="//' not in lowered and "@import" not in lowered


def test_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200


def test_cors_origins_from_settings(make_client: ClientFactory) -> None:
    client = make_client(cors_origins="http://a.example, http://b.example")
    response = client.options(
        "/search/text",
        headers={"Origin": "http://b.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://b.example"
    closed = make_client()
    response = closed.get("/health", headers={"Origin": "http://b.example"})
    assert "access-control-allow-origin" not in response.headers


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSEPP_MODEL_DIR", "/models/m")
    monkeypatch.setenv("VSEPP_INDEX_DIR", "/indexes/i")
    monkeypatch.setenv("VSEPP_MAX_K", "50")
    monkeypatch.setenv("VSEPP_MAX_QUERY_CHARS", "300")
    monkeypatch.setenv("VSEPP_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("VSEPP_MAX_IMAGE_PIXELS", "999")
    monkeypatch.setenv("VSEPP_CORS_ORIGINS", '["http://x.example"]')
    monkeypatch.setenv("VSEPP_BATCH_WINDOW_MS", "0")
    monkeypatch.setenv("VSEPP_BATCH_MAX", "8")
    settings = Settings()
    assert str(settings.model_dir) == "/models/m" and str(settings.index_dir) == "/indexes/i"
    assert (settings.max_k, settings.max_query_chars) == (50, 300)
    assert (settings.max_upload_bytes, settings.max_image_pixels) == (1234, 999)
    assert settings.cors_origins == ["http://x.example"]
    assert (settings.batch_window_ms, settings.batch_max) == (0.0, 8)


def test_batching_can_be_switched_off(make_client: ClientFactory) -> None:
    client = make_client(batch_max=1)
    assert client.get("/health").json()["batching"]["enabled"] is False
    assert client.post("/search/text", json={"query": "red"}).status_code == 200


# --------------------------------------------------------------------------- OpenAPI


ENDPOINTS = {
    ("get", "/health"): "HealthResponse",
    ("post", "/search/text"): "TextSearchResponse",
    ("get", "/search/text"): "TextSearchResponse",
    ("post", "/search/image"): "ImageSearchResponse",
    ("get", "/search/image-to-captions"): "ImageSearchResponse",
    ("get", "/search/image-to-image"): "ImageToImageResponse",
    ("post", "/embed/text"): "EmbedResponse",
    ("post", "/embed/image"): "EmbedResponse",
    ("get", "/images/{image_id}"): None,
    ("get", "/"): None,
    ("get", "/metrics"): None,
}


@pytest.fixture(scope="module")
def openapi(backend: ServiceBackend) -> dict[str, Any]:
    with TestClient(create_app(Settings(), backend.encoders, backend.index)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def _validator(openapi: dict[str, Any], name: str) -> Any:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(openapi, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )


def test_openapi_lists_every_endpoint_with_its_models(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"].startswith("3.")
    paths = openapi["paths"]
    for (method, path), model in ENDPOINTS.items():
        assert method in paths.get(path, {}), (method, path)
        operation = paths[path][method]
        assert "200" in operation["responses"]
        if model is not None:
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{model}"}
    text_body = paths["/search/text"]["post"]["requestBody"]["content"]["application/json"]
    assert text_body["schema"] == {"$ref": "#/components/schemas/TextSearchRequest"}
    embed_body = paths["/embed/text"]["post"]["requestBody"]["content"]["application/json"]
    assert embed_body["schema"] == {"$ref": "#/components/schemas/EmbedTextRequest"}
    for path in ("/search/image", "/embed/image"):
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        form_schema = openapi["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
        assert "file" in form_schema["required"]
        file_schema = form_schema["properties"]["file"]
        assert file_schema.get("format") == "binary" or (
            file_schema.get("contentMediaType") == "application/octet-stream"
        )
    for path in ("/search/image", "/embed/image"):
        assert {"400", "413", "415", "422"} <= set(paths[path]["post"]["responses"])
    assert "503" in paths["/health"]["get"]["responses"]


def test_openapi_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    # Validated as OpenAPI (its version's own schema, $refs resolved), not as a JSON Schema.
    validate(openapi)
    for name, schema in openapi["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name


def test_openapi_validation_does_catch_a_broken_document(openapi: dict[str, Any]) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    broken = copy.deepcopy(openapi)
    first = next(iter(broken["paths"].values()))
    next(iter(first.values()))["responses"] = {"200": {"content": {}}}  # no description
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_answers_match_the_published_schemas(
    client: TestClient, backend: ServiceBackend, openapi: dict[str, Any]
) -> None:
    checks = [
        ("HealthResponse", client.get("/health")),
        ("TextSearchResponse", client.post("/search/text", json={"query": backend.known_query})),
        ("TextSearchResponse", client.get("/search/text", params={"q": "zzxqj"})),
        ("ImageSearchResponse", client.post("/search/image", files=sample_upload(backend))),
        (
            "ImageSearchResponse",
            client.get(
                "/search/image-to-captions", params={"image_id": backend.index.image_ids[0]}
            ),
        ),
        (
            "ImageToImageResponse",
            client.get("/search/image-to-image", params={"image_id": backend.index.image_ids[0]}),
        ),
        ("EmbedResponse", client.post("/embed/text", json={"texts": ["red"]})),
        ("EmbedResponse", client.post("/embed/image", files=sample_upload(backend))),
        ("HTTPValidationError", client.post("/search/text", json={"query": "red", "k": 0})),
        ("HTTPValidationError", client.post("/search/text", json={"query": "red", "k": 500})),
        ("ErrorResponse", client.get("/images/nothing.png")),
        ("ErrorResponse", client.post("/search/image", files={"file": ("x", b"no", "image/png")})),
    ]
    for name, response in checks:
        _validator(openapi, name).validate(response.json())


# --------------------------------------------------------------------------- fuzzing


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 10, 101, 2**63, -(2**70), 1e308, -0.0, 3.5])
    if kind == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(["red square", "", " ", "\u00e9\u4e2d\U0001f600", "a" * 5000, "\x00"])
    if kind == 4:
        return rng.choice(["query", "k", "texts", "file"])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    keys = ["query", "k", "texts", "q", "file", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _random_request(rng: random.Random, backend: ServiceBackend) -> dict[str, Any]:
    paths = [
        "/search/text",
        "/search/image",
        "/embed/text",
        "/embed/image",
        "/search/image-to-captions",
        "/search/image-to-image",
        "/health",
        "/metrics",
        "/",
        f"/images/{backend.index.image_ids[0]}",
        "/images/" + "".join(rng.choice("%2e./\\abc0") for _ in range(rng.randrange(1, 20))),
        "/" + "".join(rng.choice(string.ascii_letters + "%/._-") for _ in range(8)),
    ]
    request: dict[str, Any] = {
        "method": rng.choice(["GET", "POST", "POST", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]),
        "url": rng.choice(paths),
        "headers": {},
    }
    if rng.random() < 0.5:
        request["params"] = {
            rng.choice(["q", "k", "image_id", "x"]): str(_random_json(rng))[:200]
            for _ in range(rng.randrange(1, 3))
        }
    body_kind = rng.randrange(5)
    if body_kind == 0:
        request["content"] = rng.randbytes(rng.randrange(0, 3000))
    elif body_kind == 1:
        request["content"] = json.dumps(_random_json(rng)).encode()
        request["headers"]["content-type"] = "application/json"
    elif body_kind == 2:
        payloads = [
            rng.randbytes(rng.randrange(0, 2000)),
            backend.sample_image.read_bytes()[: rng.randrange(1, 4000)],
            png_header_only(rng.randrange(1, 10**6), rng.randrange(1, 10**6)),
            image_bytes(shape_image("green", "circle"), rng.choice(["PNG", "JPEG", "GIF"])),
        ]
        request["files"] = {
            rng.choice(["file", "file", "other"]): (
                rng.choice(["x.png", "", "../../x", "a\u00e9.jpg"]),
                rng.choice(payloads),
                rng.choice(["image/png", "image/jpeg", "text/plain", "", "application/x-evil"]),
            )
        }
        if rng.random() < 0.5:
            request["data"] = {"k": str(_random_json(rng))[:50]}
    elif body_kind == 3:
        request["content"] = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n" + (
            rng.randbytes(rng.randrange(0, 500))
        )
    if rng.random() < 0.6 and "files" not in request:
        request["headers"]["content-type"] = rng.choice(
            [
                "application/json",
                "multipart/form-data",
                "multipart/form-data; boundary=b",
                "multipart/form-data; boundary=",
                "text/plain",
                "image/png",
                "application/x-www-form-urlencoded",
                "application/json; charset=latin-1",
                "garbage/\x7f",
                "",
            ]
        )
    if rng.random() < 0.2:
        request["headers"]["accept"] = rng.choice(["*/*", "text/html", "application/xml", "\x01"])
    return request


def test_fuzzed_requests_never_get_a_500(
    make_client: ClientFactory, backend: ServiceBackend
) -> None:
    client = make_client(raise_server_exceptions=False, max_upload_bytes=SMALL_UPLOAD)
    rng = random.Random(20240601)
    statuses: dict[int, int] = {}
    sent = 0
    for _ in range(300):
        request = _random_request(rng, backend)
        try:
            response = client.request(**request)
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError, ValueError):
            continue  # the client itself refused to send it
        sent += 1
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (request, response.status_code, response.text[:300])
        if response.status_code >= 400 and request["method"] != "HEAD":
            assert "detail" in response.json(), (request, response.text[:300])
    assert sent > 250, sent
    assert client.get("/health").status_code == 200
    assert any(400 <= s < 500 for s in statuses) and 200 in statuses, statuses


# --------------------------------------------------------------------------- over a real socket


def _raw_http(base_url: str, raw: bytes, read_timeout: float = 10.0) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):  # every request says Connection: close
            data += chunk
        return data


def test_over_the_wire_traversal_and_early_413(backend: ServiceBackend) -> None:
    app = create_app(Settings(max_upload_bytes=SMALL_UPLOAD), backend.encoders, backend.index)
    with uvicorn_in_thread(app) as base_url:
        for target in (
            b"/images/../manifest.json",
            b"/images/shapes/../../manifest.json",
            b"/images/%2e%2e/manifest.json",
            b"/images/..%2F..%2Fetc%2Fpasswd",
        ):
            answer = _raw_http(
                base_url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:200])
        # A declared length over the bound is answered before a byte of the body is sent.
        answer = _raw_http(
            base_url,
            b"POST /search/image HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"VSEPP_MAX_UPLOAD_BYTES" in answer
        with httpx.Client(base_url=base_url) as http:
            assert http.get("/health").status_code == 200


def test_blocking_load_fails_the_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSEPP_MODEL_DIR", raising=False)
    app = create_app(Settings(model_dir=None, load_in_background=False))
    with pytest.raises(RuntimeError, match="VSEPP_MODEL_DIR"), TestClient(app):
        pass


def test_blocking_load_is_ready_at_once(
    backend: ServiceBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.state

    monkeypatch.setattr(
        service.state, "load_objects", lambda *args: (backend.encoders, backend.index)
    )
    monkeypatch.setattr(service.state, "warm_up", lambda encoders: None)
    app = create_app(Settings(model_dir=Path("/m"), index_dir=Path("/i"), load_in_background=False))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200


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
