"""The ingest edge: POSTs to the ingest routes take a raw-ASGI fast path and never build a Starlette Request or
Response. Admission (readiness, credentials, priority shedding, the adaptive limit, the device's rate) is one native
decision from the raw header list, before the body is read; an admitted request's headers are read once, the raw
body goes to the native validator, dedup and the spool, and the answer is written straight to ASGI. MQTT shares
the pipeline from `IngestEdge.ingest_body` on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from tidegate._native import (
    InvalidHeader,
    Issue,
    PayloadError,
    PayloadTooLarge,
    QuarantineItem,
    RecordBatch,
    SpoolFull,
    UnsupportedFormat,
    ValidationResult,
    Validator,
)
from tidegate.archive import DUPLICATES_TOPIC, archive_keys, event_type_of
from tidegate.problems import Problem, issue_errors
from tidegate.quarantine import HTTP, QUARANTINED_HEADER, Source, whole_body

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
    device_id: str | None = None
    event_id: str | None = None
    records: int = 0
    content_type: bytes = b"application/json"
    rejected: list[Issue] = field(default_factory=list)
    """The records refused (the body names them; they are quarantined)."""


@dataclass(slots=True)
class Claimed:
    """A body `IngestEdge.claim` took: validated, its device checked, its records (and the quarantine records of
    the rejected ones) claimed in the dedup window. `batch` and `key_claims` are what `persist` makes durable
    (nothing for a body that repeats an idempotency key)."""

    route: IngestRoute
    result: ValidationResult
    batch: RecordBatch
    key_claims: list[tuple[str, str]]
    duplicates: set[str]
    whole_duplicate: bool
    quarantined: RecordBatch
    devices: list[str]
    received: int
    priority: str
    dry_run: bool
    occurrences: RecordBatch
    """Duplicate occurrences, spooled with `batch` for the archive (empty when it is off)."""
    source: str


class Refused(Exception):
    """`IngestEdge.claim` refused a body as a whole: `problem` is the answer, once `items` are quarantined
    (`IngestEdge.refuse`); `rejected_records` are counted then."""

    def __init__(
        self,
        problem: Problem,
        items: list[QuarantineItem],
        priority: str,
        source: Source,
        *,
        rejected_records: int = 0,
    ) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.items = items
        self.priority = priority
        self.source = source
        self.rejected_records = rejected_records


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def json_bytes(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


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
                self._log(route, Answer(status, body, head), elapsed)
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

    def _validate(
        self,
        route: IngestRoute,
        body: bytes,
        headers: dict[bytes, str],
        priority: str,
        device_id: str | None,
        *,
        device_from_source: bool = False,
        source: str,
        received: int,
    ) -> ValidationResult:
        """Validates the body and charges the device its decoded size (a compressed body that could not be
        decoded is charged the body limit: what decompressing it cost is not known here). With
        `device_from_source` a telemetry record that leaves device_id out is `device_id`'s; `source` (`http`,
        `mqtt`) is each record's `source` header and archive partition."""
        try:
            result = route.validator.validate(
                body,
                headers.get(b"content-type", "application/json"),
                headers.get(b"content-encoding"),
                received_at_ms=received,
                priority=priority,
                source=source,
                traceparent=headers.get(b"traceparent"),
                tracestate=headers.get(b"tracestate"),
                idempotency_key=headers.get(b"x-idempotency-key"),
                device_id=device_id if device_from_source else None,
            )
        except PayloadError as error:
            encoding = headers.get(b"content-encoding", "identity").strip().lower()
            self._charge_decoded(device_id, len(body) if encoding == "identity" else self.settings.max_body_bytes)
            if isinstance(error, InvalidHeader):
                raise Problem(
                    400, "invalid-header", str(error), [{"path": f"header:{error.header}", "message": str(error)}]
                ) from None
            if isinstance(error, PayloadTooLarge):
                raise Problem(413, "too-large", str(error)) from None
            if isinstance(error, UnsupportedFormat):
                raise Problem(415, "unsupported-media-type", str(error)) from None
            raise Problem(400, "malformed", str(error)) from None
        self._charge_decoded(device_id, result.decoded_bytes)
        return result

    def _charge_decoded(self, device_id: str | None, size: int) -> None:
        if device_id is not None:
            self.gateway.decoded_bytes.charge(device_id, time.time_ns() // 1000, float(size))

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
        """The pipeline shared by HTTP and MQTT once a body is admitted: validate, check the device, dedup, spool
        (durable when this returns; with `dry_run`, nothing is written), answer. `device_id` is the authenticated
        device (HTTP's key, MQTT's topic), which every telemetry record must name; with `device_from_source` (MQTT,
        whose topic is the device) a telemetry record that leaves device_id out is that device's. Raises Problem
        for a body that cannot be taken as a whole. What is refused is quarantined (`tidegate.quarantine`), durably,
        before the answer: the rejected records with the accepted ones, a body refused as a whole before the Problem.

        With the archive on, duplicate occurrences are spooled too, on `DUPLICATES_TOPIC` (the forwarder never
        sends it; the archive records them as `DUPLICATE`), and each record's answer carries its `archive_key`."""
        try:
            claimed = self.claim(
                route,
                body,
                headers,
                device_id,
                priority,
                dry_run=dry_run,
                source=source,
                device_from_source=device_from_source,
            )
        except Refused as refusal:
            raise await self.refuse(
                refusal, body=body, route=route, device_id=device_id, headers=headers, dry_run=dry_run
            ) from None
        durability = (
            "none" if dry_run else await self.persist(claimed.batch, claimed.key_claims, headers, claimed.occurrences)
        )
        return self.answer(claimed, durability)

    def claim(
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
    ) -> Claimed:
        """`ingest_body` up to the spool: validates, checks the device, builds the quarantine records of rejected
        ones and claims the records (and idempotency keys) in the dedup window. What it returns is for `persist`,
        then `answer`; several bodies' claims may share one `persist` (MQTT takes the messages of one read so).
        Raises Refused, with nothing claimed, for a body refused as a whole (`refuse` quarantines it)."""
        content_type = headers.get(b"content-type", "application/json")
        received = now_ms()
        try:
            result = self._validate(
                route,
                body,
                headers,
                priority,
                device_id,
                device_from_source=device_from_source,
                source=source.name,
                received=received,
            )
        except Problem as undecodable:
            # A bad header is refused before any record is looked at: nothing there to investigate.
            if undecodable.slug == "invalid-header" or (source.undecodable_retried and undecodable.slug == "malformed"):
                raise Refused(undecodable, [], priority, source) from None
            raise Refused(
                undecodable, [whole_body(body, undecodable, "decode", content_type)], priority, source
            ) from None
        dedup = self.gateway.dedup
        batch = result.batch
        if route.kind == "batch":
            devices = [result.device_id] if result.device_id is not None else []
        else:
            devices = batch.distinct_keys() if route.kind == "telemetry" else []
        if device_id is not None and route.kind != "event":
            foreign = [owner for owner in devices if owner != device_id]
            if foreign:
                wrong_device = Problem(
                    403,
                    "wrong-device",
                    f"the key belongs to {device_id}, not {foreign[0]}",
                    [{"path": "$.device_id", "message": f"must be {device_id}"}],
                )
                raise Refused(wrong_device, [whole_body(body, wrong_device, "auth", content_type)], priority, source)
        if result.accepted == 0:
            invalid = Problem(400, "invalid", f"no record of {result.total} is valid", issue_errors(result.rejected))
            raise Refused(invalid, result.quarantine, priority, source, rejected_records=result.total)
        quarantined = RecordBatch()
        if not dry_run and (items := result.quarantine):
            # Kept with the accepted records: durable with them, before the answer.
            quarantined = self.gateway.quarantine.records(
                items,
                body=body,
                source=source,
                device_id=device_id,
                schema=route.validator.contract.name,
                priority=priority,
                headers=headers,
                received_ms=received,
            )
            batch.extend(quarantined)
        archive = self.settings.archive
        occurrences = RecordBatch()  # the duplicate occurrences, for the archive
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
            whole_duplicate = any(dedup.contains_key(scope, key, received) for scope, key in key_claims)
            duplicates = {eid for eid in result.event_ids if eid is not None and dedup.contains(eid, received)}
        else:
            claimed = []
            for scope, key in key_claims:
                if dedup.claim_key(scope, key, received):
                    claimed.append((scope, key))
                else:
                    whole_duplicate = True
            if whole_duplicate:
                for scope, key in claimed:
                    dedup.release_key(scope, key)
                if archive:
                    occurrences = batch.moved_to(DUPLICATES_TOPIC)
                # Nothing to write: persisting the empty batch waits for what it repeats to be durable.
                batch, key_claims = RecordBatch(), []
            elif archive:
                duplicates = set(
                    dedup.claim_batch(batch, received, duplicates=occurrences, duplicates_topic=DUPLICATES_TOPIC)
                )
            else:
                duplicates = set(dedup.claim_batch(batch, received))
        if whole_duplicate:
            duplicates = {eid for eid in result.event_ids if eid is not None}
        return Claimed(
            route,
            result,
            batch,
            key_claims,
            duplicates,
            whole_duplicate,
            quarantined,
            devices,
            received,
            priority,
            dry_run,
            occurrences,
            source.name,
        )

    def answer(self, claimed: Claimed, durability: str) -> Answer:
        """The answer to a claimed body once `persist` made it durable (`durability`; "none" for a dry run)."""
        if not claimed.dry_run and claimed.devices:
            # Heard (a repeat too: the device is alive); a dry run changes nothing.
            self.gateway.devices.seen(claimed.devices, claimed.received)
        answer = self._answer(
            claimed.route,
            claimed.result,
            duplicates=claimed.duplicates,
            durability=durability,
            dry_run=claimed.dry_run,
            priority=claimed.priority,
            archived_as=(claimed.source, claimed.received) if self.settings.archive and not claimed.dry_run else None,
        )
        quarantined = claimed.quarantined
        if len(quarantined):
            if not claimed.whole_duplicate:
                self.gateway.quarantine.count(quarantined, claimed.duplicates)
            answer.headers.append((QUARANTINED_HEADER.lower().encode(), str(len(quarantined)).encode()))
        answer.rejected = claimed.result.rejected
        return answer

    async def refuse(
        self,
        refusal: Refused,
        *,
        body: bytes,
        route: IngestRoute,
        device_id: str | None,
        headers: dict[bytes, str],
        dry_run: bool,
    ) -> Problem:
        """Quarantines what a body `claim` refused leaves behind (not in a dry run) and returns the problem."""
        if refusal.rejected_records:
            self.metrics.records.inc(("rejected", refusal.priority), refusal.rejected_records)
        if not refusal.items or dry_run:
            return refusal.problem
        return await self.quarantine(
            refusal.problem,
            refusal.items,
            body=body,
            route=route,
            device_id=device_id,
            priority=refusal.priority,
            headers=headers,
            source=refusal.source,
        )

    async def quarantine(
        self,
        problem: Problem,
        items: list[QuarantineItem],
        *,
        body: bytes,
        route: IngestRoute | None,
        device_id: str | None,
        priority: str | None,
        headers: dict[bytes, str],
        source: Source,
    ) -> Problem:
        """Quarantines what a refusal (`problem`) leaves behind, durably, and returns the problem to answer, its
        `X-Tidegate-Quarantined` header saying how many items were kept. A spool that cannot take them is the
        503 any write would get: the client's retry is quarantined then."""
        received = now_ms()
        records = self.gateway.quarantine.records(
            items,
            body=body,
            source=source,
            device_id=device_id,
            schema=route.validator.contract.name if route is not None else None,
            priority=priority,
            headers=headers,
            received_ms=received,
        )
        if not len(records):
            return problem
        kept = len(records)
        duplicates = set(self.gateway.dedup.claim_batch(records, received))
        await self.persist(records, [], {})
        self.gateway.quarantine.count(records, duplicates)
        problem.headers.append((QUARANTINED_HEADER, str(kept)))
        return problem

    async def persist(
        self,
        batch: RecordBatch,
        key_claims: list[tuple[str, str]],
        headers: dict[bytes, str],
        occurrences: RecordBatch | None = None,
    ) -> str:
        """Makes the batch durable (spool, and Kafka when asked); its dedup claims are released if that fails, and
        committed once it is durable (from then on they are duplicates for the other workers too).

        `occurrences` (duplicate occurrences, for the archive) are appended in the same append as the batch (both or
        neither: a request answered 503 records no occurrence) and made durable with it; their ids are never
        claimed, released or committed here: they belong to records spooled before.

        A record answered `duplicate` may repeat one that is still on its way to disk, so an answer is given only
        once everything appended before it is durable too, and fails with it: an empty batch (every record a
        repeat) waits for that alone. The claims are released inside the failure, before any retry can run."""
        writer = self.gateway.writer
        assert writer is not None

        def release() -> None:
            self.gateway.dedup.release_batch(batch)
            for scope, key in key_claims:
                self.gateway.dedup.release_key(scope, key)

        records = len(batch)
        written = batch
        if occurrences is not None and len(occurrences):
            # Only on the duplicate path: one copy of the accepted records, so that one append holds both.
            written = RecordBatch()
            written.extend(batch)
            written.extend(occurrences)
        self.gateway.in_flight_records += records
        try:
            end = await (writer.write(written, release) if len(written) else writer.settle(release))
        except (SpoolFull, OSError) as error:
            self.gateway.spool_full = self.gateway.spool_full or isinstance(error, SpoolFull)
            raise Problem(
                503,
                "spool-full" if isinstance(error, SpoolFull) else "spool-error",
                "the local spool cannot take more data right now",
                headers=[("Retry-After", "5")],
            ) from None
        finally:
            self.gateway.in_flight_records -= records
        if records or key_claims:
            self.gateway.dedup.commit(batch, key_claims)
        if headers.get(b"x-ack", "").strip().lower() == "kafka":
            return "kafka" if await self._wait_delivered(end, self.settings.kafka_ack_timeout_s) else "spool"
        return "spool"

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

    def _answer(
        self,
        route: IngestRoute,
        result: ValidationResult,
        *,
        duplicates: set[str],
        durability: str,
        dry_run: bool,
        priority: str,
        archived_as: tuple[str, int] | None,
    ) -> Answer:
        """The answer's body. `archived_as` (the source and the reception time) adds each record's `archive_key`."""
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
        keys: list[str | None] = [None] * len(event_ids)
        if archived_as is not None:
            keys = archive_keys(archived_as[0], route.event_type, archived_as[1], lags, event_ids)
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
            if keys[0] is not None:
                document["archive_key"] = keys[0]
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
                    | ({"archive_key": keys[i]} if keys[i] is not None else {})
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
                if keys[i] is not None:
                    item["archive_key"] = keys[i]
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
