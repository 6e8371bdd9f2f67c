"""Measure where near-duplicates sit for a model: the cosine between a photo and its burst
shots against the cosine between a photo and the nearest other photo.

    .venv/bin/python benchmarks/bench_bursts.py --model_dir runs/demo \\
        --images data/demo/Flicker8k_Dataset --n 300 --json_out bursts.json

A "burst" of each of `--n` photos is made the way a camera or an editor makes one: the frame
shifted by a few percent (a crop), exposure +-6%, a re-compression at JPEG quality 75, a
one-degree turn. Every shot and photo goes through the product's decoder and the model's image
encoder. Reported: percentiles of the burst cosines (each shot against its photo) and of the
nearest-other-photo cosines, and at candidate thresholds the share of burst shots grouped with
their photo and the share of photos grouped with another photo. `index.duplicates`'
DEFAULT_THRESHOLD is chosen from these figures (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine
from vsepp.images import canonical_image
from vsepp.model_dir import jpeg_min_side, load_encoders

THRESHOLDS = (0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def burst(image: Image.Image) -> dict[str, bytes]:
    """The shots of one photo's burst, as JPEG files."""
    w, h = image.size
    dx, dy = max(1, w // 25), max(1, h // 25)
    shots: dict[str, Callable[[], Image.Image]] = {
        "shifted": lambda: image.crop((dx, dy, w, h)),
        "brighter": lambda: ImageEnhance.Brightness(image).enhance(1.06),
        "darker": lambda: ImageEnhance.Brightness(image).enhance(0.94),
        "turned": lambda: image.rotate(1.0, resample=Image.Resampling.BILINEAR, expand=False),
    }
    out = {name: _jpeg(make()) for name, make in shots.items()}
    out["recompressed"] = _jpeg(image, quality=75)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True)
    p.add_argument("--images", type=Path, required=True, help="a folder of photos")
    p.add_argument("--n", type=int, default=300, help="photos (each with its burst)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json_out", type=Path)
    args = p.parse_args(argv)
    encoders = load_encoders(args.model_dir, "float32")
    min_side = jpeg_min_side(encoders.manifest)
    files = sorted(f for f in args.images.rglob("*") if f.suffix.lower() in (".jpg", ".png"))
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in rng.choice(len(files), min(args.n, len(files)), replace=False)]

    def embed(blobs: list[bytes]) -> np.ndarray:
        canonical = [canonical_image(blob, min_side=min_side).data for blob in blobs]
        x = np.asarray(encoders.encode_image_bytes(canonical), np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    originals, shots = [], []
    kinds: list[str] = []
    for f in files:
        image = Image.open(f).convert("RGB")
        made = burst(image)
        originals.append(_jpeg(image))
        shots.append(list(made.values()))
        kinds = list(made)
    photos = embed(originals)
    burst_cos = np.stack([embed(s) @ v for s, v in zip(shots, photos, strict=True)])
    gram = photos @ photos.T
    np.fill_diagonal(gram, -np.inf)
    nearest_other = gram.max(axis=1)

    def pct(values: np.ndarray) -> dict[str, float]:
        qs = (0, 1, 5, 50, 95, 99, 100)
        return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in qs}

    report: dict[str, Any] = {
        "machine": machine(),
        "model": encoders.manifest.get("cnn"),
        "photos": len(files),
        "burst": {kind: pct(burst_cos[:, i]) for i, kind in enumerate(kinds)},
        "burst_all": pct(burst_cos.ravel()),
        "nearest_other_photo": pct(nearest_other),
        "at": {
            str(t): {
                "burst_shots_grouped": round(float((burst_cos >= t).mean()), 4),
                "photos_grouped_with_another": round(float((nearest_other >= t).mean()), 4),
            }
            for t in THRESHOLDS
        },
    }
    print(json.dumps(report, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
