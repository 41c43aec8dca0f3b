"""Device silence: the detector that raises `device_silence` and `device_recovered` alerts, and the snapshot of
silent devices that the list endpoint and the gauge share.

The devices' last-seen state lives in `<data_dir>/state/devices.tbl` (the native `DeviceTable`), shared by the
workers of a host and kept across restarts; each accepted request updates its devices' slots. One worker of the
host at a time holds the detector (an `flock` on `<data_dir>/state/silence.lock`; the kernel drops it when the
worker exits, and the others try it every scan; Granian stops the server when a worker dies, so in practice the
detector moves at a restart). Every `silence_scan_interval_s` it scans the table in a thread (native, without
the GIL), appends the alerts due to its spool like any record (claimed in the dedup window first, so an alert
raised again after a crash is a duplicate, never a second record), and once they are durable marks them sent in
the table. So each silence raises one alert and each recovery one, whichever worker
detects it and across restarts.

The rule is the same everywhere: a device is silent once unheard for 3x its expected interval (configured by id
prefix, else learned). The detector alone adds a grace: a device is not alerted for a silence that began before
the detector started (it could not be heard while nothing listened), only once it stays silent for its threshold
after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from typing import IO, TYPE_CHECKING

from tidegate._native import DeviceSnapshot, DeviceTable

if TYPE_CHECKING:
    from tidegate.gateway import Gateway

log = logging.getLogger("tidegate")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SilenceWatch:
    """One worker's part: the detector (while it holds the host's detector lock) and the cached snapshot."""

    def __init__(self, gateway: Gateway, devices: DeviceTable) -> None:
        self.gateway = gateway
        self.devices = devices
        self.settings = gateway.settings
        self.lock_path = self.settings.data_dir / "state" / "silence.lock"
        self._lock: IO[bytes] | None = None
        self._detector: asyncio.Task[None] | None = None
        self._snapshot: DeviceSnapshot | None = None
        self._refreshing: asyncio.Task[DeviceSnapshot] | None = None

    @property
    def detecting(self) -> bool:
        """Whether this worker holds the host's detector."""
        return self._lock is not None

    # ----- the snapshot the list endpoint and the gauge share

    @property
    def latest(self) -> DeviceSnapshot | None:
        """The last snapshot taken (None before the first)."""
        return self._snapshot

    async def snapshot(self) -> DeviceSnapshot:
        """A snapshot at most `silence_scan_interval_s` old: the table is scanned in a thread, once for every
        caller waiting at that moment."""
        current = self._snapshot
        max_age_ms = self.settings.silence_scan_interval_s * 1000
        if current is not None and now_ms() - current.taken_ms < max_age_ms:
            return current
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(asyncio.to_thread(self.devices.snapshot, now_ms()))
        self._snapshot = await asyncio.shield(self._refreshing)
        return self._snapshot

    # ----- the detector

    def start(self) -> None:
        self._detector = asyncio.create_task(self._run(), name="tidegate-silence-detector")

    async def stop(self) -> None:
        if self._detector is not None:
            self._detector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detector
            self._detector = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _try_lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        return True

    async def _run(self) -> None:
        since = 0
        while True:
            await asyncio.sleep(self.settings.silence_scan_interval_s)
            if self._lock is None:
                if not self._try_lock():
                    continue
                since = now_ms()
                log.info(json.dumps({"event": "silence_detector_started", "pid": os.getpid(), "since_ms": since}))
            try:
                await self.scan(since)
            except OSError as error:
                # The table could not be locked, or the spool took nothing: what is due stays due, for the next scan.
                log.warning(json.dumps({"event": "silence_scan_failed", "error": str(error)}))

    async def scan(self, since_ms: int) -> int:
        """One scan: raises the alerts due (durable in the spool before they are marked sent); returns how many
        records were spooled."""
        alerts = await asyncio.to_thread(
            self.devices.detect, now_ms(), since_ms, self.settings.kafka_topic_device_alerts
        )
        if not len(alerts):
            return 0
        records = alerts.records
        # An alert raised again (this detector or a previous one died before marking it sent) has the same event
        # id: the dedup window drops it if the first copy is durable.
        dedup, writer = self.gateway.dedup, self.gateway.writer
        assert writer is not None
        dedup.claim_records(records, now_ms())
        try:
            await writer.write(records)
        except OSError:
            dedup.release_records(records)  # a retry (the next scan) is not a duplicate of what was not made durable
            raise
        dedup.commit(records, [])
        await asyncio.to_thread(self.devices.confirm, alerts)
        spooled = set(records.event_ids())
        for kind, device, last_seen_ms, interval_ms, event_id in alerts.alerts:
            if event_id not in spooled:
                continue
            self.gateway.metrics.device_alerts.inc((kind,))
            log.warning(
                json.dumps(
                    {
                        "event": kind,
                        "device_id": device,
                        "last_seen_ms": last_seen_ms,
                        "expected_interval_s": interval_ms / 1000,
                        "event_id": event_id,
                        "topic": self.settings.kafka_topic_device_alerts,
                    }
                )
            )
        return len(records)
