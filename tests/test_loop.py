"""The worker's event loop (`tidegate.loop`): high priority's callbacks first; wake-ups only when the loop waits."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tidegate
from tidegate.delivery.spool import SpoolWriter
from tidegate.loop import HighFirstQueue, high_context, poll_between_callbacks, run_first_lane


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select
    waiting = threading.Event()

    def select_and_tell(timeout: float | None = None) -> object:
        if timeout is None or timeout > 0:
            waiting.set()  # about to block: `run_first_lane`'s wrapper has marked the loop as waiting
        return select(timeout)

    selector.select = select_and_tell
    loop.waits = waiting  # type: ignore[attr-defined]
    writes = 0
    write_to_self = loop._write_to_self  # type: ignore[attr-defined]

    def counted() -> None:
        nonlocal writes
        writes += 1
        write_to_self()

    loop._write_to_self = counted  # type: ignore[attr-defined]
    loop.wake_ups = lambda: writes  # type: ignore[attr-defined]
    assert run_first_lane(loop)
    assert isinstance(loop._ready, HighFirstQueue)  # type: ignore[attr-defined]
    yield loop
    loop.close()


def test_callbacks_in_a_high_context_run_before_those_already_waiting(loop: asyncio.AbstractEventLoop) -> None:
    ran: list[str] = []
    high = high_context(contextvars.copy_context())
    for name in ("n1", "n2"):
        loop.call_soon(ran.append, name)
    loop.call_soon(ran.append, "h1", context=high)
    loop.call_soon(ran.append, "n3")
    loop.call_soon(ran.append, "h2", context=high)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["h1", "h2", "n1", "n2", "n3"]


def test_a_high_priority_task_keeps_the_first_lane_at_every_step(loop: asyncio.AbstractEventLoop) -> None:
    # Each step of a task is scheduled in the task's context: one created last, in a high context, finishes first
    # though every task yields as often.
    finished: list[str] = []

    async def steps(name: str) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        finished.append(name)

    async def main() -> None:
        tasks = [loop.create_task(steps(f"n{i}")) for i in range(4)]
        tasks.append(loop.create_task(steps("high"), context=high_context(contextvars.copy_context())))
        await asyncio.gather(*tasks)

    loop.run_until_complete(main())
    assert finished == ["high", "n0", "n1", "n2", "n3"]


def test_a_waiting_loop_is_woken_by_another_thread(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> int:
        result: asyncio.Future[int] = loop.create_future()

        def send() -> None:
            # Once the loop waits on the future, in its selector, with nothing else to do.
            assert loop.waits.wait(30)  # type: ignore[attr-defined]
            loop.call_soon_threadsafe(result.set_result, 7)

        loop.waits.clear()  # type: ignore[attr-defined]
        sender = threading.Thread(target=send)
        sender.start()
        try:
            return await asyncio.wait_for(result, 30)
        finally:
            sender.join()

    assert loop.run_until_complete(main()) == 7
    assert loop.wake_ups() >= 1  # type: ignore[attr-defined]


def test_a_busy_loop_is_not_woken_and_still_runs_what_a_thread_queued(loop: asyncio.AbstractEventLoop) -> None:
    result: asyncio.Future[int] = loop.create_future()
    before = loop.wake_ups()  # type: ignore[attr-defined]

    def busy() -> None:
        # The loop is running this callback, not waiting: the thread's callback is queued without a wake-up.
        sender = threading.Thread(target=lambda: loop.call_soon_threadsafe(result.set_result, 7))
        sender.start()
        sender.join()

    loop.call_soon(busy)
    assert loop.run_until_complete(asyncio.wait_for(result, 30)) == 7
    assert loop.wake_ups() == before  # type: ignore[attr-defined]


def test_news_a_probe_finds_between_callbacks_is_taken_before_those_already_waiting(
    loop: asyncio.AbstractEventLoop,
) -> None:
    ran: list[str] = []
    news = [False]

    def take() -> None:
        news[0] = False
        ran.append("news")

    def signal() -> None:
        ran.append("n1")
        news[0] = True

    assert poll_between_callbacks(loop, lambda: news[0], take)
    loop.call_soon(signal)
    for name in ("n2", "n3"):
        loop.call_soon(ran.append, name)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["n1", "news", "n2", "n3"]

    # A probe that keeps saying so (its news never taken) still lets every waiting callback run, in order.
    ran.clear()
    assert poll_between_callbacks(loop, lambda: True, lambda: ran.append("news"))
    for name in ("n1", "n2", "n3"):
        loop.call_soon(ran.append, name)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [name for name in ran if name != "news"] == ["n1", "n2", "n3"] and "news" in ran
    assert poll_between_callbacks(loop, None, lambda: None)
    assert loop._ready.probe is None  # type: ignore[attr-defined]


def test_an_urgent_spool_writer_sees_its_commit_while_the_loop_is_busy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """High priority's spool writer: its commit is taken between the loop's callbacks, not only when the loop next
    looks at its selector, after every callback already waiting (here 400; the first holds the loop until the
    commit has finished)."""
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    body = json.dumps({"device_id": "d1", "timestamp": "2026-12-02T10:00:00Z", "metrics": {"t": 1}}).encode()
    order: list[str] = []

    async def scenario(urgent: bool) -> None:
        writer = SpoolWriter(tidegate.Spool(tmp_path / f"spool-{urgent}"), urgent=urgent)
        await writer.start()

        def until_committed() -> None:
            committer = writer._committer
            assert committer is not None
            guard = time.monotonic() + 60  # a hang guard, not a speed requirement
            while not committer.has_news() and time.monotonic() < guard:
                time.sleep(0.001)  # the loop stays busy: it does not look at its selector meanwhile
            order.append("busy")

        try:
            end = writer.spool.append(validator.validate(body, "application/json").records)
            # As a high-priority request waits: in the first lane.
            high = high_context(contextvars.copy_context())
            durable = loop.create_task(writer.durable(end), context=high)
            durable.add_done_callback(lambda _: order.append("durable"), context=high)
            loop.call_soon(until_committed)
            for _ in range(399):
                loop.call_soon(order.append, "busy")
            await durable
        finally:
            await writer.stop()

    loop.run_until_complete(scenario(urgent=True))
    assert order.index("durable") == 1, "taken right after the callback during which the commit finished"
    order.clear()
    loop.run_until_complete(scenario(urgent=False))
    assert order.index("durable") == 400, "without it, after every callback already waiting"
