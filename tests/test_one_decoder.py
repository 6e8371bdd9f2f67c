"""One decoder for image files: a file embeds the same whether indexed, evaluated or uploaded.

On the real tiny demo model: the indexing path (`vsepp.embed.embed_images` reading the file),
an upload to a real uvicorn (`POST /embed/image`) and the training pipeline's evaluation view
of the file all go through `vsepp.images`, so they agree for every kind of file a user has.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.main import create_app
from tests.image_files import photo, quirky_images
from tests.service_helpers import uvicorn_in_thread
from vsepp.embed import embed_images
from vsepp.model_dir import Encoders, load_encoders

KINDS = [
    "baseline.jpg",
    "progressive.jpg",
    "exif-rotated.jpg",
    "photo.png",
    "rgba.png",
    "grayscale.jpg",
    "cmyk.jpg",
    "photo.webp",
    "palette.png",
    "sixteen-bit.png",
    "animated.gif",
    "photo.bmp",
    "photo.tiff",
    # Large enough for the demo model's decoder (resize 64) to read them at a DCT scale:
    "large.jpg",  # by TensorFlow's decode_jpeg(ratio=4)
    "large-rotated.jpg",  # by PIL's draft, then upright, as a PNG
]


def _large_jpegs() -> dict[str, bytes]:
    picture = photo(640, 480, seed=3)
    plain, rotated = io.BytesIO(), io.BytesIO()
    picture.save(plain, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.transpose(Image.Transpose.ROTATE_90).save(rotated, "JPEG", quality=90, exif=exif)
    return {"large.jpg": plain.getvalue(), "large-rotated.jpg": rotated.getvalue()}


@pytest.fixture(scope="module")
def encoders(demo_model_dir: Path) -> Encoders:
    return load_encoders(demo_model_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    made = {**quirky_images(), **_large_jpegs()}
    for name in KINDS:
        out[name] = root / name
        out[name].write_bytes(made[name])
    return out


def test_uploaded_and_indexed_files_embed_alike(
    encoders: Encoders, files: dict[str, Path], demo_index_dir: Path
) -> None:
    from index import load_index

    indexed, kept, skipped = embed_images(encoders, KINDS, [files[k] for k in KINDS])
    assert skipped == [] and kept == list(range(len(KINDS)))
    app = create_app(Settings(), encoders, load_index(demo_index_dir))
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        for row, name in enumerate(KINDS):
            answer = client.post("/embed/image", files={"file": (name, files[name].read_bytes())})
            assert answer.status_code == 200, (name, answer.text)
            uploaded = np.asarray(answer.json()["vectors"][0], np.float32)
            cosine = float(uploaded @ indexed[row]) / float(
                np.linalg.norm(uploaded) * np.linalg.norm(indexed[row])
            )
            assert cosine >= 0.9999, (name, cosine)


def test_exif_orientation_is_applied_everywhere(encoders: Encoders, tmp_path: Path) -> None:
    # A file stored sideways with an EXIF "rotate 90°" tag is the upright picture: it embeds
    # as the same picture saved upright, not as its stored pixels.
    upright = photo(64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns the stored pixels 90° clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    (tmp_path / "tagged.png").write_bytes(buffer.getvalue())
    upright.save(tmp_path / "upright.png")
    stored.save(tmp_path / "stored.png")
    names = ["tagged.png", "upright.png", "stored.png"]
    vectors, _, _ = embed_images(encoders, names, [tmp_path / n for n in names])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)
    assert float(vectors[0] @ vectors[2]) < 0.9999


def test_training_sees_the_pixels_serving_sees(files: dict[str, Path]) -> None:
    import tensorflow as tf

    from training.images import ImageConfig, eval_view
    from training.pipeline import image_eval_dataset
    from vsepp.datasets import SplitData
    from vsepp.images import read_image_file

    cfg = ImageConfig(image_size=48, resize_size=56, preprocess="unit", hflip=False)
    names = ["exif-rotated.jpg", "rgba.png", "cmyk.jpg", "photo.webp", "animated.gif",
             "large.jpg", "large-rotated.jpg"]  # fmt: skip
    split = SplitData("test", names, [files[n] for n in names], ["a caption"] * 5 * len(names))
    batch = next(iter(image_eval_dataset(split, cfg, batch_size=len(names))))["image"].numpy()
    for row, name in enumerate(names):
        canonical = tf.constant(read_image_file(files[name], min_side=cfg.resize_size))
        expected = eval_view(canonical, cfg)
        np.testing.assert_array_equal(batch[row], expected.numpy(), err_msg=name)
