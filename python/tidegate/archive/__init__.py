"""Seed 004's immutable archive: every accepted record and every duplicate occurrence, as Parquet (zstd), in
Hive-style partitions, written by the delivery process from the spool (`tidegate.archive.writer`), queried with
DuckDB (`tidegate.archive.query`), re-published to Kafka by `tidegate replay` (`tidegate.archive.replay`).

The layout, under the archive's root (`<data_dir>/archive`, a directory, or `s3://bucket/prefix`):

    raw/source=<http|mqtt>/event_type=<telemetry|event|...>/event_date=YYYY-MM-DD/ingest_date=YYYY-MM-DD/hour=HH/
        <writer>-<spool>-<first seq>-<end seq>-<part>of<parts>.parquet

`source` is where the record came in (`http`, `mqtt`), `event_type` its contract (`telemetry` for readings and
batch readings, `event` for seed 004's events), `event_date` the UTC date of its own time (`timestamp`,
`event_time`), `ingest_date` and `hour` the UTC date and hour tidegate received it. A record's `archive_key` is its
partition directory and its event id, `raw/source=http/event_type=event/event_date=2025-12-28/
ingest_date=2026-12-01/hour=05/event_id=0aa78653629532d043f0b5468cf54e1b`: computed at ingest from what the answer
already holds (`archive_key()`), and again by the archive writer from the spooled record, with the same function
of the same numbers, so the key in an answer names the directory the row lands in (and the row, with the event
id). A duplicate occurrence is archived as a row of its own (status `DUPLICATE`) in the partition of its own
arrival.

Files are written once under a name no other write uses (the writer's id, the spool, the range of spool sequence
numbers the file holds, which of the range's files it is), to a temporary name first, fsynced and renamed; the
system never overwrites or deletes one.
"""

from __future__ import annotations

import functools
import time

__all__ = ["DUPLICATES_TOPIC", "archive_key", "archive_keys", "event_type_of", "partition_dir"]

#: The spool topic of duplicate occurrences: kept for the archive, never sent to Kafka.
DUPLICATES_TOPIC = "tidegate-duplicates"

RAW = "raw"


def event_type_of(schema: str) -> str:
    """The `event_type` partition of a record from its `schema` header (`telemetry/v1` -> `telemetry`)."""
    return schema.partition("/")[0] or "unknown"


@functools.lru_cache(maxsize=4096)
def _day(day: int) -> str:
    """The UTC date of a day number (days since 1970-01-01)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def partition_dir(source: str, event_type: str, event_ms: int, ingest_ms: int) -> str:
    """The partition directory (relative to the archive's root) of a record received at `ingest_ms` whose own time
    is `event_ms` (Unix milliseconds, UTC)."""
    hour = ingest_ms // 3_600_000 % 24
    return (
        f"{RAW}/source={source}/event_type={event_type}/event_date={_day(event_ms // 86_400_000)}/"
        f"ingest_date={_day(ingest_ms // 86_400_000)}/hour={hour:02d}"
    )


def archive_key(source: str, event_type: str, ingest_ms: int, ingest_lag_ms: int | None, event_id: str) -> str:
    """A record's archive key: its partition directory and its event id. The record's own time is its reception
    time less its `ingest_lag_ms` (which the answer and the spooled record both carry); a record without one is
    dated by its reception."""
    event_ms = ingest_ms - ingest_lag_ms if ingest_lag_ms is not None else ingest_ms
    return f"{partition_dir(source, event_type, event_ms, ingest_ms)}/event_id={event_id}"


def archive_keys(
    source: str, event_type: str, ingest_ms: int, lags: list[int | None], event_ids: list[str | None]
) -> list[str | None]:
    """`archive_key` of each record of one request (None for a rejected one), cheaply: the reception part once."""
    head = f"{RAW}/source={source}/event_type={event_type}/event_date="
    tail = f"/ingest_date={_day(ingest_ms // 86_400_000)}/hour={ingest_ms // 3_600_000 % 24:02d}/event_id="
    return [
        None if event_id is None else f"{head}{_day((ingest_ms - (lag or 0)) // 86_400_000)}{tail}{event_id}"
        for event_id, lag in zip(event_ids, lags, strict=True)
    ]
