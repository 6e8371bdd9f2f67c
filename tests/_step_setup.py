"""The seeded tiny training problem the step scripts (`_mirrored_step.py`,
`_multiworker_step.py`, `_precision_step.py`) run in their own processes: 40 captions of
8 images (files that are never read) and one global batch of 8 pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.config import ModelConfig
from training.images import ImageConfig
from training.text import Vocabulary
from training.trainer import TrainData
from vsepp.datasets import SplitData

BATCH_SIZE = 8
PRECOMP_DIM = 12
IMAGE_SIZE = 32


@dataclass
class TinyStep:
    """A model config, the data it trains on and one batch for `Trainer.train_step`."""

    model: ModelConfig
    data: TrainData
    batch: dict[str, tf.Tensor]


def tiny_step(image_input: str) -> TinyStep:
    """The problem with `image_input` "precomp" (feature vectors) or "images" (32 x 32 pixels)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    captions = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(40)]
    split = SplitData("train", [f"{i}.jpg" for i in range(8)],
                      [Path(f"/nonexistent/{i}.jpg") for i in range(8)], captions)  # fmt: skip
    vocab = Vocabulary.build(captions, min_count=1)
    tokens = [vocab.encode(c) for c in captions[:BATCH_SIZE]]
    width = max(map(len, tokens))
    batch = {
        "tokens": tf.constant([t + [0] * (width - len(t)) for t in tokens], tf.int32),
        "lengths": tf.constant([len(t) for t in tokens], tf.int32),
    }
    image_cfg = ImageConfig(IMAGE_SIZE, IMAGE_SIZE, "unit")
    if image_input == "precomp":
        model = ModelConfig(cnn="tiny", joint_space=16, word_dim=8, vocab_size=len(vocab),
                            precomp_dim=PRECOMP_DIM)  # fmt: skip
        features = rng.normal(size=(BATCH_SIZE, PRECOMP_DIM)).astype(np.float32)
        batch["feature"] = tf.constant(features, tf.float32)
        return TinyStep(model, TrainData(split, split, vocab, image_cfg, features), batch)
    if image_input != "images":
        raise ValueError(f"image_input={image_input!r}: expected precomp or images")
    model = ModelConfig(cnn="tiny", cnn_weights="none", image_size=IMAGE_SIZE,
                        resize_size=IMAGE_SIZE, joint_space=16, word_dim=8,
                        vocab_size=len(vocab))  # fmt: skip
    pixels = rng.uniform(size=(BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3))
    batch["image"] = tf.constant(pixels, tf.float32)
    return TinyStep(model, TrainData(split, split, vocab, image_cfg), batch)
