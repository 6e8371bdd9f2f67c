"""Run as a script: one process of a two-worker MultiWorkerMirroredStrategy step, or the
single-process step it must equal. Writes the loss and every weight to an .npz file.

    python tests/_multiworker_step.py single OUT.npz
    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": I}}' \\
        python tests/_multiworker_step.py worker OUT.npz

Both run the same seeded model and the same global batch of 8; each worker takes its
replica's half (`Trainer.train_step` shards a global batch), computes the loss over the
gathered global batch and all-reduces the gradients over 127.0.0.1.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from training.config import ModelConfig, TrainConfig
from training.images import ImageConfig
from training.text import Vocabulary
from training.trainer import TrainData, Trainer
from vsepp.datasets import SplitData


def main(role: str, out: str) -> None:
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if role == "worker"
        else tf.distribute.OneDeviceStrategy("/cpu:0")
    )
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
        "feature": tf.constant(rng.normal(size=(batch_size, 12)), tf.float32),
    }
    mcfg = ModelConfig(
        cnn="tiny", joint_space=16, word_dim=8, vocab_size=len(vocab), precomp_dim=12
    )
    # A small clip norm makes clipping active, so the global-norm clip is tested too.
    tcfg = TrainConfig(batch_size=batch_size, learning_rate=1e-2, grad_clip=0.05, seed=5)
    data = TrainData(split, split, vocab, ImageConfig(32, 32, "unit"), batch["feature"].numpy())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(mcfg, tcfg, data, Path(tmp) / "run", strategy=strategy)
        # Seeded initialisation is the same in every process; set_weights makes sure.
        init = np.random.default_rng(1)
        for enc in (trainer.model.image_encoder, trainer.model.text_encoder):
            enc.set_weights(
                [init.normal(0, 0.3, w.shape).astype(np.float32) for w in enc.get_weights()]
            )
        initial = [w.copy() for w in _weights(trainer)]
        losses = [trainer.train_step(batch, epoch=1) for _ in range(2)]
        after = _weights(trainer)
    arrays: dict[str, Any] = {f"w{i}": w for i, w in enumerate(after)}
    arrays["replicas"] = trainer.replicas
    arrays["losses"] = np.array(losses)
    arrays["moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(initial, after, strict=True))
    np.savez(out, **arrays)


def _weights(trainer: Trainer) -> list[np.ndarray]:
    return trainer.model.image_encoder.get_weights() + trainer.model.text_encoder.get_weights()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
