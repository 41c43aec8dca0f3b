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
import time
from pathlib import Path

import pyarrow as pa

from tidegate._native import Records, Spool, archive_parts, retain_freed_memory
from tidegate.archive import DUPLICATES_TOPIC
from tidegate.archive.compaction import FILE_NAME, compact_apart, plan
from tidegate.archive.store import ROW_GROUP_ROWS, ArchiveStore
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

#: Records per spool read (a range of `max_records` is read in chunks this size).
READ_CHUNK = 16_384


def records_table(reads: list[Records], skip_topics: frozenset[str]) -> list[tuple[str, pa.Table]]:
    """The archive rows of a spool range (read as `reads`), per partition directory (in a fixed order: by
    directory, then by first event id), each sorted by event id. Built natively (`tidegate._native.archive_parts`:
    the partition of each record with the arithmetic of `tidegate.archive.partition_dir`, the columns as Arrow lays
    them out, a row group at a time) and wrapped by pyarrow without a copy: no Python object per record or field."""
    tables = []
    for directory, _, chunks in archive_parts(reads, sorted(skip_topics), DUPLICATES_TOPIC, ROW_GROUP_ROWS):
        groups = [
            pa.RecordBatch.from_arrays(
                [
                    pa.Array.from_buffers(field.type, rows, [None if b is None else pa.py_buffer(b) for b in buffers])
                    for field, buffers in zip(SCHEMA, columns, strict=True)
                ],
                schema=SCHEMA,
            )
            for rows, columns in chunks
        ]
        tables.append((directory, pa.Table.from_batches(groups, schema=SCHEMA)))
    return tables


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
        compact_min_files: int = 16,
        compact_interval_s: float = 60.0,
    ) -> None:
        self.spool = spool
        self.directory = Path(spool.path)
        self.name = self.directory.name
        self.store = store
        self.writer = writer
        self.prefix = f"{writer}-{self.name}-"
        self.skip_topics = skip_topics
        self.flush_interval_s = flush_interval_s
        self.max_records = max_records
        self.compact_min_files = compact_min_files
        self.compact_interval_s = compact_interval_s
        self.files_compacted = 0
        self._last_compaction = 0.0
        self.cursor = 0
        self.records_archived = 0
        self.files_written = 0
        self.failures = 0
        self.last_error: str | None = None
        self._last_flush = 0.0
        # The writer makes and frees the same buffers file after file: kept by the allocator, they are reused
        # instead of taken afresh from the system (zeroed and faulted in) each time. Process-wide.
        retain_freed_memory()

    # ------------------------------------------------------------------------------------------------ resume

    def resume(self) -> None:
        """Finds the cursor in the archive's file names, finishing a range a crash left incomplete."""
        self._last_flush = time.monotonic()
        ranges: dict[tuple[int, int], tuple[int, set[int]]] = {}
        for relative in self.store.files(self.prefix):
            match = FILE_NAME.match(relative.rsplit("/", 1)[-1])
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
            reads, _ = self._read(first, end - first, 1 << 40)
            self._write(first, end, reads, skip_parts=present)
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
        reads, end = self._read(first, self.max_records, 256 << 20)
        self._last_flush = time.monotonic()
        if end <= first:
            return 0
        self._write(first, end, reads, skip_parts=set())
        self.cursor = end
        publish_archived(self.directory, end)
        return sum(len(records) for records in reads)

    def _read(self, first: int, max_records: int, max_bytes: int) -> tuple[list[Records], int]:
        """Durable records from `first` (at most `max_records`, about `max_bytes`), in reads of `READ_CHUNK`
        records: buffers of a few MB, which the allocator reuses, rather than one the size of the range. Returns
        them and where the range ends."""
        reads: list[Records] = []
        seq, count, size = first, 0, 0
        while count < max_records and size < max_bytes:
            records, end = self.spool.read(
                seq, max_records=min(READ_CHUNK, max_records - count), max_bytes=max_bytes - size
            )
            if end <= seq:
                break
            reads.append(records)
            count, size, seq = count + (end - seq), size + records.payload_bytes, end
        return reads, seq

    def _write(self, first: int, end: int, reads: list[Records], skip_parts: set[int]) -> None:
        parts = records_table(reads, self.skip_topics)
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

    def compact(self, now_ms: int | None = None) -> list[str]:
        """Compacts this writer's small files of partitions whose hour is over (see `tidegate.archive.compaction`);
        returns the files written."""
        self._last_compaction = time.monotonic()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        job = plan(
            self.store,
            self.writer,
            self.name,
            self.cursor,
            before_ms=now_ms - 60_000,
            min_files=self.compact_min_files,
        )
        written = compact_apart(job) if job is not None else []
        self.files_compacted += len(written)
        return written

    def compaction_due(self) -> bool:
        return time.monotonic() - self._last_compaction >= self.compact_interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """Archives as records become durable, until `stop`; then archives what is left."""
        await asyncio.to_thread(self.resume)
        while not stop.is_set():
            try:
                if self.due():
                    await asyncio.to_thread(self.step)
                    self.last_error = None
                    continue
                if self.compaction_due():
                    await asyncio.to_thread(self.compact)
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
            "files_compacted": self.files_compacted,
            "failures": self.failures,
            "last_error": self.last_error,
            "lag_records": max(0, self.spool.durable_seq - self.cursor),
        }


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
