"""Delivery: the spool drained to a real Kafka-protocol broker (tansu) by the Forwarder.

Every test talks to a real broker (``tidegate.testing.broker``). tansu keeps its data in memory, so a restart
loses everything it held: the restart test consumes continuously and checks the union of what it saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tidegate
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped,unused-ignore]
from tidegate.delivery.kafka import Forwarder, KafkaSettings
from tidegate.delivery.spool import SpoolWriter, open_writer
from tidegate.testing.broker import Broker, Collector, consume_all

from tests.conftest import wait_until

TELEMETRY = "telemetry-raw"
DLQ = "ingest-dlq"
EVENTS = "events-raw"
PARTITIONS = {TELEMETRY: 3, DLQ: 2, EVENTS: 3}
CHILD = Path(__file__).with_name("spool_writer_proc.py")

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]


def partition_for_key(key: bytes, partitions: list[int]) -> int:
    """aiokafka's (and the Java client's) default partition of a keyed record: the reference the forwarder's
    native partitioning is held to."""
    index: int = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
    return partitions[index]


# ------------------------------------------------------------------------------------------------------ data


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


_BASE_MS = int(time.time() * 1000) - 3_600_000  # an hour ago: inside the validator's window for the whole run


def telemetry_body(
    start: int, count: int, *, devices: int = 7, flagged_every: int = 0, big: frozenset[int] = frozenset()
) -> bytes:
    """A JSON array of `count` distinct readings numbered from `start`. Every `flagged_every`-th has an out-of-range
    humidity (accepted, and copied to the DLQ); readings whose number is in `big` carry a 1000-byte note."""
    lines: list[dict[str, Any]] = []
    for i in range(start, start + count):
        humidity = 150.0 if flagged_every and i % flagged_every == 0 else 40.0 + i % 50
        reading: dict[str, Any] = {
            "device_id": f"device-{i % devices:03d}",
            "timestamp": _iso(_BASE_MS + i),
            "metrics": {"temperature": 20.0 + (i % 100) / 10, "humidity": humidity},
            "metadata": {"firmware_version": "2.1.0", "battery_level": 85},
        }
        if i in big:
            reading["metadata"]["note"] = "x" * 1000
        lines.append(reading)
    return json.dumps(lines).encode()


def event_body(start: int, count: int) -> bytes:
    return json.dumps(
        [
            {
                "source": "test",
                "event_type": "heartbeat",
                "entity_id": f"user-{i % 5}",
                "event_time": _iso(_BASE_MS + i),
                "payload": {"n": i},
            }
            for i in range(start, start + count)
        ]
    ).encode()


def spool_records(spool: tidegate.Spool, topic: str) -> list[Record]:
    """Every record of `topic` in the spool, in spool order."""
    out: list[Record] = []
    seq = 0
    while True:
        records, seq = spool.read(seq, 5000, 16 << 20, durable_only=False)
        if len(records) == 0:
            return out
        out.extend(records.records(topic) if topic in records.topics else [])


def spool_event_ids(spool: tidegate.Spool) -> list[str]:
    """The event ids of every record in the spool, in sequence order (single-topic spools: index = sequence)."""
    ids: list[str] = []
    seq = 0
    while True:
        records, seq = spool.read(seq, 5000, 16 << 20, durable_only=False)
        if len(records) == 0:
            return ids
        ids.extend(records.event_ids())


def header(record: Any, name: str) -> bytes:
    return dict(record.headers)[name]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        for topic, partitions in PARTITIONS.items():
            running.create_topics([topic], partitions=partitions)
        yield running


@pytest.fixture
def settings(broker: Broker) -> KafkaSettings:
    """Short deadlines, backoffs and cool-downs so that outages play out in seconds."""
    return KafkaSettings(
        broker.bootstrap,
        request_timeout_ms=3000,
        send_deadline_s=1.0,
        backoff_base_s=0.05,
        backoff_max_s=0.3,
        breaker_failures=3,
        breaker_cooldown_s=0.4,
        linger_idle_s=0.01,
        read_max_records=500,
    )


@pytest.fixture(scope="module")
def telemetry_validator() -> tidegate.Validator:
    return tidegate.Validator(tidegate.Contract.telemetry())


@pytest.fixture(scope="module")
def event_validator() -> tidegate.Validator:
    return tidegate.Validator(tidegate.Contract.event())


# ------------------------------------------------------------------------------------------------------ delivery


def test_forwarder_delivers_every_record_intact(
    tmp_path: Path,
    broker: Broker,
    settings: KafkaSettings,
    telemetry_validator: tidegate.Validator,
    event_validator: tidegate.Validator,
) -> None:
    """Exact counts per topic; keys, values and headers byte for byte; the event_id header is the value's
    event_id; the partition is aiokafka's default one for the key; per key, Kafka order is spool order."""

    async def scenario() -> None:
        spool = tidegate.Spool(tmp_path / "spool")
        forwarder = Forwarder(spool, settings)
        async with open_writer(spool) as writer:
            for k in range(3):  # some records before the forwarder starts, most while it runs
                await writer.write(telemetry_validator.validate(telemetry_body(k * 100, 100, flagged_every=9)).records)
            await forwarder.start()
            for k in range(3, 12):
                await writer.write(telemetry_validator.validate(telemetry_body(k * 100, 100, flagged_every=9)).records)
                await writer.write(event_validator.validate(event_body(k * 40, 40)).records)
                forwarder.notify()
            end = spool.stats()["next_seq"]
        assert await forwarder.wait_acked(end, 30), forwarder.metrics()
        await wait_until(lambda: spool.acked_seq == end, "the checkpoint persisted")
        assert await forwarder.stop(5)

        expected = {topic: spool_records(spool, topic) for topic in PARTITIONS}
        assert [len(expected[t]) for t in (TELEMETRY, DLQ, EVENTS)] == [1200, 134, 360]
        for topic, records in expected.items():
            consumed = await consume_all(broker.bootstrap, topic, timeout=15)
            assert len(consumed) == len(records), topic  # exactly: no loss, no duplicate
            got = Counter((r.key, r.value, tuple(r.headers)) for r in consumed)
            assert got == Counter((k, v, tuple(h)) for k, v, h, _ in records), topic
            partitions = list(range(PARTITIONS[topic]))
            for r in consumed:
                assert header(r, "event_id").decode() == json.loads(r.value)["event_id"]
                assert r.partition == partition_for_key(r.key, partitions)
            for key in {k for k, _, _, _ in records}:  # consume_all returns (partition, offset) order
                assert [r.value for r in consumed if r.key == key] == [v for k, v, _, _ in records if k == key]
            assert {r.timestamp for r in consumed} == {ts for _, _, _, ts in records}

        assert forwarder.records_sent == sum(len(r) for r in expected.values())
        assert forwarder.send_failures == 0 and forwarder.dead_lettered == 0
        assert forwarder.state == "closed" and forwarder.lag_records == 0
        assert forwarder.batches_sent >= len(PARTITIONS) and forwarder.last_send_latency_s is not None

    asyncio.run(scenario())


