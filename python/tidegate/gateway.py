"""One worker's state: the validators per route, the shared dedup, rate and devices' tables, its spool and group-commit
writer, admission, the delivery process's status, readiness, the metrics' gauges, and its lifecycle (the spool
claimed at start, drained at stop) and housekeeping. The ingest edge (`tidegate.ingest`) reads and changes it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from tidegate._native import Admission, Contract, DedupWindow, DeviceTable, Keys, RateTable, Spool, Validator
from tidegate._native import Gateway as NativeGateway
from tidegate.archive import DUPLICATES_TOPIC
from tidegate.config import Settings
from tidegate.delivery.spool import (
    HIGH_LANE_QUOTA_SHARE,
    HIGH_LANE_SUFFIX,
    LANE_NAMES,
    SpoolWriter,
    cleanup_horizon,
    worker_spool_dirs,
)
from tidegate.delivery.status import DeliveryStatus
from tidegate.ingest import IngestEdge, IngestRoute, now_ms
from tidegate.metrics import Metrics, admission_lines
from tidegate.silence import SilenceWatch

log = logging.getLogger("tidegate")


class LoopClock:
    """How busy an event loop is: the share of wall time it spends outside its selector's wait for I/O (running
    callbacks, or ready to run them and waiting for a CPU or the GIL). asyncio offers no hook for it, so the
    selector's `select` is wrapped (`_selector` is the private attribute of asyncio's selector event loops, which
    Granian runs; with another loop the clock reads 0 and admission does not shed by it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waited = 0.0
        self._last = (time.perf_counter(), 0.0)
        selector = getattr(loop, "_selector", None)
        self.measuring = selector is not None
        if selector is None:
            return
        select = selector.select

        def timed_select(timeout: float | None = None) -> Any:
            began = time.perf_counter()
            try:
                return select(timeout)
            finally:
                self.waited += time.perf_counter() - began

        selector.select = timed_select

    def busy(self) -> tuple[float, float]:
        """(busy share, seconds) since the last call; the share is 0 when the loop cannot be measured."""
        now = time.perf_counter()
        then, waited_then = self._last
        self._last = (now, self.waited)
        seconds = now - then
        if not self.measuring or seconds <= 0:
            return 0.0, seconds
        return max(0.0, 1.0 - (self.waited - waited_then) / seconds), seconds


Table = TypeVar("Table", DedupWindow, RateTable, DeviceTable)


def shared_or_own(path: Path, open_table: Callable[[Path | None], Table]) -> Table:
    """The table shared by the host's workers at `path`; if it cannot be opened (a disk too full to reserve it),
    one of this worker's own, in memory, as before there were shared tables: dedup and rates then hold per
    worker, and the dedup window is rebuilt from this worker's spool."""
    try:
        return open_table(path)
    except OSError as error:
        log.error(json.dumps({"event": "shared-table-unavailable", "path": str(path), "error": str(error)}))
        return open_table(None)


LEFT_SPOOLS_CLEANUP_S = 30.0
"""How often a worker looks for segments to delete in the spools no worker writes (`Gateway._clean_left_spools`)."""


