"""The demo pipeline end to end through docker/entrypoint.sh, as `make demo` and Docker run it:
demo data -> train -> index -> a real server answering over HTTP; then again, skipping."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.service_helpers import LiveServer, free_port, serve_subprocess

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _env(tmp: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DATA_DIR": str(tmp / "data"),
        "RUN_DIR": str(tmp / "run"),
        "INDEX_DIR": str(tmp / "index"),
        "DEMO_TRAIN": "150",
        "DEMO_VAL": "30",
        "DEMO_TEST": "30",
        "EPOCHS": "1",
        "BATCH_SIZE": "50",
        "PORT": str(port),
        "VSEPP_LOAD_IN_BACKGROUND": "0",
    }


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post_image(url: str, data: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n'.encode())
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
    )
    body.write(data + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(
        url,
        data=body.getvalue(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _serve_all(tmp: Path, timeout_s: float) -> contextlib.AbstractContextManager[LiveServer]:
    """`entrypoint.sh all` (demo data, train, index, serve) until it serves; stopped, with
    whatever stage it was in, when the block ends."""
    port = free_port()
    command = ["bash", str(ENTRYPOINT), "all"]
    return serve_subprocess(command, port=port, log=tmp / f"entrypoint-{port}.log",
                            env=_env(tmp, port), timeout_s=timeout_s)  # fmt: skip


@pytest.mark.slow
def test_demo_pipeline_serves_searches_then_restarts_without_rebuilding(tmp_path: Path) -> None:
    with _serve_all(tmp_path, timeout_s=600) as server:
        base = server.base_url
        health = _get_json(f"{base}/health")
        assert health["status"] == "ok"
        query = (tmp_path / "data" / "Flickr8k.token.txt").read_text().splitlines()
        test_ids = (tmp_path / "data" / "Flickr_8k.testImages.txt").read_text().split()
        caption = next(line.split("\t")[1] for line in query if line.startswith(test_ids[0]))
        text = _get_json(f"{base}/search/text?q={urllib.request.quote(caption)}&k=5")
        assert len(text["results"]) == 5
        assert all(r["image_id"] in test_ids for r in text["results"])
        image = (tmp_path / "data" / "Flicker8k_Dataset" / test_ids[0]).read_bytes()
        caps = _post_image(f"{base}/search/image", image)
        assert len(caps["results"]) == 5
        scores = [r["score"] for r in caps["results"]]
        assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "run" / "test_metrics.json").is_file()

    # The second start finds every stage's output valid and only serves.
    with _serve_all(tmp_path, timeout_s=120) as server:
        assert _get_json(f"{server.base_url}/health")["status"] == "ok"
    text_log = server.log.read_text()
    for stage in ("demo-data", "train", "index"):
        lines = [x for x in text_log.splitlines() if x.startswith(f"[entrypoint] {stage}:")]
        assert lines and all("skipped" in x for x in lines), text_log[-2000:]
    assert "training.train" not in text_log


def test_entrypoint_refuses_an_unknown_stage_and_dataset(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port())
    bad = subprocess.run(["bash", str(ENTRYPOINT), "deploy"], env=env, capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "usage" in bad.stderr
    bad = subprocess.run(["bash", str(ENTRYPOINT), "train"], env={**env, "DATASET": "mnist"},
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "DATASET must be" in bad.stderr
    missing = subprocess.run(["bash", str(ENTRYPOINT), "train"],
                             env={**env, "DATASET": "flickr8k"}, capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert missing.returncode != 0 and "no dataset" in missing.stderr