def test_records_kafka_cannot_take_are_dead_lettered_never_skipped(
    tmp_path: Path, broker: Broker, settings: KafkaSettings, telemetry_validator: tidegate.Validator
) -> None:
    """A record too large for Kafka (here: a limit below ours) is kept whole in the local dead-letter file and
    announced on the dead-letter topic with its reason before its range is checkpointed; its neighbours arrive."""
    big = frozenset({3, 17, 18})

    async def scenario() -> None:
        spool = tidegate.Spool(tmp_path / "spool")
        result = telemetry_validator.validate(telemetry_body(0, 30, big=big))
        big_ids = {result.event_ids[i] for i in big}
        big_values = {result.event_ids[i]: v for i, v in enumerate(result.records.values(TELEMETRY)) if i in big}
        spool.append(result.records)
        end = spool.commit()
        forwarder = Forwarder(spool, KafkaSettings(**{**_fields(settings), "max_record_bytes": 900}))
        await forwarder.start()
        assert await forwarder.wait_acked(end, 15)
        assert await forwarder.stop(5)
        assert forwarder.dead_lettered == len(big)
        assert forwarder.send_failures == 0 and forwarder.state == "closed"
        consumed = await consume_all(broker.bootstrap, TELEMETRY, timeout=10)
        assert len(consumed) == 30 - len(big)
        assert not big_ids & {header(r, "event_id").decode() for r in consumed}
        notices = await consume_all(broker.bootstrap, DLQ, timeout=10)
        assert {header(r, "event_id").decode() for r in notices} == big_ids
        for notice in notices:
            assert header(notice, "dlq-reason") == b"undeliverable"
            assert json.loads(notice.value)["reason"] == "above max_record_bytes=900"
        kept = [json.loads(line) for line in (tmp_path / "spool" / "dead-letter" / f"{TELEMETRY}.ndjson").open()]
        assert {k["event_id"]: base64.b64decode(k["value"]) for k in kept} == big_values

    asyncio.run(scenario())


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_arrive_intact(
    tmp_path: Path, broker: Broker, settings: KafkaSettings, telemetry_validator: tidegate.Validator, codec: str
) -> None:
    """With compression, the natively compressed Kafka record batches (several per partition: a small cap) are taken by
    the broker and read back intact by aiokafka's consumer, in spool order per key."""

    async def scenario() -> None:
        spool = tidegate.Spool(tmp_path / "spool")
        for k in range(4):
            spool.append(telemetry_validator.validate(telemetry_body(k * 200, 200)).records)
        end = spool.commit()
        compressed = {**_fields(settings), "compression_type": codec, "max_batch_bytes": 16_384}
        forwarder = Forwarder(spool, KafkaSettings(**compressed))
        await forwarder.start()
        assert await forwarder.wait_acked(end, 15), forwarder.metrics()
        assert await forwarder.stop(5)
        records = spool_records(spool, TELEMETRY)
        consumed = await consume_all(broker.bootstrap, TELEMETRY, expected=len(records), timeout=10)
        got = Counter((r.key, r.value, tuple(r.headers)) for r in consumed)
        assert got == Counter((k, v, tuple(h)) for k, v, h, _ in records)
        for key in {k for k, _, _, _ in records}:
            assert [r.value for r in consumed if r.key == key] == [v for k, v, _, _ in records if k == key]
        assert forwarder.batches_sent > 3 * PARTITIONS[TELEMETRY] and forwarder.send_failures == 0

    asyncio.run(scenario())