def claim_worker_dir(root: Path) -> tuple[Path, IO[str]]:
    """Each worker owns one spool directory: the first `w<N>` whose lock it can take. Never two writers."""
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        directory = root / f"w{index}"
        directory.mkdir(exist_ok=True)
        lock = (directory / "lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            index += 1
            continue
        lock.write(str(os.getpid()))
        lock.flush()
        return directory, lock


class Gateway:
    """The state of one worker: validators, spool, dedup window, admission, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        common: dict[str, Any] = {
            "max_body_bytes": settings.max_body_bytes,
            "max_past_seconds": settings.max_past_seconds,
            "max_future_seconds": settings.max_future_seconds,
            "dlq_topic": settings.kafka_topic_dead_letter,
            "max_record_bytes": settings.max_record_bytes,
            "quarantine": settings.quarantine,
        }
        unknown_fields = settings.unknown_fields
        telemetry_topic = settings.kafka_topic_telemetry
        self.routes = {
            route.path: route
            for route in (
                IngestRoute(
                    0,
                    "ingest",
                    "/api/v1/ingest",
                    Validator(Contract.telemetry(unknown_fields=unknown_fields), topic=telemetry_topic, **common),
                    settings.priority_ingest,
                    "telemetry",
                ),
                IngestRoute(
                    1,
                    "batch",
                    "/api/v1/ingest/batch",
                    Validator(
                        Contract.batch(unknown_fields=unknown_fields),
                        max_batch_readings=settings.max_batch_readings,
                        topic=telemetry_topic,
                        **common,
                    ),
                    settings.priority_batch,
                    "batch",
                ),
                IngestRoute(
                    2,
                    "events",
                    "/api/v1/events",
                    Validator(
                        Contract.event(unknown_fields=unknown_fields), topic=settings.kafka_topic_events, **common
                    ),
                    settings.priority_events,
                    "event",
                ),
            )
        }
        #: The keys file, verified natively (device keys in admission, operator keys by the operations routes).
        self.keys = Keys(settings.keys_file) if settings.auth else None
        # Shared by every worker of the host (memory-mapped tables), so a retry that lands on another worker is
        # still a duplicate and a device's rate holds whichever worker it reaches; both survive restarts.
        state = settings.data_dir / "state"

        def device_buckets(name: str, rate: float, burst: float) -> RateTable:
            """Per-device token buckets in `state/<name>.tbl`, one per device of up to `rate_capacity`."""
            table = functools.partial(RateTable, rate=rate, burst=burst, capacity=settings.rate_capacity)
            return shared_or_own(state / f"{name}.tbl", table)

        self.buckets = device_buckets("rate", settings.rate_per_device, settings.burst_per_device)
        #: Post-paid buckets of decompressed bytes per device (`wait` before the body, `charge` after decoding).
        self.decoded_bytes = device_buckets(
            "decoded-bytes", settings.decoded_bytes_per_device, settings.decoded_bytes_burst_per_device
        )
        self.dedup = shared_or_own(
            state / "dedup.tbl",
            functools.partial(
                DedupWindow,
                capacity=settings.dedup_capacity,
                ttl_seconds=settings.dedup_ttl_seconds,
                key_ttl_seconds=settings.dedup_key_ttl_seconds,
            ),
        )
        # Last-seen times, learned intervals and silence alerts: shared too, so that a device is one device
        # whichever worker it reaches, and remembered across restarts.
        self.devices = shared_or_own(
            state / "devices.tbl",
            functools.partial(
                DeviceTable,
                capacity=settings.device_capacity,
                default_interval_seconds=settings.silence_default_interval_s,
                min_interval_seconds=settings.silence_min_interval_s,
                intervals=settings.silence_interval_rules,
                forget_after_seconds=settings.device_forget_after_s,
            ),
        )
        self.silence = SilenceWatch(self, self.devices)
        #: Bytes each device may have quarantined (`tidegate.quarantine`).
        self.quarantine_budget = device_buckets(
            "quarantine", settings.quarantine_device_bytes_per_s, settings.quarantine_device_burst_bytes
        )
        #: The worker's spools by lane, once open: the main one, then high priority's own (`high_priority_spool`).
        self.spools: list[Spool] = []
        #: The accept path (`tidegate._native.Gateway`), once the spools are open.
        self.native: NativeGateway | None = None
        #: Each spool's group-commit writer, by lane.
        self.writers: list[SpoolWriter] = []
        #: The header phase of every ingest request, decided natively (`tidegate._native.Admission`).
        self.admission = Admission(
            keys=self.keys,
            rates=self.buckets,
            decoded_bytes=self.decoded_bytes,
            initial_limit=settings.admission_initial_limit,
            min_limit=settings.admission_min_limit,
            max_limit=settings.admission_max_limit,
            tolerance=settings.admission_tolerance,
            low_share=settings.admission_low_share,
            medium_share=settings.admission_medium_share,
            refusal_weight=settings.admission_refusal_weight,
            shed_medium_at=settings.shed_medium_at,
            shed_low_at=settings.shed_low_at,
            max_in_flight_records=float(settings.max_in_flight_records),
            rate_per_device=settings.rate_per_device,
            decoded_bytes_per_device=settings.decoded_bytes_per_device,
            loop_busy_target=settings.admission_loop_busy_target,
            loop_queue_high=settings.admission_loop_queue_high,
            loop_queue_medium=settings.admission_loop_queue_medium,
            loop_queue_low=settings.admission_loop_queue_low,
            loop_queue_interval_s=settings.admission_loop_queue_interval_s,
            loop_queue_higher_recent_s=settings.admission_loop_queue_higher_recent_s,
            bulk_bodies=float(settings.admission_bulk_bodies),
            bulk_narrow_at=settings.admission_bulk_narrow_at,
            refusal_hold_s=settings.admission_refusal_hold_s,
        )
        self.delivery = DeliveryStatus(settings.data_dir)
        self._ready = False
        self._shutting_down = False
        self.in_flight_requests = 0
        self.in_flight_records = 0
        self.spool_fill = 0.0
        self._spool_full = False
        self._lock_file: IO[str] | None = None
        self.loop_lag_s = 0.0
        self._recent_requests = 0
        self._next_spool_care = 0.0
        self._next_drain_sweep = 0.0
        self._next_cleanup = 0.0
        self._next_left_cleanup = 0.0
        self._left_cleanup: asyncio.Task[int] | None = None
        self._rate_window_start = time.monotonic()
        self._request_rate = 0.0
        self.metrics.gauge("tidegate_utilization", "Admission utilization (0..1).", self.utilization)
        admission = self.admission
        self.metrics.source(lambda: admission_lines(admission.snapshot()))
        route_names = {route.index: route.name for route in self.routes.values()}
        self.metrics.refusals_on_arrival(
            lambda: [(route_names[route], status, count) for route, status, count in admission.refused_on_arrival()]
        )
        self.metrics.gauge("tidegate_in_flight_records", "Records awaiting durability.", lambda: self.in_flight_records)
        self.metrics.gauge("tidegate_spool_bytes", "Bytes in the spools.", lambda: self._spool_stat("bytes"))
        self.metrics.gauge("tidegate_spool_fsyncs_total", "fsyncs of the spools.", lambda: self._spool_stat("fsyncs"))
        self.metrics.native_histogram(
            "tidegate_spool_commit_seconds",
            "Spool commits (group commits) that made records durable, from the start of their write to the end of "
            "their fsync, per spool (main, or high priority's own): what an acknowledgement waits for after the "
            "commit window. It grows with the bytes a commit carries and with a slow disk.",
            lambda: [((LANE_NAMES[lane],), spool.commit_times()) for lane, spool in enumerate(self.spools)],
            labels=("spool",),
        )
        self.metrics.gauge(
            "tidegate_spool_failed_commits_total",
            "Spool commits whose write or fsync failed (their records were answered 503, never acknowledged).",
            lambda: self._spool_stat("failed_commits"),
        )
        self.metrics.gauge(
            "tidegate_spool_unreadable_records_total",
            "Records stepped over by readers (this worker's, and delivery's): torn by a failed write (never "
            "acknowledged) or damaged on disk.",
            lambda: self._spool_stat("unreadable_records") + self.delivery.total("unreadable_records"),
        )
        self.metrics.gauge(
            "tidegate_spool_failing", "1 while the spool cannot write (not ready).", lambda: float(self.spool_failing())
        )
        # Records spooled while no Kafka is configured count too: they are delivered once one is.
        self.metrics.gauge(
            "tidegate_spool_lag_records",
            "Records not yet acknowledged by Kafka.",
            lambda: self._spool_stat("lag_records"),
        )
        # From the same snapshot as GET /api/v1/devices/silent (one rule: unheard for 3x the expected interval).
        self.metrics.gauge(
            "tidegate_active_devices",
            "Devices heard within 3x their expected interval.",
            lambda: self._devices_stat("active"),
        )
        self.metrics.gauge(
            "tidegate_silent_devices",
            "Devices unheard for 3x their expected interval or longer (as GET /api/v1/devices/silent lists them).",
            lambda: self._devices_stat("silent"),
        )
        self.metrics.gauge("tidegate_event_loop_lag_seconds", "Smoothed event-loop lag.", lambda: self.loop_lag_s)
        self.metrics.gauge("tidegate_ready", "1 when ready to accept traffic.", lambda: float(self.is_ready()))
        # Delivery runs in its own process (one per data dir): these are its figures, for every worker spool.
        delivery = self.delivery
        self.metrics.gauge(
            "tidegate_delivery_up",
            "1 while the delivery process reports (Kafka or the archive configured).",
            lambda: float(delivery.alive),
        )
        for name, help_text in (
            ("records_sent", "Records acknowledged by Kafka."),
            ("send_failures", "Failed Kafka send attempts."),
            ("dead_lettered", "Records Kafka could not take, kept in the dead-letter file and announced."),
            ("checkpoint_failures", "Delivery checkpoints that could not be persisted (retried)."),
        ):
            self.metrics.gauge(f"tidegate_kafka_{name}", help_text, functools.partial(delivery.total, name))
        for name, help_text in (
            ("records_archived", "Rows written to the archive (accepted records and duplicate occurrences)."),
            ("files_written", "Parquet files written to the archive."),
            ("failures", "Archive writes that failed (retried from the same cursor)."),
            ("lag_records", "Durable spooled records not archived yet."),
        ):
            self.metrics.gauge(
                f"tidegate_archive_{name}",
                help_text,
                functools.partial(lambda field: float(delivery.get("archive_totals", {}).get(field, 0)), name),
            )
        self.metrics.gauge(
            "tidegate_kafka_breaker_open",
            "1 while a Kafka circuit breaker is open.",
            lambda: float(delivery.get("breaker") == "open"),
        )
        self.metrics.gauge(
            "tidegate_kafka_reachable",
            "1 when the last check reached a Kafka broker.",
            lambda: float(delivery.get("kafka_reachable") is True),
        )
        self.metrics.gauge(
            "tidegate_kafka_topics_missing",
            "Configured topics the Kafka cluster does not have (delivery stalls until they exist).",
            lambda: float(len(delivery.get("kafka_topics_missing", []))),
        )
        self.metrics.gauge(
            "tidegate_kafka_last_send_latency_seconds",
            "Latency of the latest successful Kafka send.",
            lambda: float(delivery.get("last_send_latency_s") or 0.0),
        )
        self.edge = IngestEdge(self)

    # ----- state read by health and metrics

    @property
    def spool(self) -> Spool | None:
        """The main spool (lane 0), once open."""
        return self.spools[0] if self.spools else None

    @property
    def writer(self) -> SpoolWriter | None:
        """The main spool's writer, once started."""
        return self.writers[0] if self.writers else None

    def _spool_stat(self, name: str) -> float:
        """A count of the spools' `stats()`, summed over the worker's spools."""
        return float(sum(spool.stats()[name] for spool in self.spools))

    def _devices_stat(self, name: str) -> float:
        snapshot = self.silence.latest
        if snapshot is None:
            return 0.0
        return float(snapshot.silent if name == "silent" else snapshot.tracked - snapshot.silent)

    # Readiness and the spool's state are the admission's too: each change is handed to it at once.

    @property
    def ready(self) -> bool:
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value
        self.sync_admission()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @shutting_down.setter
    def shutting_down(self, value: bool) -> None:
        self._shutting_down = value
        self.sync_admission()

    @property
    def spool_full(self) -> bool:
        """Set when an append hit the quota; cleared once the spool drains below 95 % of it."""
        return self._spool_full

    @spool_full.setter
    def spool_full(self, value: bool) -> None:
        self._spool_full = value
        self.sync_admission()

    def sync_admission(self) -> None:
        """Hands admission what is not per request: readiness, a failing spool, spool fill and loop lag. Called on
        every change of readiness and by the housekeeping task (every 50 ms) for the rest."""
        spool = 1.0 if self._spool_full else self.spool_fill
        loop = self.loop_lag_s * 1000 / self.settings.shed_loop_lag_ms if self.settings.shed_loop_lag_ms > 0 else 0.0
        self.admission.set_conditions(self.is_ready(), self.spool_failing(), self._spool_full, max(spool, loop))

    def utilization(self) -> float:
        """Records awaiting durability, spool fill, loop lag (as of the last `sync_admission`): 1 is full."""
        return self.admission.utilization(self.in_flight_records)

    def spool_failing(self) -> bool:
        """The spool's last write or fsync failed (a full or failing disk) and it could not start anew yet."""
        return any(spool.failing for spool in self.spools)

    def is_ready(self) -> bool:
        # By default Kafka being down does not make the service unready: the spool is the sink and absorbs traffic.
        kafka_ok = self.delivery.kafka_ok if self.settings.ready_requires_kafka else True
        return self.ready and not self.shutting_down and not self.spool_full and not self.spool_failing() and kafka_ok

    # ----- lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        directory, self._lock_file = claim_worker_dir(self.settings.spool_root)
        settings = self.settings
        # High priority's spool is the worker's too: the lock on its main spool's directory covers both.
        high_quota = int(settings.spool_quota_bytes * HIGH_LANE_QUOTA_SHARE) if settings.high_priority_spool else 0
        lanes = [(directory, settings.spool_quota_bytes - high_quota)]
        if settings.high_priority_spool:
            lanes.append((directory.with_name(directory.name + HIGH_LANE_SUFFIX), high_quota))
        self.spools = [
            Spool(
                path,
                segment_bytes=settings.spool_segment_bytes,
                quota_bytes=quota,
                retention_seconds=settings.spool_retention_seconds,
            )
            for path, quota in lanes
        ]
        self.native = NativeGateway(
            [
                (route.name, route.kind, route.validator)
                for route in sorted(self.routes.values(), key=lambda r: r.index)
            ],
            spool=self.spools[0],
            high_spool=self.spools[1] if len(self.spools) > 1 else None,
            dedup=self.dedup,
            decoded_bytes=self.decoded_bytes,
            quarantine_budget=self.quarantine_budget,
            devices=self.devices,
            archive=settings.archive,
            duplicates_topic=DUPLICATES_TOPIC,
            quarantine=settings.quarantine,
            dead_letter_topic=settings.kafka_topic_dead_letter,
            max_record_bytes=settings.max_record_bytes,
            max_body_bytes=settings.max_body_bytes,
        )
        self.metrics.native_counts(self.native.counters)
        self.writers = [
            SpoolWriter(
                spool,
                commit_window_ms=(
                    settings.high_priority_commit_window_ms if LANE_NAMES[lane] == "high" else settings.commit_window_ms
                ),
                settle=functools.partial(self.native.settle, lane),
                urgent=LANE_NAMES[lane] == "high",
            )
            for lane, spool in enumerate(self.spools)
        ]
        for writer in self.writers:
            await writer.start()
        now = now_ms()
        # The shared table outlives restarts; only one started anew (missing or damaged) is filled from the spool.
        # Whatever its age, the spool's tail is loaded too: a predecessor killed between a commit and marking its
        # claims durable left those records durable but unclaimed (an MQTT redelivery of one would be spooled
        # twice). What awaits durability is bounded by admission (`max_in_flight_records`, past which requests
        # are shed) plus one body (the core's `Limits::max_records`, 10,000), so twice that covers it.
        tail = 2 * (self.settings.max_in_flight_records + 10_000)
        since = now - int(self.settings.dedup_ttl_seconds * 1000)
        loaded = 0
        for spool in self.spools:
            # Not the duplicate occurrences: one may be durable in one spool while the record it repeats, waiting
            # for the other spool's commit, was lost with the worker (never acknowledged).
            load = functools.partial(
                self.dedup.load_spool, spool, now, since, tail=tail, occurrences_topic=DUPLICATES_TOPIC
            )
            loaded += await asyncio.to_thread(load)
        housekeeping = asyncio.create_task(self._housekeeping())
        mqtt_source = None
        if self.settings.mqtt:
            from tidegate.mqtt import MqttSource  # noqa: PLC0415 - only workers with an MQTT broker need it

            mqtt_source = MqttSource(self, worker_index=int(directory.name.removeprefix("w")))
            await mqtt_source.start()
        self.silence.start()
        self.ready = True
        log.info(
            json.dumps({"event": "started", "spool": str(directory), "dedup_ids": loaded, "kafka": self.settings.kafka})
        )
        try:
            yield
        finally:
            self.shutting_down = True
            self.admission.stop_holding()
            deadline = time.monotonic() + self.settings.shutdown_deadline_s
            if mqtt_source is not None:
                await mqtt_source.stop(self.settings.shutdown_deadline_s)
            while self.in_flight_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            housekeeping.cancel()
            if self._left_cleanup is not None:
                # It may hold a spool this worker's lock covers: done before the lock goes.
                await asyncio.wait([self._left_cleanup])
            await asyncio.to_thread(self.edge.close)
            await self.silence.stop()
            for writer in self.writers:
                await writer.stop()  # what is committed now, the delivery process drains until its deadline
            self._lock_file.close()
            log.info(json.dumps({"event": "stopped", "spool": str(directory)}))

    async def _housekeeping(self) -> None:
        interval = 0.05
        clock = LoopClock(asyncio.get_running_loop())
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            # How late the loop woke us: a queueing signal that rises under CPU overload before any record waits.
            lag = max(0.0, now - started - interval)
            self.loop_lag_s = 0.7 * self.loop_lag_s + 0.3 * lag
            busy, seconds = clock.busy()
            self.admission.observe_loop(busy, seconds)
            self.edge.cancel_late_bodies(now)
            self.admission.release_held()
            if now >= self._next_drain_sweep:
                self._next_drain_sweep = now + 1.0
                # The bodies refused requests declared, read after their answer: a late one closes its connection.
                self.admission.sweep_drains(self.settings.body_timeout_s)
            if self.spools:
                # The main spool's: high priority's records go there when their own spool is full, so the worker is
                # full when the main spool is.
                stats = self.spools[0].stats()
                self.spool_fill = stats["bytes"] / max(1, stats["quota_bytes"])
                if self.spool_full and self.spool_fill < 0.95:
                    self.spool_full = False
                if now >= self._next_spool_care:
                    self._next_spool_care = now + 1.0
                    await self._care_for_spool()
            self.sync_admission()
            now = time.monotonic()
            elapsed = now - self._rate_window_start
            if elapsed >= 1.0:
                self._request_rate = self._recent_requests / elapsed
                self._recent_requests = 0
                self._rate_window_start = now

    async def _care_for_spool(self) -> None:
        """Off the request path, about once a second: reads the delivery process's status and, for each of the
        worker's spools, the checkpoint; deletes acknowledged segments past retention or under pressure (appends
        never remove files) and, after a failed write, tries to start a new segment, so the worker is ready again
        once the disk has room."""
        if self.settings.fault_injection:
            self._inject_faults()
        if self.settings.kafka or self.settings.archive:
            self.delivery.refresh(time.time())
        now = time.monotonic()
        clean = self.spool_full or self.spool_fill > 0.5 or now >= self._next_cleanup
        if clean:
            self._next_cleanup = now + 30.0
        for spool in self.spools:
            steps: list[tuple[str, Callable[[], object]]] = []
            if self.settings.kafka:
                steps.append(("checkpoint", spool.refresh_acked))
            if clean:
                steps.append(("cleanup", functools.partial(self._cleanup, spool)))
            if spool.failing:
                steps.append(("recover", spool.recover))
            for name, step in steps:
                try:
                    outcome = await asyncio.to_thread(step)
                except OSError as error:
                    log.warning(
                        json.dumps(
                            {"event": "spool_care_failed", "spool": str(spool.path), "step": name, "error": str(error)}
                        )
                    )
                    continue
                if name == "recover" and outcome:
                    log.info(json.dumps({"event": "spool_recovered", "spool": str(spool.path)}))
        idle = self._left_cleanup is None or self._left_cleanup.done()
        if (self.settings.kafka or self.settings.archive) and idle and now >= self._next_left_cleanup:
            self._next_left_cleanup = now + LEFT_SPOOLS_CLEANUP_S
            # A task of its own, awaited before the worker's lock goes (it may clean the spool that lock covers).
            self._left_cleanup = asyncio.create_task(asyncio.to_thread(self._clean_left_spools))

    def _cleanup(self, spool: Spool) -> int:
        """Deletes segments of `spool` that both Kafka delivery and the archive (those configured) have passed."""
        settings = self.settings
        acked = spool.acked_seq if settings.kafka else None
        horizon = cleanup_horizon(Path(spool.path), acked_seq=acked, archive=settings.archive)
        deleted = 0 if horizon is None else spool.cleanup(horizon)
        self.metrics.spool_cleanups.inc()
        self.metrics.spool_segments_deleted.inc(amount=deleted)
        return deleted

    def own_spool_dirs(self) -> list[Path]:
        """The directories of this worker's spools, lane by lane."""
        return [Path(spool.path) for spool in self.spools]

    def _clean_left_spools(self) -> int:
        """`_cleanup` for the spool directories no worker writes: those workers left when they became fewer
        (`w<N>` and `w<N>h` with N at least `workers`), and this worker's high-priority one once
        `high_priority_spool` is off. Delivery and the archive drain them like any other, but only a writer deletes
        segments, and without this their acknowledged segments stayed for good. Each is cleaned from its files
        (`Spool.cleanup_unwritten`) while the lock of its worker directory is held (this worker's own covers its
        high-priority one), so that no worker opens it meanwhile. Only directories past the workers' count: a
        worker claims the first free directory, and one that found its own locked for a moment would take
        another, and with it another MQTT client id. Returns the segments deleted."""
        settings = self.settings
        own = self.own_spool_dirs()
        removed = 0
        for directory in worker_spool_dirs(settings.data_dir):
            if directory in own:
                continue
            worker_dir = directory.with_name(directory.name.removesuffix(HIGH_LANE_SUFFIX))
            index = worker_dir.name.removeprefix("w")
            if worker_dir not in own and not (index.isdigit() and int(index) >= settings.workers):
                continue
            try:
                with contextlib.ExitStack() as held:
                    if worker_dir not in own:
                        # Opened to append: the pid a worker wrote there stays.
                        lock = held.enter_context((worker_dir / "lock").open("a"))
                        try:
                            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            continue  # a worker writes it
                    acked = Spool.read_acked(directory) if settings.kafka else None
                    horizon = cleanup_horizon(directory, acked_seq=acked, archive=settings.archive)
                    if horizon is not None:
                        removed += Spool.cleanup_unwritten(
                            directory,
                            horizon,
                            quota_bytes=settings.spool_quota_bytes,
                            retention_seconds=settings.spool_retention_seconds,
                        )
            except OSError as error:
                log.warning(
                    json.dumps(
                        {"event": "spool_care_failed", "spool": str(directory), "step": "cleanup", "error": str(error)}
                    )
                )
        return removed

    def _take_fault(self, name: str) -> int | None:
        """The number in the trigger file `<data_dir>/faults/<name>` (`tidegate.testing.server._arm_fault`), which
        this worker deletes as it takes it (one worker takes it); None when there is none. A file not yet written
        whole (empty, or cut) is left for the next look rather than taken as 0."""
        trigger = self.settings.data_dir / "faults" / name
        with contextlib.suppress(FileNotFoundError, ValueError):
            value = int(trigger.read_text().strip())
            trigger.unlink()
            return max(value, 0)
        return None

    def _inject_faults(self) -> None:
        faults = self.settings.data_dir / "faults"
        if (count := self._take_fault("spool-write-failures")) is not None:
            # The main spool's next writes (a high-priority spool that may see no writes would keep them armed).
            self.spools[0].inject_write_failures(count)
            log.warning(json.dumps({"event": "fault_injected", "spool_write_failures": count}))
        if (delay_ms := self._take_fault("spool-commit-delay")) is not None:
            # Every spool of the worker: a disk that stalls stalls them all. 0 lifts it.
            for spool in self.spools:
                spool.inject_commit_delay(delay_ms)
            log.warning(json.dumps({"event": "fault_injected", "spool_commit_delay_ms": delay_ms}))
        stall = faults / "loop-stall"
        with contextlib.suppress(FileNotFoundError):
            stall.unlink()
            # The worker's event loop stops, as under a CPU it cannot get, until `loop-resume` appears (what arrives
            # meanwhile waits for it; `loop-stalled` exists while it does, and `loop-queue` says the cost waiting
            # for the loop, `tidegate_admission_loop_queue`). The 60 s bound keeps a test that never resumes it
            # from hanging the worker.
            stalled, resume, queued = faults / "loop-stalled", faults / "loop-resume", faults / "loop-queue"
            stalled.touch()
            log.warning(json.dumps({"event": "fault_injected", "loop_stall": True}))
            give_up = time.monotonic() + 60
            while not resume.exists() and time.monotonic() < give_up:
                queued.write_text(f"{self.admission.snapshot()['loop_queue']:g}")
                time.sleep(0.005)
            queued.unlink(missing_ok=True)
            resume.unlink(missing_ok=True)
            stalled.unlink()
