"""Quarantine: what is refused is kept, as received, on the dead-letter topic. Against a real Granian server (the
spool read back), a real Kafka-protocol broker, and the native validator."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import cbor2
import httpx
import pytest
import tidegate
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.server import Server

from tests.conftest import key, metric, reading
from tests.openapi_check import OpenApiChecker
from tests.test_http import spooled_records

DEVICES = ("q-0", "q-1", "q-2", "q-3", "q-4")

Record = tuple[bytes | None, bytes, dict[str, bytes], int]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A budget of 4,000 bytes per device that refills at 1 byte/s: enough for every case below but the bound's.
    instance = Server(
        tmp_path_factory.mktemp("quarantine"),
        {
            "TIDEGATE_RATE_PER_DEVICE": "1000",
            "TIDEGATE_BURST_PER_DEVICE": "1000",
            "TIDEGATE_QUARANTINE_DEVICE_BYTES_PER_S": "1",
            "TIDEGATE_QUARANTINE_DEVICE_BURST_BYTES": "4000",
        },
    )
    instance.device_keys = instance.keys(*DEVICES)  # type: ignore[attr-defined]
    with instance:
        yield instance


def quarantined(data_dir: Path, device: str) -> list[Record]:
    """The device's quarantined records in the spool, in order."""
    return [r for r in spooled_records(data_dir) if "dlq-stage" in r[2] and r[2].get("device_id") == device.encode()]


