"""Delivery throughput: spool to Kafka, and spool appends with group commit.

    python bench/spool_to_kafka.py                       # 100k records, 3 runs, then 64 writers for 3 s
    python bench/spool_to_kafka.py --records 200000 --runs 5 --partitions 8

1. Forwarder: `--records` telemetry records (values of about 300 bytes) are validated and spooled first (one
   fsync), then a `Forwarder` drains the spool into a real Kafka-protocol broker (tansu, memory storage, from the
   test extras) with acks=all; timed from `start()` until the spool's checkpoint covers every record. The records
   are consumed back and counted. Prints records/s and MB/s per run and the median.
   In the same run, on a fresh broker each time, the reference: aiokafka's own `create_batch`/`send_batch` loop
   over the same records (already in memory as Python objects, partitioned by aiokafka's default partitioner, one
   task per partition, acks=all, the same Kafka batch size and compression), timed until every record is acknowledged.
   Printed side by side with the forwarder, as a ratio (issue 8's target: at least 2x).
2. Group commit: `--writers` asyncio tasks each write single-record `Records` through `SpoolWriter` (every write
   returns only once its record is fsynced) for `--seconds`. Prints appends/s and the fsyncs they shared.

Both share the machine with the broker; figures on a busy or small machine swing, hence the runs and medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import tidegate  # noqa: E402
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
from tidegate.delivery.kafka import Forwarder, KafkaSettings  # noqa: E402
from tidegate.delivery.spool import SpoolWriter  # noqa: E402
from tidegate.testing.broker import Broker, consume_all  # noqa: E402

TOPIC = "telemetry-raw"
PER_BODY = 1000


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def make_record_sets(validator: tidegate.Validator, records: int, devices: int = 200) -> list[tidegate.Records]:
    """Distinct telemetry readings (unique event ids), validated into record arenas of up to 1000 records each."""
    now_ms = int(time.time() * 1000)
    record_sets = []
    for start in range(0, records, PER_BODY):
        lines = []
        for i in range(start, min(records, start + PER_BODY)):
            reading = {
                "device_id": f"sensor-{i % devices:05d}",
                "timestamp": _iso(now_ms - 3_600_000 + i),
                "metrics": {"temperature": 20.0 + (i % 1000) / 100, "humidity": 40.0 + i % 50},
                "metadata": {"firmware_version": "2.1.0", "battery_level": 85, "site": "plant-7-line-3"},
            }
            lines.append(json.dumps(reading))
        result = validator.validate("\n".join(lines).encode(), "application/x-ndjson")
        if result.accepted != len(lines):
            raise SystemExit(f"validation rejected records: {result.rejected[:3]}")
        record_sets.append(result.records)
    return record_sets


async def forward_once(
    broker: Broker, spool_dir: Path, record_sets: list[tidegate.Records], args: argparse.Namespace
) -> dict[str, Any]:
    spool = tidegate.Spool(spool_dir)
    for part in record_sets:
        spool.append(part)
    spool.commit()
    total = spool.stats()["next_seq"]
    payload = sum(part.payload_bytes for part in record_sets)
    settings = KafkaSettings(
        broker.bootstrap,
        read_max_records=args.read_records,
        pipeline_ranges=args.pipeline,
        max_batch_bytes=args.batch_bytes,
        compression_type=args.compression,
    )
    forwarder = Forwarder(spool, settings)
    began = time.perf_counter()
    await forwarder.start()
    ok = await forwarder.wait_acked(total, 300)
    elapsed = time.perf_counter() - began
    drained = await forwarder.stop(5)
    consumed = len(await consume_all(broker.bootstrap, TOPIC, expected=total, timeout=60)) if args.verify else -1
    stats = spool.stats()
    return {
        "ok": ok and drained,
        "records": total,
        "seconds": elapsed,
        "records_per_s": total / elapsed,
        "mb_per_s": payload / elapsed / 1e6,
        "batches": forwarder.batches_sent,
        "send_failures": forwarder.send_failures,
        "fsyncs": stats["fsyncs"],
        "consumed": consumed,
    }


async def aiokafka_once(broker: Broker, record_sets: list[tidegate.Records], args: argparse.Namespace) -> float:
    """The reference: aiokafka's own Kafka batch loop over the same records; records/s until all are acknowledged."""
    records = [record for part in record_sets for record in part.records(TOPIC)]
    per_partition: list[list[Any]] = [[] for _ in range(args.partitions)]
    for record in records:
        per_partition[(murmur2(record[0]) & 0x7FFFFFFF) % args.partitions].append(record)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        max_batch_size=args.batch_bytes,
        max_request_size=args.batch_bytes + 65536,
        compression_type=args.compression,
    )
    await producer.start()
    try:

        async def send_partition(partition: int, mine: list[Any]) -> list[Any]:
            futures = []
            kafka_batch = producer.create_batch()
            for key, value, headers, timestamp_ms in mine:
                if kafka_batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                    futures.append(await producer.send_batch(kafka_batch, TOPIC, partition=partition))
                    kafka_batch = producer.create_batch()
                    kafka_batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers)
            if kafka_batch.record_count():
                futures.append(await producer.send_batch(kafka_batch, TOPIC, partition=partition))
            return futures

        began = time.perf_counter()
        queued = await asyncio.gather(*(send_partition(p, mine) for p, mine in enumerate(per_partition)))
        await asyncio.gather(*(future for futures in queued for future in futures))
        elapsed = time.perf_counter() - began
    finally:
        await producer.stop()
    return len(records) / elapsed


