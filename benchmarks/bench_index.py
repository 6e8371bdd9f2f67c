"""Benchmark the index types of `index.faiss_index` on synthetic unit vectors.

    .venv/bin/python benchmarks/bench_index.py --sizes 10000 100000 --data random clustered

For each data set and size, every index type is built with `build_index` (search parameters
tuned to `--target_recall` on held-out queries, as a real build does) and measured on the
same queries: build time, single-query latency (p50/p95, one query per call), batch
throughput, recall@10 against exact search, index size (serialised bytes) and the RSS the
process grew by while building it. Ratios are against the flat index of the same run.
`--sweep` adds the recall/latency curve of the tuned parameter (efSearch / nprobe).

Data (seeded): ``random`` = i.i.d. Gaussian directions, the hardest case for any ANN
index (every point is almost equally far from every other, so 9 of the 10 "neighbours"
are noise); ``clustered`` = a mixture of 1,024 Gaussians (cos ~0.7 to the own centre),
an easy case; ``lowrank`` = 64 latent dimensions mapped linearly into `--dim` plus 30%
isotropic noise, closer to learned embeddings (low intrinsic dimension, no hard clusters).
Queries are data rows plus noise (`index.faiss_index.sample_queries`, cos ~0.89 to the
source row).

Indexes larger than memory (the memory-budgeted on-disk build, data generated chunk by
chunk, never all in memory) are `bench_ondisk.py`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine
from index.faiss_index import (
    INDEX_TYPES,
    build_index,
    neighbour_recall,
    sample_queries,
    set_search_param,
)

log = logging.getLogger("bench_index")

CLUSTERS = 1024
LATENT = 64  # intrinsic dimension of the lowrank set
K = 10


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def make_data(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    """Seeded unit vectors [n, d] of the given kind, generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    centres = mixing = None
    if kind == "clustered":
        centres = rng.standard_normal((CLUSTERS, d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    elif kind == "lowrank":
        mixing = rng.standard_normal((LATENT, d), dtype=np.float32) / np.sqrt(LATENT)
    chunk = 65536
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, d), dtype=np.float32)
        if centres is not None:
            # Noise of norm ~1 around a unit centre: cos(point, centre) ~ 0.7.
            x = centres[rng.integers(0, CLUSTERS, m)] + x / np.sqrt(d, dtype=np.float32)
        elif mixing is not None:
            # Signal of norm ~sqrt(d) from 64 latent factors, noise of norm ~0.3 sqrt(d).
            z = rng.standard_normal((m, LATENT), dtype=np.float32)
            x = z @ mixing + 0.3 * x
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index (what images.faiss / captions.faiss would take)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = os.path.join(tmp, "x.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def single_latencies(
    index: faiss.Index, queries: np.ndarray, budget_s: float, threads: int
) -> np.ndarray:
    """Seconds per single-query search on `threads` FAISS threads, over at most `budget_s`
    (at least 10 queries)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for q in queries[:3]:  # warm caches and lazily built tables
            index.search(q[None], K)
        times = []
        start = time.perf_counter()
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            index.search(q[None], K)
            times.append(time.perf_counter() - t0)
            if i >= 9 and time.perf_counter() - start > budget_s:
                break
    finally:
        faiss.omp_set_num_threads(before)
    return np.array(times)


def measure(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray | None,
    budget_s: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Latency, throughput and recall of `index` on `queries`."""
    lat = single_latencies(index, queries, budget_s, args.query_threads)
    t0 = time.perf_counter()
    _, found = index.search(queries, K)
    batch_s = time.perf_counter() - t0
    return {
        "recall_at_1": 1.0 if truth is None else float(np.mean(found[:, 0] == truth[:, 0])),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
        "single_queries": len(lat),
        "qps_batch": len(queries) / batch_s,
        "recall_at_10": 1.0 if truth is None else neighbour_recall(found, truth),
        "found": found,
    }


