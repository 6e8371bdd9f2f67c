"""What length bucketing, bfloat16 and the hoisted GRU cost in accuracy: a small demo recipe,
3 seeds each.

    .venv/bin/python benchmarks/bench_accuracy.py --out /tmp/acc [--seeds 0,1,2]
        [--variants plain,bucket,bf16,bf16+hoisted] [--train 600 --val 60 --test 200 --epochs 5]

Generates one demo dataset (`training.demo_data`), then for every variant and seed trains
the tiny recipe of tests/conftest.py (tiny CNN from scratch, 64 px, joint space 64, batch
50, lr 2e-3, two epochs of sum of violations then max violation) with the same budget
(epochs) through `python -m training.train`, each in its own process, and evaluates the
exported model on the test split with `python -m training.inference`. Prints a markdown
table of test R@1/R@5 both ways and rsum, mean and sample standard deviation over the seeds,
and the difference of each variant's mean from the plain one in units of the seeds' spread.
A budget far smaller than the demo's own (6 epochs on 6,000 images) so that 3 seeds of
several variants fit on a shared 2-core machine: what it can show is whether a variant is
worse by more than the seed-to-seed spread at this scale, not the full recipe's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Every variant names its precision and GRU loop: the command line's default is "auto",
# which differs from machine to machine; plain is the float32 baseline.
F32_KERAS = ["--mixed_precision", "off", "--gru_loop", "keras"]
VARIANT_FLAGS = {
    "plain": F32_KERAS,
    "bucket": [*F32_KERAS, "--bucket_by_length"],
    "bf16": ["--mixed_precision", "bfloat16", "--gru_loop", "keras"],
    # What "auto" chooses on a CPU with AVX512_BF16 or AMX (training.precision).
    "bf16+hoisted": ["--mixed_precision", "bfloat16", "--gru_loop", "hoisted"],
}
RECIPE = [
    "--cnn", "tiny", "--cnn_weights", "none", "--crop_size", "64", "--resize_size", "64",
    "--no_hflip", "--joint_space", "64", "--word_dim", "32", "--batch_size", "50",
    "--learning_rate", "2e-3", "--cache", "--max_violation_after", "2",
    "--checkpoint_every", "0",
]  # fmt: skip
METRICS = (("i2t", "r1"), ("i2t", "r5"), ("t2i", "r1"), ("t2i", "r5"))


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=3600, check=False)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}); see {log}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work directory (data, runs, results.json)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="plain,bucket,bf16")
    p.add_argument("--train", type=int, default=600)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANT_FLAGS]
    if unknown:
        p.error(f"unknown --variants {unknown}: {', '.join(VARIANT_FLAGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    data = out / "data"
    if not (data / "Flickr8k.token.txt").is_file():
        run([sys.executable, "-m", "training.demo_data", "--out", str(data), "--train",
             str(args.train), "--val", str(args.val), "--test", str(args.test), "--seed", "7"],
            out / "demo_data.log")  # fmt: skip
    flags = [
        "--images_path", str(data / "Flicker8k_Dataset"),
        "--texts_path", str(data / "Flickr8k.token.txt"),
    ]  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:  # seeds outermost: a load change falls on every variant alike
        for variant in variants:
            run_dir = out / f"{variant}_seed{seed}"
            metrics_file = run_dir.with_suffix(".json")
            if not metrics_file.is_file():
                t0 = time.perf_counter()
                run([sys.executable, "-m", "training.train", *flags,
                     "--train_imgs_file_path", str(data / "Flickr_8k.trainImages.txt"),
                     "--val_imgs_file_path", str(data / "Flickr_8k.devImages.txt"),
                     *RECIPE, *VARIANT_FLAGS[variant], "--epochs", str(args.epochs),
                     "--seed", str(seed), "--save_model_path", str(run_dir)],
                    run_dir.with_suffix(".train.log"))  # fmt: skip
                seconds = time.perf_counter() - t0
                run([sys.executable, "-m", "training.inference", *flags,
                     "--test_imgs_file_path", str(data / "Flickr_8k.testImages.txt"),
                     "--model_dir", str(run_dir), "--metrics_out",
                     str(run_dir.with_suffix(".metrics.json"))],
                    run_dir.with_suffix(".test.log"))  # fmt: skip
                m = json.loads(run_dir.with_suffix(".metrics.json").read_text())
                metrics_file.write_text(json.dumps({"metrics": m, "train_seconds": seconds}))
            results.setdefault(variant, []).append(json.loads(metrics_file.read_text()))
            print(f"{variant} seed {seed}: rsum {results[variant][-1]['metrics']['rsum']:.1f}",
                  flush=True)  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results, seeds))
    return 0


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    head = "| variant | i2t R@1 | i2t R@5 | t2i R@1 | t2i R@5 | rsum | rsum - plain | train s |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    plain = _stats([r["metrics"]["rsum"] for r in results.get("plain", [])] or [0.0])
    for variant, runs in results.items():
        cells = []
        for way, k in METRICS:
            mean, sd = _stats([r["metrics"][way][k] for r in runs])
            cells.append(f"{mean:.1f} ± {sd:.1f}")
        mean, sd = _stats([r["metrics"]["rsum"] for r in runs])
        spread = max(sd, plain[1])
        delta = f"{mean - plain[0]:+.1f}"
        if variant == "plain":
            delta = ""
        elif spread:
            delta += f" ({(mean - plain[0]) / spread:+.1f} sd)"
        secs = statistics.mean(r["train_seconds"] for r in runs)
        row = f"| {variant} | {' | '.join(cells)} | {mean:.1f} ± {sd:.1f} | {delta} | {secs:.0f} |"
        lines.append(row)
    lines.append(f"\n(mean ± sample sd over seeds {seeds})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
