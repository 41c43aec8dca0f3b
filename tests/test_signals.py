"""A stop signal reaches a worker's event loop even when its self-pipe is full (`tidegate.signals`)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from tidegate.signals import stop_once_even_when_the_wakeup_pipe_is_full


# Python reports the signal's byte it could not write ("Exception ignored ..."): that is the condition under test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_reaches_the_loop_when_its_wakeup_pipe_is_full() -> None:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        stop_once_even_when_the_wakeup_pipe_is_full(loop, [signal.SIGUSR1])
        # As Granian hands over requests under load: a byte per call into the loop's self-pipe, far more than it
        # holds while the loop is busy (here: not running), so the signal's own byte is dropped.
        for _ in range(200_000):
            loop.call_soon_threadsafe(lambda: None)
        os.kill(os.getpid(), signal.SIGUSR1)

        async def stopped() -> bool:
            try:
                await asyncio.wait_for(stop.wait(), timeout=10)  # a hang guard: it is set on the loop's next pass
            except TimeoutError:
                return False
            return True

        assert loop.run_until_complete(stopped()), "the signal's handler never ran"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.close()


def test_repeated_stop_signals_run_the_stop_handler_once() -> None:
    """Granian's stop handler blocks its worker's loop for good when called a third time; a SIGTERM to the process
    group reaches a worker twice (and each is now also delivered by its Python-level handler)."""
    loop = asyncio.new_event_loop()
    calls: list[str] = []
    try:
        loop.add_signal_handler(signal.SIGUSR1, calls.append, "usr1")
        loop.add_signal_handler(signal.SIGUSR2, calls.append, "usr2")
        # `first` (the worker answers the refusals it holds) runs once, just before the stop handler.
        stop_once_even_when_the_wakeup_pipe_is_full(
            loop, [signal.SIGUSR1, signal.SIGUSR2], first=lambda: calls.append("first")
        )
        for sig in (signal.SIGUSR1, signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
            os.kill(os.getpid(), sig)
        # Every delivery scheduled so far runs in these passes of the loop (one to read the self-pipe, one to run).
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        assert calls == ["first", "usr1"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
        loop.close()
