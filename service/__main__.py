"""`python -m service`: serve the API with uvicorn (127.0.0.1:8000 unless told otherwise).

Host and port come from --host/--port, else HOST/PORT, else the defaults. With --workers N
each worker process loads the model and memory-maps the same index files, so the index is
in memory once whatever N is, and SIGHUP to the parent reloads the index in every worker.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from vsepp.cli import LOG_FORMAT, LOG_LEVELS, UsageError, program
from vsepp.model_dir import SEARCHABLE, read_model_manifest, search_problem

logger = logging.getLogger("service")
APP = "service.main:app"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not an integer") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; HOST, PORT and WEB_CONCURRENCY fill in what it leaves out."""
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=_env_int("PORT", 8000))
    parser.add_argument(
        "--workers",
        type=int,
        default=_env_int("WEB_CONCURRENCY", 1),
        help="worker processes (default 1, or WEB_CONCURRENCY)",
    )
    parser.add_argument("--model_dir", "--model-dir", default=None, help="sets VSEPP_MODEL_DIR")
    parser.add_argument("--index_dir", "--index-dir", default=None, help="sets VSEPP_INDEX_DIR")
    parser.add_argument(
        "--log_level",
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging threshold",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus the service's loggers, one line per record."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["service"] = {
        "format": LOG_FORMAT,
        "datefmt": "%H:%M:%S",
    }
    config["handlers"]["service"] = {
        "class": "logging.StreamHandler",
        "formatter": "service",
        "stream": "ext://sys.stderr",
    }
    for name in ("service", "index", "vsepp"):
        config["loggers"][name] = {
            "handlers": ["service"],
            "level": level.upper(),
            "propagate": False,
        }
    return config


def _search_problem(model_dir: str | None) -> str | None:
    """Why the model cannot be served, if its manifest says so now (a missing or unreadable
    one is left to the loader, which reports it on /health: it may appear later)."""
    if not model_dir:
        return None
    try:
        return search_problem(read_model_manifest(model_dir))
    except (OSError, ValueError):
        return None


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until it is stopped; returns the exit status."""
    args = parse_args(argv)
    model_dir = args.model_dir or os.environ.get("VSEPP_MODEL_DIR")
    problem = _search_problem(model_dir)
    if problem:
        # An imported *_precomp or order-embedding run: refused before serving, rather than
        # reported later from /health.
        raise UsageError(f"model {model_dir} cannot be served: {problem}. {SEARCHABLE}")
    if args.model_dir:
        os.environ["VSEPP_MODEL_DIR"] = os.path.abspath(args.model_dir)
    if args.index_dir:
        os.environ["VSEPP_INDEX_DIR"] = os.path.abspath(args.index_dir)

    # Several processes: their metrics go to files in one folder, summed by /metrics. Set
    # before any worker starts (and before anything imports prometheus_client).
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="vsepp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    import uvicorn

    from service.supervisor import run_workers

    options: dict[str, Any] = dict(
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level.lower(),
        log_config=log_config(args.log_level),
        access_log=False,  # service.access logs one structured line per request
        timeout_graceful_shutdown=10,
    )
    try:
        if args.workers > 1:
            # SIGHUP reloads in every worker (service.supervisor), not uvicorn's restart.
            run_workers(uvicorn.Config(APP, **options))
        else:
            uvicorn.run(APP, **options)
    finally:
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
