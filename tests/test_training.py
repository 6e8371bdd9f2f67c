"""Training end to end on the demo set: CLI, export round trip, resume, distribution, traps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_TRAIN_FLAGS, demo_flags, train_flags

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_train_writes_a_model_directory(demo_model_dir: Path, demo_data_dir: Path) -> None:
    from training.text import Vocabulary
    from vsepp.datasets import load_split
    from vsepp.model_dir import load_encoders

    manifest = json.loads((demo_model_dir / "manifest.json").read_text())
    assert manifest["format"] == "vsepp-model/1"
    assert manifest["embed_dim"] == 64 and manifest["cnn"] == "tiny"
    # 40 validation images with 5 captions each: chance R@5 is 12.5 both ways; the seeded
    # five-epoch run lands at 75-85, so 40 is a floor that only a broken trainer misses.
    val = manifest["metrics"]["val"]
    assert val["i2t"]["r5"] >= 40 and val["t2i"]["r5"] >= 40, val
    # The history runs from epoch 1 to the exported one, one entry an epoch.
    best = manifest["training"]["epoch"]
    assert best >= 1 and [h["epoch"] for h in manifest["history"]] == list(range(1, best + 1))
    # The vocabulary comes from the training split only.
    train = load_split(
        demo_data_dir / "Flicker8k_Dataset",
        demo_data_dir / "Flickr8k.token.txt",
        demo_data_dir / "Flickr_8k.trainImages.txt",
    )
    exported = Vocabulary.load(demo_model_dir / manifest["export"] / "vocab.json")
    assert exported.tokens == Vocabulary.build(train.captions).tokens
    enc = load_encoders(demo_model_dir)
    vecs, known = enc.encode_texts(["a big red circle", "zzz qqq"])
    assert vecs.shape == (2, 64) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert known.tolist()[1] == 0 and known.tolist()[0] >= 3


def test_inference_cli_prints_and_writes_metrics(
    demo_model_dir: Path, demo_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.inference import main

    out = tmp_path / "metrics.json"
    argv = [
        *demo_flags(demo_data_dir),
        "--test_imgs_file_path", str(demo_data_dir / "Flickr_8k.testImages.txt"),
        "--checkpointh_path", str(demo_model_dir),  # the seed's spelling
        "--joint_space", "64", "--num_layers", "1", "--batch_size", "16",
        "--metrics_out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Image to text" in printed and "Text to image" in printed and "rsum" in printed
    metrics = json.loads(out.read_text())
    assert metrics["n_images"] == 40
    for way in ("i2t", "t2i"):
        assert set(metrics[way]) >= {"r1", "r5", "r10", "medr", "meanr"}
    assert metrics["rsum"] == pytest.approx(
        sum(metrics[w][k] for w in ("i2t", "t2i") for k in ("r1", "r5", "r10"))
    )
    assert main([*argv[:-2], "--joint_space", "1024"]) == 2
    assert "--joint_space 1024" in capsys.readouterr().err


def test_exported_encoders_equal_the_training_models(demo_data_dir: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from training.config import ModelConfig
    from training.export import export_model
    from training.images import ImageConfig
    from training.model import VSEModel
    from training.pipeline import caption_eval_dataset, image_eval_dataset
    from training.text import Vocabulary
    from vsepp.datasets import load_split
    from vsepp.model_dir import load_encoders

    split = load_split(
        demo_data_dir / "Flicker8k_Dataset",
        demo_data_dir / "Flickr8k.token.txt",
        demo_data_dir / "Flickr_8k.testImages.txt",
    )
    vocab = Vocabulary.build(split.captions, min_count=1)
    cfg = ModelConfig(cnn="tiny", cnn_weights="none", image_size=48, resize_size=56,
                      joint_space=32, word_dim=16, vocab_size=len(vocab))  # fmt: skip
    image_cfg = ImageConfig(48, 56, "unit")
    model = VSEModel.build(cfg)
    export_model(tmp_path / "m", model.image_encoder, model.text_encoder, vocab, cfg, image_cfg)
    enc = load_encoders(tmp_path / "m")

    want_img = np.concatenate(
        [model.image_encoder(b["image"], training=False) for b in
         image_eval_dataset(split, image_cfg, 16)]
    )  # fmt: skip
    got_img = enc.encode_image_bytes([p.read_bytes() for p in split.image_paths])
    np.testing.assert_allclose(got_img, want_img, atol=1e-5)
    arrays = np.stack([tf.io.decode_jpeg(p.read_bytes()).numpy() for p in split.image_paths[:4]])
    np.testing.assert_allclose(enc.encode_image_arrays(arrays), want_img[:4], atol=1e-5)

    want_txt = np.concatenate(
        [model.text_encoder(b["tokens"], training=False) for b in
         caption_eval_dataset(split, vocab, 64)]
    )  # fmt: skip
    got_txt, _ = enc.encode_texts(split.captions)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-5)


def test_text_encoder_reads_captions_only_up_to_their_length() -> None:
    from training.config import ModelConfig
    from training.model import build_text_encoder

    enc = build_text_encoder(ModelConfig(joint_space=8, word_dim=4, vocab_size=10, num_layers=2))
    short = np.array([[2, 5, 6, 3]], np.int32)
    padded = np.array([[2, 5, 6, 3, 0, 0, 0]], np.int32)
    np.testing.assert_allclose(enc(short).numpy(), enc(padded).numpy(), atol=1e-6)
    bi = build_text_encoder(ModelConfig(joint_space=8, word_dim=4, vocab_size=10,
                                        bidirectional=True))  # fmt: skip
    np.testing.assert_allclose(bi(short).numpy(), bi(padded).numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["precomp", "images"])
def test_two_logical_devices_step_equals_one_device_step(mode: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_mirrored_step.py"), mode],
        capture_output=True, text=True, env=_env(), timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["min_weight_change"] > 1e-4
    assert out["loss0_two"] == pytest.approx(out["loss0_one"], rel=1e-5)
    assert out["loss1_two"] == pytest.approx(out["loss1_one"], rel=1e-5)
    assert out["max_weight_diff"] < 1e-4


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_worker_processes_step_equals_the_single_process_step(tmp_path: Path) -> None:
    script = str(ROOT / "tests" / "_multiworker_step.py")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        workers.append(subprocess.Popen(
            [sys.executable, script, "worker", str(tmp_path / f"worker{i}.npz")],
            env={**_env(), "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    try:
        logs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(x[-3000:] for x in logs)
    single = subprocess.run([sys.executable, script, "single", str(tmp_path / "single.npz")],
                            env=_env(), capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one = np.load(tmp_path / "single.npz")
    assert int(one["replicas"]) == 1 and float(one["moved"]) > 1e-3
    names = [k for k in one.files if k.startswith("w")]
    for i in range(2):
        got = np.load(tmp_path / f"worker{i}.npz")
        assert int(got["replicas"]) == 2
        np.testing.assert_allclose(got["losses"], one["losses"], rtol=1e-5)
        for k in names:
            np.testing.assert_allclose(got[k], one[k], atol=1e-5, err_msg=k)


def test_collapse_is_detected_and_named(tmp_path: Path) -> None:
    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer, TrainingCollapsedError
    from vsepp.datasets import SplitData

    # Identical images and identical captions: every embedding is the same point.
    split = SplitData("train", [f"{i}.jpg" for i in range(20)],
                      [tmp_path / f"{i}.jpg" for i in range(20)], ["a red ball"] * 100)  # fmt: skip
    vocab = Vocabulary.build(split.captions, min_count=1)
    feats = np.ones((20, 6), np.float32)
    mcfg = ModelConfig(joint_space=8, word_dim=4, vocab_size=len(vocab), precomp_dim=6)
    tcfg = TrainConfig(epochs=1, batch_size=10, collapse_patience=3, checkpoint_every=0)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), feats, feats)
    with pytest.raises(TrainingCollapsedError, match="--max_violation_after"):
        Trainer(mcfg, tcfg, data, tmp_path / "run").fit()


def test_imagenet_weights_that_cannot_be_fetched_are_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import urllib.error

    from keras.src.backend import config
    from keras.src.utils import file_utils

    from training.backbones import WeightsUnavailableError, build_backbone

    # An empty cache and a download that fails as it does offline, whatever this machine has.
    monkeypatch.setattr(config, "keras_home", lambda: str(tmp_path / "keras"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"no network in this test ({url})")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsUnavailableError, match="--cnn_weights"):
        build_backbone("resnet50", "imagenet", 64)


def test_help_documents_the_seed_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from training import inference, train

    for module, flags in (
        (train, ["--batch_size", "--prefetch_size", "--images_path", "--texts_path",
                 "--train_imgs_file_path", "--val_imgs_file_path", "--save_model_path",
                 "--joint_space", "--num_layers", "--decay_rate", "--clip_val"]),
        (inference, ["--test_imgs_file_path", "--checkpoint_path", "--checkpointh_path",
                     "--joint_space", "--num_layers", "--fold5", "--metrics_out"]),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            module.parse_args(["--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (module.__name__, flag)


def _checkpoint_step(model_dir: Path) -> int:
    state = model_dir / "train_state" / "checkpoint"
    if not state.is_file():
        return 0
    line = state.read_text().splitlines()[0]
    return int(line.rsplit("-", 1)[1].strip('"'))


def _kill_once_checkpointed(argv: list[str], run: Path, at_step: int) -> int:
    """Run the training command `argv`, SIGKILL it once its checkpoint in `run` has reached
    `at_step` (within 240 s), and return the step of its last checkpoint."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while _checkpoint_step(run) < at_step and time.monotonic() < deadline:
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return _checkpoint_step(run)


