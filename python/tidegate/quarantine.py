"""Quarantine: what tidegate refuses is kept, as received, on the dead-letter topic, for investigation.

A rejected record (a JSON array's element, an NDJSON line, a CBOR item, a batch's reading) or a body refused as a
whole (malformed, an unsupported type or encoding, too large once decoded, telemetry for another device) becomes
one dead-letter record: value its bytes as received, key the device, headers `dlq-reason` (what the client's
problem+json says), `dlq-stage` (`decode`, `contract`, `auth`, or MQTT's `route`), `dlq-source` (`http`,
`mqtt`), `dlq-id`, `content-type`, ... It goes through the spool with the request's accepted records, so it is
durable before the answer, and the delivery process sends it to `kafka_topic_dead_letter` like any record. HTTP
and MQTT share this path (`IngestEdge.ingest_body`).

Bounded per device: each item costs its bytes plus `ITEM_OVERHEAD` from the device's quarantine budget (a token
bucket in bytes, `quarantine_device_bytes_per_s` up to `quarantine_device_burst_bytes`, in a memory-mapped table
shared by the host's workers). Past the budget an item is counted in `tidegate_quarantine_dropped_total` and
not stored; the client's answer is the same either way. Requests refused before their body is read (no or an
unknown key, a bad header, shed, over the device's rate) are not quarantined: without a key there is no device to
charge, so anyone could fill the spool, and a request refused on its headers has nothing to investigate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from tidegate._native import QuarantineItem, RateTable, RecordBatch, quarantine_records
from tidegate.config import Settings
from tidegate.metrics import Metrics
from tidegate.problems import Problem

#: What every item costs from its device's budget on top of its bytes: a flood of empty items is bounded too.
ITEM_OVERHEAD = 256
#: The budget charged when no device is known (authentication off, or an MQTT topic naming no device).
UNATTRIBUTED = "-"
#: The response header giving how many of the request's rejected items were quarantined.
QUARANTINED_HEADER = "X-Tidegate-Quarantined"


@dataclass(frozen=True)
class Source:
    """Where a body came from, as its quarantined items say."""

    name: str = "http"
    headers: tuple[tuple[str, bytes], ...] = ()
    """Added to each quarantined item (MQTT's `mqtt-topic`)."""
    undecodable_retried: bool = False
    """A malformed body will be tried another way (MQTT's JSON that may be NDJSON): not kept yet."""


HTTP = Source()


def problem_reason(problem: Problem) -> str:
    """A whole-body refusal's reason, as its problem+json gives it: the detail, then each `path: message`."""
    return "; ".join([problem.detail, *(f"{error['path']}: {error['message']}" for error in problem.errors)])


def whole_body(body: bytes, problem: Problem, stage: str, content_type: str) -> QuarantineItem:
    """The one item of a body refused as a whole: the body as it was sent (still content-encoded)."""
    return QuarantineItem(body, stage=stage, reason=problem_reason(problem), content_type=content_type)


class Quarantine:
    """One worker's quarantine: the budget (shared by the host's workers), the records and the metrics."""

    def __init__(self, settings: Settings, metrics: Metrics, budget: RateTable) -> None:
        self.settings = settings
        self.metrics = metrics
        self.budget = budget
        self.enabled = settings.quarantine

    def records(
        self,
        items: Sequence[QuarantineItem],
        *,
        body: bytes,
        source: Source,
        device_id: str | None,
        schema: str | None,
        priority: str | None,
        headers: dict[bytes, str],
        received_ms: int,
    ) -> RecordBatch:
        """The dead-letter records of the items of `body` (the request's, as received) within `device_id`'s budget
        (the others are counted as dropped). An item's id (`dlq-id`) names it in that body: a retry or an MQTT
        redelivery is a duplicate, not a second copy."""
        if not (self.enabled and items):
            return RecordBatch()
        # An item is charged what it takes: at most a record's worth (a longer one is cut to fit).
        limit = self.settings.max_record_bytes
        costs = [min(len(item.raw), limit) + ITEM_OVERHEAD for item in items]
        granted = self.budget.take_each(device_id or UNATTRIBUTED, costs, time.time_ns() // 1000)
        kept = [item for item, ok in zip(items, granted, strict=True) if ok]
        if dropped := len(items) - len(kept):
            self.metrics.quarantine_dropped.inc((), dropped)
        common: list[tuple[str, bytes]] = [("dlq-source", source.name.encode())]
        if device_id is not None:
            common.append(("device_id", device_id.encode()))
        if schema is not None:
            common.append(("schema", schema.encode()))
        # A whole body is kept as it was sent: its encoding travels with it.
        if any(item.index is None for item in kept) and (encoding := headers.get(b"content-encoding")):
            common.append(("content-encoding", encoding.encode()))
        trace = (headers.get(b"traceparent"), headers.get(b"tracestate"))
        for name, value in (("priority", priority), ("traceparent", trace[0]), ("tracestate", trace[1])):
            if value is not None:
                common.append((name, value.encode()))
        common.extend(source.headers)
        return quarantine_records(
            kept,
            body=body,
            topic=self.settings.kafka_topic_dead_letter,
            key=device_id,
            headers=common,
            timestamp_ms=received_ms,
            max_record_bytes=self.settings.max_record_bytes,
        )

    def count(self, records: RecordBatch, duplicates: set[str]) -> int:
        """Counts the quarantined records stored (a repeat of one already kept, same `dlq-id`, is not); returns how
        many there were."""
        stored = 0
        seen = set(duplicates)
        for _key, _value, headers, _timestamp in records.records():
            fields = dict(headers)
            quarantine_id = fields["dlq-id"].decode()
            if quarantine_id in seen:
                continue
            seen.add(quarantine_id)
            self.metrics.quarantined.inc((fields["dlq-stage"].decode(),))
            stored += 1
        return stored
