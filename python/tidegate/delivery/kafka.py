"""The Kafka forwarder: drains the spool to Kafka in order and checkpoints what the broker acknowledged.

The forwarder reads ranges of durable records from ``spool.acked_seq`` forward and delivers each range:

* Reading a range and encoding it is one native call (``read_kafka_range``, off the event loop): per topic and
  partition, runs of at most ``max_batch_bytes`` before compression (each run one Kafka v2 record batch,
  uncompressed ones byte-identical to what aiokafka's builder makes), compressed with ``compression_type`` (gzip,
  snappy, lz4, zstd: natively, the codec in the Kafka record batch attributes and the CRC set by the encoder). A
  keyed record goes where aiokafka's default partitioner would put it (murmur2 of the key modulo the topic's
  partition count, from the producer's metadata); unkeyed records are spread round-robin, continued from range to
  range. No Python object is made per record: the finished bytes go to ``producer.send_batch``
  (`EncodedKafkaBatch`).
* Every partition's runs are queued at once: aiokafka puts the next queued run of every partition of a broker
  into one produce request (acks=all). A range is encoded once; an attempt that fails sends the same runs again.
* Each attempt runs under the forwarder's own deadline (``send_deadline_s``), as aiokafka has none of its own for
  a broker that is down. Only the runs that failed are retried, with exponential backoff and full jitter,
  behind a circuit breaker: ``breaker_failures`` consecutive failed attempts open it; an open breaker waits
  ``breaker_cooldown_s`` and then lets one attempt through as a probe ("half-open"): success closes it, failure
  opens it again. Opening also replaces the producer (the old one stops in the background).
* Once every record of a range is acknowledged, and every range before it, ``spool.ack(next_seq)`` moves the
  checkpoint; ``spool.cleanup()`` runs every ``cleanup_interval_s``.

Up to ``pipeline_ranges`` ranges are under way at once: while one waits for the broker the next is read and encoded.
Their runs are queued in range order, so a partition receives its records in spool order as long as nothing
fails. Delivery is at least once: a send cut off by the deadline may still land, and its records are sent again.

Records on ``DUPLICATES_TOPIC`` (duplicate occurrences, spooled for the archive) are never sent: they are left out
of every run, and checkpointed with their range. Nothing else is ever skipped.

A record larger than ``max_record_bytes`` (encoded as a Kafka record batch of its own; the validator
refuses such records at the door, so this is a broker whose limit is lower than ours), or one the broker refuses as
too large, is dead-lettered: the whole record is appended (and fsynced) to a local dead-letter file
(``dead_letter_dir``, never deleted by tidegate), and a small notice with its key, headers, reason and the file's
path goes to the dead-letter topic; the range is checkpointed only once the notice is acknowledged. Counted in
``dead_lettered``, reasons in ``dead_letter_reasons``, logged. A refused run of several records is encoded again
by the same native encoder as runs of half its size (``KafkaRange.split``), again and again if need be, so only
a record that is too large on its own is dead-lettered.

The checkpoint follows the broker's acknowledgements in memory (``acked_seq``: ``X-Ack: kafka`` waiters are
released by it, and reading goes on from it); persisting it (``spool.ack``) may fail, a full disk say: that is
reported (``checkpoint_failures``, ``checkpoint_error``) and retried with the next range or on the next idle
tick, and never makes the forwarder read from an older position again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.errors import (  # type: ignore[import-untyped,unused-ignore]
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped,unused-ignore]

from tidegate._native import KafkaRange, Spool, read_kafka_range
from tidegate.archive import DUPLICATES_TOPIC
from tidegate.config import Settings

__all__ = ["BreakerState", "EncodedKafkaBatch", "Forwarder", "KafkaSettings", "kafka_settings", "producer_kwargs"]

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]

#: (key, value, headers, timestamp_ms), as ``Records.records`` returns them.
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

_TOO_LARGE: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How the forwarder talks to Kafka. Durations in seconds unless the name says ``_ms``."""

    bootstrap: str
    client_id: str = "tidegate"
    #: "all" (every in-sync replica has the record) or 1 (the partition leader has it). Never 0: the checkpoint
    #: moves on acknowledgements, so a producer that does not wait for one would lose records silently.
    acks: Literal["all", 1] = "all"
    #: aiokafka's own per-request timeout (also how long its accumulator keeps a Kafka record batch it cannot deliver).
    request_timeout_ms: int = 10_000
    #: The forwarder's deadline around one attempt (all runs of one read range).
    send_deadline_s: float = 10.0
    #: Upper bound of one run, a Kafka record batch (one partition's share of a produce request); aiokafka's
    #: ``max_batch_size``.
    max_batch_bytes: int = 1 << 20
    #: A record whose encoded size (as a Kafka record batch of its own) exceeds this is never sent; Kafka's default
    #: ``message.max.bytes`` is 1 MiB + 12 bytes. The validator refuses records above ``MAX_RECORD_BYTES``
    #: (1,000,000) by the same measure, so this must never be set below that: what was accepted fits.
    max_record_bytes: int = 1 << 20
    read_max_records: int = 10_000
    read_max_bytes: int = 4 << 20
    #: Ranges under way at once (read and packed while the previous one waits for the broker).
    pipeline_ranges: int = 2
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    #: Consecutive failed attempts that open the breaker.
    breaker_failures: int = 5
    #: How long an open breaker waits before it lets a probe through ("half-open").
    breaker_cooldown_s: float = 5.0
    #: With nothing durable left to send, wait this long (or until ``notify()``) before reading again.
    linger_idle_s: float = 0.05
    #: After new records are announced, wait this long for more before reading, so that ranges (and produce
    #: requests) are not one commit each: fewer, larger sends for a little latency (X-Ack: kafka included).
    linger_s: float = 0.005
    #: Delete fully acknowledged segments past retention at most this often.
    cleanup_interval_s: float = 30.0
    #: "gzip", "snappy", "lz4" or "zstd" (compressed natively), or None.
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    #: The latencies of the last N successful attempts are kept in ``Forwarder.latencies_s``.
    latency_samples: int = 256
    #: Where undeliverable records notices point to go, and where their whole record is kept.
    dlq_topic: str = "ingest-dlq"
    #: Directory of the local dead-letter files; None: ``dead-letter`` inside the spool's directory.
    dead_letter_dir: Path | None = None
    #: How every aiokafka client (the producer, the cluster check) connects: ``security_protocol``,
    #: ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``.
    connection_options: dict[str, Any] = field(default_factory=dict)
    #: Extra keyword arguments for ``AIOKafkaProducer`` only.
    producer_options: dict[str, Any] = field(default_factory=dict)


