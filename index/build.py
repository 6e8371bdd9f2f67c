"""Build an index directory from a dataset split with an exported model.

    python -m index.build --model_dir runs/model --images_path data/Flicker8k_Dataset \\
        --texts_path data/Flickr8k.token.txt --split test --index_dir indexes/flickr8k

Reads the split (`vsepp.datasets`) and hands it to `index.collection.build_from_split`,
which embeds every image file (skipping and recording the ones that cannot be read or
decoded) and its captions and writes the directory atomically: the previous index at
--index_dir stays whole until the new one is complete.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import faiss

from index.collection import RECALL_QUERIES, build_from_split
from index.faiss_index import DEFAULT_PARAMS, INDEX_TYPES
from vsepp.cli import add_index_dir, add_log_level, add_model_dir, program, setup_logging
from vsepp.datasets.args import add_dataset_args, add_split_args, load_split_from_args
from vsepp.model_dir import load_encoders, model_facts

log = logging.getLogger(__name__)


def _param(text: str) -> tuple[str, int | float]:
    """KEY=VALUE of --param, VALUE a number."""
    key, sep, value = text.partition("=")
    known = sorted({k for params in DEFAULT_PARAMS.values() for k in params})
    if not sep or key not in known:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=NUMBER with KEY one of {known}")
    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    return key, number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.build`."""
    p = argparse.ArgumentParser(
        prog="python -m index.build",
        description="Embed a dataset split and write a FAISS index directory.",
    )
    add_model_dir(p, help="exported model (training.export)")
    add_dataset_args(p)
    add_split_args(p, required=True)
    add_index_dir(p, "--out", help="index directory to (re)write (--out works too)")
    p.add_argument(
        "--index_type",
        default="auto",
        choices=("auto", *INDEX_TYPES),
        help="auto: exact (flat) up to 50k vectors per side, HNSW above",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="index parameter, repeatable: M, efConstruction, efSearch, nlist, nprobe, m, "
        "nbits, k_factor, niter, train_size, target_recall (0 = choose from the data)",
    )
    p.add_argument("--batch_size", type=int, default=32, help="images per model call")
    p.add_argument(
        "--copy_images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the image files into OUT/images (the service serves them from there)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means, HNSW and recall")
    p.add_argument(
        "--recall_queries", type=int, default=RECALL_QUERIES, help="queries for recall@10"
    )
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    add_log_level(p)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size={args.batch_size}: must be at least 1")
    if args.recall_queries < 1:
        p.error(f"--recall_queries={args.recall_queries}: must be at least 1")
    return args


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.build`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    split = load_split_from_args(args, args.imgs_file_path or args.split)
    encoders = load_encoders(args.model_dir)
    manifest = build_from_split(
        split,
        encoders,
        args.index_dir,
        index_type=args.index_type,
        params=dict(args.param),
        batch_size=args.batch_size,
        copy_images=args.copy_images,
        seed=args.seed,
        recall_queries=args.recall_queries,
        source={
            "images_path": str(args.images_path),
            "texts_path": str(args.texts_path),
            "split_arg": str(args.imgs_file_path or args.split),
            "dataset": args.dataset,
            "model_dir": str(args.model_dir),
            # What the dataset reader dropped before embedding (--skip_incomplete).
            "split_skipped": dict(split.skipped),
        },
        model_facts=model_facts(encoders),
    )
    log.info(
        "index %s: %d images (%s, recall@10 %.3f), %d captions (%s, recall@10 %.3f), %d skipped",
        args.index_dir,
        manifest["images"]["count"],
        manifest["images"]["index_type"],
        manifest["images"]["recall_at_10"],
        manifest["captions"]["count"],
        manifest["captions"]["index_type"],
        manifest["captions"]["recall_at_10"],
        len(manifest["skipped_images"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
