"""Run fartashf/vsepp's own ``i2t`` and ``t2i`` on saved embeddings (a child of bench_evaluation).

    /work/torch-venv/bin/python benchmarks/original_evaluation.py --checkout /tmp/vsepp-orig \
        --embeddings emb.npz --ranks_out ranks.npz

Run by an interpreter with torch (the original's environment); this repository's code is not
imported, and nothing of the original is copied into it. The original's ``evaluation.py``
imports its data loaders, vocabulary and model at the top (torchvision, nltk, pycocotools,
and CUDA calls in ``model.py``), none of which ``i2t``/``t2i`` use for the cosine measure, so
instead of importing the module (which would need stubs for those) this script reads its
source, takes the two function definitions out of its syntax tree unchanged, and executes
them in a namespace holding what they refer to: ``numpy``, ``torch`` and ``order_sim``
(``order_sim`` only for ``measure='order'``, which needs CUDA there and is not run).

The embeddings are laid out as the original's ``encode_data`` leaves them: float64 arrays of
5N rows each, image i repeated on rows 5i..5i+4. Prints one JSON line: seconds for ``i2t`` and
``t2i``, their metrics tuples, and versions; writes the per-query ranks to ``--ranks_out``.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy

FUNCTIONS = ("i2t", "t2i")


def load_original(checkout: Path) -> dict[str, Callable[..., Any]]:
    """``i2t`` and ``t2i`` compiled from the checkout's evaluation.py, exactly as written."""
    source_path = checkout / "evaluation.py"
    if not source_path.is_file():
        raise SystemExit(f"--checkout {checkout}: no evaluation.py there (a fartashf/vsepp tree?)")
    tree = ast.parse(source_path.read_text(), filename=str(source_path))
    defs: list[ast.stmt] = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS
    ]
    missing = set(FUNCTIONS) - {d.name for d in defs if isinstance(d, ast.FunctionDef)}
    if missing:
        raise SystemExit(f"{source_path}: no top-level function(s) {sorted(missing)}")
    import torch  # the original module imports it; its i2t/t2i refer to it for 'order'

    def order_sim(*_: Any) -> Any:
        raise NotImplementedError("measure='order' is not run by this benchmark")

    namespace: dict[str, Any] = {"numpy": numpy, "np": numpy, "torch": torch}
    namespace["order_sim"] = order_sim
    code = compile(ast.Module(body=defs, type_ignores=[]), str(source_path), "exec")
    exec(code, namespace)  # the original's own two functions, as read from its file
    return {name: namespace[name] for name in FUNCTIONS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True, help="a fartashf/vsepp tree")
    parser.add_argument("--embeddings", type=Path, required=True, help="npz: images, captions")
    parser.add_argument("--ranks_out", type=Path, required=True, help="npz for the ranks")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    original = load_original(args.checkout)
    import torch

    torch.set_num_threads(args.threads)
    with numpy.load(args.embeddings) as data:
        images, captions = data["images"], data["captions"]
    n = images.shape[0]
    # As encode_data leaves them: float64, one image row per caption.
    img_embs = numpy.repeat(images.astype(numpy.float64), 5, axis=0)
    cap_embs = captions.astype(numpy.float64)
    out: dict[str, Any] = {}
    ranks = {}
    for name in FUNCTIONS:
        start = time.perf_counter()
        # npts given: the original's default, shape[0] / 5, is a float on Python 3.
        metrics, (r, _top1) = original[name](img_embs, cap_embs, npts=n, return_ranks=True)
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"{name}_metrics"] = [float(x) for x in metrics]
        ranks[name] = r
    numpy.savez(args.ranks_out, **ranks)
    out.update(torch=torch.__version__, numpy=numpy.__version__, python=platform.python_version())
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
