"""Stop signals that reach an event loop however busy it is.

asyncio's `add_signal_handler` learns of a signal from a byte that the C-level handler writes to the loop's
self-pipe (`signal.set_wakeup_fd`). The same pipe gets a byte for every `call_soon_threadsafe`, and Granian hands
each request to a worker's loop that way: under load the pipe is full, the signal's byte is dropped (Python prints
"Exception ignored when trying to write to the signal wakeup fd: BlockingIOError") and the handler never runs. A
worker sent SIGTERM under load went on serving and never stopped, and `tidegate serve` waited for it forever.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable
from types import FrameType


def deliver_even_when_the_wakeup_pipe_is_full(loop: asyncio.AbstractEventLoop, signals: Iterable[int]) -> None:
    """For signals already given handlers with `loop.add_signal_handler`: their Python-level handler, which the
    interpreter runs on the main thread whatever became of the byte, schedules the loop's handler itself (as the
    byte would have: asyncio's `_handle_signal`, safe in a signal handler). When the byte got through as well, the
    loop's handler runs twice; the stop handlers here only set events."""
    handle_signal: Callable[[int], None] = getattr(loop, "_handle_signal")  # noqa: B009 (no public way exists)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handle_signal(signum)

    for sig in signals:
        signal.signal(sig, on_signal)
