"""The chaos suite: real faults against a real tidegate server and a real broker, checked by what clients were told.

Every scenario runs `tidegate serve` (``testing.server.Server``), usually with a tansu broker
(``testing.broker.Broker``), under load from concurrent HTTP/1.1 keep-alive clients that post unique seed-001
readings and record the event id of every record a ``202`` acknowledged (an answer ``accepted`` or
``duplicate``). Connection errors, ``429`` and ``503`` are not acknowledgements; a client retries the same body,
as a device would. While the load runs, the scenario injects its fault, then checks that the service recovered
and reads back what it holds:

* **in spool**: acknowledged event ids found by ``Spool.open_read_only`` in ``data/spool/w*``;
* **in Kafka**: acknowledged event ids consumed from the broker (``event_id`` header) by a consumer that reads
  from offset 0 all the time, so records consumed before a broker restart still count;
* **duplicates delivered**: extra copies in Kafka (the same event id at more than one log position);
* **lost**: with Kafka configured, acknowledged ids not in Kafka after recovery and drain, minus *lost by the
  broker* (below); without Kafka, acknowledged ids not in the spool.
* **lost by the broker**: tansu keeps its log in memory, so a broker restart empties it. Records the spool's
  checkpoint says the old broker acknowledged, and that no consumer read before it died, are gone with the broker,
  not lost by tidegate; they are reported separately and never hidden in "lost".

A scenario passes when lost is 0 and the service recovered (it answers ``202`` again after the fault, and with
Kafka its backlog drained: every acknowledged record reached the broker and the checkpoint caught up), in one
that overloads the server on purpose (j) something was shed, and in one that injects a fault into the worker before
each kill (m) the worker had taken it (``ChaosRow.failures``).

Run the small size from pytest (``tests/test_chaos.py``), or any size on demand: ``tidegate chaos --size full``.
Scenarios that need parts not built yet are listed in ``SCENARIOS`` with the reason (``pending``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO, TypeVar

from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped,unused-ignore]
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tidegate._native import BULK_BODY_BYTES, Contract, Records, Spool, Validator
from tidegate.config import Settings
from tidegate.delivery.spool import worker_spool_dirs
from tidegate.delivery.status import running_delivery_pid
from tidegate.testing.broker import Broker, Collector, consume_all, reveal_tails
from tidegate.testing.mosquitto import Mosquitto
from tidegate.testing.processes import LOOPBACK
from tidegate.testing.server import Server, arm_spool_commit_delay, arm_spool_write_failures, fault_taken

__all__ = ["SCENARIOS", "SIZES", "ChaosRow", "Scenario", "Size", "format_table", "main", "run_scenario"]

TELEMETRY_TOPIC = "telemetry-raw"
TOPICS = {TELEMETRY_TOPIC: 3, "events-raw": 1, "ingest-dlq": 1}
INGEST_PATH = "/api/v1/ingest"
REVEAL_EVERY_S = 2.0
"""While a drain waits for records in Kafka, it stores markers at the ends of the partitions this often (see
`Rig.drain`)."""
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Size:
    """How long and how hard each scenario pushes; ``small`` runs in the test suite, ``full`` on demand."""

    name: str
    clients: int
    readings_per_request: int
    reading_bytes: int
    """About how large each reading's JSON is (metadata padding); the issue measured ~1 KB readings."""
    load_s: float
    """Load before the first fault and after the last one."""
    kills: int
    kill_interval_s: float
    outage_s: float
    backlog_bytes: int
    """(b) keeps the broker down until the spool holds at least this much undelivered (past the forwarder's 4 MiB
    read budget, so a read stops inside a segment)."""
    backlog_segments: int
    segment_bytes: int
    tmpfs_bytes: int
    drain_timeout_s: float
    recovery_timeout_s: float


SIZES = {
    "small": Size(
        name="small",
        clients=4,
        readings_per_request=20,
        reading_bytes=1000,
        load_s=1.5,
        kills=5,
        kill_interval_s=1.0,
        outage_s=3.0,
        backlog_bytes=6 << 20,
        backlog_segments=3,
        segment_bytes=1 << 20,
        tmpfs_bytes=32 << 20,
        drain_timeout_s=40.0,
        recovery_timeout_s=10.0,
    ),
    "full": Size(
        name="full",
        clients=8,
        readings_per_request=20,
        reading_bytes=1000,
        load_s=5.0,
        kills=5,
        kill_interval_s=5.0,
        outage_s=20.0,
        backlog_bytes=24 << 20,
        backlog_segments=3,
        segment_bytes=4 << 20,
        tmpfs_bytes=128 << 20,
        drain_timeout_s=120.0,
        recovery_timeout_s=20.0,
    ),
}


@dataclasses.dataclass
class ChaosRow:
    """One scenario's outcome; see the module docstring for what each count means."""

    scenario: str
    acknowledged: int
    in_spool: int
    in_kafka: int | None
    """None when the scenario runs without Kafka."""
    duplicates_delivered: int | None
    lost: int
    lost_by_broker: int = 0
    recovered: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    shed: int | None = None
    """In a scenario that overloads the server on purpose, the requests it refused for load (`503 shed`); None
    elsewhere."""
    fault_in_effect: bool = True
    """False when an injected fault was not taken by the worker before it was killed (the scenario then tested less
    than it says)."""

    def failures(self) -> list[str]:
        """Why the scenario failed (empty when it passed)."""
        out = []
        if self.acknowledged == 0:
            out.append("nothing was acknowledged: the scenario proved nothing")
        if self.lost:
            out.append(f"{self.lost} acknowledged records lost")
        if not self.recovered:
            out.append("the service did not recover")
        if self.shed == 0:
            out.append("nothing was shed: the overload the scenario is about never happened")
        if not self.fault_in_effect:
            out.append("the injected fault was not in effect at every kill: the scenario proved less than it says")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def cells(self) -> list[str]:
        def number(value: int | None) -> str:
            return "-" if value is None else f"{value:,}"

        notes = list(self.notes)
        if self.lost_by_broker:
            notes.insert(0, f"lost by the broker (tansu restarted empty): {self.lost_by_broker:,}")
        if not self.recovered:
            notes.insert(0, "NOT RECOVERED")
        return [
            self.scenario,
            number(self.acknowledged),
            number(self.in_spool),
            number(self.in_kafka),
            number(self.duplicates_delivered),
            number(self.lost),
            "; ".join(notes),
        ]


_HEADER = ["scenario", "acknowledged", "in spool", "in Kafka", "duplicates delivered", "lost", "recovery / notes"]


def format_table(rows: Iterable[ChaosRow]) -> str:
    """The rows as a Markdown table (what the README shows)."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|---|" + "---:|" * 5 + "---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ clients


def _iso_now() -> str:
    moment = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"


class _Connection:
    """One HTTP/1.1 keep-alive connection; any failure closes it and raises ``ConnectionError``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(
        self, path: str, body: bytes, headers: dict[str, str], sent: Callable[[], None], timeout: float = 30.0
    ) -> tuple[int, bytes]:
        """The status and body of the answer; ``sent()`` is called once the request is written in full."""
        try:
            return await asyncio.wait_for(self._post(path, body, headers, sent), timeout)
        except (OSError, EOFError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError) as error:
            self.close()
            raise ConnectionError(f"{type(error).__name__}: {error}") from None

    async def _post(
        self, path: str, body: bytes, headers: dict[str, str], sent: Callable[[], None]
    ) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        sent()
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip().lower()
        if "content-length" in fields:
            content = await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            content = b""
            while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
                content += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
        else:
            raise ValueError("response without a length")
        if fields.get("connection") == "close":
            self.close()
        return status, content

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


#: Every this many devices of a `Load`, one sends at high priority.
HIGH_PRIORITY_EVERY = 4
FLOOD_BODY_BYTES = BULK_BODY_BYTES + BULK_BODY_BYTES // 2
"""About how large a flooding device's bodies are (`Load` with ``flood=True``): past `BULK_BODY_BYTES`, at which
admission counts a body in its bulk lane and the worker accepts it on its accept thread."""


