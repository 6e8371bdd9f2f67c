"""An imported model (the fixture's) indexes a photo folder and answers over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.original_fixture import FIXTURE_CAPTIONS, fixture_images
from tests.service_helpers import free_port
from tests.test_import_original import LEGACY, VOCAB
from tests.test_service_e2e import REPO, _wait_healthy

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "original"


def test_imported_model_indexes_a_folder_and_serves_text_search(tmp_path: Path) -> None:
    from PIL import Image

    from index.build import main as build_main
    from training.import_original import main as import_main

    model, index, photos = tmp_path / "model", tmp_path / "index", tmp_path / "photos"
    argv = ["--checkpoint", str(LEGACY), "--vocab", str(VOCAB), "--save_model_path", str(model)]
    assert import_main(argv) == 0
    photos.mkdir()
    for i, im in enumerate(fixture_images()):
        Image.fromarray(im).save(photos / f"im{i}.png")
    # float32: the scores are compared with torch's float32 ones to 1e-4 below (the default,
    # auto, is bfloat16 on a CPU with AVX512_BF16 or AMX).
    argv = ["--model_dir", str(model), "--images_dir", str(photos), "--index_dir", str(index),
            "--precision", "float32"]  # fmt: skip
    assert build_main(argv) == 0

    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSEPP_")}
    env.update(PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
               "--model_dir", str(model), "--index_dir", str(index)]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, process, log)
        reply = httpx.post(
            f"{base_url}/search/text", json={"query": FIXTURE_CAPTIONS[1], "k": 6}, timeout=60
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 6
    # The scores are the original's: torch's image and caption embeddings, dotted.
    ref = np.load(DATA / "reference.npz")
    expected = ref["images"] @ ref["captions"][1]
    for r in results:
        assert r["score"] == pytest.approx(float(expected[int(r["image_id"][2:-4])]), abs=1e-4)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
