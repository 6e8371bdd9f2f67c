"""GET / and GET /metrics (service/routes/page.py): the self-contained page, and requests
counted by route template.

The service runs on the session's tiny demo model and its index (tests/conftest.py);
the `backend`, `make_client` and `client` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.routes.page import PAGE_PATH
from tests.service_helpers import (
    ServiceBackend,
    sample_upload,
)

# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- page


def test_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert html == PAGE_PATH.read_text(encoding="utf-8")
    for element in ("query", "k", "results", "upload", "captions", "error", "dropzone", "preview",
                    "filters", "folder", "sort", "collapse"):  # fmt: skip
        assert f'id="{element}"' in html
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert 'src="//' not in lowered and "@import" not in lowered
