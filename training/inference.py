"""Evaluate an exported model on a test split: `python -m training.inference` (seed flags)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.cli import add_data_args
from training.original.precomp import read_precomp_split
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
    add_data_args(p, required=False)
    p.add_argument(
        "--test_imgs_file_path",
        default=None,
        help="test split: a split file, or a split name for Karpathy JSON",
    )
    p.add_argument(
        "--precomp_data",
        type=Path,
        default=None,
        help="instead of images: a folder of the VSE++ authors' precomputed features "
        "(data.tar's DATA_precomp/) for an imported *_precomp model",
    )
    p.add_argument(
        "--precomp_split", default="test", help="split of --precomp_data: test, testall, dev"
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


def embed_precomp(
    encoders: Encoders, data_dir: Path, split: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the authors' precomputed features [N, D] and captions [5N, D]."""
    features, texts = read_precomp_split(data_dir, split)
    feature_dim = int(encoders.manifest["image"].get("feature_dim", features.shape[1]))
    if features.shape[1] != feature_dim:
        raise UsageError(
            f"--precomp_data {data_dir}: features of {features.shape[1]} values, the model "
            f"takes {feature_dim}"
        )
    images = np.concatenate(
        [
            encoders.encode_features(features[i : i + batch_size])
            for i in range(0, len(features), batch_size)
        ]
    )
    return images, embed_texts(encoders, texts, batch_size=batch_size)


def _check_inputs(args: argparse.Namespace, encoders: Encoders) -> None:
    if encoders.takes_features and args.precomp_data is None:
        raise UsageError(
            f"{args.model_dir} is a *_precomp model: evaluate it on the authors' features "
            "with --precomp_data DIR (data.tar's DATA_precomp/)"
        )
    if not encoders.takes_features and args.precomp_data is not None:
        raise UsageError(
            f"{args.model_dir} takes image files: --precomp_data is for *_precomp models"
        )
    if args.precomp_data is None:
        missing = [
            f"--{n}"
            for n in ("images_path", "texts_path", "test_imgs_file_path")
            if not getattr(args, n)
        ]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}")


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    encoders = load_encoders(args.model_dir, purpose="evaluate")
    check_manifest(encoders, args.joint_space, args.num_layers)
    _check_inputs(args, encoders)
    t0 = time.perf_counter()
    if args.precomp_data is not None:
        images, captions = embed_precomp(
            encoders, args.precomp_data, args.precomp_split, args.batch_size
        )
        name, described = (
            args.precomp_split,
            f"precomputed {args.precomp_split} of {args.precomp_data}",
        )
    else:
        split = load_split_from_args(args, args.test_imgs_file_path)
        images, captions = embed_split(encoders, split, args.batch_size)
        name, described = split.name, split.describe()
    t1 = time.perf_counter()
    metrics = evaluate(
        images, captions, measure=encoders.manifest.get("measure", "cosine"), fold5=args.fold5
    )
    log.info("embedded in %.1fs, evaluated in %.2fs", t1 - t0, time.perf_counter() - t1)
    print(f"{described}\nmodel: {args.model_dir}\n{format_metrics(metrics)}")
    if args.metrics_out:
        write_json_atomic(
            Path(args.metrics_out),
            {
                "model_dir": str(args.model_dir),
                "model_hash": encoders.model_hash,
                "split": name,
                "n_images": len(images),
                **metrics,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
