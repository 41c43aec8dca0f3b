"""The MQTT source against a real mosquitto and a real `tidegate serve`: devices publish QoS 1, records land in the
spool through the HTTP pipeline, acknowledged only once durable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
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
import paho.mqtt.client as paho
import pytest
import tidegate
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from tidegate.delivery.spool import HIGH_LANE_SUFFIX
from tidegate.mqtt import read_publish
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.mosquitto import Mosquitto
from tidegate.testing.server import Server

from tests.conftest import event, reading, wait_for

DLQ = "ingest-dlq"
#: The last of tidegate's subscriptions (all three go in one SUBSCRIBE).
SHARED_EVENTS = "$share/tidegate/devices/+/events"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@contextlib.contextmanager
def serving(server: Server, broker: Mosquitto, workers: int = 1) -> Iterator[Server]:
    """Runs the server, once its workers subscribed (a message published before would go nowhere)."""
    server.start()
    try:
        wait_for(lambda: len(broker.subscribers(SHARED_EVENTS)) >= workers, "tidegate's subscriptions")
        yield server
    finally:
        server.stop()


class Device:
    """A device's MQTT client (paho, threaded); `publish` returns once the broker acknowledged (QoS 1)."""

    def __init__(
        self, broker: Mosquitto, client_id: str, *, username: str | None = None, password: str | None = None
    ) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> paho.MQTTMessageInfo:
        body = json.dumps(payload) if isinstance(payload, dict) else payload
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(10)
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_env(broker: Mosquitto, **settings: str) -> dict[str, str]:
    return {"TIDEGATE_MQTT": broker.url, **{f"TIDEGATE_{k.upper()}": v for k, v in settings.items()}}


def values(data_dir: Path, topic: str | None = None) -> list[dict[str, Any]]:
    """Every spooled record's value (as it goes to Kafka), of one topic or all, from every worker's spool."""
    return [json.loads(value) for directory in (data_dir / "spool").iterdir() for value in spooled(directory, topic)]


def worker_spools(data_dir: Path) -> list[Path]:
    """The workers' main spools (`w<N>`; these tests' messages are not high priority, whose spools are `w<N>h`)."""
    return [d for d in (data_dir / "spool").iterdir() if not d.name.endswith(HIGH_LANE_SUFFIX)]


def spooled(directory: Path, topic: str | None = None) -> list[bytes]:
    spool, seq, out = tidegate.Spool.open_read_only(directory), 0, list[bytes]()
    while True:
        records, seq = spool.read(seq, durable_only=False)
        if len(records) == 0:
            return out
        out.extend(records.values(topic))


def telemetry_ids(data_dir: Path) -> list[str]:
    return [value["event_id"] for value in values(data_dir, "telemetry-raw")]


def test_a_reading_over_mqtt_has_the_event_id_it_has_over_http(tmp_path: Path, broker: Mosquitto) -> None:
    server = Server(tmp_path / "data", mqtt_env(broker))
    keys = server.keys("sensor-001")
    device = Device(broker, "sensor-001")
    with serving(server, broker), httpx.Client(base_url=server.url, timeout=20) as http:
        first, second, third = reading("sensor-001"), reading("sensor-001", metrics={"t": 2}), reading("sensor-001")
        third["metrics"] = {"t": 3}
        device.publish("devices/sensor-001/telemetry", first)  # JSON
        device.publish("devices/sensor-001/telemetry", cbor2.dumps(second))  # CBOR, told apart by its first byte
        batch = {
            "device_id": "sensor-001",
            "batch_id": "b-1",
            "readings": [{k: third[k] for k in ("timestamp", "metrics")}],
        }
        device.publish("devices/sensor-001/batch", batch)
        fourth = reading("sensor-001", metrics={"t": 4})
        device.publish("devices/sensor-001/telemetry", {k: v for k, v in fourth.items() if k != "device_id"})
        fifth = reading("sensor-001", metrics={"t": 5})
        device.publish("devices/sensor-001/telemetry", cbor2.dumps({k: fifth[k] for k in ("timestamp", "metrics")}))
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 5, "five readings in the spool")
        spooled = telemetry_ids(server.data_dir)
        # The topic names the device of a reading that leaves device_id out.
        assert {value["device_id"] for value in values(server.data_dir, "telemetry-raw")} == {"sensor-001"}
        # The same readings over HTTP: the same event ids, answered as duplicates of what MQTT spooled.
        for record in (first, second, third, fourth, fifth):
            answer = http.post("/api/v1/ingest", json=record, headers={"X-Device-Token": keys["sensor-001"]})
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "duplicate"
            assert answer.json()["event_id"] in spooled
        assert sorted(telemetry_ids(server.data_dir)) == sorted(spooled), "no second copy"
        metrics = http.get("/metrics").text
        assert 'tidegate_mqtt_messages_total{outcome="accepted"} 5' in metrics
    device.close()


