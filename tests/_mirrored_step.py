"""Run as a script: one training step under MirroredStrategy on two logical CPUs must equal
the same step on one device (loss and every weight afterwards). Prints JSON."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import numpy as np  # noqa: E402

from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.images import ImageConfig  # noqa: E402
from training.text import Vocabulary  # noqa: E402
from training.trainer import TrainData, Trainer  # noqa: E402
from vsepp.datasets import SplitData  # noqa: E402


def run(mode: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    captions = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    split = SplitData(
        "train",
        [f"{i}.jpg" for i in range(8)],
        [Path(f"/nonexistent/{i}.jpg") for i in range(8)],
        captions,
    )
    vocab = Vocabulary.build(captions, min_count=1)
    batch_size = 8
    tokens = [vocab.encode(c) for c in captions[:batch_size]]
    width = max(map(len, tokens))
    batch = {
        "tokens": tf.constant([t + [0] * (width - len(t)) for t in tokens], tf.int32),
        "lengths": tf.constant([len(t) for t in tokens], tf.int32),
    }
    if mode == "precomp":
        mcfg = ModelConfig(
            cnn="tiny", joint_space=16, word_dim=8, vocab_size=len(vocab), precomp_dim=12
        )
        batch["feature"] = tf.constant(rng.normal(size=(batch_size, 12)), tf.float32)
    else:
        mcfg = ModelConfig(
            cnn="tiny",
            cnn_weights="none",
            image_size=32,
            resize_size=32,
            joint_space=16,
            word_dim=8,
            vocab_size=len(vocab),
        )
        batch["image"] = tf.constant(rng.uniform(size=(batch_size, 32, 32, 3)), tf.float32)
    # A small clip norm makes clipping active, so it is tested too.
    tcfg = TrainConfig(batch_size=batch_size, learning_rate=1e-2, grad_clip=0.05, seed=5)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"))
    out: dict[str, float] = {}
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy in (
            ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
            ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
        ):
            trainers[name] = Trainer(mcfg, tcfg, data, Path(tmp) / name, strategy=strategy)
        one, two = trainers["one"], trainers["two"]
        assert two.replicas == 2
        for a, b in (
            (one.model.image_encoder, two.model.image_encoder),
            (one.model.text_encoder, two.model.text_encoder),
        ):
            b.set_weights(a.get_weights())
        initial = one.model.text_encoder.get_weights() + one.model.image_encoder.get_weights()
        for step in range(2):
            out[f"loss{step}_one"] = one.train_step(batch, epoch=1)
            out[f"loss{step}_two"] = two.train_step(batch, epoch=1)
        diffs = [
            float(np.max(np.abs(x - y)))
            for enc in ("image_encoder", "text_encoder")
            for x, y in zip(
                getattr(one.model, enc).get_weights(),
                getattr(two.model, enc).get_weights(),
                strict=True,
            )
        ]
        after = one.model.text_encoder.get_weights() + one.model.image_encoder.get_weights()
        out["max_weight_diff"] = max(diffs)
        # The steps must have changed the weights, or equality would prove nothing.
        out["min_weight_change"] = min(
            float(np.max(np.abs(x - y))) for x, y in zip(initial, after, strict=True)
        )
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
