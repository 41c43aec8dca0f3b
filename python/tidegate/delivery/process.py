"""The delivery process: one per data dir, supervised by `tidegate serve`, the only place that runs Kafka code and
the archive writer.

Workers only append to their spools (`data/spool/w<N>`); this process drains every one of them to Kafka, each with
its own `Forwarder` (in order per partition within a spool, as each worker's records are). It opens the spools with
`Spool.open_for_delivery`: it reads up to what the worker made durable (the worker publishes its durable sequence
in the spool's `progress` file after every commit), writes the `acked` checkpoint the worker's cleanup obeys, and
publishes what the broker acknowledged (`X-Ack: kafka` answers in the worker wait for it). No request CPU goes to
delivery, and a crash here costs no acknowledged record: a restarted process goes on from the checkpoints.

With the archive on (the default), it also runs one `SpoolArchiver` per spool (`tidegate.archive.writer`), which
reads the same spool from its own cursor and publishes `archived` beside `acked`; it runs without Kafka too (the
embedded default), so that the worker's cleanup, which waits for both, can delete what the archive has.

Its state for the workers' `/metrics` and `/health/ready` is `data/delivery/status.json`, rewritten every
`STATUS_INTERVAL_S` (atomically: a temporary file and a rename); `tidegate.delivery.status` reads it.

`DeliverySupervisor` (in the `tidegate serve` process) starts `tidegate deliver`, restarts it when it dies, and
stops it last on shutdown, so that it drains what the workers committed until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tidegate._native import Spool
from tidegate.archive.store import ArchiveStore, writer_id
from tidegate.archive.writer import SpoolArchiver
from tidegate.config import Settings
from tidegate.delivery.cluster import ClusterCheck
from tidegate.delivery.kafka import Forwarder, kafka_settings
from tidegate.delivery.spool import worker_spool_dirs
from tidegate.delivery.status import status_path
from tidegate.instance import StartRefused, hold_instance_lock
from tidegate.signals import stop_once_even_when_the_wakeup_pipe_is_full

__all__ = ["DeliverySupervisor", "run_delivery", "supervise"]

log = logging.getLogger("tidegate.delivery")

STATUS_INTERVAL_S = 0.5
#: How often each spool's published durable sequence is looked at (a pread per spool): new records are read at most
#: this long after their commit.
POLL_INTERVAL_S = 0.002
DISCOVER_INTERVAL_S = 1.0
LOCK_NAME = "delivery.lock"


class Delivery:
    """Every worker spool of a data dir, each drained by a Forwarder (with Kafka) and a SpoolArchiver (with the
    archive); see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = kafka_settings(settings) if settings.kafka else None
        self.forwarders: dict[str, Forwarder] = {}
        self.archivers: dict[str, SpoolArchiver] = {}
        self.spools: dict[str, Spool] = {}
        self.cluster = (
            ClusterCheck(self.kafka, settings.kafka_topics, settings.kafka_topic_check_interval_s)
            if self.kafka is not None
            else None
        )
        self.archive = ArchiveStore.from_settings(settings) if settings.archive else None
        self.writer_id = writer_id(settings.data_dir)
        #: The last error writing the status file (None while it is written): said once as it starts and ends.
        self._status_write_error: str | None = None
        self._archive_stop = asyncio.Event()
        self._archiving: list[asyncio.Task[None]] = []
        self.started = time.time()

    async def run(self, stop: asyncio.Event) -> None:
        if self.cluster is not None:
            await self.cluster.start()
        await self._discover()
        background = [
            asyncio.create_task(self._every(DISCOVER_INTERVAL_S, self._discover)),
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._every(STATUS_INTERVAL_S, self._write_status)),
        ]
        log.info(
            json.dumps(
                {
                    "event": "delivery_started",
                    "pid": os.getpid(),
                    "kafka": self.settings.kafka,
                    "archive": self.archive.url if self.archive is not None else None,
                }
            )
        )
        await stop.wait()
        # Drain: the workers stopped first (their spools are committed); deliver and archive what is left until the
        # deadline.
        deadline = self.settings.shutdown_deadline_s
        self._archive_stop.set()
        await asyncio.gather(*self._archiving, return_exceptions=True)
        draining = [asyncio.create_task(f.stop(deadline)) for f in self.forwarders.values()]
        archived = asyncio.gather(*(a.drain() for a in self.archivers.values()), return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(archived), deadline)
        except TimeoutError:
            log.warning(json.dumps({"event": "archive_not_drained", "deadline_s": deadline}))
        results = await asyncio.gather(*draining, return_exceptions=True)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.stop()
        await self._write_status()
        drained = all(result is True for result in results)
        log.info(json.dumps({"event": "delivery_stopped", "drained": drained}))

    @staticmethod
    async def _every(interval: float, step: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await step()
            except Exception:  # never die silently: log and go on
                log.exception("delivery housekeeping failed")

    async def _discover(self) -> None:
        """Starts a forwarder (with Kafka) and an archiver (with the archive) for every worker spool that exists (a
        worker publishes `progress` when it opens)."""
        for directory in worker_spool_dirs(self.settings.data_dir):
            if directory.name in self.spools or not (directory / "progress").exists():
                continue
            spool = await asyncio.to_thread(Spool.open_for_delivery, directory)
            self.spools[directory.name] = spool
            if self.archive is not None:
                archiver = SpoolArchiver(
                    spool,
                    self.archive,
                    self.writer_id,
                    skip_topics=frozenset({self.settings.kafka_topic_dead_letter}),
                    flush_interval_s=self.settings.archive_flush_interval_s,
                    max_records=self.settings.archive_max_file_records,
                )
                self.archivers[directory.name] = archiver
                self._archiving.append(asyncio.create_task(archiver.run(self._archive_stop)))
            if self.kafka is None:
                continue
            if spool.checkpoint_error is not None:
                log.error(
                    json.dumps(
                        {
                            "event": "checkpoint_unreadable",
                            "spool": str(directory),
                            "error": spool.checkpoint_error,
                            "redelivering_from": spool.acked_seq,
                        }
                    )
                )
            forwarder = Forwarder(spool, self.kafka)
            await forwarder.start()
            self.forwarders[directory.name] = forwarder
            log.info(json.dumps({"event": "spool_delivered", "spool": str(directory), "from_seq": spool.acked_seq}))

    async def _poll(self) -> None:
        """Wakes a forwarder as soon as its worker made new records durable."""
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            for name, forwarder in list(self.forwarders.items()):
                durable = forwarder.spool.durable_seq
                if durable != seen.get(name):
                    seen[name] = durable
                    forwarder.notify()

    def status(self) -> dict[str, Any]:
        forwarders = {name: f.metrics() for name, f in self.forwarders.items()}
        states = {f["state"] for f in forwarders.values()}
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            "started": self.started,
            "breaker": "open" if "open" in states else "half-open" if "half-open" in states else "closed",
            "kafka_reachable": self.cluster.reachable if self.cluster is not None else None,
            "kafka_topics_missing": list(self.cluster.missing) if self.cluster is not None else [],
            "totals": {
                name: sum(f[name] for f in forwarders.values())
                for name in (
                    "records_sent",
                    "send_failures",
                    "dead_lettered",
                    "checkpoint_failures",
                    "lag_records",
                    "unreadable_records",
                )
            },
            "last_send_latency_s": max(
                (f["last_send_latency_s"] for f in forwarders.values() if f["last_send_latency_s"] is not None),
                default=None,
            ),
            "spools": forwarders,
            "archive": {name: a.metrics() for name, a in self.archivers.items()},
            "archive_totals": {
                name: sum(int(a.metrics()[name] or 0) for a in self.archivers.values())  # type: ignore[call-overload]
                for name in ("records_archived", "files_written", "failures", "lag_records")
            },
        }

    async def _write_status(self) -> None:
        path = status_path(self.settings.data_dir)
        document = json.dumps(self.status(), separators=(",", ":")).encode()

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(document)
            temporary.replace(path)  # readers see the old or the new file whole; no fsync: live processes only

        # Written every second: a disk that cannot take it (full) is said once as it starts and once as it ends,
        # not with a traceback a second. Nothing is lost with it; the status is what operators' scripts read.
        try:
            await asyncio.to_thread(write)
        except OSError as error:
            if self._status_write_error is None:
                log.warning(json.dumps({"event": "status_write_failed", "path": str(path), "error": str(error)}))
            self._status_write_error = str(error)
        else:
            if self._status_write_error is not None:
                log.info(json.dumps({"event": "status_write_recovered", "path": str(path)}))
            self._status_write_error = None


