"""Evaluate an exported model on a test split: `python -m training.inference` (seed flags)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.cli import add_data_args
from vsepp.atomic import write_json_atomic
from vsepp.cli import UsageError, add_model_dir, program, setup_logging
from vsepp.datasets import SplitData
from vsepp.datasets.args import load_split_from_args
from vsepp.embed import embed_images, embed_texts
from vsepp.evaluation import evaluate, format_metrics
from vsepp.model_dir import Encoders, load_encoders

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
    add_model_dir(
        p,
        "--checkpoint_path",
        "--checkpointh_path",
        help="model directory written by training.train (the seed's names --checkpoint_path "
        "and its spelling --checkpointh_path work too)",
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
        raise UsageError(
            f"--joint_space {joint_space} but the model in {encoders.model_dir} has "
            f"{encoders.embed_dim}"
        )
    layers = manifest.get("text", {}).get("num_layers")
    if num_layers is not None and layers is not None and num_layers != layers:
        raise UsageError(
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
        raise UsageError(f"{len(skipped)} test images cannot be read: {names}")
    return images, embed_texts(encoders, split.captions, batch_size=batch_size)


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    encoders = load_encoders(args.model_dir)
    check_manifest(encoders, args.joint_space, args.num_layers)
    split = load_split_from_args(args, args.test_imgs_file_path)
    t0 = time.perf_counter()
    images, captions = embed_split(encoders, split, args.batch_size)
    t1 = time.perf_counter()
    metrics = evaluate(
        images, captions, measure=encoders.manifest.get("measure", "cosine"), fold5=args.fold5
    )
    log.info("embedded in %.1fs, evaluated in %.2fs", t1 - t0, time.perf_counter() - t1)
    print(f"{split.describe()}\nmodel: {args.model_dir}\n{format_metrics(metrics)}")
    if args.metrics_out:
        write_json_atomic(
            Path(args.metrics_out),
            {
                "model_dir": str(args.model_dir),
                "model_hash": encoders.model_hash,
                "split": split.name,
                "n_images": len(split.image_ids),
                **metrics,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