def test_a_checkpoint_that_cannot_be_written_is_retried_never_a_redelivery_from_zero(
    tmp_path: Path, broker: Broker, settings: KafkaSettings, telemetry_validator: tidegate.Validator
) -> None:
    """The checkpoint write fails (as on a full disk): the forwarder goes on from the broker's acknowledgements,
    reports the failure, and persists the checkpoint once it can; nothing is sent twice."""

    async def scenario() -> None:
        spool = tidegate.Spool(tmp_path / "spool")
        (tmp_path / "spool" / "acked.tmp").mkdir()  # the checkpoint's temporary file cannot be created
        forwarder = Forwarder(spool, settings)
        await forwarder.start()
        async with open_writer(spool) as writer:
            for k in range(6):
                await writer.write(telemetry_validator.validate(telemetry_body(k * 200, 200)).records)
                forwarder.notify()
        end = spool.stats()["next_seq"]
        assert await forwarder.wait_acked(end, 30), forwarder.metrics()
        # Idle ticks retry the checkpoint, and fail again.
        await wait_until(lambda: forwarder.checkpoint_failures > 1, "the checkpoint retried")
        assert forwarder.checkpoint_error is not None
        assert spool.acked_seq == 0, "the persisted checkpoint never moved"
        assert forwarder.records_sent == end, "no range was sent again"
        (tmp_path / "spool" / "acked.tmp").rmdir()  # space is back
        await wait_until(lambda: spool.acked_seq == end, "the checkpoint persisted")
        assert forwarder.checkpoint_error is None
        assert await forwarder.stop(5)
        consumed = await consume_all(broker.bootstrap, TELEMETRY, timeout=10)
        assert len(consumed) == end

    asyncio.run(scenario())