def quarantined(data_dir: Path) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """The dead-letter topic's records, (key, value, headers), from every worker's spool."""
    out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    for directory in (data_dir / "spool").iterdir():
        spool, seq = tidegate.Spool.open_read_only(directory), 0
        while True:
            records, seq = spool.read(seq, durable_only=False)
            if len(records) == 0:
                break
            out.extend((key, value, dict(headers)) for key, value, headers, _ in records.records(DLQ))
    return out


def test_readings_over_mqtt_reach_kafka_with_the_event_ids_they_have_over_http(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # One reading goes HTTP first and MQTT second, the other MQTT first and HTTP second: whichever path comes
    # second is answered duplicate, so Kafka holds each reading once, under the id both paths give it.
    with Broker(tmp_path / "kafka") as kafka:
        kafka.create_topics(["telemetry-raw", "events-raw", DLQ], partitions=3)
        server = Server(tmp_path / "data", {**mqtt_env(broker), "TIDEGATE_KAFKA": kafka.bootstrap})
        keys = server.keys("sensor-kafka")
        device = Device(broker, "sensor-kafka")
        auth = {"X-Device-Token": keys["sensor-kafka"]}
        http_first, mqtt_first = reading("sensor-kafka", metrics={"n": 1}), reading("sensor-kafka", metrics={"n": 2})
        with serving(server, broker), httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/api/v1/ingest", json=http_first, headers=auth).json()
            assert answer["status"] == "accepted"
            http_id = answer["event_id"]
            device.publish("devices/sensor-kafka/telemetry", mqtt_first)
            device.publish("devices/sensor-kafka/telemetry", http_first)  # a duplicate of the HTTP reading
            wait_for(
                lambda: 'tidegate_mqtt_messages_total{outcome="accepted"} 2' in http.get("/metrics").text,
                "both MQTT messages taken",
            )
            assert len(telemetry_ids(server.data_dir)) == 2, "the MQTT copy of the HTTP reading is not spooled"
            answer = http.post("/api/v1/ingest", json=mqtt_first, headers=auth).json()
            assert answer["status"] == "duplicate"
            mqtt_id = answer["event_id"]
            # Answered once Kafka holds it, so once Kafka holds everything spooled before it.
            last = http.post(
                "/api/v1/ingest", json=reading("sensor-kafka", metrics={"n": 3}), headers={**auth, "X-Ack": "kafka"}
            )
            assert last.headers["x-durability"] == "kafka", last.text
            consumed = asyncio.run(consume_all(kafka.bootstrap, "telemetry-raw", timeout=20))
        device.close()
    in_kafka = {dict(record.headers)["event_id"].decode(): json.loads(record.value) for record in consumed}
    assert len(consumed) == 3 == len(in_kafka), "each reading once"
    assert set(in_kafka) == {http_id, mqtt_id, last.json()["event_id"]}
    for event_id, value in in_kafka.items():
        assert value["event_id"] == event_id
        assert value["device_id"] == "sensor-kafka"
    assert in_kafka[mqtt_id]["metrics"] == {"n": 2}
    assert {record.key for record in consumed} == {b"sensor-kafka"}


def test_what_cannot_be_taken_is_quarantined_as_over_http(tmp_path: Path, broker: Mosquitto) -> None:
    server = Server(tmp_path / "data", mqtt_env(broker))
    device = Device(broker, "sensor-a")
    with serving(server, broker), httpx.Client(base_url=server.url, timeout=20) as http:
        foreign = json.dumps(reading("sensor-b")).encode()
        device.publish("devices/sensor-a/telemetry", foreign)  # names another device
        device.publish("devices/sensor-a/telemetry", b"{not json")
        readings = [reading("sensor-a"), reading("sensor-a", timestamp="yesterday")]
        for item in readings:
            del item["device_id"]
        batch = {"device_id": "sensor-a", "batch_id": "b-2", "readings": readings}
        device.publish("devices/sensor-a/batch", batch)
        device.publish("devices/not.a.device/telemetry", b"{}")
        wait_for(lambda: len(quarantined(server.data_dir)) == 4, "four quarantined items")
        letters = {
            headers["dlq-stage"].decode(): (key, value, headers) for key, value, headers in quarantined(server.data_dir)
        }
        assert set(letters) == {"auth", "decode", "contract", "route"}
        key, value, headers = letters["auth"]
        assert (key, value) == (b"sensor-a", foreign)
        assert headers["dlq-source"] == b"mqtt"
        assert headers["mqtt-topic"] == b"devices/sensor-a/telemetry"
        assert headers["device_id"] == b"sensor-a"
        assert headers["dlq-reason"] == b"the key belongs to sensor-a, not sensor-b; $.device_id: must be sensor-a"
        assert letters["decode"][1] == b"{not json"
        key, value, headers = letters["contract"]
        assert value == json.dumps(readings[1]).encode(), "the refused reading as it was sent"
        assert (headers["dlq-index"], headers["mqtt-topic"]) == (b"1", b"devices/sensor-a/batch")
        key, value, headers = letters["route"]
        assert (key, value, headers.get("device_id")) == (None, b"{}", None)
        # The batch's good reading is kept; nothing of sensor-b's reading is.
        kept = values(server.data_dir, "telemetry-raw")
        assert [value["device_id"] for value in kept] == ["sensor-a"]
        metrics = http.get("/metrics").text
        for reason in ("wrong-device", "malformed", "invalid", "invalid-device-id"):
            assert f'tidegate_mqtt_dead_letters_total{{reason="{reason}"}} 1' in metrics
        for stage in ("auth", "decode", "contract", "route"):
            assert f'tidegate_quarantined_records_total{{stage="{stage}"}} 1' in metrics
        assert 'tidegate_mqtt_messages_total{outcome="partly_dead_lettered"} 1' in metrics
    device.close()


def test_a_burst_of_good_and_bad_messages_is_taken_together_and_each_is_acknowledged(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # Published without waiting, so that tidegate reads many at once and takes them together; the bad ones among
    # them are taken on their own, and every message is acknowledged.
    server = Server(tmp_path / "data", mqtt_env(broker))
    device = Device(broker, "burst")
    with serving(server, broker), httpx.Client(base_url=server.url, timeout=20) as http:
        partly: dict[str, Any] = {"device_id": "dev-p", "batch_id": "b-1", "readings": [reading("dev-p")]}
        partly["readings"].append({"timestamp": "never", "metrics": {"x": 2}})
        bad = {
            10: ("devices/dev-x/telemetry", json.dumps(reading("dev-y"))),  # names another device
            20: ("devices/dev-x/telemetry", "{not json"),
            30: ("devices/dev-p/batch", json.dumps(partly)),
            40: ("devices/dev.x/telemetry", json.dumps(reading("dev-x"))),  # not a device id
        }
        published = []
        for i in range(200):
            topic, body = bad.get(
                i, (f"devices/dev-{i % 9}/telemetry", json.dumps(reading(f"dev-{i % 9}", metrics={"i": i})))
            )
            published.append(device.client.publish(topic, body, qos=1))
        for info in published:
            info.wait_for_publish(10)
        wait_for(lambda: len(quarantined(server.data_dir)) == 4, "four quarantined items")
        wait_for(lambda: "tidegate_mqtt_unacknowledged 0" in http.get("/metrics").text, "every message acknowledged")
        assert len(telemetry_ids(server.data_dir)) == 196 + 1, "196 good readings and the batch's good one"
        stages = sorted(headers["dlq-stage"].decode() for _, _, headers in quarantined(server.data_dir))
        assert stages == ["auth", "contract", "decode", "route"]
        for reason in ("wrong-device", "malformed", "invalid", "invalid-device-id"):
            assert f'tidegate_mqtt_dead_letters_total{{reason="{reason}"}} 1' in http.get("/metrics").text
        metrics = http.get("/metrics").text
        assert 'tidegate_mqtt_messages_total{outcome="accepted"} 196' in metrics
        assert 'tidegate_mqtt_messages_total{outcome="partly_dead_lettered"} 1' in metrics
        assert 'tidegate_mqtt_messages_total{outcome="dead_lettered"} 3' in metrics
    device.close()


def test_sigkill_mid_stream_loses_nothing_the_broker_took(tmp_path: Path, broker: Mosquitto) -> None:
    # A long commit window keeps records written but not yet durable, so unacknowledged, when the kill comes.
    server = Server(tmp_path / "data", mqtt_env(broker, commit_window_ms="100"))
    server.start()
    wait_for(lambda: len(broker.subscribers(SHARED_EVENTS)) == 1, "tidegate's subscriptions")
    device = Device(broker, "sensor-k")
    published: list[paho.MQTTMessageInfo] = []
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set() or i < 300:
            record = reading(f"sensor-{i % 7}", metrics={"i": i})
            published.append(device.client.publish(f"devices/sensor-{i % 7}/telemetry", json.dumps(record), qos=1))
            i += 1
            time.sleep(0.002)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_for(lambda: len(telemetry_ids(server.data_dir)) >= 100, "records before the kill")
        server.stop(kill=True)
        # The stream goes on while tidegate is down: the broker keeps it for the worker's session.
        published_at_kill = len(published)
        wait_for(lambda: len(published) >= published_at_kill + 100, "readings published while tidegate is down")
        server.start()
        stop.set()
        publisher.join()
        for info in published:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in published)
        wait_for(lambda: len(set(telemetry_ids(server.data_dir))) >= len(published), "every reading spooled")
        spooled_ids = Counter(telemetry_ids(server.data_dir))
        assert len(spooled_ids) == len(published), "every reading the broker took is in the spool"
        assert max(spooled_ids.values()) == 1, "a redelivery is a duplicate, never a second copy"
    finally:
        stop.set()
        publisher.join()
        server.stop()
        device.close()


def test_durable_but_unacknowledged_messages_are_redelivered_after_sigkill_as_duplicates(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # PUBACKs go in arrival order: a device over its rate holds the acknowledgements of every message after its own
    # (the subscription slows, nothing is dropped), while those messages are already durable.
    server = Server(tmp_path / "data", mqtt_env(broker, rate_per_device="0.01", burst_per_device="1"))
    device = Device(broker, "fleet")
    with serving(server, broker):
        device.publish("devices/slow/telemetry", reading("slow", metrics={"i": 0}))
        device.publish("devices/slow/telemetry", reading("slow", metrics={"i": 1}))  # waits ~100 s for a token
        for i in range(50):
            device.publish(f"devices/dev-{i}/telemetry", reading(f"dev-{i}"))
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 51, "the 51 readings that had a token spooled")
        metrics = httpx.get(server.url + "/metrics").text
        assert "tidegate_mqtt_unacknowledged 51" in metrics, "50 durable messages wait behind slow's second"
        server.stop(kill=True)
        # Rates hold across restarts (the shared rate table): without this, slow's second reading would wait out
        # its ~100 s again. Forgetting the buckets keeps this test about redelivery.
        (server.data_dir / "state" / "rate.tbl").unlink()
        server.start()  # the broker redelivers the 51 unacknowledged messages to the same worker's session
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 52, "slow's second reading")
        wait_for(
            lambda: (
                'tidegate_records_total{outcome="duplicate",priority="medium"} 50'
                in httpx.get(server.url + "/metrics").text
            ),
            "the 50 redeliveries answered duplicate",
        )
        assert max(Counter(telemetry_ids(server.data_dir)).values()) == 1, "no second copy"
    device.close()


