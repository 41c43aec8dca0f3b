"""The archive (issue 13's targets): records/s into Parquet against the HTTP batch path's records/s in the same run,
a lookup by event id and a query by entity and day over many archived records, and bytes per record.

    python bench/archive.py                                  # 1 M records archived, 10 M for the lookups
    python bench/archive.py --records 20000 --lookup-records 200000 --seconds 3    # a quick check that it works

1. The HTTP batch path: `tidegate serve` (one worker, no auth, no rate limit, the archive off so that only the
   request path runs) loaded by wrk with seed-001 batches of 100 readings (bench/wrk/batch.lua, 64 connections)
   for `--seconds`: records/s answered 202.
2. The archive writer: `--records` seed-001 readings are spooled first (untimed, as workers spool them), then one
   `SpoolArchiver` (what the delivery process runs per worker spool) archives them all, timed from its start to its
   last file: records/s (and per CPU second of the process, which other load on the machine inflates less), and
   the archive's and the spool's bytes per record. Ratio: archive / HTTP (target >= 1.0).
3. Lookups: `--lookup-records` rows (default 10 M) generated directly as Parquet files in the archive's layout
   (2,000 entities, `--days` days, 24 hours a day, files of 100,000 rows sorted by event id, as the writer writes
   them), then `--repeat` lookups by event id (`ArchiveQuery.event`, target under 1 s) and queries by entity and
   day (`ArchiveQuery.events`, target under 2 s); medians.

Run it on an otherwise idle machine: every figure shares the two cores with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import tidegate  # noqa: E402
from tidegate.archive.query import ArchiveQuery, parse_time  # noqa: E402
from tidegate.archive.store import ArchiveStore  # noqa: E402
from tidegate.archive.writer import SCHEMA, SpoolArchiver  # noqa: E402
from tidegate.testing.server import Server  # noqa: E402

from bench.harness import ensure_wrk, run_wrk, wrk_figures  # noqa: E402
from bench.spool_to_kafka import make_record_sets  # noqa: E402

DAY_MS = 86_400_000


def http_batch_records_per_s(work: Path, seconds: float) -> dict[str, float]:
    if not ensure_wrk():
        raise SystemExit("wrk is needed (apt-get install wrk)")
    env = {"TIDEGATE_AUTH": "false", "TIDEGATE_RATE_PER_DEVICE": "0", "TIDEGATE_ARCHIVE": "false"}
    with Server(work / "http", env) as server:
        # A short warm-up, then the measured run.
        run_wrk("batch.lua", server.url + "/api/v1/ingest/batch", 1, connections=64, threads=1, env={})
        raw = run_wrk("batch.lua", server.url + "/api/v1/ingest/batch", seconds, connections=64, threads=1, env={})
    figures = wrk_figures(raw, 100)
    return {"records_per_s": figures["records_per_s"], "non_2xx": figures["non_2xx"]}


def archive_records_per_s(work: Path, records: int) -> dict[str, float]:
    # Warm-up (untimed): the first file written in a process pays for loading pyarrow's and zstd's code.
    warm = work / "warm-up"
    warm_spool = tidegate.Spool(warm / "w0")
    for part in make_record_sets(tidegate.Validator(tidegate.Contract.telemetry()), 2000):
        warm_spool.append(part)
    warm_spool.commit()
    warm_store = ArchiveStore(str(warm / "archive"), pafs.LocalFileSystem(), local=True)
    warming = SpoolArchiver(tidegate.Spool.open_for_delivery(warm / "w0"), warm_store, "awarm", skip_topics=frozenset())
    warming.resume()
    warming.step()
    spool_dir = work / "spool" / "w0"
    spool = tidegate.Spool(spool_dir, quota_bytes=1 << 40)
    for part in make_record_sets(tidegate.Validator(tidegate.Contract.telemetry()), records):
        spool.append(part)
    spool.commit()
    spool_bytes = sum(p.stat().st_size for p in spool_dir.glob("*.seg"))
    store = ArchiveStore(str(work / "archive"), pafs.LocalFileSystem(), local=True)
    archiver = SpoolArchiver(
        tidegate.Spool.open_for_delivery(spool_dir), store, "abench", skip_topics=frozenset({"ingest-dlq"})
    )
    began, began_cpu = time.perf_counter(), time.process_time()
    archiver.resume()
    while archiver.cursor < records:
        archiver.step()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    archived = archiver.records_archived
    if archived != records:
        raise SystemExit(f"archived {archived} of {records} records")
    return {
        "records": records,
        "seconds": elapsed,
        "records_per_s": records / elapsed,
        "cpu_seconds": cpu,
        "records_per_cpu_s": records / cpu,
        "archive_bytes_per_record": store.size() / records,
        "spool_bytes_per_record": spool_bytes / records,
        "files": archiver.files_written,
    }


def generate_archive(root: Path, rows: int, days: int, entities: int = 2000) -> tuple[list[str], list[str]]:
    """`rows` archive rows as Parquet files in the writer's layout; returns sample event ids and entity ids."""
    store = ArchiveStore(str(root), pafs.LocalFileSystem(), local=True)
    start_ms = int(time.time() * 1000) // DAY_MS * DAY_MS - days * DAY_MS
    per_file = 100_000
    per_hour = max(1, rows // (days * 24))
    written = 0
    samples: list[str] = []
    random.seed(13)
    while written < rows:
        count = min(per_file, rows - written, per_hour)
        hour_index = written // per_hour
        ingest_base = start_ms + hour_index * 3_600_000
        offsets = pa.array([random.randrange(3_600_000) for _ in range(count)], pa.int64())
        ingest = pc.add(offsets, ingest_base)
        lag = pa.array([random.randrange(0, 120_000) for _ in range(count)], pa.int64())
        event_ms = pc.subtract(ingest, lag)
        ids = pa.array([os.urandom(16).hex() for _ in range(count)], pa.string())
        entity = pa.array([f"sensor-{random.randrange(entities):05d}" for _ in range(count)], pa.string())
        day = time.strftime("%Y-%m-%d", time.gmtime(ingest_base / 1000))
        hour = time.strftime("%H", time.gmtime(ingest_base / 1000))
        directory = f"raw/source=http/event_type=telemetry/event_date={day}/ingest_date={day}/hour={hour}"
        value = pc.binary_join_element_wise(
            '{"device_id":"', entity, '","event_id":"', ids,
            '","ingest_lag_ms":' , pc.cast(lag, pa.string()),
            ',"metadata":{"battery_level":85,"firmware_version":"2.1.0","site":"plant-7-line-3"},'
            '"metrics":{"humidity":47,"temperature":21.37},"server_received_at":"', day, 'T', hour,
            ':00:00.000Z","timestamp":"', day, "T", hour, ':00:00.000Z"}', "",
        )  # fmt: skip
        headers = pc.binary_join_element_wise(
            '{"event_id":"', ids, '","content-type":"application/json","schema":"telemetry/v1","source":"http"}', ""
        )
        table = pa.Table.from_arrays(
            [
                ids,
                entity,
                event_ms.cast(pa.timestamp("ms", tz="UTC")),
                ingest.cast(pa.timestamp("ms", tz="UTC")),
                lag,
                pa.array(["ACCEPTED"] * count, pa.string()),
                pc.binary_join_element_wise(directory + "/event_id=", ids, ""),
                ids,  # stands in for the hash: the same size and spread
                pa.array(["telemetry-raw"] * count, pa.string()),
                headers,
                value,
            ],
            schema=SCHEMA,
        ).sort_by("event_id")
        store.write(f"{directory}/agen-w0-{written:020d}-{written + count:020d}-0of1.parquet", table)
        samples.append(ids[count // 2].as_py())
        written += count
    entities_sampled = [f"sensor-{random.randrange(entities):05d}" for _ in range(16)]
    return samples, entities_sampled


def lookups(root: Path, rows: int, days: int, repeat: int) -> dict[str, float]:
    began = time.perf_counter()
    ids, entities = generate_archive(root, rows, days)
    generated = time.perf_counter() - began
    query = ArchiveQuery(ArchiveStore(str(root), pafs.LocalFileSystem(), local=True))
    by_id = []
    for event_id in random.sample(ids, min(repeat, len(ids))):
        began = time.perf_counter()
        found = query.event(event_id)
        by_id.append(time.perf_counter() - began)
        if found is None:
            raise SystemExit(f"{event_id} not found")
    by_entity_day = []
    today = time.time() // 86400 * 86400
    for entity in entities[:repeat]:
        day = today - 86400 * random.randrange(1, days + 1)
        start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(day))
        end = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(day + 86400))
        began = time.perf_counter()
        page = query.events(
            entity_id=entity,
            start=parse_time("from", start),
            end=parse_time("to", end),
            limit=1000,
        )
        by_entity_day.append(time.perf_counter() - began)
        if page["count"] == 0 and rows >= 1_000_000:
            raise SystemExit(f"no rows for {entity} on {start}")
    return {
        "rows": rows,
        "generate_s": generated,
        "lookup_by_event_id_s": statistics.median(by_id),
        "query_by_entity_and_day_s": statistics.median(by_entity_day),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records the archive writer archives")
    parser.add_argument("--lookup-records", type=int, default=10_000_000, help="archived rows for the lookups")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0, help="the HTTP batch run's length")
    parser.add_argument("--repeat", type=int, default=5, help="lookups and queries timed (medians)")
    parser.add_argument("--work-dir", type=Path, help="keep the data here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidegate-archive-bench-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        http = http_batch_records_per_s(work, args.seconds)
        print(f"HTTP batch path: {http['records_per_s']:,.0f} records/s ({http['non_2xx']} non-2xx)", flush=True)
        archive = archive_records_per_s(work / "writer", args.records)
        ratio = archive["records_per_s"] / http["records_per_s"]
        print(
            f"archive writer:  {archive['records_per_s']:,.0f} records/s ({archive['records']:,} records, "
            f"{archive['files']} files): {ratio:.2f}x the HTTP batch path (target >= 1.0x); "
            f"{archive['records_per_cpu_s']:,.0f} records per CPU second (the writer's process time)",
            flush=True,
        )
        archive_bytes, spool_bytes = archive["archive_bytes_per_record"], archive["spool_bytes_per_record"]
        print(
            f"bytes per record: archive {archive_bytes:.1f}, spool {spool_bytes:.1f} "
            f"({archive_bytes / spool_bytes:.2f}x)",
            flush=True,
        )
        found = lookups(work / "lookups", args.lookup_records, args.days, args.repeat)
        print(
            f"over {found['rows']:,} archived rows (generated in {found['generate_s']:.0f} s): lookup by event id "
            f"{found['lookup_by_event_id_s']:.3f} s (target < 1 s), by entity and day "
            f"{found['query_by_entity_and_day_s']:.3f} s (target < 2 s)",
            flush=True,
        )
        print(json.dumps({"http": http, "archive": archive, "lookups": found, "ratio": ratio}))


if __name__ == "__main__":
    main()