def _fields(settings: KafkaSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in KafkaSettings.__dataclass_fields__}


def test_records_spooled_without_kafka_are_delivered_later(
    tmp_path: Path, broker: Broker, settings: KafkaSettings, telemetry_validator: tidegate.Validator
) -> None:
    """Spool first (no Kafka configured, process "restarted"), forwarder later: all of it arrives, once, the
    checkpoint survives a reopen, and acknowledged segments are cleaned up."""
    path = tmp_path / "spool"

    async def spool_only() -> list[str]:
        spool = tidegate.Spool(path, segment_bytes=64 * 1024)
        ids: list[str] = []
        async with open_writer(spool) as writer:
            for k in range(8):
                records = telemetry_validator.validate(telemetry_body(k * 250, 250)).records
                ids.extend(records.event_ids())
                await writer.write(records)
        return ids

    ids = asyncio.run(spool_only())

    async def forward() -> None:
        spool = tidegate.Spool(path, segment_bytes=64 * 1024, retention_seconds=0)  # reopened: recovered from disk
        assert spool.acked_seq == 0 and spool.stats()["next_seq"] == len(ids) == 2000
        segments = spool.stats()["segments"]
        assert segments > 5
        forwarder = Forwarder(spool, KafkaSettings(**{**_fields(settings), "cleanup_interval_s": 0.0}))
        assert forwarder.lag_records == len(ids)
        await forwarder.start()
        assert await forwarder.wait_acked(len(ids), 30)
        assert await forwarder.stop(5)
        assert forwarder.lag_records == 0 and forwarder.send_failures == 0
        removed = spool.stats()["removed_segments"]
        assert removed > 0
        assert spool.stats()["segments"] == segments - removed
        consumed = await consume_all(broker.bootstrap, TELEMETRY, timeout=15)
        assert sorted(header(r, "event_id").decode() for r in consumed) == sorted(ids)

    asyncio.run(forward())
    reopened = tidegate.Spool(path, segment_bytes=64 * 1024)
    assert reopened.acked_seq == reopened.stats()["next_seq"] == len(ids)
    assert len(reopened.read(0)[0]) < len(ids)  # what is left starts past the deleted segments


# ------------------------------------------------------------------------------------------------------ outages


class StreamWriter:
    """Writes telemetry bodies through SpoolWriter every `interval` until stopped; ``seq_ids[s]`` is the event id
    of the record at sequence `s` (known before the write, which appends at once)."""

    def __init__(self, spool: tidegate.Spool, validator: tidegate.Validator, forwarder: Forwarder) -> None:
        self.spool = spool
        self.validator = validator
        self.forwarder = forwarder
        self.seq_ids: list[str] = []
        self.acknowledged = 0  # sequence below which every write returned (durable)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, per_body: int = 50, interval: float = 0.02) -> None:
        self._task = asyncio.create_task(self._run(per_body, interval))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self, per_body: int, interval: float) -> None:
        async with open_writer(self.spool) as writer:
            n = 0
            while not self._stop.is_set():
                records = self.validator.validate(telemetry_body(n, per_body)).records
                n += per_body
                self.seq_ids.extend(records.event_ids())
                self.acknowledged = await writer.write(records)
                self.forwarder.notify()
                await asyncio.sleep(interval)


