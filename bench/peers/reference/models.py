"""Pydantic models (seed 001, sections 2 and 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class TelemetryPayload(BaseModel):
    device_id: str = Field(..., pattern=r"^[a-zA-Z0-9\-_]{1,64}$")
    timestamp: datetime
    metrics: dict[str, Any] = Field(..., min_length=1)
    metadata: dict[str, Any] = {}

    @field_validator("timestamp")
    @classmethod
    def timestamp_not_in_future(cls, v: datetime) -> datetime:
        if _aware(v) > datetime.now(UTC) + timedelta(minutes=5):
            raise ValueError("Timestamp cannot be more than 5 minutes in the future")
        return v

    @field_validator("timestamp")
    @classmethod
    def timestamp_not_too_old(cls, v: datetime) -> datetime:
        if _aware(v) < datetime.now(UTC) - timedelta(days=7):
            raise ValueError("Timestamp cannot be more than 7 days old")
        return v


class TelemetryReading(BaseModel):
    timestamp: datetime
    metrics: dict[str, Any]


class BatchPayload(BaseModel):
    device_id: str
    batch_id: str
    readings: list[TelemetryReading] = Field(..., max_length=1000)


# Define expected ranges per metric type
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (-50.0, 150.0),
    "humidity": (0.0, 100.0),
    "pressure": (800.0, 1200.0),
    "battery_level": (0, 100),
    "signal_strength": (-120, 0),
}


def validate_metric_ranges(metrics: dict[str, Any]) -> list[str]:
    warnings = []
    for key, value in metrics.items():
        if key in METRIC_RANGES:
            min_val, max_val = METRIC_RANGES[key]
            if not (min_val <= value <= max_val):
                warnings.append(f"{key}={value} outside expected range [{min_val}, {max_val}]")
    return warnings