async def run_delivery(settings: Settings, supervisor_pid: int | None = None) -> int:
    """`tidegate deliver`: runs until SIGTERM or SIGINT, then drains until `shutdown_deadline_s`. Started by `tidegate
    serve` (`supervisor_pid`), it also stops when that process dies, even by SIGKILL."""
    if supervisor_pid is not None:
        _die_with_parent()
        if os.getppid() != supervisor_pid:
            return 0  # the supervisor died before the signal was armed
    try:
        lock = hold_instance_lock(settings.data_dir, LOCK_NAME, what="delivery process")
    except StartRefused as refusal:
        print(f"tidegate deliver: {refusal}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_once_even_when_the_wakeup_pipe_is_full(loop, (signal.SIGTERM, signal.SIGINT))
    try:
        await Delivery(settings).run(stop)
    finally:
        lock.close()
    return 0


def _die_with_parent() -> None:
    """SIGTERM to this process when its parent dies (even by SIGKILL), so no orphan delivers beside a new instance.
    Called by the delivery process itself at start, not in a `preexec_fn`: forking a multi-threaded parent (Granian's
    main process) and running Python before exec can deadlock the child, and `Popen` with it (seen in the chaos
    suite: the supervisor thread hung and no delivery process came back)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class DeliverySupervisor:
    """In `tidegate serve`: one supervising process (`tidegate deliver --supervise`) that runs the delivery process
    for the data dir beside the HTTP workers, restarts it when it dies, and stops it last.

    The restart loop lives in a process of its own, not in a thread of `tidegate serve`: Granian's main process does
    not reliably give a Python thread the interpreter back, so a thread waiting for its child could sleep through a
    crash (seen in the chaos suite: the killed process stayed a zombie and nothing delivered)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "tidegate", "deliver", "--data-dir", str(self.settings.data_dir)]
        self._process = subprocess.Popen([*command, "--supervise", "--supervised-by", str(os.getpid())])

    def stop(self) -> None:
        """SIGTERM: the delivery process drains until `shutdown_deadline_s`; both are killed a little after."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.settings.shutdown_deadline_s + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def supervise(settings: Settings, supervisor_pid: int | None) -> int:
    """`tidegate deliver --supervise`: runs `tidegate deliver` and restarts it (with backoff) whenever it exits,
    until SIGTERM, which it passes on; exits when `tidegate serve` (`supervisor_pid`) dies."""
    if supervisor_pid is not None:
        _die_with_parent()
        if os.getppid() != supervisor_pid:
            return 0
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(_signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    command = [sys.executable, "-m", "tidegate", "deliver", "--data-dir", str(settings.data_dir)]
    backoff = 0.5
    while not stopping.is_set():
        started = time.monotonic()
        try:
            child = subprocess.Popen([*command, "--supervised-by", str(os.getpid())])
            outcome = f"exited with {child.wait()}"
        except OSError as error:  # cannot fork or exec now (out of memory, descriptors): try again, never give up
            outcome = f"could not be started ({error})"
        if stopping.is_set():
            break
        if time.monotonic() - started > 30:
            backoff = 0.5  # it ran for a while: a fresh failure, not a crash loop
        print(f"tidegate: the delivery process {outcome}; restarting in {backoff:g} s", file=sys.stderr, flush=True)
        if stopping.wait(backoff):
            break
        backoff = min(backoff * 2, 10.0)
    if child is not None and child.poll() is None:
        try:
            child.wait(settings.shutdown_deadline_s + 5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0
