"""service.batching.MicroBatcher: concurrent items share calls, each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from service.batching import MicroBatcher


class Recorder:
    """A batch function that doubles numbers and remembers each call's batch."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot process {self.fail_on}")
        return [2 * i for i in items]


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yield to the event loop until `check` holds, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def _submit_all(batcher: MicroBatcher[int, int], items: list[int]) -> list[int]:
    try:
        return await asyncio.gather(*(batcher.submit(i) for i in items))
    finally:
        await batcher.aclose()


def test_concurrent_items_are_batched_and_answered_in_order() -> None:
    process = Recorder(delay_s=0.02)
    batcher = MicroBatcher(process, window_s=0.05, max_batch=64)
    out = asyncio.run(_submit_all(batcher, list(range(20))))
    assert out == [2 * i for i in range(20)]
    assert sum(len(c) for c in process.calls) == 20
    assert len(process.calls) < 20
    assert max(len(c) for c in process.calls) > 1
    assert threading.main_thread().name not in process.threads  # never on the event loop


def test_max_batch_is_respected() -> None:
    process = Recorder()
    batcher = MicroBatcher(process, window_s=0.05, max_batch=4)
    out = asyncio.run(_submit_all(batcher, list(range(10))))
    assert out == [2 * i for i in range(10)]
    assert all(len(c) <= 4 for c in process.calls)


def test_max_batch_one_processes_each_item_alone_in_a_thread() -> None:
    process = Recorder()
    sizes: list[int] = []
    batcher = MicroBatcher(process, window_s=0.0, max_batch=1, on_batch=sizes.append)
    assert not batcher.enabled
    out = asyncio.run(_submit_all(batcher, list(range(6))))
    assert out == [2 * i for i in range(6)]
    assert sorted(process.calls) == [[i] for i in range(6)]
    assert sizes == [1] * 6
    assert threading.main_thread().name not in process.threads


def test_adaptive_batches_what_queued_while_the_worker_was_busy() -> None:
    process = Recorder(delay_s=0.05)
    batcher = MicroBatcher(process, window_s=0.0, max_batch=32)
    assert batcher.enabled

    async def run() -> list[int]:
        try:
            first = asyncio.ensure_future(batcher.submit(0))  # alone: goes at once
            await _until(lambda: process.calls == [[0]])  # the worker is busy with it now
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 9)]
            return [await first, *[await r for r in rest]]
        finally:
            await batcher.aclose()

    assert asyncio.run(run()) == [2 * i for i in range(9)]
    # The lone first item did not wait for company; the eight that queued behind it
    # went together in the next call.
    assert process.calls == [[0], list(range(1, 9))]


def test_a_failing_batch_fails_its_items_only() -> None:
    process = Recorder(fail_on=3)
    batcher = MicroBatcher(process, window_s=0.05, max_batch=64)

    async def run() -> tuple[list[int | BaseException], int]:
        try:
            first = await asyncio.gather(
                *(batcher.submit(i) for i in range(5)), return_exceptions=True
            )
            after = await batcher.submit(10)  # the worker survived
            return first, after
        finally:
            await batcher.aclose()

    first, after = asyncio.run(run())
    assert all(isinstance(r, ValueError) for r in first)
    assert after == 20


def test_a_cancelled_caller_is_skipped() -> None:
    process = Recorder(delay_s=0.05)
    batcher = MicroBatcher(process, window_s=0.02, max_batch=64)

    async def run() -> int:
        try:
            blocker = asyncio.ensure_future(batcher.submit(1))  # occupies the worker
            await _until(lambda: process.calls == [[1]])
            gone = asyncio.ensure_future(batcher.submit(2))
            await asyncio.sleep(0)
            gone.cancel()
            kept = await batcher.submit(3)
            await blocker
            return kept
        finally:
            await batcher.aclose()

    assert asyncio.run(run()) == 6
    assert all(2 not in c for c in process.calls)


def test_batcher_survives_a_new_event_loop() -> None:
    process = Recorder()
    batcher = MicroBatcher(process, window_s=0.01, max_batch=8)
    assert asyncio.run(batcher.submit(1)) == 2
    assert asyncio.run(batcher.submit(2)) == 4  # TestClient sessions each bring a loop
    asyncio.run(batcher.aclose())


@pytest.mark.parametrize(("window", "size"), [(-1.0, 4), (0.01, 0)])
def test_bad_parameters_are_refused(window: float, size: int) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), window_s=window, max_batch=size)
