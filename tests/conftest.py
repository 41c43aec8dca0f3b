from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import tidegate
from tidegate.testing.server import Server

from tests.openapi_check import OpenApiChecker

#: A valid W3C Trace Context traceparent (the specification's example).
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def iso_now(offset_seconds: float = 0.0) -> str:
    """An RFC 3339 UTC timestamp `offset_seconds` from now, with milliseconds."""
    moment = time.time() + offset_seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"


def reading(device_id: str = "sensor-factory-floor-001", **overrides: Any) -> dict[str, Any]:
    """Seed 001's standard telemetry reading, stamped now."""
    record: dict[str, Any] = {
        "device_id": device_id,
        "timestamp": iso_now(),
        "metrics": {"temperature": 23.5, "humidity": 67.2, "pressure": 1013.25},
        "metadata": {"firmware_version": "2.1.0", "battery_level": 85, "signal_strength": -67},
    }
    record.update(overrides)
    return record


def event(**overrides: Any) -> dict[str, Any]:
    """Seed 004's example event."""
    record: dict[str, Any] = {
        "source": "demo",
        "event_type": "heartbeat",
        "entity_id": "user_123",
        "event_time": "2025-12-28T23:59:59Z",
        "payload": {"steps": 10},
    }
    record.update(overrides)
    return record


@pytest.fixture(scope="session")
def telemetry() -> tidegate.Validator:
    return tidegate.Validator(tidegate.Contract.telemetry())


@pytest.fixture(scope="session")
def events() -> tidegate.Validator:
    return tidegate.Validator(tidegate.Contract.event())


@pytest.fixture(scope="session")
def batches() -> tidegate.Validator:
    return tidegate.Validator(tidegate.Contract.batch())


# For the modules that run one `server` (a module-scoped fixture of their own).
@pytest.fixture(scope="module")
def openapi(server: Server) -> OpenApiChecker:
    return OpenApiChecker(httpx.get(server.url + "/openapi.json").json())


@pytest.fixture
def client(server: Server, openapi: OpenApiChecker) -> Iterator[httpx.Client]:
    """A client whose every response is checked against the service's OpenAPI document."""
    with httpx.Client(base_url=server.url, timeout=10, event_hooks={"response": [openapi.check]}) as http:
        yield http
    assert openapi.violations == []


def key(server: Server, device: str) -> dict[str, str]:
    """The device key header of one of the module server's devices (`server.device_keys`)."""
    keys: dict[str, str] = server.device_keys  # type: ignore[attr-defined]
    return {"X-Device-Token": keys[device]}


def metric(text: str, name: str) -> float:
    """The value of an unlabelled metric (or of `name` written with its labels) in a `/metrics` text; 0 if absent."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


HANG_GUARD_S = 60.0
"""How long a test waits for a state before it reports that it never came. Tests wait for states, never for a
time: this bound only keeps a broken server from hanging the suite."""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = HANG_GUARD_S) -> None:
    """Polls `condition` until it holds (`what` names it in the failure, should it never)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = HANG_GUARD_S) -> None:
    """`wait_for` in a coroutine: the predicate may be a coroutine function too."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if await held if inspect.isawaitable(held) else held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def until_in_flight(http: httpx.AsyncClient, records: int) -> None:
    """Waits until the worker holds `records` records awaiting durability: requests are ordered by what the server
    has, not by sleeps."""

    async def held() -> bool:
        return metric((await http.get("/metrics")).text, "tidegate_in_flight_records") >= records

    await wait_until(held, f"the worker to hold {records} records in flight")
