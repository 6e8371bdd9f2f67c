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

from tests._step_setup import BATCH_SIZE, tiny_step
from training.config import TrainConfig
from training.trainer import Trainer


def main(role: str, out: str) -> None:
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if role == "worker"
        else tf.distribute.OneDeviceStrategy("/cpu:0")
    )
    setup = tiny_step("precomp")
    # A small clip norm makes clipping active, so the global-norm clip is tested too.
    tcfg = TrainConfig(batch_size=BATCH_SIZE, learning_rate=1e-2, grad_clip=0.05, seed=5)
    mcfg, data, batch = setup.model, setup.data, setup.batch
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
