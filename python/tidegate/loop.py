"""The worker's event loop: high-priority requests first, and no wake-up the loop does not need.

Under CPU saturation a request's time is spent waiting in the loop's ready queue, first come first served, once
for each step that wakes it: the task's start, its body, its commit (issue 11: at twice capacity the high
priority's p99 was 9-30x its unloaded p99 while admission kept every high request). Shedding shortens that queue
but cannot empty it, or the loop would idle. So the queue gets a second lane: a callback that runs in a context
where `HIGH` is set (the task of a high-priority request, and whatever wakes it, which asyncio and Granian schedule
in the task's context) runs before everything already waiting.

Each request also reaches the loop from Granian's threads (`call_soon_threadsafe`), and asyncio writes a byte to
its wake-up pipe for each, though a busy loop is not waiting to be woken: the write is a system call made with
the GIL released, and taking the GIL back is where Granian's threads and the loop wait on each other. It is
written only while the loop waits in its selector.

Measured together (`/tmp` scripts: `tidegate-pacer` at twice capacity for 10 s, clients ignoring Retry-After,
4 interleaved runs each, medians): high priority's p50 36 ms before, 12 ms with both; its p99 324 ms, 156 ms;
total goodput 0.66 of capacity, 0.81. The wake-up alone: 30 ms, 371 ms, 0.71 (within the noise).

asyncio has no hook for either; `run_first_lane` replaces the loop's `_ready` deque with a `HighFirstQueue` (a
deque whose `append` routes and whose `popleft` serves the high lane first) and wraps its selector's `select` and
its `_write_to_self`. A loop without them (uvloop, rloop) keeps its order."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tidegate")

HIGH: contextvars.ContextVar[bool] = contextvars.ContextVar("tidegate_high_priority", default=False)
"""Set in the context of what should run first: a high-priority request's task (`high_context`)."""

_append = collections.deque.append
_popleft = collections.deque.popleft
_len = collections.deque.__len__
_clear = collections.deque.clear


class HighFirstQueue(collections.deque[Any]):
    """asyncio's ready queue with a first lane: handles (`asyncio.Handle`) whose context has `HIGH` set are served
    before the others, each lane in order of arrival. Appended from any thread (`call_soon_threadsafe`); popped
    by the loop's thread only, so `popleft` never finds both lanes empty when `len` said otherwise."""

    def __init__(self, waiting: collections.deque[Any]) -> None:
        super().__init__(waiting)
        self.first: collections.deque[Any] = collections.deque()
        #: News looked at before each callback is served (`poll_between_callbacks`), and the handle that takes it.
        self.probe: Callable[[], bool] | None = None
        self.probe_handle: asyncio.Handle | None = None
        #: The last callback served was `probe_handle`: the next is a queued one, whatever the probe says.
        self._probed = False

    def append(self, handle: Any) -> None:
        context = handle._context
        if context is not None and context.get(HIGH, False):
            self.first.append(handle)
        else:
            _append(self, handle)

    def popleft(self) -> Any:
        probe = self.probe
        if probe is not None:
            if self._probed:
                self._probed = False
            elif probe():
                # In place of a queued callback, which the loop serves next time round.
                self._probed = True
                return self.probe_handle
        first = self.first
        if first:
            return first.popleft()
        return _popleft(self)

    def __len__(self) -> int:
        return _len(self) + len(self.first)

    def __bool__(self) -> bool:
        return bool(self.first) or _len(self) > 0

    def clear(self) -> None:
        self.first.clear()
        _clear(self)


def run_first_lane(loop: asyncio.AbstractEventLoop) -> bool:
    """Gives `loop` its first lane and wakes it only when it waits (call before it runs anything). False, with a
    warning, for a loop that is not asyncio's selector loop."""
    ready = getattr(loop, "_ready", None)
    selector = getattr(loop, "_selector", None)
    if type(ready) is not collections.deque or selector is None or not hasattr(loop, "_write_to_self"):
        log.warning("tidegate: the event loop is not asyncio's: high priority waits in line like the rest")
        return False
    queue = HighFirstQueue(ready)
    loop._ready = queue  # type: ignore[attr-defined]
    _wake_only_when_waiting(loop, selector, queue)
    return True


def poll_between_callbacks(
    loop: asyncio.AbstractEventLoop, probe: Callable[[], bool] | None, callback: Callable[[], object]
) -> bool:
    """Has `loop` call `probe` before each callback it serves and, when it says so, run `callback` (in the first
    lane) at once; `probe` None stops it. For news a thread signals through a descriptor, which the loop otherwise
    sees at its next look at its selector, once every callback already ready has run: high priority's commits
    (`SpoolWriter`), which its requests wait for. Under saturation an iteration of the loop took 1.6 ms at the
    median and 6 ms at the 99th percentile (twice capacity, bench/pacer, clients ignoring Retry-After). False for a
    loop without the first lane (`run_first_lane`)."""
    ready = getattr(loop, "_ready", None)
    if not isinstance(ready, HighFirstQueue):
        return False
    if probe is None:
        ready.probe = None
        return True
    ready.probe_handle = asyncio.Handle(callback, (), loop, context=high_context(contextvars.copy_context()))
    ready.probe = probe
    return True


def _wake_only_when_waiting(loop: Any, selector: Any, ready: HighFirstQueue) -> None:
    """`call_soon_threadsafe` writes to the wake-up pipe only while the loop is in its selector (or about to be).

    Why no wake-up is lost: a thread appends its callback, then reads `waiting`; the loop sets `waiting`, then
    reads the ready queue, and waits without a timeout only if it is empty. Under the GIL these steps happen one
    after the other, so either the thread sees `waiting` set and writes, or its callback was appended before the
    loop looked, and the loop does not block."""
    select = selector.select
    write_to_self = loop._write_to_self
    waiting = False

    def select_waking(timeout: float | None = None) -> Any:
        nonlocal waiting
        waiting = True
        try:
            return select(0 if ready else timeout)
        finally:
            waiting = False

    def write_to_self_if_waiting() -> None:
        if waiting:
            write_to_self()

    selector.select = select_waking
    loop._write_to_self = write_to_self_if_waiting


def high_context(context: contextvars.Context) -> contextvars.Context:
    """A copy of `context` with `HIGH` set: what runs in it, and the tasks it creates, take the first lane."""
    marked = context.copy()
    marked.run(HIGH.set, True)
    return marked
