"""The delivery process's state as the workers see it: `data/delivery/status.json`, which it rewrites every half
second. Kept apart from the delivery code so that workers import no Kafka client at all."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DeliveryStatus", "running_delivery_pid", "status_path"]

#: A status older than this means the delivery process is gone (it rewrites the file every half second).
FRESH_S = 5.0


def status_path(data_dir: Path) -> Path:
    return data_dir / "delivery" / "status.json"


def running_delivery_pid(data_dir: Path, *, other_than: int | None = None, timeout: float = 30.0) -> int | None:
    """The pid of the delivery process serving `data_dir` once one reports (a new one, with `other_than`), or None
    after `timeout` seconds. For operators' scripts and the chaos suite."""
    deadline = time.monotonic() + timeout
    while True:
        status = DeliveryStatus(data_dir)
        status.refresh(time.time())
        pid = status.get("pid")
        if isinstance(pid, int) and pid != other_than and time.time() - float(status.get("updated", 0)) < 2.0:
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


@dataclass
class DeliveryStatus:
    """The delivery process's state as a worker sees it (read from `status.json`, at most once per second)."""

    data_dir: Path
    document: dict[str, Any] | None = None
    read_at: float = 0.0

    def refresh(self, now: float) -> None:
        if now - self.read_at < 1.0:
            return
        self.read_at = now
        try:
            self.document = json.loads(status_path(self.data_dir).read_bytes())
        except (OSError, ValueError):
            self.document = None

    @property
    def alive(self) -> bool:
        """The delivery process wrote its status within the last few seconds."""
        return self.document is not None and time.time() - float(self.document["updated"]) < FRESH_S

    def get(self, name: str, default: Any = None) -> Any:
        return self.document.get(name, default) if self.alive and self.document is not None else default

    def total(self, name: str) -> float:
        return float(self.get("totals", {}).get(name, 0) or 0)

    @property
    def kafka_ok(self) -> bool:
        """The delivery process runs, its last cluster check reached a broker, and no breaker is open."""
        return self.get("kafka_reachable") is True and self.get("breaker") == "closed"
