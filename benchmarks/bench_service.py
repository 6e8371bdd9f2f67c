"""Load test of the search service against a bare-FastAPI floor, lever by lever.

For each variant (a source tree, uvicorn's loop and HTTP parser, service settings) it
starts the service on 127.0.0.1 (loopback only) and beside it the floor
(benchmarks/floor_app.py: a bare FastAPI app on the same uvicorn, same JSON body in, a
constant response of the same shape and size out), then drives POST /search/text at each
concurrency on the floor and on the service in turn, and POST /search/image on the
service. Every scenario is bounded by a request count and a time limit. It also times in
this process what the model costs: one text query, 32, decode + forward of one image.

    python benchmarks/bench_service.py --model_dir runs/demo --index_dir indexes/demo \
        [--baseline_root /path/to/a/checkout/of/main]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the benchmark never leaves this machine


@dataclass
class Result:
    """One scenario's numbers."""

    variant: str
    target: str  # "service" or "floor"
    endpoint: str
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_dir", required=True, type=Path, help="exported model directory")
    p.add_argument("--index_dir", required=True, type=Path, help="index directory")
    p.add_argument("--text_concurrency", type=_ints, default=[1, 32])
    p.add_argument("--image_concurrency", type=_ints, default=[1])
    p.add_argument(
        "--baseline_root",
        type=Path,
        default=None,
        help="a source tree of the service before these levers (e.g. `git archive main`): "
        "its rows come first",
    )
    p.add_argument("--only", nargs="*", default=[], help="run the variants whose name has this")
    p.add_argument("--requests", type=int, default=1000, help="requests per text scenario")
    p.add_argument("--image_requests", type=int, default=200, help="requests per image scenario")
    p.add_argument("--max_seconds", type=float, default=30.0, help="time limit per scenario")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests per scenario")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--forward_repeats", type=int, default=30, help="in-process encoder timings")
    p.add_argument("--startup_timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    for name in ("model_dir", "index_dir"):
        if not getattr(args, name).is_dir():
            p.error(f"--{name} {getattr(args, name)} is not a directory")
    for name in ("requests", "image_requests", "forward_repeats", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.max_seconds <= 0:
        p.error("--max_seconds must be positive")
    return args


# --------------------------------------------------------------------------- workload


def load_workload(index_dir: Path, seed: int) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Captions of the index as text queries and its stored images as uploads."""
    rng = random.Random(seed)
    if (index_dir / "captions.arrow").is_file():  # the columnar records (vsepp-index/2)
        captions = pa.ipc.open_file(index_dir / "captions.arrow").read_all()["text"].to_pylist()
        paths = pa.ipc.open_file(index_dir / "images.arrow").read_all()["path"].to_pylist()
    else:  # an index of the JSON format of before
        captions = [c["text"] for c in json.loads((index_dir / "captions.json").read_text())]
        paths = [r.get("path") for r in json.loads((index_dir / "images.json").read_text())]
    rng.shuffle(captions)
    images = []
    for rel in paths:
        if rel:
            path = index_dir / "images" / rel
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


@dataclass(frozen=True)
class Call:
    """One request, encoded once: method, path, body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


def calls(
    endpoint: str, k: int, captions: list[str], images: list[tuple[str, bytes]]
) -> list[Call]:
    """The requests of a scenario, their bodies built before the clock starts."""
    if endpoint == "/search/text":
        json_type = {"Content-Type": "application/json"}
        return [
            Call(endpoint, json.dumps({"query": text, "k": k}).encode(), json_type)
            for text in captions[:1000]
        ]
    out = []
    for name, data in images:
        # httpx only lays out the multipart body (boundary and all); http.client sends it.
        request = httpx.Request(
            "POST",
            f"http://{HOST}{endpoint}",
            files={"file": (name, data, _content_type(name))},
            data={"k": str(k)},
        )
        headers = {"Content-Type": request.headers["Content-Type"]}
        out.append(Call(endpoint, request.read(), headers))
    return out


def run_scenario(
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
    """(latencies in seconds, errors, wall seconds) of `total` requests at `concurrency`.

    The client is `concurrency` threads, each with one keep-alive http.client connection:
    the lightest client the standard library has. It shares the 2 cores with the server
    either way, and an asyncio client (httpx) spent more CPU per request than the floor
    itself, so it capped both at its own rate and hid the server's cost.
    """
    port = int(base_url.rsplit(":", 1)[1])
    work = calls(endpoint, k, captions, images)
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    issued = 0

    def one(connection: http.client.HTTPConnection, call: Call) -> bool:
        connection.request("POST", call.path, call.body, call.headers)
        response = connection.getresponse()
        response.read()
        return response.status == 200

    warm = http.client.HTTPConnection(HOST, port, timeout=120)
    for i in range(warmup):
        one(warm, work[i % len(work)])
    warm.close()
    start = time.perf_counter()
    deadline = start + max_seconds

    def worker() -> None:
        nonlocal issued, errors
        connection = http.client.HTTPConnection(HOST, port, timeout=120)
        try:
            while True:
                with lock:
                    if issued >= total or time.perf_counter() >= deadline:
                        return
                    i = issued
                    issued += 1
                t0 = time.perf_counter()
                try:
                    ok = one(connection, work[i % len(work)])
                except (OSError, http.client.HTTPException):
                    ok = False
                    connection.close()  # a fresh connection for the next request
                    connection = http.client.HTTPConnection(HOST, port, timeout=120)
                seconds = time.perf_counter() - t0
                with lock:
                    latencies.append(seconds)
                    errors += 0 if ok else 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def summarise(
    variant: str,
    target: str,
    endpoint: str,
    concurrency: int,
    latencies: list[float],
    errors: int,
    wall: float,
) -> Result:
    """Percentiles and throughput of one scenario."""
    ms = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return Result(
        variant=variant,
        target=target,
        endpoint=endpoint,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=round(wall, 3),
        rps=round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        p50_ms=round(float(np.percentile(ms, 50)), 2),
        p95_ms=round(float(np.percentile(ms, 95)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
    )


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Variant:
    """One way of running the service: which source tree, which uvicorn, which settings."""

    name: str
    root: Path  # the source tree served (this one, or --baseline_root)
    loop: str = "uvloop"
    http: str = "httptools"
    env: tuple[tuple[str, str], ...] = ()
    workers: int = 1


def variants(args: argparse.Namespace) -> list[Variant]:
    """The rows: the baseline tree (if given) and this one with the default settings, then
    this one with one setting changed each (the last goes back to FAISS on 1 thread).
    uvloop and httptools are the Variant default."""
    out = []
    if args.baseline_root is not None:
        out.append(Variant("baseline (--baseline_root)", args.baseline_root))
    out += [
        Variant("this tree (defaults: adaptive batcher)", REPO),
        Variant("+ 2 ms batch window", REPO, env=(("VSEPP_BATCH_WINDOW_MS", "2"),)),
        Variant("+ FAISS 2 threads", REPO, env=(("VSEPP_FAISS_THREADS", "2"),)),
        Variant("+ 2 workers (FAISS 1 thread)", REPO, workers=2),
    ]
    chosen = [v for v in out if not args.only or any(o in v.name for o in args.only)]
    if not chosen:
        raise SystemExit(f"--only {args.only} matches none of {[v.name for v in out]}")
    return chosen


class Server:
    """A uvicorn process on 127.0.0.1 serving `app` (an import string), as a context
    manager that returns once `ready_path` answers 200."""

    def __init__(
        self,
        app: str,
        root: Path,
        log: Path,
        *,
        loop: str,
        http: str,
        env: dict[str, str],
        workers: int = 1,
        ready_path: str = "/health",
        startup_timeout: float = 300.0,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.command = [
            sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(self.port),
            "--loop", loop, "--http", http, "--workers", str(workers),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.root, self.log, self.ready_path = root, log, ready_path
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(root), **env}
        self.metrics_dir: str | None = None
        if workers > 1:
            self.metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
            self.env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                self.command, cwd=self.root, env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        try:
            return self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _wait_ready(self) -> Server:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        ready = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.command} exited early:\n{self.log.read_text()[-4000:]}")
            try:
                answer = httpx.get(f"{self.base_url}{self.ready_path}", timeout=2.0)
                # Several workers: each has to have loaded, so ask a few times in a row.
                ready = ready + 1 if answer.status_code == 200 else 0
                if ready >= 10:
                    return self
                if answer.status_code != 200 and answer.json().get("status") == "error":
                    raise SystemExit(f"the server could not load: {answer.text}")
                continue
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.25)
        raise SystemExit(f"{self.command} not ready after {self.startup_timeout}s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


# --------------------------------------------------------------------------- in-process model


def time_forward_passes(
    model_dir: Path, images: list[tuple[str, bytes]], captions: list[str], repeats: int
) -> dict[str, Any]:
    """Median milliseconds of one-item encoder calls, measured in this process."""
    import io

    from PIL import Image

    from vsepp.images import canonical_image_bytes
    from vsepp.model_dir import load_encoders

    # The image encoder in the precision the service runs it (VSEPP_PRECISION, default auto).
    encoders = load_encoders(model_dir, os.environ.get("VSEPP_PRECISION", "auto"))
    data = images[0][1]
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))[None]
    encoders.encode_image_arrays(rgb)  # trace once
    encoders.encode_image_bytes([data])
    encoders.encode_texts(captions[:1])
    encoders.encode_texts(captions[:32])

    def median_ms(call: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return round(float(np.median(times)) * 1000.0, 3)

    return {
        "image_precision": encoders.precision,
        "image_forward_ms": median_ms(lambda: encoders.encode_image_arrays(rgb)),
        # What the service does with an upload: the one decoder, then the model.
        "image_decode_forward_ms": median_ms(
            lambda: encoders.encode_image_bytes([canonical_image_bytes(data)])
        ),
        "text_forward_ms": median_ms(lambda: encoders.encode_texts(captions[:1])),
        "text_forward_batch32_ms": median_ms(lambda: encoders.encode_texts(captions[:32])),
    }


# --------------------------------------------------------------------------- report


def format_table(results: list[Result]) -> str:
    """A Markdown table: each service row beside the floor row of the same run."""
    floors = {(r.variant, r.concurrency): r for r in results if r.target == "floor"}
    lines = [
        "| variant | endpoint | conc. | req/s | p50 ms | p99 ms | errors | floor req/s | "
        "floor p50 ms | req/s / floor | p50 - floor p50 ms | p99 / p50 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.target != "service":
            continue
        f = floors.get((r.variant, r.concurrency)) if r.endpoint == "/search/text" else None
        floor_cols = (
            f"{f.rps} | {f.p50_ms} | {r.rps / f.rps:.2f} | {r.p50_ms - f.p50_ms:.2f}"
            if f is not None and f.rps > 0
            else " |  |  | "
        )
        lines.append(
            f"| {r.variant} | {r.endpoint} | {r.concurrency} | {r.rps} | {r.p50_ms} | "
            f"{r.p99_ms} | {r.errors} | {floor_cols} | {r.p99_ms / max(r.p50_ms, 1e-9):.2f} |"
        )
    return "\n".join(lines)


def aims(results: list[Result], forward: dict[str, float]) -> list[str]:
    """The issue's aims, per variant, held or missed."""
    out = []
    budget = 1.5 * forward["text_forward_ms"]
    for variant in dict.fromkeys(r.variant for r in results):
        rows = {(r.target, r.endpoint, r.concurrency): r for r in results if r.variant == variant}
        s1, f1 = rows.get(("service", "/search/text", 1)), rows.get(("floor", "/search/text", 1))
        s32, f32 = (
            rows.get(("service", "/search/text", 32)),
            rows.get(("floor", "/search/text", 32)),
        )
        img = rows.get(("service", "/search/image", 1))
        if s1 and f1:
            held = s1.p50_ms <= f1.p50_ms + budget
            out.append(
                f"{variant}: c=1 p50 {s1.p50_ms} <= floor {f1.p50_ms} + 1.5 x encode "
                f"{forward['text_forward_ms']} = {f1.p50_ms + budget:.2f} ms: "
                f"{'held' if held else 'missed'}"
            )
        if s32 and f32:
            ratio = s32.rps / f32.rps if f32.rps else 0.0
            tail = s32.p99_ms / max(s32.p50_ms, 1e-9)
            out.append(
                f"{variant}: c=32 {ratio:.2f} of the floor's req/s (aim >= 0.5: "
                f"{'held' if ratio >= 0.5 else 'missed'}), p99/p50 {tail:.2f} (aim <= 4: "
                f"{'held' if tail <= 4 else 'missed'}), errors {s32.errors}"
            )
        if img:
            ratio = img.p50_ms / forward["image_decode_forward_ms"]
            out.append(
                f"{variant}: /search/image c=1 p50 {img.p50_ms} = {ratio:.2f} x decode+forward "
                f"{forward['image_decode_forward_ms']} ms (aim <= 1.3: "
                f"{'held' if ratio <= 1.3 else 'missed'})"
            )
    return out


def stop_on_sigterm() -> None:
    """Turn SIGTERM (and SIGINT, ignored in background jobs) into SystemExit, so that the
    servers this process started are stopped by their context managers."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg says."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every variant and print the table with the floor and the aims."""
    args = parse_args(argv)
    stop_on_sigterm()
    captions, images = load_workload(args.index_dir, args.seed)
    results: list[Result] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-service-"))
    print(f"load average before: {load_average()}", file=sys.stderr)
    loads = [load_average()]
    settings_env = {
        "VSEPP_MODEL_DIR": str(args.model_dir.resolve()),
        "VSEPP_INDEX_DIR": str(args.index_dir.resolve()),
        "VSEPP_MAX_K": str(max(100, args.k)),
    }

    def run(variant: str, target: str, base_url: str, endpoint: str, concurrency: int) -> None:
        total = args.requests if endpoint == "/search/text" else args.image_requests
        latencies, errors, wall = run_scenario(
            base_url, endpoint, concurrency, total, args.max_seconds,
            args.warmup, args.k, captions, images,
        )  # fmt: skip
        result = summarise(variant, target, endpoint, concurrency, latencies, errors, wall)
        results.append(result)
        print(
            f"  {target} {endpoint} c={concurrency}: {result.rps} req/s, p50 {result.p50_ms} ms, "
            f"p99 {result.p99_ms} ms, errors {errors}",
            file=sys.stderr,
        )

    for i, v in enumerate(variants(args)):
        print(f"variant {v.name}", file=sys.stderr)
        env = {**settings_env, **dict(v.env)}
        service = Server(
            "service.main:app", v.root, log_dir / f"service-{i}.log", loop=v.loop, http=v.http,
            env=env, workers=v.workers, startup_timeout=args.startup_timeout,
        )  # fmt: skip
        with service:
            # The floor answers what the service answers to a typical query.
            sample = httpx.post(
                f"{service.base_url}/search/text", json={"query": captions[0], "k": args.k}
            )
            body = log_dir / f"response-{i}.json"
            body.write_bytes(sample.content)
            floor = Server(
                "benchmarks.floor_app:app", REPO, log_dir / f"floor-{i}.log", loop=v.loop,
                http=v.http, env={"FLOOR_RESPONSE": str(body)}, ready_path="/openapi.json",
            )  # fmt: skip
            with floor:
                for concurrency in args.text_concurrency:
                    run(v.name, "floor", floor.base_url, "/search/text", concurrency)
                    run(v.name, "service", service.base_url, "/search/text", concurrency)
            for concurrency in args.image_concurrency:
                run(v.name, "service", service.base_url, "/search/image", concurrency)
        loads.append(load_average())
    print("timing the encoders in this process", file=sys.stderr)
    forward = time_forward_passes(args.model_dir, images, captions, args.forward_repeats)

    print(format_table(results))
    print()
    print(
        f"in-process (median of {args.forward_repeats}): text encode of 1 query "
        f"{forward['text_forward_ms']} ms, of 32 {forward['text_forward_batch32_ms']} ms; "
        f"image forward ({forward['image_precision']}) {forward['image_forward_ms']} ms, "
        f"decode + forward {forward['image_decode_forward_ms']} ms"
    )
    print(f"load average (1, 5, 15 min) before and after each variant: {' | '.join(loads)}")
    print()
    for line in aims(results, forward):
        print(f"- {line}")
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {"results": [asdict(r) for r in results], "forward": forward, "load": loads},
                indent=1,
            )
        )
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
