"""Benchmark the memory-budgeted on-disk build of `index.streaming` at scale.

    nice -n 10 timeout 90m .venv/bin/python benchmarks/bench_ondisk.py --n 10000000 \\
        --max_index_memory 12G --work_dir /work/tmp/bench-ondisk --json_out ondisk.json
    .venv/bin/python benchmarks/bench_ondisk.py --serve_dir KEPT_INDEX --sweep 1,2,4,8

Clustered 1024-d unit vectors (`bench_index.py`'s generator: 1,024 Gaussians, cos ~0.7
to the own centre) are generated chunk by chunk from the seed, each chunk from its own
seeded stream, so that every pass over the data regenerates exactly the same rows and
the vectors never exist all at once, not in memory and not on disk. The build is the
product's: `index.budget.choose_index` picks the index for the budget, then
`index.streaming.build_streaming` samples, trains, adds chunk by chunk and merges the
on-disk lists, with exact search streamed over the same chunks for recall@10 on 1,000
held-out queries; `index.store.write_index_dir` writes the index directory and
`index.store.load_index` maps it as the service does. Measured: build time, peak RSS
(getrusage, and the anonymous and file-backed parts sampled from /proc), index size on
disk, single-query latency on 1 FAISS thread (p50/p99), recall@10 against exact search.
The data is generated, not read from shards: the shard reader is the one thing of the
product's path this does not run (tests/test_ondisk.py does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine
from index.budget import choose_index, format_size, parse_size
from index.faiss_index import neighbour_recall, sample_queries, set_search_param
from index.store import ImageRecord, IndexPart, load_index, write_index_dir
from index.streaming import ChunkSource, build_streaming

log = logging.getLogger("bench_ondisk")

CLUSTERS = 1024  # centres of the clustered data, as bench_index.py's "clustered" kind


class RssSampler:
    """Peak anonymous and file-backed RSS of this process, sampled every `every` seconds."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def clustered_chunks(n: int, d: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """The clustered set of bench_index.py, chunk i from its own stream (seed, i)."""
    centres = np.random.default_rng(seed).standard_normal((CLUSTERS, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for i, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = np.random.default_rng([seed, i])
        x = centres[rng.integers(0, CLUSTERS, m)]
        x += rng.standard_normal((m, d), dtype=np.float32) / np.float32(np.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def latencies(index: Any, queries: np.ndarray, budget_s: float) -> np.ndarray:
    """Seconds per single-query search on 1 FAISS thread (at most `budget_s`)."""
    faiss.omp_set_num_threads(1)
    for q in queries[:5]:
        index.search(q[None], 10)
    out = []
    start = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], 10)
        out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return np.array(out)


def sweep(
    index: Any,
    queries: np.ndarray,
    truth: np.ndarray | None,
    args: Any,
    *,
    warm: bool = False,
) -> list[dict[str, Any]]:
    """Single-query latency, and recall@10 against `truth` when given, at each nprobe of
    --sweep (capped at nlist): the trade-off the tuned value is one point of. `warm`: one
    untimed pass per value first, to bring its lists into page cache."""
    ivf = faiss.extract_index_ivf(index)
    chosen = ivf.nprobe
    rows = []
    for value in sorted({min(v, ivf.nlist) for v in args.sweep}):
        set_search_param(index, "nprobe", value)
        if warm:
            latencies(index, queries, args.sweep_latency_budget)
        lat = latencies(index, queries, args.sweep_latency_budget)
        row: dict[str, Any] = {"nprobe": value}
        if truth is not None:
            faiss.omp_set_num_threads(args.threads)
            _, found = index.search(queries, 10)
            row["recall_at_10"] = round(neighbour_recall(found, truth), 4)
        row.update({"p50_ms": round(float(np.percentile(lat, 50) * 1e3), 3),
                    "p99_ms": round(float(np.percentile(lat, 99) * 1e3), 3),
                    "single_queries": len(lat)})  # fmt: skip
        log.info("nprobe %d: %s", value, row)
        rows.append(row)
    set_search_param(index, "nprobe", chosen)
    return rows


def serve_only(args: Any) -> dict[str, Any]:
    """Single-query latency of a kept index directory (`--serve_dir`) at each --sweep nprobe,
    on queries near the first chunk's rows: the page-cache figures of an index built (and
    its recall measured) by an earlier run."""
    loaded = load_index(args.serve_dir)
    first = next(clustered_chunks(args.n, args.dim, args.seed, args.chunk))
    queries = sample_queries(first, args.queries, seed=args.seed + 7)
    rows = sweep(loaded.image_index, queries, None, args, warm=True)
    return {"machine": machine(), "serve_dir": str(args.serve_dir), "sweep": rows,
            "load_avg_end": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--max_index_memory", default="12G")
    p.add_argument("--chunk", type=int, default=100_000, help="rows generated at a time")
    p.add_argument("--work_dir", type=Path, help="scratch and index (removed)")
    p.add_argument(
        "--serve_dir", type=Path, help="only time searches of this kept index (see serve_only)"
    )
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for recall")
    p.add_argument("--target_recall", type=float, default=0.95)
    p.add_argument("--latency_budget", type=float, default=60.0)
    p.add_argument(
        "--sweep",
        type=lambda text: [int(v) for v in text.split(",") if v.strip()],
        default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        help="nprobe values to measure recall and latency at besides the tuned one ('' none)",
    )
    p.add_argument("--sweep_latency_budget", type=float, default=10.0, help="seconds per value")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--keep", action="store_true", help="keep the index directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json_out", type=Path)
    args = p.parse_args(argv)
    if (args.work_dir is None) == (args.serve_dir is None):
        p.error("give --work_dir (build and measure) or --serve_dir (time a kept index)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print and write its facts."""
    args = parse_args(argv)
    # `timeout` sends SIGTERM: leave through `finally`, which removes the generated data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faiss.omp_set_num_threads(args.threads)
    if args.serve_dir is not None:
        text = json.dumps(serve_only(args), indent=1)
        print(text)
        if args.json_out:
            args.json_out.write_text(text + "\n")
        return 0
    env = machine()
    budget = parse_size(args.max_index_memory)
    choice = choose_index(args.n, args.dim, budget, chunk_rows=args.chunk,
                          recall_queries=args.queries)  # fmt: skip
    log.info("budget %s: %s (serving %s, build %s)", format_size(budget), choice.factory,
             format_size(choice.serving_bytes), format_size(choice.build_bytes))  # fmt: skip
    source = ChunkSource(
        args.n, args.dim, lambda: clustered_chunks(args.n, args.dim, args.seed, args.chunk)
    )
    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    scratch = work / "scratch"
    scratch.mkdir(parents=True)
    out: dict[str, Any] = {"machine": env, "n": args.n, "dim": args.dim,
                           "budget": args.max_index_memory, "choice": choice.factory}  # fmt: skip
    try:
        with RssSampler() as rss:
            t0 = time.perf_counter()
            built = build_streaming(source, choice, scratch, seed=args.seed,
                                    recall_queries=args.queries,
                                    target_recall=args.target_recall)  # fmt: skip
            empty = IndexPart(faiss.IndexFlatIP(args.dim), {"index_type": "flat", "params": {}})
            write_index_dir(
                work / "index",
                images=IndexPart(
                    built.index, dict(built.facts, **choice.facts(budget)), None, built.ivfdata
                ),
                captions=empty,
                image_records=[ImageRecord(str(i), None) for i in range(args.n)],
                caption_records=[],
                model_hash="bench",
            )
            build_s = time.perf_counter() - t0
            del built.index
            build_rss = dict(rss.peak)
            build_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            loaded = load_index(work / "index")
            lat = latencies(loaded.image_index, built.eval_queries, args.latency_budget)
            faiss.omp_set_num_threads(args.threads)
            _, found = loaded.image_index.search(built.eval_queries, 10)
            recall = neighbour_recall(found, built.eval_truth)
            curve = (
                sweep(loaded.image_index, built.eval_queries, built.eval_truth, args)
                if args.sweep and built.facts.get("ondisk")
                else []
            )
        files = {p.name: p.stat().st_size for p in (work / "index").iterdir() if p.is_file()}
        out.update(
            {
                "facts": built.facts,
                "estimated_serving_bytes": choice.serving_bytes,
                "estimated_build_bytes": choice.build_bytes,
                "build_s": round(build_s, 1),
                "peak_rss_build": build_rss,
                "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "ru_maxrss_build_bytes": build_maxrss,
                "peak_rss_all": dict(rss.peak),
                "index_files_bytes": files,
                "index_bytes": sum(files.values()),
                "load_mode": loaded.load_modes["images"],
                "p50_ms": float(np.percentile(lat, 50) * 1e3),
                "p99_ms": float(np.percentile(lat, 99) * 1e3),
                "single_queries": len(lat),
                "recall_at_10_loaded": recall,
                "sweep": curve,
                "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
