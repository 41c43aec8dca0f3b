"""Admission under overload: an adaptive concurrency limit over the cost of the requests in flight in a worker.

When the CPU is what runs out, no queue tidegate owns grows: requests wait inside Granian and the kernel for an
event loop that is busy validating large bodies, and the loop's own lag stays small (each call is short). What does
grow is the time a request spends in the app, from its first byte handed over to its answer: every await puts it
back behind every other runnable request. So the signal is that time, per unit of cost, against the lowest seen
recently (TCP Vegas and Netflix's gradient limiters do the same with round-trip times):

* Each request costs about its size: ``1 + Content-Length / COST_BYTES`` (a compressed body counts
  ``COMPRESSED_FACTOR`` times its length), so a 2,000-event body weighs what it costs, not what one reading does.
* Requests are compared with their own kind: by size class (``floor(log2(cost))``). Every ``WINDOW_S``, each class's
  mean time in the app is divided by ``base``, that class's long-run mean (an average over about ``1 / BASE_WEIGHT``
  windows, as Netflix's gradient2 keeps a long-run RTT); ``slowdown`` is those ratios averaged by cost. ``gradient =
  clamp(tolerance / slowdown, 0.5, 1)``, and the limit becomes ``limit * gradient + sqrt(limit)``, smoothed. A steady
  load, however heavy, is its own base and is never shed for being steady (a closed-loop benchmark keeps its
  goodput); a sudden slowdown against it shrinks the limit, up to half per window, and the priority partitions
  below decide who is refused. When load drops the base follows it down at once.
* Priority partitions: a request counts the work in flight of its own priority and those above it, against its share
  of the limit: low counts everything and may fill ``shares["low"]`` of it, medium counts medium and high against
  ``shares["medium"]``, high counts only high against all of it. Low is shed first, and low work never takes room
  from high. A request larger than its share is admitted when nothing it counts is in flight.
* A refusal costs almost nothing: decided from the headers before the body is read, a pre-rendered 503 whose
  ``Retry-After`` is the time the work in flight takes to drain at the measured completion rate, with jitter (so
  clients that honour it do not come back together).

Shipped with the floor equal to the start (``admission_min_limit = admission_initial_limit = 1024``): the limit
only grows above it, so in practice the priority partitions over cost do the shedding. Measured (README,
Performance): with a floor of 64 the gradient protected a high-priority device from a flood of large low-priority
bodies best (p99 51 ms against 483 ms), but under an open-loop overload of small requests it collapsed goodput
(581 of 4,700 req/s at 2x): refused requests still cost event-loop time, so the time in the app of the admitted
ones never recovered and the limit sat at its floor. An operator may lower the floor; the controller needs a
signal that excludes the cost of refusals before that can be the default.

Pure Python for now: it moves into the native gateway with the rest of admission (issue 10).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

__all__ = ["AdaptiveLimit", "request_cost"]

#: Bytes that weigh as much as one request: a reading (~250 B) costs about 1, a 2,000-event body about 90.
COST_BYTES = 4_096
#: Assumed when a request does not say how long its body is (chunked).
UNKNOWN_BYTES = 16_384
COMPRESSED_FACTOR = 4
WINDOW_S = 0.1
#: Weight of a window in the long-run mean time per size class (about 5 s at 100 ms windows).
BASE_WEIGHT = 0.02


def request_cost(content_length: str | None, content_encoding: str | None) -> float:
    """A request's weight, from its headers alone (the body is not read before admission)."""
    size = int(content_length) if content_length and content_length.isdigit() else UNKNOWN_BYTES
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        size *= COMPRESSED_FACTOR
    return 1.0 + size / COST_BYTES


@dataclass
class AdaptiveLimit:
    initial: float = 1024.0
    minimum: float = 1024.0
    maximum: float = 4096.0
    tolerance: float = 2.0
    smoothing: float = 0.3
    shares: dict[str, float] = field(default_factory=lambda: {"high": 1.0, "medium": 0.8, "low": 0.5})

    def __post_init__(self) -> None:
        self.limit = self.initial
        self.in_flight = 0.0
        self.in_flight_by_priority = dict.fromkeys(self.shares, 0.0)
        self.base: dict[int, float] = {}
        """Per size class, the long-run mean seconds in the app."""
        self.slowdown = 1.0
        """The last window's mean time in the app against the base, averaged by cost over the classes."""
        self.drain_rate = 0.0
        """Cost completed per second (smoothed), for Retry-After."""
        self.shed = dict.fromkeys(self.shares, 0)
        self._window_start = time.monotonic()
        self._window: dict[int, list[float]] = {}  # size class -> [seconds, requests, cost]
        self._window_peak = 0.0

    def capacity(self, priority: str) -> float:
        return self.limit * self.shares.get(priority, self.shares["low"])

    def counted(self, priority: str) -> float:
        """The work in flight a request of `priority` is measured against (its own and higher priorities')."""
        by = self.in_flight_by_priority
        if priority == "high":
            return by["high"]
        if priority == "medium":
            return by["high"] + by["medium"]
        return self.in_flight

    def try_acquire(self, priority: str, cost: float) -> bool:
        """Admits a request of `cost` at `priority`, or counts it shed."""
        counted = self.counted(priority)
        if counted > 0 and counted + cost > self.capacity(priority):
            self.shed[priority if priority in self.shed else "low"] += 1
            return False
        self.in_flight += cost
        if priority in self.in_flight_by_priority:
            self.in_flight_by_priority[priority] += cost
        self._window_peak = max(self._window_peak, self.in_flight)
        return True

    def release(self, priority: str, cost: float, seconds: float) -> None:
        """A request admitted with `cost` finished after `seconds` in the app."""
        self.in_flight = max(0.0, self.in_flight - cost)
        if priority in self.in_flight_by_priority:
            self.in_flight_by_priority[priority] = max(0.0, self.in_flight_by_priority[priority] - cost)
        sums = self._window.setdefault(int(math.log2(cost)), [0.0, 0.0, 0.0])
        sums[0] += seconds
        sums[1] += 1
        sums[2] += cost
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= WINDOW_S:
            self._update(elapsed)
            self._window_start = now

    def _update(self, elapsed: float) -> None:
        window, peak = self._window, self._window_peak
        self._window = {}
        self._window_peak = self.in_flight
        cost = sum(sums[2] for sums in window.values())
        rate = cost / elapsed
        self.drain_rate = rate if self.drain_rate == 0 else 0.7 * self.drain_rate + 0.3 * rate
        if cost <= 0:
            return
        weighted = 0.0
        for size_class, (seconds, requests, class_cost) in window.items():
            mean = seconds / requests
            base = self.base.get(size_class, mean)
            weighted += class_cost * mean / base
            # Compared first, then learnt: a faster window is the new normal at once, a slower one only slowly.
            self.base[size_class] = mean if mean < base else base * (1 - BASE_WEIGHT) + mean * BASE_WEIGHT
        self.slowdown = weighted / cost
        gradient = max(0.5, min(1.0, self.tolerance / self.slowdown))
        if gradient >= 1.0 and peak < self.limit / 2:
            return  # not pressed and not used: no reason to grow
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit * (1 - self.smoothing) + target * self.smoothing
        self.limit = max(self.minimum, min(self.maximum, limit))

    def retry_after(self) -> int:
        """Whole seconds until the work in flight drains at the measured rate, jittered up to twice that, 1..30."""
        drain = self.in_flight / self.drain_rate if self.drain_rate > 0 else 1.0
        return max(1, min(30, math.ceil(drain * random.uniform(1.0, 2.0))))
