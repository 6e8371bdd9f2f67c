"""/embed/* (service/routes/embed.py): text and image embeddings and their checks.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.schemas import EmbedResponse
from tests.service_helpers import (
    ServiceBackend,
    body_of,
    detail_text,
    sample_upload,
)

# --------------------------------------------------------------------------- embeddings


def test_embed_text(client: TestClient, backend: ServiceBackend) -> None:
    texts = [backend.known_query, "zzxqj"]
    response = client.post("/embed/text", json={"texts": texts})
    body = body_of(EmbedResponse, response)
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
    body = body_of(EmbedResponse, response)
    # The uploaded file embeds as it did when it was indexed: one decoder for both.
    row = backend.index.image_row(backend.sample_image.name)
    indexed = backend.index.vectors("images")[row]
    np.testing.assert_allclose(np.array(body["vectors"][0]), indexed, atol=1e-5)
    assert body["dim"] == backend.encoders.embed_dim