def kafka_settings(settings: Settings) -> KafkaSettings:
    """The forwarder's settings from the service's `kafka*` settings: the one place that turns one into the other,
    for every process that talks to Kafka. Raises ValueError naming the setting when the combination cannot work
    (checked when `tidegate serve` starts, before anything listens)."""
    if not settings.kafka:
        raise ValueError("kafka (the bootstrap servers) is not set")
    tls_files = (settings.kafka_tls_ca_file, settings.kafka_tls_cert_file, settings.kafka_tls_key_file)
    tls = settings.kafka_tls or any(path is not None for path in tls_files)
    sasl = settings.kafka_sasl_mechanism is not None
    options: dict[str, Any] = {
        "security_protocol": ("SASL_" if sasl else "") + ("SSL" if tls else "PLAINTEXT"),
    }
    if tls:
        if settings.kafka_tls_key_file is not None and settings.kafka_tls_cert_file is None:
            raise ValueError("kafka_tls_key_file is the key of a client certificate: set kafka_tls_cert_file too")
        for name in ("kafka_tls_ca_file", "kafka_tls_cert_file", "kafka_tls_key_file"):
            path = getattr(settings, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        try:
            context = create_ssl_context(
                cafile=settings.kafka_tls_ca_file,
                certfile=settings.kafka_tls_cert_file,
                keyfile=settings.kafka_tls_key_file,
            )
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"the Kafka TLS files cannot be loaded: {error}") from None
        context.check_hostname = settings.kafka_tls_check_hostname
        options["ssl_context"] = context
    if sasl:
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise ValueError(
                f"kafka_sasl_mechanism={settings.kafka_sasl_mechanism} needs kafka_sasl_username and "
                "kafka_sasl_password (TOML or TIDEGATE_KAFKA_SASL_PASSWORD)"
            )
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    compression = None if settings.kafka_compression == "none" else settings.kafka_compression
    return KafkaSettings(
        bootstrap=settings.kafka,
        acks="all" if settings.kafka_acks == "all" else 1,
        compression_type=compression,
        linger_s=settings.kafka_linger_ms / 1000,
        max_batch_bytes=settings.kafka_max_request_bytes,
        max_record_bytes=settings.max_record_bytes,
        dlq_topic=settings.kafka_topic_dead_letter,
        dead_letter_dir=settings.data_dir / "dead-letter",
        connection_options=options,
    )


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """The keyword arguments of the forwarder's ``AIOKafkaProducer``."""
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "acks": settings.acks,
        "enable_idempotence": False,
        "request_timeout_ms": settings.request_timeout_ms,
        "max_batch_size": settings.max_batch_bytes,
        "max_request_size": max(settings.max_record_bytes, settings.max_batch_bytes) + 65536,
        # Not `compression_type`: the forwarder's runs are compressed natively (see `EncodedKafkaBatch`); the producer
        # builds only the small dead-letter notices itself, and would need cramjam for snappy, lz4 and zstd.
        "linger_ms": 0,
        **settings.connection_options,
        **settings.producer_options,
    }


