"""`--precision bfloat16`: the image encoder's matrix ops in bfloat16, vectors that agree
with float32 (cosine >= 0.999) and retrieval that does too (R@K within 0.5 points)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import build
from index.evaluate import main as evaluate_main
from index.faiss_index import exact_vectors
from index.store import load_index
from tests.conftest import demo_flags
from tests.model_helpers import export_untrained
from vsepp.images import read_image_file
from vsepp.model_dir import load_encoders


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained(tmp_path_factory.mktemp("precision-model") / "m")


def _demo_test_images(data: Path) -> list[bytes]:
    names = (data / "Flickr_8k.testImages.txt").read_text().split()
    return [read_image_file(data / "Flicker8k_Dataset" / name) for name in names]


def test_bfloat16_vectors_agree_with_float32(model: Path, demo_data_dir: Path) -> None:
    blobs = _demo_test_images(demo_data_dir)
    f32 = load_encoders(model).encode_image_bytes(blobs)
    bf16_encoders = load_encoders(model, "bfloat16")
    bf16 = bf16_encoders.encode_image_bytes(blobs)
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (np.sum(f32 * bf16, axis=1) >= 0.999).all()
    # It really ran in bfloat16: float32 would give these vectors to the last bit.
    assert not np.array_equal(f32, bf16)
    arrays = np.stack([np.full((40, 50, 3), 40 * i, np.uint8) for i in range(1, 4)])
    a = load_encoders(model).encode_image_arrays(arrays)
    b = bf16_encoders.encode_image_arrays(arrays)
    assert (np.sum(a * b, axis=1) >= 0.999).all() and not np.array_equal(a, b)


def test_an_unknown_precision_is_refused(model: Path) -> None:
    with pytest.raises(ValueError, match="precision 'float16'"):
        load_encoders(model, "float16")


def test_build_records_its_precision(model: Path, demo_data_dir: Path, tmp_path: Path) -> None:
    argv = [*demo_flags(demo_data_dir), "--model_dir", str(model),
            "--imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--precision", "bfloat16", "--out", str(tmp_path / "index")]  # fmt: skip
    assert build.main(argv) == 0
    assert load_index(tmp_path / "index").manifest["model"]["precision"] == "bfloat16"


def test_bfloat16_recall_is_float32s(
    demo_model_dir: Path, demo_index_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    """On the trained demo model: an index embedded in bfloat16 ranks as the float32 one."""
    out = tmp_path / "bf16-index"
    argv = [*demo_flags(demo_data_dir), "--model_dir", str(demo_model_dir),
            "--imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--precision", "bfloat16", "--out", str(out)]  # fmt: skip
    assert build.main(argv) == 0
    metrics = {}
    for name, index in (("float32", demo_index_dir), ("bfloat16", out)):
        path = tmp_path / f"{name}.json"
        assert evaluate_main(["--index", str(index), "--metrics_out", str(path)]) == 0
        metrics[name] = json.loads(path.read_text())
    # Shown with `pytest -s`: the figures benchmarks/README.md records.
    print({p: {w: [m[w][k] for k in ("r1", "r5", "r10")] for w in ("i2t", "t2i")}
           for p, m in metrics.items()})  # fmt: skip
    for way in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10"):
            got, want = metrics["bfloat16"][way][key], metrics["float32"][way][key]
            assert abs(got - want) <= 0.5, (way, key, got, want)
    f32 = exact_vectors(load_index(demo_index_dir).image_index)
    bf16 = exact_vectors(load_index(out).image_index)
    assert f32 is not None and bf16 is not None
    assert (np.sum(f32 * bf16, axis=1) >= 0.999).all()
