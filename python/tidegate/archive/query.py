"""Investigation queries over the archive, run by DuckDB on the Parquet files (no scanner of our own): one event
and every occurrence of it, events by entity / source / type / time (paginated), late arrivals, counts per hour.

Every function opens its own in-memory DuckDB connection (cheap), so callers may run them in threads (the HTTP
endpoints do, off the event loop). Times are Unix milliseconds or ISO 8601 text; answers are plain dicts, times
in them RFC 3339 UTC text.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow.dataset as ds

from tidegate.archive.compaction import visible
from tidegate.archive.store import ArchiveStore

__all__ = [
    "MAX_PAGE",
    "ArchiveQuery",
    "InvalidQuery",
    "parse_time",
]

MAX_PAGE = 1000

#: The columns an answer shows, in order (the record's value last).
COLUMNS = (
    "event_id",
    "status",
    "source",
    "event_type",
    "entity_id",
    "event_time",
    "ingest_time",
    "ingest_lag_ms",
    "archive_key",
    "payload_blake3",
    "topic",
    "headers",
    "value",
)


class InvalidQuery(ValueError):
    """A parameter that cannot be used; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parse_time(parameter: str, text: str | None) -> dt.datetime | None:
    """ISO 8601 text (a date, or a date and time; UTC when no offset is given) or Unix milliseconds."""
    if text is None or text == "":
        return None
    try:
        if text.lstrip("-").isdigit():
            return dt.datetime.fromtimestamp(int(text) / 1000, dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InvalidQuery(parameter, f"not a time: {text[:64]!r} (ISO 8601, or Unix milliseconds)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _rfc3339(value: object) -> object:
    if isinstance(value, dt.datetime):
        utc = value.astimezone(dt.UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _row(names: Sequence[str], values: Sequence[object]) -> dict[str, Any]:
    row = {name: _rfc3339(value) for name, value in zip(names, values, strict=True)}
    headers, value = row.get("headers"), row.pop("value", None)
    if isinstance(headers, str):
        row["headers"] = json.loads(headers)
    if isinstance(value, str):
        row["record"] = json.loads(value)
    return row


def _encode_cursor(values: Sequence[object]) -> str:
    return base64.urlsafe_b64encode(json.dumps([_rfc3339(v) for v in values]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != 3:
            raise ValueError(cursor)
        return [parse_time("cursor", values[0]), str(values[1]), parse_time("cursor", values[2])]
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidQuery):
        raise InvalidQuery("cursor", "not a cursor this service handed out") from None


class ArchiveQuery:
    """The queries, over one archive."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store

    def _connect(self) -> duckdb.DuckDBPyConnection | None:
        """A connection with the view `archive` over every file; None while the archive holds no file."""
        connection = duckdb.connect()
        every = self.store.files()
        # Files a compacted file supersedes are left out (they hold the same rows).
        shown = visible(every)
        if self.store.local:
            if not shown:
                connection.close()
                return None
            if len(shown) == len(every):
                source = "'" + f"{self.store.root}/raw/**/*.parquet".replace("'", "''") + "'"
            else:
                source = "[" + ", ".join("'" + self.store.path(f).replace("'", "''") + "'" for f in shown) + "]"
            connection.execute(
                # union_by_name: files of an older layout (a column missing) read as NULL there.
                f"CREATE VIEW archive AS SELECT * FROM read_parquet({source}, hive_partitioning = true, "
                "union_by_name = true, "
                "hive_types = {'event_date': DATE, 'ingest_date': DATE, 'hour': INTEGER, 'source': VARCHAR, "
                "'event_type': VARCHAR})"
            )
            return connection
        # A bucket: DuckDB's httpfs extension would be downloaded at run time, so pyarrow reads the objects and
        # DuckDB queries them through Arrow (filters are pushed down to the dataset).
        files = [self.store.path(relative) for relative in shown]
        if not files:
            connection.close()
            return None
        dataset = ds.dataset(
            files,
            filesystem=self.store.filesystem,
            format="parquet",
            partitioning="hive",
            partition_base_dir=self.store.path(""),
        )
        connection.register("archive_files", dataset)
        connection.execute(
            "CREATE VIEW archive AS SELECT * REPLACE (CAST(event_date AS DATE) AS event_date, "
            "CAST(ingest_date AS DATE) AS ingest_date, CAST(hour AS INTEGER) AS hour) FROM archive_files"
        )
        return connection

    def _select(self, sql: str, parameters: Sequence[object]) -> tuple[list[str], list[tuple[Any, ...]]]:
        connection = self._connect()
        if connection is None:
            return [], []
        try:
            result = connection.execute(sql, list(parameters))
            names = [column[0] for column in result.description or ()]
            return names, result.fetchall()
        finally:
            connection.close()

    # ------------------------------------------------------------------------------------------------ queries

    def event(self, event_id: str) -> dict[str, Any] | None:
        """The record, its metadata, and every occurrence (the accepted one and each duplicate), oldest first; None
        when the archive holds no row of that id."""
        names, rows = self._select(
            f"SELECT {', '.join(COLUMNS)} FROM archive WHERE event_id = ? "
            "ORDER BY status = 'DUPLICATE', ingest_time, archive_key",
            [event_id.lower()],
        )
        if not rows:
            return None
        occurrences = [_row(names, row) for row in rows]
        first = occurrences[0]
        return {
            "event_id": event_id.lower(),
            "status": first["status"],
            "record": first.get("record"),
            "metadata": {k: v for k, v in first.items() if k not in ("record", "event_id")},
            "duplicates": sum(1 for o in occurrences if o["status"] == "DUPLICATE"),
            "occurrences": [{k: v for k, v in o.items() if k != "record"} for o in occurrences],
        }

    def events(
        self,
        *,
        entity_id: str | None = None,
        source: str | None = None,
        event_type: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Rows by entity, source, event type and event time (`start` inclusive, `end` exclusive), in event-time
        order, `limit` at a time; `next_cursor` continues where a page stopped (None on the last page)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery("limit", f"must be within 1 and {MAX_PAGE}")
        where, parameters = self._filters(
            entity_id, source, event_type, start, end, columns=("event_time", "event_date")
        )
        if status is not None:
            where.append("status = ?")
            parameters.append(status.upper())
        if cursor:
            after = _decode_cursor(cursor)
            where.append("(event_time, event_id, ingest_time) > (?, ?, ?)")
            parameters.extend(after)
        names, rows = self._select(
            f"SELECT {', '.join(COLUMNS)} FROM archive WHERE {' AND '.join(where) or 'true'} "
            "ORDER BY event_time, event_id, ingest_time LIMIT ?",
            [*parameters, limit + 1],
        )
        page = [_row(names, row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            index = {name: i for i, name in enumerate(names)}
            next_cursor = _encode_cursor(
                [last[index["event_time"]], last[index["event_id"]], last[index["ingest_time"]]]
            )
        return {"count": len(page), "events": page, "next_cursor": next_cursor}

    def late(
        self,
        min_lag_ms: int,
        *,
        source: str | None = None,
        event_type: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Records that arrived more than `min_lag_ms` after their own time, received within `start`..`end`,
        the latest first."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery("limit", f"must be within 1 and {MAX_PAGE}")
        where, parameters = self._filters(None, source, event_type, start, end, columns=("ingest_time", "ingest_date"))
        where.append("ingest_lag_ms > ?")
        parameters.append(min_lag_ms)
        names, rows = self._select(
            f"SELECT {', '.join(c for c in COLUMNS if c not in ('headers', 'value'))} FROM archive "
            f"WHERE {' AND '.join(where)} ORDER BY ingest_lag_ms DESC, event_id LIMIT ?",
            [*parameters, limit],
        )
        return {"min_lag_ms": min_lag_ms, "count": len(rows), "events": [_row(names, row) for row in rows]}

    def hourly(
        self,
        *,
        source: str | None = None,
        event_type: str | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Rows per hour of reception, source and event type: accepted, duplicates, late-arriving share."""
        where, parameters = self._filters(None, source, event_type, start, end, columns=("ingest_time", "ingest_date"))
        names, rows = self._select(
            "SELECT ingest_date + to_hours(hour) AS hour, source, event_type, "
            "count(*) FILTER (WHERE status = 'ACCEPTED') AS accepted, "
            "count(*) FILTER (WHERE status = 'DUPLICATE') AS duplicates, "
            "max(ingest_lag_ms) AS max_ingest_lag_ms "
            f"FROM archive WHERE {' AND '.join(where) or 'true'} "
            "GROUP BY ALL ORDER BY hour, source, event_type",
            parameters,
        )
        hours = []
        for row in rows:
            item = _row(names, row)
            hour = row[0]
            item["hour"] = hour.strftime("%Y-%m-%dT%H:00:00Z") if isinstance(hour, dt.datetime) else str(hour)
            hours.append(item)
        return {"hours": hours}

    def between(
        self,
        start: dt.datetime | None,
        end: dt.datetime | None,
        *,
        source: str | None = None,
        event_type: str | None = None,
    ) -> duckdb.DuckDBPyConnection | None:
        """Accepted records of event time `start`..`end` for replay: a connection whose pending result yields
        (event_id, entity_id, topic, headers, value, ingest_time) rows in event-time order; None when the archive
        is empty. The caller fetches in chunks and closes it."""
        where, parameters = self._filters(None, source, event_type, start, end, columns=("event_time", "event_date"))
        where.append("status = 'ACCEPTED'")
        connection = self._connect()
        if connection is None:
            return None
        connection.execute(
            "SELECT event_id, entity_id, topic, headers, value, ingest_time FROM archive "
            f"WHERE {' AND '.join(where)} ORDER BY event_time, event_id",
            parameters,
        )
        return connection

    def count_between(
        self,
        start: dt.datetime | None,
        end: dt.datetime | None,
        *,
        source: str | None = None,
        event_type: str | None = None,
    ) -> int:
        """How many rows `between` yields."""
        where, parameters = self._filters(None, source, event_type, start, end, columns=("event_time", "event_date"))
        where.append("status = 'ACCEPTED'")
        _, rows = self._select(f"SELECT count(*) FROM archive WHERE {' AND '.join(where)}", parameters)
        return int(rows[0][0]) if rows else 0

    def count(self) -> int:
        _, rows = self._select("SELECT count(*) FROM archive", [])
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _filters(
        entity_id: str | None,
        source: str | None,
        event_type: str | None,
        start: dt.datetime | None,
        end: dt.datetime | None,
        *,
        columns: tuple[str, str],
    ) -> tuple[list[str], list[object]]:
        """Conditions on entity, source, type, and `start`..`end` on `columns` (a time and its date partition)."""
        time_column, date_column = columns
        where: list[str] = []
        parameters: list[object] = []
        for column, value in (("entity_id", entity_id), ("source", source), ("event_type", event_type)):
            if value is not None and value != "":
                where.append(f"{column} = ?")
                parameters.append(value)
        # The date partition is filtered too, so DuckDB skips whole directories.
        if start is not None:
            where.extend([f"{time_column} >= ?", f"{date_column} >= ?"])
            parameters.extend([start, start.astimezone(dt.UTC).date()])
        if end is not None:
            where.extend([f"{time_column} < ?", f"{date_column} <= ?"])
            parameters.extend([end, end.astimezone(dt.UTC).date()])
        return where, parameters