def test_no_more_than_the_receive_maximum_are_read_unacknowledged(tmp_path: Path, broker: Mosquitto) -> None:
    # As in the test above, slow's second reading waits for a token and holds every acknowledgement after it. With
    # a window of 5 tidegate then reads 4 more messages and stops reading: the rest wait at the broker (mosquitto
    # 2.0.11 does not keep to the Receive Maximum a client sends once it has acknowledged some messages).
    settings = {"rate_per_device": "0.01", "burst_per_device": "1", "mqtt_receive_maximum": "5"}
    server = Server(tmp_path / "data", mqtt_env(broker, **settings))
    device = Device(broker, "fleet")
    with serving(server, broker), httpx.Client(base_url=server.url, timeout=20) as http:
        device.publish("devices/slow/telemetry", reading("slow", metrics={"i": 0}))
        device.publish("devices/slow/telemetry", reading("slow", metrics={"i": 1}))
        for i in range(50):
            device.publish(f"devices/dev-{i}/telemetry", reading(f"dev-{i}"))  # the broker takes them all
        wait_for(lambda: "tidegate_mqtt_unacknowledged 5" in http.get("/metrics").text, "a full window")
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 5, "slow's first reading and 4 more")
        wait_for(lambda: "tidegate_mqtt_reading_paused 1" in http.get("/metrics").text, "reading paused")
        # Each scrape takes turns of the worker's event loop, which reads the broker's connection whenever it is
        # readable and the reading not paused: 20 of them, and still no more.
        for _ in range(20):
            metrics = http.get("/metrics").text
            assert "tidegate_mqtt_unacknowledged 5" in metrics
            assert "tidegate_mqtt_reading_paused 1" in metrics
        assert len(telemetry_ids(server.data_dir)) == 5
    device.close()


