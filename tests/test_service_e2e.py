"""End to end: `python -m service` as a real uvicorn process, real model, real index, HTTP.

The model and index are the session's demo fixtures (`demo_model_dir`, `demo_index_dir`
in tests/conftest.py), trained and built by the real programs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_helpers import (
    LiveServer,
    free_port,
    image_bytes,
    serve_subprocess,
    service_command,
    service_env,
    shape_image,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_dirs(demo_model_dir: Path, demo_index_dir: Path) -> tuple[Path, Path]:
    return demo_model_dir, demo_index_dir


@pytest.fixture(scope="module")
def server(
    real_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("e2e-log") / "server.log"
    env = service_env(VSEPP_BATCH_WINDOW_MS="2")
    with serve_subprocess(service_command(port, *real_dirs), port=port, log=log, env=env) as live:
        yield live


def test_both_searches_over_http(server: LiveServer, real_dirs: tuple[Path, Path]) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60.0) as http:
        health = http.get("/health").json()
        assert health["status"] == "ok"
        assert health["index"]["model_hash"] == health["model"]["model_hash"]

        text = http.post("/search/text", json={"query": "a red square", "k": 5})
        assert text.status_code == 200, text.text
        body = text.json()
        assert len(body["results"]) == 5 and body["known_words"] > 0
        scores = [r["score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.001 <= s <= 1.001 for s in scores)
        linked = http.get("/search/text", params={"q": "a red square", "k": 5}).json()
        assert [r["image_id"] for r in linked["results"]] == [
            r["image_id"] for r in body["results"]
        ]
        image = http.get(body["results"][0]["image_url"])
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")

        unknown = http.get("/search/text", params={"q": "zzxqj vrrbk"}).json()
        assert unknown["no_known_words"] is True and unknown["results"] == []

        for fmt, content_type in (
            ("PNG", "image/png"),
            ("JPEG", "image/jpeg"),
            ("GIF", "image/gif"),
        ):
            upload = image_bytes(shape_image("blue", "circle", size=90), fmt)
            found = http.post(
                "/search/image",
                files={"file": (f"q.{fmt.lower()}", upload, content_type)},
                data={"k": "4"},
            )
            assert found.status_code == 200, found.text
            results = found.json()["results"]
            assert len(results) == 4
            assert [r["score"] for r in results] == sorted(
                (r["score"] for r in results), reverse=True
            )

        bad = http.post("/search/image", files={"file": ("x.png", b"nope", "image/png")})
        assert bad.status_code == 400 and "detail" in bad.json()

        embedded = http.post("/embed/text", json={"texts": ["a red square"]}).json()
        assert embedded["dim"] == health["model"]["embed_dim"]

        metrics = http.get("/metrics").text
        assert 'endpoint="/search/text",method="POST",status="200"' in metrics
        assert 'stage="encode"' in metrics

    log = server.log.read_text()
    assert '"endpoint": "/search/image"' in log  # one structured line per request
