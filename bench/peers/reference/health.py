"""Health check endpoints (seed 001, section 7)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter()


@router.get("/health/ready")
async def readiness() -> dict[str, Any]:
    """Can this instance accept traffic?"""
    from . import main  # noqa: PLC0415 (the seed's module globals, set by the lifespan)

    checks = {
        "kafka": main.producer is not None and await main.producer.is_connected(),
        "rate_limiter": main.rate_limiter is not None,
    }
    all_healthy = all(checks.values())
    return {
        "status": "ready" if all_healthy else "not_ready",
        "checks": checks,
    }


@router.get("/health/live")
async def liveness() -> dict[str, str]:
    """Is this process alive?"""
    return {"status": "alive"}
