"""Device silence (issue 12, part 2): one `device_silence` alert per silence and one `device_recovered` per recovery,
on the device-alerts topic, across workers and restarts; the silent-devices list (operator key, pages) and the
gauge under one rule. Real Granian servers, a real Kafka-protocol broker; configured intervals of 0.3 s, and
deadlines rather than timings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tidegate._native import DedupWindow, DeviceTable
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.server import Server

from tests.conftest import reading
from tests.openapi_check import OpenApiChecker

FAST = {
    "TIDEGATE_SILENCE_INTERVALS": "fast-=0.3",  # silent after 0.9 s
    "TIDEGATE_SILENCE_SCAN_INTERVAL_S": "0.1",
    "TIDEGATE_RATE_PER_DEVICE": "1000",
    "TIDEGATE_BURST_PER_DEVICE": "1000",
}
SILENT = "/api/v1/devices/silent"
DEADLINE_S = 60.0
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    """Polls `probe` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"not within {timeout:g} s: {what}")


def silent_devices(http: httpx.Client, headers: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Every silent device, following the pages."""
    devices: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        page = http.get(SILENT, params=params, headers=headers)
        assert page.status_code == 200, page.text
        document = page.json()
        devices.update({device["device_id"]: device for device in document["devices"]})
        cursor = document["next_cursor"]
        if cursor is None:
            return devices


def spooled_alerts(data_dir: Path) -> list[dict[str, Any]]:
    """The alert records in every worker's spool (`tidegate tail`)."""
    command = [
        sys.executable,
        "-m",
        "tidegate",
        "tail",
        "--data-dir",
        str(data_dir),
        "--from-start",
        "--topic",
        "device-alerts",
    ]
    out = subprocess.run(command, check=True, capture_output=True, timeout=30).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def send(http: httpx.Client, device: str, headers: dict[str, str] | None = None) -> None:
    response = http.post("/api/v1/ingest", json=reading(device, metrics={"t": time.time()}), headers=headers)
    assert response.status_code == 202, response.text


class Talker:
    """Keeps devices talking (a reading every 0.1 s each) until stopped."""

    def __init__(self, url: str, *devices: str) -> None:
        self.url, self.devices = url, devices
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.is_set():
                for device in self.devices:
                    send(http, device)
                self._stop.wait(0.1)

    def __enter__(self) -> Talker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def lag_records(data_dir: Path) -> int:
    command = [sys.executable, "-m", "tidegate", "spool", "stats", "--data-dir", str(data_dir)]
    stats = json.loads(subprocess.run(command, check=True, capture_output=True, timeout=30).stdout)
    return sum(int(worker["lag_records"]) for worker in stats.values() if isinstance(worker, dict))


def test_one_alert_per_silence_and_per_recovery_in_kafka_with_two_workers(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        broker.create_topics(["telemetry-raw", "events-raw", "ingest-dlq", "device-alerts"], partitions=2)
        env = {**FAST, "TIDEGATE_AUTH": "false", "TIDEGATE_KAFKA": broker.bootstrap}
        with Server(tmp_path / "server", env, workers=2) as server, httpx.Client(base_url=server.url) as http:
            # One reading each: one silence each, however slowly this machine runs.
            send(http, "fast-a")
            send(http, "fast-b")
            wait_for(
                "both devices alerted as silent",
                lambda: {"fast-a", "fast-b"} <= {d for d, s in silent_devices(http).items() if s["alerted"]},
            )

            def alerts_for(device: str) -> list[dict[str, Any]]:
                values = [json.loads(r.value) for r in asyncio.run(consume_all(broker.bootstrap, "device-alerts"))]
                return [v for v in values if v["device_id"] == device]

            with Talker(server.url, "fast-a"):
                wait_for(
                    "fast-a recovered, in Kafka",
                    lambda: any(a["alert"] == "device_recovered" for a in alerts_for("fast-a")),
                )
            # Silent again: a new episode, alerted once more.
            wait_for(
                "fast-a's second silence, in Kafka",
                lambda: [a["alert"] for a in alerts_for("fast-a")].count("device_silence") >= 2,
            )
            wait_for(
                "both devices alerted, and every alert delivered",
                lambda: (
                    {"fast-a", "fast-b"} <= {d for d, s in silent_devices(http).items() if s["alerted"]}
                    and lag_records(server.data_dir) == 0
                ),
            )
            records = asyncio.run(consume_all(broker.bootstrap, "device-alerts"))
            values = [json.loads(r.value) for r in records]
            assert all(r.key is not None and json.loads(r.value)["device_id"] == r.key.decode() for r in records)
            ids = Counter(v["event_id"] for v in values)
            assert [eid for eid, n in ids.items() if n > 1] == [], "no alert twice"
            for device in ("fast-a", "fast-b"):
                # In the order raised (one partition per key). A talker stalled for 0.9 s on a loaded machine makes
                # an extra episode, never an extra alert: silences and recoveries alternate, each recovery naming
                # the silence before it.
                alerts = alerts_for(device)
                kinds = [v["alert"] for v in alerts]
                assert kinds[::2] == ["device_silence"] * len(kinds[::2]), kinds
                assert kinds[1::2] == ["device_recovered"] * len(kinds[1::2]), kinds
                assert kinds[-1] == "device_silence", "silent at the end"
                for silence, recovered in zip(alerts[::2], alerts[1::2], strict=False):
                    assert recovered["silent_since"] == silence["last_seen"] < recovered["last_seen"]
                assert all((v["expected_interval_s"], v["threshold_s"]) == (0.3, 0.9) for v in alerts)
            assert "device_recovered" in [v["alert"] for v in alerts_for("fast-a")]
            assert [v["alert"] for v in alerts_for("fast-b")] == ["device_silence"], "it spoke once"
            headers = {name: value for name, value in records[0].headers}
            assert headers["event_id"].decode() == json.loads(records[0].value)["event_id"]
            assert headers["schema"] == b"device-alert/v1"
            lines = server.log_path.read_text().splitlines()
            logged = [json.loads(line) for line in lines if line.startswith('{"event": "device_')]
            assert Counter((line["event"], line["device_id"]) for line in logged) == Counter(
                (v["alert"], v["device_id"]) for v in values
            ), "one log line per alert"


def test_last_seen_and_alerts_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    env = {**FAST, "TIDEGATE_AUTH": "false"}
    with Server(data_dir, env, workers=2) as server, httpx.Client(base_url=server.url) as http:
        send(http, "fast-a")
        before = wait_for(
            "fast-a alerted",
            lambda: next((d for n, d in silent_devices(http).items() if n == "fast-a" and d["alerted"]), None),
        )
    assert [a["alert"] for a in spooled_alerts(data_dir)] == ["device_silence"]

    with Server(data_dir, env, workers=2) as server, httpx.Client(base_url=server.url) as http:
        remembered = silent_devices(http)["fast-a"]
        assert (remembered["last_seen"], remembered["alerted"]) == (before["last_seen"], True), "not forgotten"
        # A device first heard after the restart: once its alert is spooled, the new detectors have scanned past
        # the moment any forgotten state of fast-a would have been alerted again.
        send(http, "fast-c")
        wait_for("fast-c alerted", lambda: any(a["device_id"] == "fast-c" for a in spooled_alerts(data_dir)))
        assert [a["alert"] for a in spooled_alerts(data_dir) if a["device_id"] == "fast-a"] == ["device_silence"]
        send(http, "fast-a")
        recovered = wait_for(
            "fast-a recovered",
            lambda: [a for a in spooled_alerts(data_dir) if a["alert"] == "device_recovered"],
        )
        assert [(a["device_id"], a["silent_since"]) for a in recovered] == [("fast-a", before["last_seen"])]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path / "fleet", FAST) as server:
        yield server


def test_list_needs_an_operator_key_pages_and_agrees_with_the_gauge(fleet: Server) -> None:
    devices = [f"fast-{i:02}" for i in range(20)]
    keys = fleet.keys(*devices, "steady-1")
    document = httpx.get(fleet.url + "/openapi.json").json()
    checker = OpenApiChecker(document)
    with httpx.Client(base_url=fleet.url, timeout=10, event_hooks={"response": [checker.check]}) as http:
        for device in [*devices, "steady-1"]:
            send(http, device, {"X-Device-Token": keys[device]})
        for headers in ({}, {"X-Operator-Key": "tgo_0_nothing"}, {"Authorization": "Bearer not-a-key"}):
            refused = http.get(SILENT, headers=headers)
            assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["errors"] == [] and "WWW-Authenticate" in refused.headers
        device_key = http.get(SILENT, headers={"X-Operator-Key": keys["steady-1"]})
        assert device_key.status_code == 403 and device_key.headers["content-type"] == "application/problem+json"
        operator = {"X-Operator-Key": fleet.operator_key()}
        wait_for("the new key loaded (within a second)", lambda: http.get(SILENT, headers=operator).status_code == 200)

        def listed_and_gauge() -> tuple[dict[str, dict[str, Any]], float] | None:
            listed = silent_devices(http, operator)
            gauge = next(
                float(line.split()[-1])
                for line in http.get("/metrics").text.splitlines()
                if line.startswith("tidegate_silent_devices ")
            )
            return (listed, gauge) if len(listed) == len(devices) else None

        listed, gauge = wait_for("every fast- device silent", listed_and_gauge)
        assert sorted(listed) == devices, "every page, in device-id order, nothing twice, steady-1 not silent"
        assert gauge == len(devices), "the gauge counts by the list's rule"
        first = http.get(SILENT, params={"limit": 5}, headers=operator).json()
        assert [d["device_id"] for d in first["devices"]] == devices[:5]
        assert first["count"] == len(devices) and first["next_cursor"] == devices[4]
        assert all(d["threshold_s"] == 0.9 and d["silent_for_s"] >= 0.9 for d in first["devices"])
        bearer = http.get(SILENT, params={"cursor": devices[-2]}, headers={"Authorization": operator["X-Operator-Key"]})
        assert bearer.status_code == 401, "Authorization needs the Bearer scheme"
        last = http.get(
            SILENT, params={"cursor": devices[-2]}, headers={"Authorization": f"Bearer {operator['X-Operator-Key']}"}
        ).json()
        assert ([d["device_id"] for d in last["devices"]], last["next_cursor"]) == ([devices[-1]], None)
    assert checker.violations == []


def test_an_alert_raised_again_after_a_crash_is_a_duplicate_not_a_second_record() -> None:
    """What the detector does when the one before it died after spooling an alert but before marking it sent."""
    devices = DeviceTable(None, intervals=[("fast-", 0.3)])
    dedup = DedupWindow(None)
    now = time.time_ns() // 1_000_000
    devices.seen(["fast-a"], now)
    first = devices.detect(now + 1000, now, "device-alerts")
    assert dedup.claim_records(first.records, now + 1000) == [] and len(first.records) == 1
    dedup.commit(first.records, [])  # durable; then the detector died before `confirm`
    again = devices.detect(now + 2000, now, "device-alerts")
    assert [a[4] for a in again.alerts] == [a[4] for a in first.alerts], "the same alert, the same event id"
    assert dedup.claim_records(again.records, now + 2000) == first.records.event_ids()
    assert len(again.records) == 0, "nothing spooled twice"
    devices.confirm(again)
    assert len(devices.detect(now + 3000, now, "device-alerts")) == 0