def test_a_shared_subscription_splits_the_fleet_between_workers(tmp_path: Path, broker: Mosquitto) -> None:
    server = Server(tmp_path / "data", mqtt_env(broker), workers=2)
    device = Device(broker, "fleet")
    with serving(server, broker, workers=2):
        for i in range(200):
            device.publish(f"devices/dev-{i % 20}/telemetry", reading(f"dev-{i % 20}", metrics={"i": i}))
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 200, "every reading spooled")
        per_worker = {directory.name: len(spooled(directory)) for directory in worker_spools(server.data_dir)}
        assert sorted(per_worker) == ["w0", "w1"]
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert len(set(telemetry_ids(server.data_dir))) == 200
    device.close()


def test_mqtt_acl_lets_each_device_publish_to_its_own_topics_only(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "broker-files"
    server_env = {"TIDEGATE_MQTT_USERNAME": "tidegate", "TIDEGATE_MQTT_PASSWORD": "service-secret"}
    keys = Server(data_dir).keys("sensor-1", "sensor-2")
    subprocess.run(
        [sys.executable, "-m", "tidegate", "mqtt-acl", "--data-dir", str(data_dir), "--out", str(out)],
        check=True,
        env={**os.environ, **server_env},
    )
    # mosquitto started as root reads its files as the `mosquitto` user: the password file must be that user's.
    expected_owner = pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert (out / "passwd").stat().st_uid == expected_owner
    assert (out / "passwd").stat().st_mode & 0o777 == 0o600
    username = {device: "_".join(key.split("_")[:2]) for device, key in keys.items()}
    with Mosquitto(tmp_path / "broker", password_file=out / "passwd", acl_file=out / "acl") as broker:
        server = Server(data_dir, {**mqtt_env(broker), **server_env})
        with serving(server, broker):
            device = Device(broker, "s1", username=username["sensor-1"], password=keys["sensor-1"])
            device.publish("devices/sensor-1/telemetry", reading("sensor-1"))
            device.publish("devices/sensor-2/telemetry", reading("sensor-2"))  # not its topic: not delivered
            device.publish("devices/sensor-1/telemetry", reading("sensor-1", metrics={"after": 1}))
            wait_for(lambda: len(telemetry_ids(data_dir)) == 2, "sensor-1's readings")
            assert [value["device_id"] for value in values(data_dir, "telemetry-raw")] == ["sensor-1", "sensor-1"]
            device.close()
        answers: list[ReasonCode] = []
        refused = paho.Client(CallbackAPIVersion.VERSION2, client_id="s2", protocol=paho.MQTTv5)
        refused.on_connect = lambda _client, _data, _flags, reason, _props: answers.append(reason)
        refused.username_pw_set(username["sensor-2"], keys["sensor-1"])  # another device's key
        refused.connect("127.0.0.1", broker.port)
        refused.loop_start()
        wait_for(lambda: bool(answers), "the CONNACK")
        refused.loop_stop()
        assert answers[0].is_failure, "another device's key is refused at CONNECT"


def test_mqtt_3_1_1_shares_the_subscription_between_workers_and_takes_ndjson(tmp_path: Path, broker: Mosquitto) -> None:
    server = Server(tmp_path / "data", mqtt_env(broker, mqtt_protocol="3.1.1"), workers=2)
    device = Device(broker, "gateway-7")
    with serving(server, broker, workers=2):
        assert len(broker.subscribers(SHARED_EVENTS)) == 2, "mosquitto shares $share/ with 3.1.1 clients too"
        for i in range(40):
            ndjson = "\n".join(json.dumps(event(entity_id=f"e-{i}", payload={"n": n})) for n in range(3)) + "\n"
            device.publish(f"devices/gateway-{i}/events", ndjson)  # no content type travels with 3.1.1
        wait_for(lambda: len(values(server.data_dir, "events-raw")) == 120, "every event")
        per_worker = {directory.name: len(spooled(directory)) for directory in worker_spools(server.data_dir)}
        assert all(count > 0 for count in per_worker.values()) and len(per_worker) == 2, per_worker
        assert not quarantined(server.data_dir)
    device.close()


def test_without_a_group_worker_0_alone_subscribes_plainly(tmp_path: Path, broker: Mosquitto) -> None:
    server = Server(tmp_path / "data", mqtt_env(broker, mqtt_shared_group=""), workers=2)
    device = Device(broker, "gateway-8")
    with server:
        # Two workers subscribing plainly would each take every message.
        wait_for(lambda: len(broker.subscribers("devices/+/events")) == 1, "worker 0's plain subscription")
        assert next(iter(broker.subscribers("devices/+/events"))).endswith("-w0")
        assert not broker.subscribers(SHARED_EVENTS)
        device.publish("devices/gateway-8/telemetry", reading("gateway-8"))
        wait_for(lambda: len(telemetry_ids(server.data_dir)) == 1, "the reading")
    device.close()


def publish_packet(topic: str, payload: bytes, *, mid: int | None, properties: bytes | None) -> bytes:
    """A PUBLISH packet after its fixed header, as a broker sends it (properties None: MQTT 3.1.1)."""
    packet = len(topic).to_bytes(2, "big") + topic.encode()
    if mid is not None:
        packet += mid.to_bytes(2, "big")
    return packet + (properties if properties is not None else b"") + payload


def test_publish_packets_are_read_with_their_content_type_when_they_carry_one() -> None:
    body = b'{"n":1}'
    no_properties = publish_packet("devices/d-1/telemetry", body, mid=513, properties=b"\x00")
    assert read_publish(no_properties, 0x32, v5=True) == ("devices/d-1/telemetry", body, None, 513, 1)
    given = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    given.MessageExpiryInterval = 60
    given.ContentType = "application/x-ndjson"
    packed = given.pack()  # type: ignore[no-untyped-call]
    with_properties = publish_packet("devices/d-1/events", body, mid=7, properties=packed)
    assert read_publish(with_properties, 0x32, v5=True) == ("devices/d-1/events", body, "application/x-ndjson", 7, 1)
    assert read_publish(publish_packet("a/b", body, mid=9, properties=None), 0x32, v5=False) == (
        "a/b",
        body,
        None,
        9,
        1,
    )
    assert read_publish(publish_packet("a/b", body, mid=None, properties=b"\x00"), 0x30, v5=True)[3:] == (0, 0)
    for malformed in (no_properties[:3], publish_packet("", body, mid=1, properties=b"\x00")):
        with pytest.raises(MalformedPacket):
            read_publish(malformed, 0x32, v5=True)
    with pytest.raises(MalformedPacket):
        read_publish(no_properties, 0x34, v5=True)  # QoS 2: tidegate subscribes with QoS 1


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--mqtt", "http://broker:1883"], "mqtt must be mqtt://"),
        (["--mqtt", "mqtt://broker", "--mqtt-topic-telemetry", "devices/+/telemetry"], "mqtt_topic_telemetry"),
        (["--mqtt", "mqtt://broker", "--mqtt-protocol", "4"], "mqtt_protocol must be one of"),
    ],
)
def test_mqtt_settings_that_cannot_work_stop_serve_with_exit_code_2(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    command = [sys.executable, "-m", "tidegate", "serve", "--data-dir", str(tmp_path), "--port", "1", *flags]
    refused = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert named in refused.stderr
