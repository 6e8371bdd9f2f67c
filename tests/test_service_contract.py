"""The HTTP contract against a real `python -m service` on 127.0.0.1 (real demo model and
index): schemathesis over /openapi.json finds nothing, a client that writes its whole body
before reading gets its 413, and several workers serve one health and one set of metrics.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_helpers import free_port, serve_subprocess, service_command, service_env

pytestmark = pytest.mark.slow

SCHEMATHESIS_CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"
# Bounded: examples per operation and a time budget for the whole run.
MAX_EXAMPLES = 60
MAX_SECONDS = 240
ADMIN_TOKEN = "contract-test-token"


@contextlib.contextmanager
def service(model_dir: Path, index_dir: Path, log: Path, *args: str, **env: str) -> Iterator[str]:
    """`python -m service` on a free 127.0.0.1 port until the block ends; yields its base
    URL once /health said 200."""
    port = free_port()
    command = service_command(port, model_dir, index_dir, *args)
    with serve_subprocess(command, port=port, log=log, env=service_env(**env)) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def demo_dirs(demo_model_dir: Path, demo_index_dir: Path) -> tuple[Path, Path]:
    return demo_model_dir, demo_index_dir


@pytest.fixture(scope="module")
def live(demo_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("contract") / "server.log"
    # Admin on: schemathesis sends the token, so POST /admin/reload really reloads.
    admin = {"VSEPP_ADMIN_TOKEN": ADMIN_TOKEN}
    model_dir, index_dir = demo_dirs
    with service(model_dir, index_dir, log, "--log-level", "warning", **admin) as base_url:
        yield base_url


# --------------------------------------------------------------------------- schemathesis


def test_schemathesis_finds_no_failure_and_no_server_error(live: str, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(SCHEMATHESIS_CONFIG),
        "run", f"{live}/openapi.json",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES), "--seed", "20261130",
        "--generation-database", "none", "--request-timeout", "30", "--workers", "1",
        "--report", "junit", "--report-junit-path", str(junit), "--no-color",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=MAX_SECONDS + 120, cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    assert "No issues found" in output, output[-4000:]
    # Every operation of the schema was exercised, in every phase asked for.
    tested = re.search(r"Tested:\s+(\d+)", output)
    selected = re.search(r"Selected:\s+(\d+)/(\d+)", output)
    assert tested and selected, output[-2000:]
    assert int(tested.group(1)) == int(selected.group(2)) >= 11, output[-2000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, (phase, output[-3000:])
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert cases and int(cases.group(1)) == int(cases.group(2)) > 500, output[-2000:]
    suites = ET.parse(junit).getroot()
    failures = sum(
        int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites.iter("testsuite")
    )
    assert failures == 0


def test_the_schema_says_what_the_server_enforces(live: str) -> None:
    doc = httpx.get(f"{live}/openapi.json").json()
    k = doc["components"]["schemas"]["TextSearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 100)  # VSEPP_MAX_K's default
    texts = doc["components"]["schemas"]["EmbedTextRequest"]["properties"]["texts"]
    assert texts["minItems"] == 1 and texts["items"]["minLength"] == 1
    assert "400" in doc["paths"]["/search/text"]["post"]["responses"]
    with httpx.Client(base_url=live) as http:
        assert http.post("/search/text", json={"query": "a dog", "k": 101}).status_code == 422
        assert http.post("/search/text", json={"query": "a dog", "k": 100}).status_code == 200
        refused = http.delete("/search/text")
        assert refused.status_code == 405
        assert set(refused.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


# --------------------------------------------------------------------------- 413


def _multipart(size: int) -> tuple[bytes, bytes, str]:
    boundary = "vsepp-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, f"multipart/form-data; boundary={boundary}"


def _post_with_http_client(base_url: str, size: int, chunked: bool) -> tuple[int, dict[str, str]]:
    """POST an upload of `size` bytes with http.client, which writes the whole body before
    it reads a byte of the answer."""
    head, tail, content_type = _multipart(size)
    block = b"\x89PNG" + b"\0" * (1024 * 1024 - 4)

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            sent += len(piece)
            yield piece
        yield tail

    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"Content-Type": content_type}
        if chunked:
            connection.request(
                "POST", "/search/image", body=body(), headers=headers, encode_chunked=True
            )
        else:
            headers["Content-Length"] = str(len(head) + size + len(tail))
            connection.request("POST", "/search/image", body=body(), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_413_reaches_a_client_that_writes_its_whole_body_first(live: str, chunked: bool) -> None:
    # 60 MB against the default VSEPP_MAX_UPLOAD_BYTES of 10 MB.
    status, body = _post_with_http_client(live, 60 * 1024 * 1024, chunked)
    assert status == 413, body
    assert "VSEPP_MAX_UPLOAD_BYTES" in body["detail"]
    assert httpx.get(f"{live}/health").status_code == 200


# --------------------------------------------------------------------------- workers


def _counter_pids(metrics_dir: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}


def _requests_counted(metrics_text: str, endpoint: str) -> float:
    pattern = (
        r'^vsepp_http_requests_total\{endpoint="' + re.escape(endpoint)
        + r'",method="POST",status="200"\} ([0-9.e+]+)$'
    )  # fmt: skip
    found = re.search(pattern, metrics_text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_workers_each_load_before_200_and_metrics_add_up(
    demo_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with service(
        *demo_dirs, tmp_path / "server.log", "--workers", "2", "--log-level", "warning",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    ) as base_url:  # fmt: skip
        # Each new connection may land on either worker: every one answers 200 only once
        # its own model and index are in, so ask until a run of answers is all 200.
        in_a_row = 0
        for _ in range(400):
            if in_a_row >= 20:
                break
            answer = httpx.get(f"{base_url}/health", timeout=10)
            in_a_row = in_a_row + 1 if answer.status_code == 200 else 0
            if answer.status_code != 200:
                assert answer.status_code == 503 and answer.json()["status"] == "loading"
                time.sleep(0.25)
        assert in_a_row >= 20
        sent = 0
        # Until both workers have served (each writes its own files), bounded.
        while sent < 400 and (sent < 20 or len(_counter_pids(metrics_dir)) < 2):
            found = httpx.post(f"{base_url}/search/text", json={"query": "a red square"})
            assert found.status_code == 200, found.text
            sent += 1
        assert len(_counter_pids(metrics_dir)) == 2, sorted(metrics_dir.iterdir())
        # Whichever worker answers /metrics, it counts the requests of both.
        for _ in range(4):
            metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
            assert _requests_counted(metrics, "/search/text") == sent
