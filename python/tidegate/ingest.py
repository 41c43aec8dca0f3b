"""The ingest edge: POSTs to the ingest routes take a raw-ASGI fast path and never build a Starlette Request or
Response. Two native calls per request: admission (readiness, credentials, priority shedding, the adaptive limit,
the device's buckets) is one decision from the raw header list, before the body is read; an admitted request's
headers are read once, and its raw body goes to the native gateway (validation, dedup, the spool append, the
rendered answer), whose durability is awaited before the answer is written straight to ASGI. MQTT shares the
pipeline from `IngestEdge.ingest_body` on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from tidegate._native import Accepted, Validator
from tidegate.archive import event_type_of
from tidegate.problems import Problem
from tidegate.quarantine import HTTP, Source

if TYPE_CHECKING:
    from tidegate.gateway import Gateway

log = logging.getLogger("tidegate")

WANTED_HEADERS = frozenset(
    {
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"x-device-token",
        b"x-api-key",
        b"authorization",
        b"x-priority",
        b"x-idempotency-key",
        b"x-dry-run",
        b"x-ack",
        b"traceparent",
        b"tracestate",
    }
)

ACK_LEVELS = ("spool", "kafka")

DRY_RUN_VALUES = {"true": True, "1": True, "false": False, "0": False}


def read_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The headers the body phase reads, once a request is admitted."""
    headers: dict[bytes, str] = {}
    for name, value in raw:
        if name in WANTED_HEADERS:
            text = value.decode("latin-1")
            # A header sent on several lines is one comma-separated list (RFC 9110, 5.3): W3C Trace Context
            # requires it for tracestate, and for a single-valued header the joined value is invalid.
            headers[name] = f"{headers[name]},{text}" if name in headers else text
    return headers


