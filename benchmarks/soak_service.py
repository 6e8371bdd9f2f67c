"""Soak test: the service under steady load for a long time, errors and memory growth.

Starts `python -m service` on 127.0.0.1 (loopback only), drives POST /search/text (and
one POST /search/image in `--image_every` requests) at `--concurrency` for `--minutes`
(bounded also by `--max_requests`), samples the server's resident memory (VmRSS) every
`--sample_seconds`, and reports errors and the RSS growth from the end of the warm-up to
the end. Exit status 1 on any error or a growth above `--max_growth` (5%).

    python benchmarks/soak_service.py --model_dir runs/demo --index_dir indexes/demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import (
    REPO,
    Server,
    _content_type,
    load_average,
    load_workload,
    stop_on_sigterm,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_dir", required=True, type=Path)
    p.add_argument("--index_dir", required=True, type=Path)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--warmup_minutes", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max_requests", type=int, default=3_000_000)
    p.add_argument("--image_every", type=int, default=20)
    p.add_argument("--sample_seconds", type=float, default=10.0)
    p.add_argument("--max_growth", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.minutes <= args.warmup_minutes:
        p.error("--minutes must exceed --warmup_minutes")
    return args


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def soak(args: argparse.Namespace, base_url: str, pid: int) -> dict[str, object]:
    """Drive the load; return the counts and the memory samples."""
    captions, images = load_workload(args.index_dir, 0)
    limits = httpx.Limits(max_connections=args.concurrency)
    start = time.monotonic()
    deadline = start + args.minutes * 60.0
    warm_until = start + args.warmup_minutes * 60.0
    sent = errors = 0
    statuses: dict[int, int] = {}
    samples: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent, errors
            while sent < args.max_requests and time.monotonic() < deadline:
                i = sent
                sent += 1
                try:
                    if i % args.image_every == 0:
                        name, data = images[i % len(images)]
                        r = await client.post(
                            "/search/image", files={"file": (name, data, _content_type(name))}
                        )
                    else:
                        r = await client.post(
                            "/search/text", json={"query": captions[i % len(captions)], "k": 10}
                        )
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1

        async def sampler() -> None:
            while time.monotonic() < deadline and sent < args.max_requests:
                samples.append((round(time.monotonic() - start, 1), rss_kib(pid)))
                await asyncio.sleep(args.sample_seconds)

        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
    samples.append((round(time.monotonic() - start, 1), rss_kib(pid)))
    after_warmup = [kib for t, kib in samples if t >= warm_until - start]
    base = after_warmup[0] if after_warmup else samples[0][1]
    growth = (samples[-1][1] - base) / base
    return {
        "requests": sent,
        "errors": errors,
        "statuses": statuses,
        "seconds": round(time.monotonic() - start, 1),
        "rss_after_warmup_mib": round(base / 1024, 1),
        "rss_end_mib": round(samples[-1][1] / 1024, 1),
        "rss_max_after_warmup_mib": round(max(after_warmup or [base]) / 1024, 1),
        "rss_growth": round(growth, 4),
        "samples": samples,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print its summary."""
    args = parse_args(argv)
    stop_on_sigterm()
    log = Path(tempfile.mkdtemp(prefix="soak-service-")) / "server.log"
    env = {"VSEPP_MODEL_DIR": str(args.model_dir.resolve()),
           "VSEPP_INDEX_DIR": str(args.index_dir.resolve())}  # fmt: skip
    load_before = load_average()
    with Server("service.main:app", REPO, log, loop="uvloop", http="httptools", env=env) as server:
        assert server.process is not None
        report = asyncio.run(soak(args, server.base_url, server.process.pid))
    report["load_average_before"], report["load_average_after"] = load_before, load_average()
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    ok = report["errors"] == 0 and float(report["rss_growth"]) <= args.max_growth  # type: ignore[arg-type]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
