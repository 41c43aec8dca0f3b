"""Natively encoded Kafka record batches: byte-identical to aiokafka's builder, and accepted by a real broker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import tidegate
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from tidegate.delivery.kafka import EncodedBatch, KafkaSettings
from tidegate.testing.broker import Broker, consume_all

from tests.conftest import TRACEPARENT, event, reading


def sample_batch(count: int = 60) -> tidegate.RecordBatch:
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    records = [
        reading(f"dev-{i % 13}", metrics={"i": i, "temperature": 400 if i % 9 == 0 else 20}) for i in range(count)
    ]
    result = validator.validate(json.dumps(records).encode(), priority="high", traceparent=TRACEPARENT)
    return result.batch


def aiokafka_encoding(records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]], int]]) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=headers)
    return bytes(builder.build())


def test_bytes_equal_aiokafkas_builder_and_partitioner() -> None:
    batch = sample_batch()
    for topic in batch.topics:
        records = batch.records(topic)
        encoded, oversize = batch.kafka_batches(topic, 4)
        assert oversize == []
        assert sum(count for _, _, count in encoded) == len(records)
        for partition, data, count in encoded:
            mine = [r for r in records if (murmur2(r[0]) & 0x7FFFFFFF) % 4 == partition]
            assert count == len(mine)
            assert data == aiokafka_encoding(mine)


def test_size_limits_split_batches_and_leave_out_oversize_records() -> None:
    batch = sample_batch()
    records = batch.records("telemetry-raw")
    whole, _ = batch.kafka_batches("telemetry-raw", 1)
    split, _ = batch.kafka_batches("telemetry-raw", 1, max_batch_bytes=2000)
    assert len(whole) == 1 and len(split) > 3
    assert all(len(data) <= 2000 for _, data, count in split if count > 1)
    assert sum(count for _, _, count in split) == len(records)
    _, oversize = batch.kafka_batches("telemetry-raw", 1, max_record_bytes=100)
    assert len(oversize) == len(records)


def test_the_forwarder_never_leaves_out_a_record_the_validator_admits() -> None:
    """The validator admits records up to MAX_RECORD_BYTES as a Kafka batch of their own; the forwarder leaves out
    records above its own max_record_bytes by the same measure, and its default is not smaller."""
    forwarder_limit = KafkaSettings(bootstrap="unused").max_record_bytes
    assert forwarder_limit >= tidegate.MAX_RECORD_BYTES
    received = int(time.time() * 1000)

    def record_of(payload_bytes: int, limit: int) -> tidegate.ValidationResult:
        chunks = {f"p{i}": "y" * 60_000 for i in range(payload_bytes // 60_000)}
        payload = chunks | {"rest": "y" * (payload_bytes % 60_000)}
        validator = tidegate.Validator(tidegate.Contract.event(), max_record_bytes=limit)
        return validator.validate(json.dumps(event(payload=payload)).encode(), received_at_ms=received)

    def batch_of_one_size(result: tidegate.ValidationResult) -> int:
        ((_, data, _),) = result.batch.kafka_batches("events-raw", 1, max_record_bytes=1 << 30)[0]
        return len(data)

    probe = 990_000
    # Grow the payload until the record takes exactly MAX_RECORD_BYTES as a batch of its own.
    size = probe + tidegate.MAX_RECORD_BYTES - batch_of_one_size(record_of(probe, 1 << 30))
    at_limit = record_of(size, tidegate.MAX_RECORD_BYTES)
    assert at_limit.accepted == 1 and batch_of_one_size(at_limit) == tidegate.MAX_RECORD_BYTES
    # What the forwarder's native encoding is given: its limit without the batch header.
    _, left_out = at_limit.batch.kafka_batches("events-raw", 1, max_record_bytes=forwarder_limit - 61)
    assert left_out == []
    assert record_of(size + 1, tidegate.MAX_RECORD_BYTES).accepted == 0


def test_a_real_broker_accepts_native_batches(tmp_path: Path) -> None:
    batch = sample_batch(200)
    with Broker(tmp_path) as broker:
        broker.create_topics(["telemetry-raw"], partitions=3)

        async def roundtrip() -> list[bytes]:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False)
            await producer.start()
            try:
                encoded, _ = batch.kafka_batches("telemetry-raw", 3)
                futures = [
                    await producer.send_batch(EncodedBatch(data, count), "telemetry-raw", partition=partition)
                    for partition, data, count in encoded
                ]
                await asyncio.gather(*futures)
            finally:
                await producer.stop()
            consumed = await consume_all(
                broker.bootstrap, "telemetry-raw", expected=len(batch.records("telemetry-raw"))
            )
            for record in consumed:
                headers = dict(record.headers)
                assert json.loads(record.value)["event_id"] == headers["event_id"].decode()
                assert headers["priority"] == b"high" and headers["traceparent"] == TRACEPARENT.encode()
            return [record.value for record in consumed]

        values = asyncio.run(roundtrip())
        assert sorted(values) == sorted(batch.values("telemetry-raw"))
