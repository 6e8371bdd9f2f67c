"""Shared pieces of the service tests: the backend they run against, image makers, servers.

The backend is the real tiny demo model and its index (`demo_model_dir`, `demo_index_dir`
in tests/conftest.py), loaded with vsepp.model_dir and index.store.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import httpx
    from fastapi.testclient import TestClient
    from pydantic import BaseModel

# Builds an app with settings overrides (and optional encoders, index) and enters a
# TestClient on it: the `make_client` fixture in tests/conftest.py.
ClientFactory = Callable[..., "TestClient"]
# An upload bound small enough to pass in a test, big enough for the sample images.
SMALL_UPLOAD = 200_000

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180.0

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}

# --------------------------------------------------------------------------- wrappers


class CountingEncoders:
    """Wraps any Encoders: counts encode_texts calls and their sizes, can slow them down."""

    def __init__(self, inner: Any, text_delay_s: float = 0.0) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.embed_dim = inner.embed_dim
        self.model_hash = inner.model_hash
        self.text_delay_s = text_delay_s
        self.text_batches: list[int] = []
        self._lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.text_batches.append(len(texts))
        if self.text_delay_s:
            time.sleep(self.text_delay_s)
        result: tuple[np.ndarray, np.ndarray] = self.inner.encode_texts(texts)
        return result

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.asarray(self.inner.encode_image_bytes(blobs))


# --------------------------------------------------------------------------- pictures


def shape_image(colour: str, shape: str, size: int = 64) -> Image.Image:
    """A coloured square or circle on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.ellipse(box, fill=COLOURS[colour])
    return image


def image_bytes(image: Image.Image, fmt: str, **save: Any) -> bytes:
    """`image` encoded as `fmt` (PIL format name)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


# --------------------------------------------------------------------------- backends


@dataclass
class ServiceBackend:
    """What the service tests run against."""

    encoders: Any
    index: Any
    index_dir: Path
    model_dir: Path | None
    known_query: str  # a query whose words the model knows
    sample_image: Path  # an indexed image file, for uploads


def demo_backend(model_dir: Path, index_dir: Path) -> ServiceBackend:
    """The real exported model and its index."""
    from index.store import load_index
    from vsepp.model_dir import load_encoders

    encoders = load_encoders(model_dir, "auto")  # as the service loads it (VSEPP_PRECISION)
    index = load_index(index_dir, expected_model_hash=encoders.model_hash)
    sample = next(
        (p for p in (index.image_file(i) for i in index.image_ids) if p is not None), None
    )
    assert sample is not None, f"{index_dir} holds no image files"
    return ServiceBackend(
        encoders=encoders,
        index=index,
        index_dir=Path(index_dir),
        model_dir=Path(model_dir),
        known_query=index.captions[0],
        sample_image=sample,
    )


def sample_upload(backend: ServiceBackend) -> dict[str, tuple[str, bytes, str]]:
    """The backend's sample image as the `files` of a multipart upload."""
    return {"file": (backend.sample_image.name, backend.sample_image.read_bytes(), "image/png")}


def detail_text(response: httpx.Response) -> str:
    """The `detail` of an error answer as one string (FastAPI's list or our sentence)."""
    body = response.json()
    assert "detail" in body, body
    detail = body["detail"]
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
    assert isinstance(detail, str)
    return detail


def body_of(model: type[BaseModel], response: httpx.Response) -> dict[str, Any]:
    """A 200 answer's JSON body, checked to be exactly what `model` (the OpenAPI schema's)
    would write: every field there, none else, each value as the model renders it. The
    routes build their bodies as plain dicts (service/responses.py), so this is the check
    that a dict and its model agree."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert model.model_validate(body).model_dump(mode="json") == body
    return body


# --------------------------------------------------------------------------- live servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def hammer_text_search(
    base: str,
    stop: threading.Event,
    answers: list[list[str]],
    errors: list[str],
    *,
    k: int = 5,
    limit: int = 400,
) -> None:
    """Search `base` for one sentence until `stop` (at most `limit` times), keeping the
    image ids of each answer in `answers` and every failure in `errors`."""
    import httpx

    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(limit):
            if stop.is_set():
                return
            try:
                r = client.post("/search/text", json={"query": "a red square", "k": k})
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
            else:
                answers.append([x["image_id"] for x in r.json()["results"]])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_healthy(client: Any, timeout_s: float = 180.0) -> dict[str, Any]:
    """The body of the first 200 from GET /health within `timeout_s` (an httpx.Client)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = client.get("/health")
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server never became ready")


# --------------------------------------------------------------------------- server processes


@dataclass
class LiveServer:
    """A server process started by `serve_subprocess`, healthy."""

    base_url: str
    process: subprocess.Popen[bytes]
    log: Path  # its stdout and stderr


def service_command(port: int, model_dir: Path, index_dir: Path, *args: str) -> list[str]:
    """`python -m service` on 127.0.0.1:`port` serving `model_dir` and `index_dir`."""
    return [
        sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
        "--model_dir", str(model_dir), "--index_dir", str(index_dir), *args,
    ]  # fmt: skip


def service_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's VSEPP_ settings, quiet and unbuffered, plus
    `extra`; the repository first on the path (its workers are spawned, not forked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSEPP_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _wait_process_healthy(base_url: str, process: subprocess.Popen[bytes], log: Path,
                          timeout_s: float) -> None:  # fmt: skip
    """Until GET /health says 200; fails at once if the process ends or loading failed."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{base_url}/health", timeout=2.0)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
            if response.json().get("status") == "error":
                raise AssertionError(f"loading failed: {last}\n{log.read_text()}")
        time.sleep(0.25)
    raise AssertionError(f"not healthy after {timeout_s}s ({last}):\n{log.read_text()[-8000:]}")


@contextlib.contextmanager
def serve_subprocess(
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[LiveServer]:
    """Run `command` (a server on 127.0.0.1:`port`, e.g. `service_command(...)`) from the
    repository, its output in `log`, and yield it once GET /health says 200.

    On leaving: SIGTERM to the process, which stops its workers itself; whatever is left
    of its process group 30 s later (a stage a shell script was running) is killed."""
    with log.open("ab") as sink:
        process = subprocess.Popen(
            list(command), cwd=REPO, env=dict(env if env is not None else service_env()),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_process_healthy(f"http://127.0.0.1:{port}", process, log, timeout_s)
        yield LiveServer(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
