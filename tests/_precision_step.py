"""Run as a script: a few training steps with --mixed_precision MODE (and XLA if asked) on the
CPU must give finite losses, float32 embeddings and moving weights. Prints JSON."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.config import ModelConfig, TrainConfig
from training.images import ImageConfig
from training.text import Vocabulary
from training.trainer import TrainData, Trainer
from vsepp.datasets import SplitData


def run(mode: str, jit: bool, steps: int = 20) -> dict[str, object]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    captions = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    split = SplitData("train", [f"{i}.jpg" for i in range(8)],
                      [Path(f"/nonexistent/{i}.jpg") for i in range(8)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    tokens = [vocab.encode(c) for c in captions[:8]]
    width = max(map(len, tokens))
    batch = {
        "tokens": tf.constant([t + [0] * (width - len(t)) for t in tokens], tf.int32),
        "image": tf.constant(rng.uniform(size=(8, 32, 32, 3)), tf.float32),
    }
    mcfg = ModelConfig(cnn="tiny", cnn_weights="none", image_size=32, resize_size=32,
                       joint_space=16, word_dim=8, vocab_size=len(vocab))  # fmt: skip
    tcfg = TrainConfig(batch_size=8, learning_rate=1e-2, mixed_precision=mode, jit_compile=jit)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(mcfg, tcfg, data, tmp)
        before = trainer.model.text_encoder.get_weights()
        # float16 starts with a large loss scale and skips the first steps while it halves it.
        losses = [trainer.train_step(batch, epoch=1) for _ in range(steps)]
        after = trainer.model.text_encoder.get_weights()
        emb = trainer.model.text_encoder(batch["tokens"])
        return {
            "losses": losses,
            "embedding_dtype": emb.dtype.name,
            "compute_dtype": trainer.model.text_encoder.get_layer("gru0").compute_dtype,
            "variable_dtype": trainer.model.text_encoder.get_layer("gru0").variable_dtype,
            "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True)),
        }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2] == "jit")))
