"""Command-line pieces shared by the training programs (the seed's flag names)."""

from __future__ import annotations

import argparse

from training.backbones import BACKBONES
from vsepp.cli import add_log_level
from vsepp.datasets.args import add_dataset_args


def add_data_args(
    p: argparse.ArgumentParser, *, fold_restval: bool = False, required: bool = True
) -> None:
    """Where the dataset is and how it is read (the seed's flags), batch and prefetch sizes."""
    g = add_dataset_args(p, fold_restval=fold_restval, required=required)
    g.add_argument("--batch_size", type=int, default=128)
    g.add_argument(
        "--prefetch_size",
        type=int,
        default=None,
        help="tf.data prefetch buffer in batches (default: autotune)",
    )
    add_log_level(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Architecture flags; the defaults are the paper's."""
    g = p.add_argument_group("model")
    g.add_argument("--cnn", default="resnet152", help=f"image backbone: {', '.join(BACKBONES)}")
    g.add_argument("--crop_size", type=int, default=224, help="image crop fed to the backbone")
    g.add_argument(
        "--resize_size", type=int, default=256, help="shorter image side before cropping"
    )
    g.add_argument(
        "--no_hflip",
        action="store_true",
        help="no random horizontal flips (for captions that say left and right)",
    )
    g.add_argument("--joint_space", type=int, default=1024, help="joint embedding size")
    g.add_argument("--word_dim", type=int, default=300, help="word embedding size")
    g.add_argument("--num_layers", type=int, default=1, help="GRU layers")
    g.add_argument(
        "--bidirectional",
        action="store_true",
        help="bidirectional GRU, forward and backward states averaged",
    )
    g.add_argument(
        "--no_imgnorm",
        action="store_true",
        help="VSE0 ablation: no L2 norm after the image projection",
    )
    g.add_argument(
        "--measure",
        choices=("cosine", "order"),
        default="cosine",
        help="similarity: cosine, or order (order embeddings)",
    )
    g.add_argument(
        "--use_abs", action="store_true", help="absolute value of the embeddings (Order0/Order++)"
    )
