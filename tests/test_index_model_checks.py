"""index.build refuses a model whose similarity FAISS cannot search."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import demo_flags


def test_an_order_embedding_model_is_refused(
    demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from index.build import main
    from training.config import ModelConfig
    from training.export import export_model
    from training.images import ImageConfig
    from training.model import VSEModel
    from training.text import Vocabulary

    vocab = Vocabulary.build(["a red ball"] * 4)
    cfg = ModelConfig(cnn="tiny", cnn_weights="none", image_size=32, resize_size=32,
                      joint_space=8, word_dim=4, vocab_size=len(vocab), measure="order",
                      use_abs=True)  # fmt: skip
    model = VSEModel.build(cfg)
    export_model(tmp_path / "m", model.image_encoder, model.text_encoder, vocab, cfg,
                 ImageConfig(32, 32, "unit"))  # fmt: skip
    argv = [*demo_flags(demo_data_dir), "--model_dir", str(tmp_path / "m"),
            "--imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--out", str(tmp_path / "index")]  # fmt: skip
    assert main(argv) == 2
    assert "--measure order" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_query_takes_the_caption_as_a_positional_argument() -> None:
    from index.query import parse_args

    args = parse_args(["--index", "i", "--model_dir", "m", "a dog runs on the grass"])
    assert args.text == "a dog runs on the grass" and args.image is None
    assert parse_args(["--index", "i", "--model_dir", "m", "--image", "x.jpg"]).text is None
    for bad in (["--index", "i", "--model_dir", "m"],
                ["--index", "i", "--model_dir", "m", "a dog", "--image", "x.jpg"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_index_evaluate_equals_training_inference_on_the_demo_model(
    demo_model_dir: Path, demo_data_dir: Path, tmp_path: Path
) -> None:
    """An index embedded in float32 (training.inference's precision; the indexing default,
    auto, is bfloat16 on a CPU with AVX512_BF16 or AMX) evaluates to inference's numbers."""
    import json

    from index.build import main as build_main
    from index.evaluate import main as evaluate_main
    from training.inference import main as inference_main

    index = tmp_path / "index"
    argv = [*demo_flags(demo_data_dir), "--model_dir", str(demo_model_dir),
            "--imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--precision", "float32", "--out", str(index)]  # fmt: skip
    assert build_main(argv) == 0
    ours, theirs = tmp_path / "index.json", tmp_path / "inference.json"
    assert evaluate_main(["--index", str(index), "--metrics_out", str(ours)]) == 0
    argv = [*demo_flags(demo_data_dir), "--checkpoint_path", str(demo_model_dir),
            "--test_imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
            "--metrics_out", str(theirs)]  # fmt: skip
    assert inference_main(argv) == 0
    a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
    for way in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            assert a[way][key] == pytest.approx(b[way][key], abs=1e-6), (way, key)
    assert a["rsum"] == pytest.approx(b["rsum"], abs=1e-6)
