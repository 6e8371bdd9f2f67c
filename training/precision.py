"""Training's `--mixed_precision` and `--gru_loop`: the Keras dtype policy, and "auto".

"auto" (the command line's default for both) is decided once, when the Trainer starts, from
the CPU's flags (`vsepp.precision`, the one home of that decision) and the devices the
strategy runs on, and logged with the reason:

- `--mixed_precision auto`: bfloat16 where the CPU computes it natively (AVX512_BF16 or AMX),
  "off" (float32) elsewhere. On a GPU, across several workers (each would decide from its own
  CPU) and with `--jit_compile` it stays "off": the measurements behind it are of one CPU
  process, and on a CPU XLA's bfloat16 step is slower than its float32 one.
- `--gru_loop auto`: "hoisted" where the run computes in native bfloat16 on a CPU, "keras"
  elsewhere. On an AVX512_BF16 CPU the hoisted loop with bfloat16 trained at 1.74x the
  original's step, bfloat16 alone 1.49x and float32 0.85x; in float32 the hoisted loop is no
  faster, and with emulated bfloat16 it is 4.7x slower (benchmarks/README.md, "Training").

A resumed run keeps what it was started with: "auto" takes the choice its model directory
recorded (`train_state/config.json`, else the manifest of its last export, else the defaults
before "auto" existed), so a run never changes precision halfway because it resumed on
another machine. An explicit value is used as given, as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.config import ModelConfig, TrainConfig
from training.model import GRU_LOOPS
from vsepp.precision import NATIVE_FLAGS, native_bfloat16

log = logging.getLogger(__name__)

AUTO = "auto"
MIXED_PRECISIONS = ("off", "bfloat16", "float16")
MIXED_PRECISION_CHOICES = (AUTO, *MIXED_PRECISIONS)
GRU_LOOP_CHOICES = (AUTO, *GRU_LOOPS)
# The Keras dtype policy of each --mixed_precision: compute in it, keep variables float32.
POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# What a run started before "auto" existed used when its flags were left out.
DEFAULTS_BEFORE_AUTO = {"mixed_precision": "off", "gru_loop": "keras"}
# The run's resolved configuration, written when it starts (beside its checkpoints).
RUN_CONFIG = "config.json"


@contextmanager
def precision_policy(mode: str) -> Iterator[None]:
    """Keras' global dtype policy set for `--mixed_precision` `mode` while layers are built
    (a layer keeps the policy it was built with), and the previous one back afterwards."""
    if mode not in POLICIES:
        raise ValueError(f"unknown --mixed_precision {mode!r}: {', '.join(MIXED_PRECISIONS)}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[mode])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def has_gpu(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` runs on a GPU (the default strategy: whether TensorFlow sees one)."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy places ops wherever TensorFlow does
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return any(tf.DeviceSpec.from_string(d).device_type == "GPU" for d in devices)


def check_choices(mixed_precision: str, gru_loop: str) -> None:
    """Refuse a --mixed_precision or --gru_loop that is not one of the choices."""
    if mixed_precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(
            f"unknown --mixed_precision {mixed_precision!r}: {', '.join(MIXED_PRECISION_CHOICES)}"
        )
    if gru_loop not in GRU_LOOP_CHOICES:
        raise ValueError(f"unknown --gru_loop {gru_loop!r}: {', '.join(GRU_LOOP_CHOICES)}")


def choose(
    mixed_precision: str,
    gru_loop: str,
    *,
    gpu: bool = False,
    multiworker: bool = False,
    jit_compile: bool = False,
    flags: Iterable[str] | None = None,
) -> tuple[str, str]:
    """(`mixed_precision`, `gru_loop`) with "auto" decided for this CPU (or one with `flags`),
    each automatic choice logged with its reason; explicit values are returned as they are."""
    check_choices(mixed_precision, gru_loop)
    flags = None if flags is None else frozenset(flags)
    native = native_bfloat16(flags)
    if mixed_precision == AUTO:
        mixed_precision, why = _auto_precision(native, gpu, multiworker, jit_compile)
        log.info("--mixed_precision auto: %s (%s)", mixed_precision, why)
    if gru_loop == AUTO:
        native_cpu = native and not gpu
        gru_loop, why = _auto_gru_loop(mixed_precision, native_cpu, gpu)
        log.info("--gru_loop auto: %s (%s)", gru_loop, why)
    return mixed_precision, gru_loop


def _auto_precision(
    native: bool, gpu: bool, multiworker: bool, jit_compile: bool
) -> tuple[str, str]:
    if gpu:
        return "off", "a GPU is visible: the automatic choice is measured on CPUs only"
    if multiworker:
        return "off", "several workers would each decide from their own CPU; name it to use it"
    if not native:
        return "off", f"no {' or '.join(NATIVE_FLAGS)} here: bfloat16 would be emulated, and slower"
    if jit_compile:
        return "off", "--jit_compile: XLA's bfloat16 step on a CPU is slower than its float32 one"
    return "bfloat16", f"this CPU has {' or '.join(NATIVE_FLAGS)}: bfloat16 is native and faster"


def _auto_gru_loop(mixed_precision: str, native_cpu: bool, gpu: bool) -> tuple[str, str]:
    if gpu:
        return "keras", "a GPU: Keras' own loop"
    if mixed_precision != "bfloat16":
        return "keras", f"--mixed_precision {mixed_precision}: the hoisted loop is no faster"
    if not native_cpu:
        return "keras", "bfloat16 is emulated on this CPU, where the hoisted loop is much slower"
    return "hoisted", "bfloat16 on a CPU that computes it natively: the hoisted loop is faster"


def recorded_choices(model_dir: str | os.PathLike[str]) -> tuple[dict[str, str], str]:
    """What the run in `model_dir` trained with ({"mixed_precision", "gru_loop"}) and where
    that was read: its `train_state/config.json`, else its last export's manifest, else (a run
    started before "auto" and killed before it exported) the defaults of that time."""
    root = Path(model_dir)
    # Both hold the configurations under the same keys.
    for path in (root / "train_state" / RUN_CONFIG, root / "manifest.json"):
        if not path.is_file():
            continue
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the run's recorded configuration: {e}") from e
        values = {
            "mixed_precision": record.get("training", {}).get("mixed_precision"),
            "gru_loop": record.get("model_config", {}).get("gru_loop"),
        }
        return {k: v or DEFAULTS_BEFORE_AUTO[k] for k, v in values.items()}, str(path)
    return dict(DEFAULTS_BEFORE_AUTO), "no record: the defaults before --mixed_precision auto"


def resume_choices(
    mixed_precision: str, gru_loop: str, recorded: dict[str, str], source: str
) -> tuple[str, str]:
    """A resumed run's choices: "auto" takes the `recorded` one (read from `source`), an
    explicit value stays, with a warning where it differs from the record."""
    check_choices(mixed_precision, gru_loop)
    chosen = {"mixed_precision": mixed_precision, "gru_loop": gru_loop}
    for key, value in chosen.items():
        if value == AUTO:
            chosen[key] = recorded[key]
            log.info("--%s auto: %s, as the resumed run recorded (%s)", key, recorded[key], source)
        elif value != recorded[key]:
            log.warning(
                "--%s %s, where the resumed run recorded %s (%s): it continues in %s",
                key, value, recorded[key], source, value,
            )  # fmt: skip
    return chosen["mixed_precision"], chosen["gru_loop"]


def resolve_auto(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    strategy: tf.distribute.Strategy,
    model_dir: str | os.PathLike[str],
) -> tuple[ModelConfig, TrainConfig]:
    """The run's configurations with "auto" decided: from the record of the run in
    `model_dir` when it has a checkpoint (to resume; a fresh run would be refused there),
    else from this CPU and the devices `strategy` runs on."""
    mixed_precision, gru_loop = train_cfg.mixed_precision, model_cfg.gru_loop
    if tf.train.latest_checkpoint(str(Path(model_dir) / "train_state")):
        recorded, source = recorded_choices(model_dir)
        mixed_precision, gru_loop = resume_choices(mixed_precision, gru_loop, recorded, source)
    else:
        mixed_precision, gru_loop = choose(
            mixed_precision,
            gru_loop,
            gpu=has_gpu(strategy),
            multiworker=isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
            jit_compile=train_cfg.jit_compile,
        )
    return (
        dataclasses.replace(model_cfg, gru_loop=gru_loop),
        dataclasses.replace(train_cfg, mixed_precision=mixed_precision),
    )
