"""GET /health (service/routes/health.py) and the loading it reports: 503 while the
model and index load, the reason when loading failed, a blocking load.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.service_helpers import (
    CountingEncoders,
    ServiceBackend,
    detail_text,
)

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
