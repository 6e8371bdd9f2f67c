"""Benchmark the image encoder in bfloat16 against float32 (`--precision`), same run.

    .venv/bin/python benchmarks/bench_precision.py --cnn tiny resnet152 --seconds 20

For each backbone (weights none, crop 224, exported as training does), both precisions are
loaded in this process and timed in alternating rounds on the same already-decoded uint8
batch (so a neighbour's load falls on both alike): images/s of each, their ratio, and the
cosine between the two precisions' vectors of the batch. Prints one JSON line per backbone
and a summary; the CPU's model and its bfloat16 flags are printed first, since without
AVX512_BF16 or AMX bfloat16 is emulated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks.machine import machine  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cnn", nargs="+", default=["tiny", "resnet152"])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per precision")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per precision")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p.parse_args(argv)


def rate(encode: Any, batch: np.ndarray, seconds: float) -> float:
    """Images/s of `encode` on `batch` for about `seconds` (at least two calls)."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * len(batch):
        encode(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def bench(cnn: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bench_collection import export

    from vsepp.model_dir import load_encoders

    model = export(cnn, work / f"model-{cnn}")
    batch = np.random.default_rng(1).integers(0, 256, (args.batch_size, 240, 320, 3), np.uint8)
    started = time.perf_counter()
    encoders = {p: load_encoders(model, p) for p in ("float32", "bfloat16")}
    vectors = {p: e.encode_image_arrays(batch) for p, e in encoders.items()}  # trace, warm up
    setup = time.perf_counter() - started
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for p, e in encoders.items():
            rates[p].append(rate(e.encode_image_arrays, batch, args.seconds / args.rounds))
    cosine = np.sum(vectors["float32"] * vectors["bfloat16"], axis=1)
    f32, bf16 = (float(np.mean(rates[p])) for p in ("float32", "bfloat16"))
    return {"cnn": cnn, "image_size": 224, "batch_size": args.batch_size,
            "float32_images_per_s": round(f32, 2), "bfloat16_images_per_s": round(bf16, 2),
            "bfloat16_over_float32": round(bf16 / f32, 3),
            "rounds": {p: [round(r, 2) for r in v] for p, v in rates.items()},
            "cosine_min": round(float(cosine.min()), 6),
            "cosine_mean": round(float(cosine.mean()), 6),
            "load_and_trace_s": round(setup, 1), "load": os.getloadavg()}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    print(json.dumps({"machine": machine()}), flush=True)
    rows = []
    for cnn in args.cnn:
        row = bench(cnn, work, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| backbone | float32 img/s | bfloat16 img/s | bf16 / f32 | cosine min |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cnn']} | {r['float32_images_per_s']} | {r['bfloat16_images_per_s']} | "
              f"{r['bfloat16_over_float32']} | {r['cosine_min']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
