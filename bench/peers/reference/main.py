"""The FastAPI application (seed 001, section 7: `app/main.py`)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from .auth import verify_device
from .health import router as health_router
from .models import BatchPayload, TelemetryPayload, validate_metric_ranges
from .queue import QueueProducer
from .rate_limiter import RateLimiter

RATE_LIMIT = float(os.environ.get("REFERENCE_RATE_LIMIT", "10"))
"""Requests per second per device: the seed's 10 unless the benchmark lifts it."""

producer: QueueProducer | None = None
rate_limiter: RateLimiter | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global producer, rate_limiter  # noqa: PLW0603 (the seed's module globals)
    producer = QueueProducer(brokers=os.environ.get("REFERENCE_KAFKA", "kafka:9092"))
    await producer.start()
    rate_limiter = RateLimiter(max_requests=RATE_LIMIT, window_seconds=1)
    yield
    await producer.stop()


app = FastAPI(title="IoT Ingestion API", lifespan=lifespan)
app.include_router(health_router)


@app.post("/api/v1/ingest", status_code=202)
async def ingest(
    payload: TelemetryPayload,
    x_device_token: str = Header(...),
) -> dict[str, Any]:
    assert producer is not None and rate_limiter is not None
    # Authenticate
    device = await verify_device(payload.device_id, x_device_token)
    if not device:
        raise HTTPException(status_code=401, detail="Invalid device")
    # Rate limit
    if not await rate_limiter.allow(payload.device_id):
        raise HTTPException(status_code=429, detail="Rate limit exceeded")
    # Validate metric ranges (warn, don't reject)
    warnings = validate_metric_ranges(payload.metrics)
    # Enqueue
    await producer.send(
        topic="telemetry-raw",
        key=payload.device_id,
        value=payload.model_dump_json(),
    )
    return {
        "status": "accepted",
        "warnings": warnings if warnings else None,
    }


@app.post("/api/v1/ingest/batch", status_code=202)
async def ingest_batch(
    payload: BatchPayload,
    x_device_token: str = Header(...),
) -> dict[str, Any]:
    assert producer is not None and rate_limiter is not None
    device = await verify_device(payload.device_id, x_device_token)
    if not device:
        raise HTTPException(status_code=401, detail="Invalid device")
    if not await rate_limiter.allow(payload.device_id):
        raise HTTPException(status_code=429, detail="Rate limit exceeded")
    # Send each reading as a separate message for parallel processing
    for reading in payload.readings:
        await producer.send(
            topic="telemetry-raw",
            key=payload.device_id,
            value=reading.model_dump_json(),
        )
    return {
        "status": "accepted",
        "readings_count": len(payload.readings),
    }