@pytest.mark.slow
def test_resume_after_a_kill_loses_at_most_the_steps_since_the_checkpoint(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "training.train", *train_flags(demo_data_dir),
            *TINY_TRAIN_FLAGS, "--epochs", "2", "--checkpoint_every", "3",
            "--max_violation_after", "1", "--lr_update", "1",
            "--save_model_path", str(run)]  # fmt: skip
    # 2000 pairs / batch 50 = 40 steps an epoch: kill inside the first epoch.
    killed_at = _kill_once_checkpointed(argv, run, at_step=6)
    assert 6 <= killed_at < 40, killed_at
    assert not (run / "manifest.json").exists()  # no epoch finished, nothing exported

    resumed = subprocess.run([*argv, "--resume"], cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=600, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming epoch 0 at step {killed_at}" in resumed.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    # Both epochs completed, and the global step count shows no step was run twice.
    history = json.loads((run / "train_state" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert manifest["training"]["epoch"] in (1, 2)
    # The learning rate drops x0.1 after --lr_update epochs.
    assert [h["lr"] for h in history] == pytest.approx([2e-3, 2e-4])
    assert _checkpoint_step(run) == 80
    assert manifest["metrics"]["val"]["rsum"] > 0


def test_precomputed_features_train_a_model_that_serves_from_images(
    demo_data_dir: Path, tmp_path: Path
) -> None:
    import tensorflow as tf

    from training.config import ModelConfig
    from training.feature_store import load_features
    from training.features import main as features_main
    from training.model import build_image_encoder
    from training.train import main as train_main
    from vsepp.datasets import load_split
    from vsepp.model_dir import load_encoders

    feats, run = tmp_path / "features", tmp_path / "run"
    test_file = str(demo_data_dir / "Flickr_8k.testImages.txt")
    image_flags = ["--crop_size", "64", "--resize_size", "64", "--batch_size", "50"]
    extract = [*train_flags(demo_data_dir), "--test_imgs_file_path", test_file, "--cnn", "tiny",
               "--cnn_weights", "none", *image_flags, "--out", str(feats)]  # fmt: skip
    assert features_main(extract) == 0
    store = load_features(feats)
    assert store.meta["feature_dim"] == 1024 and store.meta["l2_normalized"] is True
    # Stored as the full encoder sees them before its projection: unit rows.
    stored = np.load(feats / store.meta["splits"]["test"]["file"])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    assert set(store.meta["splits"]) == {"train", "val", "test"}
    train = [*train_flags(demo_data_dir), "--precomp_features", str(feats), "--joint_space", "32",
             "--word_dim", "16", "--epochs", "1", "--learning_rate", "1e-3", "--no-max_violation",
             *image_flags, "--save_model_path", str(run)]  # fmt: skip
    assert train_main(train) == 0
    # The exported image encoder runs the very backbone that made the features, then the
    # trained projection: from image bytes it gives head(features).
    test = load_split(demo_data_dir / "Flicker8k_Dataset", demo_data_dir / "Flickr8k.token.txt",
                      test_file)  # fmt: skip
    head = build_image_encoder(ModelConfig(joint_space=32, precomp_dim=1024))
    latest = tf.train.latest_checkpoint(str(run / "train_state"))
    tf.train.Checkpoint(image_encoder=head).restore(latest).expect_partial()
    want = head(store.for_split(test)).numpy()
    got = load_encoders(run).encode_image_bytes([p.read_bytes() for p in test.image_paths])
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(("mode", "jit"), [("bfloat16", "nojit"), ("float16", "nojit"),
                                           ("off", "jit")])  # fmt: skip
def test_mixed_precision_and_xla_steps_train(mode: str, jit: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_precision_step.py"), mode, jit],
        capture_output=True, text=True, env=_env(), timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(np.isfinite(out["losses"]))
    assert out["moved"] > 1e-3
    assert out["losses"][-1] < out["losses"][0]
    assert out["embedding_dtype"] == "float32" and out["variable_dtype"] == "float32"
    assert out["compute_dtype"] == {"off": "float32"}.get(mode, mode)


def test_word_vectors_initialise_known_words(tmp_path: Path) -> None:
    from training.model import load_word_vectors
    from training.text import Vocabulary

    vocab = Vocabulary.build(["red ball"] * 4)
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1 2 3\nunrelated 4 5 6\nball 7 8 9\n")
    matrix = load_word_vectors(glove, vocab, 3)
    np.testing.assert_array_equal(matrix[vocab.id_of("red")], [1, 2, 3])
    np.testing.assert_array_equal(matrix[vocab.id_of("ball")], [7, 8, 9])
    assert np.all(matrix[0] == 0) and np.all(np.abs(matrix[1]) <= 0.1)
    with pytest.raises(ValueError, match=r"glove\.txt:1"):
        load_word_vectors(glove, vocab, 4)


def test_order_embeddings_train_and_validate(tmp_path: Path) -> None:
    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer
    from vsepp.datasets import SplitData

    rng = np.random.default_rng(0)
    words = ["red", "blue", "ball", "box", "big", "small"]
    captions = [" ".join(rng.choice(words, 4)) for _ in range(100)]
    split = SplitData("train", [f"{i}.jpg" for i in range(20)],
                      [tmp_path / f"{i}.jpg" for i in range(20)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    feats = rng.normal(size=(20, 6)).astype(np.float32)
    mcfg = ModelConfig(joint_space=8, word_dim=4, vocab_size=len(vocab), precomp_dim=6,
                       measure="order", use_abs=True)  # fmt: skip
    tcfg = TrainConfig(epochs=1, batch_size=10, checkpoint_every=0, max_violation=False)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), feats, feats)
    trainer = Trainer(mcfg, tcfg, data, tmp_path / "run")
    trainer.export = lambda metrics, epoch: None  # type: ignore[method-assign]  # no backbone
    best = trainer.fit()
    assert np.isfinite(best["rsum"])
    im, cap = trainer.embed_split(split, feats)
    assert (im >= 0).all() and (cap >= 0).all()  # order embeddings live in the positive orthant


@pytest.mark.parametrize("cnn", ["resnet50", "resnet152", "vgg19", "mobilenet_v3_large"])
def test_keras_applications_backbones_build_and_embed(cnn: str) -> None:
    from training.backbones import build_backbone, preprocess_for

    size = 224 if cnn == "vgg19" else 64  # VGG19's fc7 needs the 224 input
    backbone = build_backbone(cnn, "none", size)
    feats = backbone.model(np.zeros((1, size, size, 3), np.float32), training=False)
    assert feats.shape == (1, backbone.feature_dim)
    assert backbone.feature_dim == {"resnet50": 2048, "resnet152": 2048, "vgg19": 4096,
                                    "mobilenet_v3_large": 960}[cnn]  # fmt: skip
    assert backbone.preprocess == preprocess_for(cnn)


def test_finetune_after_freezes_then_trains_the_backbone_in_inference_mode(
    tmp_path: Path,
) -> None:
    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer
    from vsepp.datasets import SplitData

    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(["a", "red", "blue", "ball", "box"], 4)) for _ in range(40)]
    split = SplitData("train", [f"{i}.jpg" for i in range(8)],
                      [tmp_path / f"{i}.jpg" for i in range(8)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    mcfg = ModelConfig(cnn="resnet50", cnn_weights="none", image_size=32, resize_size=32,
                       joint_space=8, word_dim=4, vocab_size=len(vocab))  # fmt: skip
    tcfg = TrainConfig(batch_size=8, learning_rate=1e-2, finetune_after=1, grad_clip=0)
    trainer = Trainer(mcfg, tcfg, TrainData(split, split, vocab, ImageConfig(32, 32, "caffe")),
                      tmp_path / "run")  # fmt: skip
    backbone = trainer.model.image_encoder.get_layer("resnet50")
    tokens = [vocab.encode(c) for c in captions[:8]]
    batch = {
        "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32) * 50,
        "tokens": np.array([t + [0] * (6 - len(t)) for t in tokens], np.int32),
    }

    def state() -> tuple[list[np.ndarray], list[np.ndarray]]:
        learned = [v.numpy().copy() for v in backbone.weights if "moving" not in v.path]
        stats = [v.numpy().copy() for v in backbone.weights if "moving" in v.path]
        return learned, stats

    weights0, stats0 = state()
    head0 = trainer.model.image_encoder.get_layer("img_fc").kernel.numpy().copy()
    trainer.train_step(batch, epoch=0)  # stage one: the backbone stays frozen
    weights1, _ = state()
    assert all(np.array_equal(a, b) for a, b in zip(weights0, weights1, strict=True))
    assert not np.array_equal(head0, trainer.model.image_encoder.get_layer("img_fc").kernel)
    trainer.train_step(batch, epoch=1)  # stage two: fine-tuning
    weights2, stats2 = state()
    assert any(not np.array_equal(a, b) for a, b in zip(weights1, weights2, strict=True))
    # Batch-norm statistics of a pretrained backbone never move, even while fine-tuned.
    assert stats0 and all(np.array_equal(a, b) for a, b in zip(stats0, stats2, strict=True))


def test_precomp_model_is_the_full_model_on_normalised_features() -> None:
    import tensorflow as tf

    from training.backbones import build_backbone
    from training.config import ModelConfig
    from training.export import compose_precomp_encoder
    from training.feature_store import l2_normalize_rows
    from training.model import build_image_encoder

    backbone = build_backbone("tiny", "none", 32)
    full = build_image_encoder(
        ModelConfig(cnn="tiny", cnn_weights="none", image_size=32, resize_size=32,
                    joint_space=16), backbone)  # fmt: skip
    head = build_image_encoder(ModelConfig(joint_space=16, precomp_dim=backbone.feature_dim))
    head.get_layer("img_fc").set_weights(full.get_layer("img_fc").get_weights())
    images = tf.constant(np.random.default_rng(0).uniform(size=(6, 32, 32, 3)), tf.float32)
    raw = backbone.model(images, training=False).numpy()
    # Features of very different norms: an unnormalised head would be off by that scale.
    assert np.ptp(np.linalg.norm(raw, axis=1)) > 1e-3 * np.mean(np.linalg.norm(raw, axis=1))
    want = full(images, training=False).numpy()
    np.testing.assert_allclose(head(l2_normalize_rows(raw)).numpy(), want, atol=1e-5)
    composed = compose_precomp_encoder(backbone.model, head)
    np.testing.assert_allclose(composed(images, training=False).numpy(), want, atol=1e-5)
    # With --no_imgnorm the scale is kept, so the agreement is not just up to a norm.
    full_raw = build_image_encoder(ModelConfig(cnn="tiny", cnn_weights="none", image_size=32,
                                               resize_size=32, joint_space=16, no_imgnorm=True),
                                   backbone)  # fmt: skip
    head_raw = build_image_encoder(ModelConfig(precomp_dim=backbone.feature_dim, joint_space=16,
                                               no_imgnorm=True))  # fmt: skip
    head_raw.get_layer("img_fc").set_weights(full_raw.get_layer("img_fc").get_weights())
    np.testing.assert_allclose(head_raw(l2_normalize_rows(raw)).numpy(),
                               full_raw(images, training=False).numpy(), atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(compose_precomp_encoder(backbone.model, head_raw)(images).numpy(),
                               full_raw(images, training=False).numpy(), atol=1e-5)  # fmt: skip


def test_val_images_keeps_the_first_images_and_defaults_to_1000_for_coco() -> None:
    from training.train import first_images, is_coco, parse_args
    from vsepp.datasets import SplitData

    base = ["--images_path", "x", "--train_imgs_file_path", "train",
            "--val_imgs_file_path", "val", "--save_model_path", "m"]  # fmt: skip
    coco = parse_args([*base, "--texts_path", "data/coco/dataset_coco.json"])
    assert is_coco(coco) and coco.val_images is None
    assert not is_coco(parse_args([*base, "--texts_path", "data/Flickr8k.token.txt"]))
    assert is_coco(parse_args([*base, "--texts_path", "c.json", "--dataset", "coco"]))
    split = SplitData("val", [f"{i}.jpg" for i in range(7)],
                      [Path(f"/d/{i}.jpg") for i in range(7)],
                      [f"caption {j}" for j in range(35)])  # fmt: skip
    three = first_images(split, 3)
    assert three.image_ids == ["0.jpg", "1.jpg", "2.jpg"]
    assert three.captions == [f"caption {j}" for j in range(15)]
    assert first_images(split, 0) is split and first_images(split, 70) is split
    with pytest.raises(SystemExit):
        parse_args([*base, "--texts_path", "t", "--val_images", "-1"])


def test_train_transform_defaults_to_the_originals_for_pretrained_backbones() -> None:
    from training.train import configs, parse_args

    base = ["--images_path", "x", "--texts_path", "t", "--train_imgs_file_path", "train",
            "--val_imgs_file_path", "val", "--save_model_path", "m"]  # fmt: skip
    for flags, want in (
        ([], "random_resized_crop"),
        (["--cnn", "tiny"], "resize_crop"),
        (["--train_transform", "resize_crop"], "resize_crop"),
        (["--cnn", "tiny", "--train_transform", "random_resized_crop"], "random_resized_crop"),
    ):
        _, _, image_cfg = configs(parse_args([*base, *flags]), 10, 0)
        assert image_cfg.train_transform == want, flags
        assert image_cfg.hflip


def test_l2_weight_decay_is_the_seeds_penalty_on_non_bias_weights(tmp_path: Path) -> None:
    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer
    from vsepp.datasets import SplitData

    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(["a", "red", "blue", "ball", "box"], 4)) for _ in range(40)]
    split = SplitData("train", [f"{i}.jpg" for i in range(8)],
                      [tmp_path / f"{i}.jpg" for i in range(8)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    feats = rng.normal(size=(8, 6)).astype(np.float32)
    mcfg = ModelConfig(joint_space=8, word_dim=4, vocab_size=len(vocab), precomp_dim=6)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), feats, feats)
    tokens = [vocab.encode(c) for c in captions[:8]]
    batch = {"feature": feats, "tokens": np.array([t + [0] * (6 - len(t)) for t in tokens])}

    def trainer(**kw: object) -> Trainer:
        tcfg = TrainConfig(batch_size=8, learning_rate=1e-2, grad_clip=0, seed=3, **kw)  # type: ignore[arg-type]
        return Trainer(mcfg, tcfg, data, tmp_path / str(len(list(tmp_path.iterdir()))))

    l2 = trainer(weight_decay=0.5, weight_decay_type="l2")
    variables = l2.model.trainable_variables
    weights = [v.numpy() for v in variables if v.name not in ("bias",)]
    want = 0.5 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights) / 2
    assert float(l2.l2_penalty(variables)) == pytest.approx(want, rel=1e-5)
    assert {v.name for v in variables} >= {"bias", "kernel", "embeddings", "recurrent_kernel"}
    assert l2.optimizer.weight_decay is None  # not Adam's decay as well
    decoupled = trainer(weight_decay=0.5)
    assert decoupled.optimizer.weight_decay == 0.5
    assert float(decoupled.l2_penalty(decoupled.model.trainable_variables)) == 0.0
    plain = trainer()
    for t in (l2, plain):
        t.model.image_encoder.set_weights(plain.model.image_encoder.get_weights())
        t.model.text_encoder.set_weights(plain.model.text_encoder.get_weights())
        # Non-zero biases, so a penalty on them would show in their step.
        t.model.image_encoder.get_layer("img_fc").bias.assign(np.full(8, 0.3, np.float32))
    # The reported loss is the ranking loss; the penalty only changes the step it takes.
    assert l2.train_step(batch, 0) == pytest.approx(plain.train_step(batch, 0), rel=1e-5)
    fc_l2 = l2.model.image_encoder.get_layer("img_fc")
    fc_plain = plain.model.image_encoder.get_layer("img_fc")
    assert not np.allclose(fc_l2.kernel.numpy(), fc_plain.kernel.numpy(), atol=1e-6)
    # Biases get no penalty: their gradients are the ranking loss's alone, so Adam's first
    # step moves them identically.
    np.testing.assert_allclose(fc_l2.bias.numpy(), fc_plain.bias.numpy(), atol=1e-6)


def test_help_says_which_weight_decay_is_which(capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weight_decay_type {decoupled,l2}" in text
    assert "decoupled: Adam's decoupled decay" in text and "l2: the seed's meaning" in text
    assert "--train_transform {random_resized_crop,resize_crop}" in text and "--val_images" in text


def test_max_violation_after_switches_the_loss_at_that_epoch(tmp_path: Path) -> None:
    import tensorflow as tf

    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.losses import contrastive_loss
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer
    from vsepp.datasets import SplitData

    rng = np.random.default_rng(0)
    words = ["red", "blue", "green", "ball", "box", "big", "small", "cone"]
    captions = [" ".join(rng.choice(words, 4)) for _ in range(100)]
    split = SplitData("train", [f"{i}.jpg" for i in range(20)],
                      [tmp_path / f"{i}.jpg" for i in range(20)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    feats = rng.normal(size=(20, 6)).astype(np.float32)
    mcfg = ModelConfig(joint_space=8, word_dim=4, vocab_size=len(vocab), precomp_dim=6)
    tcfg = TrainConfig(epochs=3, batch_size=10, checkpoint_every=0, max_violation_after=2)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), feats, feats)
    trainer = Trainer(mcfg, tcfg, data, tmp_path / "run")
    # The step's own loss, on a fixed batch, against both losses of the same embeddings.
    tokens = [vocab.encode(c) for c in captions[:10]]
    width = max(map(len, tokens))
    batch = {"feature": tf.constant(feats[:10]),
             "tokens": tf.constant([t + [0] * (width - len(t)) for t in tokens])}  # fmt: skip
    for epoch, want_max in ((0, False), (1, False), (2, True), (5, True)):
        im, cap = trainer.model.embed(batch["feature"], batch["tokens"], training=True)
        losses = {mv: float(contrastive_loss(im, cap, max_violation=mv)) for mv in (False, True)}
        assert losses[False] > 2 * losses[True]  # the two are far apart here
        assert trainer.train_step(batch, epoch) == pytest.approx(losses[want_max], rel=1e-5)
    # And the loop: the loss named per epoch in the history.
    fresh = Trainer(mcfg, tcfg, data, tmp_path / "run2")
    fresh.export = lambda metrics, epoch: None  # type: ignore[method-assign]  # no backbone
    fresh.fit()
    kinds = [h["loss"] for h in fresh.history]
    assert kinds == ["sum_violation", "sum_violation", "max_violation"]
    # Sum of 9 negatives per query, then only the hardest: the mean loss drops several-fold.
    means = [h["mean_loss"] for h in fresh.history]
    assert means[2] < means[1] / 2


def _backbone_state(checkpoint: str, vocab_size: int) -> dict[str, np.ndarray]:
    """The resnet50 backbone's weights in a checkpoint of the test run below, by variable path
    (restored through the object graph into a fresh model: the checkpoint's own keys name
    most variables through the optimizer that tracks them)."""
    import tensorflow as tf

    from training.config import ModelConfig
    from training.model import build_image_encoder

    cfg = ModelConfig(cnn="resnet50", cnn_weights="none", image_size=32, resize_size=32,
                      joint_space=16, word_dim=16, vocab_size=vocab_size)  # fmt: skip
    encoder = build_image_encoder(cfg)
    tf.train.Checkpoint(image_encoder=encoder).restore(checkpoint).expect_partial()
    return {v.path: v.numpy() for v in encoder.get_layer("resnet50").weights}


@pytest.mark.slow
@pytest.mark.parametrize("started", ["with_finetune_after", "frozen_only"])
def test_resume_from_the_frozen_phase_into_finetuning(tmp_path: Path, started: str) -> None:
    import tensorflow as tf

    from training.demo_data import DemoConfig, generate

    data = tmp_path / "data"
    generate(data, DemoConfig(train=100, val=10, test=10, seed=4))
    run = tmp_path / "run"
    # A pretrained-style backbone (frozen first) at a small size: 500 pairs, 10 steps an epoch.
    common = [sys.executable, "-m", "training.train", *train_flags(data), "--cnn", "resnet50",
              "--cnn_weights", "none", "--crop_size", "32", "--resize_size", "32",
              "--joint_space", "16", "--word_dim", "16", "--batch_size", "50", "--epochs", "2",
              "--checkpoint_every", "2", "--learning_rate", "1e-3",
              "--save_model_path", str(run)]  # fmt: skip
    first = [*common, "--finetune_after", "1"] if started == "with_finetune_after" else common
    killed_at = _kill_once_checkpointed(first, run, at_step=2)
    assert 2 <= killed_at < 10, killed_at  # inside the frozen first epoch
    killed = tf.train.latest_checkpoint(str(run / "train_state"))
    vocab_size = len(json.loads((run / "vocab.json").read_text())["tokens"])
    before = _backbone_state(killed, vocab_size)

    resumed = subprocess.run([*common, "--finetune_after", "1", "--resume"], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=600,
                             check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming epoch 0 at step {killed_at}" in resumed.stderr
    if started == "frozen_only":
        # Its checkpoint has no slots for the backbone: they start fresh, the rest restored.
        assert "start fresh" in resumed.stderr, resumed.stderr[-3000:]
    history = json.loads((run / "train_state" / "history.json").read_text())
    assert [(h["epoch"], h["finetune"]) for h in history] == [(1, False), (2, True)]
    assert _checkpoint_step(run) == 20  # no step run twice, none lost after the checkpoint
    after = _backbone_state(tf.train.latest_checkpoint(str(run / "train_state")), vocab_size)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    # The backbone trained in epoch 2 (its kernels moved), its batch-norm statistics did not.
    assert any("kernel" in k for k in moved), sorted(moved)[:5]
    assert not any("moving_" in k for k in moved), sorted(moved)[:5]


def _gru_trainer(tmp_path: Path, gru_loop: str, **tcfg_kw: object) -> object:
    from training.config import ModelConfig, TrainConfig
    from training.images import ImageConfig
    from training.text import Vocabulary
    from training.trainer import TrainData, Trainer
    from vsepp.datasets import SplitData

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    captions = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(80)]
    split = SplitData("train", [f"{i}.jpg" for i in range(16)],
                      [tmp_path / f"{i}.jpg" for i in range(16)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    feats = rng.normal(size=(16, 12)).astype(np.float32)
    mcfg = ModelConfig(joint_space=24, word_dim=10, vocab_size=len(vocab), precomp_dim=12,
                       gru_loop=gru_loop)  # fmt: skip
    tcfg = TrainConfig(batch_size=16, learning_rate=5e-3, seed=2, **tcfg_kw)  # type: ignore[arg-type]
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), feats, feats)
    return Trainer(mcfg, tcfg, data, tmp_path / gru_loop)


def test_hoisted_gru_gives_the_keras_gru_losses_and_weights(tmp_path: Path) -> None:
    from training.model import HoistedGRU
    from training.pipeline import train_dataset

    keras_gru = _gru_trainer(tmp_path, "keras")
    hoisted = _gru_trainer(tmp_path, "hoisted")
    assert isinstance(hoisted.model.text_encoder.get_layer("gru0"), HoistedGRU)  # type: ignore[attr-defined]
    assert not isinstance(keras_gru.model.text_encoder.get_layer("gru0"), HoistedGRU)  # type: ignore[attr-defined]
    for enc in ("image_encoder", "text_encoder"):
        getattr(hoisted.model, enc).set_weights(getattr(keras_gru.model, enc).get_weights())  # type: ignore[attr-defined]
    data = keras_gru.data  # type: ignore[attr-defined]
    ds = train_dataset(data.train, data.vocab, data.image_cfg, 16, seed=0,
                       features=data.train_features, drop_remainder=False,
                       bucket_by_length=True)  # fmt: skip
    batches = [b for _ in range(2) for b in ds]  # 10 steps; buckets give several widths
    assert len({int(b["tokens"].shape[1]) for b in batches}) > 1
    for b in batches:
        want = keras_gru.train_step(b, 0)  # type: ignore[attr-defined]
        assert hoisted.train_step(b, 0) == pytest.approx(want, rel=1e-5, abs=1e-5)  # type: ignore[attr-defined]
    for enc in ("image_encoder", "text_encoder"):
        for a, b in zip(getattr(keras_gru.model, enc).get_weights(),  # type: ignore[attr-defined]
                        getattr(hoisted.model, enc).get_weights(), strict=True):  # type: ignore[attr-defined]  # fmt: skip
            np.testing.assert_allclose(b, a, atol=2e-5)
    # Padded and unpadded captions embed alike (the mask stops the state at the last token).
    enc = hoisted.model.text_encoder  # type: ignore[attr-defined]
    short = np.array([[2, 5, 6, 3]], np.int32)
    padded = np.array([[2, 5, 6, 3, 0, 0, 0]], np.int32)
    np.testing.assert_allclose(enc(short).numpy(), enc(padded).numpy(), atol=1e-6)


def test_decay_rate_and_clip_val_reach_the_schedule_and_the_step(tmp_path: Path) -> None:
    """The seed's --decay_rate and --clip_val do what they say, not only in --help: the
    learning rate drops 10x every --decay_rate epochs, and --clip_val clips the step's global
    gradient (clipped to 1e-12, Adam's epsilon dominates and the weights barely move; not
    clipped, its first step moves them by about the learning rate)."""
    import dataclasses

    from tests._step_setup import tiny_step
    from training.train import configs, parse_args
    from training.trainer import Trainer, learning_rate_at

    data = ["--images_path", "i", "--texts_path", "t", "--train_imgs_file_path", "a",
            "--val_imgs_file_path", "b", "--save_model_path", str(tmp_path / "m")]  # fmt: skip
    flags = ["--learning_rate", "1e-2", "--decay_rate", "3", "--clip_val", "1e-12"]
    args = parse_args([*data, *flags])
    setup = tiny_step("precomp")
    _, tcfg, _ = configs(args, vocab_size=setup.model.vocab_size, precomp_dim=0)
    assert tcfg.lr_update == 3 and tcfg.grad_clip == 1e-12
    schedule = [learning_rate_at(tcfg, epoch) for epoch in range(7)]
    assert schedule == pytest.approx([1e-2] * 3 + [1e-3] * 3 + [1e-4])
    moved = {}
    for clip in (tcfg.grad_clip, 0.0):
        cfg = dataclasses.replace(tcfg, grad_clip=clip, batch_size=setup.batch["tokens"].shape[0])
        trainer = Trainer(setup.model, cfg, setup.data, str(tmp_path / f"run-{clip}"))
        before = trainer.model.text_encoder.get_weights()
        trainer.train_step(setup.batch, epoch=0)
        after = trainer.model.text_encoder.get_weights()
        moved[clip] = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    assert moved[0.0] > 0.5 * 1e-2, moved
    assert moved[1e-12] < 1e-3 * 1e-2, moved
