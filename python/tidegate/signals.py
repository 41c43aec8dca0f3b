"""Stop signals that reach an event loop however busy it is, and stop it once.

asyncio's `add_signal_handler` learns of a signal from a byte that the C-level handler writes to the loop's
self-pipe (`signal.set_wakeup_fd`). The same pipe gets a byte for every `call_soon_threadsafe`, and Granian hands
each request to a worker's loop that way: under load the pipe is full, the signal's byte is dropped (Python prints
"Exception ignored when trying to write to the signal wakeup fd: BlockingIOError") and the handler never runs. A
worker sent SIGTERM under load went on serving and never stopped, and `tidegate serve` waited for it forever.

And a stop handler must run once: Granian's (`WorkerSignal.set`) blocks the worker's loop for good when called a
third time, which a worker gets from a SIGTERM to its process group (one from the sender, one passed on by
Granian's main process) and any later one.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any


def stop_once_even_when_the_wakeup_pipe_is_full(
    loop: asyncio.AbstractEventLoop, signals: Iterable[int], *, first: Callable[[], object] | None = None
) -> None:
    """For `signals` already given handlers with `loop.add_signal_handler` (a stop, each): the first of them to
    arrive runs its handler, once; later ones are ignored. Each is also delivered by its Python-level handler,
    which the interpreter runs on the main thread whatever became of the byte: it schedules the loop's handler
    itself, as the byte would have (asyncio's `_handle_signal`, safe in a signal handler). asyncio offers no public
    way to do either, hence the private names (`_signal_handlers`, `_handle_signal`), the same from 3.11 to 3.13.
    `first`, if given, runs just before that one handler."""
    registered: dict[int, asyncio.Handle] = getattr(loop, "_signal_handlers")  # noqa: B009
    handle_signal: Callable[[int], None] = getattr(loop, "_handle_signal")  # noqa: B009
    stopped = False

    def once(callback: Callable[..., Any], *args: Any) -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            if first is not None:
                first()
            callback(*args)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handle_signal(signum)

    for sig in signals:
        handle = registered.get(sig)
        if handle is None:
            continue
        loop.add_signal_handler(sig, once, handle._callback, *handle._args)  # type: ignore[attr-defined]
        signal.signal(sig, on_signal)
