"""Micro-batching: requests that wait at the same time share one model call.

A text query costs one GRU pass whether it runs alone or with 31 others, so under load
collecting concurrent queries into one `encode_texts` call (and one FAISS search) raises
throughput. The default policy is adaptive: a batch is whatever is queued when the worker
is free, so a lone query never waits for company, and queries that arrive while a batch
runs form the next one. A window (> 0) additionally waits that long for company.

The worker is a thread of its own that blocks on a thread-safe queue: a query goes from
the request's task to the thread and its answer straight back to that task's event loop,
two hand-offs, where an asyncio worker task that then ran each batch in a pool thread took
four (and anyio's per-call set-up), most of a lone query's overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio.to_thread

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out] = field(repr=False)
    loop: asyncio.AbstractEventLoop = field(repr=False)


_STOP = object()  # put on the queue by aclose: the worker ends


class MicroBatcher(Generic[In, Out]):
    """Process queued items together (at most `max_batch` a call).

    `process` runs in the batcher's worker thread, gets a list of items and must return one
    output per item, in order. With `window_s == 0` a batch is what waits when the worker is
    free (it never waits on an empty queue); with `window_s > 0` the worker also waits up
    to that long for more. With `max_batch == 1` every item is processed on its own, in a
    pool thread, without the queue. The worker starts on first use; each answer goes to the
    event loop its caller awaits on (TestClient sessions each bring their own).
    """

    def __init__(
        self,
        process: Callable[[list[In]], list[Out]],
        *,
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.process = process
        self.window_s = window_s
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether items are batched at all."""
        return self.max_batch > 1

    async def submit(self, item: In) -> Out:
        """Process `item`, batched with whatever else arrives within the window."""
        if not self.enabled:
            self._report(1)
            return (await anyio.to_thread.run_sync(self.process, [item]))[0]
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.put(_Pending(item, future, loop))
        return await future

    async def aclose(self) -> None:
        """Stop the worker; queued items that were not yet taken are cancelled."""
        with self._start_lock:
            worker, self._worker = self._worker, None
        if worker is None:
            return
        self._queue.put(_STOP)
        await anyio.to_thread.run_sync(worker.join)

    def _ensure_worker(self) -> None:
        if self._worker is not None:
            return
        with self._start_lock:
            if self._worker is None:
                # A daemon: a process that exits without aclose is not held up by it.
                self._worker = threading.Thread(target=self._run, name="text-batcher", daemon=True)
                self._worker.start()

    def _collect(self, first: _Pending[In, Out]) -> tuple[list[_Pending[In, Out]], bool]:
        """The batch that starts with `first`, and whether a stop came while collecting."""
        batch = [first]
        # Let the event loop run first: it holds the GIL to parse the requests that arrived
        # with this one, and they should ride along rather than wait for the next call.
        time.sleep(0)
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            # Within the window, wait for company; after it, take only what is queued.
            remaining = deadline - time.monotonic()
            try:
                got = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if got is _STOP:
                return batch, True
            batch.append(got)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            # A caller that went away (client disconnect) cancelled its future.
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            self._report(len(live))
            try:
                outputs = self.process([p.item for p in live])
                if len(outputs) != len(live):
                    raise RuntimeError(
                        f"batch process returned {len(outputs)} outputs for {len(live)} items"
                    )
            except Exception as exc:
                logger.exception("batch of %d items failed", len(live))
                _deliver([(p, False, exc) for p in live])
                continue
            _deliver([(p, True, out) for p, out in zip(live, outputs, strict=True)])
        # Stopped: whatever is still queued is cancelled.
        left = []
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                break
            if got is not _STOP:
                left.append(got)
        _deliver([(p, None, None) for p in left])

    def _report(self, size: int) -> None:
        if self.on_batch is not None:
            self.on_batch(size)


def _deliver(outcomes: list[tuple[_Pending[Any, Any], bool | None, Any]]) -> None:
    """Hand each answer (ok True: a result, False: an exception, None: cancelled) to its
    caller's event loop, in one call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending[Any, Any], bool | None, Any]]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, some in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: its callers are gone
            loop.call_soon_threadsafe(_settle, some)


def _settle(outcomes: list[tuple[_Pending[Any, Any], bool | None, Any]]) -> None:
    """On the caller's loop: resolve the futures nobody cancelled meanwhile."""
    for pending, ok, value in outcomes:
        future = pending.future
        if future.done():
            continue
        if ok is None:
            future.cancel()
        elif ok:
            future.set_result(value)
        else:
            future.set_exception(value)