def dry_run_asked(headers: dict[bytes, str]) -> bool:
    """`X-Dry-Run`: true/false/1/0, any case; anything else is a 400 rather than a guess that might write."""
    raw = headers.get(b"x-dry-run")
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
    headers: list[tuple[bytes, bytes]]
    content_type: bytes | None = b"application/json"
    """None when `headers` are complete (the native gateway's answers carry content-type and content-length)."""
    native: Accepted | None = None
    """The native gateway's answer, when it rendered this one (its device, event id, records)."""

    @property
    def rejected(self) -> int:
        """Issues of the records refused (the body names them; they are quarantined)."""
        return self.native.rejected if self.native is not None else 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestEdge:
    """The ingest routes' raw-ASGI path of one worker (`Gateway`): headers, admission, body, validation, dedup,
    spool, answer. MQTT enters at `ingest_body`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.metrics = gateway.metrics
        self._delivered_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._delivered_watch: asyncio.Task[None] | None = None
        self._lag_bounds = list(self.metrics.lag.buckets)
        #: Tasks reading a body, with their deadlines; the housekeeping task cancels the late ones (cheaper than
        #: a timeout context per request).
        self._body_deadlines: dict[asyncio.Task[Any], float] = {}
        self._body_timed_out: set[asyncio.Task[Any]] = set()

    def cancel_late_bodies(self, now: float) -> None:
        """Called by the housekeeping task: cancels the body reads past their deadline (`_read_body` answers 408)."""
        for task, deadline in list(self._body_deadlines.items()):
            if now > deadline and task not in self._body_timed_out:
                self._body_timed_out.add(task)
                task.cancel()

    async def handle(self, route: IngestRoute, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        gateway = self.gateway
        gateway._recent_requests += 1
        admission = gateway.admission
        # The header phase is one native decision from the raw header list, before the body is read: readiness,
        # the device key, priority, utilization, the adaptive limit and the device's buckets (tidegate._native
        # Admission). A refusal is rendered natively and costs almost nothing: no header dict, no Problem.
        ticket, device_id, priority, refusal = admission.decide(
            scope["headers"], route.priority, gateway.in_flight_records
        )
        if refusal is not None:
            status, body, head = refusal
            try:
                await send({"type": "http.response.start", "status": status, "headers": head})
                await send({"type": "http.response.body", "body": body})
            finally:
                admission.done(ticket)
            elapsed = time.perf_counter() - started
            self.metrics.requests.inc((route.name, str(status)))
            self.metrics.latency.observe(elapsed, (route.name,))
            # Logged as successes are (sampled under load): a flood's refusals must not each cost a log line.
            if (
                gateway._request_rate < self.settings.log_full_below_rps
                or random.random() < self.settings.log_sample_rate
            ):
                self._log(route, Answer(status, body, head, content_type=None), elapsed)
            return
        headers = read_headers(scope["headers"])
        gateway.in_flight_requests += 1
        try:
            try:
                answer = await self.ingest(route, headers, receive, device_id, priority)
            except Problem as problem:
                answer = Answer(
                    problem.status,
                    problem.body(),
                    [(k.encode(), v.encode()) for k, v in problem.headers],
                    content_type=b"application/problem+json",
                )
            finally:
                gateway.in_flight_requests -= 1
            if answer.content_type is not None:
                answer.headers.append((b"content-type", answer.content_type))
                answer.headers.append((b"content-length", str(len(answer.body)).encode()))
            await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            admission.done(ticket)
        elapsed = time.perf_counter() - started
        self.metrics.requests.inc((route.name, str(answer.status)))
        self.metrics.latency.observe(elapsed, (route.name,))
        self._log(route, answer, elapsed)

    def _log(self, route: IngestRoute, answer: Answer, elapsed: float) -> None:
        sampled = (
            answer.status >= 400
            or self.gateway._request_rate < self.settings.log_full_below_rps
            or random.random() < self.settings.log_sample_rate
        )
        if sampled and log.isEnabledFor(logging.INFO):
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

    async def _read_body(self, headers: dict[bytes, str], receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        task = asyncio.current_task()
        assert task is not None
        self._body_deadlines[task] = time.monotonic() + self.settings.body_timeout_s
        try:
            while True:
                # The only await while the task is registered: a late body is cancelled right here.
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Problem(400, "disconnected", "the client went away before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if task not in self._body_timed_out:
                raise
            self._body_timed_out.discard(task)
            task.uncancel()
            raise Problem(
                408,
                "body-timeout",
                f"the body was not received within {self.settings.body_timeout_s:g} s",
                headers=[("Connection", "close")],
            ) from None
        finally:
            del self._body_deadlines[task]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def ingest(
        self, route: IngestRoute, headers: dict[bytes, str], receive: Receive, device_id: str | None, priority: str
    ) -> Answer:
        """An admitted request (`Admission.decide`: `device_id` is its key's device, None without auth): the
        remaining header checks, the body, then `ingest_body`."""
        ack = headers.get(b"x-ack", "spool").strip().lower()
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
        body = await self._read_body(headers, receive)
        return await self.ingest_body(route, body, headers, device_id, priority, dry_run=dry_run)

    async def ingest_body(
        self,
        route: IngestRoute,
        body: bytes,
        headers: dict[bytes, str],
        device_id: str | None,
        priority: str,
        *,
        dry_run: bool,
        source: Source = HTTP,
        device_from_source: bool = False,
    ) -> Answer:
        """The pipeline shared by HTTP and MQTT once a body is admitted: `accept` (one native call), then the
        answer once what it wrote is durable (`deliver`)."""
        accepted = self.accept(
            route,
            body,
            headers,
            device_id,
            priority,
            dry_run=dry_run,
            source=source,
            device_from_source=device_from_source,
        )
        return await self.deliver(accepted, kafka=headers.get(b"x-ack", "").strip().lower() == "kafka")

    def accept(
        self,
        route: IngestRoute,
        body: bytes,
        headers: dict[bytes, str],
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
            content_type=headers.get(b"content-type"),
            content_encoding=headers.get(b"content-encoding"),
            traceparent=headers.get(b"traceparent"),
            tracestate=headers.get(b"tracestate"),
            idempotency_key=headers.get(b"x-idempotency-key"),
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
        broker, within `kafka_ack_timeout_s`). A duplicate's answer waits for what was appended before it, and fails
        with it. Raises Problem (503) when the spool could not take it or its commit failed: its claims were
        released before any other request could run (`Gateway.settle`)."""
        if accepted.spool_full:
            self.gateway.spool_full = True
        end = accepted.durable_end
        answer = Answer(accepted.status, accepted.body, accepted.headers, content_type=None, native=accepted)
        if end is None:
            if accepted.status == 202:
                answer.headers.insert(0, (b"x-durability", b"none"))
            return answer
        writer = self.gateway.writer
        assert writer is not None
        records = accepted.records
        self.gateway.in_flight_records += records
        try:
            await writer.durable(end)
        except OSError:
            raise Problem(
                503,
                "spool-error",
                "the local spool cannot take more data right now",
                headers=[("Retry-After", "5")],
            ) from None
        finally:
            self.gateway.in_flight_records -= records
        if accepted.status == 202:
            durability = (
                b"kafka" if kafka and await self._wait_delivered(end, self.settings.kafka_ack_timeout_s) else b"spool"
            )
            answer.headers.insert(0, (b"x-durability", durability))
        return answer

    async def _wait_delivered(self, seq: int, timeout: float) -> bool:
        """True once the delivery process saw the broker acknowledge every record of this spool below `seq`
        (`X-Ack: kafka`); False after `timeout`. One task watches the published sequence for every waiter."""
        assert self.gateway.spool is not None
        if self.gateway.spool.delivered_seq >= seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (seq, future)
        self._delivered_waiters.append(waiter)
        if self._delivered_watch is None or self._delivered_watch.done():
            self._delivered_watch = asyncio.create_task(self._watch_delivered())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self.gateway.spool.delivered_seq >= seq
        finally:
            with contextlib.suppress(ValueError):
                self._delivered_waiters.remove(waiter)
        return True

    async def _watch_delivered(self) -> None:
        assert self.gateway.spool is not None
        while self._delivered_waiters:
            await asyncio.sleep(0.002)
            delivered = self.gateway.spool.delivered_seq
            for seq, future in self._delivered_waiters:
                if seq <= delivered and not future.done():
                    future.set_result(None)
