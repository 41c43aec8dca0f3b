"""`tidegate replay`: re-publishes archived records to Kafka, as they were first sent (key, value, headers, the
same event id), plus a `replay` header (the replay's start time, RFC 3339), so consumers can tell a replayed copy
from the first delivery and deduplicate it exactly by event id. Only `ACCEPTED` rows are replayed (a duplicate
occurrence is the same record again), in event-time order, to each record's own topic or to `--topic`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from typing import IO, Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]

from tidegate.archive.query import ArchiveQuery
from tidegate.delivery.kafka import KafkaSettings, producer_kwargs

__all__ = ["Progress", "replay"]

CHUNK_ROWS = 5_000


class Progress:
    """A one-line progress bar on a terminal (`\\r`-redrawn), or a line every few seconds elsewhere."""

    def __init__(self, total: int, out: IO[str] = sys.stderr, width: int = 30) -> None:
        self.total = total
        self.out = out
        self.width = width
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._tty = out.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= (0.1 if self._tty else 5.0) or self.done >= self.total:
            self._drawn = now
            self.draw()

    def draw(self) -> None:
        share = self.done / self.total if self.total else 1.0
        filled = round(share * self.width)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        line = f"replay [{'#' * filled}{'.' * (self.width - filled)}] {self.done:,}/{self.total:,} ({rate:,.0f}/s)"
        self.out.write(("\r" + line) if self._tty else (line + "\n"))
        self.out.flush()

    def finish(self) -> None:
        self.draw()
        if self._tty:
            self.out.write("\n")
        self.out.flush()


async def replay(
    query: ArchiveQuery,
    kafka: KafkaSettings,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    source: str | None = None,
    event_type: str | None = None,
    topic: str | None = None,
    out: IO[str] = sys.stderr,
) -> int:
    """Publishes the matching records (acks as configured, in order per partition); returns how many."""
    total = await asyncio.to_thread(query.count_between, start, end, source=source, event_type=event_type)
    progress = Progress(total, out)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    producer = AIOKafkaProducer(**producer_kwargs(kafka))
    await producer.start()
    sent = 0
    try:
        connection = await asyncio.to_thread(query.between, start, end, source=source, event_type=event_type)
        if connection is None:
            progress.finish()
            return 0
        try:
            while rows := await asyncio.to_thread(connection.fetchmany, CHUNK_ROWS):
                futures = []
                for event_id, entity_id, original_topic, headers_json, value, ingest_time in rows:
                    headers: dict[str, Any] = json.loads(headers_json)
                    headers["event_id"] = event_id
                    record_headers = [(name, str(v).encode()) for name, v in headers.items() if name != "replay"]
                    record_headers.append(("replay", stamp))
                    futures.append(
                        await producer.send(
                            topic or original_topic,
                            value=value.encode(),
                            key=None if entity_id is None else entity_id.encode(),
                            headers=record_headers,
                            timestamp_ms=int(ingest_time.timestamp() * 1000),
                        )
                    )
                await asyncio.gather(*futures)
                sent += len(rows)
                progress.advance(len(rows))
        finally:
            connection.close()
    finally:
        await producer.stop()
    progress.finish()
    return sent
