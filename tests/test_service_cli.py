"""`python -m service`: host, port and workers from flags or the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from service.__main__ import log_config, main, parse_args
from vsepp.cli import UsageError

NAMES = ("HOST", "PORT", "WEB_CONCURRENCY", "VSEPP_MODEL_DIR", "VSEPP_INDEX_DIR",
         "PROMETHEUS_MULTIPROC_DIR")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first, so that monkeypatch records each variable and restores (or removes) it
    # afterwards even when `main` sets it: nothing leaks into later tests.
    for name in NAMES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_defaults_are_loopback_8000_one_worker() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 1)


def test_host_and_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9001")
    args = parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 9001)
    args = parse_args(["--host", "127.0.0.2", "--port", "9002", "--workers", "3"])
    assert (args.host, args.port, args.workers) == ("127.0.0.2", 9002, 3)


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--workers", "0"], ["--port", "x"]])
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_bad_port_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(UsageError, match="PORT"):
        parse_args([])
    assert main([]) == 2


def test_main_runs_uvicorn_with_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_run(app: str, **kwargs: Any) -> None:
        calls.append((app, kwargs))

    monkeypatch.setattr(uvicorn, "run", fake_run)
    argv = [
        "--port",
        "8123",
        "--model_dir",
        str(tmp_path / "m"),
        "--index_dir",
        str(tmp_path / "i"),
    ]
    assert main(argv) == 0
    ((app, kwargs),) = calls
    assert app == "service.main:app"
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.1", 8123, 1)
    assert kwargs["access_log"] is False
    assert os.environ["VSEPP_MODEL_DIR"] == str(tmp_path / "m")
    assert os.environ["VSEPP_INDEX_DIR"] == str(tmp_path / "i")


def test_several_workers_run_under_the_reloading_supervisor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    from service import supervisor

    seen: list[tuple[uvicorn.Config, str | None]] = []

    def fake_run_workers(config: uvicorn.Config) -> None:
        seen.append((config, os.environ.get("PROMETHEUS_MULTIPROC_DIR")))

    monkeypatch.setattr(supervisor, "run_workers", fake_run_workers)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn.run with workers"))
    argv = ["--port", "8123", "--workers", "2", "--index_dir", str(tmp_path / "i")]
    assert main(argv) == 0
    ((config, metrics),) = seen
    assert (config.app, config.host, config.port, config.workers) == (
        "service.main:app", "127.0.0.1", 8123, 2
    )  # fmt: skip
    assert config.access_log is False
    # Several workers share their metrics through a folder that is removed afterwards.
    assert metrics and not Path(metrics).exists()


def test_log_config_routes_the_service_loggers() -> None:
    config = log_config("debug")
    assert config["loggers"]["service"]["level"] == "DEBUG"
    assert "uvicorn" in config["loggers"]
