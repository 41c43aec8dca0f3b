"""A small Prometheus registry: labelled counters, histograms and gauges, rendered in the text format.

Written here rather than imported so that the hot path costs one dict update per observation. Counters and
histograms are updated from several threads (refusals are counted on Granian's threads as requests arrive,
`tidegate.app`; the rest on the event loop's), and an update is a read and a write the GIL may switch threads
between. So each thread updates values of its own, without a lock, and a scrape adds them up. A lock shared by
those threads was what the event loop waited on most under overload: a Granian thread made to give up the GIL
while holding it kept the loop waiting for both, up to 125 ms for one update (issue 11, at twice capacity).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from tidegate._native import BULK_BODY_BYTES, LAG_BOUNDS_MS, REFUSAL_DRAINED_BODY_MAX_BYTES

LabelValues = tuple[str, ...]
#: `tidegate._native.Gateway.counters()`.
NativeCounts = tuple[list[tuple[str, str, int]], list[tuple[str, int]], int, list[int], float, bool]

Value = TypeVar("Value")


def _labels(names: tuple[str, ...], values: LabelValues) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{n}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for n, v in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class PerThread(Generic[Value]):
    """One dict of values per thread that updates them (`mine`, no lock: only its thread writes it), and all of
    them for a scrape (`copies`). A thread's values outlive it: what it counted stays counted. Counts kept natively
    are not stored here: they are read at each scrape and added as the metric renders (`counted_elsewhere`)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[dict[LabelValues, Value]] = []
        self._lock = threading.Lock()  # taken once per thread, and by scrapes

    def mine(self) -> dict[LabelValues, Value]:
        try:
            values: dict[LabelValues, Value] = self._local.values
        except AttributeError:
            values = self._local.values = {}
            with self._lock:
                self._all.append(values)
        return values

    def copies(self) -> list[dict[LabelValues, Value]]:
        """Each thread's values as they are now (`dict.copy` runs without a switch of thread)."""
        with self._lock:
            every = list(self._all)
        return [values.copy() for values in every]


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: PerThread[float] = PerThread()

    def inc(self, labels: LabelValues = (), amount: float = 1.0) -> None:
        values = self._values.mine()
        values[labels] = values.get(labels, 0.0) + amount

    def totals(self) -> dict[LabelValues, float]:
        totals: dict[LabelValues, float] = {}
        for values in self._values.copies():
            for labels, value in values.items():
                totals[labels] = totals.get(labels, 0.0) + value
        return totals

    def get(self, labels: LabelValues = ()) -> float:
        return self.totals().get(labels, 0.0)

    def render(self, counted_elsewhere: Iterable[tuple[LabelValues, float]] = ()) -> Iterable[str]:
        """The text format, with `counted_elsewhere` (natively) added."""
        totals = self.totals()
        for labels, value in counted_elsewhere:
            totals[labels] = totals.get(labels, 0.0) + value
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(totals.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {value:g}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        # Per label values: the count in each bucket, then +Inf, then the sum.
        self._series: PerThread[list[float]] = PerThread()

    def _mine(self, labels: LabelValues) -> list[float]:
        all_series = self._series.mine()
        series = all_series.get(labels)
        if series is None:
            series = all_series[labels] = [0.0] * (len(self.buckets) + 2)
        return series

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        series = self._mine(labels)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def totals(self) -> dict[LabelValues, list[float]]:
        totals: dict[LabelValues, list[float]] = {}
        for all_series in self._series.copies():
            for labels, series in all_series.items():
                # A copy of the list (`list(...)` runs without a switch of thread).
                counts = list(series)
                total = totals.get(labels)
                if total is None:
                    totals[labels] = counts
                else:
                    for i, count in enumerate(counts):
                        total[i] += count
        return totals

    def count(self, labels: LabelValues = ()) -> float:
        series = self.totals().get(labels)
        return sum(series[:-1]) if series else 0.0

    def render(self, counted_elsewhere: Iterable[tuple[LabelValues, list[float]]] = ()) -> Iterable[str]:
        """The text format, with `counted_elsewhere` (natively: per label values, the count in each bucket, then
        +Inf, then the sum) added."""
        totals = self.totals()
        for labels, series in counted_elsewhere:
            total = totals.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for i, count in enumerate(series):
                total[i] += count
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, series in sorted(totals.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series[:-1], strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                names = (*self.label_names, "le")
                yield f"{self.name}_bucket{_labels(names, (*labels, le))} {cumulative:g}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {series[-1]:g}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {cumulative:g}"


class Gauge:
    """A gauge read from a callback at scrape time."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {self.read():g}"


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


PRIORITIES = ("high", "medium", "low")


def admission_lines(snapshot: dict[str, float]) -> Iterable[str]:
    """The native admission's counters and gauges (`tidegate._native.Admission.snapshot`) in the text format."""

    def family(name: str, kind: str, help_text: str) -> Iterable[str]:
        yield f"# HELP {name} {help_text}"
        yield f"# TYPE {name} {kind}"

    yield from family(
        "tidegate_shed_total",
        "counter",
        "Requests shed by priority (503: the limit, its bulk lane, utilization, a busy loop or the loop's queue).",
    )
    for p in PRIORITIES:  # which refusals shed is the core's (`Refusal::is_shed`), not a list kept here
        yield f'tidegate_shed_total{{priority="{p}"}} {snapshot[f"shed_{p}"]:g}'
    yield from family("tidegate_rate_limited_total", "counter", "Requests refused by a device's rate or bytes (429).")
    limited = sum(snapshot[f"refused_{r}_{p}"] for r in ("rate", "decoded_bytes") for p in PRIORITIES)
    yield f"tidegate_rate_limited_total {limited:g}"
    yield from family(
        "tidegate_admission_refused_total", "counter", "Requests refused before their body was read, by reason."
    )
    # The reasons are the native snapshot's (`refused_<reason>_<priority>`), not a second list kept here.
    for key, count in snapshot.items():
        if key.startswith("refused_"):
            reason, _, p = key.removeprefix("refused_").rpartition("_")
            yield f'tidegate_admission_refused_total{{reason="{reason}",priority="{p}"}} {count:g}'
    yield from family(
        "tidegate_admission_refusal_connections_total",
        "counter",
        "Refusals answered before the body was read, by what became of the connection: kept (the declared body, "
        f"empty or at most {REFUSAL_DRAINED_BODY_MAX_BYTES // 1024} KiB, is read and dropped after the answer) or "
        "closed (Connection: close).",
    )
    for connection in ("kept", "closed"):
        yield (
            f'tidegate_admission_refusal_connections_total{{connection="{connection}"}} '
            f"{snapshot[f'refusals_connection_{connection}']:g}"
        )
    yield from family(
        "tidegate_admission_refusals_held_total",
        "counter",
        "Sheds refused as the request arrived and held before their answer (admission_refusal_hold_s), since start.",
    )
    yield f"tidegate_admission_refusals_held_total {snapshot['refusals_held']:g}"
    yield from family("tidegate_admission_refusals_holding", "gauge", "Refusals held now, their answer not yet sent.")
    yield f"tidegate_admission_refusals_holding {snapshot['refusals_holding']:g}"
    yield from family(
        "tidegate_admission_refusal_bodies_never_sent_total",
        "counter",
        "Refused requests whose declared body did not arrive within body_timeout_s: their connection was closed.",
    )
    yield f"tidegate_admission_refusal_bodies_never_sent_total {snapshot['refusal_bodies_never_sent']:g}"
    yield from family("tidegate_admission_admitted_total", "counter", "Requests admitted, by priority.")
    for p in PRIORITIES:
        yield f'tidegate_admission_admitted_total{{priority="{p}"}} {snapshot[f"admitted_{p}"]:g}'
    yield from family("tidegate_admission_limit", "gauge", "Adaptive concurrency limit (cost units).")
    yield f"tidegate_admission_limit {snapshot['limit']:g}"
    for p in ("low", "medium"):
        yield from family(
            f"tidegate_admission_limit_{p}", "gauge", f"Part of the limit {p}-priority requests may fill."
        )
        yield f"tidegate_admission_limit_{p} {snapshot[f'capacity_{p}']:g}"
    yield from family("tidegate_admission_in_flight", "gauge", "Cost of the requests in flight.")
    yield f"tidegate_admission_in_flight {snapshot['in_flight']:g}"
    yield from family("tidegate_admission_in_flight_priority", "gauge", "Cost of the requests in flight, by priority.")
    for p in PRIORITIES:
        yield f'tidegate_admission_in_flight_priority{{priority="{p}"}} {snapshot[f"in_flight_{p}"]:g}'
    yield from family(
        "tidegate_admission_bulk_in_flight",
        "gauge",
        f"Large bodies ({BULK_BODY_BYTES // 1024} KiB or more) in flight, by priority (the limit's bulk lane, "
        "admission_bulk_bodies).",
    )
    for p in PRIORITIES:
        yield f'tidegate_admission_bulk_in_flight{{priority="{p}"}} {snapshot[f"bulk_in_flight_{p}"]:g}'
    yield from family(
        "tidegate_admission_bulk_places",
        "gauge",
        "Large low-priority bodies the bulk lane lets in flight now (medium twice as many); 1 while it is narrowed "
        "for high priority (admission_bulk_narrow_at).",
    )
    yield f"tidegate_admission_bulk_places {snapshot['bulk_places']:g}"
    yield from family(
        "tidegate_admission_high_slowdown",
        "gauge",
        "High priority's own time (the median of its last 8 small requests) against the bulk lane's baseline of it; "
        "the lane narrows past admission_bulk_narrow_at (0: fewer than 8 seen).",
    )
    yield f"tidegate_admission_high_slowdown {snapshot['high_slowdown']:g}"
    yield from family(
        "tidegate_admission_bulk_narrowed_total", "counter", "Times the bulk lane narrowed for high priority."
    )
    yield f"tidegate_admission_bulk_narrowed_total {snapshot['bulk_narrowings']:g}"
    yield from family(
        "tidegate_admission_bulk_narrowed_seconds_total",
        "counter",
        "Seconds the bulk lane was narrowed for high priority.",
    )
    yield f"tidegate_admission_bulk_narrowed_seconds_total {snapshot['bulk_narrow_seconds']:g}"
    yield from family(
        "tidegate_admission_slowdown",
        "gauge",
        "Admitted requests' time (refusals' loop time excluded) against the best seen for their size (the limit "
        "shrinks above tolerance).",
    )
    yield f"tidegate_admission_slowdown {snapshot['slowdown']:g}"
    yield from family(
        "tidegate_admission_loop_busy",
        "gauge",
        "Share of the last 50 ms the event loop was busy (not waiting for I/O).",
    )
    yield f"tidegate_admission_loop_busy {snapshot['loop_busy']:g}"
    yield from family(
        "tidegate_admission_shed_level",
        "gauge",
        "Shedding by the loop's busy share: 0 none, 1 all low priority, 2 all medium too (high never).",
    )
    yield f"tidegate_admission_shed_level {snapshot['shed_level']:g}"
    yield from family(
        "tidegate_admission_loop_queue",
        "gauge",
        "Cost let in as it arrived and not yet begun by the event loop (each priority is shed past its mark).",
    )
    yield f"tidegate_admission_loop_queue {snapshot['loop_queue']:g}"
    yield from family("tidegate_admission_drain_rate", "gauge", "Cost completed per second (Retry-After of a shed).")
    yield f"tidegate_admission_drain_rate {snapshot['drain_rate']:g}"
    yield from family(
        "tidegate_admission_refusal_seconds", "gauge", "Event-loop seconds one refusal takes in the worker (measured)."
    )
    yield f"tidegate_admission_refusal_seconds {snapshot['refusal_seconds']:g}"


class Metrics:
    """Every metric tidegate exports."""

    def __init__(self) -> None:
        self.requests = Counter("tidegate_requests_total", "HTTP requests by route and status.", ("route", "status"))
        self.refused_on_arrival = Counter(
            "tidegate_admission_refused_on_arrival_total",
            "Requests refused as they arrived, on Granian's thread, before waiting for the event loop (counted in "
            "tidegate_requests_total too).",
            ("route",),
        )
        self._refused_on_arrival: Callable[[], Iterable[tuple[str, int, int]]] = list
        self.records = Counter("tidegate_records_total", "Records by outcome and priority.", ("outcome", "priority"))
        self.latency = Histogram(
            "tidegate_ingest_latency_seconds",
            "Ingest request latency until the answer, from the start of its task on the event loop (a refusal on "
            "arrival, which takes microseconds on Granian's thread, is counted in tidegate_requests_total only), by "
            "route and priority (X-Priority, or the route's default).",
            LATENCY_BUCKETS,
            ("route", "priority"),
        )
        self.lag = Histogram("tidegate_ingest_lag_ms", "Reception time minus record time.", LAG_BOUNDS_MS)
        self.mqtt_messages = Counter(
            "tidegate_mqtt_messages_total",
            "MQTT messages taken and acknowledged, by outcome (accepted, dead_lettered, partly_dead_lettered).",
            ("outcome",),
        )
        self.mqtt_dead_letters = Counter(
            "tidegate_mqtt_dead_letters_total",
            "MQTT messages (or records of them) sent to the dead-letter topic, by reason.",
            ("reason",),
        )
        self.device_alerts = Counter(
            "tidegate_device_alerts_total",
            "Device alerts this worker raised (it held the silence detector), by kind (device_silence, "
            "device_recovered).",
            ("alert",),
        )
        self.quarantined = Counter(
            "tidegate_quarantined_records_total",
            "Refused records and bodies kept on the dead-letter topic, by the stage that refused them.",
            ("stage",),
        )
        self.quarantine_dropped = Counter(
            "tidegate_quarantine_dropped_total",
            "Refused records and bodies not kept: their device's quarantine budget was spent.",
        )
        self.spool_cleanups = Counter(
            "tidegate_spool_cleanups_total",
            "Cleanup passes over the worker's spools (each deletes the segments every reader, Kafka delivery and the "
            "archive, has passed; about once a second past half the quota, else every 30 s).",
        )
        self.spool_segments_deleted = Counter(
            "tidegate_spool_segments_deleted_total",
            "Spool segments deleted by cleanup (the worker's spools and those no worker writes any more).",
        )
        self.gauges: list[Gauge] = []
        #: Metrics counted natively, rendered at scrape time (`source`): the only way native counts reach here.
        self.sources: list[Callable[[], Iterable[str]]] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def source(self, render: Callable[[], Iterable[str]]) -> None:
        """Metrics rendered by a callback at scrape time (counters kept natively)."""
        self.sources.append(render)

    def native_histogram(
        self,
        name: str,
        help_text: str,
        read: Callable[[], list[tuple[LabelValues, tuple[list[float], list[int], float]]]],
        labels: tuple[str, ...] = (),
    ) -> None:
        """A histogram kept natively: `read` gives, per series, its label values and (bucket upper bounds, count
        per bucket then +Inf, sum) at each scrape (every series has the same bounds; none while nothing is kept)."""

        def render() -> Iterable[str]:
            observed = read()
            if not observed:
                return
            bounds = observed[0][1][0]
            series = [(values, [*map(float, counts), total]) for values, (_, counts, total) in observed]
            yield from Histogram(name, help_text, tuple(bounds), labels).render(series)

        self.source(render)

    def native_counts(self, read: Callable[[], NativeCounts]) -> None:
        """The native gateway's counts (`tidegate._native.Gateway.counters`): records, quarantined records,
        quarantine drops and the ingest lag are counted there, per request, without the GIL; `read` is called at
        each scrape."""

        def render() -> Iterable[str]:
            records, quarantined, dropped, lag, lag_sum, lag_observed = read()
            yield from self.records.render(((outcome, priority), float(n)) for outcome, priority, n in records)
            yield from self.lag.render([((), [*map(float, lag), lag_sum])] if lag_observed else [])
            yield from self.quarantined.render(((stage,), float(n)) for stage, n in quarantined)
            yield from self.quarantine_dropped.render([((), float(dropped))])

        self.source(render)

    def refusals_on_arrival(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """The refusals answered natively as requests arrived (`tidegate._native.Admission.screen`): `read` gives
        (route, status, count) at each scrape, counted in `tidegate_requests_total` and
        `tidegate_admission_refused_on_arrival_total`."""
        self._refused_on_arrival = read

    def render(self) -> str:
        lines: list[str] = []
        refused = [((route, str(status)), float(count)) for route, status, count in self._refused_on_arrival()]
        lines.extend(self.requests.render(refused))
        lines.extend(self.refused_on_arrival.render(((route,), count) for (route, _), count in refused))
        lines.extend(self.latency.render())
        for render in self.sources:
            lines.extend(render())
        lines.extend(self.mqtt_messages.render())
        lines.extend(self.mqtt_dead_letters.render())
        lines.extend(self.device_alerts.render())
        lines.extend(self.spool_cleanups.render())
        lines.extend(self.spool_segments_deleted.render())
        for gauge in self.gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"