async def group_commit(
    spool_dir: Path, singles: list[tidegate.Records], writers: int, seconds: float
) -> dict[str, Any]:
    spool = tidegate.Spool(spool_dir)
    writer = SpoolWriter(spool)
    await writer.start()
    counts = [0] * writers
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def run(index: int) -> None:
        k = index
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await writer.write(singles[k % len(singles)])
            latencies.append(time.perf_counter() - t)
            counts[index] += 1
            k += writers

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(writers)))
    elapsed = time.perf_counter() - began
    await writer.stop()
    stats = spool.stats()
    appends = sum(counts)
    latencies.sort()
    return {
        "appends": appends,
        "seconds": elapsed,
        "appends_per_s": appends / elapsed,
        "fsyncs": stats["fsyncs"],
        "appends_per_fsync": appends / max(1, stats["fsyncs"]),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--read-records", type=int, default=KafkaSettings("").read_max_records)
    parser.add_argument("--pipeline", type=int, default=KafkaSettings("").pipeline_ranges)
    parser.add_argument("--batch-bytes", type=int, default=KafkaSettings("").max_batch_bytes)
    parser.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"], default=None)
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="do not consume the records back")
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-append", action="store_true")
    args = parser.parse_args()

    validator = tidegate.Validator(tidegate.Contract.telemetry())
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_forward:
            record_sets = make_record_sets(validator, args.records)
            values = [len(v) for v in record_sets[0].values()]
            print(
                f"forwarder: {args.records} records, value {statistics.mean(values):.0f} B mean, "
                f"{args.partitions} partitions, read {args.read_records} records/range, pipeline {args.pipeline}, "
                f"compression {args.compression}"
            )
            rates = []
            references = []
            for run in range(args.runs):
                with Broker(root / f"broker-{run}") as broker:
                    broker.create_topics([TOPIC], partitions=args.partitions)
                    result = await forward_once(broker, root / f"spool-{run}", record_sets, args)
                with Broker(root / f"broker-{run}-aiokafka") as broker:
                    broker.create_topics([TOPIC], partitions=args.partitions)
                    reference = await aiokafka_once(broker, record_sets, args)
                rates.append(result["records_per_s"])
                references.append(reference)
                print(
                    f"  run {run + 1}: {result['records_per_s']:,.0f} records/s, {result['mb_per_s']:.1f} MB/s "
                    f"({result['records']} in {result['seconds']:.2f} s, {result['batches']} Kafka batches, "
                    f"{result['send_failures']} failed attempts, spool fsyncs {result['fsyncs']}, "
                    f"consumed back {result['consumed']}, ok={result['ok']}); aiokafka's create_batch/send_batch "
                    f"loop {reference:,.0f} records/s: {result['records_per_s'] / reference:.2f}x"
                )
                if not result["ok"] or (args.verify and result["consumed"] != result["records"]):
                    raise SystemExit("delivery incomplete")
            forwarder_median, reference_median = statistics.median(rates), statistics.median(references)
            print(
                f"  median: forwarder {forwarder_median:,.0f} records/s, aiokafka loop {reference_median:,.0f} "
                f"records/s: {forwarder_median / reference_median:.2f}x (target >= 2x)"
            )
        if not args.skip_append:
            singles = [one for part in make_record_sets(validator, 2000, devices=64) for one in _split(validator, part)]
            print(f"group commit: {args.writers} writers, single-record writes for {args.seconds} s")
            result = await group_commit(root / "spool-append", singles, args.writers, args.seconds)
            print(
                f"  {result['appends_per_s']:,.0f} appends/s ({result['appends']} durable writes in "
                f"{result['seconds']:.2f} s), fsyncs {result['fsyncs']} "
                f"({result['appends_per_fsync']:.1f} appends per fsync), write latency p50 {result['p50_ms']:.2f} ms "
                f"p99 {result['p99_ms']:.2f} ms"
            )


def _split(validator: tidegate.Validator, records: tidegate.Records) -> list[tidegate.Records]:
    """One `Records` per record (what one small request produces), rebuilt through the validator."""
    out = []
    for value in records.values(TOPIC):
        record = json.loads(value)
        reading = {k: record[k] for k in ("device_id", "timestamp", "metrics", "metadata")}
        out.append(validator.validate(json.dumps(reading).encode()).records)
    return out


if __name__ == "__main__":
    asyncio.run(main())
