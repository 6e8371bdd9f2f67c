"""`python -m training.features`: extract backbone features for the `*_precomp` mode.

Writes a features directory (`training.feature_store`) that `training.train
--precomp_features` trains on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from training.backbones import build_backbone, preprocess_for
from training.cli import add_data_args
from training.feature_store import write_features
from training.images import ImageConfig
from vsepp.cli import UsageError, program, setup_logging
from vsepp.datasets.args import load_split_from_args


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


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    chosen = {
        s: getattr(args, f"{s}_imgs_file_path")
        for s in ("train", "val", "test")
        if getattr(args, f"{s}_imgs_file_path")
    }
    if not chosen:
        raise UsageError("name at least one of --train/--val/--test_imgs_file_path")
    splits = {s: load_split_from_args(args, f) for s, f in chosen.items()}
    backbone = build_backbone(args.cnn, args.cnn_weights, args.crop_size)
    cfg = ImageConfig(args.crop_size, args.resize_size, preprocess_for(args.cnn))
    out = write_features(
        Path(args.out), backbone.model, splits, cfg, args.cnn, args.cnn_weights, args.batch_size
    )
    print(f"wrote {', '.join(splits)} features ({backbone.feature_dim}-d) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