def test_broker_restart_mid_stream_loses_no_acknowledged_record(
    tmp_path: Path,
    broker: Broker,
    settings: KafkaSettings,
    telemetry_validator: tidegate.Validator,
    record_property: Callable[[str, object], None],
) -> None:
    """The broker is SIGKILLed while records stream in and restarted (empty: memory storage). Every record the
    spool's checkpoint says Kafka acknowledged is consumed, before the kill or after the restart."""

    async def scenario() -> dict[str, Any]:
        spool = tidegate.Spool(tmp_path / "spool")
        forwarder = Forwarder(spool, settings)
        collector = Collector(broker.bootstrap, {TELEMETRY: PARTITIONS[TELEMETRY]})
        stream = StreamWriter(spool, telemetry_validator, forwarder)
        collector.start()
        await forwarder.start()
        stream.start()
        try:
            await wait_until(lambda: forwarder.acked_seq > 500, "the first records to be acknowledged")

            # Kill at a moment when the collector holds everything acknowledged so far: records acknowledged by
            # the old broker and not consumed before it died would be lost by tansu, not by the forwarder.
            def caught_up() -> bool:
                return forwarder.acked_seq > 0 and all(
                    i in collector.ids for i in stream.seq_ids[: forwarder.acked_seq]
                )

            await wait_until(caught_up, "the collector to catch up")
            broker.stop(grace=0)  # synchronous: nothing else ran since the check
            acked_at_kill = forwarder.acked_seq
            written_at_kill = len(stream.seq_ids)
            failures_before_kill = forwarder.send_failures
            await collector.pause()
            # The stream goes on into the spool while the forwarder's sends fail.
            await wait_until(
                lambda: forwarder.send_failures > failures_before_kill and len(stream.seq_ids) > written_at_kill + 500,
                "sends to fail and the stream to go on while the broker is down",
            )
            acked_before_restart = forwarder.acked_seq
            written_during_outage = len(stream.seq_ids) - written_at_kill
            broker.start()
            collector.resume()
            await wait_until(
                lambda: forwarder.acked_seq >= written_at_kill + written_during_outage,
                "the restarted broker to acknowledge what was spooled during the outage",
            )
            await stream.stop()
            total = len(stream.seq_ids)
            assert stream.acknowledged == total
            assert await forwarder.wait_acked(total, 30), forwarder.metrics()
            # Acknowledgements read from the dead broker's last responses (if any) cover records it lost.
            lost_by_tansu = set(stream.seq_ids[acked_at_kill:acked_before_restart])
            required = set(stream.seq_ids[:acked_at_kill]) | set(stream.seq_ids[acked_before_restart:total])
            await wait_until(lambda: required <= collector.ids, "every acknowledged record to be consumed")
            assert await forwarder.stop(5)
        finally:
            await stream.stop()
            await collector.stop()
            await forwarder.stop(0)
        assert spool.acked_seq == total
        assert set(stream.seq_ids) - collector.ids <= lost_by_tansu
        duplicates = collector.duplicates()
        return {
            "records": total,
            "acked_at_kill": acked_at_kill,
            "acked_while_down": acked_before_restart - acked_at_kill,
            "written_while_down": written_during_outage,
            "duplicates": len(duplicates),
            "duplicate_copies": sum(n - 1 for n in duplicates.values()),
            "send_failures": forwarder.send_failures,
            "breaker_opens": forwarder.breaker_opens,
        }

    report = asyncio.run(scenario())
    for name, value in report.items():
        record_property(name, value)
    print(f"\nbroker restart mid-stream: {report}")