async def _eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether `condition()` holds within `timeout` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _acknowledged_after(last_ack: Callable[[], float], after: float, timeout: float) -> bool:
    """Whether `last_ack()` (time.monotonic() of the latest acknowledgement) passes `after` within `timeout` s."""
    return await _eventually(lambda: last_ack() > after, timeout)


class Load:
    """Concurrent clients, one device each, posting arrays of unique readings until stopped. Every fourth device
    sends at high priority (``HIGH_PRIORITY_EVERY``), whose records go to each worker's spool of their own.

    With ``race=True`` every other body is sent on two connections at once (a retry racing its original), the racer
    at the other priority: one copy goes to the high-priority spool, the other to the main one.

    With ``flood=True`` the other devices send low-priority bodies of about ``FLOOD_BODY_BYTES``, which admission
    takes in its bulk lane and the worker accepts on its accept thread, and sheds (`503 shed`) past the lane.
    """

    def __init__(self, port: int, keys: dict[str, str], size: Size, *, race: bool = False, flood: bool = False) -> None:
        self.port = port
        self.keys = keys
        self.size = size
        self.race = race
        self.flood = flood
        self.by_priority: Counter[tuple[str, int | None]] = Counter()
        """Answers to each attempt, per (priority sent, status): a retry counts again, None is no answer (a
        connection error), and a racer's answer is not counted (only the first connection's)."""
        self.acknowledged: set[str] = set()
        self.first_answer_duplicate: set[str] = set()
        """Acknowledged ids whose first 202 said `duplicate` (a retry or a racer answered before its original)."""
        self.statuses: Counter[int] = Counter()
        self.problems: Counter[str] = Counter()
        self.connection_errors = 0
        self.raced_bodies = 0
        self.last_ack = 0.0
        """time.monotonic() of the latest 202."""
        self._padding = "x" * max(0, size.reading_bytes - 260)
        self._running = True
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[int, float] = {}
        self._outcomes: dict[int, int | None] = {}
        self._tokens = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._client(device, key, high=i % HIGH_PRIORITY_EVERY == 0))
            for i, (device, key) in enumerate(self.keys.items())
        ]

    async def stop(self) -> None:
        self._running = False
        self._unpaused.set()
        await asyncio.gather(*self._tasks)

    def pause(self) -> None:
        """Clients send no new body (requests under way finish) until ``resume()``."""
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    def in_flight(self, sent_before: float) -> set[int]:
        """Requests written in full before ``sent_before`` (time.monotonic()) and not answered yet (tokens, for
        ``cut_off``). A request written just before a shutdown may still sit unread in the socket, where no server
        can tell it from a request that never came; one written a moment earlier has been read."""
        return {token for token, sent in self._in_flight.items() if sent <= sent_before}

    def cut_off(self, tokens: Iterable[int]) -> int:
        """How many of these requests ended without any answer."""
        return sum(1 for token in tokens if self._outcomes.get(token) is None)

    async def wait_for_ack(self, after: float, timeout: float) -> bool:
        """Whether a 202 arrives after ``after`` (time.monotonic()) within ``timeout`` seconds."""
        return await _acknowledged_after(lambda: self.last_ack, after, timeout)

    def body(self, device: str, first: int, count: int | None = None) -> bytes:
        """A body of `count` (default: the size's) unique readings of `device`, numbered from `first` (the MQTT
        devices send the same)."""
        readings = [
            {
                "device_id": device,
                "timestamp": _iso_now(),
                "metrics": {"temperature": 20 + n % 100 / 10, "humidity": 40 + n % 40, "pressure": 1013.25, "n": n},
                "metadata": {"firmware_version": "2.1.0", "battery_level": 85, "note": self._padding},
            }
            for n in range(first, first + (count or self.size.readings_per_request))
        ]
        return json.dumps(readings).encode()

    async def _client(self, device: str, key: str, *, high: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Device-Token": key}
        racer_headers = dict(headers)
        (headers if high else racer_headers)["X-Priority"] = "high"
        flooding = self.flood and not high
        count = self.size.readings_per_request
        if flooding:
            headers["X-Priority"] = "low"
            count = max(count, -(-FLOOD_BODY_BYTES // self.size.reading_bytes))
        priority = headers.get("X-Priority", "medium")
        connections = [_Connection(self.port), _Connection(self.port)]
        next_n = 0
        try:
            while self._running:
                await self._unpaused.wait()
                body = self.body(device, next_n, count)
                next_n += count
                racing = self.race and next_n // count % 2 == 0
                self.raced_bodies += racing
                # A device retries the same body until one answer acknowledges it (or the load stops).
                while self._running:
                    sends = [self._send(connections[0], body, headers)]
                    if racing:
                        sends.append(self._send(connections[1], body, racer_headers))
                    answers = await asyncio.gather(*sends)
                    self.by_priority[(priority, answers[0])] += 1
                    if 202 in answers:
                        break
                    await asyncio.sleep(0.05 if None in answers or 503 in answers else 0.01)
        finally:
            for connection in connections:
                connection.close()

    async def _send(self, connection: _Connection, body: bytes, headers: dict[str, str]) -> int | None:
        token = self._tokens = self._tokens + 1
        self._outcomes[token] = None

        def sent() -> None:
            self._in_flight[token] = time.monotonic()

        try:
            status, content = await connection.post(INGEST_PATH, body, headers, sent)
        except ConnectionError:
            self.connection_errors += 1
            return None
        finally:
            self._in_flight.pop(token, None)
        self._outcomes[token] = status
        self.statuses[status] += 1
        if status == 202:
            document = json.loads(content)
            for item in document.get("results", [document]):
                if item["status"] in ("accepted", "duplicate"):
                    if item["event_id"] not in self.acknowledged and item["status"] == "duplicate":
                        self.first_answer_duplicate.add(item["event_id"])
                    self.acknowledged.add(item["event_id"])
                else:
                    self.problems[f"202 item {item['status']}"] += 1
            self.last_ack = time.monotonic()
        else:
            with contextlib.suppress(ValueError, AttributeError):
                self.problems[f"{status} {json.loads(content).get('type', '').rsplit(':', 1)[-1]}"] += 1
        return status


MQTT_DEVICES = 4
MQTT_TOPIC = Settings.mqtt_topic_telemetry
MQTT_LAST_SUBSCRIPTION = f"$share/{Settings.mqtt_shared_group}/{Settings.mqtt_topic_events.format(device_id='+')}"
"""The last of tidegate's three subscriptions (one SUBSCRIBE): a message published before it goes nowhere."""
MQTT_MESSAGES_PER_S = 50
"""At most: the publisher sleeps this long apart after each message's work."""
MQTT_IN_FLIGHT = 100
MQTT_STOP_WAIT_S = 10.0


class MqttLoad:
    """Devices publishing over MQTT with QoS 1 beside the HTTP clients (a paho client, its network thread and a
    publishing thread), each message a body like ``Load``'s. A message counts as acknowledged once mosquitto
    accepted it (a PUBACK with a success code): from then the broker holds it in tidegate's persistent session until
    tidegate acknowledges it, which tidegate does only once its records are durable, so every one must reach the
    spool and Kafka. Its event ids are the ones the server derives, from the core validator (the topic names the
    device, as for the server)."""

    def __init__(self, mosquitto: Mosquitto, load: Load) -> None:
        self.mosquitto = mosquitto
        self.load = load
        self.acknowledged: set[str] = set()
        self.published = 0
        self.last_ack = 0.0
        """time.monotonic() when the latest acknowledgement was counted."""
        self.unacknowledged = 0
        """Messages mosquitto refused, or did not acknowledge within MQTT_STOP_WAIT_S of the stop."""
        self._validator = Validator(Contract.telemetry(), max_future_seconds=3600)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Per message id, whether mosquitto's PUBACK accepted it (set on paho's network thread).
        self._pubacks: dict[int, bool] = {}
        self._pubacked = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="chaos-publisher", protocol=paho.MQTTv5)
        self._client.max_inflight_messages_set(MQTT_IN_FLIGHT)
        self._client.on_publish = self._on_publish

    def start(self) -> None:
        self._client.connect(LOOPBACK, self.mosquitto.port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._publish, name="chaos-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops publishing and waits (MQTT_STOP_WAIT_S at most) for mosquitto's acknowledgements of what was sent."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        self._client.disconnect()
        self._client.loop_stop()

    def _on_publish(self, _client: object, _userdata: object, mid: int, reason: ReasonCode, _props: object) -> None:
        with self._pubacked:
            self._pubacks[mid] = not reason.is_failure
            self._pubacked.notify_all()

    def _settle(self, pending: collections.deque[tuple[int, list[str]]], *, room: int, deadline: float) -> None:
        """Counts the acknowledged messages at the head of `pending`, waiting for the head's PUBACK while more than
        `room` are pending, until `deadline` (time.monotonic()); a message still unacknowledged then is given up."""
        with self._pubacked:
            while pending:
                mid, ids = pending[0]
                accepted = self._pubacks.pop(mid, None)
                if accepted is None:
                    if len(pending) <= room:
                        return
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._pubacked.wait(left)
                        continue
                pending.popleft()
                if accepted:
                    self.acknowledged.update(ids)
                    self.last_ack = time.monotonic()
                else:
                    self.unacknowledged += 1

    def _publish(self) -> None:
        pending: collections.deque[tuple[int, list[str]]] = collections.deque()
        readings_per_body = self.load.size.readings_per_request
        n = 0
        while not self._stop.is_set():
            device = f"mqtt-{n // readings_per_body % MQTT_DEVICES:02d}"
            body = self.load.body(device, n)
            n += readings_per_body
            ids = [i for i in self._validator.validate(body, device_id=device).event_ids if i is not None]
            # Queued by paho even when it has no connection (sent once it has one again): the id is good either way.
            pending.append((self._client.publish(MQTT_TOPIC.format(device_id=device), body, qos=1).mid, ids))
            self.published += 1
            self._settle(pending, room=MQTT_IN_FLIGHT - 1, deadline=time.monotonic() + MQTT_STOP_WAIT_S)
            self._stop.wait(1 / MQTT_MESSAGES_PER_S)
        self._settle(pending, room=0, deadline=time.monotonic() + MQTT_STOP_WAIT_S)


# ------------------------------------------------------------------------------------------------------ readers


def _while_cleanup_runs(read: Callable[[Path], _T], directory: Path) -> _T:
    """Runs a read of a spool another process writes; its cleanup may delete a segment under the reader (the read
    then fails with ENOENT), so a failed read is tried again, a few times."""
    for attempt in range(20):
        try:
            return read(directory)
        except OSError:
            if attempt == 19:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _records_on_disk(spool: Spool) -> Iterator[tuple[int, Records]]:
    """Every record still on disk in `spool`, in order, as (the sequence of the first, records). Each read takes
    whole segments (no byte budget), so this reader cannot skip what a budget would cut."""
    seq = 0
    while True:
        records, seq = spool.read(seq, max_records=50_000, max_bytes=1 << 40, durable_only=False)
        if len(records) == 0:
            return
        yield seq - len(records), records


def spooled_ids(data_dir: Path) -> set[str]:
    """Event ids of every record in every spool directory."""

    def read(directory: Path) -> set[str]:
        return {i for _, records in _records_on_disk(Spool.open_read_only(directory)) for i in records.event_ids()}

    return {i for directory in worker_spool_dirs(data_dir) for i in _while_cleanup_runs(read, directory)}


def checkpointed_ids(data_dir: Path) -> set[str]:
    """Event ids of the records (still on disk) that each spool's checkpoint says the broker acknowledged."""

    def read(directory: Path) -> set[str]:
        out: set[str] = set()
        spool = Spool.open_read_only(directory)
        acked = spool.stats()["acked_seq"]
        for first, records in _records_on_disk(spool):
            if first >= acked:
                break
            out.update(records.event_ids()[: acked - first])
        return out

    return {i for directory in worker_spool_dirs(data_dir) for i in _while_cleanup_runs(read, directory)}


def whereabouts(data_dir: Path, ids: set[str]) -> list[str]:
    """Where the records of ``ids`` are in the spools, for a row that lost some: per spool, how many on each
    topic and at which sequences, against the spool's checkpoint. It tells records the forwarder passed (below
    the checkpoint: stepped over, or acknowledged by a broker that lost them) from records kept only as duplicate
    occurrences (their originals never written)."""

    def read(directory: Path) -> tuple[list[int], Counter[str], dict[str, int]]:
        seqs: list[int] = []
        topics: Counter[str] = Counter()
        spool = Spool.open_read_only(directory)
        for first, records in _records_on_disk(spool):
            seqs.extend(first + offset for offset, event_id in enumerate(records.event_ids()) if event_id in ids)
            for topic in records.topics:
                topics[topic] += sum(1 for event_id in records.event_ids(topic) if event_id in ids)
        return seqs, topics, spool.stats()

    notes = []
    for directory in worker_spool_dirs(data_dir):
        seqs, topics, stats = _while_cleanup_runs(read, directory)
        if seqs:
            on = ", ".join(f"{n:,} on {topic}" for topic, n in sorted(topics.items()) if n)
            notes.append(
                f"{directory.name}: {on}, at {_ranges(seqs)} (checkpoint {stats['acked_seq']:,}, "
                f"next {stats['next_seq']:,})"
            )
    return notes


def offset_gaps(records: Iterable[ConsumerRecord]) -> str:
    """Per partition, the offsets below the highest one read that no record read holds. tansu reserves a batch's
    offsets before it stores the batch: a gap is a batch it took and did not store (or not yet), and a record lost
    where there is no gap never reached its log."""
    offsets: dict[int, list[int]] = {}
    for record in records:
        offsets.setdefault(record.partition, []).append(record.offset)
    gaps = []
    for partition, held in sorted(offsets.items()):
        present = set(held)
        missing = [offset for offset in range(max(held) + 1) if offset not in present]
        gaps.append(
            f"partition {partition}: {len(held):,} records, " + (f"gaps at {_ranges(missing)}" if missing else "no gap")
        )
    return "offsets read at the end: " + "; ".join(gaps)


def _ranges(seqs: list[int], most: int = 8) -> str:
    """``12-31, 40-59, ...`` for sorted sequences, the first ``most`` runs."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:most])
    return shown + (f" and {len(runs) - most} more runs" if len(runs) > most else "")


def spool_stats(data_dir: Path) -> dict[str, dict[str, int]]:
    def read(directory: Path) -> dict[str, int]:
        return Spool.open_read_only(directory).stats()

    return {directory.name: _while_cleanup_runs(read, directory) for directory in worker_spool_dirs(data_dir)}


# ------------------------------------------------------------------------------------------------------ the rig


@contextlib.contextmanager
def _stopped(send: Callable[[int], None] | None) -> Iterator[None]:
    """What `send(signal)` reaches stopped (SIGSTOP) for the block, then let go (SIGCONT), unless the block killed
    it; None: nothing to stop."""
    if send is not None:
        send(signal.SIGSTOP)
    try:
        yield
    finally:
        if send is not None:
            with contextlib.suppress(ProcessLookupError):
                send(signal.SIGCONT)


class Rig:
    """A broker (optional), a server on ``data_dir`` with one key per client device, the load and the collector."""

    def __init__(
        self,
        work_dir: Path,
        size: Size,
        *,
        kafka: bool = True,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        race: bool = False,
        mqtt: bool = False,
        flood: bool = False,
        workers: int = 1,
    ) -> None:
        self.work_dir = work_dir
        self.size = size
        self.broker = Broker(work_dir / "broker") if kafka else None
        self.data_dir = data_dir or work_dir / "data"
        settings = {"TIDEGATE_RATE_PER_DEVICE": "0", **(env or {})}
        self.server = Server(self.data_dir, settings, workers=workers)
        self.server.log_path = work_dir / "server.log"  # outside data_dir, which may be a small filesystem
        self.race = race
        self.flood = flood
        self.collector: Collector | None = None
        self.load: Load | None = None
        #: With ``mqtt=True``: a mosquitto the server subscribes to, and devices publishing to it (``MqttLoad``).
        self.mosquitto = Mosquitto(work_dir / "mosquitto") if mqtt else None
        self.mqtt: MqttLoad | None = None
        if self.mosquitto is not None:
            self.server.env["TIDEGATE_MQTT"] = self.mosquitto.url
        self.started = time.monotonic()

    async def __aenter__(self) -> Rig:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.broker is not None:
            await asyncio.to_thread(self.broker.start)
            self.broker.create_topics([TELEMETRY_TOPIC], partitions=TOPICS[TELEMETRY_TOPIC])
            self.broker.create_topics([t for t in TOPICS if t != TELEMETRY_TOPIC], partitions=1)
            self.server.env["TIDEGATE_KAFKA"] = self.broker.bootstrap
            self.collector = Collector(self.broker.bootstrap, {TELEMETRY_TOPIC: TOPICS[TELEMETRY_TOPIC]})
            self.collector.start()
        devices = [f"chaos-{i:02d}" for i in range(self.size.clients)]
        try:
            if self.mosquitto is not None:
                await asyncio.to_thread(self.mosquitto.start)
            keys = await asyncio.to_thread(self.server.keys, *devices)
            await asyncio.to_thread(self.server.start)
            self.load = Load(self.server.port, keys, self.size, race=self.race, flood=self.flood)
            if self.mosquitto is not None:
                await self._subscribed()
                self.mqtt = MqttLoad(self.mosquitto, self.load)
                await asyncio.to_thread(self.mqtt.start)
        except BaseException:
            await self.__aexit__()
            raise
        self.load.start()
        return self

    async def _subscribed(self, timeout: float = 30.0) -> None:
        """Waits until the server subscribed to mosquitto: from then its persistent session keeps what is published
        while the server is down."""
        mosquitto = self.mosquitto
        assert mosquitto is not None
        if not await _eventually(lambda: bool(mosquitto.subscribers(MQTT_LAST_SUBSCRIPTION)), timeout):
            raise RuntimeError(f"the server did not subscribe to mosquitto: {mosquitto.log_tail()}")

    async def __aexit__(self, *_exc: object) -> None:
        """Stops every part, each even when stopping one before it failed (the first failure is raised)."""
        steps: list[Callable[[], Coroutine[Any, Any, Any]]] = []
        if self.load is not None:
            steps.append(self.load.stop)
        if self.mqtt is not None:
            steps.append(functools.partial(asyncio.to_thread, self.mqtt.stop))
        if self.collector is not None:
            steps.append(self.collector.stop)
        steps.append(functools.partial(asyncio.to_thread, self.server.stop))
        if self.broker is not None:
            steps.append(functools.partial(asyncio.to_thread, self.broker.stop, 0))
        if self.mosquitto is not None:
            steps.append(functools.partial(asyncio.to_thread, self.mosquitto.stop))
        failure: BaseException | None = None
        for step in steps:
            try:
                await step()
            except Exception as error:
                failure = failure or error
        if failure is not None:
            raise failure

    @property
    def clients(self) -> Load:
        assert self.load is not None
        return self.load

    async def ready_status(self) -> int:
        """The status of GET /health/ready (0 when it cannot be reached)."""

        def probe() -> int:
            try:
                with urllib.request.urlopen(self.server.url + "/health/ready", timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code
            except OSError:
                return 0

        return await asyncio.to_thread(probe)

    async def restart_server(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def kafka_lag(self) -> int:
        stats = await asyncio.to_thread(spool_stats, self.data_dir)
        return sum(s["next_seq"] - s["acked_seq"] for s in stats.values())

    async def drain(self, required: set[str]) -> None:
        """Waits until every record in ``required`` is where the row counts it, or until the drain timeout passes:
        with Kafka, the checkpoint says everything was delivered and the consumer has read them; without, they are
        in a spool (MQTT messages mosquitto still holds for tidegate's session are taken meanwhile). (It also
        stopped once the consumer had read nothing new for two seconds: a consumer stalled that long, on a machine
        the load keeps busy, would make records in Kafka count as lost. A record really missing now costs the whole
        timeout before it is reported.) Meanwhile it stores markers at the ends of the partitions every
        REVEAL_EVERY_S, which show a last batch tansu would otherwise hide (tidegate.testing.broker)."""
        collector = self.collector
        deadline = time.monotonic() + self.size.drain_timeout_s
        revealed = 0.0
        while time.monotonic() < deadline:
            if collector is None:
                if required <= await asyncio.to_thread(spooled_ids, self.data_dir):
                    return
            elif required <= collector.ids and await self.kafka_lag() == 0:
                return
            elif self.broker is not None and time.monotonic() - revealed > REVEAL_EVERY_S:
                # A partition's last batch may be hidden until something is stored after it (tansu: see
                # tidegate.testing.broker); the delivery process may still be sending, so again now and then.
                with contextlib.suppress(Exception):  # the broker may be down in the scenario: the next pass
                    await asyncio.wait_for(reveal_tails(self.broker.bootstrap, collector.partitions), 5)
                revealed = time.monotonic()
            await asyncio.sleep(0.2)

    async def caught_up(self, timeout: float) -> bool:
        """Waits until everything spooled was delivered and the consumer read all of it (pause the load first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.kafka_lag() == 0 and not await self.unread_checkpointed():
                return True
            await asyncio.sleep(0.2)
        return False

    async def kill_broker_read_out(self) -> list[str]:
        """SIGKILLs the broker mid-stream once the consumer has read everything it holds, and returns notes. tansu
        keeps its log in memory: what it acknowledged that no consumer read dies with it, and the checkpoint cannot
        name all of that (a range the old broker acknowledged in part is checkpointed after the restart, once its
        other runs are sent again). The delivery process is held
        (SIGSTOP) while the consumer reads out, so nothing more is produced; what it had sent is answered, or
        fails, when it is let go after the kill."""
        assert self.broker is not None and self.collector is not None
        notes = []
        with self.delivery_held():
            # Nothing is produced meanwhile: stored after all the rest, the markers show a tail tansu hid.
            await reveal_tails(self.broker.bootstrap, self.collector.partitions)
            if not await self.collector.read_out(timeout=30):
                notes.append("the consumer had not read the broker out when it was killed")
            await asyncio.to_thread(self.broker.stop, 0)
        return notes

    def delivery_held(self) -> contextlib.AbstractContextManager[None]:
        """The delivery process stopped (SIGSTOP) for the block, then let go: it sends nothing meanwhile."""
        pid = running_delivery_pid(self.data_dir)
        return _stopped(None if pid is None else functools.partial(os.kill, pid))

    def server_held(self) -> contextlib.AbstractContextManager[None]:
        """The server's processes stopped (SIGSTOP) for the block, then let go: it takes nothing meanwhile."""
        proc = self.server.proc
        return _stopped(None if proc is None else functools.partial(os.killpg, proc.pid))

    async def restart_broker(self) -> None:
        """Starts the broker again, empty, with its topics. tansu acknowledges a produce to a topic that does not
        exist yet and drops it when the topic is created (three sends acknowledged in that window, none consumed
        after: checked by hand), and the delivery process's producer retries the moment the broker listens. A real
        cluster keeps its topics across a restart, so the delivery process is held (SIGSTOP) until they exist."""
        assert self.broker is not None
        with self.delivery_held():
            await asyncio.to_thread(self.broker.start)

    async def lost_with_the_broker(self) -> set[str]:
        """`unread_checkpointed` once the checkpoint holds still, read as soon as the broker is gone (and the
        consumer paused): the delivery process records the old broker's last acknowledgements when it gets to them
        (it may be busy reconnecting), and the worker's cleanup may delete the segments that hold them later (with a
        backlog past half the spool's quota it runs every second), after which their ids can no longer be read."""
        lost = await self.unread_checkpointed()
        for _ in range(20):
            await asyncio.sleep(0.5)
            again = await self.unread_checkpointed()
            if again == lost:
                break
            lost = again
        return lost

    async def unread_checkpointed(self) -> set[str]:
        """Records the checkpoint says the broker acknowledged and the consumer has not read. Taken while the broker
        is down (after ``collector.pause()``), before it restarts empty: these are lost with the broker."""
        assert self.collector is not None
        return await asyncio.to_thread(checkpointed_ids, self.data_dir) - self.collector.ids

    async def finish(
        self, scenario: str, *, recovered: bool, notes: list[str], lost_with_broker: set[str] | None = None
    ) -> ChaosRow:
        """Stops the load, lets the backlog drain, stops the server and counts (see the module docstring)."""
        load = self.clients
        await load.stop()
        acknowledged = set(load.acknowledged)
        notes = list(notes)
        if self.mqtt is not None:
            await asyncio.to_thread(self.mqtt.stop)
            acknowledged |= self.mqtt.acknowledged
            notes.append(
                f"MQTT: {self.mqtt.published:,} messages published, {len(self.mqtt.acknowledged):,} records in those "
                f"mosquitto acknowledged" + (f", {self.mqtt.unacknowledged:,} not" if self.mqtt.unacknowledged else "")
            )
        in_kafka: set[str] | None = None
        duplicates: int | None = None
        lost_by_broker: set[str] = set()
        if self.collector is not None:
            lost_by_broker = (lost_with_broker or set()) & acknowledged - self.collector.ids
            await self.drain(acknowledged - lost_by_broker)
            lag = await self.kafka_lag()
            if lag:
                notes.append(f"checkpoint {lag:,} records behind after {self.size.drain_timeout_s:g} s")
            recovered = recovered and lag == 0
            in_kafka = acknowledged & self.collector.ids
            if missing := acknowledged - lost_by_broker - in_kafka:
                # The running consumer reads a partition again when a fetch skipped offsets (tansu reserves a
                # batch's offsets before it stores it, and a fetch at a reserved offset returns the stored batches
                # after it; two producers per worker write the same partitions), but gives up on a gap after ~2 s.
                # What the topic holds at the end, read from offset 0, counts too; the running consumer still
                # counts what a broker lost later.
                assert self.broker is not None
                records = await consume_all(self.broker.bootstrap, TELEMETRY_TOPIC, timeout=60)
                found = {dict(record.headers)["event_id"].decode() for record in records} & missing
                if found:
                    notes.append(f"{len(found):,} read only by a consumer from offset 0 at the end")
                in_kafka |= found
                if missing - found:
                    notes.append(offset_gaps(records))
            duplicates = self.collector.duplicates_delivered()
            if self.collector.gaps_read_again or self.collector.gaps_passed:
                notes.append(
                    f"the running consumer read {self.collector.gaps_read_again:,} gaps in its fetches again, "
                    f"passed {self.collector.gaps_passed:,}"
                )
        else:
            await self.drain(acknowledged)
        code = await asyncio.to_thread(self.server.stop)
        in_spool = acknowledged & await asyncio.to_thread(spooled_ids, self.data_dir)
        if in_kafka is None:
            lost = acknowledged - in_spool
        else:
            lost = acknowledged - in_kafka - lost_by_broker
            if nowhere := acknowledged - in_spool - in_kafka:
                notes.append(f"{len(nowhere):,} acknowledged ids neither in the spool nor in Kafka")
        if lost:
            notes.extend(await asyncio.to_thread(whereabouts, self.data_dir, lost))
            log = self.server.log_path.read_text(errors="replace") if self.server.log_path.exists() else ""
            # The forwarder logs records it could not read and stepped over (`Forwarder._idle`).
            notes.append(f"server log: {log.count('stepped over')} step-overs, {log.count('Traceback')} tracebacks")
        if self.mqtt is not None and lost & self.mqtt.acknowledged:
            notes.append(f"{len(lost & self.mqtt.acknowledged):,} lost came over MQTT")
        if lost & load.first_answer_duplicate:
            notes.append(f"{len(lost & load.first_answer_duplicate):,} lost were first answered `duplicate`")
        if code not in (0, None):
            notes.append(f"server exit code {code}")
        answers = ", ".join(f"{status}: {n:,}" for status, n in sorted(load.statuses.items()))
        notes.append(f"answers {answers}; {load.connection_errors:,} connection errors")
        if load.problems:
            notes.append("problems " + ", ".join(f"{p}: {n:,}" for p, n in load.problems.most_common()))
        if load.flood:
            for priority in ("high", "low"):
                per_status = sorted(
                    ((status, n) for (sent, status), n in load.by_priority.items() if sent == priority),
                    key=lambda item: -1 if item[0] is None else item[0],
                )
                shown = ", ".join(f"{'no answer' if status is None else status}: {n:,}" for status, n in per_status)
                notes.append(f"{priority} priority's requests: {shown}")
        return ChaosRow(
            scenario=scenario,
            acknowledged=len(acknowledged),
            in_spool=len(in_spool),
            in_kafka=None if in_kafka is None else len(in_kafka),
            duplicates_delivered=duplicates,
            lost=len(lost),
            lost_by_broker=len(lost_by_broker),
            recovered=recovered,
            notes=notes,
            seconds=time.monotonic() - self.started,
            shed=load.problems["503 shed"] if load.flood else None,
        )


# ------------------------------------------------------------------------------------------------------ scenarios


async def _kill_loop(
    work_dir: Path,
    size: Size,
    *,
    race: bool,
    name: str,
    mqtt: bool = False,
    flood: bool = False,
    env: dict[str, str] | None = None,
    workers: int = 1,
    restart_workers: Sequence[int] = (),
    hold_delivery_s: float = 0.0,
) -> ChaosRow:
    """SIGKILLs the server `size.kills` times under load and restarts it; with `restart_workers`, the restarts take
    those counts of workers in turn; with `hold_delivery_s`, the delivery process is held (SIGSTOP) that long before
    each kill, so that every spool has records not delivered yet when it comes."""
    async with Rig(work_dir, size, race=race, mqtt=mqtt, flood=flood, env=env, workers=workers) as rig:
        load = rig.clients
        await asyncio.sleep(size.load_s)
        recovered = True
        for kill in range(size.kills):
            with rig.delivery_held() if hold_delivery_s else contextlib.nullcontext():
                await asyncio.sleep(hold_delivery_s)
                await asyncio.to_thread(rig.server.stop, kill=True)
            if restart_workers:
                rig.server.workers = restart_workers[kill % len(restart_workers)]
            await rig.restart_server()
            back = time.monotonic()
            recovered = await load.wait_for_ack(back, size.recovery_timeout_s) and recovered
            await asyncio.sleep(size.kill_interval_s)
        await asyncio.sleep(size.load_s)
        notes = [f"{size.kills} SIGKILLs, each restart answered 202 again" if recovered else "no 202 after a restart"]
        if workers > 1 or restart_workers:
            # Shows that every worker took its share (a worker that took none would make this (a) again).
            written = await asyncio.to_thread(spool_stats, rig.data_dir)
            notes.append(
                "records per spool " + ", ".join(f"{n}: {s['next_seq']:,}" for n, s in sorted(written.items()))
            )
        if race:
            notes.append(f"{load.raced_bodies:,} bodies sent twice at once")
        return await rig.finish(name, recovered=recovered, notes=notes)


async def sigkill(work_dir: Path, size: Size) -> ChaosRow:
    """(a) SIGKILL the server repeatedly under load, restarting it on the same data dir each time."""
    return await _kill_loop(work_dir, size, race=False, name="a. SIGKILL x5 under load")


async def duplicate_races(work_dir: Path, size: Size) -> ChaosRow:
    """(g) (a) again, with every other body sent on two connections at once: retries racing their originals."""
    return await _kill_loop(work_dir, size, race=True, name="g. duplicate retries racing, SIGKILL x5")


async def mqtt_sigkill(work_dir: Path, size: Size) -> ChaosRow:
    """(h) (a) again with devices publishing over MQTT (QoS 1) beside the HTTP clients: every message mosquitto
    acknowledged waits in tidegate's persistent session until tidegate acknowledged it, durable, so none may be
    lost to a kill; what a killed worker had taken and not acknowledged comes again and is answered duplicate."""
    return await _kill_loop(work_dir, size, race=False, name="h. MQTT beside HTTP, SIGKILL x5", mqtt=True)


async def overload_sigkill(work_dir: Path, size: Size) -> ChaosRow:
    """(j) (a) again with three times the devices, all but every fourth flooding low-priority bodies of about 96
    KiB while every fourth sends high-priority readings: the flooders' bodies pass admission's bulk lane a few at a
    time and are accepted on the worker's accept thread, the rest are shed (`503 shed`, held before their answer),
    and the kills land among bodies in every one of those states. Nothing acknowledged may be lost, and the scenario
    fails if nothing was shed (then it overloaded nothing). The devices' budget of decoded bytes is lifted, so that
    what refuses the flood is the load shedding, not that budget (`429 byte-budget`)."""
    flooded = dataclasses.replace(size, clients=size.clients * 3)
    env = {"TIDEGATE_DECODED_BYTES_PER_DEVICE": "0"}
    return await _kill_loop(
        work_dir, flooded, race=False, name="j. low-priority flood beside high, SIGKILL x5", flood=True, env=env
    )


async def workers_sigkill(work_dir: Path, size: Size) -> ChaosRow:
    """(k) (a) again with two workers and twice the devices: each worker writes spools of its own (`w0`, `w1` and
    their high-priority lanes) while the dedup window, the rate buckets and the devices' table are shared through
    memory-mapped files; a kill takes both workers and the delivery process, and after each restart the new workers
    claim the spool directories again, in whichever order their locks fall, so a worker may go on with the other's
    spools. Nothing acknowledged by either may be lost."""
    doubled = dataclasses.replace(size, clients=size.clients * 2)
    return await _kill_loop(work_dir, doubled, race=False, name="k. two workers, SIGKILL x5", workers=2)


async def workers_change(work_dir: Path, size: Size) -> ChaosRow:
    """(n) The workers become fewer and more again across kills: two, SIGKILLed and restarted with one, then two,
    and so on (ending with one), with retries racing their originals as in (g). While one worker runs, `w1` and
    `w1h` are left: no worker writes them, the delivery process drains them, and the worker deletes their delivered
    segments from their files (`Gateway._clean_left_spools`, at once after each start); when two run again, the
    second claims them and writes on after what they hold. Before each kill the delivery process is held for a
    while, so that the left spools have records not yet delivered when that cleanup comes. Segments are small, kept
    no longer than delivered (retention 0), and the quota is 16 of them, so that the workers' own spools run past
    half full and are cleaned at every look (each second) while records are in flight, and high priority's spool
    (an eighth) fills and sends its records to the main one. Nothing acknowledged may be lost: cleaning the left
    spools up to what was durable instead of what was delivered lost records here."""
    doubled = dataclasses.replace(size, clients=size.clients * 2)
    env = {
        "TIDEGATE_SPOOL_SEGMENT_BYTES": str(size.segment_bytes),
        "TIDEGATE_SPOOL_QUOTA_BYTES": str(16 * size.segment_bytes),
        "TIDEGATE_SPOOL_RETENTION_SECONDS": "0",
    }
    return await _kill_loop(
        work_dir,
        doubled,
        race=True,
        name="n. workers 2 -> 1 -> 2 across SIGKILLs",
        env=env,
        workers=2,
        restart_workers=(1, 2),
        hold_delivery_s=min(size.kill_interval_s, 2.0),
    )


def _two_workers_without(server: Server, pid: int) -> bool:
    """Whether two workers other than `pid` run (a killed worker was replaced)."""
    return len(set(server.worker_pids()) - {pid}) == 2


async def worker_killed(work_dir: Path, size: Size) -> ChaosRow:
    """(l) One worker of two SIGKILLed at a time, as the OOM killer would, 5 times, with retries racing their
    originals as in (g) (so the two copies often reach different workers): the other worker goes on serving, Granian
    starts a new worker in the dead one's place, which claims its spools again, and the dead worker's dedup claims
    that never became durable are no duplicates to anyone. Each kill takes the worker started longest ago, so the two
    take turns (Granian exits when the worker it just started dies within 5.5 s: its crash-loop guard). Nothing
    acknowledged may be lost; the service recovered if it answered 202 after each kill and a replacement started."""
    doubled = dataclasses.replace(size, clients=size.clients * 2)
    async with Rig(work_dir, doubled, race=True, workers=2) as rig:
        load = rig.clients
        await asyncio.sleep(size.load_s)
        recovered = True
        for _ in range(size.kills):
            workers = rig.server.worker_pids()
            if not workers:  # the server exited
                recovered = False
                break
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            replaced = await _eventually(
                functools.partial(_two_workers_without, rig.server, victim), size.recovery_timeout_s
            )
            answered = await load.wait_for_ack(killed, size.recovery_timeout_s)
            recovered = recovered and replaced and answered
            await asyncio.sleep(size.kill_interval_s)
        await asyncio.sleep(size.load_s)
        alive = rig.server.proc is not None and rig.server.proc.poll() is None
        recovered = recovered and alive
        notes = [
            f"{size.kills} workers SIGKILLed one at a time, "
            + ("each replaced, 202 answered throughout" if recovered else "NOT each replaced")
            + ("" if alive else "; the server exited"),
            f"{load.raced_bodies:,} bodies sent twice at once",
        ]
        return await rig.finish("l. one worker of two SIGKILLed x5", recovered=recovered, notes=notes)


SLOW_DISK_DELAYS_MS = (250, 1000)
"""(m) How late each commit's fsync starts, by turns: about what the development machine's virtual disk did by
itself at times (a flush of 50-300 ms, bench/JOURNAL.md), and four times that."""


async def slow_disk_sigkill(work_dir: Path, size: Size) -> ChaosRow:
    """(m) (a) on a disk that stalls: every commit's fsync starts 250 ms or 1 s late (by turns; fault injection,
    ``spool-commit-delay``), so every acknowledgement waits for it, and the records that arrive meanwhile wait in the
    worker's memory, unwritten, for the next commit; the server is SIGKILLed in the middle of that, 5 times. The
    fault dies with the worker, so it is armed before each kill, and the worker started after the last kill runs at
    the disk's own speed. Nothing acknowledged may be lost: an answer leaves only once its records are written and
    synced, however late. A SIGKILL cannot show a missing fsync (the kernel keeps what was written); answering once
    a commit was asked for, instead of done, lost 50,580 acknowledged records here at small size, and 20 in (a).
    Recovered: a 202 after each restart. The row also fails if the worker had not taken the fault before a kill."""
    env = {"TIDEGATE_FAULT_INJECTION": "true"}
    async with Rig(work_dir, size, env=env) as rig:
        load = rig.clients
        await asyncio.sleep(size.load_s)
        recovered = True
        taken = 0
        for kill in range(size.kills):
            trigger = arm_spool_commit_delay(rig.data_dir, SLOW_DISK_DELAYS_MS[kill % len(SLOW_DISK_DELAYS_MS)])
            if await _eventually(functools.partial(fault_taken, trigger), size.recovery_timeout_s):
                taken += 1
            await asyncio.sleep(size.kill_interval_s)
            await asyncio.to_thread(rig.server.stop, kill=True)
            await rig.restart_server()
            recovered = await load.wait_for_ack(time.monotonic(), size.recovery_timeout_s) and recovered
        await asyncio.sleep(size.load_s)
        notes = [
            f"commits slowed by {' / '.join(f'{d:,} ms' for d in SLOW_DISK_DELAYS_MS)} by turns, the worker took the "
            f"fault {taken} of {size.kills} times; {size.kills} SIGKILLs while slow, "
            + ("each restart answered 202 again" if recovered else "no 202 after a restart")
        ]
        row = await rig.finish("m. slow disk (fsync 0.25-1 s late), SIGKILL x5", recovered=recovered, notes=notes)
        row.fault_in_effect = taken == size.kills
        return row


async def mqtt_broker_restart(work_dir: Path, size: Size) -> ChaosRow:
    """(i) mosquitto stopped (SIGTERM: it saves its sessions) and started again on its port, twice, while devices
    publish (QoS 1) beside the HTTP clients; the server is held (SIGSTOP) from a second before each stop until the
    broker is back, so mosquitto holds a backlog for tidegate's session. tidegate connects its persistent session
    again and takes that backlog, what it had taken and not acknowledged on the old connection comes again
    (answered duplicate), and nothing mosquitto acknowledged is lost. The publisher reconnects too, and sends
    again what mosquitto had not acknowledged."""
    async with Rig(work_dir, size, mqtt=True) as rig:
        assert rig.mosquitto is not None and rig.mqtt is not None
        mqtt = rig.mqtt
        await asyncio.sleep(size.load_s)
        recovered = True
        for _ in range(2):
            with rig.server_held():
                # A backlog for tidegate's session at mosquitto (and in its socket), which mosquitto saves at stop.
                await asyncio.sleep(1.0)
                await asyncio.to_thread(rig.mosquitto.stop)
                await asyncio.sleep(1.0)  # the devices publish on into their client's queue
                await asyncio.to_thread(rig.mosquitto.start)
            back = time.monotonic()
            recovered = await _acknowledged_after(lambda: mqtt.last_ack, back, size.recovery_timeout_s) and recovered
            await asyncio.sleep(size.kill_interval_s)
        await asyncio.sleep(size.load_s)
        notes = ["mosquitto restarted twice, " + ("acknowledging again each time" if recovered else "not back")]
        return await rig.finish("i. MQTT broker restarted x2", recovered=recovered, notes=notes)


async def broker_outage(work_dir: Path, size: Size) -> ChaosRow:
    """(b) The broker down while a backlog of several segments (and more than one forwarder read) builds up."""
    env = {"TIDEGATE_SPOOL_SEGMENT_BYTES": str(size.segment_bytes)}
    async with Rig(work_dir, size, env=env) as rig:
        assert rig.broker is not None and rig.collector is not None
        load = rig.clients
        await asyncio.sleep(size.load_s)
        # Whatever the old broker holds is consumed before it goes (tansu's log dies with it): this scenario is
        # about the outage and the backlog, (c) about a broker that loses what it acknowledged.
        load.pause()
        await rig.caught_up(size.drain_timeout_s)
        read_out = await rig.kill_broker_read_out()
        load.resume()
        down = time.monotonic()
        await rig.collector.pause()
        lost_with_broker = await rig.lost_with_the_broker()
        while True:
            await asyncio.sleep(0.2)
            stats = await asyncio.to_thread(spool_stats, rig.data_dir)
            spooled_bytes = sum(s["bytes"] for s in stats.values())
            spooled_records = max(1, sum(s["next_seq"] for s in stats.values()))
            backlog_records = sum(s["next_seq"] - s["acked_seq"] for s in stats.values())
            backlog_bytes = spooled_bytes * backlog_records // spooled_records
            segments = max((s["segments"] for s in stats.values()), default=0)
            waited = time.monotonic() - down
            if waited >= size.outage_s and backlog_bytes >= size.backlog_bytes and segments >= size.backlog_segments:
                break
            if waited > 10 * size.outage_s + 60:
                break
        await rig.restart_broker()
        rig.collector.resume()
        back = time.monotonic()
        recovered = await load.wait_for_ack(back, size.recovery_timeout_s)
        await asyncio.sleep(size.load_s)
        notes = [
            f"broker down {back - down:.0f} s; backlog {backlog_records:,} records, "
            f"~{backlog_bytes / (1 << 20):.1f} MiB over {segments} segments of {size.segment_bytes / (1 << 20):g} MiB",
            *read_out,
        ]
        return await rig.finish(
            "b. broker down, multi-segment backlog",
            recovered=recovered,
            notes=notes,
            lost_with_broker=lost_with_broker,
        )


async def broker_restart_empty(work_dir: Path, size: Size) -> ChaosRow:
    """(c) The broker SIGKILLed mid-stream and started again empty (memory storage): everything the spool had not
    seen acknowledged by the old broker must reach the new one. What the old broker acknowledged and no consumer
    read is gone with the broker, and is counted as lost by the broker."""
    async with Rig(work_dir, size) as rig:
        assert rig.broker is not None and rig.collector is not None
        load = rig.clients
        await asyncio.sleep(size.load_s)
        read_out = await rig.kill_broker_read_out()
        await rig.collector.pause()
        await asyncio.sleep(1.0)  # the stream goes on into the spool
        lost_with_broker = await rig.lost_with_the_broker()
        await rig.restart_broker()  # empty, topics re-created
        rig.collector.resume()
        back = time.monotonic()
        recovered = await load.wait_for_ack(back, size.recovery_timeout_s)
        await asyncio.sleep(size.load_s)
        return await rig.finish(
            "c. broker restarted empty mid-stream",
            recovered=recovered,
            notes=["lost = acknowledged, not consumed and not acknowledged by the old broker", *read_out],
            lost_with_broker=lost_with_broker,
        )


async def sigterm(work_dir: Path, size: Size) -> ChaosRow:
    """(e) SIGTERM under load: requests in flight are answered, the exit is clean, nothing acknowledged is lost;
    a restart serves again and delivers the rest."""
    # A long group-commit window keeps every request in flight for a while, so the signal lands among many.
    async with Rig(work_dir, size, env={"TIDEGATE_COMMIT_WINDOW_MS": "300"}) as rig:
        load = rig.clients
        await asyncio.sleep(size.load_s)
        # A commit answers all its requests at once, and the clients send again at once: right after a commit no
        # request has been in flight for long (a full run once sent the signal with none, "0 of 0"). Waited for.
        give_up = time.monotonic() + 3.0
        while not (in_flight := load.in_flight(sent_before=time.monotonic() - 0.1)) and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        # To the main process alone, as `docker stop` sends it: Granian passes it on to its workers, each busy
        # with the load (a signal lost there left `tidegate serve` waiting forever: `tidegate/signals.py`).
        code = await asyncio.to_thread(rig.server.stop, group=False)
        cut = load.cut_off(in_flight)
        await rig.restart_server()
        back = time.monotonic()
        recovered = await load.wait_for_ack(back, size.recovery_timeout_s)
        await asyncio.sleep(size.load_s)
        notes = [f"exit code {code}; {len(in_flight) - cut} of {len(in_flight)} in-flight requests answered"]
        return await rig.finish("e. SIGTERM under load", recovered=recovered and code == 0 and cut == 0, notes=notes)


async def delivery_killed(work_dir: Path, size: Size) -> ChaosRow:
    """(f) The delivery process SIGKILLed 3 times under load: `tidegate serve` restarts it, the new one goes on from
    the checkpoints, and every acknowledged record reaches Kafka."""
    async with Rig(work_dir, size) as rig:
        await asyncio.sleep(size.load_s)
        restarted = 0
        pid = await asyncio.to_thread(running_delivery_pid, rig.data_dir)
        for _ in range(3):
            if pid is None:
                break
            os.kill(pid, signal.SIGKILL)
            pid = await asyncio.to_thread(
                running_delivery_pid, rig.data_dir, other_than=pid, timeout=size.recovery_timeout_s
            )
            restarted += pid is not None
            await asyncio.sleep(size.kill_interval_s)
        await asyncio.sleep(size.load_s)
        notes = [f"delivery process SIGKILLed 3 times: restarted {restarted} times by tidegate serve"]
        return await rig.finish("f. delivery process killed x3", recovered=restarted == 3, notes=notes)


class _InjectedDiskFull:
    """Without root no small filesystem can be mounted: the worker's spool is told to fail every write, as on a
    full disk (``fault_injection``), until ``free()`` lifts it."""

    ENV: ClassVar[dict[str, str]] = {"TIDEGATE_FAULT_INJECTION": "true"}

    def __init__(self, work_dir: Path) -> None:
        self.data_dir = work_dir / "data"

    def __enter__(self) -> _InjectedDiskFull:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def fill(self) -> None:
        arm_spool_write_failures(self.data_dir, 1_000_000_000)

    def free(self) -> str:
        """Lifts the fault; says so for the row (no space was freed: the disk is the machine's)."""
        arm_spool_write_failures(self.data_dir, 0)
        return "fault lifted"

    def grow(self) -> None:
        """Nothing to do: the fault is lifted and the disk is the machine's."""


class _Tmpfs:
    """A small tmpfs (root only) whose ``ballast`` file takes most of it, so that freeing the ballast frees space
    the spool can use again."""

    ENV: ClassVar[dict[str, str]] = {}

    def __init__(self, mount_point: Path, size_bytes: int) -> None:
        self.mount_point = mount_point
        self.size_bytes = size_bytes
        self.ballast = mount_point / "ballast"

    @property
    def data_dir(self) -> Path:
        return self.mount_point / "data"

    def fill(self) -> None:
        """The load fills it."""

    def __enter__(self) -> _Tmpfs:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes}", "tmpfs", str(self.mount_point)], check=True
        )
        chunk = b"\0" * (1 << 20)
        with self.ballast.open("wb") as ballast:
            for _ in range(self.size_bytes * 3 // 4 // len(chunk)):
                ballast.write(chunk)
        return self

    def free(self) -> str:
        """Deletes the ballast; says how much is free now, for the row."""
        self.ballast.unlink(missing_ok=True)
        return f"{shutil.disk_usage(self.mount_point).free >> 20} MiB freed"

    def grow(self) -> None:
        """Makes the filesystem 8 times as large (the load that goes on after `free` fills it again)."""
        subprocess.run(["mount", "-o", f"remount,size={self.size_bytes * 8}", str(self.mount_point)], check=True)

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.mount_point)], check=False)


