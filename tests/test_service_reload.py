"""A rebuilt index reaches a running service without a restart: through the manifest
watcher (VSEPP_RELOAD_INTERVAL_S), and in every worker of a `--workers 2` server on SIGHUP
and on POST /admin/reload, while clients search."""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from index import build
from index.store import load_index
from service.config import Settings
from service.main import create_app
from tests.image_files import photo
from tests.service_helpers import (
    free_port,
    hammer_text_search,
    image_bytes,
    serve_subprocess,
    service_command,
    service_env,
    uvicorn_in_thread,
    wait_for,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-admin"
K = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three folders of different pictures (their image ids do not overlap)."""
    root = tmp_path_factory.mktemp("reload")
    out = {}
    for n, name in enumerate(("first", "second", "third")):
        for i in range(4):
            path = root / name / f"{name}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(photo(seed=10 * n + i), "PNG"))
        out[name] = root / name
    return out


def _build(model_dir: Path, images_dir: Path, index_dir: Path) -> str:
    """Build `images_dir` over `index_dir`; returns the new build id."""
    argv = ["--model_dir", str(model_dir), "--images_dir", str(images_dir)]
    assert build.main([*argv, "--index_dir", str(index_dir)]) == 0
    build_id: str = load_index(index_dir).manifest["build_id"]
    return build_id


def test_the_watcher_swaps_in_a_rebuilt_index_and_keeps_it_over_a_broken_one(
    demo_model_dir: Path,
    folders: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vsepp.model_dir import load_encoders

    live = tmp_path / "live"
    first = _build(demo_model_dir, folders["first"], live)
    settings = Settings(index_dir=live, reload_interval_s=0.2)
    app = create_app(settings, load_encoders(demo_model_dir), load_index(live))
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert wait_healthy(client)["index"]["build_id"] == first
        second = _build(demo_model_dir, folders["second"], live)

        def serving() -> Any:
            return client.get("/health").json()["index"]["build_id"]

        wait_for(lambda: serving() == second, "the watcher to load the rebuilt index")
        hits = client.post("/search/text", json={"query": "a picture", "k": K}).json()["results"]
        assert {h["image_id"] for h in hits} <= {p.name for p in folders["second"].iterdir()}
        # A broken rebuild is refused once; the rebuilt index keeps serving.
        manifest = json.loads((live / "manifest.json").read_text())
        (live / "manifest.json").write_text(
            json.dumps({**manifest, "build_id": "broken", "dim": 7})
        )

        def refused() -> Any:
            return client.get("/health").json()["reload"]["last_error"]

        def checks() -> int:
            return int(client.get("/health").json()["reload"]["checks"])

        with caplog.at_level(logging.ERROR, logger="service.state"):
            wait_for(lambda: bool(refused()), "the watcher to refuse the broken index")
            # Five more passes of the watcher: the refused build is not tried again.
            after = checks() + 5
            wait_for(lambda: checks() >= after, "five more passes of the watcher")
        assert sum("reload refused" in r.getMessage() for r in caplog.records) == 1
        health = client.get("/health").json()
        assert health["index"]["build_id"] == second and health["reload"]["reloads"] == 1
        assert "dim" in health["reload"]["last_error"]
        assert client.post("/search/text", json={"query": "a picture", "k": K}).status_code == 200


def test_a_loaded_index_is_out_of_the_collectors_walks_and_a_reload_still_serves(
    demo_model_dir: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    """The service freezes what it loaded (service.state.settle_heap): a full collection
    under load does not walk the model and the index; a reload swaps in the new index."""
    from vsepp.model_dir import load_encoders

    live = tmp_path / "live"
    _build(demo_model_dir, folders["first"], live)
    settings = Settings(index_dir=live, reload_interval_s=0.2)
    app = create_app(settings, load_encoders(demo_model_dir), None)  # loads as a server does
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        wait_healthy(client)
        first = app.state.vsepp.backend.index
        assert not any(o is first for o in gc.get_objects())  # frozen: not in any generation
        del first
        second = _build(demo_model_dir, folders["second"], live)
        wait_for(
            lambda: client.get("/health").json()["index"]["build_id"] == second,
            "the watcher to load the rebuilt index",
        )
        hits = client.post("/search/text", json={"query": "a picture", "k": K}).json()["results"]
        assert {h["image_id"] for h in hits} <= {p.name for p in folders["second"].iterdir()}


def test_a_frozen_object_is_still_freed_when_its_last_reference_goes() -> None:
    """What a reload relies on: the old index, frozen at load, is freed when the service
    lets go of it (reference counting does not look at the freeze)."""
    from service.state import settle_heap

    class Loaded:
        pass

    loaded = Loaded()
    gone = weakref.ref(loaded)
    try:
        settle_heap()
        assert not any(o is loaded for o in gc.get_objects())
        del loaded
        assert gone() is None
    finally:
        gc.unfreeze()


def _worker_builds(base: str, tries: int = 400) -> dict[int, str]:
    """Worker pid -> the build it serves, asking on fresh connections until two answer (a
    worker still loading answers 503 and is asked again)."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        with httpx.Client(base_url=base, timeout=30) as client:  # a new connection each time
            r = client.get("/health")
        if r.status_code != 200:
            time.sleep(0.1)
            continue
        body = r.json()
        seen[body["reload"]["worker_pid"]] = body["index"]["build_id"]
        if len(seen) == 2:
            break
    return seen


def test_every_worker_reloads_in_place_under_load(
    demo_model_dir: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    live = tmp_path / "live"
    builds = [_build(demo_model_dir, folders["first"], live)]
    ids = {name: {p.name for p in path.iterdir()} for name, path in folders.items()}
    port = free_port()
    log = tmp_path / "server.log"
    command = service_command(port, demo_model_dir, live, "--workers", "2")
    env = service_env(TF_CPP_MIN_LOG_LEVEL="3", VSEPP_ADMIN_TOKEN=TOKEN)
    answers: list[list[str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def answered_from(name: str) -> bool:
        """Some search has been answered from the index of folder `name`."""
        return any(set(a) <= ids[name] and len(a) == K for a in list(answers))

    with serve_subprocess(command, port=port, log=log, env=env) as server:
        base = server.base_url
        threads = [
            threading.Thread(target=hammer_text_search, args=(base, stop, answers, errors),
                             kwargs={"k": K, "limit": 2000})
            for _ in range(16)
        ]  # fmt: skip
        try:
            workers = _worker_builds(base)
            assert len(workers) == 2 and set(workers.values()) == {builds[0]}, workers
            for t in threads:
                t.start()
            wait_for(lambda: answered_from("first"), "an answer from the first build")
            # SIGHUP to the parent: each worker loads the rebuilt index itself.
            builds.append(_build(demo_model_dir, folders["second"], live))
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: _worker_builds(base) == dict.fromkeys(workers, builds[1]),
                      "both workers to serve the second build")  # fmt: skip
            wait_for(lambda: answered_from("second"), "an answer from the second build")
            # POST /admin/reload reaches one worker; the other follows.
            builds.append(_build(demo_model_dir, folders["third"], live))
            with httpx.Client(base_url=base, timeout=60) as admin:
                r = admin.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["build_id"] == builds[2], r.text
            wait_for(lambda: _worker_builds(base) == dict.fromkeys(workers, builds[2]),
                      "both workers to serve the third build")  # fmt: skip
            wait_for(lambda: answered_from("third"), "an answer from the third build")
        finally:
            stop.set()
            for t in threads:
                if t.ident is not None:  # started: an early failure leaves some unstarted
                    t.join(timeout=60)
    stderr = log.read_text()
    assert errors == [], errors[:5]
    # Each answer comes whole from one of the three indexes, and each of them served.
    by_index = [[name for name, own in ids.items() if set(a) <= own and len(a) == K]
                for a in answers]  # fmt: skip
    assert all(by_index), [a for a, names in zip(answers, by_index, strict=True) if not names][:3]
    assert {names[0] for names in by_index} == set(ids)
    # Reloaded, not restarted: the same two worker processes served throughout.
    assert "Child process" not in stderr and "restarting processes" not in stderr
    assert stderr.count("reloaded the index") == 4, stderr[-3000:]
