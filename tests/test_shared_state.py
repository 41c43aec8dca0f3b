"""State shared by the workers of a host: the dedup window (event ids, idempotency keys) and the per-device token
buckets live in memory-mapped tables under `<data_dir>/state`, shared by every worker and kept across restarts.
Real servers over a socket; `Connection: close` makes each request a new connection, so they spread over the
workers."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tidegate
from tidegate.testing.chaos import spooled_ids
from tidegate.testing.server import Server

from tests.conftest import iso_now, reading, wait_for
from tests.openapi_check import OpenApiChecker

CLOSE = {"Connection": "close"}


@contextlib.contextmanager
def checked_client(server: Server) -> Iterator[httpx.Client]:
    """A client whose every response is checked against the server's OpenAPI document."""
    openapi = OpenApiChecker(httpx.get(server.url + "/openapi.json").json())
    with httpx.Client(base_url=server.url, timeout=10, event_hooks={"response": [openapi.check]}) as http:
        yield http
    assert openapi.violations == []


def statuses(http: httpx.Client, path: str, body: dict[str, Any], times: int, **headers: str) -> list[str]:
    out = []
    for _ in range(times):
        response = http.post(path, json=body, headers={**CLOSE, **headers})
        assert response.status_code == 202, response.text
        out.append(response.json()["status"])
    return out


def test_a_retry_to_either_worker_is_a_duplicate(tmp_path: Path) -> None:
    with Server(tmp_path, {"TIDEGATE_AUTH": "false"}, workers=2) as server, checked_client(server) as http:
        answers = [statuses(http, "/api/v1/ingest", reading(f"dev-{i}"), 3) for i in range(8)]
        assert answers == [["accepted", "duplicate", "duplicate"]] * 8
        # Idempotency keys too, whichever worker sees the retry.
        keyed = [
            http.post(
                "/api/v1/ingest", json=reading("keyed", metrics={"t": i}), headers={**CLOSE, "X-Idempotency-Key": "k"}
            ).json()["status"]
            for i in range(6)
        ]
        assert keyed == ["accepted"] + ["duplicate"] * 5
        # Each worker makes its spools as it starts, and the server is up once one of them is.
        wait_for(
            lambda: sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["w0", "w0h", "w1", "w1h"],
            "both workers' spools",
        )


def test_a_batch_id_is_a_duplicate_after_a_restart(tmp_path: Path) -> None:
    env = {"TIDEGATE_AUTH": "false"}
    first = Server(tmp_path, env).start()
    with checked_client(first) as http:
        batch = {"device_id": "b-dev", "batch_id": "B1", "readings": [{"timestamp": iso_now(), "metrics": {"t": 1}}]}
        assert statuses(http, "/api/v1/ingest/batch", batch, 1) == ["accepted"]
        single = reading("b-dev", metrics={"t": 9})
        assert statuses(http, "/api/v1/ingest", single, 1, **{"X-Idempotency-Key": "K9"}) == ["accepted"]
    assert first.stop() == 0  # SIGTERM
    again = Server(tmp_path, env).start()
    try:
        with checked_client(again) as http:
            # The same batch_id with other readings: a retry of the batch, not new data.
            other = {**batch, "readings": [{"timestamp": iso_now(), "metrics": {"t": 2}}]}
            assert statuses(http, "/api/v1/ingest/batch", other, 1) == ["duplicate"]
            changed = reading("b-dev", metrics={"t": 10})
            assert statuses(http, "/api/v1/ingest", changed, 1, **{"X-Idempotency-Key": "K9"}) == ["duplicate"]
    finally:
        again.stop()


