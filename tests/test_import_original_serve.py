"""An imported model (the fixture's) indexes a photo folder and answers over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.original_fixture import FIXTURE_CAPTIONS, fixture_images
from tests.service_helpers import free_port, serve_subprocess, service_command
from tests.test_import_original import LEGACY, VOCAB

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
    command = service_command(port, model, index)
    with serve_subprocess(command, port=port, log=tmp_path / "server.log") as server:
        reply = httpx.post(
            f"{server.base_url}/search/text",
            json={"query": FIXTURE_CAPTIONS[1], "k": 6},
            timeout=60,
        )
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
