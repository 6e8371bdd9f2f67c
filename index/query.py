"""Search an index directory from the command line (`python -m index.query`).

    python -m index.query --model_dir runs/model --index_dir indexes/flickr8k "a dog runs"
    python -m index.query --model_dir runs/model --index_dir indexes/flickr8k --image dog.jpg -k 5

The index must have been built with this model (same hash and embedding size).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from index.args import add_index_dir
from index.search import CaptionHit, ImageHit, search_image, search_text
from index.store import check_built_with, load_index
from vsepp.cli import UsageError, add_log_level, add_model_dir, at_least_one, program, setup_logging
from vsepp.model_dir import load_encoders

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.query`."""
    p = argparse.ArgumentParser(prog="python -m index.query", description="Search an index.")
    add_model_dir(p, help="exported model the index was built with")
    add_index_dir(p, "--index", help="index directory (--index works too)")
    p.add_argument("query", nargs="?", help="caption query: find images (same as --text)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--text", help="caption query: find images")
    what.add_argument("--image", type=Path, help="image file query: find captions")
    p.add_argument("-k", type=at_least_one, default=10, help="number of results")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no_mmap", action="store_true", help="read the index into memory")
    add_log_level(p, default="WARNING")
    args = p.parse_args(argv)
    if args.query is not None:
        if args.text is not None or args.image is not None:
            p.error("give the query once: as text, --text or --image")
        args.text = args.query
    if args.text is None and args.image is None:
        p.error("give a caption to find images, or --image PATH to find captions")
    if args.text is not None and not args.text.strip():
        p.error("--text is empty")
    return args


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.query`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    blob = None
    if args.image is not None:
        try:
            blob = args.image.read_bytes()
        except OSError as e:
            raise UsageError(f"--image {args.image}: cannot read it ({e.strerror})") from e
    encoders = load_encoders(args.model_dir)
    loaded = load_index(args.index_dir, mmap=not args.no_mmap)
    check_built_with(loaded.index_dir, loaded.manifest, encoders.model_hash, encoders.embed_dim)
    hits: list[ImageHit] | list[CaptionHit]
    if blob is not None:
        hits = search_image(encoders, loaded, blob, args.k)
    else:
        hits = search_text(encoders, loaded, args.text, args.k)
    if args.json:
        print(json.dumps({"results": [asdict(h) for h in hits]}, indent=1, ensure_ascii=False))
    else:
        for h in hits:
            what = h.caption if isinstance(h, CaptionHit) else f"{h.image_id}  {h.captions[:1]}"
            print(f"{h.rank:>3}  {h.score:.4f}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