def _cancelling() -> bool:
    """Whether the current task is being cancelled: aiokafka lets CancelledErrors of its own internal tasks
    escape (when a broker vanishes, say), and those must count as failures, not stop the forwarder."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a late outcome as seen (no "exception was never retrieved" at garbage collection)."""
    if not future.cancelled():
        future.exception()


class EncodedKafkaBatch:
    """A finished Kafka record batch (one of `KafkaRange.runs`), handed to aiokafka's public
    ``producer.send_batch(batch, topic, partition=...)`` in place of the `BatchBuilder` that
    ``producer.create_batch()`` returns.

    aiokafka has no public way to send bytes that are already encoded, so this relies on the private part of
    `BatchBuilder` that its accumulator calls (``MessageAccumulator.add_batch`` wraps the builder in a
    ``MessageBatch``, which calls ``record_count()``, ``closed()``, ``_build()`` when the sender drains it, and
    ``append()`` when ``send()`` targets the same partition while this Kafka record batch is queued; ``close()`` when a
    transaction commits, ``_set_producer_state`` with idempotence only). aiokafka is therefore pinned to the minor
    versions that were checked (pyproject.toml), and tests/test_kafka_batches.py checks this surface against the
    installed aiokafka's source, and sends through a real broker.
    """

    __slots__ = ("_buffer", "_count")

    def __init__(self, buffer: bytes, count: int) -> None:
        self._buffer = buffer
        self._count = count

    def record_count(self) -> int:
        return self._count

    def size(self) -> int:
        return len(self._buffer)

    def closed(self) -> bool:
        return True

    def close(self) -> None:
        """Already closed: the Kafka record batch was built natively."""

    def append(self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Any = ()) -> None:
        """Full: ``producer.send`` to this partition waits until this Kafka record batch is drained and starts a new
        one."""
        return None

    def _build(self) -> bytes:
        return self._buffer

    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        raise NotImplementedError(
            "natively encoded Kafka record batches carry no producer id: idempotence is not supported"
        )


@dataclass(slots=True)
class _Chunk:
    """One encoded run of one partition, and its outcome in the latest attempt."""

    #: The range it belongs to: its records are the positions ``start:end`` there.
    encoded: KafkaRange
    topic: str
    partition: int
    #: The Kafka v2 record batch as sent (compressed when ``compression_type`` is set and that made it smaller).
    data: bytes
    count: int
    start: int
    end: int
    future: asyncio.Future[Any] | None = None
    ok: bool = False
    error: BaseException | None = None


