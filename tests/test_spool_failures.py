"""A spool that cannot write: nothing is acknowledged, the worker is not ready, and it recovers by itself.

The disk failure is injected (`fault_injection`: the next N spool writes fail halfway, as on a full disk), so these
run without root; the chaos suite fills a real small filesystem.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from tidegate.testing.server import Server, arm_spool_write_failures, fault_taken

from tests.conftest import reading, until_in_flight
from tests.test_http import spooled_values

ENV = {"TIDEGATE_AUTH": "false", "TIDEGATE_FAULT_INJECTION": "true"}


def inject_write_failures(server: Server, count: int) -> None:
    """Arms `count` failing spool writes in the server's worker; returns once the worker took them."""
    trigger = arm_spool_write_failures(server.data_dir, count)
    guard = time.monotonic() + 60  # a hang guard, not a speed requirement
    while not fault_taken(trigger) and time.monotonic() < guard:
        time.sleep(0.05)
    assert fault_taken(trigger), "the worker never took the injected fault"


def wait_ready(http: httpx.Client) -> list[int]:
    """Polls readiness until 200; returns every status seen."""
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.append(http.get("/health/ready").status_code)
        if seen[-1] == 200:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"never ready again: {seen[-5:]}")


def spooled_ids(data_dir: Path) -> list[str]:
    return [json.loads(line)["event_id"] for line in spooled_values(data_dir).splitlines()]


def test_a_failed_write_is_a_503_not_ready_until_the_disk_takes_writes_again(tmp_path: Path) -> None:
    with Server(tmp_path, ENV) as server, httpx.Client(base_url=server.url, timeout=20) as http:
        before = http.post("/api/v1/ingest", json=reading("disk-dev", metrics={"i": 0}))
        assert before.status_code == 202
        # The commit fails, then the first attempts to start a new segment fail too (the disk is still full).
        inject_write_failures(server, 3)
        body = reading("disk-dev", metrics={"i": 1})
        failed = http.post("/api/v1/ingest", json=body)
        assert failed.status_code == 503, failed.text
        assert failed.json()["type"] == "urn:tidegate:problem:spool-error"
        assert failed.headers["retry-after"]
        assert wait_ready(http)[0] == 503, "not ready while the spool cannot write"
        retry = http.post("/api/v1/ingest", json=body)
        assert retry.status_code == 202
        assert retry.json()["status"] == "accepted", "the failed original was never acknowledged, so not a duplicate"
        after = http.post("/api/v1/ingest", json=reading("disk-dev", metrics={"i": 2}))
        assert after.status_code == 202
        metrics = http.get("/metrics").text
    spooled = spooled_ids(tmp_path)
    for response in (before, retry, after):
        assert response.json()["event_id"] in spooled
    assert "tidegate_spool_failed_commits_total 1" in metrics.replace(".0", "")


def test_a_duplicate_is_answered_only_with_its_original_and_fails_with_it(tmp_path: Path) -> None:
    env = {**ENV, "TIDEGATE_COMMIT_WINDOW_MS": "400"}
    with Server(tmp_path, env) as server:
        body = reading("dup-dev", metrics={"i": 7})

        async def original_and_retry() -> list[Any]:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
                original = asyncio.create_task(http.post("/api/v1/ingest", json=body))
                await until_in_flight(http, 1)  # the original waits for its commit (400 ms window)
                retry = asyncio.create_task(http.post("/api/v1/ingest", json=body))
                return list(await asyncio.gather(original, retry))

        # The commit that covers the original fails: the retry must not be a 202 "duplicate" of a lost record.
        inject_write_failures(server, 1)
        original, retry = asyncio.run(original_and_retry())
        assert original.status_code == 503, original.text
        assert retry.status_code == 503, retry.text
        with httpx.Client(base_url=server.url, timeout=20) as http:
            wait_ready(http)
            again = http.post("/api/v1/ingest", json=body)
            assert again.status_code == 202
            assert again.json()["status"] == "accepted"
            event_id = again.json()["event_id"]
            # Without failures, a retry racing its original waits for it and is then a duplicate.
            asyncio.run(original_and_retry_ok(server, reading("dup-dev", metrics={"i": 8})))
    assert event_id in spooled_ids(tmp_path)


async def original_and_retry_ok(server: Server, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        original = asyncio.create_task(http.post("/api/v1/ingest", json=body))
        await until_in_flight(http, 1)
        retry = await http.post("/api/v1/ingest", json=body)
        first = await original
    assert first.status_code == retry.status_code == 202
    assert {first.json()["status"], retry.json()["status"]} == {"accepted", "duplicate"}
