"""Build an index directory from a dataset split with an exported model.

    python -m index.build --model_dir runs/model --images_path data/Flicker8k_Dataset \\
        --texts_path data/Flickr8k.token.txt --split test --out indexes/flickr8k

Reads the split (`training.datasets.load_split`), embeds every image file (skipping and
recording the ones that cannot be read or decoded) and its captions with the model, and
writes the directory with `index.collection.build_index_dir` (atomic: the previous index
at --out stays whole until the new one is complete).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from index.collection import RECALL_QUERIES, build_index_dir
from index.embed import EncodersLike, embed_images, embed_texts
from index.encoders import load_encoders
from index.faiss_index import DEFAULT_PARAMS, INDEX_TYPES
from index.store import NewCaption, NewImage

log = logging.getLogger(__name__)


class SplitLike(Protocol):
    """What a build needs of `training.datasets.SplitData`."""

    @property
    def name(self) -> str: ...  # split name, for messages and the manifest
    @property
    def image_ids(self) -> list[str]: ...  # image i's id (its path under the images root)
    @property
    def image_paths(self) -> list[Path]: ...  # image i's file
    @property
    def captions(self) -> list[str]: ...  # image i owns rows k*i .. k*i+k-1
    @property
    def captions_per_image(self) -> int: ...  # k


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
    p.add_argument("--model_dir", required=True, help="exported model (training.export)")
    p.add_argument("--images_path", required=True, type=Path, help="images root of the dataset")
    p.add_argument("--texts_path", required=True, type=Path, help="token file or Karpathy JSON")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--imgs_file_path", "--test_imgs_file_path", type=Path, help="split file of images"
    )
    which.add_argument("--split", help="split name: train|val|test (Karpathy JSON or Flickr)")
    p.add_argument("--dataset", default="auto", help="auto|flickr8k|flickr30k|karpathy|coco")
    p.add_argument(
        "--skip_incomplete",
        action="store_true",
        help="skip images with too few captions or missing files instead of failing",
    )
    p.add_argument("--out", required=True, type=Path, help="index directory to (re)write")
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
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size={args.batch_size}: must be at least 1")
    if args.recall_queries < 1:
        p.error(f"--recall_queries={args.recall_queries}: must be at least 1")
    return args


def build_from_split(
    split: SplitLike,
    encoders: EncodersLike,
    out: Path,
    *,
    index_type: str = "auto",
    params: dict[str, Any] | None = None,
    batch_size: int = 32,
    copy_images: bool = True,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    model_facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed `split` with `encoders` and write the index directory `out`; its manifest."""
    if not split.image_ids:
        raise ValueError(f"split {split.name!r} has no images: nothing to index")
    vectors, kept, skipped = embed_images(
        encoders, split.image_ids, split.image_paths, batch_size=batch_size
    )
    if not kept:
        raise ValueError(
            f"split {split.name!r}: none of its {len(split.image_ids)} images could be embedded "
            f"(first: {skipped[0]['image_id']}: {skipped[0]['reason']})"
        )
    k = split.captions_per_image
    images = [
        NewImage(split.image_ids[i], Path(split.image_paths[i]) if copy_images else None)
        for i in kept
    ]
    captions = [
        NewCaption(split.image_ids[i], text)
        for i in kept
        for text in split.captions[k * i : k * i + k]
    ]
    caption_vectors = embed_texts(encoders, [c.text for c in captions], batch_size=8 * batch_size)
    return build_index_dir(
        out,
        vectors,
        images,
        caption_vectors,
        captions,
        model_hash=encoders.model_hash,
        index_type=index_type,
        params=params,
        seed=seed,
        recall_queries=recall_queries,
        source={"split": split.name, "captions_per_image": k, **(source or {})},
        skipped_images=skipped,
        extra={"model": model_facts} if model_facts else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.build`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    from training.datasets import load_split

    split = load_split(
        args.images_path,
        args.texts_path,
        args.imgs_file_path or args.split,
        dataset=args.dataset,
        skip_incomplete=args.skip_incomplete,
    )
    encoders = load_encoders(args.model_dir)
    measure = encoders.manifest.get("measure", "cosine")
    if measure != "cosine":
        # Order embeddings rank by order violation, which no FAISS metric computes.
        raise SystemExit(
            f"{args.model_dir} was trained with --measure {measure}; the index searches by "
            "inner product (cosine on normalised vectors): index a --measure cosine model"
        )
    facts = encoders.facts() if hasattr(encoders, "facts") else {"model_hash": encoders.model_hash}
    manifest = build_from_split(
        split,
        encoders,
        args.out,
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
            "split_skipped": dict(getattr(split, "skipped", {}) or {}),
        },
        model_facts=facts,
    )
    log.info(
        "index %s: %d images (%s, recall@10 %.3f), %d captions (%s, recall@10 %.3f), %d skipped",
        args.out,
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
