"""Deterministic benchmark payloads: seed 001 telemetry readings, as a JSON array and as NDJSON.

Every reading's time is placed relative to a fixed reference instant (`NOW_MS`, seed 001's own timestamp), and
every validator under test checks the timestamp window against that same instant, so the bytes and the outcome
are the same on every run and every machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

NOW_MS = 1_774_606_530_123
"""2026-03-27T10:15:30.123Z, seed 001's reading: the reception time used by every benchmark."""

RECORDS_PER_DOCUMENT = 1000
DEFAULT_SEED = 1

Record = dict[str, Any]

SEED_RECORD: Record = {
    "device_id": "sensor-factory-floor-001",
    "timestamp": "2026-03-27T10:15:30.123Z",
    "metrics": {"temperature": 23.5, "humidity": 67.2, "pressure": 1013.25},
    "metadata": {"firmware_version": "2.1.0", "battery_level": 85, "signal_strength": -67},
}

_SITES = ("factory-floor", "warehouse_b", "cold-store", "roof", "lab2", "dock_east")
_FIRMWARE = ("2.1.0", "2.1.1", "2.2.0-rc1", "1.9.7")
_OFFSETS = (timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)))


def now() -> datetime:
    """The reference instant as an aware datetime."""
    return datetime.fromtimestamp(NOW_MS / 1000, UTC)


def rfc3339(moment: datetime, *, millis: bool = True) -> str:
    text = moment.isoformat(timespec="milliseconds" if millis else "seconds")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _timestamp(rng: random.Random) -> str:
    # Mostly the last six days, some up to four minutes ahead (device clocks drift); all inside the window.
    ahead = rng.random() < 0.05
    offset_ms = rng.randint(0, 4 * 60 * 1000) if ahead else -rng.randint(0, 6 * 24 * 3600 * 1000)
    moment = now() + timedelta(milliseconds=offset_ms)
    style = rng.random()
    if style < 0.85:
        return rfc3339(moment)
    if style < 0.95:
        return rfc3339(moment.astimezone(rng.choice(_OFFSETS)))
    return rfc3339(moment, millis=False)


def _reading(rng: random.Random) -> Record:
    site = rng.choice(_SITES)
    metrics: dict[str, float | int] = {
        "temperature": round(rng.uniform(12.0, 38.0), 1),
        "humidity": round(rng.uniform(25.0, 85.0), 1),
        "pressure": round(rng.uniform(985.0, 1035.0), 2),
    }
    if rng.random() < 0.3:
        metrics["co2_ppm"] = rng.randint(380, 1500)
    if rng.random() < 0.2:
        metrics["vibration_rms"] = round(rng.uniform(0.0, 4.0), 3)
    # About 1% of readings carry an out-of-range value: a warning, never a rejection.
    if rng.random() < 0.01:
        metrics[rng.choice(("temperature", "humidity", "pressure"))] = rng.choice((160.5, -60.0, 101.5, 1250.0))
    record: Record = {
        "device_id": f"sensor-{site}-{rng.randint(1, 64):03d}",
        "timestamp": _timestamp(rng),
        "metrics": metrics,
    }
    if rng.random() < 0.8:
        record["metadata"] = {
            "firmware_version": rng.choice(_FIRMWARE),
            "battery_level": rng.randint(0, 100) if rng.random() < 0.995 else 104,
            "signal_strength": rng.randint(-110, -40),
        }
    return record


def readings(count: int = RECORDS_PER_DOCUMENT, seed: int = DEFAULT_SEED) -> list[Record]:
    """`count` valid readings with varied device ids, values, metric sets and timestamp spellings."""
    rng = random.Random(seed)
    return [_reading(rng) for _ in range(count)]


def json_array(records: list[Record]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode()


def ndjson(records: list[Record]) -> bytes:
    return b"".join(json.dumps(record, separators=(",", ":")).encode() + b"\n" for record in records)


FORMATS: dict[str, tuple[str, Callable[[list[Record]], bytes]]] = {
    "json-array": ("application/json", json_array),
    "ndjson": ("application/x-ndjson", ndjson),
}
"""Benchmark format name -> (content type, encoder of a list of records)."""


def encode(fmt: str, records: list[Record]) -> bytes:
    return FORMATS[fmt][1](records)


def content_type(fmt: str) -> str:
    return FORMATS[fmt][0]


def documents(count: int = RECORDS_PER_DOCUMENT, seed: int = DEFAULT_SEED) -> dict[str, bytes]:
    """Format name -> one document of `count` readings."""
    records = readings(count, seed)
    return {fmt: encode(fmt, records) for fmt in FORMATS}


def _without(record: Record, key: str) -> Record:
    return {k: v for k, v in record.items() if k != key}


def _at(delta: timedelta) -> str:
    return rfc3339(now() + delta)


BAD_RECORDS: dict[str, Any] = {
    "device_id-space": {**SEED_RECORD, "device_id": "sensor factory 001"},
    "device_id-newline": {**SEED_RECORD, "device_id": "sensor-001\n"},
    "device_id-too-long": {**SEED_RECORD, "device_id": "x" * 65},
    "device_id-missing": _without(SEED_RECORD, "device_id"),
    "device_id-number": {**SEED_RECORD, "device_id": 1001},
    "metrics-missing": _without(SEED_RECORD, "metrics"),
    "metrics-empty": {**SEED_RECORD, "metrics": {}},
    "metric-string": {**SEED_RECORD, "metrics": {"temperature": "23.5"}},
    "metric-boolean": {**SEED_RECORD, "metrics": {"temperature": True}},
    "metrics-array": {**SEED_RECORD, "metrics": [23.5]},
    "timestamp-8-days-old": {**SEED_RECORD, "timestamp": _at(-timedelta(days=8))},
    "timestamp-10-min-ahead": {**SEED_RECORD, "timestamp": _at(timedelta(minutes=10))},
    "timestamp-no-zone": {**SEED_RECORD, "timestamp": "2026-03-27T10:15:30.123"},
    "timestamp-date-only": {**SEED_RECORD, "timestamp": "2026-03-27"},
    "timestamp-impossible-date": {**SEED_RECORD, "timestamp": "2026-02-30T10:15:30Z"},
    "timestamp-missing": _without(SEED_RECORD, "timestamp"),
    "metadata-string": {**SEED_RECORD, "metadata": "v2.1.0"},
    "not-an-object": ["sensor-factory-floor-001"],
}
"""Case name -> a reading that every validator under test must reject (on its own, wherever it sits)."""

ODD_BUT_VALID_RECORDS: dict[str, dict[str, Any]] = {
    "metadata-null": {**SEED_RECORD, "metadata": None},
    "unknown-field": {**SEED_RECORD, "location": "hall 3"},
}
"""Case name -> a reading real firmware sends that every validator under test must accept (issue 9)."""
