"""Admission under overload: the adaptive, cost-weighted concurrency limit with priority partitions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from tidegate.admission import WINDOW_S, AdaptiveLimit, request_cost
from tidegate.testing.server import Server

from tests.conftest import event, reading


def test_cost_follows_the_body_size() -> None:
    assert request_cost("200", None) < 1.1
    assert request_cost("400000", None) > 20
    assert request_cost("100000", "zstd") == request_cost("400000", None), "compressed bodies weigh what they expand to"
    assert request_cost(None, None) == request_cost("16384", None), "a body of unknown length counts as 16 KiB"


def test_low_fills_only_its_share_and_never_takes_room_from_high() -> None:
    limit = AdaptiveLimit(initial=10, minimum=10, maximum=10)
    assert all(limit.try_acquire("low", 1) for _ in range(5))
    assert not limit.try_acquire("low", 1), "low stops at half the limit"
    assert limit.try_acquire("medium", 1) and limit.try_acquire("high", 1)
    assert sum(limit.try_acquire("high", 1) for _ in range(20)) == 9, "high has the whole limit to itself"
    assert limit.shed == {"high": 11, "medium": 0, "low": 1}
    empty = AdaptiveLimit(initial=10, minimum=10, maximum=10)
    assert empty.try_acquire("low", 50), "a request larger than its share gets into an empty worker"
    assert not empty.try_acquire("low", 1)
    assert empty.try_acquire("high", 1), "and does not block high"


def test_the_limit_shrinks_when_requests_slow_down_and_grows_when_used() -> None:
    limit = AdaptiveLimit(initial=64, minimum=4, maximum=1000)

    def window(seconds_each: float, requests: int, in_flight: int) -> None:
        for _ in range(in_flight):
            limit.try_acquire("high", 1)
        limit._window_start -= WINDOW_S  # the window is over at the last release
        for _ in range(requests):
            limit.release("high", 1, seconds_each)
        for _ in range(in_flight - requests):
            limit.release("high", 1, seconds_each)

    window(0.002, 60, 60)  # the best seen: 2 ms
    grown = limit.limit
    assert grown > 64, "used and not slowed down: it grows"
    for _ in range(10):
        window(0.020, 60, 60)  # ten times slower than the best
    assert limit.limit < grown / 2, "slowed down: it shrinks"
    assert limit.slowdown > 2
    assert 1 <= limit.retry_after() <= 30


def test_under_a_low_priority_flood_low_is_shed_and_high_is_admitted(tmp_path: Path) -> None:
    env = {
        "TIDEGATE_AUTH": "false",
        "TIDEGATE_RATE_PER_DEVICE": "0",
        # A fixed limit of 8 cost units (a reading is 1, a body of 2,000 events about 20): the test checks the
        # partitions, not how the limit adapts (that is the benchmark's business).
        "TIDEGATE_ADMISSION_INITIAL_LIMIT": "8",
        "TIDEGATE_ADMISSION_MIN_LIMIT": "8",
        "TIDEGATE_ADMISSION_MAX_LIMIT": "8",
    }
    flood_body = "\n".join(json.dumps(event(entity_id=f"e-{i}", payload={"i": i})) for i in range(2000)).encode()
    with Server(tmp_path, env) as server:

        async def scenario() -> tuple[list[int], list[int], set[str]]:
            low: list[int] = []
            high: list[int] = []
            retry_after: set[str] = set()
            stop = asyncio.Event()
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=30) as http,
                httpx.AsyncClient(base_url=server.url, timeout=30) as vip,  # the high device's own connection
            ):

                async def flood(n: int) -> None:
                    k = 0
                    while not stop.is_set():
                        k += 1
                        body = flood_body.replace(b'"e-', f'"f{n}-{k}-'.encode())
                        try:
                            response = await http.post(
                                "/api/v1/events",
                                content=body,
                                headers={"Content-Type": "application/x-ndjson", "X-Priority": "low"},
                            )
                        except httpx.TransportError:
                            # Refused before its body was read, the connection may be closed under the upload.
                            low.append(0)
                            continue
                        low.append(response.status_code)
                        if response.status_code == 503:
                            assert response.json()["type"] == "urn:tidegate:problem:shed"
                            retry_after.add(response.headers["retry-after"])
                            await asyncio.sleep(0.05)

                flooders = [asyncio.create_task(flood(n)) for n in range(12)]
                await asyncio.sleep(0.5)
                for i in range(40):
                    response = await vip.post(
                        "/api/v1/ingest", json=reading("vip", metrics={"i": i}), headers={"X-Priority": "high"}
                    )
                    high.append(response.status_code)
                    await asyncio.sleep(0.05)
                stop.set()
                await asyncio.gather(*flooders)
            return low, high, retry_after

        low, high, retry_after = asyncio.run(scenario())
        metrics = httpx.get(server.url + "/metrics").text
    assert high == [202] * 40, "every high-priority reading admitted"
    assert low.count(503) > 0, "low-priority bodies were shed"
    assert low.count(202) > 0, "but low is not starved"
    assert all(1 <= int(value) <= 30 for value in retry_after)
    assert 'tidegate_shed_total{priority="low"}' in metrics
    assert "tidegate_admission_limit 8" in metrics