def test_breaker_opens_while_down_and_closes_after(
    tmp_path: Path, broker: Broker, settings: KafkaSettings, telemetry_validator: tidegate.Validator
) -> None:
    """Broker down: attempts fail, the breaker opens and probes (half-open) after its cool-down, wait_acked times
    out. Broker back: the probe succeeds, the breaker closes, wait_acked returns True, the records arrive."""

    async def scenario() -> None:
        spool = tidegate.Spool(tmp_path / "spool")
        forwarder = Forwarder(spool, settings)
        await forwarder.start()
        writer = SpoolWriter(spool)
        await writer.start()
        try:
            first = await writer.write(telemetry_validator.validate(telemetry_body(0, 50)).records)
            assert await forwarder.wait_acked(first, 10)
            assert forwarder.state == "closed"

            broker.stop(grace=0)
            records = telemetry_validator.validate(telemetry_body(50, 50)).records
            ids = set(records.event_ids())
            end = await writer.write(records)
            forwarder.notify()
            assert not await forwarder.wait_acked(end, 1.0)
            await wait_until(lambda: forwarder.state == "open", "the breaker to open")
            assert forwarder.send_failures >= settings.breaker_failures
            await wait_until(
                lambda: [s for _, s in forwarder.state_changes][-3:] == ["open", "half-open", "open"],
                "a failed probe",
            )
            assert not await forwarder.wait_acked(end, 0.2)
            assert spool.acked_seq == first

            broker.start()
            assert await forwarder.wait_acked(end, 15), forwarder.metrics()
            assert forwarder.state == "closed"
            states = [s for _, s in forwarder.state_changes]
            assert states[0] == "open" and states[-2:] == ["half-open", "closed"]
            assert forwarder.breaker_opens >= 2  # the first opening and at least one failed probe
            consumed = await consume_all(broker.bootstrap, TELEMETRY, expected=len(ids), timeout=10)
            assert ids <= {header(r, "event_id").decode() for r in consumed}
        finally:
            await writer.stop()
            await forwarder.stop(2)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------------ SIGKILL


def _run_child_and_kill(spool_dir: Path, bootstrap: str | None, acks_before_kill: int) -> tuple[list[str], int]:
    """Runs the writer child until it acknowledged `acks_before_kill` writes, SIGKILLs it; returns the event ids
    of every write it acknowledged (complete lines only) and the highest end sequence it reported."""
    args = [sys.executable, str(CHILD), str(spool_dir)] + ([bootstrap] if bootstrap else [])
    stderr_path = spool_dir.parent / "child.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
    lines: list[bytes] = []
    enough = threading.Event()
    assert proc.stdout is not None
    stdout = proc.stdout

    def reader() -> None:
        buffer = b""
        while chunk := stdout.read(65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(complete)
            if sum(1 for line in lines if line.startswith(b"ACK ")) >= acks_before_kill:
                enough.set()
        # a torn last line (no newline) is not an acknowledgement

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        if not enough.wait(30):
            raise AssertionError(f"child acknowledged too little: {stderr_path.read_text()[-2000:]}")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        thread.join(10)
    assert proc.returncode == -signal.SIGKILL
    ids: list[str] = []
    highest = 0
    for line in lines:
        if line.startswith(b"ACK "):
            _, end, *event_ids = line.decode().split()
            highest = max(highest, int(end))
            ids.extend(event_ids)
    return ids, highest


@pytest.mark.parametrize("with_forwarder", [False, True], ids=["spool-only", "with-forwarder"])
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, broker: Broker, with_forwarder: bool) -> None:
    """A writer process is SIGKILLed mid-stream: every write it had acknowledged is in the reopened spool (and
    with a forwarder running, everything the spool's checkpoint says Kafka acknowledged is in Kafka)."""
    spool_dir = tmp_path / "spool"
    acknowledged, highest = _run_child_and_kill(spool_dir, broker.bootstrap if with_forwarder else None, 150)
    assert len(acknowledged) >= 150 * 20 and len(set(acknowledged)) == len(acknowledged)

    spool = tidegate.Spool(spool_dir)
    stats = spool.stats()
    assert stats["next_seq"] >= highest and stats["recovered_records"] == stats["next_seq"]
    in_spool = spool_event_ids(spool)
    assert len(in_spool) == stats["next_seq"]
    missing = set(acknowledged) - set(in_spool)
    if with_forwarder:
        in_kafka = asyncio.run(consume_all(broker.bootstrap, TELEMETRY, timeout=10))
        kafka_ids = {header(r, "event_id").decode() for r in in_kafka}
        missing -= kafka_ids
        assert spool.acked_seq > 0
        assert set(in_spool[: spool.acked_seq]) <= kafka_ids  # the checkpoint never runs ahead of Kafka
    else:
        assert spool.acked_seq == 0
    assert not missing, f"{len(missing)} acknowledged records lost"
