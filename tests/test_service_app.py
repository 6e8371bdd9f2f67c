"""The app as a whole, across its routers: body limits (service/middleware.py), the access
log, CORS, settings from the environment, the OpenAPI document, fuzzing.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import string
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.main import create_app
from tests.image_files import png_header_only
from tests.service_helpers import (
    SMALL_UPLOAD,
    ClientFactory,
    ServiceBackend,
    detail_text,
    image_bytes,
    sample_upload,
    shape_image,
)

# --------------------------------------------------------------------------- body limits


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


# ------------------------------------------------------------ access log, docs, CORS, settings


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