def run_one(
    kind: str,
    n: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """All index types on one data set; rows for the report."""
    t0 = time.perf_counter()
    x = make_data(kind, n, args.dim, args.seed)
    log.info("%s n=%d: data in %.1fs", kind, n, time.perf_counter() - t0)
    # Exact search cost grows with n: fewer batch queries for big sets keep runs bounded.
    n_batch = min(args.batch, max(100, int(args.flat_work / (n * args.dim))))
    queries = sample_queries(x, n_batch, seed=args.seed + 7)
    rows: list[dict[str, Any]] = []
    truth = None
    flat_row: dict[str, Any] | None = None
    for index_type in args.types:
        if n > args.max_n.get(index_type, 10**12):
            log.info("%s n=%d: skipping %s (--max_n)", kind, n, index_type)
            continue
        gc.collect()
        rss0 = rss_bytes()
        params = dict(args.params.get(index_type, {}))
        if index_type != "flat":
            params.setdefault("target_recall", args.target_recall)
        t0 = time.perf_counter()
        index, info = build_index(x, index_type, seed=args.seed, **params)
        build_s = time.perf_counter() - t0
        rss1 = rss_bytes()
        size = index_bytes(index)
        m = measure(index, queries, truth, args.budget, args)
        if index_type == "flat":
            truth = m["found"]
        row = {
            "data": kind,
            "n": n,
            "dim": args.dim,
            "type": index_type,
            "factory": info["factory"],
            "params": {
                k: v
                for k, v in info["params"].items()
                if k
                in ("M", "efConstruction", "efSearch", "nlist", "nprobe", "m", "nbits", "k_factor")
            },
            "build_s": build_s,
            "index_bytes": size,
            "rss_delta_bytes": rss1 - rss0,
            "batch_queries": len(queries),
            **{k: v for k, v in m.items() if k != "found"},
        }
        if index_type == "flat":
            flat_row = row
        if flat_row is not None:
            row["speedup_p50"] = flat_row["p50_ms"] / row["p50_ms"]
            row["size_ratio"] = row["index_bytes"] / flat_row["index_bytes"]
            row["build_ratio"] = row["build_s"] / max(flat_row["build_s"], 1e-9)
        if args.sweep and index_type != "flat" and truth is not None:
            row["sweep"] = sweep(index, index_type, info, queries, truth, args)
        log.info("%s", {k: v for k, v in row.items() if k != "sweep"})
        rows.append(row)
        del index
        gc.collect()
    return rows


def sweep(
    index: faiss.Index,
    index_type: str,
    info: dict[str, Any],
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Recall / latency for powers of two of the search parameter."""
    name = "efSearch" if index_type == "hnsw" else "nprobe"
    top = 1024 if index_type == "hnsw" else int(info["params"]["nlist"])
    out = []
    value = 16 if index_type == "hnsw" else 1
    while value <= top:
        set_search_param(index, name, value)
        lat = single_latencies(index, queries[:100], args.budget / 4, args.query_threads)
        _, found = index.search(queries, K)
        out.append(
            {
                name: value,
                "recall_at_10": neighbour_recall(found, truth),
                "p50_ms": float(np.percentile(lat, 50) * 1e3),
            }
        )
        if out[-1]["recall_at_10"] >= 0.999:
            break
        value *= 2
    set_search_param(index, name, info["params"][name])
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    """The report: machine, then one table per data set and size."""
    lines = [
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB; "
        f"faiss {env['faiss']} ({env['faiss_simd']}), numpy {env['numpy']}, "
        f"Python {env['python']}; FAISS threads: {args.threads} for build and batch, "
        f"{args.query_threads} for single queries; "
        f"load average at start {env['load_avg']}, at end {env.get('load_avg_end')}.",
        f"dim {args.dim}, k = {K}, target recall {args.target_recall} (tuned on other queries).",
        "",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["n"]), []).append(r)
    for (kind, n), rs in groups.items():
        lines += [
            f"**{kind}, n = {n:,}** ({rs[0]['batch_queries']} queries for batch and recall)",
            "",
            "| type | parameters | build s | p50 ms | p95 ms | speed-up p50 | batch q/s "
            "| recall@10 | top-1 found | index MiB | RSS +MiB | size vs flat |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rs:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
            lines.append(
                f"| {r['type']} | {params} | {r['build_s']:.1f} | {r['p50_ms']:.2f} "
                f"| {r['p95_ms']:.2f} | {r.get('speedup_p50', float('nan')):.1f}x "
                f"| {r['qps_batch']:,.0f} | {r['recall_at_10']:.3f} | {_num(r.get('recall_at_1'))} "
                f"| {_mb(r['index_bytes'])} "
                f"| {_mb(r['rss_delta_bytes'])} | {r.get('size_ratio', float('nan')):.2f} |"
            )
        sweeps = [r for r in rs if r.get("sweep")]
        if sweeps:
            lines.append("")
            for r in sweeps:
                pts = ", ".join(
                    f"{next(iter(p))}={next(iter(p.values()))}: "
                    f"{p['recall_at_10']:.2f} @ {p['p50_ms']:.2f} ms"
                    for p in r["sweep"]
                )
                lines.append(f"- {r['type']} sweep (recall@10 @ p50): {pts}")
        lines.append("")
    return "\n".join(lines)


def _type_params(values: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for text in values:
        head, _, value = text.partition("=")
        index_type, _, key = head.partition(".")
        if index_type not in INDEX_TYPES or not key or not value:
            raise SystemExit(f"--param {text!r}: expected TYPE.KEY=NUMBER, e.g. hnsw.M=32")
        number = float(value)
        out.setdefault(index_type, {})[key] = int(number) if number.is_integer() else number
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument(
        "--data", nargs="+", default=["random"], choices=("random", "clustered", "lowrank")
    )
    p.add_argument("--types", nargs="+", default=list(INDEX_TYPES), choices=INDEX_TYPES)
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="FAISS threads: build, batch"
    )
    p.add_argument(
        "--query_threads", type=int, default=1, help="FAISS threads for single-query latency"
    )
    p.add_argument("--batch", type=int, default=1000, help="queries for throughput and recall")
    p.add_argument(
        "--flat_work",
        type=float,
        default=2e11,
        help="cap on batch queries x n x dim, so exact search on big sets stays bounded",
    )
    p.add_argument("--budget", type=float, default=20.0, help="seconds per latency measurement")
    p.add_argument("--target_recall", type=float, default=0.95)
    p.add_argument("--param", action="append", default=[], help="TYPE.KEY=VALUE, repeatable")
    p.add_argument("--max_n", action="append", default=[], help="TYPE=N: skip TYPE above N vectors")
    p.add_argument("--sweep", action="store_true", help="recall/latency curve per type")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json_out", type=Path, help="write all measurements here")
    p.add_argument("--markdown_out", type=Path, help="write the markdown report here")
    args = p.parse_args(argv)
    args.params = _type_params(args.param)
    args.max_n = {t: int(n) for t, _, n in (s.partition("=") for s in args.max_n)}
    if "flat" not in args.types:
        args.types = ["flat", *args.types]  # the reference for recall and the ratios
    args.types = ["flat", *[t for t in args.types if t != "flat"]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("index.faiss_index").setLevel(logging.WARNING)
    faiss.omp_set_num_threads(args.threads)
    env = {**machine(), "faiss": faiss.__version__,
           "faiss_simd": faiss.get_compile_options().strip()}  # fmt: skip
    rows: list[dict[str, Any]] = []
    for kind in args.data:
        for n in args.sizes:
            rows += run_one(kind, n, args)
            if args.json_out:
                args.json_out.write_text(json.dumps({"machine": env, "rows": rows}, indent=1))
    env["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = markdown(rows, env, args)
    print(report)
    if args.markdown_out:
        args.markdown_out.write_text(report + "\n")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
