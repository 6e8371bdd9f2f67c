"""GET /images/{image_id} (service/routes/images.py): indexed images served with their
type, and anything else (traversal in every encoding) a 404, through TestClient and a
real socket.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings
from service.main import create_app
from tests.service_helpers import (
    SMALL_UPLOAD,
    ServiceBackend,
    uvicorn_in_thread,
)

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
