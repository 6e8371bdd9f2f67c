"""Append images and captions to an index directory (`python -m index.add`).

Embeds a dataset split (the same flags as `index.build`) or a JSON list of
``{"file": PATH, "captions": [...], "image_id": optional}`` with the model the index was
built with, and appends it (`index.update.add_with_model`): atomic, as a build is.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import faiss

from index.update import add_with_model, read_items
from vsepp.cli import add_index_dir, add_log_level, add_model_dir, program, setup_logging
from vsepp.datasets.args import add_dataset_args, add_split_args, load_split_from_args
from vsepp.model_dir import load_encoders

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.add`."""
    p = argparse.ArgumentParser(
        prog="python -m index.add", description="Append images and captions to an index."
    )
    add_model_dir(p, help="exported model the index was built with")
    add_index_dir(p, "--index", help="index directory to append to (--index works too)")
    # What to add: a dataset split, or --items.
    add_dataset_args(p, required=False)
    add_split_args(p, required=False)
    p.add_argument(
        "--items", type=Path, help='JSON list of {"file", "captions": [...], "image_id"?}'
    )
    p.add_argument("--batch_size", type=int, default=32, help="images / captions per model call")
    p.add_argument(
        "--copy_images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the image files into INDEX/images (needed to serve them)",
    )
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the recall measurement")
    add_log_level(p)
    args = p.parse_args(argv)
    if (args.items is None) == (args.texts_path is None):
        p.error("give either --items or a dataset (--images_path --texts_path --split/...)")
    if args.texts_path is not None:
        if args.images_path is None:
            p.error("--texts_path needs --images_path")
        if (args.imgs_file_path is None) == (args.split is None):
            p.error("give exactly one of --imgs_file_path and --split")
    if args.batch_size < 1:
        p.error(f"--batch_size={args.batch_size}: must be at least 1")
    return args


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.add`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.items is not None:
        ids, files, caps = read_items(args.items)
    else:
        split = load_split_from_args(args, args.imgs_file_path or args.split)
        ids, files = list(split.image_ids), list(split.image_paths)
        caps = [split.captions_of(i) for i in range(len(ids))]
    encoders = load_encoders(args.model_dir)
    manifest = add_with_model(
        encoders,
        args.index_dir,
        ids,
        files,
        caps,
        batch_size=args.batch_size,
        copy_images=args.copy_images,
        seed=args.seed,
    )
    log.info(
        "%s now holds %d images and %d captions",
        args.index_dir,
        manifest["images"]["count"],
        manifest["captions"]["count"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
