"""The archive writer: in the delivery process, one per worker spool, beside (and independent of) the Kafka
forwarder. It reads the spool from its own cursor, turns each range of records into one Parquet file per partition,
and publishes how far it got (`archived` in the spool directory), which the worker's cleanup obeys together with
Kafka's checkpoint: a segment is deleted only once both have passed it.

The cursor is the archive itself. Each file's name holds the spool sequence range it was written from and how many
files that range made (`<writer>-<spool>-<first>-<end>-<part>of<parts>.parquet`, the same in the file's metadata),
so a restarted writer goes on from the end of the last range whose files are all there. A crash between two files
of one range leaves it incomplete: the range is read again and only its missing files are written (a range is
split into partitions in a fixed order, so each part holds the same records again). Nothing is lost and no row is
written twice.

What is archived: every record of a contract (telemetry, batch readings, events, custom) as `ACCEPTED`, and every
duplicate occurrence (spooled on `DUPLICATES_TOPIC` by the ingest edge, never sent to Kafka) as `DUPLICATE`.
Dead-letter records (flagged copies, MQTT messages that could not be taken) are not: they are not records of the
archive's kind, and they stay on the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tidegate._native import RecordBatch, Spool
from tidegate.archive import DUPLICATES_TOPIC, event_type_of, partition_dir
from tidegate.archive.store import ArchiveStore
from tidegate.delivery.spool import publish_archived

__all__ = ["SCHEMA", "SpoolArchiver", "records_table"]

log = logging.getLogger("tidegate.archive")

#: The columns of every archive file; the partition columns (`source`, `event_type`, `event_date`, `ingest_date`,
#: `hour`) are in the directory names, as Hive lays them out.
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("entity_id", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("ingest_time", pa.timestamp("ms", tz="UTC")),
        ("ingest_lag_ms", pa.int64()),
        ("status", pa.string()),
        ("archive_key", pa.string()),
        ("payload_blake3", pa.string()),
        ("topic", pa.string()),
        ("headers", pa.string()),
        ("value", pa.string()),
    ]
)

_FILE_NAME = re.compile(
    r"^(?P<writer>[^-]+)-(?P<spool>[^-]+)-(?P<first>\d+)-(?P<end>\d+)-(?P<part>\d+)of(?P<parts>\d+)"
)


#: `RecordBatch.archive_columns`'s mark of a record without an integer `ingest_lag_ms`.
NO_LAG = -(2**63)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def _topic_table(batch: RecordBatch, topic: str) -> pa.Table:
    count, buffers = batch.archive_columns(topic)

    def strings(index: int) -> pa.Array:
        offsets, data = pa.py_buffer(buffers[2 * index]), pa.py_buffer(buffers[2 * index + 1])
        return pa.Array.from_buffers(pa.large_string(), count, [None, offsets, data]).cast(pa.string())

    def integers(index: int) -> pa.Array:
        return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(buffers[index])])

    keys, ids, sources, schemas, headers, values, hashes = (strings(i) for i in range(7))
    lags = integers(15)
    return pa.table(
        {
            "event_id": ids,
            "entity_id": pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys),
            "ingest_ms": integers(14),
            "ingest_lag_ms": pc.if_else(pc.equal(lags, NO_LAG), pa.scalar(None, pa.int64()), lags),
            "status": pa.array(["DUPLICATE" if topic == DUPLICATES_TOPIC else "ACCEPTED"] * count, pa.string()),
            "source": sources,
            "schema": schemas,
            "payload_blake3": hashes,
            "topic": pa.array([topic] * count, pa.string()),
            "headers": headers,
            "value": values,
        }
    )


def records_table(batch: RecordBatch, skip_topics: frozenset[str]) -> list[tuple[str, pa.Table]]:
    """The archive rows of a spool range, per partition directory (in order), each sorted by event id. Fields are
    read natively in one pass and the partitions computed on whole columns, with the arithmetic of
    `tidegate.archive.partition_dir`."""
    tables = [_topic_table(batch, topic) for topic in batch.topics if topic not in skip_topics]
    tables = [table for table in tables if len(table)]
    if not tables:
        return []
    table = pa.concat_tables(tables)
    ingest_ms = table["ingest_ms"]
    lag = table["ingest_lag_ms"]
    event_ms = pc.if_else(pc.is_null(lag), ingest_ms, pc.subtract(ingest_ms, lag))

    def floor_div(values: pa.ChunkedArray, unit: int) -> pa.ChunkedArray:
        return pc.floor(pc.divide(pc.cast(values, pa.float64()), float(unit))).cast(pa.int64())

    table = table.append_column("event_day", floor_div(event_ms, DAY_MS))
    table = table.append_column("ingest_hour", floor_div(ingest_ms, HOUR_MS))
    table = table.append_column("event_ms", event_ms)
    groups = table.group_by(["source", "schema", "event_day", "ingest_hour"]).aggregate([])
    parts: list[tuple[str, pa.Table]] = []
    for source, schema, day, hour in zip(*(groups[name].to_pylist() for name in groups.column_names), strict=True):
        directory = partition_dir(source, event_type_of(schema), day * DAY_MS, hour * HOUR_MS)
        mask = pc.and_(
            pc.and_(pc.equal(table["source"], source), pc.equal(table["schema"], schema)),
            pc.and_(pc.equal(table["event_day"], day), pc.equal(table["ingest_hour"], hour)),
        )
        rows = table.filter(mask).sort_by("event_id")
        parts.append(
            (
                directory,
                pa.Table.from_arrays(
                    [
                        rows["event_id"],
                        rows["entity_id"],
                        rows["event_ms"].cast(pa.timestamp("ms", tz="UTC")),
                        rows["ingest_ms"].cast(pa.timestamp("ms", tz="UTC")),
                        rows["ingest_lag_ms"],
                        rows["status"],
                        pc.binary_join_element_wise(f"{directory}/event_id=", rows["event_id"], ""),
                        rows["payload_blake3"],
                        rows["topic"],
                        rows["headers"],
                        rows["value"],
                    ],
                    schema=SCHEMA,
                ),
            )
        )
    # A fixed order (so a range read again makes the same files): by directory, then by the first event id.
    return sorted(parts, key=lambda part: (part[0], part[1]["event_id"][0].as_py()))


class SpoolArchiver:
    """Archives one worker spool (opened with `Spool.open_for_delivery`); see the module docstring."""

    def __init__(
        self,
        spool: Spool,
        store: ArchiveStore,
        writer: str,
        *,
        skip_topics: frozenset[str],
        flush_interval_s: float = 1.0,
        max_records: int = 100_000,
    ) -> None:
        self.spool = spool
        self.directory = Path(spool.path)
        self.name = self.directory.name
        self.store = store
        self.prefix = f"{writer}-{self.name}-"
        self.skip_topics = skip_topics
        self.flush_interval_s = flush_interval_s
        self.max_records = max_records
        self.cursor = 0
        self.records_archived = 0
        self.files_written = 0
        self.failures = 0
        self.last_error: str | None = None
        self._last_flush = 0.0

    # ------------------------------------------------------------------------------------------------ resume

    def resume(self) -> None:
        """Finds the cursor in the archive's file names, finishing a range a crash left incomplete."""
        self._last_flush = time.monotonic()
        ranges: dict[tuple[int, int], tuple[int, set[int]]] = {}
        for relative in self.store.files(self.prefix):
            match = _FILE_NAME.match(relative.rsplit("/", 1)[-1])
            if match is None:
                continue
            span = (int(match["first"]), int(match["end"]))
            parts, present = ranges.setdefault(span, (int(match["parts"]), set()))
            present.add(int(match["part"]))
        if not ranges:
            self.cursor = 0
            return
        first, end = max(ranges)
        parts, present = ranges[(first, end)]
        if len(present) < parts:
            log.warning(json.dumps({"event": "archive_range_incomplete", "spool": self.name, "range": [first, end]}))
            batch = RecordBatch()
            seq = first
            while seq < end:
                read, seq = self.spool.read(seq, max_records=end - seq, max_bytes=1 << 40)
                if len(read) == 0:
                    break
                batch.extend(read)
            self._write(first, end, batch, skip_parts=present)
        self.cursor = end
        publish_archived(self.directory, self.cursor)

    # ------------------------------------------------------------------------------------------------ writing

    def due(self) -> bool:
        """Whether there is something to archive now: a full file's worth, or anything once the interval passed."""
        waiting = self.spool.durable_seq - self.cursor
        if waiting <= 0:
            return False
        return waiting >= self.max_records or time.monotonic() - self._last_flush >= self.flush_interval_s

    def step(self) -> int:
        """Archives one range of durable records (at most `max_records`); returns the records it held."""
        first = self.cursor
        batch, end = self.spool.read(first, max_records=self.max_records, max_bytes=256 << 20)
        self._last_flush = time.monotonic()
        if end <= first:
            return 0
        self._write(first, end, batch, skip_parts=set())
        self.cursor = end
        publish_archived(self.directory, end)
        return len(batch)

    def _write(self, first: int, end: int, batch: RecordBatch, skip_parts: set[int]) -> None:
        parts = records_table(batch, self.skip_topics)
        # A range without an archivable record (dead letters only) leaves no file: after a restart it is read
        # again and again leaves none.
        for index, (directory, rows) in enumerate(parts):
            if index in skip_parts:
                continue
            name = f"{self.prefix}{first:020d}-{end:020d}-{index}of{len(parts)}.parquet"
            metadata = {
                b"tidegate.spool": self.name.encode(),
                b"tidegate.first_seq": str(first).encode(),
                b"tidegate.end_seq": str(end).encode(),
            }
            if self.store.write(f"{directory}/{name}", rows.replace_schema_metadata(metadata)):
                self.files_written += 1
                self.records_archived += len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Archives as records become durable, until `stop`; then archives what is left."""
        await asyncio.to_thread(self.resume)
        while not stop.is_set():
            try:
                if self.due():
                    await asyncio.to_thread(self.step)
                    self.last_error = None
                    continue
            except Exception as error:  # a full disk, a bucket away: keep the cursor, try again
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                log.error(json.dumps({"event": "archive_failed", "spool": self.name, "error": self.last_error}))
                await _sleep_or_stop(stop, 1.0)
                continue
            await _sleep_or_stop(stop, min(0.05, self.flush_interval_s))

    async def drain(self) -> None:
        """Archives everything durable now (at shutdown, once the workers have stopped)."""
        while self.spool.durable_seq > self.cursor:
            if await asyncio.to_thread(self.step) == 0 and self.spool.durable_seq <= self.cursor:
                break

    def metrics(self) -> dict[str, object]:
        return {
            "cursor": self.cursor,
            "records_archived": self.records_archived,
            "files_written": self.files_written,
            "failures": self.failures,
            "last_error": self.last_error,
            "lag_records": max(0, self.spool.durable_seq - self.cursor),
        }


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
