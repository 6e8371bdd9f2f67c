"""How far bfloat16 image embeddings are from float32 ones: per-vector cosine and R@K.

    .venv/bin/python benchmarks/bench_bf16_agreement.py --data data/demo \
        --model_dir runs/demo runs/demo-seed1 [--split Flickr_8k.testImages.txt]

For each model, the split's images are embedded twice through the path `index.build` uses
(`vsepp.embed.embed_images`, the one decoder): with the image encoder in float32 and with
its matrix products in bfloat16 (`--precision bfloat16`); the captions once (the text
encoder stays float32 in both). Prints, per model, the cosine of each image's two vectors
(min, 0.1 % quantile, median) and R@1/5/10 both ways of the two, on the whole split
(1,000 images and 5,000 captions on the demo's test split: one image is 0.1 point of i2t,
one caption 0.02 of t2i). The CPU's model, its bfloat16 flags and the load average come
first: where the CPU lacks AVX512_BF16 and AMX, bfloat16 is emulated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402
from vsepp.datasets import load_split  # noqa: E402
from vsepp.embed import embed_images, embed_texts  # noqa: E402
from vsepp.evaluation import evaluate  # noqa: E402
from vsepp.model_dir import load_encoders  # noqa: E402

FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def agreement(model_dir: Path, data: Path, split: str, batch_size: int) -> dict[str, Any]:
    """Cosine per image and R@K of float32 against bfloat16 on one split."""
    ds = load_split(data / "Flicker8k_Dataset", data / "Flickr8k.token.txt", data / split)
    ids, paths = list(ds.image_ids), list(ds.image_paths)
    f32 = load_encoders(model_dir, "float32")
    captions = embed_texts(f32, [c for i in range(len(ids)) for c in ds.captions_of(i)])
    vectors = {}
    for precision in ("float32", "bfloat16"):
        encoders = f32 if precision == "float32" else load_encoders(model_dir, precision)
        out, kept, skipped = embed_images(encoders, ids, paths, batch_size=batch_size)
        if skipped or len(kept) != len(ids):
            raise SystemExit(f"{model_dir}: {len(skipped)} images skipped in {precision}")
        vectors[precision] = out
    cosine = np.sum(vectors["float32"] * vectors["bfloat16"], axis=1)
    metrics = {p: evaluate(v, captions) for p, v in vectors.items()}
    return {
        "model": str(model_dir),
        "images": len(ids),
        "captions": int(captions.shape[0]),
        "cosine": {
            "min": float(cosine.min()),
            "q0.001": float(np.quantile(cosine, 0.001)),
            "median": float(np.median(cosine)),
        },
        "recall": {
            p: {w: {k: m[w][k] for k in ("r1", "r5", "r10")} for w in ("i2t", "t2i")}
            for p, m in metrics.items()
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one row per model and precision, the cosine beside it."""
    lines = [
        "| model | precision | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | min cosine |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for p, rec in row["recall"].items():
            cells = [rec[w][k] for w in ("i2t", "t2i") for k in ("r1", "r5", "r10")]
            cos = f"{row['cosine']['min']:.5f}" if p == "bfloat16" else ""
            lines.append(
                f"| {Path(row['model']).name} | {p} | "
                + " | ".join(f"{c:.2f}" for c in cells)
                + f" | {cos} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a demo dataset (Flickr8k layout)")
    p.add_argument("--model_dir", type=Path, nargs="+", required=True, help="models to compare")
    p.add_argument("--split", default="Flickr_8k.testImages.txt", help="split file in --data")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--json_out", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    facts = {**machine(), "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    print(json.dumps(facts))
    rows = [agreement(m, args.data, args.split, args.batch_size) for m in args.model_dir]
    for row in rows:
        print(json.dumps(row))
    print(table(rows))
    facts["load_after"] = os.getloadavg()
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": facts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
