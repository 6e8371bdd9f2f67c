"""Micro-batching: requests that wait at the same time share one model call.

A text query costs one GRU pass whether it runs alone or with 31 others, so under load
collecting concurrent queries into one `encode_texts` call (and one FAISS search) raises
throughput. The default policy is adaptive: a batch is whatever is queued when the worker
is free, so a lone query never waits for company, and queries that arrive while a batch
runs form the next one. A window (> 0) additionally waits that long for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out] = field(repr=False)


class MicroBatcher(Generic[In, Out]):
    """Process queued items together (at most `max_batch` a call).

    `process` runs in a worker thread, gets a list of items and must return one output per
    item, in order. With `window_s == 0` a batch is what waits when the worker is free (it
    never waits on an empty queue); with `window_s > 0` the worker also waits up to that
    long for more. With `max_batch == 1` every item is processed on its own, in a thread,
    without the queue. The worker task starts on first use inside the running event loop
    (and again if the loop changes, as it does between TestClient sessions).
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether items are batched at all."""
        return self.max_batch > 1

    async def submit(self, item: In) -> Out:
        """Process `item`, batched with whatever else arrives within the window."""
        if not self.enabled:
            self._report(1)
            return (await anyio.to_thread.run_sync(self.process, [item]))[0]
        queue = self._ensure_worker()
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(item, future))
        return await future

    async def aclose(self) -> None:
        """Stop the worker; queued items that were not yet taken are cancelled."""
        loop, self._loop = self._loop, None
        worker, self._worker = self._worker, None
        queue, self._queue = self._queue, None
        # A worker of another (closed) event loop died with it; only ours can be awaited.
        if loop is not asyncio.get_running_loop():
            return
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while queue is not None and not queue.empty():
            queue.get_nowait().future.cancel()

    def _ensure_worker(self) -> asyncio.Queue[_Pending[In, Out]]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None or self._worker is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue), name="text-batcher")
        elif self._worker.done():
            self._worker = loop.create_task(self._run(self._queue), name="text-batcher")
        return self._queue

    async def _collect(self, queue: asyncio.Queue[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while self.window_s > 0 and len(batch) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        # Whatever queued up meanwhile rides along for free.
        while len(batch) < self.max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _run(self, queue: asyncio.Queue[_Pending[In, Out]]) -> None:
        while True:
            batch = await self._collect(queue)
            # A caller that went away (client disconnect) cancelled its future.
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            self._report(len(live))
            try:
                outputs = await anyio.to_thread.run_sync(self.process, [p.item for p in live])
                if len(outputs) != len(live):
                    raise RuntimeError(
                        f"batch process returned {len(outputs)} outputs for {len(live)} items"
                    )
            except asyncio.CancelledError:
                for p in live:
                    p.future.cancel()
                raise
            except Exception as exc:
                logger.exception("batch of %d items failed", len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, out in zip(live, outputs, strict=True):
                if not p.future.done():
                    p.future.set_result(out)

    def _report(self, size: int) -> None:
        if self.on_batch is not None:
            self.on_batch(size)
