"""The HTTP service: a thin Starlette app whose ingest routes take a raw-ASGI fast path.

POSTs to the ingest routes never build a Starlette Request or Response: headers are read once from the scope,
admission (credentials, priority shedding, the device's rate) is decided before the body is read, the raw body
goes to the native validator, and the answer is written straight to ASGI. Everything else (health, metrics,
OpenAPI, capabilities, 404/405) is ordinary Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidegate._native import (
    Contract,
    DedupWindow,
    InvalidHeader,
    Issue,
    PayloadError,
    PayloadTooLarge,
    RateTable,
    RecordBatch,
    Spool,
    SpoolFull,
    UnsupportedFormat,
    ValidationResult,
    Validator,
)
from tidegate.admission import AdaptiveLimit, request_cost
from tidegate.auth import KeyStore, presented_key
from tidegate.config import PRIORITIES, Settings, load_settings
from tidegate.delivery.spool import SpoolWriter
from tidegate.delivery.status import DeliveryStatus
from tidegate.metrics import Metrics
from tidegate.openapi import capabilities, openapi_document
from tidegate.problems import Problem, issue_errors

log = logging.getLogger("tidegate")

Table = TypeVar("Table", DedupWindow, RateTable)

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
    name: str
    path: str
    validator: Validator
    priority: str
    kind: str
    """"telemetry", "batch" or "event"."""


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    device_id: str | None = None
    event_id: str | None = None
    records: int = 0
    content_type: bytes = b"application/json"
    rejected: list[Issue] = field(default_factory=list)
    """The records refused (the body names them for HTTP; MQTT dead-letters them)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def json_bytes(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def shared_or_own(path: Path, open_table: Callable[[Path | None], Table]) -> Table:
    """The table shared by the host's workers at `path`; if it cannot be opened (a disk too full to reserve it),
    one of this worker's own, in memory, as before there were shared tables: dedup and rates then hold per
    worker, and the dedup window is rebuilt from this worker's spool."""
    try:
        return open_table(path)
    except OSError as error:
        log.error(json.dumps({"event": "shared-table-unavailable", "path": str(path), "error": str(error)}))
        return open_table(None)


def claim_worker_dir(root: Path) -> tuple[Path, IO[str]]:
    """Each worker owns one spool directory: the first `w<N>` whose lock it can take. Never two writers."""
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        directory = root / f"w{index}"
        directory.mkdir(exist_ok=True)
        lock = (directory / "lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            index += 1
            continue
        lock.write(str(os.getpid()))
        lock.flush()
        return directory, lock


class Gateway:
    """The state of one worker: validators, spool, dedup window, admission, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        common: dict[str, Any] = {
            "max_body_bytes": settings.max_body_bytes,
            "max_past_seconds": settings.max_past_seconds,
            "max_future_seconds": settings.max_future_seconds,
            "dlq_topic": settings.kafka_topic_dead_letter,
            "max_record_bytes": settings.max_record_bytes,
        }
        telemetry_topic = settings.kafka_topic_telemetry
        self.routes = {
            route.path: route
            for route in (
                IngestRoute(
                    "ingest",
                    "/api/v1/ingest",
                    Validator(Contract.telemetry(), topic=telemetry_topic, **common),
                    settings.priority_ingest,
                    "telemetry",
                ),
                IngestRoute(
                    "batch",
                    "/api/v1/ingest/batch",
                    Validator(
                        Contract.batch(),
                        max_batch_readings=settings.max_batch_readings,
                        topic=telemetry_topic,
                        **common,
                    ),
                    settings.priority_batch,
                    "batch",
                ),
                IngestRoute(
                    "events",
                    "/api/v1/events",
                    Validator(Contract.event(), topic=settings.kafka_topic_events, **common),
                    settings.priority_events,
                    "event",
                ),
            )
        }
        self.keys = KeyStore(settings.keys_file) if settings.auth else None
        # Shared by every worker of the host (memory-mapped tables), so a retry that lands on another worker is
        # still a duplicate and a device's rate holds whichever worker it reaches; both survive restarts.
        state = settings.data_dir / "state"
        self.buckets = shared_or_own(
            state / "rate.tbl",
            functools.partial(
                RateTable,
                rate=settings.rate_per_device,
                burst=settings.burst_per_device,
                capacity=settings.rate_capacity,
            ),
        )
        self.dedup = shared_or_own(
            state / "dedup.tbl",
            functools.partial(
                DedupWindow,
                capacity=settings.dedup_capacity,
                ttl_seconds=settings.dedup_ttl_seconds,
                key_ttl_seconds=settings.dedup_key_ttl_seconds,
            ),
        )
        self.last_seen: dict[str, float] = {}
        self.spool: Spool | None = None
        self.writer: SpoolWriter | None = None
        self.admission = AdaptiveLimit(
            initial=settings.admission_initial_limit,
            minimum=settings.admission_min_limit,
            maximum=settings.admission_max_limit,
            tolerance=settings.admission_tolerance,
            shares={"high": 1.0, "medium": settings.admission_medium_share, "low": settings.admission_low_share},
        )
        #: 503 bodies rendered once: shedding must cost almost nothing.
        self._shed_bodies: dict[str, bytes] = {
            priority: Problem(
                503, "shed", f"overloaded: {priority} priority traffic is shed first; retry after Retry-After"
            ).body()
            for priority in PRIORITIES
        }
        self.delivery = DeliveryStatus(settings.data_dir)
        self._delivered_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._delivered_watch: asyncio.Task[None] | None = None
        self.ready = False
        self.shutting_down = False
        self.in_flight_requests = 0
        self.in_flight_records = 0
        self.spool_fill = 0.0
        self.spool_full = False
        """Set when an append hit the quota; cleared once the spool drains below 95 % of it."""
        self._lock_file: IO[str] | None = None
        self._lag_bounds = list(self.metrics.lag.buckets)
        #: Tasks reading a body, with their deadlines; the housekeeping task cancels the late ones (cheaper than
        #: a timeout context per request).
        self._body_deadlines: dict[asyncio.Task[Any], float] = {}
        self._body_timed_out: set[asyncio.Task[Any]] = set()
        self.loop_lag_s = 0.0
        self._recent_requests = 0
        self._next_spool_care = 0.0
        self._next_cleanup = 0.0
        self._rate_window_start = time.monotonic()
        self._request_rate = 0.0
        self.metrics.gauge("tidegate_utilization", "Admission utilization (0..1).", self.utilization)
        admission = self.admission
        self.metrics.gauge(
            "tidegate_admission_limit", "Adaptive concurrency limit (cost units).", lambda: admission.limit
        )
        for share in ("low", "medium"):
            self.metrics.gauge(
                f"tidegate_admission_limit_{share}",
                f"Part of the limit {share}-priority requests may fill.",
                functools.partial(admission.capacity, share),
            )
        self.metrics.gauge(
            "tidegate_admission_in_flight", "Cost of the requests in flight.", lambda: admission.in_flight
        )
        self.metrics.gauge(
            "tidegate_admission_slowdown",
            "Time in the app against the best seen for the same size of request (the limit shrinks above tolerance).",
            lambda: admission.slowdown,
        )
        self.metrics.gauge("tidegate_in_flight_records", "Records awaiting durability.", lambda: self.in_flight_records)
        self.metrics.gauge("tidegate_spool_bytes", "Bytes in the spool.", lambda: self._spool_stat("bytes"))
        self.metrics.gauge("tidegate_spool_fsyncs_total", "fsyncs of the spool.", lambda: self._spool_stat("fsyncs"))
        self.metrics.gauge(
            "tidegate_spool_failed_commits_total",
            "Spool commits whose write or fsync failed (their records were answered 503, never acknowledged).",
            lambda: self._spool_stat("failed_commits"),
        )
        self.metrics.gauge(
            "tidegate_spool_unreadable_records_total",
            "Records stepped over by readers (this worker's, and delivery's): torn by a failed write (never "
            "acknowledged) or damaged on disk.",
            lambda: self._spool_stat("unreadable_records") + self.delivery.total("unreadable_records"),
        )
        self.metrics.gauge(
            "tidegate_spool_failing", "1 while the spool cannot write (not ready).", lambda: float(self.spool_failing())
        )
        # Records spooled while no Kafka is configured count too: they are delivered once one is.
        self.metrics.gauge(
            "tidegate_spool_lag_records",
            "Records not yet acknowledged by Kafka.",
            lambda: self._spool_stat("lag_records"),
        )
        self.metrics.gauge("tidegate_active_devices", "Devices seen in the last 5 minutes.", self._active_devices)
        self.metrics.gauge(
            "tidegate_silent_devices",
            "Devices seen before but not for `silence_after_s` seconds.",
            self._silent_devices,
        )
        self.metrics.gauge("tidegate_event_loop_lag_seconds", "Smoothed event-loop lag.", lambda: self.loop_lag_s)
        self.metrics.gauge("tidegate_ready", "1 when ready to accept traffic.", lambda: float(self.is_ready()))
        # Delivery runs in its own process (one per data dir): these are its figures, for every worker spool.
        delivery = self.delivery
        self.metrics.gauge(
            "tidegate_delivery_up",
            "1 while the delivery process reports (Kafka configured).",
            lambda: float(delivery.alive),
        )
        for name, help_text in (
            ("records_sent", "Records acknowledged by Kafka."),
            ("send_failures", "Failed Kafka send attempts."),
            ("dead_lettered", "Records Kafka could not take, kept in the dead-letter file and announced."),
            ("checkpoint_failures", "Delivery checkpoints that could not be persisted (retried)."),
        ):
            self.metrics.gauge(f"tidegate_kafka_{name}", help_text, functools.partial(delivery.total, name))
        self.metrics.gauge(
            "tidegate_kafka_breaker_open",
            "1 while a Kafka circuit breaker is open.",
            lambda: float(delivery.get("breaker") == "open"),
        )
        self.metrics.gauge(
            "tidegate_kafka_reachable",
            "1 when the last check reached a Kafka broker.",
            lambda: float(delivery.get("kafka_reachable") is True),
        )
        self.metrics.gauge(
            "tidegate_kafka_topics_missing",
            "Configured topics the Kafka cluster does not have (delivery stalls until they exist).",
            lambda: float(len(delivery.get("kafka_topics_missing", []))),
        )
        self.metrics.gauge(
            "tidegate_kafka_last_send_latency_seconds",
            "Latency of the latest successful Kafka send.",
            lambda: float(delivery.get("last_send_latency_s") or 0.0),
        )

    # ----- state read by health and metrics

    def _spool_stat(self, name: str) -> float:
        return float(self.spool.stats()[name]) if self.spool is not None else 0.0

    def _silent_devices(self) -> float:
        cutoff = time.time() - self.settings.silence_after_s
        return float(sum(1 for seen in self.last_seen.values() if seen < cutoff))

    def _active_devices(self) -> float:
        cutoff = time.time() - 300
        return float(sum(1 for seen in self.last_seen.values() if seen >= cutoff))

    def utilization(self) -> float:
        spool = 1.0 if self.spool_full else self.spool_fill
        loop = self.loop_lag_s * 1000 / self.settings.shed_loop_lag_ms if self.settings.shed_loop_lag_ms > 0 else 0.0
        return max(self.in_flight_records / self.settings.max_in_flight_records, spool, loop)

    def spool_failing(self) -> bool:
        """The spool's last write or fsync failed (a full or failing disk) and it could not start anew yet."""
        return self.spool is not None and self.spool.failing

    def is_ready(self) -> bool:
        # By default Kafka being down does not make the service unready: the spool is the sink and absorbs traffic.
        kafka_ok = self.delivery.kafka_ok if self.settings.ready_requires_kafka else True
        return self.ready and not self.shutting_down and not self.spool_full and not self.spool_failing() and kafka_ok

    # ----- lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        directory, self._lock_file = claim_worker_dir(self.settings.spool_root)
        self.spool = Spool(
            directory,
            segment_bytes=self.settings.spool_segment_bytes,
            quota_bytes=self.settings.spool_quota_bytes,
            retention_seconds=self.settings.spool_retention_seconds,
        )
        self.writer = SpoolWriter(self.spool, commit_window_ms=self.settings.commit_window_ms)
        await self.writer.start()
        now = now_ms()
        # The shared table outlives restarts; only one started anew (missing or damaged) is filled from the spool.
        loaded = await asyncio.to_thread(
            self.dedup.load_spool, self.spool, now, now - int(self.settings.dedup_ttl_seconds * 1000)
        )
        housekeeping = asyncio.create_task(self._housekeeping())
        mqtt_source = None
        if self.settings.mqtt:
            from tidegate.mqtt import MqttSource  # noqa: PLC0415 - only workers with an MQTT broker need it

            mqtt_source = MqttSource(self, worker_index=int(directory.name.removeprefix("w")))
            await mqtt_source.start()
        self.ready = True
        log.info(
            json.dumps({"event": "started", "spool": str(directory), "dedup_ids": loaded, "kafka": self.settings.kafka})
        )
        try:
            yield
        finally:
            self.shutting_down = True
            deadline = time.monotonic() + self.settings.shutdown_deadline_s
            if mqtt_source is not None:
                await mqtt_source.stop(self.settings.shutdown_deadline_s)
            while self.in_flight_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            housekeeping.cancel()
            await self.writer.stop()  # what is committed now, the delivery process drains until its deadline
            self._lock_file.close()
            log.info(json.dumps({"event": "stopped", "spool": str(directory)}))

    async def _housekeeping(self) -> None:
        interval = 0.05
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            # How late the loop woke us: a queueing signal that rises under CPU overload before any record waits.
            lag = max(0.0, now - started - interval)
            self.loop_lag_s = 0.7 * self.loop_lag_s + 0.3 * lag
            for task, deadline in list(self._body_deadlines.items()):
                if now > deadline and task not in self._body_timed_out:
                    self._body_timed_out.add(task)
                    task.cancel()
            if self.spool is not None:
                stats = self.spool.stats()
                self.spool_fill = stats["bytes"] / max(1, stats["quota_bytes"])
                if self.spool_full and self.spool_fill < 0.95:
                    self.spool_full = False
                if now >= self._next_spool_care:
                    self._next_spool_care = now + 1.0
                    await self._care_for_spool()
            now = time.monotonic()
            elapsed = now - self._rate_window_start
            if elapsed >= 1.0:
                self._request_rate = self._recent_requests / elapsed
                self._recent_requests = 0
                self._rate_window_start = now

    async def _care_for_spool(self) -> None:
        """Off the request path, about once a second: reads the delivery process's status and checkpoint, deletes
        acknowledged segments past retention or under pressure (appends never remove files) and, after a failed
        write, tries to start a new segment, so the worker is ready again once the disk has room."""
        assert self.spool is not None
        spool = self.spool
        if self.settings.fault_injection:
            self._inject_faults()
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.settings.kafka:
            self.delivery.refresh(time.time())
            steps.append(("checkpoint", spool.refresh_acked))
        now = time.monotonic()
        if self.spool_full or self.spool_fill > 0.5 or now >= self._next_cleanup:
            self._next_cleanup = now + 30.0
            steps.append(("cleanup", spool.cleanup))
        if spool.failing:
            steps.append(("recover", spool.recover))
        for name, step in steps:
            try:
                outcome = await asyncio.to_thread(step)
            except OSError as error:
                log.warning(json.dumps({"event": "spool_care_failed", "step": name, "error": str(error)}))
                continue
            if name == "recover" and outcome:
                log.info(json.dumps({"event": "spool_recovered", "spool": str(spool.path)}))

    def _inject_faults(self) -> None:
        assert self.spool is not None
        trigger = self.settings.data_dir / "faults" / "spool-write-failures"
        with contextlib.suppress(FileNotFoundError):
            count = int(trigger.read_text().strip() or 0)
            trigger.unlink()  # one worker takes it
            self.spool.inject_write_failures(count)
            log.warning(json.dumps({"event": "fault_injected", "spool_write_failures": count}))

    # ----- the ingest fast path

    async def handle(self, route: IngestRoute, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self._recent_requests += 1
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in WANTED_HEADERS:
                text = value.decode("latin-1")
                # A header sent on several lines is one comma-separated list (RFC 9110, 5.3): W3C Trace Context
                # requires it for tracestate, and for a single-valued header the joined value is invalid.
                headers[name] = f"{headers[name]},{text}" if name in headers else text
        # The adaptive limit comes first, from the headers alone: under overload a refusal costs almost nothing.
        priority = headers.get(b"x-priority", route.priority).strip().lower()
        cost = request_cost(headers.get(b"content-length"), headers.get(b"content-encoding"))
        admitted = self.admission.try_acquire(priority, cost)
        if not admitted:
            self.metrics.shed.inc((priority if priority in PRIORITIES else "low",))
            answer = Answer(
                503,
                self._shed_bodies.get(priority, self._shed_bodies["low"]),
                [(b"retry-after", str(self.admission.retry_after()).encode())],
                content_type=b"application/problem+json",
            )
        else:
            self.in_flight_requests += 1
            try:
                answer = await self.ingest(route, headers, receive)
            except Problem as problem:
                answer = Answer(
                    problem.status,
                    problem.body(),
                    [(k.encode(), v.encode()) for k, v in problem.headers],
                    content_type=b"application/problem+json",
                )
            finally:
                self.in_flight_requests -= 1
        answer.headers.append((b"content-type", answer.content_type))
        answer.headers.append((b"content-length", str(len(answer.body)).encode()))
        try:
            await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            if admitted:
                self.admission.release(priority, cost, time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        self.metrics.requests.inc((route.name, str(answer.status)))
        self.metrics.latency.observe(elapsed, (route.name,))
        self._log(route, answer, elapsed)

    def _log(self, route: IngestRoute, answer: Answer, elapsed: float) -> None:
        sampled = (
            answer.status >= 400
            or self._request_rate < self.settings.log_full_below_rps
            or random.random() < self.settings.log_sample_rate
        )
        if sampled and log.isEnabledFor(logging.INFO):
            line = {
                "ts": round(time.time(), 3),
                "route": route.path,
                "status": answer.status,
                "device_id": answer.device_id,
                "event_id": answer.event_id,
                "records": answer.records,
                "ms": round(elapsed * 1000, 3),
            }
            log.info(json.dumps(line, separators=(",", ":")))

    def _admit(self, route: IngestRoute, headers: dict[bytes, str]) -> tuple[str | None, str]:
        """Credentials, priority shedding and the device's rate: all decided before the body is read."""
        if not self.is_ready():
            if self.spool_failing():
                raise Problem(
                    503,
                    "spool-error",
                    "the local spool cannot write right now (disk full or failing); nothing was acknowledged",
                    headers=[("Retry-After", "5")],
                )
            raise Problem(
                503,
                "not-ready",
                "the service is starting, draining or its spool is full",
                headers=[("Retry-After", "5")],
            )
        device_id: str | None = None
        if self.keys is not None:
            key = presented_key(
                headers.get(b"x-device-token"), headers.get(b"authorization"), headers.get(b"x-api-key")
            )
            if key is None:
                raise Problem(
                    401,
                    "missing-credential",
                    "send the device key as X-Device-Token, X-API-Key or Authorization: Bearer",
                    headers=[("WWW-Authenticate", 'Bearer realm="tidegate"')],
                )
            device_id = self.keys.device_for(key)
            if device_id is None:
                raise Problem(
                    401,
                    "invalid-credential",
                    "the device key is unknown or revoked",
                    headers=[("WWW-Authenticate", 'Bearer realm="tidegate", error="invalid_token"')],
                )
        priority = headers.get(b"x-priority", route.priority).strip().lower()
        if priority not in PRIORITIES:
            raise Problem(
                400,
                "invalid-priority",
                "X-Priority must be high, medium or low",
                [{"path": "header:X-Priority", "message": f"unknown priority {priority!r}"}],
            )
        utilization = self.utilization()
        if (utilization >= self.settings.shed_medium_at and priority != "high") or (
            utilization >= self.settings.shed_low_at and priority == "low"
        ):
            self.metrics.shed.inc((priority,))
            raise Problem(
                503,
                "shed",
                f"overloaded (utilization {utilization:.2f}); {priority} priority traffic is shed",
                headers=[("Retry-After", "1")],
            )
        if device_id is not None:
            wait = self.buckets.take(device_id, time.time_ns() // 1000)
            if wait > 0:
                self.metrics.rate_limited.inc()
                raise Problem(
                    429,
                    "rate-limited",
                    f"device {device_id} is over its rate of {self.settings.rate_per_device:g} requests/s",
                    headers=[("Retry-After", str(max(1, math.ceil(wait))))],
                )
        return device_id, priority

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

    def _validate(self, route: IngestRoute, body: bytes, headers: dict[bytes, str], priority: str) -> ValidationResult:
        try:
            return route.validator.validate(
                body,
                headers.get(b"content-type", "application/json"),
                headers.get(b"content-encoding"),
                priority=priority,
                traceparent=headers.get(b"traceparent"),
                tracestate=headers.get(b"tracestate"),
                idempotency_key=headers.get(b"x-idempotency-key"),
            )
        except InvalidHeader as error:
            raise Problem(
                400, "invalid-header", str(error), [{"path": f"header:{error.header}", "message": str(error)}]
            ) from None
        except PayloadTooLarge as error:
            raise Problem(413, "too-large", str(error)) from None
        except UnsupportedFormat as error:
            raise Problem(415, "unsupported-media-type", str(error)) from None
        except PayloadError as error:
            raise Problem(400, "malformed", str(error)) from None

    async def ingest(self, route: IngestRoute, headers: dict[bytes, str], receive: Receive) -> Answer:
        device_id, priority = self._admit(route, headers)
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
    ) -> Answer:
        """The pipeline shared by HTTP and MQTT once a body is admitted: validate, check the device, dedup, spool
        (durable when this returns; with `dry_run`, nothing is written), answer. `device_id` is the authenticated
        device (HTTP's key, MQTT's topic), which every telemetry record must name. Raises Problem for a body that
        cannot be taken as a whole."""
        result = self._validate(route, body, headers, priority)
        batch = result.batch
        if route.kind == "batch":
            devices = [result.device_id] if result.device_id is not None else []
        else:
            devices = batch.distinct_keys() if route.kind == "telemetry" else []
        if device_id is not None and route.kind != "event":
            foreign = [owner for owner in devices if owner != device_id]
            if foreign:
                raise Problem(
                    403,
                    "wrong-device",
                    f"the key belongs to {device_id}, not {foreign[0]}",
                    [{"path": "$.device_id", "message": f"must be {device_id}"}],
                )
        if result.accepted == 0:
            self.metrics.records.inc(("rejected", priority), result.total)
            raise Problem(400, "invalid", f"no record of {result.total} is valid", issue_errors(result.rejected))
        received = now_ms()
        durability = "spool"
        key_claims: list[tuple[str, str]] = []
        duplicates: set[str] = set()
        whole_duplicate = False
        idempotency_key = headers.get(b"x-idempotency-key")
        # Without auth the devices named in the body own the key.
        owner = device_id or result.device_id or ",".join(devices) or "-"
        # Scopes name the kind of key first and the device last (device ids hold no ':'): no two devices, and no
        # header key and batch_id, can share one.
        if idempotency_key:
            key_claims.append((f"header:{route.name}:{owner}", idempotency_key))
        if route.kind == "batch" and result.batch_id is not None:
            key_claims.append((f"batch_id:{result.device_id}", result.batch_id))
        if dry_run:
            whole_duplicate = any(self.dedup.contains_key(scope, key, received) for scope, key in key_claims)
            duplicates = {eid for eid in result.event_ids if eid is not None and self.dedup.contains(eid, received)}
        else:
            claimed = []
            for scope, key in key_claims:
                if self.dedup.claim_key(scope, key, received):
                    claimed.append((scope, key))
                else:
                    whole_duplicate = True
            if whole_duplicate:
                for scope, key in claimed:
                    self.dedup.release_key(scope, key)
                durability = await self._persist(RecordBatch(), [], headers)
            else:
                duplicates = set(self.dedup.claim_batch(batch, received))
                durability = await self._persist(batch, key_claims, headers)
        if whole_duplicate:
            duplicates = {eid for eid in result.event_ids if eid is not None}
        if dry_run:
            durability = "none"
        for device in devices:
            self.last_seen[device] = received / 1000
        answer = self._answer(
            route, result, duplicates=duplicates, durability=durability, dry_run=dry_run, priority=priority
        )
        answer.rejected = result.rejected
        return answer

    async def _persist(self, batch: RecordBatch, key_claims: list[tuple[str, str]], headers: dict[bytes, str]) -> str:
        """Makes the batch durable (spool, and Kafka when asked); its dedup claims are released if that fails, and
        committed once it is durable (from then on they are duplicates for the other workers too).

        A record answered `duplicate` may repeat one that is still on its way to disk, so an answer is given only
        once everything appended before it is durable too, and fails with it: an empty batch (every record a
        repeat) waits for that alone. The claims are released inside the failure, before any retry can run."""
        assert self.writer is not None

        def release() -> None:
            self.dedup.release_batch(batch)
            for scope, key in key_claims:
                self.dedup.release_key(scope, key)

        records = len(batch)
        self.in_flight_records += records
        try:
            end = await (self.writer.write(batch, release) if records else self.writer.settle(release))
        except (SpoolFull, OSError) as error:
            self.spool_full = self.spool_full or isinstance(error, SpoolFull)
            raise Problem(
                503,
                "spool-full" if isinstance(error, SpoolFull) else "spool-error",
                "the local spool cannot take more data right now",
                headers=[("Retry-After", "5")],
            ) from None
        finally:
            self.in_flight_records -= records
        if records or key_claims:
            self.dedup.commit(batch, key_claims)
        if headers.get(b"x-ack", "").strip().lower() == "kafka":
            return "kafka" if await self._wait_delivered(end, self.settings.kafka_ack_timeout_s) else "spool"
        return "spool"

    async def _wait_delivered(self, seq: int, timeout: float) -> bool:
        """True once the delivery process saw the broker acknowledge every record of this spool below `seq`
        (`X-Ack: kafka`); False after `timeout`. One task watches the published sequence for every waiter."""
        assert self.spool is not None
        if self.spool.delivered_seq >= seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (seq, future)
        self._delivered_waiters.append(waiter)
        if self._delivered_watch is None or self._delivered_watch.done():
            self._delivered_watch = asyncio.create_task(self._watch_delivered())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self.spool.delivered_seq >= seq
        finally:
            with contextlib.suppress(ValueError):
                self._delivered_waiters.remove(waiter)
        return True

    async def _watch_delivered(self) -> None:
        assert self.spool is not None
        while self._delivered_waiters:
            await asyncio.sleep(0.002)
            delivered = self.spool.delivered_seq
            for seq, future in self._delivered_waiters:
                if seq <= delivered and not future.done():
                    future.set_result(None)

    def _answer(
        self,
        route: IngestRoute,
        result: ValidationResult,
        *,
        duplicates: set[str],
        durability: str,
        dry_run: bool,
        priority: str,
    ) -> Answer:
        counts, total = result.lag_histogram(self._lag_bounds)
        self.metrics.lag.observe_counts(counts, total)
        rejected, warnings = result.rejected, result.warnings
        warnings_by_index: dict[int, list[str]] = {}
        for warning in warnings:
            if warning.index is not None:
                warnings_by_index.setdefault(warning.index, []).append(warning.message)
        response_headers = [(b"x-durability", durability.encode())]
        if warnings:
            response_headers.append((b"x-tidegate-flagged", b"true"))
        if route.kind == "batch":
            summary: dict[str, object] = {
                "status": "accepted",
                "batch_id": result.batch_id,
                "device_id": result.device_id,
                "readings_count": result.total,
                "accepted": result.accepted,
                "duplicates": 0,
                "rejected": 0,
                "results": [],
                "warnings": [{"index": i, "messages": m} for i, m in sorted(warnings_by_index.items())],
            }
            if (
                not duplicates
                and not rejected
                and not dry_run
                and result.batch.count(route.validator.topic) == result.accepted
            ):
                # Every reading accepted and nothing dropped as a repeat: no per-reading results to build.
                self.metrics.records.inc(("accepted", priority), result.accepted)
                return Answer(
                    202, json_bytes(summary), response_headers, records=result.total, device_id=result.device_id
                )
        event_ids = result.event_ids
        lags = result.ingest_lag_ms
        rejected_by_index: dict[int, list[dict[str, object]]] = {}
        for issue in rejected:
            if issue.index is not None:
                rejected_by_index.setdefault(issue.index, []).append({"path": issue.path, "message": issue.message})
        seen: set[str] = set()

        def status_of(eid: str | None) -> str:
            if eid is None:
                return "rejected"
            if eid in duplicates or eid in seen:
                return "duplicate"
            seen.add(eid)
            return "accepted"

        statuses = [status_of(eid) for eid in event_ids]
        for outcome in ("accepted", "duplicate", "rejected"):
            if count := statuses.count(outcome):
                # A dry run's records are counted apart: nothing of them was written.
                counted = "dry_run" if dry_run and outcome != "rejected" else outcome
                self.metrics.records.inc((counted, priority), count)
        document: dict[str, object]
        if route.kind == "telemetry" and not result.sequence:
            document = {
                "status": statuses[0],
                "event_id": event_ids[0],
                "ingest_lag_ms": lags[0],
                "warnings": warnings_by_index.get(0, []),
            }
        elif route.kind == "batch":
            document = summary | {
                "status": "duplicate" if all(s == "duplicate" for s in statuses if s != "rejected") else "accepted",
                "accepted": statuses.count("accepted"),
                "duplicates": statuses.count("duplicate"),
                "rejected": statuses.count("rejected"),
                "results": [
                    {"index": i, "status": s, "event_id": event_ids[i], "reason": rejected_by_index.get(i)}
                    if s == "rejected"
                    else {"index": i, "status": s, "event_id": event_ids[i]}
                    for i, s in enumerate(statuses)
                    if s != "accepted"
                ],
            }
        else:
            items = []
            for i, status in enumerate(statuses):
                item: dict[str, object] = {
                    "index": i,
                    "status": status.upper() if route.kind == "event" else status,
                    "event_id": event_ids[i],
                    "ingest_lag_ms": lags[i],
                }
                if status == "rejected":
                    item["errors"] = rejected_by_index.get(i, [])
                if i in warnings_by_index:
                    item["warnings"] = warnings_by_index[i]
                items.append(item)
            if not result.sequence:
                document = dict(items[0])
                del document["index"]
            else:
                document = {
                    "accepted": statuses.count("accepted"),
                    "duplicates": statuses.count("duplicate"),
                    "rejected": statuses.count("rejected"),
                    "results": items,
                }
        if dry_run:
            document["dry_run"] = True
        return Answer(
            202,
            json_bytes(document),
            response_headers,
            event_id=event_ids[0],
            records=result.total,
            device_id=result.device_id,
        )


def _problem_response(problem: Problem) -> Response:
    return Response(
        problem.body(), problem.status, headers=dict(problem.headers), media_type="application/problem+json"
    )


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return _problem_response(Problem(exc.status_code, slug, detail, headers=(exc.headers or {}).items()))


def create_app(settings: Settings | None = None) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
    """The ASGI application (Granian runs it with `--interface asgi`; use the factory form)."""
    settings = settings or load_settings()
    if not log.handlers:
        # Structured JSON lines on stderr, one per request at most (sampled under load).
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    gateway = Gateway(settings)

    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(_request: Request) -> Response:
        checks = {
            "started": gateway.ready,
            "not_draining": not gateway.shutting_down,
            "spool_has_room": not gateway.spool_full,
            "spool_writable": not gateway.spool_failing(),
            "kafka": "not configured",
            "dry_run": settings.dry_run,
        }
        if settings.kafka:
            delivery = gateway.delivery
            checks["kafka"] = delivery.get("breaker", "delivery process not running")
            checks["kafka_reachable"] = delivery.get("kafka_reachable")
            checks["kafka_topics_missing"] = delivery.get("kafka_topics_missing", [])
            checks["kafka_required"] = settings.ready_requires_kafka
        ok = gateway.is_ready()
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        return PlainTextResponse(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document(settings))

    async def caps(_request: Request) -> Response:
        return JSONResponse(capabilities(settings))

    async def silent(request: Request) -> Response:
        raw = request.query_params.get("for", "300")
        try:
            threshold = float(raw)
            if not math.isfinite(threshold) or threshold < 0:
                raise ValueError(raw)
        except ValueError:
            return _problem_response(
                Problem(
                    400,
                    "invalid-query",
                    "`for` must be a non-negative number of seconds",
                    [{"path": "query:for", "message": f"not a number of seconds: {raw!r}"}],
                )
            )
        now = time.time()
        devices = sorted(
            (
                {"device_id": d, "last_seen": round(seen, 3), "silent_for_s": round(now - seen, 3)}
                for d, seen in gateway.last_seen.items()
                if now - seen >= threshold
            ),
            key=lambda item: -float(item["silent_for_s"]),  # type: ignore[arg-type]
        )
        return JSONResponse({"threshold_s": threshold, "count": len(devices), "devices": devices})

    async def unreachable(_request: Request) -> Response:
        raise HTTPException(405)

    routes = [
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/v1/capabilities", caps, methods=["GET"]),
        Route("/api/v1/devices/silent", silent, methods=["GET"]),
        *(Route(path, unreachable, methods=["POST"]) for path in gateway.routes),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=gateway.lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    starlette.state.gateway = gateway
    fast_routes = gateway.routes

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = fast_routes.get(scope["path"])
            if route is not None:
                await gateway.handle(route, scope, receive, send)
                return
        await starlette(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    return app
