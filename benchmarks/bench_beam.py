"""Benchmark embedding on Beam's local runner against the in-process build, same run.

    .venv/bin/python benchmarks/bench_beam.py --images 300 --cnn tiny

One generated folder of camera-like JPEGs (bench_collection's), one untrained model
(weights none, crop 224). Each way runs as a child process, timed from start to exit:
- in-process: `index.build --images_dir --shards_dir S --keep_shards` (tf.data decoding,
  one process; its wall time includes the FAISS build, small here);
- Beam: `index.beam_embed --images_dir --out_dir S` on the default local runner
  (DirectRunner, 2 worker processes; its wall time includes Beam's start and the workers'
  model loads).
Reports images/s of each (wall and, for the in-process build, its streaming rate), their
ratio, and checks that both wrote the same ids, skip lists and duplicates and vectors with
cosine >= 0.9999. The load average is printed before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="camera-sized JPEGs in the folder")
    p.add_argument("--cnn", default="tiny")
    p.add_argument("--shard_size", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--timeout", type=float, default=900, help="seconds each way may take")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p.parse_args(argv)


def timed(argv: list[str], timeout: float) -> tuple[float, str]:
    """Run a child; (wall seconds, its stdout). Fails on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {done.stderr[-3000:]}")
    return seconds, done.stdout


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Same shard .json files, and the vectors' smallest cosine."""
    from index.shards import read_shards

    same_json = [json.loads(p.read_text()) for p in sorted(a.glob("shard-*.json"))] == [
        json.loads(p.read_text()) for p in sorted(b.glob("shard-*.json"))
    ]
    cosines = [np.sum(np.asarray(x.vectors) * np.asarray(y.vectors), axis=1)
               for x, y in zip(read_shards(a), read_shards(b), strict=True)]  # fmt: skip
    low = float(np.concatenate(cosines).min())
    return {"same_ids_skips_duplicates": same_json, "cosine_min": round(low, 6),
            "vectors_equal": same_json and low >= 0.9999}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from bench_collection import export, make_folder

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-beam-"))
    print(json.dumps({"cpus": os.cpu_count(), "load_before": os.getloadavg()}), flush=True)
    folder = make_folder(work / "camera", args.images, (1280, 960))
    model = export(args.cnn, work / f"model-{args.cnn}")
    local, beam = work / "local-shards", work / "beam-shards"
    for p in (local, beam, work / "local-index"):
        shutil.rmtree(p, ignore_errors=True)
    common = ["--model_dir", str(model), "--images_dir", str(folder), "--shard_size",
              str(args.shard_size), "--batch_size", str(args.batch_size), "--log_level",
              "WARNING"]  # fmt: skip
    in_s, out = timed([sys.executable, "-m", "index.build", *common, "--index_dir",
                       str(work / "local-index"), "--shards_dir", str(local), "--keep_shards"],
                      args.timeout)  # fmt: skip
    stream = re.search(r"\(([0-9.]+) images/s\)", out)
    beam_s, _ = timed([sys.executable, "-m", "index.beam_embed", *common, "--out_dir", str(beam)],
                      args.timeout)  # fmt: skip
    row = {"cnn": args.cnn, "image_size": 224, "images": args.images, "photo": "1280x960 JPEG",
           "in_process_s": round(in_s, 1),
           "in_process_images_per_s": round(args.images / in_s, 2),
           "in_process_stream_images_per_s": float(stream.group(1)) if stream else None,
           "beam_s": round(beam_s, 1), "beam_images_per_s": round(args.images / beam_s, 2),
           "beam_over_in_process": round(in_s / beam_s, 3), **compare(local, beam),
           "load_after": os.getloadavg()}  # fmt: skip
    print(json.dumps(row), flush=True)
    return 0 if row["vectors_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
