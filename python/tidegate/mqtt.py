"""The MQTT source: each worker subscribes to the device topics and takes messages through the HTTP pipeline.

- MQTT 5 with a shared subscription (`$share/<group>/devices/+/telemetry`, ...): the broker splits the fleet between
  every worker of every instance in the group; MQTT 3.1.1 set by `mqtt_protocol` shares the same way. The fallback
  to 3.1.1 (when the broker refuses 5) and an empty group subscribe plainly, on worker 0 only, so that no two
  workers of an instance take the same message.
- QoS 1 with manual acknowledgement: a message's PUBACK is sent once its records are durable in the spool, never
  before, and in the order the messages arrived (MQTT requires it). Each worker has a client id of its own that
  outlives restarts (`<prefix>-w<N>`, N its spool directory) and a persistent session, so what was not acknowledged
  when a worker died is redelivered to the worker that owns the same spool, whose dedup window (rebuilt from that
  spool) answers it duplicate: a redelivery is never a second copy.
- The device comes from the topic (`{device_id}` in a pattern) and is the device every telemetry record must name,
  as a key is over HTTP; a reading that leaves device_id out is the topic's device's, with the event id it has
  naming it. There is no response to carry a rejection: what is refused (the records of a message, or
  the whole payload) is quarantined as over HTTP (`tidegate.quarantine`: raw bytes on the dead-letter topic, with
  `dlq-source: mqtt` and `mqtt-topic` headers), durably, before the message is acknowledged.
- The messages of one read are taken together (`_take_together`): each is validated and claimed in the dedup window
  as over HTTP, their records go to the spool at once and one commit makes them durable; a message that cannot be
  taken so (admission would wait, a payload refused as a whole, the spool failing) is taken on its own (`_take`).
- Overload never drops: a message waits, unacknowledged, while the worker is not ready, sheds its priority, or the
  device is over its rate, and a spool write that failed is retried. A worker reads at most `mqtt_receive_maximum`
  unacknowledged messages (and tells an MQTT 5 broker so, as its Receive Maximum): with that many waiting it stops
  reading the socket, so withheld acknowledgements slow the subscription to what the worker can take, and what it
  has not read waits at the broker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import pwd
import re
import select
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho_client
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tidegate.auth import KeyEntry, KeyStore, mosquitto_hash, mqtt_username
from tidegate.config import Settings
from tidegate.problems import Problem
from tidegate.quarantine import Source

if TYPE_CHECKING:
    from tidegate._native import Accepted
    from tidegate.gateway import Gateway
    from tidegate.ingest import Answer, IngestRoute

log = logging.getLogger("tidegate")

DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: MQTT 5 CONNACK reason "Unsupported Protocol Version", and MQTT 3.1.1's "unacceptable protocol version".
_UNSUPPORTED_PROTOCOL = (0x84, 1)
_RETRY_S = 0.05
#: At most this many messages are taken together (a socket that never runs dry still gets its messages taken).
_TURN_MESSAGES = 1024


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


def content_type_of(given: str | None, payload: bytes) -> str:
    """MQTT 5's content type when the publisher gave one; else JSON when the payload starts like JSON, or CBOR
    (a CBOR map or array never starts with `{`, `[` or white space)."""
    if given:
        return given
    start = payload.lstrip()[:1]
    return "application/json" if start in (b"{", b"[") or not payload.strip() else "application/cbor"


@dataclass(slots=True)
class _Reading:
    """One connection's socket, read by `MqttSource._read_socket` (paused while the window is full)."""

    loop: asyncio.AbstractEventLoop
    sock: paho_client.SocketLike
    paho: paho_client.Client
    connection: int
    paused: bool = False


class _Abandoned(Exception):
    """The worker stops: the message is left unacknowledged, for the broker to redeliver."""


@dataclass(slots=True)
class _Message:
    """One PUBLISH as tidegate reads it (see `read_publish`)."""

    topic: str
    payload: bytes
    content_type: str | None
    mid: int
    qos: int
    connection: int
    done: bool = False


