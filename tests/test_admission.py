"""Admission under overload: the adaptive, cost-weighted concurrency limit with priority partitions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from tidegate._native import Admission, AdmissionTicket, Keys, RateTable
from tidegate.auth import KeyStore
from tidegate.testing.server import Server

from tests.conftest import event, metric, reading


def test_low_fills_only_its_share_and_never_takes_room_from_high() -> None:
    admission = Admission(initial_limit=10, min_limit=10, max_limit=10)
    admission.set_conditions(True, False, False, 0.0)

    def ask(priority: str, size: int = 100) -> tuple[AdmissionTicket, tuple[int, bytes, list[tuple[str, str]]] | None]:
        ticket, _, _, refusal = admission.decide([("x-priority", priority), ("content-length", str(size))], "medium", 0)
        return ticket, refusal

    held = [ask("low") for _ in range(6)]
    assert [refusal is None for _, refusal in held] == [True] * 4 + [False] * 2, "low stops at half the limit"
    _, shed = held[-1]
    assert shed is not None and shed[0] == 503 and json.loads(shed[1])["type"] == "urn:tidegate:problem:shed"
    assert 1 <= int(dict(shed[2])["retry-after"]) <= 30
    assert ask("medium")[1] is None and ask("HIGH ")[1] is None
    assert sum(ask("high")[1] is None for _ in range(20)) == 8, "high has the whole limit to itself"
    snapshot = admission.snapshot()
    assert (snapshot["refused_limit_low"], snapshot["refused_limit_high"]) == (2, 12)
    for ticket, _ in held:
        admission.done(ticket)
        admission.done(ticket)  # a second call does nothing
    assert admission.snapshot()["in_flight_low"] == 0
    assert ask("urgent")[1] is not None and ask("urgent")[1][0] == 400  # type: ignore[index]


def test_a_busy_event_loop_sheds_low_before_medium_and_never_high() -> None:
    admission = Admission(initial_limit=1e9, min_limit=1e9, max_limit=1e9, loop_busy_target=0.8)
    admission.set_conditions(True, False, False, 0.0)

    def refused(priority: str) -> int:
        count = 0
        for _ in range(200):
            ticket, _, _, refusal = admission.decide([("x-priority", priority)], "medium", 0)
            admission.done(ticket)
            if refusal is not None:
                assert refusal[0] == 503 and json.loads(refusal[1])["type"] == "urn:tidegate:problem:shed"
                assert 1 <= int(dict(refusal[2])["retry-after"]) <= 30
                count += 1
        return count

    admission.observe_loop(0.5, 5.0)
    assert (refused("low"), refused("medium")) == (0, 0), "below the target nothing is shed"
    admission.observe_loop(1.0, 1.0)  # the shed level rises by 8 * 0.2: all low, 60% of medium
    assert refused("low") == 200 and 60 < refused("medium") < 180 and refused("high") == 0
    snapshot = admission.snapshot()
    assert snapshot["loop_busy"] == 1.0 and snapshot["shed_level"] == pytest.approx(1.6)
    assert snapshot["refused_loop_busy_low"] == 200 and snapshot["refused_loop_busy_high"] == 0
    admission.observe_loop(0.0, 1.0)
    assert (refused("low"), refused("medium")) == (0, 0), "an idle loop stops the shedding"


def test_keys_are_verified_natively_and_revocation_is_seen(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    device, operator = store.add("dev-1"), store.add_operator("ops")
    keys = Keys(tmp_path / "keys.json", reload_interval=0)
    # One token, refilled after about three hours: the second request is refused however slow the machine.
    admission = Admission(keys=keys, rates=RateTable(rate=1e-4, burst=1), initial_limit=10, min_limit=10)
    admission.set_conditions(True, False, False, 0.0)

    def status(*headers: tuple[str, str]) -> int:
        ticket, device_id, _, refusal = admission.decide(list(headers), "high", 0)
        admission.done(ticket)
        assert (device_id is None) == (refusal is not None)
        return 202 if refusal is None else refusal[0]

    assert status() == 401
    assert status(("x-device-token", operator)) == 401, "an operator key is no device's"
    assert status(("authorization", f"Bearer {device}")) == 202
    assert status(("x-api-key", device)) == 429, "its one token is spent"
    assert keys.device_for(device) == "dev-1" and keys.is_operator(operator) and not keys.is_operator(device)
    store.revoke("dev-1")
    assert status(("x-device-token", device)) == 401, "revoked"
    assert keys.device_for(device) is None and keys.is_operator(operator)


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
    # 1-30 s, less the hold of a refusal made as the request arrived (`admission_refusal_hold_s`).
    assert all(0 <= int(value) <= 30 for value in retry_after)
    # Shed by the limit's partition, or as they arrived by the loop's queue (the flood waits for the loop).
    assert metric(metrics, 'tidegate_shed_total{priority="low"}') >= low.count(503), "every shed counted natively"
    assert 'tidegate_shed_total{priority="high"} 0' in metrics
    assert "tidegate_admission_limit 8" in metrics
