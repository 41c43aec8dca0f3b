"""The forwarder's native encoder: uncompressed batches byte-identical to aiokafka's builder, compressed ones
decoded by aiokafka and by a real consumer from a real broker for every codec, splits, oversize records, and the
part of aiokafka's private batch API that `EncodedBatch` stands in for."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import time
from pathlib import Path
from typing import Any

import aiokafka
import pytest
import tidegate
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer import message_accumulator
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from tidegate._native import KafkaRange
from tidegate.delivery.kafka import EncodedBatch, KafkaSettings
from tidegate.testing.broker import Broker, consume_all

from tests.conftest import TRACEPARENT, event, reading

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

#: compression_type: the codec id in a batch's attributes.
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def sample_batch(count: int = 60) -> tidegate.RecordBatch:
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    records = [
        reading(f"dev-{i % 13}", metrics={"i": i, "temperature": 400 if i % 9 == 0 else 20}) for i in range(count)
    ]
    result = validator.validate(json.dumps(records).encode(), priority="high", traceparent=TRACEPARENT)
    return result.batch


def aiokafka_encoding(records: list[Record]) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=headers)
    return bytes(builder.build())


def decoded(data: bytes) -> tuple[int, list[Record]]:
    """The codec id and the records of a batch, as aiokafka's consumer reads them (CRC checked)."""
    batch = DefaultRecordBatch(data)
    assert batch.validate_crc()
    return batch.compression_type, [(r.key, r.value, list(r.headers), r.timestamp) for r in batch]


def positions(encoded: KafkaRange, start: int, end: int) -> list[Record]:
    return [encoded.record(position) for position in range(start, end)]


def test_uncompressed_bytes_equal_aiokafkas_builder_and_partitioner() -> None:
    batch = sample_batch()
    encoded = batch.kafka_range(dict.fromkeys(batch.topics, 4))
    assert encoded.oversize == [] and encoded.missing_topics == [] and len(encoded) == len(batch)
    assert sum(count for *_, count, _, _ in encoded.batches) == len(batch)
    for topic, partition, data, count, start, end in encoded.batches:
        mine = [r for r in batch.records(topic) if (murmur2(r[0]) & 0x7FFFFFFF) % 4 == partition]
        assert (count, end - start) == (len(mine), len(mine))
        assert positions(encoded, start, end) == mine
        assert data == aiokafka_encoding(mine)


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_batches_decode_with_aiokafka(codec: str) -> None:
    batch = sample_batch(400)
    plain = batch.kafka_range(dict.fromkeys(batch.topics, 2), max_batch_bytes=20_000)
    packed = batch.kafka_range(dict.fromkeys(batch.topics, 2), max_batch_bytes=20_000, compression=codec)  # type: ignore[arg-type]
    assert packed.compression == codec
    assert len(packed.batches) == len(plain.batches) > 2, "cut by the size before compression"
    for (topic, partition, data, count, start, end), same in zip(packed.batches, plain.batches, strict=True):
        assert (topic, partition, count, start, end) == same[:2] + same[3:]
        assert len(data) * 2 < len(same[2]), "JSON telemetry compresses"
        assert decoded(data) == (CODECS[codec], positions(packed, start, end))


def test_an_unknown_codec_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="brotli"):
        sample_batch(1).kafka_range({"telemetry-raw": 1}, compression="brotli")  # type: ignore[arg-type]


def test_size_limits_split_batches_and_leave_out_oversize_records() -> None:
    batch = sample_batch()
    records = batch.records("telemetry-raw")
    whole = batch.kafka_range({"telemetry-raw": 1}).batches
    split = batch.kafka_range({"telemetry-raw": 1}, max_batch_bytes=2000).batches
    assert len(whole) == 1 and len(split) > 3
    assert all(len(data) <= 2000 for _, _, data, count, _, _ in split if count > 1)
    assert sum(count for *_, count, _, _ in split) == len(records)
    left_out = batch.kafka_range({"telemetry-raw": 1}, max_record_bytes=100)
    assert left_out.batches == [] and len(left_out.oversize) == len(records)
    assert [left_out.record(position) for _, position in left_out.oversize] == records


