"""The Kafka forwarder: drains the spool to Kafka in order and checkpoints what the broker acknowledged.

One task reads a range of durable records from ``spool.acked_seq`` forward, groups them by topic and partition
(the partition of a keyed record is aiokafka's default one: murmur2 of the key modulo the topic's partition count;
unkeyed records are spread round-robin), packs each partition's records into ``create_batch()`` batches of at most
``max_batch_bytes`` and hands all of them to the producer at once (aiokafka puts every partition's next batch in
one produce request per broker). Every attempt runs under the forwarder's own deadline, as aiokafka has none of
its own for a broker that is down. Batches that failed are retried (only those) with exponential backoff and full
jitter, behind a circuit breaker. Only once every record of the range is acknowledged (acks=all) does the
spool's checkpoint move: ``spool.ack(next_seq)``. Delivery is at least once: a send cut off by the deadline may
still land later, and its records are sent again.

A record larger than ``max_record_bytes``, or one the broker refuses as too large, is skipped (counted in
``oversize_skipped`` and logged); a refused batch of several records is split first, so that only the record
that is too large on its own is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import (  # type: ignore[import-untyped,unused-ignore]
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped,unused-ignore]
from aiokafka.record.default_records import (  # type: ignore[import-untyped,unused-ignore]
    DefaultRecordBatchBuilder,
)

from tidegate._native import RecordBatch, Spool

__all__ = ["BreakerState", "Forwarder", "KafkaSettings", "partition_for_key"]

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]

#: (key, value, headers, timestamp_ms), as ``RecordBatch.records`` returns them.
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

_TOO_LARGE: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)
_MURMUR_CACHE_MAX = 65536
# Kafka record batch v2: a 61-byte header, and per record at most 21 bytes of varints around key, value, headers.
_BATCH_HEADER_BYTES = 61
_RECORD_OVERHEAD_BYTES = 21


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How the forwarder talks to Kafka. Durations in seconds unless the name says ``_ms``."""

    bootstrap: str
    client_id: str = "tidegate"
    #: aiokafka's own per-request timeout (also the time its accumulator keeps a batch it cannot deliver).
    request_timeout_ms: int = 10_000
    #: The forwarder's deadline around one attempt (all batches of a read range): past it, the attempt failed.
    send_deadline_s: float = 10.0
    #: Upper bound of one produce batch (one partition's share of a produce request).
    max_batch_bytes: int = 1 << 20
    #: A record whose encoded size exceeds this is never sent (Kafka's default ``message.max.bytes`` is ~1 MiB).
    max_record_bytes: int = 1 << 20
    read_max_records: int = 10_000
    read_max_bytes: int = 8 << 20
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    #: Consecutive failed attempts that open the breaker.
    breaker_failures: int = 5
    #: How long an open breaker waits before a probe (the next attempt, "half-open").
    breaker_cooldown_s: float = 5.0
    #: With nothing durable left to send, wait this long (or until ``notify()``) before reading again.
    linger_idle_s: float = 0.05
    #: Delete fully acknowledged segments past retention at most this often.
    cleanup_interval_s: float = 30.0
    compression_type: str | None = None
    #: Latencies of the last N successful attempts are kept in ``Forwarder.latencies_s``.
    latency_samples: int = 256
    #: Extra keyword arguments for ``AIOKafkaProducer`` (security settings and the like).
    producer_options: dict[str, Any] = field(default_factory=dict)


def partition_for_key(key: bytes, partitions: Sequence[int]) -> int:
    """aiokafka's (and the Java client's) default partition of a keyed record; `partitions` sorted by id."""
    index: int = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
    return partitions[index]


@dataclass(slots=True)
class _Chunk:
    """One produce batch of one partition in one attempt."""

    topic: str
    partition: int
    records: list[Record]
    ok: bool = False
    error: BaseException | None = None