class Forwarder:
    """Drains a spool to Kafka in order; see the module docstring.

    Counters and gauges are plain attributes: ``records_sent``, ``batches_sent`` (Kafka record batches),
    ``send_failures`` (failed attempts), ``dead_lettered``, ``checkpoint_failures``, ``checkpoint_error``,
    ``last_send_latency_s``, ``latencies_s`` (recent attempts), ``breaker_opens``, ``last_error``, ``lag_records``
    and ``state`` (the breaker: "closed", "open" or "half-open"; readiness wants "closed"). ``metrics()`` returns
    them in one dict.
    """

    def __init__(self, spool: Spool, settings: KafkaSettings) -> None:
        self.spool = spool
        self.settings = settings
        self.records_sent = 0
        self.batches_sent = 0
        self.send_failures = 0
        self.dead_lettered = 0
        self.dead_letter_reasons: deque[str] = deque(maxlen=32)
        self.checkpoint_failures = 0
        self.checkpoint_error: str | None = None
        self._persisted = spool.acked_seq
        self._unreadable_reported = 0
        self.last_send_latency_s: float | None = None
        self.latencies_s: deque[float] = deque(maxlen=settings.latency_samples)
        #: Called with each successful attempt's latency (the service feeds its histogram with it).
        self.on_latency: Callable[[float], None] | None = None
        self.breaker_opens = 0
        self.last_error: str | None = None
        self.ranges_acked = 0
        self._state: BreakerState = "closed"
        #: (time.monotonic(), new state) of the breaker's recent transitions.
        self.state_changes: deque[tuple[float, BreakerState]] = deque(maxlen=64)
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._submit_lock = asyncio.Lock()
        #: Ranges queue their runs in read order: `_deliver` takes a ticket, and the first attempt of the range
        #: with ticket N queues once every range before it has queued (its encoding may take longer than theirs).
        self._tickets = 0
        self._queue_turn = 0
        self._turn_passed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._acked = spool.acked_seq
        self._round_robin = 0
        #: Partition ids per topic, from the producer's metadata (the encoder partitions with their counts).
        self._partition_ids: dict[str, list[int]] = {}
        self._last_cleanup = time.monotonic()
        self._cleaning: asyncio.Future[int] | None = None

    # ------------------------------------------------------------------------------------------------ public

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
        """Starts forwarding in the background. Never fails for want of a broker: it keeps trying."""
        if self._task is not None:
            raise RuntimeError("forwarder already started")
        self._acked = self._persisted = self.spool.acked_seq
        # What the checkpoint holds is delivered: published at once, or a spool that gets no new records (one no
        # worker writes any more) would say less for good, and `X-Ack: kafka` answers that look at it would wait.
        self._publish_delivered(self._acked)
        self._task = asyncio.create_task(self._run(), name="tidegate-kafka-forwarder")

    def notify(self) -> None:
        """New durable records: read again now rather than after ``linger_idle_s``."""
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
        """Drains, then stops: keeps forwarding until everything in the spool is acknowledged or `deadline_s`
        passed. Returns whether the spool was fully acknowledged. Stop the spool writer first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, deadline_s)
        if self._task is not None and not self._task.done():
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.spool.commit)  # whatever was appended becomes readable
            while True:
                target = self.spool.stats()["next_seq"]
                remaining = end - loop.time()
                if self._acked >= target or remaining <= 0 or self._task.done():
                    break
                await self.wait_acked(target, remaining)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._cleaning is not None:
            await asyncio.gather(self._cleaning, return_exceptions=True)
        if self._persisted < self._acked:
            await self._persist_checkpoint()
        drained = self.spool.acked_seq >= self.spool.stats()["next_seq"]
        # With the broker down, Kafka record batches aiokafka still holds keep it from stopping until they expire.
        await self._drop_producer(timeout=max(1.0, end - loop.time()))
        return drained

    def metrics(self) -> dict[str, Any]:
        """Counters and gauges in one dict (for /metrics, readiness and logs)."""
        return {
            "state": self._state,
            "records_sent": self.records_sent,
            "batches_sent": self.batches_sent,
            "send_failures": self.send_failures,
            "dead_lettered": self.dead_lettered,
            "unreadable_records": self.spool.stats()["unreadable_records"],
            "checkpoint_failures": self.checkpoint_failures,
            "checkpoint_error": self.checkpoint_error,
            "breaker_opens": self.breaker_opens,
            "last_send_latency_s": self.last_send_latency_s,
            "acked_seq": self._acked,
            "lag_records": self.lag_records,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        depth = max(1, self.settings.pipeline_ranges)
        inflight: deque[tuple[asyncio.Task[None], int]] = deque()  # (delivery of a range, its next_seq)
        read_seq = self._acked
        try:
            while True:
                try:
                    while len(inflight) < depth:
                        kafka_range, next_seq = await self._read(read_seq)
                        if len(kafka_range) == 0 and next_seq <= read_seq:
                            break
                        inflight.append((asyncio.create_task(self._deliver(kafka_range)), next_seq))
                        read_seq = next_seq
                    if not inflight:
                        await self._idle()
                        continue
                    head = inflight[0][0]
                    if len(inflight) < depth:  # room for more: also wake up for new records
                        self._wake.clear()
                        woken = asyncio.ensure_future(self._wake.wait())
                        try:
                            await asyncio.wait(
                                [head, woken], timeout=self.settings.linger_idle_s, return_when=asyncio.FIRST_COMPLETED
                            )
                        finally:
                            woken.cancel()
                        if woken.done() and not head.done() and self.settings.linger_s > 0:
                            await asyncio.sleep(self.settings.linger_s)
                    else:
                        await asyncio.wait([head])
                    while inflight and inflight[0][0].done():
                        task, next_seq = inflight.popleft()
                        if task.cancelled():
                            raise RuntimeError("a range's delivery was cancelled")
                        task.result()  # a bug surfaces here
                        await self._checkpoint(next_seq)
                except asyncio.CancelledError:
                    if _cancelling():
                        raise
                    log.error("kafka forwarder: stray CancelledError from aiokafka, going on")
                    await self._cancel_all(inflight)
                    read_seq = self._acked
                except Exception as error:  # a spool error or a bug: never die silently, never spin
                    log.exception("kafka forwarder iteration failed")
                    self.last_error = f"{type(error).__name__}: {error}"
                    await self._cancel_all(inflight)
                    read_seq = self._acked
                    await asyncio.sleep(self.settings.backoff_max_s)
        finally:
            await self._cancel_all(inflight)

    @staticmethod
    async def _cancel_all(inflight: deque[tuple[asyncio.Task[None], int]]) -> None:
        tasks = [task for task, _ in inflight]
        inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, seq: int) -> tuple[KafkaRange, int]:
        """Reads the durable records from `seq` and encodes them, in one native call (off the event loop); the
        partition counts are the latest known (`_encode` encodes again if they changed, or a topic was new)."""
        settings = self.settings
        encoded, next_seq = await asyncio.to_thread(
            read_kafka_range,
            self.spool,
            seq,
            {topic: len(ids) for topic, ids in self._partition_ids.items()},
            max_records=settings.read_max_records,
            max_bytes=settings.read_max_bytes,
            compression=settings.compression_type,
            max_batch_bytes=settings.max_batch_bytes,
            max_record_bytes=settings.max_record_bytes,
            round_robin_start=self._round_robin,
        )
        # Unkeyed records: round robin, continued from range to range.
        self._round_robin = (self._round_robin + len(encoded)) & 0xFFFFFFFF
        return encoded, next_seq

    async def _idle(self) -> None:
        self._wake.clear()
        unreadable = self.spool.stats()["unreadable_records"]
        if unreadable > self._unreadable_reported:
            log.error(
                "kafka forwarder: %d records of %s could not be read (torn by a failed write, never acknowledged, "
                "or damaged on disk) and were stepped over",
                unreadable - self._unreadable_reported,
                self.spool.path,
            )
            self._unreadable_reported = unreadable
        if self._persisted < self._acked:
            await self._persist_checkpoint()
        if time.monotonic() - self._last_cleanup >= self.settings.cleanup_interval_s:
            await self._cleanup()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.linger_idle_s)
            if self.settings.linger_s > 0:
                await asyncio.sleep(self.settings.linger_s)

    def _publish_delivered(self, seq: int) -> None:
        """Tells the spool's writers (and other workers' `X-Ack: kafka` answers) that everything below `seq` is
        acknowledged."""
        try:
            self.spool.publish_delivered(seq)
        except OSError as error:  # only delays X-Ack: kafka answers; the checkpoint is what counts
            log.warning("kafka forwarder: cannot publish the delivered sequence: %s", error)

    async def _checkpoint(self, next_seq: int) -> None:
        """Everything below `next_seq` is acknowledged by the broker: publish it (the writer's `X-Ack: kafka`
        waiters), release local waiters, then persist the checkpoint."""
        self._acked = next_seq
        self._publish_delivered(next_seq)
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
        await self._persist_checkpoint()
        if time.monotonic() - self._last_cleanup >= self.settings.cleanup_interval_s:
            await self._cleanup()

    async def _persist_checkpoint(self) -> None:
        target = self._acked
        try:
            await asyncio.to_thread(self.spool.ack, target)
        except OSError as error:
            # The previous checkpoint stays in force (a restart redelivers from it: at least once); reading goes on
            # from the broker's acknowledgements, and the next range or idle tick tries again.
            self.checkpoint_failures += 1
            if self.checkpoint_error is None:
                log.error("kafka forwarder: cannot persist the checkpoint %d: %s (retrying)", target, error)
            self.checkpoint_error = str(error)
            return
        self._persisted = max(self._persisted, target)
        if self.checkpoint_error is not None:
            log.info("kafka forwarder: checkpoint persisted again (%d)", target)
            self.checkpoint_error = None

    async def _cleanup(self) -> None:
        self._last_cleanup = time.monotonic()
        # Shielded: a cleanup thread cannot be stopped, so `stop()` waits for it rather than leave it running.
        self._cleaning = asyncio.ensure_future(asyncio.to_thread(self.spool.cleanup))
        try:
            await asyncio.shield(self._cleaning)
        except OSError as error:
            log.warning("spool cleanup failed: %s", error)

    # ------------------------------------------------------------------------------------------------ delivery

    async def _deliver(self, kafka_range: KafkaRange) -> None:
        """Returns once every record of `kafka_range` is acknowledged by Kafka (or dead-lettered)."""
        if len(kafka_range) == 0:
            return
        # Before any await: delivery tasks start in the order `_run` made them, which is read order.
        ticket = self._tickets
        self._tickets += 1
        try:
            await self._deliver_range(kafka_range, ticket)
        finally:
            self._pass_turn(ticket)  # also when cancelled before its first attempt

    async def _deliver_range(self, kafka_range: KafkaRange, ticket: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.settings.send_deadline_s
        pending: list[_Chunk] | None = None  # encoded once, by the first attempt that has the partition counts
        notices: list[Record] = []  # dead-letter notices of this range not yet acknowledged
        failures = 0
        while True:
            await self._breaker_gate()
            began = time.monotonic()
            error: BaseException | None = None
            refused = False
            try:
                producer = await self._ensure_producer()
                end = loop.time() + deadline
                if pending is None:
                    pending = await asyncio.wait_for(self._encode(producer, kafka_range, notices), deadline)
                first, ticket = ticket, None  # only the first attempt waits for its turn
                pending, refused, error = await self._attempt(producer, pending, end, notices, first)
                if error is None and not pending and notices:
                    await asyncio.wait_for(self._send_notices(producer, notices), max(0.0, end - loop.time()))
            except (Exception, asyncio.CancelledError) as exc:  # no producer, no metadata within the deadline
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise
                error = exc
            if error is None and pending is not None:
                if not pending:
                    self._on_success(time.monotonic() - began)
                    return
                if refused:  # a run refused as too large is no broker failure: it was split, go again at once
                    continue
            failures += 1
            await self._on_failure(error, failures)

    async def _encode(self, producer: Any, kafka_range: KafkaRange, notices: list[Record]) -> list[_Chunk]:
        """The runs of `kafka_range`, encoded again (natively, off the event loop) if the current metadata
        has other partition counts than it was encoded with. Records above ``max_record_bytes`` are dead-lettered
        here, once (their notices added to `notices`): a range is encoded only once."""
        counts: dict[str, int] = {}
        for topic in kafka_range.records.topics:
            if topic == DUPLICATES_TOPIC:
                continue  # duplicate occurrences are spooled for the archive only: left out of every run
            ids = sorted(await producer.partitions_for(topic))
            if not ids:
                raise KafkaError(f"no partitions known for topic {topic!r}")
            self._partition_ids[topic] = ids
            counts[topic] = len(ids)
        encoded_with = kafka_range.partitions
        missing = [topic for topic in kafka_range.missing_topics if topic != DUPLICATES_TOPIC]
        if missing or any(encoded_with.get(topic) != count for topic, count in counts.items()):
            kafka_range = await asyncio.to_thread(kafka_range.encode_again, counts)
        limit = self.settings.max_record_bytes
        for topic, position in kafka_range.oversize:
            notices.append(self._dead_letter(topic, kafka_range.record(position), f"above max_record_bytes={limit}"))
        return [
            _Chunk(kafka_range, topic, self._partition_ids[topic][partition], data, count, start, end)
            for topic, partition, data, count, start, end in kafka_range.runs
        ]

    async def _attempt(
        self, producer: Any, pending: list[_Chunk], end: float, notices: list[Record], ticket: int | None
    ) -> tuple[list[_Chunk], bool, BaseException | None]:
        """One attempt, until the loop time `end`. Returns the runs still to send, whether a run was refused
        as too large (it is split in the runs still to send, unless it held one record: that one is
        dead-lettered, its notice added to `notices`) and the first other error (None if there was none)."""
        loop = asyncio.get_running_loop()
        for chunk in pending:
            chunk.future, chunk.ok, chunk.error = None, False, None
        # Past the deadline aiokafka keeps what it queued: it may still land, and be sent again (at least once).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._send(producer, pending, ticket), max(0.0, end - loop.time()))
        remaining: list[_Chunk] = []
        refused = False
        first_error: BaseException | None = None
        for chunk in pending:
            if chunk.ok:
                self.records_sent += chunk.count
                self.batches_sent += 1
                continue
            if isinstance(chunk.error, _TOO_LARGE):
                if chunk.count == 1:
                    record = chunk.encoded.record(chunk.start)
                    notices.append(self._dead_letter(chunk.topic, record, f"refused by the broker: {chunk.error!r}"))
                    continue
                refused = True
                # The same records encoded again by the same encoder, as runs of half the size.
                halves = await asyncio.to_thread(chunk.encoded.split, chunk.start, chunk.end)
                remaining.extend(
                    _Chunk(chunk.encoded, chunk.topic, chunk.partition, data, count, start, end)
                    for data, count, start, end in halves
                )
                continue
            if first_error is None:
                deadline = self.settings.send_deadline_s
                first_error = chunk.error or TimeoutError(f"not acknowledged within send_deadline_s={deadline}")
            remaining.append(chunk)
        return remaining, refused, first_error

    async def _send(self, producer: Any, chunks: list[_Chunk], ticket: int | None) -> None:
        """Queues every run (ranges one after another, in read order with their `ticket`, so partitions get them
        in spool order), then waits for the acknowledgements; outcomes are left in the chunks, also when cancelled
        by the deadline."""
        by_partition: dict[tuple[str, int], list[_Chunk]] = {}
        for chunk in chunks:
            by_partition.setdefault((chunk.topic, chunk.partition), []).append(chunk)
        try:
            try:
                if ticket is not None:
                    await self._wait_turn(ticket)
                async with self._submit_lock:
                    queued = [asyncio.create_task(self._queue(producer, part)) for part in by_partition.values()]
                    try:
                        await asyncio.gather(*queued)
                    finally:
                        for task in queued:
                            task.cancel()
                        await asyncio.gather(*queued, return_exceptions=True)
            finally:
                if ticket is not None:
                    self._pass_turn(ticket)
            futures = [chunk.future for chunk in chunks if chunk.future is not None]
            if futures:
                await asyncio.wait(futures)
        finally:
            for chunk in chunks:
                future = chunk.future
                if future is None:
                    continue  # never queued: its error is set
                if not future.done():
                    # Cut off by the deadline (the caller reports a timeout); aiokafka may still deliver the run.
                    # Not cancelled: a cancelled shield would leave aiokafka's own future's exception unretrieved.
                    future.add_done_callback(_retrieve)
                    continue
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    chunk.ok = True
                else:
                    chunk.error = error

    async def _wait_turn(self, ticket: int) -> None:
        while self._queue_turn < ticket:
            self._turn_passed.clear()  # set() already woke every waiter; each checks its turn again
            await self._turn_passed.wait()

    def _pass_turn(self, ticket: int) -> None:
        if self._queue_turn <= ticket:
            self._queue_turn = ticket + 1
            self._turn_passed.set()

    @staticmethod
    async def _queue(producer: Any, chunks: list[_Chunk]) -> None:
        """Queues one partition's runs in order: aiokafka holds one queued Kafka record batch per partition, and sends
        the next one with the following produce request."""
        for index, chunk in enumerate(chunks):
            try:
                chunk.future = await producer.send_batch(
                    EncodedKafkaBatch(chunk.data, chunk.count), chunk.topic, partition=chunk.partition
                )
            except Exception as error:
                for unsent in chunks[index:]:
                    unsent.error = error
                return

    def _dead_letter(self, topic: str, record: Record, reason: str) -> Record:
        """Keeps a record Kafka cannot take: the whole of it in the local dead-letter file (appended and fsynced;
        rare, so inline), and returns the notice for the dead-letter topic (key, headers, reason, where it is)."""
        key, value, headers, timestamp_ms = record
        event_id = next((v.decode(errors="replace") for name, v in headers if name == "event_id"), None)
        directory = self.settings.dead_letter_dir or Path(self.spool.path) / "dead-letter"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{topic}.ndjson"
        kept = {
            "topic": topic,
            "event_id": event_id,
            "reason": reason,
            "timestamp_ms": timestamp_ms,
            "key": None if key is None else base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(),
            "headers": [[name, base64.b64encode(v).decode()] for name, v in headers],
        }
        with path.open("ab") as file:
            file.write(json.dumps(kept, separators=(",", ":")).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        self.dead_lettered += 1
        message = f"{topic} event_id={event_id} key={key!r} value={len(value)} bytes: {reason}; kept in {path}"
        self.dead_letter_reasons.append(message)
        log.error("a record Kafka cannot take was dead-lettered: %s", message)
        notice = {
            "event_id": event_id,
            "topic": topic,
            "reason": reason,
            "value_bytes": len(value),
            "dead_letter_file": str(path),
        }
        notice_headers = [*headers, ("dlq-reason", b"undeliverable"), ("dlq-detail", reason.encode()[:512])]
        return key, json.dumps(notice, separators=(",", ":")).encode(), notice_headers, timestamp_ms

    async def _send_notices(self, producer: Any, notices: list[Record]) -> None:
        """Sends the dead-letter notices of a range (removing each once the broker acknowledged it)."""
        while notices:
            key, value, headers, timestamp_ms = notices[0]
            await producer.send_and_wait(
                self.settings.dlq_topic, value=value, key=key, headers=headers, timestamp_ms=timestamp_ms
            )
            notices.pop(0)

    # ------------------------------------------------------------------------------------------------ breaker

    def _set_state(self, state: BreakerState) -> None:
        self._state = state
        self.state_changes.append((time.monotonic(), state))

    async def _breaker_gate(self) -> None:
        if self._state == "open":
            wait = self._opened_at + self.settings.breaker_cooldown_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._state == "open":
                self._set_state("half-open")
                log.info("kafka breaker half-open: probing")

    def _on_success(self, latency: float) -> None:
        self.last_send_latency_s = latency
        self.latencies_s.append(latency)
        if self.on_latency is not None:
            self.on_latency(latency)
        self._consecutive_failures = 0
        if self._state != "closed":
            log.info("kafka breaker closed: the broker acknowledges again")
            self._set_state("closed")
        self.last_error = None

    async def _on_failure(self, error: BaseException | None, attempt: int) -> None:
        self.send_failures += 1
        self._consecutive_failures += 1
        self.last_error = f"{type(error).__name__}: {error}" if error is not None else "send failed"
        if self._state == "half-open" or self._consecutive_failures >= self.settings.breaker_failures:
            if self._state != "open":
                self.breaker_opens += 1
                log.warning(
                    "kafka breaker open after %d consecutive failed attempts (last: %s)",
                    self._consecutive_failures,
                    self.last_error,
                )
                self._set_state("open")
                self._opened_at = time.monotonic()
                # The probe starts with a fresh producer (in case this one is what broke).
                self._retire_producer()
            return
        log.warning("kafka send failed (attempt %d): %s", attempt, self.last_error)
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2 ** (attempt - 1)))
        await asyncio.sleep(random.uniform(0.0, ceiling))

    # ------------------------------------------------------------------------------------------------ producer

    async def _ensure_producer(self) -> Any:
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            settings = self.settings
            producer = AIOKafkaProducer(**producer_kwargs(settings))
            try:
                await asyncio.wait_for(producer.start(), settings.send_deadline_s)
            except BaseException:
                await self._close_producer(producer, 1.0)
                raise
            self._producer = producer
            return producer

    def _retire_producer(self) -> None:
        """Replaces the producer (the next attempt starts a fresh one) and stops the old one in the background:
        its ``stop()`` returns once its queued Kafka record batches are delivered or expired
        (``request_timeout_ms``)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            task = asyncio.create_task(self._close_producer(producer, self.settings.request_timeout_ms / 1000 + 5))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _drop_producer(self, *, timeout: float) -> None:
        producer, self._producer = self._producer, None
        closing = [asyncio.create_task(self._close_producer(producer, timeout))] if producer is not None else []
        closing.extend(self._retiring)
        if not closing:
            return
        _, late = await asyncio.wait(closing, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)

    @staticmethod
    async def _close_producer(producer: Any, timeout: float) -> None:
        """``stop()`` waits until every Kafka record batch it holds is delivered or expired (``request_timeout_ms``)."""
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except (Exception, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError) and _cancelling():
                raise
            log.warning("kafka producer did not stop cleanly: %r", error)
