"""Time the vectorised retrieval protocol against the original's per-query loops.

    python benchmarks/bench_evaluation.py            # 1K and 5K at D=1024 (naive 5K: minutes)
    python benchmarks/bench_evaluation.py --quick    # small sizes, seconds
    python benchmarks/bench_evaluation.py --original_only \
        --vsepp_checkout /tmp/vsepp-orig --torch_python /work/torch-venv/bin/python

Prints a markdown table: wall time of ``vsepp.evaluation.evaluate`` (both directions and
the metrics) and of a transcription of fartashf/vsepp's ``i2t``/``t2i`` loops on the same
seeded embeddings, their ratio, whether the ranks agree, and the vectorised peak memory.

A second table (``--precision_only`` prints it alone) times, in the same run, the default
mixed-precision evaluation (float32 scores, float64 re-scores of what float32 cannot
separate) against the float64 path (``precision="float64"``) and the bare score products
``images @ captions.T`` in float32 and float64, and checks the mixed ranks equal the
float64 ones.

A third table (with ``--vsepp_checkout`` and ``--torch_python``; ``--original_only`` prints it
alone) runs the original's own ``i2t`` and ``t2i`` (fartashf/vsepp ``evaluation.py``, float64)
on the same embeddings in a child process of that interpreter (``original_evaluation.py``:
the checkout is read, not copied), times them against ours and the bare float32 product in
the same run, and checks that the per-query ranks and the R@K/medr/meanr tuples are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.evaluation_reference import naive_i2t, naive_t2i
from vsepp.evaluation import (
    CAPTIONS_PER_IMAGE,
    DEFAULT_MAX_BYTES,
    both_ranks,
    evaluate,
    i2t_ranks,
    recall_metrics,
    t2i_ranks,
)

ORIGINAL_SCRIPT = Path(__file__).resolve().with_name("original_evaluation.py")


def make_embeddings(
    n: int, dim: int, seed: int = 0, noise: float = 2.5
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 pairs, captions noisy copies of their image.

    At D=1024 and the default noise every positive is far above the rest (R@1 = 100 % at
    1K): fine for timing, too easy for a check of ranks; noise 10 gives R@1 84 % i2t and
    49 % t2i at 1K.
    """
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, dim), dtype=np.float32)
    gauss = rng.standard_normal((CAPTIONS_PER_IMAGE * n, dim), dtype=np.float32)
    captions = np.repeat(images, CAPTIONS_PER_IMAGE, axis=0) + noise * gauss
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    return images, captions


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_mb(fn: Callable[[], object]) -> float:
    """Peak traced allocation (numpy reports its buffers to tracemalloc), in MB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (100 and 500 images)")
    parser.add_argument("--dim", type=int, default=1024, help="embedding size")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised code")
    parser.add_argument(
        "--skip_naive_above",
        type=int,
        default=10**9,
        help="skip the naive loop for sets with more images than this",
    )
    parser.add_argument(
        "--precision_only", action="store_true", help="only the mixed-precision table"
    )
    parser.add_argument(
        "--vsepp_checkout",
        type=Path,
        default=None,
        help="a fartashf/vsepp tree: time its own i2t/t2i beside ours (needs --torch_python)",
    )
    parser.add_argument(
        "--torch_python",
        default="",
        help="interpreter with torch 2.13.0 and numpy that runs the original's code",
    )
    parser.add_argument(
        "--original_only", action="store_true", help="only the table against the original"
    )
    parser.add_argument(
        "--noise", type=float, default=2.5, help="caption noise (10: non-trivial ranks)"
    )
    parser.add_argument(
        "--sets", default="1K,5K", help="which of 1K, 5K to run (comma-separated; not --quick)"
    )
    parser.add_argument(
        "--original_repeat", type=int, default=1, help="runs of the original (best of N)"
    )
    parser.add_argument(
        "--max_bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="score-chunk budget of the vectorised code",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    sizes = [(k, n) for k, n in (("1K", 1000), ("5K", 5000)) if k in sets]
    if args.quick:
        sizes = [("quick", 100), ("quick", 500)]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({affinity} usable)")
    print(
        f"- numpy {np.__version__}, Python {platform.python_version()}, D={args.dim}, "
        f"float64 scores, chunk budget {args.max_bytes / 2**20:.0f} MB"
    )
    print(f"- load average at start: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    if (args.original_only or args.vsepp_checkout) and not (
        args.vsepp_checkout and args.torch_python
    ):
        raise SystemExit("the original's table needs both --vsepp_checkout and --torch_python")
    if args.precision_only:
        precision_table(sizes, args)
        return 0
    if args.original_only:
        original_table(sizes, args)
        return 0
    print(
        "| protocol | images / captions | vectorised (s) | naive loop (s) | speed-up "
        "| ranks identical | vectorised peak MB |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for label, n in sizes:
        images, captions = make_embeddings(n, args.dim)

        def vectorised(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return evaluate(ims, caps, max_bytes=args.max_bytes)

        fast = best_time(vectorised, args.repeat)
        peak = peak_mb(vectorised)
        if n <= args.skip_naive_above:
            # The original keeps its embeddings in float64 arrays.
            ims64, caps64 = images.astype(np.float64), captions.astype(np.float64)
            start = time.perf_counter()
            naive = (naive_i2t(ims64, caps64), naive_t2i(ims64, caps64))
            slow = time.perf_counter() - start
            same = np.array_equal(
                i2t_ranks(images, captions, max_bytes=args.max_bytes), naive[0]
            ) and np.array_equal(t2i_ranks(images, captions, max_bytes=args.max_bytes), naive[1])
            naive_cells = f"{slow:.2f} | {slow / fast:.0f}x | {'yes' if same else 'NO'}"
        else:
            naive_cells = "skipped | | "
        print(
            f"| {label} | {n} / {CAPTIONS_PER_IMAGE * n} | {fast:.3f} | {naive_cells} "
            f"| {peak:.0f} |"
        )
    if not args.quick:
        n = sizes[-1][1]
        images, captions = make_embeddings(n, args.dim)

        def folds() -> object:
            return evaluate(images, captions, fold5=True, max_bytes=args.max_bytes)

        print(
            f"| 5K fold5 (5 x 1K + full) | {n} / {CAPTIONS_PER_IMAGE * n} "
            f"| {best_time(folds, 1):.3f} | | | | |"
        )
    print()
    precision_table(sizes, args)
    if args.vsepp_checkout:
        print()
        original_table(sizes, args)
    return 0


def precision_table(sizes: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """Mixed precision against the float64 path and the bare products, same run."""
    print(
        "| set | mixed (s) | float64 path (s) | float32 product (s) | float64 product (s) "
        "| mixed / float32 product | float64 path / mixed | ranks identical |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, n in sizes:
        images, captions = make_embeddings(n, args.dim)
        ims64, caps64 = images.astype(np.float64), captions.astype(np.float64)

        def mixed(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return both_ranks(ims, caps, max_bytes=args.max_bytes, precision="mixed")

        def exact(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return both_ranks(ims, caps, max_bytes=args.max_bytes, precision="float64")

        def product32(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return ims @ caps.T

        def product64(ims: np.ndarray = ims64, caps: np.ndarray = caps64) -> object:
            return ims @ caps.T

        times: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved, so load changes fall on all four
            for name, fn in (("mixed", mixed), ("exact", exact), ("p32", product32),
                             ("p64", product64)):  # fmt: skip
                times[name] = min(times.get(name, float("inf")), best_time(fn, 1))
        got, want = mixed(), exact()
        same = all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))  # type: ignore[call-overload]
        print(
            f"| {label} | {times['mixed']:.3f} | {times['exact']:.3f} | {times['p32']:.3f} "
            f"| {times['p64']:.3f} | {times['mixed'] / times['p32']:.2f}x "
            f"| {times['exact'] / times['mixed']:.2f}x | {'yes' if same else 'NO'} |"
        )


def run_original(
    images: np.ndarray, captions: np.ndarray, args: argparse.Namespace
) -> dict[str, object]:
    """The original's i2t and t2i in a child of ``--torch_python``: times, metrics, ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        emb, out = Path(tmp) / "emb.npz", Path(tmp) / "ranks.npz"
        np.savez(emb, images=images, captions=captions)
        cmd = [args.torch_python, str(ORIGINAL_SCRIPT), "--checkout", str(args.vsepp_checkout)]
        cmd += ["--embeddings", str(emb), "--ranks_out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise SystemExit(f"the original's evaluation failed ({proc.returncode}): {tail}")
        result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as ranks:
            result["i2t_ranks"], result["t2i_ranks"] = ranks["i2t"], ranks["t2i"]
    return result


def metrics_tuple(ranks: np.ndarray) -> list[float]:
    m = recall_metrics(ranks)
    return [m["r1"], m["r5"], m["r10"], m["medr"], m["meanr"]]


def original_table(sizes: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """The original's own i2t+t2i against ours and the bare float32 product, same run."""
    print(
        "| set | original i2t+t2i (s) | ours (s) | original / ours | ours mixed (s) "
        "| original / mixed | float32 product (s) | mixed / float32 product "
        "| ranks identical | R@K, medr, meanr identical |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    versions = ""
    for label, n in sizes:
        images, captions = make_embeddings(n, args.dim, noise=args.noise)

        def ours(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return evaluate(ims, caps, max_bytes=args.max_bytes)

        def mixed(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return evaluate(ims, caps, max_bytes=args.max_bytes, precision="mixed")

        def product32(ims: np.ndarray = images, caps: np.ndarray = captions) -> object:
            return ims @ caps.T

        fns = {"ours": ours, "mixed": mixed, "p32": product32}
        times: dict[str, float] = {}
        original_s = float("inf")
        original: dict[str, object] = {}
        # Ours before and after each run of the original, so load changes fall on both.
        rounds = max(args.repeat, args.original_repeat + 1)
        for r in range(rounds):
            for name, fn in fns.items():
                times[name] = min(times.get(name, float("inf")), best_time(fn, 1))
            if r < args.original_repeat:
                original = run_original(images, captions, args)
                original_s = min(original_s, float(original["i2t_s"]) + float(original["t2i_s"]))  # type: ignore[arg-type]
        i2t, t2i = both_ranks(images, captions, max_bytes=args.max_bytes)
        same_ranks = np.array_equal(i2t, original["i2t_ranks"]) and np.array_equal(  # type: ignore[arg-type]
            t2i,
            original["t2i_ranks"],  # type: ignore[arg-type]
        )
        same_metrics = (
            metrics_tuple(i2t) == original["i2t_metrics"]
            and metrics_tuple(t2i) == original["t2i_metrics"]
        )
        versions = (
            f"original run by Python {original['python']}, torch {original['torch']}, "
            f"numpy {original['numpy']}"
        )
        print(
            f"| {label} | {original_s:.3f} | {times['ours']:.3f} "
            f"| {original_s / times['ours']:.1f}x | {times['mixed']:.3f} "
            f"| {original_s / times['mixed']:.1f}x | {times['p32']:.3f} "
            f"| {times['mixed'] / times['p32']:.2f}x | {'yes' if same_ranks else 'NO'} "
            f"| {'yes' if same_metrics else 'NO'} |"
        )
    print()
    print(f"- {versions}; load average at end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    raise SystemExit(main())
