"""Load test of the search service: latency percentiles and throughput, batching on and off.

Starts `python -m service` on 127.0.0.1 (loopback only) for each batching setting, drives
POST /search/text at several concurrencies and POST /search/image at a few, each scenario
bounded by a request count and a time limit, then stops the server. It also times the
encoders' own forward passes in this process, to compare the service's latency with the
model's share of it.

    python benchmarks/bench_service.py --model_dir runs/demo/model --index_dir indexes/demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the benchmark never leaves this machine


@dataclass
class Result:
    """One scenario's numbers."""

    endpoint: str
    batching: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32; got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers like 2,0; got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_dir", required=True, type=Path, help="exported model directory")
    p.add_argument("--index_dir", required=True, type=Path, help="index directory")
    p.add_argument("--text_concurrency", type=_ints, default=[1, 8, 32])
    p.add_argument("--image_concurrency", type=_ints, default=[1, 4])
    p.add_argument(
        "--batch_windows_ms",
        type=_floats,
        default=[2.0, 0.0],
        help="VSEPP_BATCH_WINDOW_MS values to compare (0 = batching off); default 2,0",
    )
    p.add_argument("--batch_max", type=int, default=32, help="VSEPP_BATCH_MAX")
    p.add_argument("--requests", type=int, default=300, help="requests per text scenario")
    p.add_argument("--image_requests", type=int, default=60, help="requests per image scenario")
    p.add_argument("--max_seconds", type=float, default=30.0, help="time limit per scenario")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests per scenario")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--forward_repeats", type=int, default=30, help="in-process encoder timings")
    p.add_argument("--startup_timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    for name in ("model_dir", "index_dir"):
        if not getattr(args, name).is_dir():
            p.error(f"--{name} {getattr(args, name)} is not a directory")
    for name in ("requests", "image_requests", "forward_repeats", "batch_max", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.max_seconds <= 0:
        p.error("--max_seconds must be positive")
    return args


# --------------------------------------------------------------------------- workload


def load_workload(index_dir: Path, seed: int) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Captions of the index as text queries and its stored images as uploads."""
    rng = random.Random(seed)
    captions = [c["text"] for c in json.loads((index_dir / "captions.json").read_text())]
    rng.shuffle(captions)
    images = []
    for record in json.loads((index_dir / "images.json").read_text()):
        if record.get("path"):
            path = index_dir / "images" / record["path"]
            if path.is_file():
                images.append((path.name, path.read_bytes()))
        if len(images) >= 64:
            break
    if not captions or not images:
        raise SystemExit(f"{index_dir}: needs captions and stored images to benchmark with")
    return captions, images


def _content_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower()
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif"}.get(
        suffix, "application/octet-stream"
    )


async def run_scenario(
    base_url: str,
    endpoint: str,
    concurrency: int,
    total: int,
    max_seconds: float,
    warmup: int,
    k: int,
    captions: list[str],
    images: list[tuple[str, bytes]],
) -> tuple[list[float], int, float]:
    """(latencies in seconds, errors, wall seconds) of `total` requests at `concurrency`."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits) as client:

        async def one(i: int) -> bool:
            if endpoint == "/search/text":
                response = await client.post(
                    endpoint, json={"query": captions[i % len(captions)], "k": k}
                )
            else:
                name, data = images[i % len(images)]
                response = await client.post(
                    endpoint,
                    files={"file": (name, data, _content_type(name))},
                    data={"k": str(k)},
                )
            return response.status_code == 200

        for i in range(warmup):
            await one(i)
        latencies: list[float] = []
        errors = 0
        next_i = 0
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < total and time.perf_counter() < deadline:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    ok = await one(i)
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def summarise(
    endpoint: str, batching: str, concurrency: int, latencies: list[float], errors: int, wall: float
) -> Result:
    """Percentiles and throughput of one scenario."""
    ms = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return Result(
        endpoint=endpoint,
        batching=batching,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=round(wall, 3),
        rps=round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p95_ms=round(float(np.percentile(ms, 95)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
    )


# --------------------------------------------------------------------------- server


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class ServiceProcess:
    """`python -m service` on 127.0.0.1 with one batching setting, as a context manager."""

    def __init__(self, args: argparse.Namespace, window_ms: float, log: Path) -> None:
        self.args = args
        self.window_ms = window_ms
        self.log = log
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceProcess:
        env = dict(os.environ)
        env.update(
            VSEPP_BATCH_WINDOW_MS=str(self.window_ms),
            VSEPP_BATCH_MAX=str(self.args.batch_max),
            VSEPP_MAX_K=str(max(100, self.args.k)),
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        command = [
            sys.executable, "-m", "service", "--host", HOST, "--port", str(self.port),
            "--model_dir", str(self.args.model_dir), "--index_dir", str(self.args.index_dir),
            "--log-level", "warning",
        ]  # fmt: skip
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.args.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                health = httpx.get(f"{self.base_url}/health", timeout=2.0)
                if health.status_code == 200:
                    return self
                if health.json().get("status") == "error":
                    raise SystemExit(f"the server could not load: {health.text}")
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise SystemExit(f"the server was not healthy after {self.args.startup_timeout}s")

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# --------------------------------------------------------------------------- in-process model


def time_forward_passes(
    model_dir: Path, images: list[tuple[str, bytes]], captions: list[str], repeats: int
) -> dict[str, float]:
    """Median milliseconds of one-item encoder calls, measured in this process."""
    import io

    from PIL import Image

    from vsepp.model_dir import load_encoders

    encoders = load_encoders(model_dir)
    with Image.open(io.BytesIO(images[0][1])) as image:
        rgb = np.asarray(image.convert("RGB"))[None]
    encoders.encode_image_arrays(rgb)  # trace once
    encoders.encode_texts(captions[:1])

    def median_ms(call: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return round(float(np.median(times)) * 1000.0, 3)

    return {
        "image_forward_ms": median_ms(lambda: encoders.encode_image_arrays(rgb)),
        "text_forward_ms": median_ms(lambda: encoders.encode_texts(captions[:1])),
        "text_forward_batch32_ms": median_ms(lambda: encoders.encode_texts(captions[:32])),
    }


# --------------------------------------------------------------------------- report


def format_table(results: list[Result]) -> str:
    """A Markdown table of the scenarios."""
    lines = [
        "| endpoint | batching | conc. | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.endpoint} | {r.batching} | {r.concurrency} | {r.requests} | {r.errors} | "
            f"{r.rps} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario and print the table."""
    args = parse_args(argv)
    captions, images = load_workload(args.index_dir, args.seed)
    results: list[Result] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    for window in args.batch_windows_ms:
        batching = f"on ({window:g} ms)" if window > 0 else "off"
        print(f"starting the server with VSEPP_BATCH_WINDOW_MS={window:g}", file=sys.stderr)
        with ServiceProcess(args, window, log_dir / f"server-{window:g}.log") as server:
            scenarios = [("/search/text", c, args.requests) for c in args.text_concurrency]
            scenarios += [("/search/image", c, args.image_requests) for c in args.image_concurrency]
            for endpoint, concurrency, total in scenarios:
                latencies, errors, wall = asyncio.run(
                    run_scenario(
                        server.base_url, endpoint, concurrency, total, args.max_seconds,
                        args.warmup, args.k, captions, images,
                    )
                )  # fmt: skip
                result = summarise(endpoint, batching, concurrency, latencies, errors, wall)
                results.append(result)
                print(
                    f"  {endpoint} c={concurrency}: {result.rps} req/s, p50 {result.p50_ms} ms",
                    file=sys.stderr,
                )
    print("timing the encoders in this process", file=sys.stderr)
    forward = time_forward_passes(args.model_dir, images, captions, args.forward_repeats)

    print(format_table(results))
    print()
    print(
        f"in-process forward pass (median of {args.forward_repeats}): image "
        f"{forward['image_forward_ms']} ms, text {forward['text_forward_ms']} ms, "
        f"32 texts {forward['text_forward_batch32_ms']} ms"
    )
    for endpoint, key in (
        ("/search/image", "image_forward_ms"),
        ("/search/text", "text_forward_ms"),
    ):
        single = [r for r in results if r.endpoint == endpoint and r.concurrency == 1]
        if single and forward[key] > 0:
            ratio = single[0].p50_ms / forward[key]
            print(f"{endpoint} p50 at concurrency 1 / forward pass = {ratio:.2f}")
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {"results": [asdict(r) for r in results], "forward": forward, "args": {
                    "model_dir": str(args.model_dir), "index_dir": str(args.index_dir),
                    "batch_max": args.batch_max, "k": args.k,
                }},
                indent=1,
            )
        )  # fmt: skip
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
