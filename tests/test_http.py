"""The HTTP contract, against a real Granian server over a socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import tidegate
import zstandard
from tidegate.delivery.spool import LANE_NAMES
from tidegate.ingest import OFF_LOOP_BODY_BYTES
from tidegate.testing.server import Server

from tests.conftest import (
    HANG_GUARD_S,
    TRACEPARENT,
    event,
    iso_now,
    key,
    metric,
    reading,
    until_in_flight,
    wait_for,
    wait_until,
)
from tests.openapi_check import OpenApiChecker

DEVICES = [f"dev-{i}" for i in range(8)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # These tests send many maximal (and compressed oversized) bodies from one device within seconds: generous
    # rate and decompressed-bytes budgets, tested on servers of their own in TestAdmission.
    instance = Server(
        tmp_path_factory.mktemp("http"),
        {
            "TIDEGATE_RATE_PER_DEVICE": "1000",
            "TIDEGATE_BURST_PER_DEVICE": "1000",
            "TIDEGATE_DECODED_BYTES_PER_DEVICE": str(1 << 30),
            "TIDEGATE_DECODED_BYTES_BURST_PER_DEVICE": str(1 << 30),
        },
    )
    instance.device_keys = instance.keys(*DEVICES)  # type: ignore[attr-defined]
    with instance:
        yield instance


def spooled_values(data_dir: Path, *options: str) -> bytes:
    """What `tidegate tail --from-start` prints for a data dir: one Kafka value per line."""
    command = [sys.executable, "-m", "tidegate", "tail", "--data-dir", str(data_dir), "--from-start", *options]
    return subprocess.run(command, check=True, capture_output=True, timeout=30).stdout


def spooled_records(data_dir: Path, spools: str = "*") -> list[tuple[bytes | None, bytes, dict[str, bytes], int]]:
    """Every record in a data dir's spools (those matching `spools`), as it goes to Kafka: (key, value, headers,
    timestamp_ms)."""
    records: list[tuple[bytes | None, bytes, dict[str, bytes], int]] = []
    for directory in sorted((data_dir / "spool").glob(spools)):
        spool, seq = tidegate.Spool.open_read_only(directory), 0
        while True:
            part, seq = spool.read(seq, durable_only=False)
            if len(part) == 0:
                break
            records.extend((key, value, dict(headers), ts) for key, value, headers, ts in part.records())
    return records


def stall_the_loop(server: Server) -> Path:
    """Stops the worker's event loop (fault injection) until the test writes `loop-resume` in the returned faults
    directory: what arrives meanwhile waits for it."""
    faults = server.data_dir / "faults"
    faults.mkdir(exist_ok=True)
    (faults / "loop-stall").touch()
    wait_for((faults / "loop-stalled").exists, "the loop to stall")
    return faults


#: Low priority may queue 2 cost units (a reading costs about 1.06) for the event loop, high 256; a queue past the
#: mark is shed at once (no interval). Low is shed by the queue only while a higher priority arrives: the one
#: `stall_the_loop_after_a_high_reading` sends counts for the whole test.
LOW_SHED_BY_THE_LOOP_QUEUE = {
    "TIDEGATE_AUTH": "false",
    "TIDEGATE_FAULT_INJECTION": "true",
    "TIDEGATE_ADMISSION_LOOP_QUEUE_LOW": "2",
    "TIDEGATE_ADMISSION_LOOP_QUEUE_INTERVAL_S": "0",
    "TIDEGATE_ADMISSION_LOOP_QUEUE_HIGHER_RECENT_S": "600",
}


def stall_the_loop_after_a_high_reading(server: Server) -> Path:
    """A high-priority reading taken, then `stall_the_loop`."""
    first = httpx.post(server.url + "/api/v1/ingest", json=reading("dhigh-first"), headers={"X-Priority": "high"})
    assert first.status_code == 202
    return stall_the_loop(server)


def post_reading(http: httpx.AsyncClient, device: str, priority: str) -> Any:
    return http.post("/api/v1/ingest", json=reading(device), headers={"X-Priority": priority})


#: Every request logged (the test server logs none by default): `refusals_logged` reads them.
LOG_EVERY_REQUEST = {"TIDEGATE_LOG_FULL_BELOW_RPS": "1e9"}


def refusals_logged(server: Server) -> int:
    """Ingest requests the worker logged as answered 503 (with `LOG_EVERY_REQUEST`): a refusal made as the request
    arrived is logged then, on Granian's thread, whether the event loop runs or not (and whether its answer is held
    or not)."""
    text = server.log_path.read_text(errors="replace")
    return sum('"route":"/api/v1/ingest","status":503' in line for line in text.splitlines())


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    assert document["type"].startswith("urn:tidegate:problem:")
    assert {"title", "detail", "errors"} <= document.keys()
    return document


class TestIngest:
    def test_reading_accepted_then_duplicate(self, server: Server, client: httpx.Client) -> None:
        body = reading("dev-0", metrics={"temperature": 21.5})
        first = client.post("/api/v1/ingest", json=body, headers=key(server, "dev-0"))
        assert first.status_code == 202, first.text
        assert first.headers["x-durability"] == "spool"
        document = first.json()
        assert document["status"] == "accepted"
        assert len(document["event_id"]) == 32
        assert isinstance(document["ingest_lag_ms"], int)
        assert document["warnings"] == []
        again = client.post("/api/v1/ingest", json=body, headers=key(server, "dev-0"))
        assert again.status_code == 202
        assert again.json()["status"] == "duplicate"
        assert again.json()["event_id"] == document["event_id"]

    def test_semantic_warning_flags(self, server: Server, client: httpx.Client) -> None:
        response = client.post(
            "/api/v1/ingest", json=reading("dev-0", metrics={"temperature": 9999}), headers=key(server, "dev-0")
        )
        assert response.status_code == 202
        assert response.headers["x-tidegate-flagged"] == "true"
        assert "outside expected range" in response.json()["warnings"][0]

    def test_formats_and_encodings(self, server: Server, client: httpx.Client) -> None:
        headers = key(server, "dev-1")
        cases = [
            (cbor2.dumps(reading("dev-1", metrics={"a": 1})), {"Content-Type": "application/cbor"}),
            (
                gzip.compress(json.dumps(reading("dev-1", metrics={"a": 2})).encode()),
                {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            ),
            (
                zstandard.ZstdCompressor().compress(json.dumps(reading("dev-1", metrics={"a": 3})).encode()),
                {"Content-Type": "application/json", "Content-Encoding": "zstd"},
            ),
        ]
        for body, extra in cases:
            response = client.post("/api/v1/ingest", content=body, headers={**headers, **extra})
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "accepted"
        packed_array = gzip.compress(json.dumps([reading("dev-1", metrics={"g": i}) for i in range(2)]).encode())
        response = client.post("/api/v1/ingest", content=packed_array, headers={**headers, "Content-Encoding": "gzip"})
        assert [r["status"] for r in response.json()["results"]] == ["accepted"] * 2, "a compressed array is many"
        lines = b"\n".join(json.dumps(reading("dev-1", metrics={"n": i})).encode() for i in range(3))
        response = client.post(
            "/api/v1/ingest", content=lines, headers={**headers, "Content-Type": "application/x-ndjson"}
        )
        assert response.status_code == 202
        assert [r["status"] for r in response.json()["results"]] == ["accepted"] * 3

    def test_batch_partial_duplicate_and_all_bad(self, server: Server, client: httpx.Client) -> None:
        batch = {
            "device_id": "dev-2",
            "batch_id": f"b-{time.time_ns()}",
            "readings": [
                {"timestamp": iso_now(), "metrics": {"t": 1}},
                {"timestamp": iso_now(), "metrics": {"t": "hot"}},
                {"timestamp": iso_now(-1), "metrics": {"t": 2}},
            ],
        }
        response = client.post("/api/v1/ingest/batch", json=batch, headers=key(server, "dev-2"))
        assert response.status_code == 202, response.text
        document = response.json()
        assert (document["accepted"], document["rejected"], document["readings_count"]) == (2, 1, 3)
        (bad,) = document["results"]
        assert (bad["index"], bad["status"]) == (1, "rejected")
        assert bad["reason"][0]["path"] == "$.readings[1].metrics.t"
        again = client.post("/api/v1/ingest/batch", json=batch, headers=key(server, "dev-2"))
        assert again.status_code == 202 and again.json()["status"] == "duplicate"
        all_bad = {**batch, "batch_id": "b-bad", "readings": [{"timestamp": "never", "metrics": {}}]}
        problem = assert_problem(client.post("/api/v1/ingest/batch", json=all_bad, headers=key(server, "dev-2")), 400)
        assert {e["path"] for e in problem["errors"]} == {"$.readings[0].timestamp", "$.readings[0].metrics"}

    def test_batch_repeats_and_all_accepted(self, server: Server, client: httpx.Client) -> None:
        same = {"timestamp": iso_now(), "metrics": {"r": time.time_ns() % 10**6}}
        batch = {"device_id": "dev-2", "batch_id": f"r-{time.time_ns()}", "readings": [same, same]}
        document = client.post("/api/v1/ingest/batch", json=batch, headers=key(server, "dev-2")).json()
        assert (document["accepted"], document["duplicates"]) == (1, 1)
        event_id = document["results"][0]["event_id"]
        assert document["results"] == [
            {
                "index": 1,
                "status": "duplicate",
                "event_id": event_id,
                # The repeat's own occurrence, recorded in the archive as a duplicate.
                "archive_key": document["results"][0]["archive_key"],
            }
        ]
        assert document["results"][0]["archive_key"].endswith(f"/event_id={event_id}")
        clean = {
            **batch,
            "batch_id": f"c-{time.time_ns()}",
            "readings": [{"timestamp": iso_now(), "metrics": {"c": i}} for i in range(5)],
        }
        document = client.post("/api/v1/ingest/batch", json=clean, headers=key(server, "dev-2")).json()
        assert (document["status"], document["accepted"], document["results"]) == ("accepted", 5, [])

    def test_events_single_array_and_ndjson(self, server: Server, client: httpx.Client) -> None:
        headers = key(server, "dev-3")
        one = event(entity_id=f"user-{time.time_ns()}")
        first = client.post("/api/v1/events", json=one, headers=headers)
        assert first.status_code == 202 and first.json()["status"] == "ACCEPTED"
        assert first.json()["ingest_lag_ms"] > 0
        second = client.post("/api/v1/events", json=one, headers=headers)
        assert second.json() == {**first.json(), "status": "DUPLICATE", "ingest_lag_ms": second.json()["ingest_lag_ms"]}
        items = [one, event(entity_id="x1"), {"source": "s"}, event(entity_id="x1")]
        response = client.post("/api/v1/events", json=items, headers=headers)
        statuses = [(r["index"], r["status"]) for r in response.json()["results"]]
        assert statuses == [(0, "DUPLICATE"), (1, "ACCEPTED"), (2, "REJECTED"), (3, "DUPLICATE")]
        lines = "\n".join(json.dumps(event(entity_id=f"n-{time.time_ns()}-{i}")) for i in range(3))
        ndjson = client.post(
            "/api/v1/events", content=lines, headers={**headers, "Content-Type": "application/x-ndjson"}
        )
        assert [r["status"] for r in ndjson.json()["results"]] == ["ACCEPTED"] * 3

    def test_a_large_body_is_answered_like_a_small_one(self, server: Server, client: httpx.Client) -> None:
        # Over OFF_LOOP_BODY_BYTES: taken on the edge's accept thread rather than the event loop's.
        headers = {**key(server, "dev-3"), "Content-Type": "application/x-ndjson"}
        stamp = time.time_ns()
        lines = [json.dumps(event(entity_id=f"big-{stamp}-{i}", payload={"pad": "x" * 200})) for i in range(600)]
        lines[7] = json.dumps({"source": "no event_type"})
        lines[9] = lines[8]
        body = "\n".join(lines).encode()
        assert len(body) > OFF_LOOP_BODY_BYTES
        document = client.post("/api/v1/events", content=body, headers=headers).json()
        statuses = Counter(r["status"] for r in document["results"])
        assert statuses == {"ACCEPTED": 598, "REJECTED": 1, "DUPLICATE": 1}
        assert [r["status"] for r in document["results"][7:10]] == ["REJECTED", "ACCEPTED", "DUPLICATE"]
        again = client.post("/api/v1/events", content=body, headers=headers).json()
        assert Counter(r["status"] for r in again["results"]) == {"DUPLICATE": 599, "REJECTED": 1}
        ids = Counter(
            json.loads(value)["event_id"]
            for directory in (server.data_dir / "spool").iterdir()
            for value in tidegate.Spool.open_read_only(directory).read(0, durable_only=False)[0].values("events-raw")
            if f"big-{stamp}-".encode() in value
        )
        assert len(ids) == 598 and set(ids.values()) == {1}, "each accepted event spooled once"

    def test_a_chunked_body_is_counted_as_it_comes(self, server: Server, client: httpx.Client) -> None:
        headers = key(server, "dev-3")

        def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
            yield from (body[i : i + size] for i in range(0, len(body), size))

        one = json.dumps(event(entity_id=f"chunked-{time.time_ns()}")).encode()
        accepted = client.post("/api/v1/events", content=chunks(one, 16), headers=headers)
        assert accepted.status_code == 202 and accepted.json()["status"] == "ACCEPTED"
        endless = chunks(b"[" + b" " * (9 * 1024 * 1024) + b"]", 64 * 1024)
        assert_problem(client.post("/api/v1/events", content=endless, headers=headers), 413)

    def test_idempotency_key(self, server: Server, client: httpx.Client) -> None:
        headers = {**key(server, "dev-4"), "X-Idempotency-Key": f"k-{time.time_ns()}"}
        first = client.post("/api/v1/ingest", json=reading("dev-4", metrics={"a": 1}), headers=headers)
        other_body = client.post("/api/v1/ingest", json=reading("dev-4", metrics={"a": 2}), headers=headers)
        assert first.json()["status"] == "accepted"
        assert other_body.json()["status"] == "duplicate"

    def test_dry_run_writes_nothing(self, server: Server, client: httpx.Client) -> None:
        body = reading("dev-5", metrics={"dry": time.time_ns() % 1000})
        dry = client.post("/api/v1/ingest", json=body, headers={**key(server, "dev-5"), "X-Dry-Run": "true"})
        assert dry.status_code == 202 and dry.json()["dry_run"] is True
        assert dry.headers["x-durability"] == "none"
        real = client.post("/api/v1/ingest", json=body, headers=key(server, "dev-5"))
        assert real.json()["status"] == "accepted", "the dry run claimed nothing"
        assert real.json()["event_id"] == dry.json()["event_id"]

    def test_tail_prints_the_kafka_values(self, server: Server, client: httpx.Client) -> None:
        marker = time.time_ns() % 10**9
        response = client.post(
            "/api/v1/ingest", json=reading("dev-6", metrics={"marker": marker}), headers=key(server, "dev-6")
        )
        event_id = response.json()["event_id"]
        out = spooled_values(server.data_dir, "--topic", "telemetry-raw")
        values = [json.loads(line) for line in out.splitlines()]
        mine = [v for v in values if v["event_id"] == event_id]
        assert len(mine) == 1 and mine[0]["metrics"] == {"marker": marker}
        assert {"server_received_at", "ingest_lag_ms", "device_id", "timestamp"} <= mine[0].keys()
        stats = subprocess.run(
            [sys.executable, "-m", "tidegate", "spool", "stats", "--data-dir", str(server.data_dir)],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
        assert json.loads(stats)["w0"]["records_written"] >= len(values)


class TestAuth:
    def test_missing_unknown_and_bearer(self, server: Server, client: httpx.Client) -> None:
        body = reading("dev-0")
        assert_problem(client.post("/api/v1/ingest", json=body), 401)
        assert_problem(client.post("/api/v1/ingest", json=body, headers={"X-Device-Token": "tg_nope_nope"}), 401)
        token = key(server, "dev-0")["X-Device-Token"]
        ok = client.post(
            "/api/v1/ingest", json=reading("dev-0", metrics={"b": 1}), headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 202

    def test_foreign_device_is_forbidden(self, server: Server, client: httpx.Client) -> None:
        problem = assert_problem(
            client.post("/api/v1/ingest", json=reading("dev-1"), headers=key(server, "dev-0")), 403
        )
        assert problem["errors"][0]["path"] == "$.device_id"
        batch = {"device_id": "dev-1", "batch_id": "x", "readings": [{"timestamp": iso_now(), "metrics": {"a": 1}}]}
        assert_problem(client.post("/api/v1/ingest/batch", json=batch, headers=key(server, "dev-0")), 403)

    def test_revocation_under_load_takes_effect_and_sticks(self, server: Server) -> None:
        """A key revoked while its device sends is refused from then on (the key store reloads by itself), and a
        refused key never comes back. No bound on how soon: that is a figure, not a behaviour to assert here."""
        token = server.keys("dev-revoked")["dev-revoked"]
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    response = http.post(
                        "/api/v1/ingest",
                        json=reading("dev-revoked", metrics={"i": i}),
                        headers={"X-Device-Token": token},
                    )
                    statuses.append(response.status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            guard = time.monotonic() + 30  # a hang guard, not a speed requirement
            while 202 not in statuses and time.monotonic() < guard:
                time.sleep(0.05)
            # Before the key store has loaded the new key its requests are 401 too: only what follows the
            # revocation counts.
            revoked_from = len(statuses)
            subprocess.run(
                [sys.executable, "-m", "tidegate", "keys", "revoke", "--data-dir", str(server.data_dir), "dev-revoked"],
                check=True,
                capture_output=True,
            )

            def refused_tail() -> list[int]:
                tail = statuses[revoked_from:]
                return tail[tail.index(401) :] if 401 in tail else []

            while len(refused_tail()) < 20 and time.monotonic() < guard:
                time.sleep(0.05)
        finally:
            stop.set()
            worker.join()
        assert 202 in statuses[:revoked_from]
        after = refused_tail()
        assert after, f"the revoked key was never refused: {Counter(statuses[revoked_from:])}"
        assert len(after) >= 20 and set(after) == {401}, f"after the first 401: {Counter(after)}"


class TestErrors:
    def test_malformed_unsupported_and_too_large(self, server: Server, client: httpx.Client) -> None:
        headers = key(server, "dev-7")
        assert_problem(client.post("/api/v1/ingest", content=b'{"device_id":', headers=headers), 400)
        assert_problem(client.post("/api/v1/ingest", content=b"[1, NaN]", headers=headers), 400)
        assert_problem(
            client.post("/api/v1/ingest", content=b"x", headers={**headers, "Content-Type": "text/plain"}), 415
        )
        assert_problem(client.post("/api/v1/ingest", content=b"x", headers={**headers, "Content-Encoding": "br"}), 415)
        big = b"[" + b" " * (9 * 1024 * 1024) + b"]"
        assert_problem(client.post("/api/v1/ingest", content=big, headers=headers), 413)
        bomb = gzip.compress(big)
        assert_problem(
            client.post("/api/v1/ingest", content=bomb, headers={**headers, "Content-Encoding": "gzip"}), 413
        )
        invalid = assert_problem(client.post("/api/v1/ingest", json={"device_id": "dev-7"}, headers=headers), 400)
        assert {e["path"] for e in invalid["errors"]} == {"$.timestamp", "$.metrics"}
        assert_problem(
            client.post("/api/v1/ingest", json=reading("dev-7"), headers={**headers, "X-Priority": "urgent"}), 400
        )

    def test_trace_context_is_checked_and_copied(self, server: Server, client: httpx.Client) -> None:
        marker = time.time_ns() % 10**9
        batch = {
            "device_id": "dev-7",
            "batch_id": f"trace-{marker}",
            "readings": [{"timestamp": iso_now(), "metrics": {"trace": marker, "i": i}} for i in range(3)],
        }
        cases = [
            ({"traceparent": "0" * 400_000}, "header:traceparent"),
            ({"traceparent": "00-abc-def-01"}, "header:traceparent"),
            ({"traceparent": TRACEPARENT.upper()}, "header:traceparent"),
            ({"traceparent": TRACEPARENT, "tracestate": "Congo=x"}, "header:tracestate"),
            ({"traceparent": TRACEPARENT, "tracestate": "k=" + "v" * 600}, "header:tracestate"),
            ({"X-Idempotency-Key": "k" * 129}, "header:X-Idempotency-Key"),
        ]
        for extra, path in cases:
            response = client.post("/api/v1/ingest/batch", json=batch, headers={**key(server, "dev-7"), **extra})
            problem = assert_problem(response, 400)
            assert [error["path"] for error in problem["errors"]] == [path], extra.keys()
        tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        # Sent on two lines, tracestate is one list (W3C Trace Context requires combining them).
        trace_headers = [
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]
        response = client.post(
            "/api/v1/ingest/batch",
            json=batch,
            headers=[*key(server, "dev-7").items(), *trace_headers, ("X-Idempotency-Key", "k" * 128)],
        )
        assert response.status_code == 202, response.text
        data = [r for r in spooled_records(server.data_dir) if "dlq-stage" not in r[2]]  # not quarantined bodies
        mine = [r for r in data if json.loads(r[1]).get("batch_id") == batch["batch_id"]]
        assert len(mine) == 3, "the refused requests wrote nothing"
        for _, _, headers, _ in mine:
            assert (headers["traceparent"], headers["tracestate"]) == (TRACEPARENT.encode(), tracestate.encode())

    def test_a_record_too_large_for_kafka_with_its_headers_is_rejected(
        self, server: Server, client: httpx.Client
    ) -> None:
        """The limit (1,000,000 bytes) holds the whole Kafka record: key, value and headers."""
        received = int(time.time() * 1000)
        measure = tidegate.Validator(tidegate.Contract.event(), max_record_bytes=1 << 30)

        def big_event(payload_bytes: int) -> dict[str, Any]:
            chunks = {f"p{i}": "y" * 60_000 for i in range(payload_bytes // 60_000)}
            return event(entity_id="big", payload=chunks | {"rest": "y" * (payload_bytes % 60_000)})

        probe = 990_000
        value_bytes = len(
            measure.validate(json.dumps(big_event(probe)).encode(), received_at_ms=received).records.values()[0]
        )
        # Its value alone is 60 bytes under the limit; its key and headers take more than that.
        big = big_event(probe + tidegate.MAX_RECORD_BYTES - 60 - value_bytes)
        small = [event(entity_id=f"small-{time.time_ns()}-{i}") for i in range(2)]
        response = client.post(
            "/api/v1/events",
            json=[small[0], big, small[1]],
            headers={**key(server, "dev-7"), "traceparent": TRACEPARENT},
        )
        assert response.status_code == 202, response.text[:500]
        results = response.json()["results"]
        assert [r["status"] for r in results] == ["ACCEPTED", "REJECTED", "ACCEPTED"]
        assert [e["path"] for e in results[1]["errors"]] == ["$[1]"]
        assert "above the 1000000 byte limit" in results[1]["errors"][0]["message"]

    def test_ack_levels(self, server: Server, client: httpx.Client) -> None:
        headers = key(server, "dev-7")
        for ack, status in [("disk", 400), ("kafka", 400), ("KAFKA", 400), ("SPOOL", 202), ("spool", 202)]:
            response = client.post(
                "/api/v1/ingest",
                json=reading("dev-7", metrics={"ack": time.time_ns() % 10**9}),
                headers={**headers, "X-Ack": ack},
            )
            assert response.status_code == status, (ack, response.text)
            if status == 400:
                assert [e["path"] for e in assert_problem(response, 400)["errors"]] == ["header:X-Ack"]
            else:
                assert response.headers["x-durability"] == "spool"

    def test_methods_and_paths(self, client: httpx.Client) -> None:
        wrong_method = assert_problem(client.get("/api/v1/ingest"), 405)
        assert wrong_method["status"] == 405
        assert "POST" in client.get("/api/v1/ingest").headers["allow"]
        assert_problem(client.post("/api/v1/nothing", json={}), 404)
        assert_problem(client.get("/nothing"), 404)

    def test_hostile_paths_and_framing_get_a_4xx(self, server: Server, client: httpx.Client) -> None:
        # Paths Granian hands over decoded, which the bridge to the operations app must not decode again.
        assert_problem(client.get("/%E2%82%AC"), 404)
        assert_problem(client.get("/%2520x"), 404)

        def raw(head: bytes, chunks: int) -> bytes:
            """A chunked body of `chunks` MiB sent after `head`; the answer's status line."""
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(head)
                with contextlib.suppress(OSError):  # the server may answer and close before the body ends
                    for _ in range(chunks):
                        sock.sendall(b"100000\r\n" + b" " * 0x100000 + b"\r\n")
                return sock.recv(200).split(b"\r\n", 1)[0]

        # A chunked body with no end, to an operations path and, behind a small Content-Length, to ingest: both
        # are counted as they come and refused at the limit instead of being held in memory.
        assert raw(b"POST /health/live HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", 12).endswith(
            b" 413 Payload Too Large"
        )
        token = key(server, "dev-7")["X-Device-Token"].encode()
        smuggled = (
            b"POST /api/v1/ingest HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nX-Device-Token: " + token + b"\r\n\r\n"
        )
        assert raw(smuggled, 12).endswith(b" 413 Payload Too Large")
        # No WebSocket route: an upgrade request is the plain GET it also is.
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        assert client.get("/health/live", headers=upgrade).status_code == 200

    def test_a_refusal_before_the_body_keeps_the_connection_only_when_the_body_is_read(self, server: Server) -> None:
        # hyper (under Granian) closes a connection whose request body was dropped before it arrived whole, without
        # saying so: a keep-alive client then sends its next request on a closed connection and gets no answer at
        # all (seen in CI: a shed reading's connection, reused by the next request). So a refusal given before the
        # body is read either has Granian read the (small) body after the answer, and the connection stays usable,
        # or says `Connection: close`.
        token = key(server, "dev-6")["X-Device-Token"]

        def head(sock: socket.socket, extra: str, length: int) -> None:
            sock.sendall(
                f"POST /api/v1/ingest HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n{extra}\r\n".encode()
            )

        def answer(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
            """One answer: its status line, headers and body (as long as its Content-Length says)."""
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, f"closed without an answer after {received!r}"
                received += chunk
            top, _, rest = received.partition(b"\r\n\r\n")
            status, *lines = top.split(b"\r\n")
            fields = {
                name.strip().lower(): value.strip() for name, _, value in (ln.decode().partition(":") for ln in lines)
            }
            while len(rest) < int(fields["content-length"]):
                rest += sock.recv(65536)
            return status, fields, rest

        def closed(sock: socket.socket) -> bool:
            """Whether the server closes the connection (reading what else it sends)."""
            while chunk := sock.recv(65536):
                assert not chunk.startswith(b"HTTP/"), chunk
            return True

        # A small declared body, sent only after the refusal (refused natively: no key): no `Connection: close`;
        # the body is read once it comes, and the next request on the same connection is answered.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            head(sock, "", 400)
            status, fields, rest = answer(sock)
            assert status.split(b" ")[1] == b"401", status
            assert "connection" not in fields, fields
            assert json.loads(rest)["status"] == 401
            sock.sendall(b" " * 400)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            status, fields, rest = answer(sock)
            assert status.split(b" ")[1] == b"200", status
            assert json.loads(rest) == {"status": "alive"}
        # Refusals whose body is not read say so, and the server closes the connection.
        refusals = {
            "a declared body over 64 KiB (refused natively)": ("", 100_000, 401),
            "Expect: 100-continue (refused natively)": ("Expect: 100-continue\r\n", 400, 401),
            "an unknown X-Ack (refused in Python)": (f"X-Device-Token: {token}\r\nX-Ack: disk\r\n", 400, 400),
            "a Content-Length over the limit": (f"X-Device-Token: {token}\r\n", 1 << 30, 413),
        }
        for case, (extra, length, expected) in refusals.items():
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                head(sock, extra, length)
                status, fields, rest = answer(sock)
                assert status.split(b" ")[1] == str(expected).encode(), (case, status)
                assert fields.get("connection") == "close", (case, fields)
                assert json.loads(rest)["status"] == expected, case
                assert closed(sock), case
        # An answer given after the whole body was read keeps the connection open for the next request.
        with httpx.Client(base_url=server.url, timeout=30) as http:
            taken = http.post("/api/v1/ingest", json=reading("dev-6"), headers={"X-Device-Token": token})
            assert taken.status_code == 202
            assert "connection" not in taken.headers
            counts = http.get("/metrics").text
        assert metric(counts, 'tidegate_admission_refusal_connections_total{connection="kept"}') >= 1
        assert metric(counts, 'tidegate_admission_refusal_connections_total{connection="closed"}') >= 2

    def test_a_refused_request_whose_body_never_comes_is_closed(self, tmp_path: Path) -> None:
        # The body a refusal has Granian read after the answer (above) may never come: the connection is closed
        # once it is body_timeout_s late, as an admitted request's would be (with a 408).
        with Server(tmp_path, {"TIDEGATE_BODY_TIMEOUT_S": "0.5"}) as slow:
            with socket.create_connection(("127.0.0.1", slow.port), timeout=30) as sock:
                sock.sendall(
                    b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 400\r\n\r\n{"
                )
                received = b""
                while chunk := sock.recv(65536):  # the 401, then the server closes the connection
                    received += chunk
            assert received.startswith(b"HTTP/1.1 401"), received[:200]
            assert b"connection: close" not in received.lower()
            counts = httpx.get(slow.url + "/metrics").text
            assert metric(counts, "tidegate_admission_refusal_bodies_never_sent_total") == 1

    def test_slow_body_gets_408(self, tmp_path: Path) -> None:
        with Server(tmp_path, {"TIDEGATE_AUTH": "false", "TIDEGATE_BODY_TIMEOUT_S": "0.5"}) as slow:

            async def trickle() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", slow.port)
                writer.write(
                    b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{"
                )
                await writer.drain()
                data = await asyncio.wait_for(reader.read(4096), 10)
                writer.close()
                return data

            answer = asyncio.run(trickle())
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


class TestOperations:
    def test_health(self, client: httpx.Client) -> None:
        assert client.get("/health/live").json() == {"status": "alive"}
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

    def test_metrics(self, server: Server, client: httpx.Client) -> None:
        client.post("/api/v1/ingest", json=reading("dev-7", metrics={"m": 1}), headers=key(server, "dev-7"))
        before = client.get("/metrics").text
        high = {**key(server, "dev-7"), "X-Priority": "high"}
        assert client.post("/api/v1/ingest", json=reading("dev-7", metrics={"m": 2}), headers=high).status_code == 202
        text = client.get("/metrics").text
        # Latency per route and priority: the high reading is counted under high, the first under the default.
        for priority, added in (("high", 1), ("medium", 0), ("low", 0)):
            series = f'tidegate_ingest_latency_seconds_count{{route="ingest",priority="{priority}"}}'
            assert metric(text, series) - metric(before, series) == added, priority
        for name in [
            'tidegate_requests_total{route="ingest",status="202"}',
            "tidegate_records_total",
            "tidegate_ingest_latency_seconds_bucket",
            "tidegate_ingest_lag_ms_bucket",
            "tidegate_spool_bytes",
            "tidegate_spool_fsyncs_total",
            "tidegate_active_devices",
            "tidegate_shed_total",
            "tidegate_admission_loop_busy",
            "tidegate_admission_shed_level",
            'tidegate_admission_refused_total{reason="loop_busy",priority="low"}',
            "tidegate_rate_limited_total",
            "tidegate_kafka_last_send_latency_seconds",
            "tidegate_spool_failed_commits_total",
            "tidegate_delivery_up",
        ]:
            assert name in text, name
        # Every commit that made records durable is timed, the commit of the reading above included.
        # Per spool: the worker's main one, and high priority's own.
        commits = {
            spool: metric(text, f'tidegate_spool_commit_seconds_count{{spool="{spool}"}}') for spool in LANE_NAMES
        }
        assert sum(commits.values()) == metric(text, "tidegate_spool_fsyncs_total") >= 1
        assert commits["main"] >= 1
        for spool, count in commits.items():
            assert metric(text, f'tidegate_spool_commit_seconds_bucket{{spool="{spool}",le="+Inf"}}') == count
        assert metric(text, 'tidegate_spool_commit_seconds_sum{spool="main"}') > 0

    def test_spool_lag_counts_records_spooled_without_kafka(self, server: Server, client: httpx.Client) -> None:
        response = client.post(
            "/api/v1/ingest", json=reading("dev-6", metrics={"lag": 1}), headers=key(server, "dev-6")
        )
        assert response.status_code == 202
        gauge = next(
            float(line.split()[-1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("tidegate_spool_lag_records ")
        )
        command = [sys.executable, "-m", "tidegate", "spool", "stats", "--data-dir", str(server.data_dir)]
        stats = json.loads(subprocess.run(command, check=True, capture_output=True, timeout=30).stdout)
        # The gauge sums the worker's spools: its main one and high priority's own (`w0h`, which other tests fill).
        assert gauge == sum(stats[name]["lag_records"] for name in ("w0", "w0h") if name in stats) > 0

    def test_capabilities_and_silent_devices_for_operators_only(self, server: Server, client: httpx.Client) -> None:
        caps = client.get("/api/v1/capabilities").json()
        assert caps["formats"] == ["application/json", "application/x-ndjson", "application/cbor"]
        assert caps["limits"]["max_batch_readings"] == 1000
        client.post("/api/v1/ingest", json=reading("dev-6", metrics={"s": 1}), headers=key(server, "dev-6"))
        silent = "/api/v1/devices/silent"
        assert_problem(client.get(silent), 401)
        assert_problem(client.get(silent, headers={"X-Operator-Key": "tgo_000000000000_nope"}), 401)
        device_key = key(server, "dev-6")["X-Device-Token"]
        assert_problem(client.get(silent, headers={"Authorization": f"Bearer {device_key}"}), 403)
        operator = {"Authorization": f"Bearer {server.operator_key()}"}
        deadline = time.monotonic() + 30
        while (listing := client.get(silent, headers=operator)).status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.05)  # the key store is reloaded within a second
        assert listing.status_code == 200
        assert listing.json()["count"] == 0, "dev-6 spoke within 3x the default interval"
        assert_problem(client.get(silent, params={"limit": 0}, headers=operator), 400)
        assert_problem(client.get(silent, params={"cursor": "not a cursor"}, headers=operator), 400)


class TestAdmission:
    def test_rate_limit_with_retry_after(self, tmp_path: Path) -> None:
        # A token every 1,000 s: the third request is refused however slow the machine is between them.
        env = {"TIDEGATE_RATE_PER_DEVICE": "0.001", "TIDEGATE_BURST_PER_DEVICE": "2"}
        limited = Server(tmp_path, env)
        token = limited.keys("slow-dev")["slow-dev"]
        with limited, httpx.Client(base_url=limited.url) as http:
            codes = [
                http.post(
                    "/api/v1/ingest", json=reading("slow-dev", metrics={"i": i}), headers={"X-Device-Token": token}
                )
                for i in range(3)
            ]
            assert [c.status_code for c in codes] == [202, 202, 429]
            assert_problem(codes[2], 429)
            # The wait for the next token: 1,000 s less the time the requests took, which no clock of the test
            # measures: any time short of the suite's hang guard passes.
            assert 1000 - HANG_GUARD_S <= int(codes[2].headers["retry-after"]) <= 1000

    def test_decompressed_bytes_are_budgeted_per_device(self, tmp_path: Path) -> None:
        """A few kilobytes of zstd that expand to megabytes: the device pays for what it made the worker decode
        (without the budget every one of these was answered 202, and 400/413 bombs cost nothing)."""
        env = {
            # Refills at 1 kB/s: the 0.5 MB of debt the first body leaves lasts minutes, however slow the machine.
            "TIDEGATE_DECODED_BYTES_PER_DEVICE": "1000",
            "TIDEGATE_DECODED_BYTES_BURST_PER_DEVICE": "1000000",
            "TIDEGATE_MAX_BODY_BYTES": "2000000",
        }
        budgeted = Server(tmp_path, env)
        tokens = budgeted.keys("bomber", "neighbour", "bad-bomber")
        # 1.5 MB of valid NDJSON events compress to a few kilobytes.
        lines = b"\n".join(json.dumps(event(payload={"pad": "x" * 1400, "i": i})).encode() for i in range(1000))
        bomb = zstandard.ZstdCompressor().compress(lines)
        assert len(bomb) < len(lines) // 50
        headers = {
            "X-Device-Token": tokens["bomber"],
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "zstd",
        }
        with budgeted, httpx.Client(base_url=budgeted.url, timeout=30) as http:
            first = http.post("/api/v1/events", content=bomb, headers=headers)
            assert first.status_code == 202, first.text
            second = http.post("/api/v1/events", content=bomb, headers=headers)
            problem = assert_problem(second, 429)
            assert problem["type"].endswith(":byte-budget")
            # The debt (decoded bytes over the burst) repaid at 1 kB/s, less what was repaid while the two requests
            # took (any time short of the suite's hang guard): a bounded wait, not forever.
            debt_s = (len(lines) - 1_000_000) / 1000
            assert debt_s - HANG_GUARD_S <= int(second.headers["retry-after"]) <= debt_s + 1
            neighbour = http.post(
                "/api/v1/ingest", json=reading("neighbour"), headers={"X-Device-Token": tokens["neighbour"]}
            )
            assert neighbour.status_code == 202
            # A bomb that fails to decode is charged too: the limit, not its few compressed bytes.
            other = tokens["bad-bomber"]
            too_big = zstandard.ZstdCompressor().compress(b"[" + b" " * 3_000_000 + b"]")
            bad_headers = {"X-Device-Token": other, "Content-Type": "application/json", "Content-Encoding": "zstd"}
            assert_problem(http.post("/api/v1/events", content=too_big, headers=bad_headers), 413)
            assert_problem(http.post("/api/v1/events", content=too_big, headers=bad_headers), 429)

    def test_low_priority_is_shed_first(self, tmp_path: Path) -> None:
        # The first commit comes 8 s after the first reading; each step below waits for the server to hold the
        # readings it needs (milliseconds), so the window is only how long those steps may take together.
        env = {"TIDEGATE_AUTH": "false", "TIDEGATE_MAX_IN_FLIGHT_RECORDS": "10", "TIDEGATE_COMMIT_WINDOW_MS": "8000"}
        with Server(tmp_path, env) as busy:

            async def scenario() -> dict[str, int]:
                async with httpx.AsyncClient(base_url=busy.url, timeout=20) as http:
                    # Eight medium readings wait for the slow group commit: utilization 0.8.
                    pending = [asyncio.create_task(post_reading(http, f"dmedium{i}", "medium")) for i in range(8)]
                    await until_in_flight(http, 8)
                    low = await post_reading(http, "dlow0", "low")
                    ninth = asyncio.create_task(post_reading(http, "dmedium8", "medium"))
                    await until_in_flight(http, 9)
                    # Nine waiting: utilization 0.9, so medium is shed too while high still gets in.
                    medium = await post_reading(http, "dmedium9", "medium")
                    high = asyncio.create_task(post_reading(http, "dhigh0", "high"))
                    done = await asyncio.gather(*pending, ninth, high)
                    return {
                        "low": low.status_code,
                        "medium_at_0.8": done[8].status_code,
                        "medium_at_0.9": medium.status_code,
                        "high": done[9].status_code,
                        "waiting": min(r.status_code for r in done[:8]),
                        "retry_after": int(low.headers.get("retry-after", "0")),
                    }

            outcome = asyncio.run(scenario())
            # The refusal's Retry-After comes from the measured drain rate, with jitter; whatever the machine's speed
            # the server keeps it within 1-30 s (the core's `AdaptiveLimit::retry_after`), and sends what is left of it
            # once the refusal was held (`admission_refusal_hold_s`): that range, not a figure.
            assert 0 <= outcome.pop("retry_after") <= 30
            assert outcome == {
                "low": 503,
                "medium_at_0.8": 202,
                "medium_at_0.9": 503,
                "high": 202,
                "waiting": 202,
            }
            shed = httpx.get(busy.url + "/metrics").text
            assert 'tidegate_shed_total{priority="low"} 1' in shed
            # Both refusals were made as the requests arrived, before they waited for the event loop.
            assert 'tidegate_admission_refused_on_arrival_total{route="ingest"} 2' in shed

    def test_requests_waiting_for_a_stalled_loop_shed_low_as_they_arrive_and_let_high_in(self, tmp_path: Path) -> None:
        # Answered as they arrive, with the loop stopped: not held (the next test holds them).
        env = {**LOW_SHED_BY_THE_LOOP_QUEUE, "TIDEGATE_ADMISSION_REFUSAL_HOLD_S": "0"}
        with Server(tmp_path, env) as server:
            faults = stall_the_loop_after_a_high_reading(server)

            async def scenario() -> tuple[list[int], int]:
                async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                    lows = [asyncio.create_task(post_reading(http, f"dlow{i}", "low")) for i in range(6)]
                    # Two lows fill low's part of the queue; the other four are answered as they arrive, with the
                    # loop stopped. Then a high one, which fits (256), whether it arrives before the loop resumes
                    # or after; the loop resumes and begins them all.
                    refused = 0
                    for answer in asyncio.as_completed(lows):
                        if (await answer).status_code == 503:
                            refused += 1
                            if refused == 4:
                                break
                    high = asyncio.create_task(post_reading(http, "dhigh0", "high"))
                    (faults / "loop-resume").touch()
                    return sorted([(await low).status_code for low in lows]), (await high).status_code

            lows, high = asyncio.run(scenario())
            assert (lows, high) == ([202, 202, 503, 503, 503, 503], 202)
            metrics = httpx.get(server.url + "/metrics").text
            assert metric(metrics, 'tidegate_admission_refused_total{reason="loop_queue",priority="low"}') == 4
            assert metric(metrics, 'tidegate_admission_refused_on_arrival_total{route="ingest"}') == 4
            assert metric(metrics, "tidegate_admission_loop_queue") == 0
            assert metric(metrics, 'tidegate_shed_total{priority="low"}') == 4
            assert metric(metrics, "tidegate_admission_refusals_held_total") == 0

    def test_sheds_refused_as_they_arrive_are_held_then_answered_by_the_loop(self, tmp_path: Path) -> None:
        # The test above with refusals held (the default): the four lows shed as they arrive are decided with the
        # loop stopped (each is logged then, on Granian's thread) and answered only once it runs, 503 with what is
        # left of their Retry-After.
        with Server(tmp_path, {**LOW_SHED_BY_THE_LOOP_QUEUE, **LOG_EVERY_REQUEST}) as server:
            faults = stall_the_loop_after_a_high_reading(server)

            async def scenario() -> tuple[int, list[tuple[int, str | None]]]:
                async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                    lows = [asyncio.create_task(post_reading(http, f"dlow{i}", "low")) for i in range(6)]
                    await wait_until(lambda: refusals_logged(server) == 4, "four lows refused as they arrive")
                    answered_before_the_loop_ran = sum(low.done() for low in lows)
                    (faults / "loop-resume").touch()
                    answers = [await low for low in lows]
                    return answered_before_the_loop_ran, sorted(
                        (a.status_code, a.headers.get("retry-after")) for a in answers
                    )

            answered_before_the_loop_ran, answers = asyncio.run(scenario())
            assert answered_before_the_loop_ran == 0
            assert [status for status, _ in answers] == [202, 202, 503, 503, 503, 503]
            # What is left of each one's Retry-After (1-30 s) once it was held.
            assert all(0 <= int(retry_after or -1) <= 29 for status, retry_after in answers if status == 503)
            metrics = httpx.get(server.url + "/metrics").text
            assert metric(metrics, 'tidegate_admission_refused_on_arrival_total{route="ingest"}') == 4
            assert metric(metrics, "tidegate_admission_refusals_held_total") == 4
            assert metric(metrics, "tidegate_admission_refusals_holding") == 0

    def test_a_refusal_still_held_when_the_worker_stops_is_answered(self, tmp_path: Path) -> None:
        # Low is shed by utilization as it arrives (Retry-After 1: held 0.5-1 s, and what is left of the 1 s sent,
        # rounded: 0, or 1 after half a second exactly). The loop is stopped from before it arrives until after
        # SIGTERM has reached the server, so the refusal is still held when the stop begins.
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_FAULT_INJECTION": "true",
            "TIDEGATE_SHED_LOW_AT": "0",
            **LOG_EVERY_REQUEST,
        }
        server = Server(tmp_path, env).start()
        faults = stall_the_loop(server)

        async def held_at_stop() -> tuple[int, str | None]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                request = asyncio.create_task(post_reading(http, "dlow", "low"))
                await wait_until(lambda: refusals_logged(server) == 1, "the low reading refused as it arrived")
                stopper = asyncio.create_task(asyncio.to_thread(server.stop))
                await wait_until(lambda: "Shutting down granian" in server.log_tail(), "the stop to begin")
                (faults / "loop-resume").touch()
                response = await request
                assert await stopper == 0
                return response.status_code, response.headers.get("retry-after")

        assert asyncio.run(held_at_stop()) in {(503, "0"), (503, "1")}

    def test_the_bulk_lane_sheds_a_second_large_low_body_and_nothing_else(self, tmp_path: Path) -> None:
        # One large low-priority body in flight (its headers sent, its body not yet). With no higher priority
        # arriving, a second is taken (a refusal would help no one); once a high reading has arrived, a third is
        # shed, while a small low reading and large medium and high bodies are taken; once the first is answered,
        # low's place is free again. Without the lane the third large body was taken like the first.
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_ADMISSION_BULK_BODIES": "1",
            # The high reading sent mid-test counts as arriving for the rest of it.
            "TIDEGATE_ADMISSION_LOOP_QUEUE_HIGHER_RECENT_S": "600",
        }

        def large(tag: str) -> bytes:
            lines = (json.dumps(event(entity_id=f"{tag}-{i}", payload={"pad": "x" * 200})) for i in range(400))
            body = "\n".join(lines).encode()
            assert len(body) >= OFF_LOOP_BODY_BYTES
            return body

        ndjson = {"Content-Type": "application/x-ndjson"}
        with Server(tmp_path, env) as server, httpx.Client(base_url=server.url, timeout=60) as http:

            def bulk_in_flight(priority: str) -> float:
                text = http.get("/metrics").text
                return metric(text, f'tidegate_admission_bulk_in_flight{{priority="{priority}"}}')

            held = large("held")
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                head = (
                    f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                    f"X-Priority: low\r\nContent-Length: {len(held)}\r\n\r\n"
                ).encode()
                sock.sendall(head + held[:1000])
                wait_for(lambda: bulk_in_flight("low") == 1, "the held body to take low's place in the bulk lane")
                second = http.post("/api/v1/events", content=large("second"), headers={**ndjson, "X-Priority": "low"})
                assert second.status_code == 202, "no higher priority arriving: not held"
                alarm = http.post("/api/v1/ingest", json=reading("dalarm"), headers={"X-Priority": "high"})
                assert alarm.status_code == 202
                third = http.post("/api/v1/events", content=large("third"), headers={**ndjson, "X-Priority": "low"})
                assert assert_problem(third, 503)["type"].endswith(":shed")
                assert 0 <= int(third.headers["retry-after"]) <= 30  # less the hold it was answered after
                small = http.post("/api/v1/ingest", json=reading("dsmall"), headers={"X-Priority": "low"})
                assert small.status_code == 202
                for priority in ("medium", "high"):
                    taken = http.post(
                        "/api/v1/events", content=large(priority), headers={**ndjson, "X-Priority": priority}
                    )
                    assert taken.status_code == 202, taken.text
                sock.sendall(held[1000:])
                answer = sock.recv(65536)
                assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
            wait_for(lambda: bulk_in_flight("low") == 0, "the held body's place to be given back")
            again = http.post("/api/v1/events", content=large("again"), headers={**ndjson, "X-Priority": "low"})
            assert again.status_code == 202
            metrics = http.get("/metrics").text
            assert metric(metrics, 'tidegate_admission_refused_total{reason="bulk",priority="low"}') == 1
            assert metric(metrics, 'tidegate_shed_total{priority="low"}') == 1
            # The lane's width as configured; it narrows only on high priority's time (the core's limit.rs tests
            # that with its own clock), and judges nothing before 8 high requests.
            assert metric(metrics, "tidegate_admission_bulk_places") == 1
            assert metric(metrics, "tidegate_admission_bulk_narrowed_total") == 0
            assert metric(metrics, "tidegate_admission_high_slowdown") == 0

    def test_a_high_priority_request_queued_last_for_a_busy_loop_is_taken_first(self, tmp_path: Path) -> None:
        # The loop stalled, six medium readings wait for it, then a high one: first come, first served, the high
        # one would be spooled last; in the loop's first lane (`tidegate.loop`) its task, its body and its commit
        # run before the others' (it is spooled first; in one spool, to see the order).
        env = {"TIDEGATE_AUTH": "false", "TIDEGATE_FAULT_INJECTION": "true", "TIDEGATE_HIGH_PRIORITY_SPOOL": "false"}
        with Server(tmp_path, env) as server:
            assert httpx.post(server.url + "/api/v1/ingest", json=reading("dwarm")).status_code == 202
            faults = stall_the_loop(server)

            async def queued_for_the_loop(at_least: float) -> None:
                # What screening let through and the stalled loop has not begun (cost units, about 1 a reading).
                def queued() -> bool:
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        return float((faults / "loop-queue").read_text()) >= at_least
                    return False

                await wait_until(queued, f"{at_least:g} requests to wait for the stalled loop")

            async def scenario() -> list[int]:
                async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                    mediums = [asyncio.create_task(post_reading(http, f"dmedium{i}", "medium")) for i in range(6)]
                    await queued_for_the_loop(6)
                    high = asyncio.create_task(post_reading(http, "dhigh0", "high"))
                    await queued_for_the_loop(7)
                    (faults / "loop-resume").touch()
                    return [(await request).status_code for request in (*mediums, high)]

            assert asyncio.run(scenario()) == [202] * 7
            devices = [json.loads(value)["device_id"] for _, value, _, _ in spooled_records(server.data_dir)]
            assert devices[0] == "dwarm" and sorted(devices[1:]) == sorted(
                ["dhigh0"] + [f"dmedium{i}" for i in range(6)]
            )
            assert devices[1] == "dhigh0", devices

    def test_full_spool_answers_503_spool_full_and_not_ready(self, tmp_path: Path) -> None:
        # No archive (nor Kafka): nothing frees room, so the spool stays full.
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_SPOOL_QUOTA_BYTES": "65536",
            "TIDEGATE_SPOOL_SEGMENT_BYTES": "16384",
            "TIDEGATE_ARCHIVE": "false",
        }
        with Server(tmp_path, env) as tiny, httpx.Client(base_url=tiny.url) as http:
            statuses = []
            for i in range(200):
                # High priority is never shed for spool fill, so the spool really reaches its quota.
                response = http.post(
                    "/api/v1/ingest",
                    json=reading(f"fill-{i}", metadata={"pad": "x" * 400}),
                    headers={"X-Priority": "high"},
                )
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert assert_problem(response, 503)["type"] == "urn:tidegate:problem:spool-full"
                    assert response.headers["retry-after"]
                    break
            assert statuses[0] == 202 and statuses[-1] == 503
            wait_for(lambda: http.get("/health/ready").status_code == 503, "not ready once the spool is full")
            # From then on refused before the body is read, and still told why (it said not-ready before).
            after = http.post("/api/v1/ingest", json=reading("fill-after"), headers={"X-Priority": "high"})
            assert assert_problem(after, 503)["type"] == "urn:tidegate:problem:spool-full"
            assert after.headers["retry-after"]


class TestLifecycle:
    def test_each_worker_owns_a_spool_and_one_for_high_priority(self, tmp_path: Path) -> None:
        with Server(tmp_path, {"TIDEGATE_AUTH": "false"}, workers=2) as pair, httpx.Client(base_url=pair.url) as http:
            ids = set()
            for i in range(40):
                priority = "high" if i % 4 == 0 else "low"
                headers = {"Connection": "close", "X-Priority": priority}
                response = http.post("/api/v1/ingest", json=reading(f"w-{i}"), headers=headers)
                assert response.status_code == 202
                ids.add(response.json()["event_id"])
            # Each worker makes its spools as it starts, and the server is up once one of them is.
            wait_for(
                lambda: sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["w0", "w0h", "w1", "w1h"],
                "both workers' spools",
            )
            out = spooled_values(tmp_path)
            assert {json.loads(line)["event_id"] for line in out.splitlines()} == ids
            high = {json.loads(value)["event_id"] for _, value, _, _ in spooled_records(tmp_path, "w*h")}
            assert len(high) == 10, "the high readings, in high priority's spools"
            assert high <= ids

    def test_sigkill_loses_nothing_acknowledged_and_dedup_survives(self, tmp_path: Path) -> None:
        env = {"TIDEGATE_AUTH": "false"}
        first = Server(tmp_path, env).start()
        acknowledged: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=first.url) as http:
            for i in range(50):
                body = reading("crash-dev", metrics={"i": i})
                response = http.post("/api/v1/ingest", json=body)
                assert response.status_code == 202
                acknowledged[response.json()["event_id"]] = body
        first.stop(kill=True)
        again = Server(tmp_path, env)
        again.port = first.port
        with again, httpx.Client(base_url=again.url) as http:
            out = spooled_values(tmp_path)
            spooled = {json.loads(line)["event_id"] for line in out.splitlines()}
            assert set(acknowledged) <= spooled
            event_id, body = next(iter(acknowledged.items()))
            retry = http.post("/api/v1/ingest", json=body)
            assert retry.json() == {**retry.json(), "status": "duplicate", "event_id": event_id}

    def test_sigterm_finishes_in_flight_requests(self, tmp_path: Path) -> None:
        # The reading waits for a commit 3 s away; SIGTERM is sent once the server holds it, not after a guess.
        env = {"TIDEGATE_AUTH": "false", "TIDEGATE_COMMIT_WINDOW_MS": "3000"}
        server = Server(tmp_path, env).start()

        async def in_flight() -> int:
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
                request = asyncio.create_task(http.post("/api/v1/ingest", json=reading("term-dev")))
                await until_in_flight(http, 1)
                stopper = asyncio.create_task(asyncio.to_thread(server.stop))
                response = await request
                await stopper
                return response.status_code

        assert asyncio.run(in_flight()) == 202
        out = spooled_values(tmp_path)
        assert len(out.splitlines()) == 1


def test_every_documented_path_was_exercised(server: Server, openapi: OpenApiChecker) -> None:
    """Runs last in this module: the OpenAPI document is valid and the responses above matched it."""
    assert openapi.checked >= 30
    assert openapi.violations == []
