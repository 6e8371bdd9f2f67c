"""Evaluate an exported model on a test split: `python -m training.inference` (seed flags)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from index.embed import embed_images, embed_texts
from index.encoders import Encoders, load_encoders
from training.cli import add_data_args, setup_logging
from training.datasets import SplitData, load_split
from training.evaluation import evaluate, format_metrics
from training.text import write_json_atomic

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.inference",
        description="Recall@K, median and mean rank of an exported model on a test split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_args(p)
    p.add_argument(
        "--test_imgs_file_path",
        required=True,
        help="test split: a split file, or a split name for Karpathy JSON",
    )
    p.add_argument(
        "--checkpoint_path",
        "--checkpointh_path",
        dest="checkpoint_path",
        required=True,
        help="model directory written by training.train "
        "(--checkpointh_path is the seed's spelling)",
    )
    p.add_argument(
        "--joint_space",
        type=int,
        default=None,
        help="expected joint space; checked against the model's manifest",
    )
    p.add_argument(
        "--num_layers",
        type=int,
        default=None,
        help="expected GRU layers; checked against the model's manifest",
    )
    p.add_argument(
        "--fold5",
        action="store_true",
        help="COCO protocol: five 1K folds averaged, plus the full 5K",
    )
    p.add_argument("--metrics_out", default=None, help="also write the metrics as JSON here")
    return p.parse_args(argv)


def check_manifest(encoders: Encoders, joint_space: int | None, num_layers: int | None) -> None:
    """The seed passed the architecture by hand: refuse one that disagrees with the model."""
    manifest = encoders.manifest
    if joint_space is not None and joint_space != encoders.embed_dim:
        raise SystemExit(
            f"--joint_space {joint_space} but the model in {encoders.model_dir} has "
            f"{encoders.embed_dim}"
        )
    layers = manifest.get("text", {}).get("num_layers")
    if num_layers is not None and layers is not None and num_layers != layers:
        raise SystemExit(
            f"--num_layers {num_layers} but the model in {encoders.model_dir} has {layers}"
        )


def embed_split(
    encoders: Encoders, split: SplitData, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of a split's images [N, D] and captions [5N, D] with the exported encoders."""
    images, _, skipped = embed_images(
        encoders, split.image_ids, split.image_paths, batch_size=batch_size
    )
    if skipped:
        # A dropped image would shift every later row and corrupt Recall@K.
        names = ", ".join(f"{s['image_id']} ({s['reason']})" for s in skipped[:5])
        raise SystemExit(f"{len(skipped)} test images cannot be read: {names}")
    return images, embed_texts(encoders, split.captions, batch_size=batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    encoders = load_encoders(args.checkpoint_path)
    check_manifest(encoders, args.joint_space, args.num_layers)
    split = load_split(
        args.images_path,
        args.texts_path,
        args.test_imgs_file_path,
        dataset=args.dataset,
        skip_incomplete=args.skip_incomplete,
    )
    t0 = time.perf_counter()
    images, captions = embed_split(encoders, split, args.batch_size)
    t1 = time.perf_counter()
    metrics = evaluate(
        images, captions, measure=encoders.manifest.get("measure", "cosine"), fold5=args.fold5
    )
    log.info("embedded in %.1fs, evaluated in %.2fs", t1 - t0, time.perf_counter() - t1)
    print(f"{split.describe()}\nmodel: {args.checkpoint_path}\n{format_metrics(metrics)}")
    if args.metrics_out:
        write_json_atomic(
            Path(args.metrics_out),
            {
                "model_dir": str(args.checkpoint_path),
                "model_hash": encoders.model_hash,
                "split": split.name,
                "n_images": len(split.image_ids),
                **metrics,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
