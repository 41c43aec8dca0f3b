"""Headers and modes devices and operators use (issue 9): X-API-Key, X-Dry-Run spellings, DRY_RUN, device ids
that can never pass, against a real Granian server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tidegate.config import load_settings
from tidegate.testing.server import Server

from tests.conftest import reading
from tests.openapi_check import OpenApiChecker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    instance = Server(tmp_path_factory.mktemp("devices-http"), {"TIDEGATE_RATE_PER_DEVICE": "1000"})
    instance.device_keys = instance.keys("dev-1")  # type: ignore[attr-defined]
    with instance:
        yield instance


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    checker = OpenApiChecker(httpx.get(server.url + "/openapi.json").json())
    with httpx.Client(base_url=server.url, timeout=10, event_hooks={"response": [checker.check]}) as http:
        yield http
    assert checker.violations == []


def device_key(server: Server) -> str:
    keys: dict[str, str] = server.device_keys  # type: ignore[attr-defined]
    return keys["dev-1"]


def records_metric(client: httpx.Client, outcome: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tidegate_records_total{") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_x_api_key_is_a_credential(server: Server, client: httpx.Client) -> None:
    response = client.post("/api/v1/ingest", json=reading("dev-1"), headers={"X-API-Key": device_key(server)})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("value", ["1", "TRUE", "True", "true"])
def test_dry_run_spellings_that_mean_yes(server: Server, client: httpx.Client, value: str) -> None:
    body = reading("dev-1", metrics={"dry": time.time_ns() % 100_000})
    before = records_metric(client, "dry_run")
    headers = {"X-Device-Token": device_key(server), "X-Dry-Run": value}
    dry = client.post("/api/v1/ingest", json=body, headers=headers)
    assert dry.status_code == 202 and dry.json()["dry_run"] is True, dry.text
    assert records_metric(client, "dry_run") == before + 1
    real = client.post("/api/v1/ingest", json=body, headers={"X-Device-Token": device_key(server)})
    assert real.json()["status"] == "accepted", "the dry run wrote nothing"


def test_dry_run_false_writes(server: Server, client: httpx.Client) -> None:
    body = reading("dev-1", metrics={"wet": time.time_ns() % 100_000})
    for value in ["0", "false", "FALSE"]:
        headers = {"X-Device-Token": device_key(server), "X-Dry-Run": value}
        response = client.post("/api/v1/ingest", json=body, headers=headers)
        assert response.status_code == 202 and "dry_run" not in response.json()
    assert response.json()["status"] == "duplicate"


@pytest.mark.parametrize("value", ["yes", "on", "{}", "2"])
def test_other_dry_run_values_are_refused(server: Server, client: httpx.Client, value: str) -> None:
    headers = {"X-Device-Token": device_key(server), "X-Dry-Run": value}
    response = client.post("/api/v1/ingest", json=reading("dev-1"), headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["path"] for e in response.json()["errors"]] == ["header:X-Dry-Run"]


def test_dry_run_env_alias_and_what_the_service_says() -> None:
    assert load_settings(env={"DRY_RUN": "true"}).dry_run is True
    assert load_settings(env={"DRY_RUN": "true", "TIDEGATE_DRY_RUN": "false"}).dry_run is False


def test_a_dry_run_service_says_so(tmp_path: Path) -> None:
    with Server(tmp_path, {"DRY_RUN": "1"}) as dry:
        assert httpx.get(dry.url + "/api/v1/capabilities").json()["dry_run"] is True
        assert httpx.get(dry.url + "/health/ready").json()["checks"]["dry_run"] is True


def test_keys_add_refuses_impossible_device_ids(tmp_path: Path) -> None:
    for device_id in ["../../etc/x", "a b", "", "x" * 65]:
        command = [sys.executable, "-m", "tidegate", "keys", "add", "--data-dir", str(tmp_path), device_id]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "device id" in done.stderr, (device_id, done.stderr)
    command = [sys.executable, "-m", "tidegate", "keys", "add", "--data-dir", str(tmp_path), "ok_device-1"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
