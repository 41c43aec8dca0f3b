"""A stop signal reaches a worker's event loop even when its self-pipe is full (`tidegate.signals`)."""

from __future__ import annotations

import asyncio
import os
import signal

from tidegate.signals import deliver_even_when_the_wakeup_pipe_is_full


def test_a_stop_signal_reaches_the_loop_when_its_wakeup_pipe_is_full() -> None:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        deliver_even_when_the_wakeup_pipe_is_full(loop, [signal.SIGUSR1])
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