async def disk_full(work_dir: Path, size: Size) -> ChaosRow:
    """(d) on a real small filesystem when running as root, by fault injection otherwise."""
    return await _disk_full(work_dir, size, inject=os.geteuid() != 0)


async def disk_full_injected(work_dir: Path, size: Size) -> ChaosRow:
    """(d) by fault injection, as it runs without root, whoever runs it."""
    return await _disk_full(work_dir, size, inject=True)


async def _disk_full(work_dir: Path, size: Size, *, inject: bool) -> ChaosRow:
    """(d) The disk fills up under load (a small tmpfs, mostly taken by a ballast file), then the ballast is
    deleted: the service answers 503 while full, recovers by itself once space is back, and loses nothing it
    acknowledged. Runs without Kafka; retries race their originals as in (g), and devices publish over MQTT as in
    (h) (a message is acknowledged only once durable, so the full disk holds it back at mosquitto). Without root,
    the full disk is injected (every spool write fails as with ENOSPC until the fault is lifted)."""
    disk: _Tmpfs | _InjectedDiskFull = (
        _InjectedDiskFull(work_dir) if inject else _Tmpfs(work_dir / "disk", size.tmpfs_bytes)
    )
    with disk:
        env = {"TIDEGATE_SPOOL_SEGMENT_BYTES": str(size.segment_bytes), **disk.ENV}
        async with Rig(work_dir, size, kafka=False, env=env, data_dir=disk.data_dir, race=True, mqtt=True) as rig:
            load = rig.clients
            await asyncio.sleep(size.load_s)
            disk.fill()
            began = time.monotonic()
            while load.statuses[503] == 0 and time.monotonic() - began < size.drain_timeout_s:
                await asyncio.sleep(0.1)
            saw_full = load.statuses[503] > 0
            full_after = time.monotonic() - began
            await asyncio.sleep(size.load_s)  # full for a while
            ready_while_full = await rig.ready_status()
            freed_how = await asyncio.to_thread(disk.free)
            freed = time.monotonic()
            recovered = await load.wait_for_ack(freed, size.recovery_timeout_s)
            if recovered:
                await asyncio.sleep(size.load_s)
            how = f"tmpfs {size.tmpfs_bytes >> 20} MiB" if isinstance(disk, _Tmpfs) else "injected ENOSPC"
            notes = [
                f"{how}; full after {full_after:.1f} s: "
                f"{'503' if saw_full else 'never 503'}, /health/ready {ready_while_full}; {freed_how}: "
                + ("202 again" if recovered else f"no 202 within {size.recovery_timeout_s:g} s")
            ]
            name = "d. disk full (injected), then lifted" if inject else "d. disk full, then space freed"
            # The load after the space came back fills the small filesystem again, and MQTT messages mosquitto
            # holds for tidegate then wait there, unacknowledged, for room (seen: 40 messages at the end, the disk
            # full again, /health/ready 503). Room is made before counting, so that they are taken and counted.
            await asyncio.to_thread(disk.grow)
            return await rig.finish(name, recovered=recovered and saw_full, notes=notes)


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    title: str
    run: Callable[[Path, Size], Coroutine[Any, Any, ChaosRow]] | None
    pending: str | None = None
    """Why the scenario cannot run yet (it then has no ``run``)."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("a", "sigkill", "SIGKILL the server 5 times under load", sigkill),
        Scenario("b", "broker-outage", "the broker down with a backlog of several segments", broker_outage),
        Scenario("c", "broker-restart-empty", "the broker restarted empty mid-stream", broker_restart_empty),
        Scenario("d", "disk-full", "the disk full on a small filesystem, then space freed", disk_full),
        Scenario("d2", "disk-full-injected", "the disk full by fault injection (no root needed)", disk_full_injected),
        Scenario("e", "sigterm", "SIGTERM under load", sigterm),
        Scenario("f", "delivery-killed", "the delivery process killed 3 times", delivery_killed),
        Scenario("g", "duplicate-races", "duplicate retries racing their originals during (a)", duplicate_races),
        Scenario("h", "mqtt-sigkill", "MQTT devices (QoS 1) beside the HTTP clients during (a)", mqtt_sigkill),
        Scenario("i", "mqtt-broker-restart", "mosquitto restarted twice under MQTT load", mqtt_broker_restart),
        Scenario(
            "j", "overload-sigkill", "a low-priority flood of large bodies beside high priority, (a)", overload_sigkill
        ),
        Scenario("k", "workers-sigkill", "two workers sharing the host's tables, (a)", workers_sigkill),
        Scenario("l", "worker-killed", "one worker of two SIGKILLed at a time, retries racing", worker_killed),
        Scenario("m", "slow-disk", "every fsync 0.25-1 s late, SIGKILL x5 meanwhile", slow_disk_sigkill),
        Scenario("n", "workers-change", "the workers fewer and more again across SIGKILLs", workers_change),
    )
}


def find_scenario(name: str) -> Scenario:
    """By name (``sigkill``) or letter (``a``)."""
    for scenario in SCENARIOS.values():
        if name in (scenario.name, scenario.key):
            return scenario
    raise KeyError(f"no chaos scenario {name!r}; known: {', '.join(f'{s.key}/{s.name}' for s in SCENARIOS.values())}")


def run_scenario(name: str, work_dir: Path, size: Size | str = "small") -> ChaosRow:
    """Runs one scenario in ``work_dir`` (created) and returns its row; raises if it is pending."""
    scenario = find_scenario(name)
    if scenario.run is None:
        raise NotImplementedError(f"chaos scenario {scenario.name}: {scenario.pending}")
    chosen = SIZES[size] if isinstance(size, str) else size
    return asyncio.run(scenario.run(work_dir, chosen))


@contextlib.contextmanager
def _work_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
    else:
        with tempfile.TemporaryDirectory(prefix="tidegate-chaos-") as made:
            yield Path(made)


def main(size: str = "small", names: Sequence[str] = (), work_dir: Path | None = None, out: TextIO = sys.stdout) -> int:
    """``tidegate chaos``: runs the scenarios, prints a row as each ends and the table at the end; 1 if any
    failed."""
    chosen = [find_scenario(n) for n in names] if names else list(SCENARIOS.values())
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the collector reconnects through broker outages
    rows: list[ChaosRow] = []
    with _work_dir(work_dir) as root:
        for scenario in chosen:
            if scenario.run is None:
                print(f"{scenario.key}. {scenario.title}: pending, {scenario.pending}", file=out, flush=True)
                continue
            row = run_scenario(scenario.name, root / scenario.name, size)
            rows.append(row)
            verdict = "ok" if row.passed else "FAILED: " + "; ".join(row.failures())
            print(f"{' | '.join(row.cells())} | {row.seconds:.0f} s | {verdict}", file=out, flush=True)
    print(f"\nchaos suite, size {size}:\n\n{format_table(rows)}", file=out)
    return 0 if all(row.passed for row in rows) else 1