def test_a_batch_keeps_its_good_records_and_quarantines_the_bad_ones_as_received(
    server: Server, client: httpx.Client
) -> None:
    before = client.get("/metrics").text
    good = json.dumps(reading("q-0", metrics={"t": 1}))
    malformed = '{"device_id": "q-0", "metrics": '
    late = '{ "device_id":"q-0",  "timestamp": "yesterday", "metrics": {"t": 2} }'
    body = f"{good}\n{malformed}\n\n{late}\n"
    response = client.post(
        "/api/v1/ingest", content=body, headers={**key(server, "q-0"), "Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-tidegate-quarantined"] == "2"
    statuses = [item["status"] for item in response.json()["results"]]
    assert statuses == ["accepted", "rejected", "rejected"], "the answer is as it was"
    accepted_id = response.json()["results"][0]["event_id"]
    records = spooled_records(server.data_dir)
    data = [r for r in records if "dlq-stage" not in r[2] and r[0] == b"q-0"]
    assert [json.loads(value)["event_id"] for _, value, _, _ in data] == [accepted_id]
    letters = quarantined(server.data_dir, "q-0")
    assert [value for _, value, _, _ in letters] == [malformed.encode(), late.encode()]
    first, second = (headers for _, _, headers, _ in letters)
    assert (first["dlq-stage"], first["dlq-index"]) == (b"decode", b"1")
    assert first["dlq-reason"].startswith(b"$: malformed JSON")
    assert (second["dlq-stage"], second["dlq-index"]) == (b"contract", b"2")
    assert second["dlq-reason"] == b"$.timestamp: must be an RFC 3339 date-time with a time zone"
    for headers in (first, second):
        assert headers["dlq-source"] == b"http"
        assert headers["content-type"] == b"application/json"
        assert headers["schema"] == b"telemetry/v1"
        assert len(headers["dlq-id"]) == 32
    assert {key for key, _, _, _ in letters} == {b"q-0"}
    after = client.get("/metrics").text
    for stage in ("decode", "contract"):
        name = f'tidegate_quarantined_records_total{{stage="{stage}"}}'
        assert metric(after, name) == metric(before, name) + 1
    name = 'tidegate_records_total{outcome="accepted",priority="medium"}'
    assert metric(after, name) == metric(before, name) + 1, "a quarantined record is never counted accepted"


def test_each_format_quarantines_the_bytes_of_its_record(server: Server, client: httpx.Client) -> None:
    headers = key(server, "q-1")
    good = reading("q-1", metrics={"f": 1})
    # A JSON array: the element as written, white space and all.
    element = '{"device_id": "q-1",\n  "metrics": {"f": "two"}}'
    body = f"[{json.dumps(good)}, {element} ]"
    response = client.post("/api/v1/ingest", content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    # CBOR: the array's item; a batch: its reading.
    item = cbor2.dumps({"device_id": "q-1", "timestamp": b"\x00", "metrics": {"f": 3}})
    cbor_body = b"\x82" + cbor2.dumps(reading("q-1", metrics={"f": 4})) + item
    response = client.post("/api/v1/ingest", content=cbor_body, headers={**headers, "Content-Type": "application/cbor"})
    assert response.status_code == 202, response.text
    bad_reading = '{"timestamp": "soon", "metrics": {"f": 5}}'
    good_reading = json.dumps({"metrics": {"f": 6}, "timestamp": good["timestamp"]})
    batch = f'{{"device_id": "q-1", "batch_id": "qb-1", "readings": [{good_reading}, {bad_reading}]}}'
    response = client.post(
        "/api/v1/ingest/batch", content=batch, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["rejected"] == 1
    assert response.headers["x-tidegate-quarantined"] == "1"
    letters = quarantined(server.data_dir, "q-1")
    assert [value for _, value, _, _ in letters] == [element.encode(), item, bad_reading.encode()]
    assert [headers["content-type"] for _, _, headers, _ in letters] == [
        b"application/json",
        b"application/cbor",
        b"application/json",
    ]
    assert letters[2][2]["dlq-reason"] == b"$.readings[1].timestamp: must be an RFC 3339 date-time with a time zone"


def test_a_body_refused_as_a_whole_is_quarantined_as_it_was_sent(server: Server, client: httpx.Client) -> None:
    headers = key(server, "q-2")
    malformed = gzip.compress(b'[{"device_id": "q-2"},')
    response = client.post(
        "/api/v1/ingest",
        content=malformed,
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 400
    assert response.headers["x-tidegate-quarantined"] == "1"
    detail = response.json()["detail"]
    unsupported = b"device_id=q-2&t=1"
    response = client.post(
        "/api/v1/ingest", content=unsupported, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    foreign = json.dumps(reading("q-3")).encode()
    response = client.post("/api/v1/ingest", content=foreign, headers=headers)
    assert response.status_code == 403
    assert response.headers["x-tidegate-quarantined"] == "1"
    # All invalid: a 400 whose records are quarantined, one by one.
    invalid = json.dumps([{"device_id": "q-2"}, {"device_id": "q-2", "metrics": {}}]).encode()
    response = client.post("/api/v1/ingest", content=invalid, headers=headers)
    assert response.status_code == 400
    assert response.headers["x-tidegate-quarantined"] == "2"
    letters = quarantined(server.data_dir, "q-2")
    assert [value for _, value, _, _ in letters[:3]] == [malformed, unsupported, foreign]
    stages = [(h["dlq-stage"], h["content-type"], h.get("content-encoding")) for _, _, h, _ in letters]
    assert stages[:3] == [
        (b"decode", b"application/json", b"gzip"),
        (b"decode", b"application/x-www-form-urlencoded", None),
        (b"auth", b"application/json", None),
    ]
    assert letters[0][2]["dlq-reason"] == detail.encode()
    assert b"not q-3" in letters[2][2]["dlq-reason"]
    assert [h["dlq-stage"] for _, _, h, _ in letters[3:]] == [b"contract", b"contract"]
    assert all("dlq-index" not in h for _, _, h, _ in letters[:3])


def test_nothing_is_quarantined_without_a_device_to_charge_or_twice_for_a_repeat(
    server: Server, client: httpx.Client
) -> None:
    before = len([r for r in spooled_records(server.data_dir) if "dlq-stage" in r[2]])
    unauthenticated = client.post("/api/v1/ingest", content=b"{junk")
    assert unauthenticated.status_code == 401
    assert "x-tidegate-quarantined" not in unauthenticated.headers
    # A bad header is refused before the body is looked at.
    bad_header = client.post("/api/v1/ingest", content=b"{junk", headers={**key(server, "q-3"), "X-Ack": "never"})
    assert bad_header.status_code == 400
    dry = client.post("/api/v1/ingest", content=b"{junk", headers={**key(server, "q-3"), "X-Dry-Run": "true"})
    assert dry.status_code == 400
    assert "x-tidegate-quarantined" not in dry.headers
    assert len([r for r in spooled_records(server.data_dir) if "dlq-stage" in r[2]]) == before
    # The same refused body twice: one copy (the same dlq-id), though each answer says it is in quarantine.
    for _ in range(2):
        repeat = client.post("/api/v1/ingest", content=b"{same junk", headers=key(server, "q-3"))
        assert repeat.headers["x-tidegate-quarantined"] == "1"
    assert [value for _, value, _, _ in quarantined(server.data_dir, "q-3")] == [b"{same junk"]
    # The same bad record in two different bodies is kept from each: only a repeat of a body is one copy.
    for n in range(2):
        body = json.dumps([reading("q-3", metrics={"body": n}), {"device_id": "q-3"}])
        assert client.post("/api/v1/ingest", content=body, headers=key(server, "q-3")).status_code == 202
    values = [value for _, value, _, _ in quarantined(server.data_dir, "q-3")]
    assert values == [b"{same junk", b'{"device_id": "q-3"}', b'{"device_id": "q-3"}']


def test_a_device_cannot_fill_the_spool_with_junk(server: Server, client: httpx.Client) -> None:
    """The budget is 4,000 bytes; each item costs its bytes plus 256."""
    before = metric(client.get("/metrics").text, "tidegate_quarantine_dropped_total")
    junk = [b"{" + bytes([65 + i]) * 1500 for i in range(4)]
    answers = [client.post("/api/v1/ingest", content=body, headers=key(server, "q-4")) for body in junk]
    assert [answer.status_code for answer in answers] == [400] * 4, "the client's answer is the same"
    assert [answer.headers.get("x-tidegate-quarantined") for answer in answers] == ["1", "1", None, None]
    assert [value for _, value, _, _ in quarantined(server.data_dir, "q-4")] == junk[:2]
    assert metric(client.get("/metrics").text, "tidegate_quarantine_dropped_total") == before + 2
    # Another device's budget is its own.
    other = client.post("/api/v1/ingest", content=b"{other junk", headers=key(server, "q-1"))
    assert other.headers["x-tidegate-quarantined"] == "1"


def test_quarantine_off_keeps_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path, {"TIDEGATE_QUARANTINE": "false"})
    keys = server.keys("dev-off")
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        headers = {"X-Device-Token": keys["dev-off"], "Content-Type": "application/x-ndjson"}
        body = json.dumps(reading("dev-off")) + "\n{bad\n"
        response = http.post("/api/v1/ingest", content=body, headers=headers)
        assert response.status_code == 202
        assert "x-tidegate-quarantined" not in response.headers
        assert http.post("/api/v1/ingest", content=b"{bad", headers=headers).status_code == 400
        records = spooled_records(server.data_dir)
        assert len(records) == 1 and "dlq-stage" not in records[0][2]
        assert "tidegate_quarantined_records_total{" not in http.get("/metrics").text
        assert http.get("/api/v1/capabilities").json()["quarantine"] is False


def test_quarantined_records_reach_the_dead_letter_topic_and_good_ones_their_own(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        for topic in ("telemetry-raw", "events-raw", "quarantine-topic"):
            broker.create_topics([topic], partitions=1)
        env = {
            "TIDEGATE_AUTH": "false",
            "TIDEGATE_KAFKA": broker.bootstrap,
            "TIDEGATE_KAFKA_TOPIC_DEAD_LETTER": "quarantine-topic",
        }
        with Server(tmp_path / "server", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            bad = '{"device_id": "k-1", "timestamp": "never", "metrics": {"t": 1}}'
            body = f"[{json.dumps(reading('k-1', metrics={'t': 2}))}, {bad}]"
            response = http.post("/api/v1/ingest", content=body, headers={"X-Ack": "kafka"})
            assert response.status_code == 202, response.text
            assert response.headers["x-durability"] == "kafka"
            accepted_id = response.json()["results"][0]["event_id"]

            async def consume() -> tuple[list[str], list[tuple[bytes, dict[str, bytes]]]]:
                telemetry = await consume_all(broker.bootstrap, "telemetry-raw", expected=1, timeout=20)
                letters = await consume_all(broker.bootstrap, "quarantine-topic", expected=1, timeout=20)
                return (
                    [json.loads(r.value)["event_id"] for r in telemetry],
                    [(r.value, dict(r.headers)) for r in letters],
                )

            telemetry, letters = asyncio.run(consume())
            assert telemetry == [accepted_id]
            [(value, headers)] = letters
            assert value == bad.encode()
            assert headers["dlq-stage"] == b"contract"
            assert headers["dlq-reason"] == b"$[1].timestamp: must be an RFC 3339 date-time with a time zone"
            assert "device_id" not in headers, "without authentication there is no device to name"


@pytest.mark.parametrize("policy", ["keep", "reject", "drop"])
def test_unknown_fields_follow_the_service_setting(tmp_path: Path, policy: str) -> None:
    server = Server(tmp_path, {"TIDEGATE_AUTH": "false", "TIDEGATE_UNKNOWN_FIELDS": policy})
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        openapi = OpenApiChecker(http.get("/openapi.json").json())
        assert http.get("/api/v1/capabilities").json()["unknown_fields"] == policy
        record = reading("u-1")
        plain = http.post("/api/v1/ingest", json=record)
        extra = http.post("/api/v1/ingest", json={**record, "location": "hall 3"})
        event = {
            "source": "s",
            "event_type": "t",
            "entity_id": "e",
            "event_time": "2026-01-01T00:00:00Z",
            "payload": {},
            "region": "eu",
        }
        events = http.post("/api/v1/events", json=event)
        for response in (plain, extra, events):
            openapi.check(response)
        assert openapi.violations == []
        records = [
            json.loads(value) for _, value, headers, _ in spooled_records(server.data_dir) if "dlq-stage" not in headers
        ]
        if policy == "reject":
            assert extra.status_code == 400
            assert extra.json()["errors"] == [{"path": "$.location", "message": "unknown field", "index": 0}]
            assert events.status_code == 400
            assert [record.get("location") for record in records] == [None]
        else:
            assert extra.status_code == 202, extra.text
            # Never part of the identity: the same reading with or without it has one event id.
            assert extra.json()["status"] == "duplicate"
            assert extra.json()["event_id"] == plain.json()["event_id"]
            assert events.status_code == 202
            stored_event = records[-1]
            assert stored_event.get("region") == ("eu" if policy == "keep" else None)


def test_validator_quarantine_items_name_each_rejected_record() -> None:
    validator = tidegate.Validator(tidegate.Contract.telemetry(), quarantine=True)
    body = b'[{"device_id": "v", "metrics": {}},\n 17 ]'
    result = validator.validate(body)
    assert [(item.index, item.raw, item.stage) for item in result.quarantine] == [
        (0, b'{"device_id": "v", "metrics": {}}', "contract"),
        (1, b"17", "contract"),
    ]
    assert tidegate.Validator(tidegate.Contract.telemetry()).validate(body).quarantine == []