class Forwarder:
    """Drains a spool to Kafka in order; see the module docstring.

    Counters and gauges are plain attributes: ``records_sent``, ``batches_sent``, ``send_failures`` (failed
    attempts), ``oversize_skipped``, ``last_send_latency_s``, ``latencies_s``, ``breaker_opens``, ``last_error``,
    ``lag_records`` and ``state`` (the breaker: "closed", "open" or "half-open"; readiness wants "closed").
    """

    def __init__(self, spool: Spool, settings: KafkaSettings) -> None:
        self.spool = spool
        self.settings = settings
        self.records_sent = 0
        self.batches_sent = 0
        self.send_failures = 0
        self.oversize_skipped = 0
        self.oversize_reasons: deque[str] = deque(maxlen=32)
        self.last_send_latency_s: float | None = None
        self.latencies_s: deque[float] = deque(maxlen=settings.latency_samples)
        self.breaker_opens = 0
        self.last_error: str | None = None
        self.ranges_acked = 0
        self.cleanups = 0
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._producer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._acked = spool.acked_seq
        self._round_robin = 0
        self._murmur: dict[bytes, int] = {}
        self._last_cleanup = time.monotonic()

    # ----------------------------------------------------------------------------------------------- public

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def lag_records(self) -> int:
        """Records in the spool that Kafka has not acknowledged yet (appended, durable or not)."""
        return max(0, self.spool.stats()["next_seq"] - self.spool.acked_seq)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Starts forwarding in the background. Never fails for want of a broker: it keeps retrying."""
        if self._task is not None:
            raise RuntimeError("forwarder already started")
        self._acked = self.spool.acked_seq
        self._task = asyncio.create_task(self._run(), name="tidegate-kafka-forwarder")

    def notify(self) -> None:
        """New durable records: read again now instead of after ``linger_idle_s``."""
        self._wake.set()

    async def wait_acked(self, seq: int, timeout: float) -> bool:
        """True once Kafka acknowledged every record below `seq` (``X-Ack: kafka``); False after `timeout`."""
        if self._acked >= seq:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._ack_waiters.append(entry)
        self._wake.set()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return self._acked >= seq
        finally:
            with contextlib.suppress(ValueError):
                self._ack_waiters.remove(entry)
        return True

    async def stop(self, deadline_s: float) -> bool:
        """Drains: keeps forwarding until everything in the spool is acknowledged or `deadline_s` passed, then
        stops. Returns whether the spool was fully acknowledged. Stop the spool writer first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, deadline_s)
        drained = False
        if self._task is not None and not self._task.done():
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.spool.commit)  # anything appended becomes readable
            while True:
                target = self.spool.stats()["next_seq"]
                remaining = end - loop.time()
                if self._acked >= target:
                    drained = True
                    break
                if remaining <= 0 or self._task.done():
                    break
                await self.wait_acked(target, remaining)
        else:
            drained = self.spool.acked_seq >= self.spool.stats()["next_seq"]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_producer(abandon=not drained, timeout=max(0.5, end - loop.time()))
        return drained

    def metrics(self) -> dict[str, Any]:
        """Counters and gauges in one dict (for /metrics and logs)."""
        return {
            "state": self._state,
            "records_sent": self.records_sent,
            "batches_sent": self.batches_sent,
            "send_failures": self.send_failures,
            "oversize_skipped": self.oversize_skipped,
            "breaker_opens": self.breaker_opens,
            "last_send_latency_s": self.last_send_latency_s,
            "acked_seq": self._acked,
            "lag_records": self.lag_records,
        }

    # ----------------------------------------------------------------------------------------------- loop

    async def _run(self) -> None:
        settings = self.settings
        prefetch: asyncio.Task[tuple[RecordBatch, int]] | None = None
        try:
            while True:
                try:
                    start = self._acked
                    if prefetch is not None and prefetch.get_name() == str(start):
                        batch, next_seq = await prefetch
                    else:
                        batch, next_seq = await self._read(start)
                    prefetch = None
                    if len(batch) == 0:
                        if next_seq > start:  # the records below were deleted from disk: nothing left to send
                            await self._checkpoint(next_seq)
                            continue
                        await self._idle()
                        continue
                    # Read the next range from disk (GIL released) while this one is on its way.
                    prefetch = asyncio.create_task(self._read(next_seq), name=str(next_seq))
                    await self._deliver(batch)
                    await self._checkpoint(next_seq)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a spool error or a bug: never die silently, never spin
                    log.exception("forwarder iteration failed")
                    self.last_error = f"{type(error).__name__}: {error}"
                    prefetch = None
                    await asyncio.sleep(settings.backoff_max_s)
        finally:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch

    async def _read(self, seq: int) -> tuple[RecordBatch, int]:
        settings = self.settings
        return await asyncio.to_thread(self.spool.read, seq, settings.read_max_records, settings.read_max_bytes, True)

    async def _idle(self) -> None:
        self._wake.clear()
        if time.monotonic() - self._last_cleanup >= self.settings.cleanup_interval_s:
            await self._cleanup()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.linger_idle_s)

    async def _checkpoint(self, next_seq: int) -> None:
        await asyncio.to_thread(self.spool.ack, next_seq)
        self._acked = next_seq
        self.ranges_acked += 1
        if self._ack_waiters:
            still = []
            for seq, future in self._ack_waiters:
                if seq <= next_seq:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((seq, future))
            self._ack_waiters = still
        if time.monotonic() - self._last_cleanup >= self.settings.cleanup_interval_s:
            await self._cleanup()

    async def _cleanup(self) -> None:
        self._last_cleanup = time.monotonic()
        try:
            self.cleanups += await asyncio.to_thread(self.spool.cleanup)
        except OSError as error:
            log.warning("spool cleanup failed: %s", error)

    # ----------------------------------------------------------------------------------------------- delivery

    async def _deliver(self, batch: RecordBatch) -> None:
        """Returns once every record of `batch` is acknowledged by Kafka (or skipped as too large)."""
        pending = {topic: batch.records(topic) for topic in batch.topics}
        cap = self.settings.max_batch_bytes
        failures = 0
        while pending:
            await self._breaker_gate()
            began = time.monotonic()
            error: BaseException | None = None
            refused = False
            try:
                producer = await self._ensure_producer()
                pending, refused, error = await self._attempt(producer, pending, cap)
            except Exception as exc:  # no producer, no metadata within the deadline
                error = exc
            if error is None:
                if not pending:
                    self._on_success(time.monotonic() - began)
                    return
                if refused:  # a batch refused as too large is no broker failure: split it and go again at once
                    cap = max(1, cap // 2)
                    continue
            failures += 1
            await self._on_failure(error, failures)

    async def _attempt(
        self, producer: Any, pending: dict[str, list[Record]], cap: int
    ) -> tuple[dict[str, list[Record]], bool, BaseException | None]:
        """One attempt under the deadline. Returns the records still to send, whether a batch was refused as too
        large (its records are still to send, unless it held one record: that one is skipped) and the first
        other error (None if there was none)."""
        deadline = self.settings.send_deadline_s
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        chunks = await asyncio.wait_for(self._plan(producer, pending, cap), deadline)
        by_tp: dict[tuple[str, int], list[_Chunk]] = {}
        for chunk in chunks:
            by_tp.setdefault((chunk.topic, chunk.partition), []).append(chunk)
        tasks = [asyncio.create_task(self._send_partition(producer, tp_chunks)) for tp_chunks in by_tp.values()]
        _, not_done = await asyncio.wait(tasks, timeout=max(0.0, end - loop.time()))
        for task in not_done:
            task.cancel()  # aiokafka keeps a batch it queued: it may still land, and be sent again (at least once)
        if not_done:
            await asyncio.gather(*not_done, return_exceptions=True)
        remaining: dict[str, list[Record]] = {}
        refused = False
        first_error: BaseException | None = None
        for chunk in chunks:
            if chunk.ok:
                self.records_sent += len(chunk.records)
                self.batches_sent += 1
                continue
            if isinstance(chunk.error, _TOO_LARGE):
                if len(chunk.records) == 1:
                    self._skip_oversize(chunk.topic, chunk.records[0], f"refused by the broker: {chunk.error!r}")
                    continue
                refused = True
            elif first_error is None:
                first_error = chunk.error or TimeoutError(f"not acknowledged within send_deadline_s={deadline}")
            remaining.setdefault(chunk.topic, []).extend(chunk.records)
        return remaining, refused, first_error

    async def _plan(self, producer: Any, pending: dict[str, list[Record]], cap: int) -> list[_Chunk]:
        """Assigns partitions (from current metadata) and cuts each partition's records into batches of at most
        `cap` bytes (estimated from above); order within a partition is kept."""
        chunks: list[_Chunk] = []
        size_of = DefaultRecordBatchBuilder.size_of
        # A record's size as a batch of its own (what the broker's message.max.bytes limits).
        record_limit = self.settings.max_record_bytes - _BATCH_HEADER_BYTES - _RECORD_OVERHEAD_BYTES
        for topic, records in pending.items():
            partitions = sorted(await producer.partitions_for(topic))
            if not partitions:
                raise KafkaError(f"no partitions known for topic {topic!r}")
            by_partition: dict[int, list[Record]] = {}
            count = len(partitions)
            oversize = False
            for record in records:
                key = record[0]
                if size_of(key, record[1], record[2]) > record_limit:
                    self._skip_oversize(topic, record, f"above max_record_bytes={self.settings.max_record_bytes}")
                    oversize = True
                    continue
                if key is None:
                    partition = partitions[self._round_robin % count]
                    self._round_robin += 1
                else:
                    hashed = self._murmur.get(key)
                    if hashed is None:
                        if len(self._murmur) >= _MURMUR_CACHE_MAX:
                            self._murmur.clear()
                        hashed = self._murmur[key] = murmur2(key) & 0x7FFFFFFF
                    partition = partitions[hashed % count]
                by_partition.setdefault(partition, []).append(record)
            for partition, part_records in by_partition.items():
                current: list[Record] = []
                size = _BATCH_HEADER_BYTES
                for record in part_records:
                    estimate = size_of(record[0], record[1], record[2]) + _RECORD_OVERHEAD_BYTES
                    if current and size + estimate > cap:
                        chunks.append(_Chunk(topic, partition, current))
                        current, size = [], _BATCH_HEADER_BYTES
                    current.append(record)
                    size += estimate
                if current:
                    chunks.append(_Chunk(topic, partition, current))
            if oversize:  # skipped once and for all: later attempts do not see them
                pending[topic] = [record for part in by_partition.values() for record in part]
        return chunks

    async def _send_partition(self, producer: Any, chunks: list[_Chunk]) -> None:
        """Queues one partition's batches in order (aiokafka holds one queued batch per partition and sends the
        next with the following produce request), then waits for their acknowledgements."""
        sent: list[tuple[_Chunk, asyncio.Future[Any]]] = []
        for chunk in chunks:
            try:
                builder = producer.create_batch()
                for key, value, headers, timestamp_ms in chunk.records:
                    if builder.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                        raise RuntimeError("batch estimate too low: a record did not fit")  # a bug, never seen
                future = await producer.send_batch(builder, chunk.topic, partition=chunk.partition)
            except Exception as error:
                chunk.error = error
                break
            sent.append((chunk, future))
        for chunk, future in sent:
            try:
                await future
            except Exception as error:
                chunk.error = error
            else:
                chunk.ok = True

    def _skip_oversize(self, topic: str, record: Record, reason: str) -> None:
        self.oversize_skipped += 1
        event_id = next((v.decode(errors="replace") for k, v in record[2] if k == "event_id"), None)
        message = f"{topic} event_id={event_id} key={record[0]!r}: {reason}"
        self.oversize_reasons.append(message)
        log.error("skipping a record too large for Kafka: %s", message)

    # ----------------------------------------------------------------------------------------------- breaker

    async def _breaker_gate(self) -> None:
        if self._state == "open":
            wait = self._opened_at + self.settings.breaker_cooldown_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._state = "half-open"
            log.info("kafka breaker half-open: probing")

    def _on_success(self, latency: float) -> None:
        self.last_send_latency_s = latency
        self.latencies_s.append(latency)
        self._consecutive_failures = 0
        if self._state != "closed":
            log.info("kafka breaker closed: broker acknowledging again")
        self._state = "closed"
        self.last_error = None

    async def _on_failure(self, error: BaseException | None, attempt: int) -> None:
        self.send_failures += 1
        self._consecutive_failures += 1
        self.last_error = f"{type(error).__name__}: {error}" if error is not None else "send failed"
        if self._state == "half-open" or self._consecutive_failures >= self.settings.breaker_failures:
            if self._state != "open":
                self.breaker_opens += 1
                log.warning(
                    "kafka breaker open after %d consecutive failures (last: %s)",
                    self._consecutive_failures,
                    self.last_error,
                )
                # Drop the producer: its queued batches would only come back as duplicates; the probe starts fresh.
                await self._drop_producer(abandon=True, timeout=1.0)
            self._state = "open"
            self._opened_at = time.monotonic()
            return
        log.warning("kafka send failed (attempt %d): %s", attempt, self.last_error)
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2 ** (attempt - 1)))
        await asyncio.sleep(random.uniform(0.0, ceiling))

    # ----------------------------------------------------------------------------------------------- producer

    async def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        settings = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=settings.client_id,
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=settings.request_timeout_ms,
            max_batch_size=settings.max_batch_bytes,
            max_request_size=max(settings.max_record_bytes, settings.max_batch_bytes) + 65536,
            compression_type=settings.compression_type,
            linger_ms=0,
            **settings.producer_options,
        )
        try:
            await asyncio.wait_for(producer.start(), settings.send_deadline_s)
        except BaseException:
            await self._close_producer(producer, abandon=True, timeout=1.0)
            raise
        self._producer = producer
        return producer

    async def _drop_producer(self, *, abandon: bool, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._close_producer(producer, abandon=abandon, timeout=timeout)

    @staticmethod
    async def _close_producer(producer: Any, *, abandon: bool, timeout: float) -> None:
        """``stop()`` waits for queued batches; with `abandon` they are failed first (they are still in the spool)."""
        if abandon:
            accumulator = getattr(producer, "_message_accumulator", None)
            fail_all = getattr(accumulator, "fail_all", None)
            if fail_all is not None:
                fail_all(KafkaError("abandoned by the tidegate forwarder"))
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except Exception as error:
            log.warning("kafka producer did not stop cleanly: %r", error)
