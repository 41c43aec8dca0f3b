"""The ingest edge: POSTs to the ingest routes are served straight over Granian's RSGI (`tidegate.rsgi` says why)
and never build a Starlette Request or Response. Two native calls per request: admission (readiness, credentials,
priority shedding, the adaptive limit, the device's buckets) is one decision from the header pairs, before the body
is read, and a refusal is answered there in one synchronous call, without an await; an admitted request's headers
are read once, and its raw body goes to the native gateway (validation, dedup, the spool append, the rendered
answer), whose durability is awaited before the answer is sent whole. MQTT shares the pipeline from
`IngestEdge.accept` on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian.rsgi import Scope

from tidegate._native import BULK_BODY_BYTES, Accepted, AdmissionTicket, Spool, Validator
from tidegate.archive import event_type_of
from tidegate.delivery.spool import worker_spool_dirs
from tidegate.problems import Problem
from tidegate.quarantine import HTTP, Source
from tidegate.rsgi import read_body

if TYPE_CHECKING:
    from tidegate.gateway import Gateway

log = logging.getLogger("tidegate")

WANTED_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-length",
        "x-device-token",
        "x-api-key",
        "authorization",
        "x-priority",
        "x-idempotency-key",
        "x-dry-run",
        "x-ack",
        "transfer-encoding",
        "traceparent",
        "tracestate",
    }
)

ACK_LEVELS = ("spool", "kafka")

DRY_RUN_VALUES = {"true": True, "1": True, "false": False, "0": False}


def read_headers(raw: list[tuple[str, str]]) -> dict[str, str]:
    """The headers the body phase reads, once a request is admitted (names in lower case, as Granian gives them)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name in WANTED_HEADERS:
            # A header sent on several lines is one comma-separated list (RFC 9110, 5.3): W3C Trace Context
            # requires it for tracestate, and for a single-valued header the joined value is invalid.
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def dry_run_asked(headers: dict[str, str]) -> bool:
    """`X-Dry-Run`: true/false/1/0, any case; anything else is a 400 rather than a guess that might write."""
    raw = headers.get("x-dry-run")
    if raw is None:
        return False
    value = DRY_RUN_VALUES.get(raw.strip().lower())
    if value is None:
        raise Problem(
            400,
            "invalid-header",
            f"X-Dry-Run must be true, false, 1 or 0, not {raw.strip()[:64]!r}",
            [{"path": "header:X-Dry-Run", "message": "must be true, false, 1 or 0"}],
        )
    return value


@dataclass(frozen=True)
class IngestRoute:
    index: int
    """The route's place in the native gateway's routes."""
    name: str
    path: str
    validator: Validator
    priority: str
    kind: str
    """"telemetry", "batch" or "event"."""

    @functools.cached_property
    def event_type(self) -> str:
        """The archive's `event_type` partition of this route's records (`telemetry`, `event`)."""
        return event_type_of(self.validator.contract.name)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    content_type: str | None = "application/json"
    """None when `headers` are complete (the native gateway's answers carry their content-type); Granian adds
    content-length."""
    native: Accepted | None = None
    """The native gateway's answer, when it rendered this one (its device, event id, records)."""

    @property
    def rejected(self) -> int:
        """Issues of the records refused (the body names them; they are quarantined)."""
        return self.native.rejected if self.native is not None else 0


class DeliveredEnds(NamedTuple):
    """What `X-Ack: kafka` waits for the broker to acknowledge: every record below `lanes` in this worker's spools
    (`Accepted.delivered_ends`), and below each end of `elsewhere` in another spool of the host."""

    lanes: tuple[int, int]
    elsewhere: tuple[tuple[Path, int], ...]


