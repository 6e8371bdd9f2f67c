"""Several workers: SIGHUP to the parent process reloads the index in every worker, in place.

uvicorn's own supervisor answers SIGHUP by replacing each worker with a fresh process. A
fresh worker that meets a broken index would come up unready and retire a sound one, so
ours passes the signal on instead: each worker reloads through `ServiceState`, keeps its
old index when the new one is refused, and never stops serving. The parent's pid is in
the workers' environment, so that a worker that was asked to reload over HTTP can have
its siblings follow.
"""

from __future__ import annotations

import logging
import os
import signal

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger(__name__)

SUPERVISOR_ENV = "VSEPP_SUPERVISOR_PID"
# How long the parent waits for a worker to say it has started before it signals it: a
# worker still importing has no SIGHUP handler yet, and the default action would kill it.
READY_TIMEOUT_S = 2.0


class ReloadingMultiprocess(Multiprocess):
    """uvicorn's multi-process supervisor, with SIGHUP passed on to the started workers."""

    def handle_hup(self) -> None:
        told = []
        for process in self.processes:
            pid = process.pid
            # A worker that is not started yet loads the index afresh anyway.
            if pid is not None and process.is_ready(timeout=READY_TIMEOUT_S):
                os.kill(pid, signal.SIGHUP)
                told.append(pid)
        logger.info("SIGHUP: asked workers %s to reload the index", told)


def run_workers(config: Config) -> None:
    """Serve `config.app` with `config.workers` processes until SIGINT or SIGTERM."""
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    sock = config.bind_socket()
    try:
        ReloadingMultiprocess(config, sockets=[sock]).run()
    finally:
        os.environ.pop(SUPERVISOR_ENV, None)
        sock.close()


def tell_siblings() -> bool:
    """Have every worker of this server reload (those already serving the build skip it).

    False when this process is not a worker of `run_workers`.
    """
    raw = os.environ.get(SUPERVISOR_ENV)
    if not raw or os.getppid() != int(raw):
        return False
    os.kill(int(raw), signal.SIGHUP)
    return True