def read_publish(packet: bytes | bytearray, header: int, v5: bool) -> tuple[str, bytes, str | None, int, int]:
    """A PUBLISH packet's (topic, payload, content type, packet id, QoS); `packet` is what follows its fixed header.

    paho's own decoder builds an MQTT 5 `Properties` object for every message, properties or not (about 35 µs, the
    largest single cost of a message on the worker's loop); most devices send none, so they are parsed only when
    present. Raises MalformedPacket, which drops the connection (the broker redelivers what was not acknowledged)."""
    qos = (header >> 1) & 3
    try:
        end = 2 + (packet[0] << 8 | packet[1])
        topic = bytes(packet[2:end]).decode()
        mid = 0
        if qos:
            mid = packet[end] << 8 | packet[end + 1]
            end += 2
        content_type = None
        if v5:
            length, used = (packet[end], 1) if packet[end] < 0x80 else VariableByteIntegers.decode(packet[end:])  # type: ignore[no-untyped-call]
            if length:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.unpack(packet[end:])  # type: ignore[no-untyped-call]
                given = getattr(properties, "ContentType", None)
                content_type = str(given) if given else None
            end += used + length
    except (IndexError, UnicodeDecodeError, ValueError, MQTTException) as error:
        raise MalformedPacket(f"PUBLISH: {error}") from error
    if qos > 1 or not topic:
        raise MalformedPacket(f"PUBLISH with QoS {qos} (tidegate subscribes with QoS 1) or no topic")
    return topic, bytes(packet[end:]), content_type, mid, qos


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
        self.protocol = "5" if settings.mqtt_protocol in ("auto", "5") else "3.1.1"
        self.subscriptions: list[str] = []
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._connection = 0
        self._pending: collections.deque[_Message] = collections.deque()
        self._handlers: set[asyncio.Task[None]] = set()
        self._inbox: list[_Message] = []
        self._turn_scheduled = False
        self._readable: tuple[int, select.poll] | None = None
        self._reading: _Reading | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics = gateway.metrics
        metrics.gauge("tidegate_mqtt_connected", "1 while connected to the MQTT broker.", lambda: float(self.connected))
        metrics.gauge(
            "tidegate_mqtt_unacknowledged",
            "MQTT messages received and not yet acknowledged (at most mqtt_receive_maximum).",
            lambda: float(len(self._pending)),
        )
        metrics.gauge(
            "tidegate_mqtt_reading_paused",
            "1 while the worker does not read the broker's connection: mqtt_receive_maximum messages await their "
            "acknowledgement (what the broker sends meanwhile waits in the socket, then at the broker).",
            lambda: float(self._reading is not None and self._reading.paused),
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
        self._read_publishes_of(client._client, v5)
        return client

    def _read_publishes_of(self, paho: paho_client.Client, v5: bool) -> None:
        """Takes PUBLISH packets from paho as it reads them, past its decoder and aiomqtt's message queue: each
        message costs the worker's loop a fraction of what paho's Properties, aiomqtt's Message, its queue and the
        task its iterator makes per message did. paho still reads the socket, writes the PUBACKs and keeps the
        connection; aiomqtt's message iterator, now always empty, still ends the session when it drops."""

        def handle_publish() -> MQTTErrorCode:
            packet = paho._in_packet  # a new one for every packet
            topic, payload, content_type, mid, qos = read_publish(packet["packet"], packet["command"], v5)
            self._arrived(_Message(topic, payload, content_type, mid, qos, self._connection))
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        paho._handle_publish = handle_publish  # type: ignore[method-assign]

    def _subscribes(self) -> bool:
        """Shared subscriptions split the fleet between workers; a plain one is held by worker 0 alone."""
        return self._shared or self.worker_index == 0

    @property
    def _shared(self) -> bool:
        """MQTT 5 shares; so does MQTT 3.1.1 when asked for by setting (mosquitto, EMQX, HiveMQ and VerneMQ take
        `$share/` from 3.1.1 clients too), but not as the fallback of `auto`: a broker that refuses MQTT 5 may not
        know `$share/`, and would take it for a topic no device publishes to."""
        return bool(self.settings.mqtt_shared_group) and (
            self.protocol == "5" or self.settings.mqtt_protocol == "3.1.1"
        )

    async def _session(self) -> None:
        client = self._client_for(self.protocol)
        # Before connecting: a resumed session's messages may be read as soon as the CONNACK is.
        self._connection += 1
        self._pending = collections.deque()
        self._client = client
        async with client:
            self._read_from(client)
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

    def _read_from(self, client: aiomqtt.Client) -> None:
        """Takes over reading the connection from aiomqtt, so that tidegate stops reading while
        `mqtt_receive_maximum` messages wait for their acknowledgement: the window holds where the broker does not
        keep to the Receive Maximum tidegate sent (mosquitto 2.0.11 lets its quota grow with each PUBACK), and
        under MQTT 3.1.1, which has none. What is not read waits in the socket, then in the broker's queue."""
        paho = client._client
        sock = paho.socket()
        self._reading = None
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        self._reading = _Reading(loop, sock, paho, self._connection)
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), self._read_socket)

    def _read_socket(self) -> None:
        reading = self._reading
        if reading is None:
            return
        try:
            reading.paho.loop_read()
            # An SSL socket may hold decrypted bytes its descriptor does not show (paho issue 131).
            while isinstance(reading.sock, ssl.SSLSocket) and reading.sock.pending() > 0:
                reading.paho.loop_read()
        except Exception:
            # As aiomqtt would: the session ends (and what was not acknowledged is redelivered to the next).
            log.exception(json.dumps({"event": "mqtt_read_failed", "broker": self.settings.mqtt}))
            reading.paho.disconnect()

    def _pause_when_full(self) -> None:
        reading = self._reading
        if reading is not None and not reading.paused and len(self._pending) >= self.settings.mqtt_receive_maximum:
            reading.loop.remove_reader(reading.sock.fileno())
            reading.paused = True

    def _resume_when_room(self) -> None:
        reading = self._reading
        if (
            reading is not None
            and reading.paused
            and reading.connection == self._connection
            and len(self._pending) < self.settings.mqtt_receive_maximum
            and reading.sock.fileno() >= 0
        ):
            reading.paused = False
            reading.loop.add_reader(reading.sock.fileno(), self._read_socket)

    async def _read(self, client: aiomqtt.Client, connection: int) -> None:
        """Returns (raising MqttError) when the connection drops; messages come through `_arrived` meanwhile."""
        async for _ in client.messages:
            raise AssertionError("tidegate reads PUBLISH packets itself (_read_publishes_of)")

    def _arrived(self, message: _Message) -> None:
        """Called by paho, on the worker's loop, for each PUBLISH read; the messages of a read are taken together."""
        if message.qos > 0:
            self._pending.append(message)
            self._pause_when_full()
        self._inbox.append(message)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._take_turn)

    def _take_turn(self) -> None:
        """Takes the messages read since the last turn together, once the socket holds no more (paho reads one
        packet per turn of the loop, so this waits a turn while there is more), or once `_TURN_MESSAGES` wait."""
        if self._stop.is_set():
            return  # left unacknowledged: the broker redelivers them
        paused = self._reading is None or self._reading.paused
        if len(self._inbox) < _TURN_MESSAGES and not paused and self._more_to_read():
            asyncio.get_running_loop().call_soon(self._take_turn)
            return
        self._turn_scheduled = False
        messages, self._inbox = self._inbox, []
        self._spawn(self._take_together(messages))

    def _more_to_read(self) -> bool:
        sock = self._reading.sock if self._reading is not None else None
        if sock is None or sock.fileno() < 0:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if self._readable is None or self._readable[0] != sock.fileno():
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._readable = (sock.fileno(), poller)
        return bool(self._readable[1].poll(0))

    def _spawn(self, taking: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(taking)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _acknowledge(self, delivery: _Message) -> None:
        """Sends the PUBACKs that are due: in arrival order, up to the first message not yet durable."""
        delivery.done = True
        client = self._client
        if delivery.connection != self._connection or client is None:
            return  # its connection is gone: the broker redelivers it, and it will be a duplicate
        pending = self._pending
        while pending and pending[0].done:
            head = pending.popleft()
            client._client.ack(head.mid, head.qos)
        self._resume_when_room()

    # ----- messages taken together

    async def _take_together(self, messages: list[_Message]) -> None:
        """Takes each message (`IngestEdge.accept`: validated, claimed, appended to the spool with the quarantine
        records of its rejected ones), waits for the commit that makes them all durable, then acknowledges them:
        the pipeline's per-message cost on the worker's loop is its own work, not a task and a wait each. A message
        that cannot be taken so (no route, admission would wait, a payload refused as a whole, a spool that cannot
        take it now) is taken on its own, as `_take` takes it, from where it stopped."""
        edge = self.gateway.edge
        taken: list[tuple[_Message, IngestRoute, str, Accepted]] = []
        for message in messages:
            matched = self._route_of(message.topic)
            if matched is None or self.settings.dry_run or self._admission(*matched) > 0:
                self._spawn(self._finish(message, self._take(message)))  # it asks for admission again: nothing taken
                continue
            route, device_id = matched
            accepted = self._accept(message, route, device_id)
            if accepted.status >= 400:
                # Refused as a whole (quarantined, or to be tried as NDJSON), or the spool cannot take it now.
                self._spawn(self._finish(message, self._take_admitted(message, route, device_id, accepted)))
                continue
            taken.append((message, route, device_id, accepted))
        if not taken:
            return
        self.gateway.in_flight_requests += len(taken)
        try:
            for message, route, device_id, accepted in taken:
                try:
                    answer = await edge.deliver(accepted)
                except Problem:
                    # Not durable and its claims released: it waits for the spool on its own.
                    self._spawn(self._finish(message, self._take_admitted(message, route, device_id)))
                    continue
                self.gateway.metrics.mqtt_messages.inc((self._outcome(message, answer),))
                self._acknowledge(message)
        finally:
            self.gateway.in_flight_requests -= len(taken)

    def _accept(
        self, message: _Message, route: IngestRoute, device_id: str, content_type: str | None = None
    ) -> Accepted:
        """`IngestEdge.accept` of one message; `content_type` overrides the one the message gives (or guesses)."""
        payload = message.payload
        content_type = content_type or content_type_of(message.content_type, payload)
        # No content type travels with MQTT 3.1.1: JSON that is not one document may be NDJSON, tried next, so the
        # first try does not quarantine a body it cannot decode.
        may_be_ndjson = content_type == "application/json" and b"\n" in payload.strip()
        return self.gateway.edge.accept(
            route,
            payload,
            {"content-type": content_type},
            device_id,
            route.priority,
            dry_run=self.settings.dry_run,
            source=self._source(message.topic, may_be_ndjson),
            device_from_source=True,
        )

    # ----- one message

    async def _finish(self, message: _Message, taking: Awaitable[str]) -> None:
        """Acknowledges the message once `taking` took it (into the spool, or quarantined)."""
        try:
            outcome = await taking
        except _Abandoned:
            return
        except Exception:
            # Never acknowledged: the broker redelivers it on the next session.
            log.exception(json.dumps({"event": "mqtt_message_failed", "topic": message.topic}))
            return
        self.gateway.metrics.mqtt_messages.inc((outcome,))
        self._acknowledge(message)

    def _route_of(self, topic: str) -> tuple[IngestRoute, str] | None:
        """The route and device of a topic; None for a topic of no pattern or a device id that is not one."""
        for pattern, route in self.patterns:
            device_id = pattern.device_of(topic)
            if device_id is not None:
                return (route, device_id) if DEVICE_ID.fullmatch(device_id) else None
        return None

    async def _take(self, message: _Message) -> str:
        """Takes one message into the spool; what it holds that is refused is quarantined (`IngestEdge.accept`, the
        path HTTP takes). Returns the outcome counted in the metrics."""
        topic, payload = message.topic, message.payload
        matched = self._route_of(topic)
        if matched is None:
            named = next(((route, d) for p, route in self.patterns if (d := p.device_of(topic)) is not None), None)
            if named is None:
                problem = Problem(400, "unknown-topic", f"{topic!r} matches no configured topic pattern")
                return await self._dead_letter(topic, None, None, problem, payload)
            route, device_id = named
            problem = Problem(
                400,
                "invalid-device-id",
                "the device id in the topic must match ^[A-Za-z0-9_-]{1,64}$",
                [{"path": "topic", "message": f"not a device id: {device_id[:80]!r}"}],
            )
            return await self._dead_letter(topic, route, None, problem, payload)
        route, device_id = matched
        await self._admit(route, device_id)
        return await self._take_admitted(message, route, device_id)

    async def _take_admitted(
        self, message: _Message, route: IngestRoute, device_id: str, accepted: Accepted | None = None
    ) -> str:
        """`_take` once admitted (and `accepted` once, if it was). A JSON payload that cannot be decoded but holds
        lines is tried again as NDJSON (only then quarantined)."""
        topic = message.topic
        try:
            answer = await self._ingest(message, route, device_id, accepted)
        except Problem as problem:
            content_type = content_type_of(message.content_type, message.payload)
            may_be_ndjson = content_type == "application/json" and b"\n" in message.payload.strip()
            if not (may_be_ndjson and problem.slug == "malformed"):
                self._count_dead_letter(topic, problem)
                return "dead_lettered"
            try:
                answer = await self._ingest(message, route, device_id, None, "application/x-ndjson")
            except Problem as refused:
                self._count_dead_letter(topic, refused)
                return "dead_lettered"
        return self._outcome(message, answer)

    def _outcome(self, message: _Message, answer: Answer) -> str:
        """A taken message's outcome; its refused records (quarantined with the others) are counted."""
        if answer.rejected:
            self._count_dead_letter(message.topic, Problem(400, "invalid", f"{answer.rejected} record(s) rejected"))
            return "partly_dead_lettered"
        return "accepted"

    def _admission(self, route: IngestRoute, device_id: str) -> float:
        """0 when the message may be taken now (the device's token taken); else the seconds to wait before asking
        again. Where HTTP would answer 503 or 429, MQTT holds the message unacknowledged: the subscription slows."""
        gateway = self.gateway
        return gateway.admission.wait_for(device_id, route.priority, gateway.in_flight_records)

    async def _admit(self, route: IngestRoute, device_id: str) -> None:
        """Waits, holding the message unacknowledged, until `_admission` lets it in."""
        while (wait := self._admission(route, device_id)) > 0:
            if self._stop.is_set():
                raise _Abandoned
            await asyncio.sleep(wait)

    async def _ingest(
        self,
        message: _Message,
        route: IngestRoute,
        device_id: str,
        accepted: Accepted | None,
        content_type: str | None = None,
    ) -> Answer:
        """The HTTP pipeline (`accept`, unless `accepted` was, then `deliver`); raises Problem for a payload refused
        as a whole (quarantined once durable); a spool that cannot take the message now (HTTP's 503) is waited for,
        never dropped."""
        gateway = self.gateway
        while True:
            gateway.in_flight_requests += 1
            try:
                if accepted is None:
                    accepted = self._accept(message, route, device_id, content_type)
                answer = await gateway.edge.deliver(accepted)
                if answer.status < 400:
                    return answer
                if answer.status < 500:
                    raise Problem(answer.status, accepted.slug or "refused", "refused as a whole")
            except Problem as problem:
                if problem.status < 500:
                    raise
            finally:
                gateway.in_flight_requests -= 1
            accepted = None
            if self._stop.is_set():
                raise _Abandoned
            await asyncio.sleep(_RETRY_S * 10)

    async def _dead_letter(
        self, topic: str, route: IngestRoute | None, device_id: str | None, problem: Problem, payload: bytes
    ) -> str:
        """A message refused before the pipeline (a topic that names no route or no device): counted, and its
        payload quarantined (stage `route`, durable when this returns; retried while the spool cannot take it)."""
        self._count_dead_letter(topic, problem)
        native = self.gateway.native
        assert native is not None
        while True:
            accepted = native.quarantine(
                payload,
                status=problem.status,
                slug=problem.slug,
                detail=problem.detail,
                errors=[(str(error["path"]), str(error["message"])) for error in problem.errors],
                stage="route",
                content_type="application/octet-stream",
                route=route.index if route is not None else None,
                source="mqtt",
                source_headers=[("mqtt-topic", topic.encode())],
            )
            try:
                answer = await self.gateway.edge.deliver(accepted)
            except Problem:
                answer = None
            if answer is None or answer.status >= 500:
                if self._stop.is_set():
                    raise _Abandoned from None
                await asyncio.sleep(_RETRY_S * 10)
                continue
            return "dead_lettered"

    def _count_dead_letter(self, topic: str, problem: Problem) -> None:
        self.gateway.metrics.mqtt_dead_letters.inc((problem.slug,))
        log.info(json.dumps({"event": "mqtt_dead_letter", "topic": topic, "reason": problem.slug}))

    @staticmethod
    def _source(topic: str, undecodable_retried: bool = False) -> Source:
        return Source("mqtt", (("mqtt-topic", topic.encode()),), undecodable_retried)


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


def broker_owner() -> tuple[int, int] | None:
    """Who must own the broker's files: mosquitto started as root reads them as the user it switches to, `mosquitto`
    (its `user` setting's default), which cannot read a root-owned password file (0600). So when tidegate runs as
    root and that user exists, its uid and gid; otherwise None (the broker runs as whoever runs tidegate)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def write_broker_files(store: KeyStore, settings: Settings, out: Path) -> list[KeyEntry]:
    """Writes `passwd`, `acl` and a reference `mosquitto.conf` into `out`; returns the keys left out."""
    devices = store.entries()
    passwd, acl, skipped = broker_files(devices, settings)
    out.mkdir(parents=True, exist_ok=True)
    owner = broker_owner()
    for name, text, mode in (("passwd", passwd, 0o600), ("acl", acl, 0o644)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, out / name)
    conf = out / "mosquitto.conf"
    conf.write_text(REFERENCE_CONFIG.format(passwd=(out / "passwd").resolve(), acl=(out / "acl").resolve()))
    return skipped