def test_a_devices_rate_holds_across_workers(tmp_path: Path) -> None:
    # A burst of 4 and a refill slow enough that no token comes back during the test: exactly 4 pass, on
    # whichever workers; with a bucket per worker each worker would grant its own 4.
    env = {"TIDEGATE_RATE_PER_DEVICE": "0.001", "TIDEGATE_BURST_PER_DEVICE": "4"}
    server = Server(tmp_path, env, workers=2)
    keys = server.keys("rated", "other")
    key = keys["rated"]
    with server, checked_client(server) as http:
        codes = [
            http.post(
                "/api/v1/ingest", json=reading("rated", metrics={"i": i}), headers={**CLOSE, "X-Device-Token": key}
            ).status_code
            for i in range(16)
        ]
        assert sorted(codes) == [202] * 4 + [429] * 12
        response = http.post(
            "/api/v1/ingest", json=reading("other"), headers={**CLOSE, "X-Device-Token": keys["other"]}
        )
        assert response.status_code == 202, "another device has its own bucket"


def test_a_torn_slot_is_never_a_false_duplicate(tmp_path: Path) -> None:
    env = {"TIDEGATE_AUTH": "false"}
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    seen, unseen = reading("torn", metrics={"t": 1}), reading("torn", metrics={"t": 2})
    unseen_id = validator.validate(json.dumps(unseen).encode(), "application/json", None).event_ids[0]
    assert unseen_id is not None
    first = Server(tmp_path, env).start()
    with checked_client(first) as http:
        response = http.post("/api/v1/ingest", json=seen)
        assert response.json()["status"] == "accepted"
        seen_id = response.json()["event_id"]
    assert first.stop() == 0
    # A write that got as far as another id (the unseen reading's) in the seen reading's slot, and no further.
    table = tmp_path / "state" / "dedup.tbl"
    content = bytearray(table.read_bytes())
    at = content.find(bytes.fromhex(seen_id))
    assert at > 0
    content[at : at + 16] = bytes.fromhex(unseen_id)
    table.write_bytes(bytes(content))
    again = Server(tmp_path, env).start()
    try:
        with checked_client(again) as http:
            response = http.post("/api/v1/ingest", json=unseen)
            assert response.json() == {**response.json(), "status": "accepted", "event_id": unseen_id}
            # The torn slot lost the seen reading, but the restart loaded the spool's tail, which holds it: a true
            # duplicate, answered so, and never a second copy.
            assert http.post("/api/v1/ingest", json=seen).json()["status"] == "duplicate"
    finally:
        again.stop()


