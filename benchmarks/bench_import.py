"""Import time of a ResNet152 VSE++ checkpoint, and the imported encoder's embedding rate
against the project's own ResNet152 at 224, in the same run.

    .venv/bin/python benchmarks/bench_import.py --seconds 30 --rounds 3

No torch: the checkpoint is written by tests/original_fixture.py in the authors' legacy
layout (torch 0.3 / Python 2 bytes), with random weights of torchvision's ResNet152 shapes,
a 1024-d projection, a 300-d embedding of a 10,000-word vocabulary and a 1-layer GRU (the
released f30k/coco runs' shapes). Then: `training.import_original` end to end (read, build,
load, export), timed; both models' image encoders timed in alternating rounds on the same
decoded uint8 batch (256 x 256: resize 256, crop 224 inside both). Prints the machine (CPU,
flags, load before and after) and one JSON line. Figures of a run that started at a 1-minute
load average of 1.5 or more on this 2-core machine are void: the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

QUIET_LOAD = 1.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p.parse_args(argv)


def resnet152_state(rng: np.random.Generator) -> OrderedDict[str, np.ndarray]:
    """torchvision's ResNet152 parameters (random), under the original's `cnn.module.` keys."""
    state: OrderedDict[str, np.ndarray] = OrderedDict()

    def conv(key: str, cout: int, cin: int, k: int) -> None:
        scale = (2.0 / (cin * k * k)) ** 0.5
        state[f"cnn.module.{key}.weight"] = rng.normal(0, scale, (cout, cin, k, k)).astype("f4")

    def bn(key: str, c: int, gamma: float = 1.0) -> None:
        state[f"cnn.module.{key}.weight"] = np.full(c, gamma, "f4")
        state[f"cnn.module.{key}.bias"] = rng.normal(0, 0.05, c).astype("f4")
        state[f"cnn.module.{key}.running_mean"] = rng.normal(0, 0.05, c).astype("f4")
        state[f"cnn.module.{key}.running_var"] = rng.uniform(0.8, 1.2, c).astype("f4")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate((3, 8, 36, 3)):
        planes = 64 * 2**stage
        for b in range(blocks):
            key = f"layer{stage + 1}.{b}"
            conv(f"{key}.conv1", planes, inplanes, 1)
            bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            conv(f"{key}.conv3", planes * 4, planes, 1)
            bn(f"{key}.bn3", planes * 4, gamma=0.2)
            if b == 0:
                conv(f"{key}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{key}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = rng.normal(0, 0.03, (1024, 2048)).astype("f4")
    state["fc.bias"] = np.zeros(1024, "f4")
    return state


def text_state(rng: np.random.Generator, vocab: int) -> OrderedDict[str, np.ndarray]:
    h, d = 1024, 300
    return OrderedDict([
        ("embed.weight", rng.uniform(-0.1, 0.1, (vocab, d)).astype("f4")),
        ("rnn.weight_ih_l0", rng.normal(0, 0.03, (3 * h, d)).astype("f4")),
        ("rnn.weight_hh_l0", rng.normal(0, 0.03, (3 * h, h)).astype("f4")),
        ("rnn.bias_ih_l0", np.zeros(3 * h, "f4")),
        ("rnn.bias_hh_l0", np.zeros(3 * h, "f4")),
    ])  # fmt: skip


def write_checkpoint(work: Path) -> tuple[Path, Path, float]:
    """(checkpoint, vocabulary, seconds to write them)."""
    from tests.original_fixture import legacy_checkpoint_bytes, opt_dict, vocab_bytes

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    words = ["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(9996))]
    opt = opt_dict(vocab_size=len(words))
    checkpoint = {"model": [resnet152_state(rng), text_state(rng, len(words))], "opt": opt,
                  "epoch": 30, "best_rsum": 0.0}  # fmt: skip
    ckpt, vocab = work / "model_best.pth.tar", work / "f30k_vocab.pkl"
    ckpt.write_bytes(legacy_checkpoint_bytes(checkpoint))
    vocab.write_bytes(vocab_bytes(words))
    return ckpt, vocab, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    from bench_collection import export
    from bench_precision import machine, rate

    from training.import_original import import_checkpoint
    from training.original.checkpoint import read_checkpoint
    from vsepp.model_dir import load_encoders

    args = parse_args(argv)
    facts: dict[str, Any] = {"machine_before": machine()}
    print(json.dumps(facts["machine_before"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, vocab, wrote = write_checkpoint(work)
        facts["checkpoint_mib"] = round(ckpt.stat().st_size / 2**20, 1)
        facts["write_s"] = round(wrote, 1)
        t0 = time.perf_counter()
        read_checkpoint(ckpt)
        facts["read_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        import_checkpoint(ckpt, vocab, work / "imported")
        facts["import_s"] = round(time.perf_counter() - t0, 1)
        ours = export("resnet152", work / "own")
        models = {"imported resnet152_tv": load_encoders(work / "imported"),
                  "own resnet152 (keras)": load_encoders(ours)}  # fmt: skip
        batch = np.random.default_rng(1).integers(0, 256, (args.batch_size, 256, 256, 3), np.uint8)
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, enc in models.items():
                rates[name].append(round(rate(enc.encode_image_arrays, batch, args.seconds), 3))
        facts["images_per_s"] = rates
        facts["imported_over_own"] = round(
            float(
                np.mean(rates["imported resnet152_tv"]) / np.mean(rates["own resnet152 (keras)"])
            ),
            3,
        )
    facts["machine_after"] = machine()
    # The run's own work raises the load it sees afterwards; what others ran is the load
    # before it started.
    before = facts["machine_before"]["load"][0]
    facts["void"] = before >= QUIET_LOAD
    print(json.dumps(facts))
    if facts["void"]:
        print(f"load average {before:.2f} before the run (>= {QUIET_LOAD}): the figures are "
              f"void on this {os.cpu_count()}-core machine", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
