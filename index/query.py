"""Search an index directory from the command line (`python -m index.query`).

    python -m index.query --model_dir runs/model --index indexes/flickr8k --text "a dog runs"
    python -m index.query --model_dir runs/model --index indexes/flickr8k --image dog.jpg -k 5

The index must have been built with this model (same hash and embedding size).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.embed import EncodersLike
from index.encoders import load_encoders
from index.store import LoadedIndex, load_index

log = logging.getLogger(__name__)


def check_model(encoders: EncodersLike, loaded: LoadedIndex) -> None:
    """Refuse a model whose embedding size differs from the index's."""
    if int(encoders.embed_dim) != loaded.dim:
        raise ValueError(
            f"the model's embed_dim is {encoders.embed_dim}, index {loaded.index_dir} has "
            f"dim {loaded.dim}"
        )


def search_text(
    encoders: EncodersLike, loaded: LoadedIndex, text: str, k: int
) -> list[dict[str, Any]]:
    """Images for a caption query, best first."""
    vectors, _ = encoders.encode_texts([text])
    scores, rows = loaded.search_images(np.asarray(vectors, np.float32), k)
    return [
        {
            "rank": rank + 1,
            "image_id": loaded.image_ids[row],
            "score": float(score),
            "captions": loaded.captions_of(int(row)),
        }
        for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True))
        if row >= 0
    ]


def search_image(
    encoders: EncodersLike, loaded: LoadedIndex, blob: bytes, k: int
) -> list[dict[str, Any]]:
    """Captions for an image query, best first."""
    vectors = encoders.encode_image_bytes([blob])
    scores, rows = loaded.search_captions(np.asarray(vectors, np.float32), k)
    return [
        {
            "rank": rank + 1,
            "caption": loaded.captions[row],
            "caption_id": loaded.caption_ids[row],
            "image_id": loaded.image_ids[loaded.caption_image_rows[row]],
            "score": float(score),
        }
        for rank, (score, row) in enumerate(zip(scores[0], rows[0], strict=True))
        if row >= 0
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.query`."""
    p = argparse.ArgumentParser(prog="python -m index.query", description="Search an index.")
    p.add_argument("--model_dir", required=True, help="exported model the index was built with")
    p.add_argument("--index", required=True, type=Path, help="index directory")
    p.add_argument("query", nargs="?", help="caption query: find images (same as --text)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--text", help="caption query: find images")
    what.add_argument("--image", type=Path, help="image file query: find captions")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no_mmap", action="store_true", help="read the index into memory")
    args = p.parse_args(argv)
    if args.query is not None:
        if args.text is not None or args.image is not None:
            p.error("give the query once: as text, --text or --image")
        args.text = args.query
    if args.text is None and args.image is None:
        p.error("give a caption to find images, or --image PATH to find captions")
    if args.k < 1:
        p.error(f"-k={args.k}: must be at least 1")
    if args.text is not None and not args.text.strip():
        p.error("--text is empty")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.query`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    blob = None
    if args.image is not None:
        try:
            blob = args.image.read_bytes()
        except OSError as e:
            raise SystemExit(f"--image {args.image}: cannot read it ({e.strerror})") from e
    encoders = load_encoders(args.model_dir)
    loaded = load_index(args.index, expected_model_hash=encoders.model_hash, mmap=not args.no_mmap)
    check_model(encoders, loaded)
    if blob is not None:
        results = search_image(encoders, loaded, blob, args.k)
    else:
        results = search_text(encoders, loaded, args.text, args.k)
    if args.json:
        print(json.dumps({"results": results}, indent=1, ensure_ascii=False))
    else:
        for r in results:
            what = r["caption"] if "caption" in r else f"{r['image_id']}  {r['captions'][:1]}"
            print(f"{r['rank']:>3}  {r['score']:.4f}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
