"""The forwarder's native encoder: uncompressed Kafka record batches byte-identical to aiokafka's builder,
compressed ones decoded by aiokafka and by a real consumer from a real broker for every codec, splits, oversize
records, and the part of aiokafka's private Kafka batch API that `EncodedKafkaBatch` stands in for."""

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
from tidegate.delivery.kafka import EncodedKafkaBatch, KafkaSettings
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.broker import producer as tansu_producer

from tests.conftest import TRACEPARENT, event, reading

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

#: compression_type: the codec id in a Kafka record batch's attributes.
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def sample_records(count: int = 60) -> tidegate.Records:
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    records = [
        reading(f"dev-{i % 13}", metrics={"i": i, "temperature": 400 if i % 9 == 0 else 20}) for i in range(count)
    ]
    result = validator.validate(json.dumps(records).encode(), priority="high", traceparent=TRACEPARENT)
    return result.records


def aiokafka_encoding(records: list[Record]) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=headers)
    return bytes(builder.build())


def decoded(data: bytes) -> tuple[int, list[Record]]:
    """The codec id and the records of a Kafka record batch, as aiokafka's consumer reads them (CRC checked)."""
    kafka_batch = DefaultRecordBatch(data)
    assert kafka_batch.validate_crc()
    return kafka_batch.compression_type, [(r.key, r.value, list(r.headers), r.timestamp) for r in kafka_batch]


def positions(encoded: KafkaRange, start: int, end: int) -> list[Record]:
    return [encoded.record(position) for position in range(start, end)]


def test_uncompressed_bytes_equal_aiokafkas_builder_and_partitioner() -> None:
    records = sample_records()
    encoded = records.kafka_range(dict.fromkeys(records.topics, 4))
    assert encoded.oversize == [] and encoded.missing_topics == [] and len(encoded) == len(records)
    assert sum(count for *_, count, _, _ in encoded.runs) == len(records)
    for topic, partition, data, count, start, end in encoded.runs:
        mine = [r for r in records.records(topic) if (murmur2(r[0]) & 0x7FFFFFFF) % 4 == partition]
        assert (count, end - start) == (len(mine), len(mine))
        assert positions(encoded, start, end) == mine
        assert data == aiokafka_encoding(mine)


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_batches_decode_with_aiokafka(codec: str) -> None:
    records = sample_records(400)
    plain = records.kafka_range(dict.fromkeys(records.topics, 2), max_batch_bytes=20_000)
    packed = records.kafka_range(dict.fromkeys(records.topics, 2), max_batch_bytes=20_000, compression=codec)  # type: ignore[arg-type]
    assert packed.compression == codec
    assert len(packed.runs) == len(plain.runs) > 2, "cut by the size before compression"
    for (topic, partition, data, count, start, end), same in zip(packed.runs, plain.runs, strict=True):
        assert (topic, partition, count, start, end) == same[:2] + same[3:]
        assert len(data) * 2 < len(same[2]), "JSON telemetry compresses"
        assert decoded(data) == (CODECS[codec], positions(packed, start, end))


def test_an_unknown_codec_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="brotli"):
        sample_records(1).kafka_range({"telemetry-raw": 1}, compression="brotli")  # type: ignore[arg-type]


def test_size_limits_split_runs_and_leave_out_oversize_records() -> None:
    records = sample_records()
    tuples = records.records("telemetry-raw")
    whole = records.kafka_range({"telemetry-raw": 1}).runs
    split = records.kafka_range({"telemetry-raw": 1}, max_batch_bytes=2000).runs
    assert len(whole) == 1 and len(split) > 3
    assert all(len(data) <= 2000 for _, _, data, count, _, _ in split if count > 1)
    assert sum(count for *_, count, _, _ in split) == len(tuples)
    left_out = records.kafka_range({"telemetry-raw": 1}, max_record_bytes=100)
    assert left_out.runs == [] and len(left_out.oversize) == len(tuples)
    assert [left_out.record(position) for _, position in left_out.oversize] == tuples


def test_topics_without_a_partition_count_are_encoded_again_once_known() -> None:
    records = sample_records()
    assert records.topics == ["telemetry-raw", "ingest-dlq"]
    encoded = records.kafka_range({"telemetry-raw": 2})
    assert encoded.missing_topics == ["ingest-dlq"] and {b[0] for b in encoded.runs} == {"telemetry-raw"}
    counts = {"telemetry-raw": 3, "ingest-dlq": 1}
    again = encoded.encode_again(counts)
    assert again.partitions == counts and again.missing_topics == [] and len(again) == len(records)
    assert [b[2] for b in again.runs] == [b[2] for b in records.kafka_range(counts).runs]


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_a_refused_run_is_encoded_again_as_halves(codec: str | None) -> None:
    records = sample_records(300)
    encoded = records.kafka_range({"telemetry-raw": 1}, compression=codec)  # type: ignore[arg-type]
    ((_, _, _, count, start, end),) = encoded.runs
    whole_size = len(aiokafka_encoding(positions(encoded, start, end)))
    halves = encoded.split(start, end)
    assert len(halves) >= 2 and sum(count for _, count, _, _ in halves) == count
    at = start
    for part, part_count, part_start, part_end in halves:
        assert (part_start, part_end - part_start) == (at, part_count)
        at = part_end
        tuples = positions(encoded, part_start, part_end)
        assert decoded(part) == (CODECS.get(codec or "", 0), tuples)
        assert len(aiokafka_encoding(tuples)) <= whole_size // 2
    assert at == end
    # Again and again, down to one record, which comes back whole.
    part, part_count, part_start, part_end = halves[0]
    while part_count > 1:
        part, part_count, part_start, part_end = encoded.split(part_start, part_end)[0]
    assert encoded.split(part_start, part_end) == [(part, 1, part_start, part_end)]
    with pytest.raises(IndexError):
        encoded.split(end, end + 1)


