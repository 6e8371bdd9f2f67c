"""Remove images from an index directory (`python -m index.remove`).

    python -m index.remove --index_dir idx --image_id holiday/IMG_0001.jpg [...]
    python -m index.remove --index_dir idx --missing

`--missing` removes every image whose source file is gone. Atomic, as a build is; recall@10
in the manifest is measured again (`index.update.remove_from_index`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from index.args import add_index_dir
from index.update import missing_images, remove_from_index
from vsepp.cli import add_log_level, program, setup_logging

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.remove`."""
    p = argparse.ArgumentParser(
        prog="python -m index.remove", description="Remove images from an index."
    )
    add_index_dir(p, "--index", help="index directory to remove from (--index works too)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--image_id", nargs="+", help="ids of the images to remove")
    which.add_argument(
        "--missing", action="store_true", help="remove every image whose source file is gone"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the rebuilt indexes and recall")
    add_log_level(p)
    return p.parse_args(argv)


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.remove`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    ids = missing_images(args.index_dir) if args.missing else list(args.image_id)
    if not ids:
        print(f"{args.index_dir}: no image's source file is missing; nothing to remove")
        return 0
    manifest = remove_from_index(args.index_dir, ids, seed=args.seed)
    print(f"removed {len(ids)} images; {manifest['images']['count']} left in {args.index_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