def test_idle_and_slow_connections_are_closed(tmp_path: Path) -> None:
    # Connection hygiene (issue 10, item 5): a kept-alive connection that goes quiet, and headers that stop
    # halfway, are closed after `idle_timeout_s` instead of holding a descriptor forever.
    with Server(tmp_path, {"TIDEGATE_AUTH": "false", "TIDEGATE_IDLE_TIMEOUT_S": "0.5"}) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
            idle.sendall(b"GET /health/live HTTP/1.1\r\nHost: tidegate\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 200")
            assert idle.recv(4096) == b"", "the server closed the idle keep-alive connection"
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
            slow.sendall(b"POST /api/v1/ingest HTTP/1.1\r\nHost: tide")
            assert slow.recv(4096) == b"", "closed with its headers unfinished"
        # A connection that never sends a byte (Granian's HTTP/1-or-2 detection had no timer: it stayed open).
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as silent:
            assert silent.recv(4096) == b"", "closed without ever sending a byte"


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("TIDEGATE_IDLE_TIMEOUT_S", "120", "idle_timeout_s"),  # more than Granian takes
        ("TIDEGATE_DELIVERY_NICE", "20", "delivery_nice"),  # nice ends at 19
        ("TIDEGATE_DELIVERY_NICE", "-5", "delivery_nice"),  # delivery never runs ahead of the workers
        ("TIDEGATE_ADMISSION_BULK_BODIES", "-1", "admission_bulk_bodies"),  # 0 is off, below means nothing
        ("TIDEGATE_ADMISSION_BULK_NARROW_AT", "0.5", "admission_bulk_narrow_at"),  # would narrow at the baseline
    ],
)
def test_a_setting_outside_what_works_is_refused_before_serving(
    tmp_path: Path, variable: str, value: str, setting: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidegate", "serve", "--data-dir", str(tmp_path), "--port", "1"],
        check=False,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert setting in result.stderr


def test_a_record_made_durable_by_a_worker_killed_before_committing_its_claim_is_a_duplicate_after_restart(
    tmp_path: Path, telemetry: tidegate.Validator
) -> None:
    """A worker appends and fsyncs a record, then is killed before it marks the record's dedup claim durable (the
    claim stays pending, owned by a process that is gone, so no other process calls it a duplicate). Its
    successor on the same spool must know the spool's tail: the device's retry is `duplicate`, and the spool
    holds one copy (MQTT redelivers exactly such records after a SIGKILL)."""
    body = reading("dev-killed")
    now = time.time_ns() // 1_000_000
    result = telemetry.validate(json.dumps(body).encode(), "application/json", None, received_at_ms=now)
    (tmp_path / "state").mkdir(parents=True)
    window = tidegate.DedupWindow(tmp_path / "state" / "dedup.tbl")
    assert window.claim_records(result.records, now) == []  # pending, never committed: the worker dies here
    spool = tidegate.Spool(tmp_path / "spool" / "w0")
    spool.append(result.records)
    spool.commit()
    del window, spool
    with Server(tmp_path, {"TIDEGATE_AUTH": "false"}) as server, checked_client(server) as http:
        answer = http.post("/api/v1/ingest", json=body, headers=CLOSE).json()
    assert answer["status"] == "duplicate", answer
    copies: list[str] = []
    reader, seq = tidegate.Spool.open_read_only(tmp_path / "spool" / "w0"), 0
    while True:
        records, seq = reader.read(seq, durable_only=False)
        if not len(records):
            break
        copies.extend(json.loads(value)["event_id"] for value in records.values("telemetry-raw"))
    assert copies == [answer["event_id"]]


def test_a_killed_worker_is_started_again_while_the_other_serves(tmp_path: Path) -> None:
    """One worker of two SIGKILLed (as the OOM killer would): the service stays up, the other worker answers, the dead
    one is started again on its own spool directory, and nothing either acknowledged is lost. Before, Granian
    stopped every worker and exited when one died."""
    with Server(tmp_path, {"TIDEGATE_AUTH": "false"}, workers=2) as server, checked_client(server) as http:
        wait_for(lambda: len(server.worker_pids()) == 2, "both workers")
        acknowledged: dict[str, dict[str, Any]] = {}

        def send(n: int) -> int:
            body = reading(f"kill-{n % 5}", metrics={"n": n})
            try:
                response = http.post("/api/v1/ingest", json=body, headers=CLOSE)
            except httpx.TransportError:
                return 0  # a connection the dead worker held
            if response.status_code == 202:
                acknowledged[response.json()["event_id"]] = body
            return response.status_code

        assert {send(n) for n in range(20)} == {202}
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        # The survivor answers meanwhile. Each request is a new connection, so one may also meet the dying worker (a
        # connection error) or its replacement before it is ready (503 not-ready), never anything else.
        answered = [send(n) for n in range(20, 60)]
        assert 202 in answered and set(answered) <= {202, 503, 0}, answered

        def replaced() -> bool:
            assert server.proc is not None and server.proc.poll() is None, "the server exited when a worker died"
            return len(set(server.worker_pids()) - {victim}) == 2

        wait_for(replaced, "the killed worker started again")
        firsts = itertools.count(100, 20)

        def all_accepted() -> bool:
            first = next(firsts)
            return all(send(n) == 202 for n in range(first, first + 20))

        wait_for(all_accepted, "both workers accepting")
        # A retry of a reading acknowledged before the kill is still a duplicate, whichever worker takes it.
        for body in list(acknowledged.values())[:10]:
            assert http.post("/api/v1/ingest", json=body, headers=CLOSE).json()["status"] == "duplicate"
        wait_for(
            lambda: sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["w0", "w0h", "w1", "w1h"],
            "the restarted worker's spools",
        )
    assert set(acknowledged) <= spooled_ids(tmp_path)
