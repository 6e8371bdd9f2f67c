"""`python -m index.evaluate`: the VSE++ R@K protocol on an index directory's own vectors.

Prints the exact metrics (`index.retrieval_metrics.evaluate_index`), and for an approximate
index what its own top-10 search gives beside exact search. `--metrics_out` writes the same JSON as
`training.inference --metrics_out` at its top level.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import faiss

from index.args import add_faiss_threads, add_index_dir
from index.retrieval_metrics import evaluate_index, format_comparison
from index.store import load_index
from vsepp.atomic import write_json_atomic
from vsepp.cli import add_log_level, program, setup_logging
from vsepp.evaluation import format_metrics

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.evaluate`."""
    p = argparse.ArgumentParser(
        prog="python -m index.evaluate", description="R@K of an index directory's own vectors."
    )
    add_index_dir(p, "--index", help="index directory (--index works too)")
    p.add_argument("--metrics_out", type=Path, help="write the metrics here as JSON")
    p.add_argument("--fold5", action="store_true", help="also the 5 x 1K folds (COCO 5K)")
    add_faiss_threads(p)
    add_log_level(p)
    return p.parse_args(argv)


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.evaluate`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    loaded = load_index(args.index_dir, mmap=False)
    result = evaluate_index(loaded, fold5=args.fold5)
    print(format_metrics(result["exact"]))
    if result["approximate"]:
        print()
        print(format_comparison(result))
    if args.metrics_out is not None:
        # The exact metrics at the top level, as training.inference writes them; what the
        # approximate index itself gives, and the difference, beside them.
        payload = {
            "index": str(args.index_dir),
            "model_hash": loaded.model_hash,
            **result["exact"],
            **result,
        }
        write_json_atomic(args.metrics_out, payload)
        log.info("wrote %s", args.metrics_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
