"""Per-request cost by instruction count: posts readings through the ASGI app in-process (no server, no socket).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.request_cost single 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.request_cost single 400

The difference of the two totals, divided by the difference in requests, is one request's instructions (the
setup cancels out). `batch` posts 100-reading batches instead. Authentication is off and the device's rate
unlimited, so what is measured is the body's path: validate, dedup, spool, answer (and the ASGI edge around it).
The worker's timer-driven tasks (housekeeping, the silence detector) are left out: their cost depends on the wall
time the run takes, which valgrind stretches.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tidegate.app import create_app
from tidegate.config import load_settings


def reading(n: int) -> dict[str, Any]:
    return {
        "device_id": "cost-1",
        "timestamp": "2026-12-01T10:00:00.000Z",
        "metrics": {"temperature": 20 + n % 50, "n": n},
    }


def body(kind: str, n: int) -> tuple[str, bytes]:
    if kind == "single":
        return "/api/v1/ingest", json.dumps(reading(n)).encode()
    readings = [{k: v for k, v in reading(n * 100 + i).items() if k != "device_id"} for i in range(100)]
    document = {"device_id": "cost-1", "batch_id": f"b{n}", "readings": readings}
    return "/api/v1/ingest/batch", json.dumps(document).encode()


class Headers:
    """What the edge reads of Granian's RSGI headers."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs

    def get(self, name: str, default: Any = None) -> Any:
        return next((value for key, value in self.pairs if key == name), default)


class Request:
    """What the edge reads of Granian's RSGI scope."""

    def __init__(self, path: str, headers: list[tuple[str, str]]) -> None:
        self.method = "POST"
        self.path = path
        self.headers = Headers(headers)


class Proto:
    """What the edge uses of Granian's RSGI protocol: the body in one await, the answer in one call."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0
        self.answer = b""

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, _headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.answer = status, body


async def run(kind: str, count: int, data_dir: Path) -> None:
    settings = load_settings(
        env={},
        data_dir=data_dir,
        auth=False,
        rate_per_device=0.0,
        decoded_bytes_per_device=0.0,
        log_full_below_rps=0.0,
        log_sample_rate=0.0,
        commit_window_ms=0.0,
    )
    app: Any = create_app(settings)
    gateway = app.gateway

    async def idle() -> None:
        await asyncio.Event().wait()

    gateway._housekeeping = idle
    gateway.silence.start = lambda: None
    async with gateway.lifespan():
        for n in range(count):
            path, payload = body(kind, n)
            headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
            proto = Proto(payload)
            await app.__rsgi__(Request(path, headers), proto)
            if proto.status != 202:
                raise SystemExit(f"{proto.status}: {proto.answer!r}")


def main() -> None:
    kind, count = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(kind, count, Path(directory)))


if __name__ == "__main__":
    main()