def test_the_forwarder_never_leaves_out_a_record_the_validator_admits() -> None:
    """The validator admits records up to MAX_RECORD_BYTES as a Kafka record batch of their own; the forwarder leaves
    out records above its own max_record_bytes by the same measure, and its default is not smaller."""
    forwarder_limit = KafkaSettings(bootstrap="unused").max_record_bytes
    assert forwarder_limit >= tidegate.MAX_RECORD_BYTES
    received = int(time.time() * 1000)

    def record_of(payload_bytes: int, limit: int) -> tidegate.ValidationResult:
        chunks = {f"p{i}": "y" * 60_000 for i in range(payload_bytes // 60_000)}
        payload = chunks | {"rest": "y" * (payload_bytes % 60_000)}
        validator = tidegate.Validator(tidegate.Contract.event(), max_record_bytes=limit)
        return validator.validate(json.dumps(event(payload=payload)).encode(), received_at_ms=received)

    def batch_of_one_size(result: tidegate.ValidationResult) -> int:
        ((_, _, data, _, _, _),) = result.records.kafka_range({"events-raw": 1}, max_record_bytes=1 << 30).runs
        return len(data)

    probe = 990_000
    # Grow the payload until the record takes exactly MAX_RECORD_BYTES as a Kafka record batch of its own.
    size = probe + tidegate.MAX_RECORD_BYTES - batch_of_one_size(record_of(probe, 1 << 30))
    at_limit = record_of(size, tidegate.MAX_RECORD_BYTES)
    assert at_limit.accepted == 1 and batch_of_one_size(at_limit) == tidegate.MAX_RECORD_BYTES
    # The forwarder's native encoding measures records the same way.
    assert at_limit.records.kafka_range({"events-raw": 1}, max_record_bytes=forwarder_limit).oversize == []
    at_limit_exactly = at_limit.records.kafka_range({"events-raw": 1}, max_record_bytes=tidegate.MAX_RECORD_BYTES)
    assert at_limit_exactly.oversize == []
    assert record_of(size + 1, tidegate.MAX_RECORD_BYTES).accepted == 0


def test_a_real_broker_takes_native_batches_of_every_codec(tmp_path: Path) -> None:
    """Every codec's runs, and split halves, are accepted by tansu and read back by aiokafka's consumer."""
    records = sample_records(200)
    expected = sorted(records.values("telemetry-raw"))
    codecs: list[str | None] = [None, *CODECS]
    with Broker(tmp_path) as broker:
        topics = {codec: f"telemetry-{codec or 'none'}" for codec in codecs}
        broker.create_topics([*topics.values(), "telemetry-split"], partitions=3)

        async def send(producer: Any, topic: str, runs: list[tuple[int, bytes, int]]) -> None:
            futures = [
                await producer.send_batch(EncodedKafkaBatch(data, count), topic, partition=partition)
                for partition, data, count in runs
            ]
            await asyncio.gather(*futures)

        async def roundtrip() -> None:
            producer = tansu_producer(broker.bootstrap)
            await producer.start()
            try:
                for codec, topic in topics.items():
                    encoded = records.kafka_range({"telemetry-raw": 3}, compression=codec)  # type: ignore[arg-type]
                    await send(producer, topic, [(b[1], b[2], b[3]) for b in encoded.runs])
                encoded = records.kafka_range({"telemetry-raw": 3}, compression="lz4")
                halves = [
                    (partition, data, count)
                    for _, partition, _, _, start, end in encoded.runs
                    for data, count, _, _ in encoded.split(start, end)
                ]
                assert len(halves) > len(encoded.runs)
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
    ``MessageAccumulator`` reach it as ``<kafka batch>._builder.<name>``."""
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
    """`EncodedKafkaBatch` stands in for aiokafka's private `BatchBuilder`: if a new aiokafka calls something else on a
    queued Kafka batch, or sends Kafka batches another way, this fails (aiokafka is pinned to the versions checked)."""
    assert aiokafka.__version__.startswith("0.14."), "pinned in pyproject.toml: check this surface before widening"
    used = _builder_calls()
    assert {"record_count", "closed", "_build", "append"} <= used, used
    assert used <= set(dir(EncodedKafkaBatch)), used - set(dir(EncodedKafkaBatch))
    # send_batch hands the batch itself to the accumulator, which wraps it in a MessageBatch.
    send_batch = inspect.getsource(AIOKafkaProducer.send_batch)
    assert "self._message_accumulator.add_batch(" in send_batch and "batch, tp," in send_batch
    assert "MessageBatch(tp, builder," in inspect.getsource(message_accumulator.MessageAccumulator._append_batch)
    encoded = EncodedKafkaBatch(b"abc", 2)
    assert (encoded.record_count(), encoded.closed(), encoded._build(), encoded.size()) == (2, True, b"abc", 3)
    full: object = encoded.append(timestamp=None, key=None, value=b"v", headers=[])  # type: ignore[func-returns-value]
    assert full is None, "full: send() waits for it to drain"
