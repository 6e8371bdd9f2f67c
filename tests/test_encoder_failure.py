"""A failure that is not the file's (the graph, a kernel, memory) stops build, add and query
with the error named and nothing written; only a file the decoder rejects is skipped."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from index import add, build, query
from tests.model_helpers import export_untrained
from vsepp import model_dir
from vsepp.model_dir import Encoders


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained(tmp_path_factory.mktemp("failure-model") / "m")


def _photos(folder: Path, n: int, seed: int, prefix: str = "p") -> Path:
    """n small JPEGs, and one truncated (a bad file the decoder rejects)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 255, (48, 64, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{prefix}{i}.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(buf, "JPEG")
    (folder / f"{prefix}-truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return folder


def _assert_fails(inner: Any) -> Any:
    """A graph that runs the real encoder, then fails at an Assert node (InvalidArgumentError,
    but not a decoder's: the file is not to blame)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def broken(blobs: tf.Tensor) -> tf.Tensor:
        out = inner(blobs)
        tf.debugging.assert_less(tf.shape(out)[0], 0, message="forced graph failure")
        return out

    return broken


def _out_of_memory(inner: Any) -> Any:
    """A graph that asks for 4 TiB per image: TensorFlow's own ResourceExhaustedError."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def broken(blobs: tf.Tensor) -> tf.Tensor:
        huge = tf.zeros(tf.cast(tf.size(blobs), tf.int64) * 2**40, tf.float32)
        return inner(blobs) + tf.reduce_sum(huge)

    return broken


FAILURES = {
    "graph": (_assert_fails, "InvalidArgumentError"),
    "oom": (_out_of_memory, "ResourceExhaustedError"),
}


@pytest.fixture(params=sorted(FAILURES))
def failing(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], str]]:
    """Turns on (when called) an image encoder whose graph fails; returns the error's name."""
    wrap, name = FAILURES[request.param]
    real_init = Encoders.__init__

    def on() -> str:
        def init(self: Encoders, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            self._encode_bytes = wrap(self._encode_bytes)

        monkeypatch.setattr(model_dir.Encoders, "__init__", init)
        return name

    yield on


def _stopped(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, rc: int, name: str
) -> None:
    err = capsys.readouterr().err
    assert rc == 1, err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert name in line and "not because of the files" in line, line
    # No good image was filed as a bad one (only the truncated file may be, before the stop).
    said = [r.getMessage() for r in caplog.records]
    assert not [x for x in said if "skipping image" in x and "truncated" not in x]
    caplog.clear()


def test_a_bad_file_is_skipped_and_the_build_goes_on(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", 4, 0)
    out = tmp_path / "index"
    assert build.main(["--model_dir", str(model), "--images_dir", str(photos),
                       "--out", str(out)]) == 0  # fmt: skip
    assert "4 images embedded" in capsys.readouterr().out


def test_an_encoder_failure_stops_build_add_and_query(
    model: Path,
    tmp_path: Path,
    failing: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    photos = _photos(tmp_path / "photos", 4, 1)
    kept = tmp_path / "kept"
    assert build.main(["--model_dir", str(model), "--images_dir", str(photos),
                       "--out", str(kept)]) == 0  # fmt: skip
    before = {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()}
    capsys.readouterr()
    name = failing()

    out = tmp_path / "index"
    rc = build.main(["--model_dir", str(model), "--images_dir", str(photos),
                     "--out", str(out)])  # fmt: skip
    _stopped(capsys, caplog, rc, name)
    assert not out.exists()

    more = _photos(tmp_path / "more", 3, 2, prefix="q")
    rc = add.main(["--index_dir", str(kept), "--model_dir", str(model),
                   "--images_dir", str(more)])  # fmt: skip
    _stopped(capsys, caplog, rc, name)
    assert {p.name: p.read_bytes() for p in kept.iterdir() if p.is_file()} == before

    rc = query.main(["--index_dir", str(kept), "--model_dir", str(model),
                     "--image", str(photos / "p0.jpg")])  # fmt: skip
    _stopped(capsys, caplog, rc, name)


def test_the_server_answers_an_encoder_failure_with_500_naming_it(
    model: Path, tmp_path: Path, failing: Callable[[], str]
) -> None:
    """An upload the encoder fails on (not the file's fault): 500 naming the error, over a
    real uvicorn, and the server goes on answering."""
    import httpx

    from index.store import load_index
    from service.config import Settings
    from service.main import create_app
    from tests.service_helpers import uvicorn_in_thread

    photos = _photos(tmp_path / "photos", 3, 3)
    index = tmp_path / "index"
    assert build.main(["--model_dir", str(model), "--images_dir", str(photos),
                       "--out", str(index)]) == 0  # fmt: skip
    name = failing()
    app = create_app(Settings(), model_dir.load_encoders(model), load_index(index))
    upload = (photos / "p0.jpg").read_bytes()
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        answer = client.post("/embed/image", files={"file": ("p0.jpg", upload)})
        assert answer.status_code == 500, answer.text
        detail = answer.json()["detail"]
        assert name in detail and "not because of the request" in detail, detail
        assert client.get("/health").status_code == 200
        assert client.post("/search/text", json={"query": "a photo", "k": 2}).status_code == 200
