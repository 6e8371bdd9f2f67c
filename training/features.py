"""Precomputed backbone features, the paper's `*_precomp` mode: extract once, train fast on CPU.

`python -m training.features` runs the backbone over each split's images (centre crop, as
evaluation sees them) and writes FEATURES_DIR/{split}.npy, meta.json and the backbone's
weights, so the exported image encoder recomputes exactly these features at serving time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.backbones import build_backbone, preprocess_for
from training.cli import add_data_args, setup_logging
from training.datasets import SplitData, load_split
from training.images import ImageConfig
from training.pipeline import image_eval_dataset

log = logging.getLogger(__name__)

FORMAT = "vsepp-features/1"
WEIGHTS_FILE = "backbone.weights.h5"


@dataclass
class FeatureStore:
    """A features directory: per-split arrays keyed by image id, and their backbone."""

    root: Path
    meta: dict[str, Any]

    @property
    def cnn(self) -> str:
        return str(self.meta["cnn"])

    @property
    def cnn_weights(self) -> str:
        return str(self.root / WEIGHTS_FILE)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def resize_size(self) -> int:
        return int(self.meta["resize_size"])

    def for_split(self, split: SplitData) -> np.ndarray:
        """Features [N, F] in the order of `split`'s images (found in any stored split)."""
        rows: dict[str, tuple[str, int]] = {}
        for name, info in self.meta["splits"].items():
            for i, image_id in enumerate(info["image_ids"]):
                rows.setdefault(image_id, (name, i))
        missing = [i for i in split.image_ids if i not in rows]
        if missing:
            raise ValueError(
                f"{self.root}: no features for {len(missing)} images of split {split.name!r} "
                f"(e.g. {', '.join(missing[:3])}): extract them with python -m training.features"
            )
        arrays = {
            name: np.load(self.root / info["file"], mmap_mode="r")
            for name, info in self.meta["splits"].items()
        }
        return np.stack([arrays[n][i] for n, i in (rows[x] for x in split.image_ids)]).astype(
            np.float32
        )

    def backbone(self) -> keras.Model:
        """The backbone that produced the features, with the very same weights."""
        b = build_backbone(self.cnn, "none", self.image_size)
        b.model.load_weights(str(self.root / WEIGHTS_FILE))
        return b.model


def load_features(path: str | os.PathLike[str]) -> FeatureStore:
    root = Path(path)
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{root} is not a features directory: no meta.json") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{root}/meta.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    return FeatureStore(root, meta)


def extract(
    backbone: keras.Model, split: SplitData, cfg: ImageConfig, batch_size: int
) -> np.ndarray:
    """Backbone features [N, F] of a split's images, in order."""
    fn = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)
    out = []
    ds = image_eval_dataset(split, cfg, batch_size)
    total = -(-len(split.image_ids) // batch_size)
    for batch in tqdm(ds, total=total, desc=f"features {split.name}", unit="batch", disable=None):
        out.append(np.asarray(fn(batch["image"]), dtype=np.float32))
    return np.concatenate(out)


def write_features(
    out: Path,
    backbone: keras.Model,
    splits: dict[str, SplitData],
    cfg: ImageConfig,
    cnn: str,
    cnn_weights: str,
    batch_size: int,
) -> Path:
    """Extract every split and write the directory atomically (beside, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "cnn": cnn,
            "cnn_weights": cnn_weights,
            "image_size": cfg.image_size,
            "resize_size": cfg.resize_size,
            "preprocess": cfg.preprocess,
            "splits": {},
        }
        for name, split in splits.items():
            feats = extract(backbone, split, cfg, batch_size)
            np.save(tmp / f"{name}.npy", feats)
            meta["feature_dim"] = int(feats.shape[1])
            meta["splits"][name] = {"file": f"{name}.npy", "image_ids": split.image_ids}
        backbone.save_weights(str(tmp / WEIGHTS_FILE))
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.features",
        description="Extract backbone features once, for --precomp_features training on CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_args(p)
    for split in ("train", "val", "test"):
        p.add_argument(
            f"--{split}_imgs_file_path",
            default=None,
            help=f"{split} split: a split file, or a split name for Karpathy JSON",
        )
    p.add_argument("--cnn", default="resnet152", help="backbone")
    p.add_argument("--cnn_weights", default="imagenet", help="imagenet, none or a weights file")
    p.add_argument("--crop_size", type=int, default=224)
    p.add_argument("--resize_size", type=int, default=256)
    p.add_argument("--out", required=True, help="features directory to write")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    chosen = {
        s: getattr(args, f"{s}_imgs_file_path")
        for s in ("train", "val", "test")
        if getattr(args, f"{s}_imgs_file_path")
    }
    if not chosen:
        raise SystemExit("name at least one of --train/--val/--test_imgs_file_path")
    splits = {
        s: load_split(
            args.images_path,
            args.texts_path,
            f,
            dataset=args.dataset,
            skip_incomplete=args.skip_incomplete,
        )
        for s, f in chosen.items()
    }
    backbone = build_backbone(args.cnn, args.cnn_weights, args.crop_size)
    cfg = ImageConfig(args.crop_size, args.resize_size, preprocess_for(args.cnn))
    out = write_features(
        Path(args.out), backbone.model, splits, cfg, args.cnn, args.cnn_weights, args.batch_size
    )
    print(f"wrote {', '.join(splits)} features ({backbone.feature_dim}-d) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
