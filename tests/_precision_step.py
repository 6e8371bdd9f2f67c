"""Run as a script: a few training steps with --mixed_precision MODE (and XLA if asked) on the
CPU must give finite losses, float32 embeddings and moving weights. Prints JSON."""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np

from tests._step_setup import BATCH_SIZE, tiny_step
from training.config import TrainConfig
from training.trainer import Trainer


def run(mode: str, jit: bool, steps: int = 20) -> dict[str, object]:
    setup = tiny_step("images")
    mcfg, data, batch = setup.model, setup.data, setup.batch
    tcfg = TrainConfig(batch_size=BATCH_SIZE, learning_rate=1e-2, mixed_precision=mode,
                       jit_compile=jit)  # fmt: skip
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