def test_topics_without_a_partition_count_are_encoded_again_once_known() -> None:
    batch = sample_batch()
    assert batch.topics == ["telemetry-raw", "ingest-dlq"]
    encoded = batch.kafka_range({"telemetry-raw": 2})
    assert encoded.missing_topics == ["ingest-dlq"] and {b[0] for b in encoded.batches} == {"telemetry-raw"}
    counts = {"telemetry-raw": 3, "ingest-dlq": 1}
    again = encoded.encode_again(counts)
    assert again.partitions == counts and again.missing_topics == [] and len(again) == len(batch)
    assert [b[2] for b in again.batches] == [b[2] for b in batch.kafka_range(counts).batches]


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_a_refused_batch_is_encoded_again_as_halves(codec: str | None) -> None:
    batch = sample_batch(300)
    encoded = batch.kafka_range({"telemetry-raw": 1}, compression=codec)  # type: ignore[arg-type]
    ((_, _, _, count, start, end),) = encoded.batches
    whole_size = len(aiokafka_encoding(positions(encoded, start, end)))
    halves = encoded.split(start, end)
    assert len(halves) >= 2 and sum(count for _, count, _, _ in halves) == count
    at = start
    for part, part_count, part_start, part_end in halves:
        assert (part_start, part_end - part_start) == (at, part_count)
        at = part_end
        records = positions(encoded, part_start, part_end)
        assert decoded(part) == (CODECS.get(codec or "", 0), records)
        assert len(aiokafka_encoding(records)) <= whole_size // 2
    assert at == end
    # Again and again, down to one record, which comes back whole.
    part, part_count, part_start, part_end = halves[0]
    while part_count > 1:
        part, part_count, part_start, part_end = encoded.split(part_start, part_end)[0]
    assert encoded.split(part_start, part_end) == [(part, 1, part_start, part_end)]
    with pytest.raises(IndexError):
        encoded.split(end, end + 1)


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
        ((_, _, data, _, _, _),) = result.batch.kafka_range({"events-raw": 1}, max_record_bytes=1 << 30).batches
        return len(data)

    probe = 990_000
    # Grow the payload until the record takes exactly MAX_RECORD_BYTES as a batch of its own.
    size = probe + tidegate.MAX_RECORD_BYTES - batch_of_one_size(record_of(probe, 1 << 30))
    at_limit = record_of(size, tidegate.MAX_RECORD_BYTES)
    assert at_limit.accepted == 1 and batch_of_one_size(at_limit) == tidegate.MAX_RECORD_BYTES
    # The forwarder's native encoding measures records the same way.
    assert at_limit.batch.kafka_range({"events-raw": 1}, max_record_bytes=forwarder_limit).oversize == []
    at_limit_exactly = at_limit.batch.kafka_range({"events-raw": 1}, max_record_bytes=tidegate.MAX_RECORD_BYTES)
    assert at_limit_exactly.oversize == []
    assert record_of(size + 1, tidegate.MAX_RECORD_BYTES).accepted == 0


def test_a_real_broker_takes_native_batches_of_every_codec(tmp_path: Path) -> None:
    """Every codec's batches, and split halves, are accepted by tansu and read back by aiokafka's consumer."""
    batch = sample_batch(200)
    expected = sorted(batch.values("telemetry-raw"))
    codecs: list[str | None] = [None, *CODECS]
    with Broker(tmp_path) as broker:
        topics = {codec: f"telemetry-{codec or 'none'}" for codec in codecs}
        broker.create_topics([*topics.values(), "telemetry-split"], partitions=3)

        async def send(producer: Any, topic: str, batches: list[tuple[int, bytes, int]]) -> None:
            futures = [
                await producer.send_batch(EncodedBatch(data, count), topic, partition=partition)
                for partition, data, count in batches
            ]
            await asyncio.gather(*futures)

        async def roundtrip() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False)
            await producer.start()
            try:
                for codec, topic in topics.items():
                    encoded = batch.kafka_range({"telemetry-raw": 3}, compression=codec)  # type: ignore[arg-type]
                    await send(producer, topic, [(b[1], b[2], b[3]) for b in encoded.batches])
                encoded = batch.kafka_range({"telemetry-raw": 3}, compression="lz4")
                halves = [
                    (partition, data, count)
                    for _, partition, _, _, start, end in encoded.batches
                    for data, count, _, _ in encoded.split(start, end)
                ]
                assert len(halves) > len(encoded.batches)
                await send(producer, "telemetry-split", halves)
            finally:
                await producer.stop()
            for topic in [*topics.values(), "telemetry-split"]:
                consumed = await consume_all(broker.bootstrap, topic, expected=len(expected))
                assert sorted(record.value for record in consumed) == expected, topic
                for record in consumed:
                    headers = dict(record.headers)
                    assert json.loads(record.value)["event_id"] == headers["event_id"].decode()
                    assert headers["priority"] == b"high" and headers["traceparent"] == TRACEPARENT.encode()
                    assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3

        asyncio.run(roundtrip())


# ------------------------------------------------------------------------------------- aiokafka's private surface


def _builder_calls() -> set[str]:
    """Every attribute aiokafka's accumulator uses on a batch given to ``send_batch``: ``MessageBatch`` and
    ``MessageAccumulator`` reach it as ``<batch>._builder.<name>``."""
    tree = ast.parse(inspect.getsource(message_accumulator))
    used: set[str] = set()
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name in ("MessageBatch", "MessageAccumulator"):
            for node in ast.walk(cls):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "_builder"
                ):
                    used.add(node.attr)
    return used


def test_encoded_batch_has_all_that_aiokafka_calls_on_a_batch() -> None:
    """`EncodedBatch` stands in for aiokafka's private `BatchBuilder`: if a new aiokafka calls something else on a
    queued batch, or sends batches another way, this fails (aiokafka is pinned to the versions checked)."""
    assert aiokafka.__version__.startswith("0.14."), "pinned in pyproject.toml: check this surface before widening"
    used = _builder_calls()
    assert {"record_count", "closed", "_build", "append"} <= used, used
    assert used <= set(dir(EncodedBatch)), used - set(dir(EncodedBatch))
    # send_batch hands the batch itself to the accumulator, which wraps it in a MessageBatch.
    send_batch = inspect.getsource(AIOKafkaProducer.send_batch)
    assert "self._message_accumulator.add_batch(" in send_batch and "batch, tp," in send_batch
    assert "MessageBatch(tp, builder," in inspect.getsource(message_accumulator.MessageAccumulator._append_batch)
    encoded = EncodedBatch(b"abc", 2)
    assert (encoded.record_count(), encoded.closed(), encoded._build(), encoded.size()) == (2, True, b"abc", 3)
    full: object = encoded.append(timestamp=None, key=None, value=b"v", headers=[])  # type: ignore[func-returns-value]
    assert full is None, "full: send() waits for it to drain"
