"""The MQTT source: each worker subscribes to the device topics and takes messages through the HTTP pipeline.

- MQTT 5 with a shared subscription (`$share/<group>/devices/+/telemetry`, ...): the broker splits the fleet between
  every worker of every instance in the group. MQTT 3.1.1 (when the broker refuses 5, or by setting) and an empty
  group subscribe plainly, on worker 0 only, so that no two workers of an instance take the same message.
- QoS 1 with manual acknowledgement: a message's PUBACK is sent once its records are durable in the spool, never
  before, and in the order the messages arrived (MQTT requires it). Each worker has a client id of its own that
  outlives restarts (`<prefix>-w<N>`, N its spool directory) and a persistent session, so what was not acknowledged
  when a worker died is redelivered to the worker that owns the same spool, whose dedup window (rebuilt from that
  spool) answers it duplicate: a redelivery is never a second copy.
- The device comes from the topic (`{device_id}` in a pattern) and is the device every telemetry record must name,
  as a key is over HTTP. There is no response to carry a rejection, so a message that cannot be taken, or the
  records of it that are refused, go to the dead-letter topic as one `mqtt-dead-letter/v1` record naming the topic,
  the reason, the errors and the payload (base64, its first 64 KiB), spooled before the message is acknowledged.
- Overload never drops: a message waits, unacknowledged, while the worker is not ready, sheds its priority, or the
  device is over its rate, and a spool write that failed is retried. The broker sends at most
  `mqtt_receive_maximum` unacknowledged messages (MQTT 5 Receive Maximum), so withheld acknowledgements slow the
  subscription to what the worker can take.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tidegate._native import Contract, Validator
from tidegate.auth import KeyEntry, KeyStore, mosquitto_hash, mqtt_username
from tidegate.config import Settings
from tidegate.problems import Problem, issue_errors

if TYPE_CHECKING:
    from tidegate.gateway import Gateway
    from tidegate.ingest import Answer, IngestRoute

log = logging.getLogger("tidegate")

DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEAD_LETTER_SCHEMA = "mqtt-dead-letter/v1"
#: How much of a dead-lettered payload its record keeps (base64), so that the record always fits Kafka.
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
#: MQTT 5 CONNACK reason "Unsupported Protocol Version", and MQTT 3.1.1's "unacceptable protocol version".
_UNSUPPORTED_PROTOCOL = (0x84, 1)
_RETRY_S = 0.05


@dataclass(frozen=True)
class TopicPattern:
    """A topic pattern such as `devices/{device_id}/telemetry`: the device id stands for exactly one level."""

    kind: str
    levels: tuple[str, ...]
    device_level: int

    @classmethod
    def parse(cls, kind: str, pattern: str) -> TopicPattern:
        levels = tuple(pattern.split("/"))
        device_levels = [i for i, level in enumerate(levels) if level == "{device_id}"]
        if len(device_levels) != 1 or any(
            ("{" in level or "}" in level or "+" in level or "#" in level)
            for i, level in enumerate(levels)
            if i != device_levels[0]
        ):
            raise ValueError(
                f"mqtt_topic_{'events' if kind == 'event' else kind} must name {{device_id}} once, as a whole topic "
                f"level, with no wildcard: {pattern!r}"
            )
        return cls(kind, levels, device_levels[0])

    @property
    def filter(self) -> str:
        return "/".join("+" if i == self.device_level else level for i, level in enumerate(self.levels))

    def device_of(self, topic: str) -> str | None:
        """The device id a topic names, or None when the topic is not one of this pattern."""
        levels = topic.split("/")
        if len(levels) != len(self.levels):
            return None
        for i, (level, wanted) in enumerate(zip(levels, self.levels, strict=True)):
            if i != self.device_level and level != wanted:
                return None
        return levels[self.device_level]


def topic_patterns(settings: Settings) -> list[TopicPattern]:
    return [
        TopicPattern.parse("telemetry", settings.mqtt_topic_telemetry),
        TopicPattern.parse("batch", settings.mqtt_topic_batch),
        TopicPattern.parse("event", settings.mqtt_topic_events),
    ]


def broker_address(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` → (host, port, tls)."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or parsed.path not in ("", "/"):
        raise ValueError(f"mqtt must be mqtt://host[:port] or mqtts://host[:port], not {url!r}")
    tls = parsed.scheme == "mqtts"
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def check_settings(settings: Settings) -> None:
    """Raises ValueError naming the MQTT setting that cannot work."""
    if settings.mqtt is None:
        return
    broker_address(settings.mqtt)
    patterns = topic_patterns(settings)
    if len({pattern.filter for pattern in patterns}) != len(patterns):
        raise ValueError("mqtt_topic_telemetry, mqtt_topic_batch and mqtt_topic_events must differ")
    if not 1 <= settings.mqtt_receive_maximum <= 65535:
        raise ValueError("mqtt_receive_maximum must be between 1 and 65535")
    if "/" in settings.mqtt_shared_group or "+" in settings.mqtt_shared_group or "#" in settings.mqtt_shared_group:
        raise ValueError(f"mqtt_shared_group must be one topic level: {settings.mqtt_shared_group!r}")


def client_id_prefix(settings: Settings) -> str:
    if settings.mqtt_client_id:
        return settings.mqtt_client_id
    where = hashlib.blake2s(str(settings.data_dir.resolve()).encode(), digest_size=4).hexdigest()
    return f"tidegate-{socket.gethostname()}-{where}"


def dead_letter_validator(settings: Settings) -> Validator:
    """Dead-letter records are validated like any other (a custom contract over the envelope), so they get an
    event id (the same for a redelivery: the envelope holds nothing that changes) and the usual Kafka headers."""
    contract = Contract.from_json_schema(
        {"type": "object", "required": ["topic", "reason", "errors", "payload_base64"]},
        name=DEAD_LETTER_SCHEMA,
        topic=settings.kafka_topic_dead_letter,
        key_field="device_id",
    )
    return Validator(
        contract,
        dlq_topic=settings.kafka_topic_dead_letter,
        max_record_bytes=settings.max_record_bytes,
        max_string_bytes=2 * DEAD_LETTER_PAYLOAD_BYTES,
    )


def content_type_of(message: aiomqtt.Message, payload: bytes) -> str:
    """MQTT 5's content type when the publisher gave one; else JSON when the payload starts like JSON, or CBOR
    (a CBOR map or array never starts with `{`, `[` or white space)."""
    given = getattr(message.properties, "ContentType", None) if message.properties is not None else None
    if given:
        return str(given)
    start = payload.lstrip()[:1]
    return "application/json" if start in (b"{", b"[") or not payload.strip() else "application/cbor"


class _Abandoned(Exception):
    """The worker stops: the message is left unacknowledged, for the broker to redeliver."""


@dataclass
class _Delivery:
    mid: int
    qos: int
    connection: int
    done: bool = False


class MqttSource:
    """One worker's MQTT subscription; `start()` in the worker's lifespan, `stop()` before its spool closes."""

    def __init__(self, gateway: Gateway, worker_index: int) -> None:
        self.gateway = gateway
        self.settings = settings = gateway.settings
        assert settings.mqtt is not None
        self.host, self.port, self.tls = broker_address(settings.mqtt)
        self.worker_index = worker_index
        self.client_id = f"{client_id_prefix(settings)}-w{worker_index}"
        routes = {route.kind: route for route in gateway.routes.values()}
        self.patterns = [(pattern, routes[pattern.kind]) for pattern in topic_patterns(settings)]
        self.dead_letters = dead_letter_validator(settings)
        self.protocol = "5" if settings.mqtt_protocol in ("auto", "5") else "3.1.1"
        self.subscriptions: list[str] = []
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._connection = 0
        self._pending: collections.deque[_Delivery] = collections.deque()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics = gateway.metrics
        metrics.gauge("tidegate_mqtt_connected", "1 while connected to the MQTT broker.", lambda: float(self.connected))
        metrics.gauge(
            "tidegate_mqtt_unacknowledged",
            "MQTT messages received and not yet acknowledged (at most mqtt_receive_maximum).",
            lambda: float(len(self._pending)),
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tidegate-mqtt")

    async def stop(self, timeout: float) -> None:
        """Stops taking messages, lets those being taken become durable and be acknowledged (within `timeout`), then
        disconnects; the session stays with the broker, which redelivers what is left."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.warning(json.dumps({"event": "mqtt_stop_timeout", "unacknowledged": len(self._pending)}))

    # ----- the connection

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                await self._session()
                backoff = 0.1
            except MqttConnectError as error:
                code = getattr(error.rc, "value", error.rc)
                if self.protocol == "5" and self.settings.mqtt_protocol == "auto" and code in _UNSUPPORTED_PROTOCOL:
                    log.warning(json.dumps({"event": "mqtt_protocol_fallback", "from": "5", "to": "3.1.1"}))
                    self.protocol = "3.1.1"
                    continue
                log.error(
                    json.dumps({"event": "mqtt_connect_refused", "broker": self.settings.mqtt, "error": str(error)})
                )
            except aiomqtt.MqttError as error:
                log.warning(
                    json.dumps({"event": "mqtt_disconnected", "broker": self.settings.mqtt, "error": str(error)})
                )
            except Exception:
                # Never let the source die quietly: log, and connect again after the backoff.
                log.exception(json.dumps({"event": "mqtt_source_failed", "broker": self.settings.mqtt}))
            finally:
                self.connected = False
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    def _client_for(self, protocol: str) -> aiomqtt.Client:
        settings = self.settings
        v5 = protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.mqtt_session_expiry_s
            properties.ReceiveMaximum = settings.mqtt_receive_maximum
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=settings.mqtt_username,
            password=settings.mqtt_password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # Resume the session (and what it had not acknowledged); 3.1.1 says so with clean_session.
            clean_start=False if v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=30,
            tls_context=ssl.create_default_context() if self.tls else None,
        )
        # aiomqtt acknowledges as each message is handed over; paho, under it, can leave that to us.
        client._client.manual_ack_set(True)
        return client

    def _subscribes(self) -> bool:
        """Shared subscriptions split the fleet between workers; a plain one is held by worker 0 alone."""
        return self._shared or self.worker_index == 0

    @property
    def _shared(self) -> bool:
        return self.protocol == "5" and bool(self.settings.mqtt_shared_group)

    async def _session(self) -> None:
        client = self._client_for(self.protocol)
        async with client:
            self._connection += 1
            self._pending = collections.deque()
            self._client = client
            self.connected = True
            group = self.settings.mqtt_shared_group
            self.subscriptions = [
                f"$share/{group}/{pattern.filter}" if self._shared else pattern.filter for pattern, _ in self.patterns
            ]
            if self._subscribes():
                await self._subscribe(client)
            log.info(
                json.dumps(
                    {
                        "event": "mqtt_connected",
                        "broker": self.settings.mqtt,
                        "client_id": self.client_id,
                        "protocol": self.protocol,
                        "subscriptions": self.subscriptions if self._subscribes() else [],
                    }
                )
            )
            reader = asyncio.create_task(self._read(client, self._connection))
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                # Let what is being taken become durable and be acknowledged before disconnecting.
                if self._handlers:
                    await asyncio.wait(set(self._handlers))
            else:
                stop.cancel()
                reader.result()  # a lost connection raises MqttError

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        if self.protocol == "5":
            granted = await client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in self.subscriptions])
        else:
            granted = await client.subscribe([(topic, 1) for topic in self.subscriptions])
        codes = [code.value if isinstance(code, ReasonCode) else int(code) for code in granted]
        refused = [topic for topic, code in zip(self.subscriptions, codes, strict=False) if code >= 0x80]
        if refused:
            raise aiomqtt.MqttError(f"the broker refused the subscriptions {refused} (codes {codes})")

    async def _read(self, client: aiomqtt.Client, connection: int) -> None:
        async for message in client.messages:
            delivery = _Delivery(message.mid, message.qos, connection)
            if message.qos > 0:
                self._pending.append(delivery)
            task = asyncio.create_task(self._handle(message, delivery))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _acknowledge(self, delivery: _Delivery) -> None:
        """Sends the PUBACKs that are due: in arrival order, up to the first message not yet durable."""
        delivery.done = True
        client = self._client
        if delivery.connection != self._connection or client is None:
            return  # its connection is gone: the broker redelivers it, and it will be a duplicate
        pending = self._pending
        while pending and pending[0].done:
            head = pending.popleft()
            client._client.ack(head.mid, head.qos)

    # ----- one message

    async def _handle(self, message: aiomqtt.Message, delivery: _Delivery) -> None:
        try:
            outcome = await self._take(message)
        except _Abandoned:
            return
        except Exception:
            # Never acknowledged: the broker redelivers it on the next session.
            log.exception(json.dumps({"event": "mqtt_message_failed", "topic": message.topic.value}))
            return
        self.gateway.metrics.mqtt_messages.inc((outcome,))
        self._acknowledge(delivery)

    def _route_of(self, topic: str) -> tuple[IngestRoute, str] | None:
        for pattern, route in self.patterns:
            device_id = pattern.device_of(topic)
            if device_id is not None:
                return route, device_id
        return None

    async def _take(self, message: aiomqtt.Message) -> str:
        """Takes one message into the spool (or its dead letter); returns the outcome counted in the metrics."""
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        matched = self._route_of(topic)
        if matched is None:
            problem = Problem(400, "unknown-topic", f"{topic!r} matches no configured topic pattern")
            return await self._dead_letter(topic, None, problem, payload)
        route, device_id = matched
        if not DEVICE_ID.fullmatch(device_id):
            problem = Problem(
                400,
                "invalid-device-id",
                "the device id in the topic must match ^[A-Za-z0-9_-]{1,64}$",
                [{"path": "topic", "message": f"not a device id: {device_id[:80]!r}"}],
            )
            return await self._dead_letter(topic, None, problem, payload)
        await self._admit(route, device_id)
        content_type = content_type_of(message, payload)
        try:
            answer = await self._ingest(route, payload, content_type, device_id)
        except Problem as problem:
            if problem.slug == "malformed" and content_type == "application/json" and b"\n" in payload.strip():
                # No content type travels with MQTT 3.1.1: JSON that is not one document may be NDJSON.
                try:
                    answer = await self._ingest(route, payload, "application/x-ndjson", device_id)
                except Problem:
                    return await self._dead_letter(topic, device_id, problem, payload)
            else:
                return await self._dead_letter(topic, device_id, problem, payload)
        if answer.rejected:
            refused = Problem(
                400, "invalid", f"{len(answer.rejected)} record(s) rejected", issue_errors(answer.rejected)
            )
            await self._dead_letter(topic, device_id, refused, payload)
            return "partly_dead_lettered"
        return "accepted"

    async def _admit(self, route: IngestRoute, device_id: str) -> None:
        """Waits, holding the message unacknowledged, until the worker takes this priority and the device has a
        token: HTTP would answer 503 or 429, MQTT slows the subscription instead."""
        gateway, settings = self.gateway, self.settings
        while True:
            if self._stop.is_set():
                raise _Abandoned
            utilization = gateway.utilization()
            shed = (utilization >= settings.shed_medium_at and route.priority != "high") or (
                utilization >= settings.shed_low_at and route.priority == "low"
            )
            if gateway.is_ready() and not shed:
                break
            await asyncio.sleep(_RETRY_S)
        while (wait := gateway.buckets.take(device_id, time.time_ns() // 1000)) > 0:
            if self._stop.is_set():
                raise _Abandoned
            await asyncio.sleep(wait)

    async def _ingest(self, route: IngestRoute, payload: bytes, content_type: str, device_id: str) -> Answer:
        """The HTTP pipeline; a spool that cannot take the message now (HTTP's 503) is waited for, never dropped."""
        gateway = self.gateway
        while True:
            gateway.in_flight_requests += 1
            try:
                return await gateway.edge.ingest_body(
                    route,
                    payload,
                    {b"content-type": content_type},
                    device_id,
                    route.priority,
                    dry_run=gateway.settings.dry_run,
                    source="mqtt",
                )
            except Problem as problem:
                if problem.status < 500:
                    raise
            finally:
                gateway.in_flight_requests -= 1
            if self._stop.is_set():
                raise _Abandoned
            await asyncio.sleep(_RETRY_S * 10)

    async def _dead_letter(self, topic: str, device_id: str | None, problem: Problem, payload: bytes) -> str:
        """Spools one dead-letter record for the message (durable when this returns)."""
        envelope = {
            "source": "mqtt",
            "topic": topic,
            "device_id": device_id or "",
            "reason": problem.slug,
            "detail": problem.detail,
            "errors": problem.errors,
            "payload_bytes": len(payload),
            "payload_base64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode(),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        self.gateway.metrics.mqtt_dead_letters.inc((problem.slug,))
        log.info(json.dumps({"event": "mqtt_dead_letter", "topic": topic, "reason": problem.slug}))
        while True:
            result = self.dead_letters.validate(body, "application/json", received_at_ms=time.time_ns() // 1_000_000)
            batch = result.batch
            gateway = self.gateway
            gateway.dedup.claim_batch(batch, time.time_ns() // 1_000_000)  # a redelivery's is a duplicate
            try:
                await gateway.edge.persist(batch, [], {})
            except Problem:
                if self._stop.is_set():
                    raise _Abandoned from None
                await asyncio.sleep(_RETRY_S * 10)
                continue
            return "dead_lettered"


# ----- the broker's files: authentication and topic rights stay with the broker


REFERENCE_CONFIG = """\
# mosquitto 2 configuration for tidegate, written by `tidegate mqtt-acl`. Devices authenticate with their tidegate
# key (username tg_<key id>, password the whole key) and may publish only to their own topics; tidegate's own user
# may only subscribe to them.
listener 1883
# listener 8883 with certfile/keyfile/cafile for TLS in production.
allow_anonymous false
password_file {passwd}
acl_file {acl}
# Sessions (tidegate's subscriptions and what it has not acknowledged) survive a broker restart.
persistence true
persistence_location /var/lib/mosquitto/
autosave_interval 10
# Messages kept for a tidegate worker that is away or slow; past this mosquitto drops them, so keep it large.
max_queued_messages 1000000
max_queued_bytes 0
# Messages in flight to an MQTT 3.1.1 client (MQTT 5 clients set their own Receive Maximum).
max_inflight_messages 256
"""


def broker_files(entries: list[KeyEntry], settings: Settings) -> tuple[str, str, list[KeyEntry]]:
    """The password file, the ACL file, and the keys left out (made before tidegate stored an MQTT hash)."""
    patterns = topic_patterns(settings)
    passwd: list[str] = []
    acl = ["# Written by `tidegate mqtt-acl` from tidegate's key store: each key may publish to its device's topics."]
    if settings.mqtt_username:
        if settings.mqtt_password:
            passwd.append(f"{settings.mqtt_username}:{mosquitto_hash(settings.mqtt_password)}")
        acl += ["", f"user {settings.mqtt_username}", *(f"topic read {pattern.filter}" for pattern in patterns)]
    skipped = []
    for entry in entries:
        if entry.mqtt_password_hash is None:
            skipped.append(entry)
            continue
        username = mqtt_username(entry)
        passwd.append(f"{username}:{entry.mqtt_password_hash}")
        acl += ["", f"user {username}"]
        acl += [
            "topic write "
            + "/".join(entry.device_id if i == p.device_level else level for i, level in enumerate(p.levels))
            for p in patterns
        ]
    return "\n".join(passwd) + "\n", "\n".join(acl) + "\n", skipped


def write_broker_files(store: KeyStore, settings: Settings, out: Path) -> list[KeyEntry]:
    """Writes `passwd`, `acl` and a reference `mosquitto.conf` into `out`; returns the keys left out."""
    devices = [entry for entry in store.entries() if entry.role == "device"]  # operators never publish
    passwd, acl, skipped = broker_files(devices, settings)
    out.mkdir(parents=True, exist_ok=True)
    for name, text, mode in (("passwd", passwd, 0o600), ("acl", acl, 0o644)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, out / name)
    conf = out / "mosquitto.conf"
    conf.write_text(REFERENCE_CONFIG.format(passwd=(out / "passwd").resolve(), acl=(out / "acl").resolve()))
    return skipped
