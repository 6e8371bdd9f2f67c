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

from tests._step_setup import BATCH_SIZE, tiny_step  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def run(mode: str) -> dict[str, float]:
    setup = tiny_step(mode)
    mcfg, data, batch = setup.model, setup.data, setup.batch
    # A small clip norm makes clipping active, so it is tested too.
    tcfg = TrainConfig(batch_size=BATCH_SIZE, learning_rate=1e-2, grad_clip=0.05, seed=5)
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
