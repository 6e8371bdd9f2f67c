"""The feature store of the paper's `*_precomp` mode: backbone features extracted once.

`write_features` runs the backbone over each split's images (centre crop, as evaluation sees
them) and writes FEATURES_DIR/{split}.npy, meta.json and the backbone's weights, so the
exported image encoder recomputes exactly these features at serving time; `load_features`
reads it for training. The program is `python -m training.features`.

The stored features are L2-normalised per row, as the full image encoder normalises the CNN
output before its projection (fartashf/vsepp `EncoderImageFull`): a head trained on them is
the same model as its full counterpart, and the exported encoder (backbone, L2 norm, head)
computes exactly head(stored feature). Stores written before this rule (no
"l2_normalized" in meta.json) are normalised when read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.backbones import build_backbone
from training.images import ImageConfig
from training.pipeline import image_eval_dataset
from vsepp.atomic import atomic_directory
from vsepp.datasets import SplitData

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
        feats = np.stack([arrays[n][i] for n, i in (rows[x] for x in split.image_ids)]).astype(
            np.float32
        )
        if not self.meta.get("l2_normalized", False):
            log.info("%s: features stored raw (older store), L2-normalising them", self.root)
            feats = l2_normalize_rows(feats)
        return feats

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


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as tf.math.l2_normalize (the same 1e-12 floor)."""
    x = np.asarray(x, dtype=np.float32)
    squared = np.maximum(np.sum(np.square(x), axis=1, keepdims=True), np.float32(1e-12))
    return (x / np.sqrt(squared)).astype(np.float32)


def extract(
    backbone: keras.Model, split: SplitData, cfg: ImageConfig, batch_size: int
) -> np.ndarray:
    """L2-normalised backbone features [N, F] of a split's images, in order."""
    fn = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)
    out = []
    ds = image_eval_dataset(split, cfg, batch_size)
    total = -(-len(split.image_ids) // batch_size)
    for batch in tqdm(ds, total=total, desc=f"features {split.name}", unit="batch", disable=None):
        out.append(np.asarray(fn(batch["image"]), dtype=np.float32))
    return l2_normalize_rows(np.concatenate(out))


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
    with atomic_directory(out) as tmp:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "cnn": cnn,
            "cnn_weights": cnn_weights,
            "image_size": cfg.image_size,
            "resize_size": cfg.resize_size,
            "preprocess": cfg.preprocess,
            "l2_normalized": True,
            "splits": {},
        }
        for name, split in splits.items():
            feats = extract(backbone, split, cfg, batch_size)
            np.save(tmp / f"{name}.npy", feats)
            meta["feature_dim"] = int(feats.shape[1])
            meta["splits"][name] = {"file": f"{name}.npy", "image_ids": split.image_ids}
        backbone.save_weights(str(tmp / WEIGHTS_FILE))
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return out
