"""End to end: HTTP requests to a real server, delivered to a real Kafka-protocol broker, consumed back."""

from __future__ import annotations

import asyncio
import fcntl
import json
import subprocess
import sys
from pathlib import Path

import httpx
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.processes import free_port
from tidegate.testing.server import Server

from tests.conftest import event, iso_now, reading


def test_counts_consumed_back_equal_accepted_counts(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        for topic in ("telemetry-raw", "events-raw", "ingest-dlq"):
            broker.create_topics([topic], partitions=3)
        env = {"TIDEGATE_AUTH": "false", "TIDEGATE_KAFKA": broker.bootstrap}
        with Server(tmp_path / "server", env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            accepted: dict[str, set[str]] = {"telemetry-raw": set(), "events-raw": set()}
            flagged: set[str] = set()
            for i in range(40):
                body = reading(f"fleet-{i % 5}", metrics={"temperature": 500 if i % 10 == 0 else 20, "i": i})
                response = http.post("/api/v1/ingest", json=body)
                assert response.status_code == 202
                document = response.json()
                if document["status"] == "accepted":
                    accepted["telemetry-raw"].add(document["event_id"])
                    if document["warnings"]:
                        flagged.add(document["event_id"])
                if i % 8 == 0:
                    assert http.post("/api/v1/ingest", json=body).json()["status"] == "duplicate"
            for b in range(5):
                readings = [{"timestamp": iso_now(-j), "metrics": {"b": b, "j": j}} for j in range(20)]
                readings.append({"timestamp": "never", "metrics": {"bad": 1}})
                batch = {"device_id": "fleet-batch", "batch_id": f"batch-{b}", "readings": readings}
                document = http.post("/api/v1/ingest/batch", json=batch).json()
                assert (document["accepted"], document["rejected"]) == (20, 1)
                assert http.post("/api/v1/ingest/batch", json=batch).json()["status"] == "duplicate"
            events = [event(entity_id=f"user-{i}", payload={"n": i}) for i in range(30)]
            results = http.post("/api/v1/events", json=events + events[:5]).json()["results"]
            assert [r["status"] for r in results] == ["ACCEPTED"] * 30 + ["DUPLICATE"] * 5
            accepted["events-raw"] = {r["event_id"] for r in results[:30]}
            confirmed = http.post(
                "/api/v1/ingest", json=reading("fleet-ack", metrics={"x": 1}), headers={"X-Ack": "kafka"}
            )
            assert confirmed.status_code == 202
            assert confirmed.headers["x-durability"] == "kafka"
            accepted["telemetry-raw"].add(confirmed.json()["event_id"])

            async def consume() -> dict[str, list[str]]:
                expected = {
                    "telemetry-raw": len(accepted["telemetry-raw"]) + 100,
                    "events-raw": 30,
                    # The flagged readings' copies, and each batch's bad reading, quarantined as it was sent.
                    "ingest-dlq": len(flagged) + 5,
                }
                out = {}
                for topic, count in expected.items():
                    records = await consume_all(broker.bootstrap, topic, expected=count, timeout=20)
                    copies = [r for r in records if "dlq-stage" not in dict(r.headers)]
                    out[topic] = [json.loads(r.value)["event_id"] for r in copies]
                    if topic == "ingest-dlq":
                        out["quarantined"] = [r.value.decode() for r in records if r not in copies]
                return out

            consumed = asyncio.run(consume())
            telemetry_ids = consumed["telemetry-raw"]
            assert len(telemetry_ids) == len(set(telemetry_ids)), "no duplicates without failures"
            assert len(telemetry_ids) == len(accepted["telemetry-raw"]) + 100, "singles plus 5 batches of 20"
            assert accepted["telemetry-raw"] <= set(telemetry_ids)
            assert sorted(consumed["events-raw"]) == sorted(accepted["events-raw"])
            assert set(consumed["ingest-dlq"]) == flagged and len(consumed["ingest-dlq"]) == len(flagged)
            never = {"timestamp": "never", "metrics": {"bad": 1}}
            quarantined = [json.loads(value) for value in consumed["quarantined"]]
            assert quarantined == [never] * 5, "each batch's bad reading once (its retry is a repeat)"
            command = [sys.executable, "-m", "tidegate", "spool", "stats", "--data-dir", str(server.data_dir)]
            stats = json.loads(subprocess.run(command, check=True, capture_output=True, timeout=30).stdout)
            assert stats["w0"]["lag_records"] == 0, "the forwarder checkpointed everything the broker acknowledged"


def test_x_ack_kafka_for_a_repeat_waits_for_the_spool_that_holds_what_it_repeats(tmp_path: Path) -> None:
    """A repeat of a record another worker spooled is delivered when that worker's spool is, not this one's: while
    the broker is down its `X-Ack: kafka` answer says `spool` (this worker's own spools hold nothing to deliver:
    without the archive a repeat spools no occurrence), and once the broker is up, `kafka`, with the record on
    the topic."""
    data = tmp_path / "server"
    body = reading("elsewhere-1", metrics={"x": 1})
    env = {"TIDEGATE_AUTH": "false", "TIDEGATE_ARCHIVE": "false", "TIDEGATE_KAFKA_ACK_TIMEOUT_S": "1"}
    broker_down = {**env, "TIDEGATE_KAFKA": f"127.0.0.1:{free_port()}"}
    with Server(data, broker_down) as server:
        first = httpx.post(server.url + "/api/v1/ingest", json=body, timeout=30)
        assert first.status_code == 202 and first.headers["x-durability"] == "spool"
    assert (data / "spool" / "w0" / "progress").exists(), "the original is in w0"
    # Another worker holds w0, the spool with the original, so this server's worker writes to w1.
    with (data / "spool" / "w0" / "lock").open("w") as other_worker:
        fcntl.flock(other_worker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with Server(data, broker_down) as server:
            repeat = httpx.post(server.url + "/api/v1/ingest", json=body, headers={"X-Ack": "kafka"}, timeout=30)
            assert repeat.status_code == 202 and repeat.json()["status"] == "duplicate"
            assert repeat.headers["x-durability"] == "spool", "the broker is down: the original is not delivered"
        assert (data / "spool" / "w1").is_dir(), "the repeat was answered by the worker of w1"

        with Broker(tmp_path / "broker") as broker:
            broker.create_topics(["telemetry-raw", "events-raw", "ingest-dlq"], partitions=1)
            broker_up = {**env, "TIDEGATE_KAFKA": broker.bootstrap, "TIDEGATE_KAFKA_ACK_TIMEOUT_S": "30"}
            with Server(data, broker_up) as server:
                repeat = httpx.post(server.url + "/api/v1/ingest", json=body, headers={"X-Ack": "kafka"}, timeout=60)
                assert repeat.status_code == 202 and repeat.headers["x-durability"] == "kafka"
                # Up to the topic's end as of now: had it said kafka too early, the record could be missing.
                records = asyncio.run(consume_all(broker.bootstrap, "telemetry-raw", timeout=20))
                assert [json.loads(r.value)["event_id"] for r in records] == [first.json()["event_id"]]