OFF_LOOP_BODY_BYTES = BULK_BODY_BYTES
"""A body at least this large (what admission counts in its bulk lane) is accepted on the edge's accept thread
rather than on the event loop's: a 2,000-event body takes the native call ~10-20 ms, and on the loop's thread every
request behind it waits that long, the high-priority ones too (`bench/flood.py`: before, half a flooded high
reading's time was spent waiting for the loop, in its body read and in its durability wake-up). One thread: large
bodies are taken in turn, and the loop keeps the other core. Smaller bodies stay on the loop: handing one over
costs more than taking it."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestEdge:
    """The ingest routes' RSGI path of one worker (`Gateway`): headers, admission, body, validation, dedup,
    spool, answer. MQTT enters at `accept`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self._delivered_waiters: list[tuple[DeliveredEnds, asyncio.Future[None]]] = []
        self._delivered_watch: asyncio.Task[None] | None = None
        #: Tasks reading a body, with their deadlines; the housekeeping task cancels the late ones (cheaper than
        #: a timeout context per request).
        self._body_deadlines: dict[asyncio.Task[Any], float] = {}
        self._body_timed_out: set[asyncio.Task[Any]] = set()
        #: Whether every request passes `screen` as it arrives (set by the scheduler `App.__rsgi_init__` wraps).
        self.screening = False
        #: Takes the large bodies (`OFF_LOOP_BODY_BYTES`), one at a time, off the event loop's thread.
        self._closing = False
        self._accept_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidegate-accept")

    def close(self) -> None:
        """At the worker's stop, once no request is in flight (or the drain deadline passed)."""
        self._closing = True
        self._accept_thread.shutdown(wait=True)

    def cancel_late_bodies(self, now: float) -> None:
        """Called by the housekeeping task: cancels the body reads past their deadline (`_read_body` answers 408)."""
        for task, deadline in list(self._body_deadlines.items()):
            if now > deadline and task not in self._body_timed_out:
                self._body_timed_out.add(task)
                task.cancel()

    def screen(self, route: IngestRoute, scope: Scope, proto: HTTPProtocol) -> str | None:
        """Admission's load checks as the request arrives, on the Granian thread that hands it to the event loop
        (`App.__rsgi_init__` puts this there): the priority it goes to the loop with, or None when it was refused
        and answered here. Under CPU saturation the loop's queue is where requests wait; a request shed here
        neither waits in it nor costs it a task (measured at twice capacity, busy shedding on, clients ignoring
        Retry-After: total goodput 0.38-0.43 of capacity before, 0.64-0.68 with it). What it lets through is counted
        as waiting for the loop until `handle` begins it, and that queue sheds by priority as requests arrive
        (`Admission::screen` in the core). The rest of the decision (the limit's permit, the key, the device's
        buckets) is made on the loop, by `handle`."""
        started = time.perf_counter()
        gateway = self.gateway
        decided = gateway.admission.screen(
            scope.headers.items(), route.priority, gateway.in_flight_records, route.index, proto
        )
        if isinstance(decided, str):
            return decided
        # Refused, answered and counted natively (`tidegate_requests_total` and `..._refused_on_arrival_total` read
        # those counts; the latency histogram times what reaches the loop): the Python left is the log's.
        gateway._recent_requests += 1
        if self._log_sampled():
            self._log(route, Answer(decided, b"", [], content_type=None), time.perf_counter() - started)
        return None

    def _refused(
        self,
        route: IngestRoute,
        proto: HTTPProtocol,
        ticket: AdmissionTicket,
        refusal: tuple[int, bytes, list[tuple[str, str]]],
        *,
        priority: str,
        started: float,
    ) -> None:
        """Sends a refusal admission rendered on the loop (`decide`), and counts it."""
        gateway = self.gateway
        # Counts requests for the log's sampling rate: an estimate, so the odd increment lost to a thread switch
        # between Granian's threads (`screen`) and the loop's does not matter.
        gateway._recent_requests += 1
        status, body, head = refusal
        try:
            proto.response_bytes(status, head, body)
        finally:
            gateway.admission.done(ticket)
        elapsed = time.perf_counter() - started
        self.metrics.requests.inc((route.name, str(status)))
        self.metrics.latency.observe(elapsed, (route.name, priority))
        # Logged as successes are (sampled under load): a flood's refusals must not each cost a log line.
        if self._log_sampled():
            self._log(route, Answer(status, body, head, content_type=None), elapsed)

    async def handle(self, route: IngestRoute, scope: Scope, proto: HTTPProtocol) -> None:
        started = time.perf_counter()
        gateway = self.gateway
        admission = gateway.admission
        raw_headers = scope.headers.items()
        # The header phase is one native decision from the header pairs, before the body is read: readiness,
        # the device key, priority, utilization, the adaptive limit and the device's buckets (tidegate._native
        # Admission). A refusal is rendered natively and sent in one call, without an await: no header dict, no
        # Problem, no body read. When `screen` ran as the request arrived, its load checks are not made again.
        ticket, device_id, priority, refusal = admission.decide(
            raw_headers, route.priority, gateway.in_flight_records, screened=self.screening, proto=proto
        )
        if refusal is not None:
            self._refused(route, proto, ticket, refusal, priority=priority, started=started)
            return
        gateway._recent_requests += 1
        headers = read_headers(raw_headers)
        gateway.in_flight_requests += 1
        try:
            try:
                answer = await self.ingest(route, headers, proto, device_id, priority)
            except Problem as problem:
                answer = Answer(
                    problem.status, problem.body(), problem.headers, content_type="application/problem+json"
                )
            finally:
                gateway.in_flight_requests -= 1
            if answer.content_type is not None:
                answer.headers.append(("content-type", answer.content_type))
            proto.response_bytes(answer.status, answer.headers, answer.body)
        finally:
            admission.done(ticket)
        elapsed = time.perf_counter() - started
        self.metrics.requests.inc((route.name, str(answer.status)))
        self.metrics.latency.observe(elapsed, (route.name, priority))
        self._log(route, answer, elapsed)

    def _log_sampled(self) -> bool:
        """Whether a request is logged: every one while the rate is under `log_full_below_rps`, else a sample."""
        return (
            self.gateway._request_rate < self.settings.log_full_below_rps
            or random.random() < self.settings.log_sample_rate
        )

    def _log(self, route: IngestRoute, answer: Answer, elapsed: float) -> None:
        """Logs a request's line: every failure (4xx, 5xx), successes as `_log_sampled` says (refusals under load are
        sampled by their callers before they get here)."""
        if (answer.status >= 400 or self._log_sampled()) and log.isEnabledFor(logging.INFO):
            native = answer.native
            line = {
                "ts": round(time.time(), 3),
                "route": route.path,
                "status": answer.status,
                "device_id": native.device_id if native is not None else None,
                "event_id": native.event_id if native is not None else None,
                "records": native.total if native is not None else 0,
                "ms": round(elapsed * 1000, 3),
            }
            log.info(json.dumps(line, separators=(",", ":")))

    async def _read_body(self, headers: dict[str, str], proto: HTTPProtocol) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        self._body_deadlines[task] = time.monotonic() + self.settings.body_timeout_s
        try:
            # The only awaits while the task is registered: a late body is cancelled right here.
            return await read_body(
                proto, headers.get("content-length"), headers.get("transfer-encoding"), self.settings.max_body_bytes
            )
        except (ProtocolClosed, ProtocolError):
            raise Problem(400, "disconnected", "the client went away before sending the whole body") from None
        except asyncio.CancelledError:
            if task not in self._body_timed_out:
                raise
            self._body_timed_out.discard(task)
            task.uncancel()
            raise Problem(
                408,
                "body-timeout",
                f"the body was not received within {self.settings.body_timeout_s:g} s",
            ) from None
        finally:
            del self._body_deadlines[task]

    async def ingest(
        self, route: IngestRoute, headers: dict[str, str], proto: HTTPProtocol, device_id: str | None, priority: str
    ) -> Answer:
        """An admitted request (`Admission.decide`: `device_id` is its key's device, None without auth): the
        remaining header checks, the body, then `ingest_body`."""
        try:
            body, dry_run = await self._checked_body(headers, proto)
        except Problem as problem:
            # Answered before the whole body was read: Granian closes such a connection after the answer unless the
            # body had already arrived, so the answer says so (else a keep-alive client reuses a closed connection).
            problem.headers.append(("Connection", "close"))
            raise
        return await self.ingest_body(route, body, headers, device_id, priority, dry_run=dry_run)

    async def _checked_body(self, headers: dict[str, str], proto: HTTPProtocol) -> tuple[bytes, bool]:
        """The header checks left after admission, then the body: (body, whether it is a dry run)."""
        ack = headers.get("x-ack", "spool").strip().lower()
        if ack not in ACK_LEVELS:
            raise Problem(
                400,
                "invalid-ack",
                "X-Ack must be spool or kafka",
                [{"path": "header:X-Ack", "message": f"unknown acknowledgement level {ack[:32]!r}"}],
            )
        if ack == "kafka" and not self.settings.kafka:
            raise Problem(
                400,
                "kafka-not-configured",
                "X-Ack: kafka asks for the broker's acknowledgement, but this service has no Kafka configured",
                [{"path": "header:X-Ack", "message": "no Kafka is configured: send spool, or no X-Ack"}],
            )
        # Checked before the body is read, like X-Ack; the setting turns every request into a dry run.
        dry_run = dry_run_asked(headers) or self.settings.dry_run
        return await self._read_body(headers, proto), dry_run

    async def ingest_body(
        self,
        route: IngestRoute,
        body: bytes,
        headers: dict[str, str],
        device_id: str | None,
        priority: str,
        *,
        dry_run: bool,
    ) -> Answer:
        """An admitted HTTP body: `accept` (one native call; a large body's on the accept thread), then the answer
        once what it wrote is durable (`deliver`)."""
        take = functools.partial(self.accept, route, body, headers, device_id, priority, dry_run=dry_run)
        if len(body) < OFF_LOOP_BODY_BYTES:
            accepted = take()
        else:
            try:
                accepted = await asyncio.get_running_loop().run_in_executor(self._accept_thread, take)
            except RuntimeError:
                if not self._closing:
                    raise
                # A request still running past the drain deadline: the accept thread is shut down.
                raise Problem(503, "not-ready", "the service is draining", headers=[("Retry-After", "5")]) from None
        return await self.deliver(accepted, kafka=headers.get("x-ack", "").strip().lower() == "kafka")

    def accept(
        self,
        route: IngestRoute,
        body: bytes,
        headers: dict[str, str],
        device_id: str | None,
        priority: str,
        *,
        dry_run: bool,
        source: Source = HTTP,
        device_from_source: bool = False,
    ) -> Accepted:
        """Takes a body in one native call without the GIL (`tidegate._native.Gateway.accept`): validates it, checks
        its device (`device_id`, the authenticated one, which every telemetry record must name; with
        `device_from_source`, MQTT's, a telemetry record that leaves device_id out is that device's), quarantines
        what is refused (`tidegate.quarantine`), claims its records and idempotency keys in the shared dedup
        window, appends them to the spool (nothing in a dry run) and renders the answer. With the archive on,
        duplicate occurrences are spooled too, on `DUPLICATES_TOPIC`, and each record's answer carries its
        `archive_key`. Several bodies' appends may share one commit (MQTT takes the messages of one read so)."""
        native = self.gateway.native
        assert native is not None
        return native.accept(
            route.index,
            body,
            content_type=headers.get("content-type"),
            content_encoding=headers.get("content-encoding"),
            traceparent=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
            idempotency_key=headers.get("x-idempotency-key"),
            device_id=device_id,
            device_from_source=device_from_source,
            priority=priority,
            dry_run=dry_run,
            source=source.name,
            source_headers=source.headers,
            undecodable_retried=source.undecodable_retried,
        )

    async def deliver(self, accepted: Accepted, *, kafka: bool = False) -> Answer:
        """The answer of an accepted body once what it wrote is durable (and, with `kafka`, acknowledged by the
        broker, within `kafka_ack_timeout_s`). A duplicate's answer waits for what it repeats when that is not
        durable yet, and fails with it. Raises Problem (503) when the spool could not take it or its commit failed:
        its claims were released before any other request could run (`Gateway.settle`). What it waits for is per
        lane (`Accepted.durable_ends`): a high-priority body's own spool, and every spool for one that repeats
        records not durable yet; `X-Ack: kafka` waits for `Accepted.delivered_ends`."""
        if accepted.spool_full:
            self.gateway.spool_full = True
        ends = accepted.durable_ends
        answer = Answer(accepted.status, accepted.body, accepted.headers, content_type=None, native=accepted)
        if ends is None:
            if accepted.status == 202:
                answer.headers.insert(0, ("x-durability", "none"))
            return answer
        records = accepted.records
        native = self.gateway.native
        assert native is not None
        self.gateway.in_flight_records += records
        try:
            for lane, end in enumerate(ends):
                if end:  # 0: nothing to wait for in that lane (and no writer, without high priority's spool)
                    await self.gateway.writers[lane].durable(end)
            # A lane's commit that failed before this request awaited that lane did not fail its wait.
            failed = native.failed_since(accepted)
        except OSError:
            failed = True
        finally:
            self.gateway.in_flight_records -= records
        if failed:
            raise Problem(
                503,
                "spool-error",
                "the local spool cannot take more data right now",
                headers=[("Retry-After", "5")],
            )
        if accepted.status == 202:
            durability = "spool"
            if kafka:
                assert accepted.delivered_ends is not None  # set whenever durable_ends is
                delivered = DeliveredEnds(
                    accepted.delivered_ends, self._undelivered_elsewhere() if accepted.repeats_durable else ()
                )
                if await self._wait_delivered(delivered, self.settings.kafka_ack_timeout_s):
                    durability = "kafka"
            answer.headers.insert(0, ("x-durability", durability))
        return answer

    def _undelivered_elsewhere(self) -> tuple[tuple[Path, int], ...]:
        """The host's other spools (other workers', or left by an earlier process) holding durable records the
        broker has not acknowledged: each directory, and how far it is durable. A repeat of durable records may
        repeat one of them (`Accepted.repeats_durable`): its record was durable, and its spool's published durable
        sequence past it, before its claim said so. Which spool holds it is not kept with the claim, so the repeat
        waits for all of them: one that lags makes such answers wait, up to `kafka_ack_timeout_s`, and say `spool`."""
        own = self.gateway.own_spool_dirs()
        undelivered = []
        for directory in worker_spool_dirs(self.settings.data_dir):
            if directory not in own:
                durable, delivered = Spool.published_progress(directory)
                if delivered < durable:
                    undelivered.append((directory, durable))
        return tuple(undelivered)

    def _delivered(self, ends: DeliveredEnds, published: dict[Path, int] | None = None) -> bool:
        """Whether the delivery process saw the broker acknowledge every record below `ends`. `published`: what
        other spools' `progress` files said, read once for all the waiters a watch looks at."""
        spools = self.gateway.spools
        if not all(not end or spools[lane].delivered_seq >= end for lane, end in enumerate(ends.lanes)):
            return False
        published = {} if published is None else published
        for directory, end in ends.elsewhere:
            delivered = published.get(directory)
            if delivered is None:
                delivered = published[directory] = Spool.published_progress(directory)[1]
            if delivered < end:
                return False
        return True

    async def _wait_delivered(self, ends: DeliveredEnds, timeout: float) -> bool:
        """True once the delivery process saw the broker acknowledge every record below `ends` (`X-Ack: kafka`);
        False after `timeout`. One task watches the published sequences for every waiter."""
        if self._delivered(ends):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (ends, future)
        self._delivered_waiters.append(waiter)
        if self._delivered_watch is None or self._delivered_watch.done():
            self._delivered_watch = asyncio.create_task(self._watch_delivered())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self._delivered(ends)
        finally:
            with contextlib.suppress(ValueError):
                self._delivered_waiters.remove(waiter)
        return True

    async def _watch_delivered(self) -> None:
        while self._delivered_waiters:
            await asyncio.sleep(0.002)
            published: dict[Path, int] = {}
            for ends, future in self._delivered_waiters:
                if not future.done() and self._delivered(ends, published):
                    future.set_result(None)
