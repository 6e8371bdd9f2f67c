"""The dataset flags, added the same way to every program that reads a dataset split."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vsepp.datasets.core import SplitData
from vsepp.datasets.loader import DATASETS, load_split


def add_dataset_args(
    p: argparse.ArgumentParser, *, required: bool = True, fold_restval: bool = False
) -> argparse._ArgumentGroup:
    """--images_path, --texts_path, --dataset and --skip_incomplete (the seed's names).

    The split flags differ by program (`--train_imgs_file_path`, `--split`, ...) and are
    added by each. `fold_restval` also offers --fold_restval (training's COCO setting).
    """
    g = p.add_argument_group("dataset")
    g.add_argument("--images_path", required=required, help="folder of the images")
    g.add_argument(
        "--texts_path",
        required=required,
        help="caption file: Flickr token file or Karpathy dataset_*.json",
    )
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default="auto",
        help="dataset layout (auto: .json is Karpathy, else a Flickr token file)",
    )
    g.add_argument(
        "--skip_incomplete",
        action="store_true",
        help="skip (and count) images with too few captions or missing on disk, "
        "instead of stopping with an error",
    )
    if fold_restval:
        g.add_argument(
            "--fold_restval",
            action="store_true",
            help="Karpathy JSON: train on restval too (the paper's COCO setting)",
        )
    return g


def add_split_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """One split to read: --imgs_file_path (alias --test_imgs_file_path) or --split NAME."""
    which = p.add_mutually_exclusive_group(required=required)
    which.add_argument(
        "--imgs_file_path", "--test_imgs_file_path", type=Path, help="split file of images"
    )
    which.add_argument("--split", help="split name: train|val|test (Karpathy JSON or Flickr)")


def load_split_from_args(
    args: argparse.Namespace, split: str | os.PathLike[str], *, fold_restval: bool = False
) -> SplitData:
    """`load_split` of the split file or name `split` with the flags of `add_dataset_args`."""
    return load_split(
        args.images_path,
        args.texts_path,
        split,
        dataset=args.dataset,
        skip_incomplete=args.skip_incomplete,
        fold_restval=fold_restval,
    )
