"""Locust scenarios (FastHttpUser) for tidegate and its peers: the same traffic as the wrk scripts in bench/wrk.

    locust -f bench/locustfile.py --headless -u 64 -r 64 -t 10s --host http://127.0.0.1:8000 SingleReading
    locust -f bench/locustfile.py --headless -u 64 -r 64 -t 10s --host URL Batch | Events | MixedFleet
    BENCH_PACE_RPS=20 locust -f bench/locustfile.py --headless -u 200 -r 200 -t 10s --host URL MixedFleet

`python -m bench` runs them (and the overload ramp: MixedFleet paced at 0.5x, 1x, 2x, 4x the measured capacity,
one Locust run per step) next to wrk. On two cores Locust saturates long before tidegate does; the bench records
Locust's own CPU and says which tool produced each figure.

Settings (environment):
    BENCH_DEVICES_JSON  a JSON list of [device_id, key, second_key?]; a device holding two keys is mid rotation
                        (without it: 1000 devices "bench-00001".. with token "none", for the no-op peer or auth off)
    BENCH_RECORDS       readings per batch (Batch), events per NDJSON body (Events); default 100
    BENCH_PRIORITY      X-Priority for SingleReading/Batch/Events (unset: no header); MixedFleet always mixes
                        10% high / 60% medium / 30% low
    BENCH_PACE_RPS      requests/s per user (constant throughput); unset: as fast as possible
    BENCH_NONCE         an integer making this run's records unique (default: the time)

MixedFleet names each request after its priority and outcome ("high 202", "low 503", ...), so Locust's statistics
give goodput and latency per priority and per status.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

from locust import FastHttpUser, constant, constant_throughput, task

DEVICES: list[list[str]]
if os.environ.get("BENCH_DEVICES_JSON"):
    with open(os.environ["BENCH_DEVICES_JSON"]) as handle:
        DEVICES = json.load(handle)
else:
    DEVICES = [[f"bench-{i:05d}", "none"] for i in range(1, 1001)]
RECORDS = int(os.environ.get("BENCH_RECORDS", "100"))
PRIORITY = os.environ.get("BENCH_PRIORITY") or None
PACE = float(os.environ.get("BENCH_PACE_RPS", "0") or 0)
NONCE = int(os.environ.get("BENCH_NONCE", str(int(time.time()) % 1_000_000)))
_sequence = itertools.count(1)
EVENT_TYPES = ("heartbeat", "login", "purchase", "step_count", "error")
METRIC_KINDS = ("temperature", "humidity", "pressure", "vibration_rms", "co2_ppm")


def unique() -> int:
    return NONCE * 1_000_000_000 + next(_sequence)


def timestamp(back_ms: int) -> str:
    ms = time.time_ns() // 1_000_000 - back_ms
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def headers(content_type: str, key: str, priority: str | None) -> dict[str, str]:
    out = {"Content-Type": content_type, "X-Device-Token": key}
    if priority:
        out["X-Priority"] = priority
    return out


def dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


class BenchUser(FastHttpUser):
    abstract = True
    wait_time = constant_throughput(PACE) if PACE > 0 else constant(0)

    def device(self) -> tuple[str, str]:
        entry = random.choice(DEVICES)
        key = entry[2] if len(entry) > 2 and random.random() < 0.5 else entry[1]
        return entry[0], key


class SingleReading(BenchUser):
    """POST /api/v1/ingest: one seed 001 reading, unique per request."""

    @task
    def reading(self) -> None:
        device, key = self.device()
        body = {
            "device_id": device,
            "timestamp": timestamp(random.randint(0, 3_600_000)),
            "metrics": {
                "temperature": round(random.uniform(15, 35), 1),
                "humidity": round(random.uniform(30, 80), 1),
                "pressure": round(random.uniform(990, 1030), 2),
                "seq": unique(),
            },
            "metadata": {"firmware_version": "2.1.0", "battery_level": random.randint(0, 100)},
        }
        self.client.post(
            "/api/v1/ingest", data=dumps(body), headers=headers("application/json", key, PRIORITY), name="single"
        )


class Batch(BenchUser):
    """POST /api/v1/ingest/batch: RECORDS readings with a unique batch_id."""

    @task
    def batch(self) -> None:
        device, key = self.device()
        seq = unique()
        back = random.randint(0, 3_600_000)
        readings = [
            {
                "timestamp": timestamp(back + i * 1000),
                "metrics": {"temperature": round(random.uniform(15, 35), 1), "seq": seq, "i": i},
            }
            for i in range(RECORDS)
        ]
        body = {"device_id": device, "batch_id": f"b-{seq}", "readings": readings}
        self.client.post(
            "/api/v1/ingest/batch",
            data=dumps(body),
            headers=headers("application/json", key, PRIORITY),
            name="batch",
        )


class Events(BenchUser):
    """POST /api/v1/events: RECORDS seed 004 events as NDJSON."""

    @task
    def events(self) -> None:
        _, key = self.device()
        seq = unique()
        back = random.randint(0, 86_400_000)
        lines = [
            dumps(
                {
                    "source": "demo",
                    "event_type": random.choice(EVENT_TYPES),
                    "entity_id": f"user_{random.randint(1, 5000)}",
                    "event_time": timestamp(back + i),
                    "payload": {"steps": random.randint(0, 20000), "seq": seq, "i": i},
                }
            )
            for i in range(RECORDS)
        ]
        self.client.post(
            "/api/v1/events",
            data="\n".join(lines) + "\n",
            headers=headers("application/x-ndjson", key, PRIORITY),
            name="events",
        )


class MixedFleet(BenchUser):
    """Many devices sending single readings, 10% high / 60% medium / 30% low priority, keys being rotated.

    Each user stands for a slice of the fleet. A device mid rotation holds two keys and uses either; a device
    answered 401 (its key revoked) switches to its other key and retries once, as a rotating device would.
    """

    def on_start(self) -> None:
        self.current: dict[str, int] = {}

    @task
    def reading(self) -> None:
        entry = random.choice(DEVICES)
        device = entry[0]
        keys = entry[1:]
        index = self.current.get(device, random.randrange(len(keys)))
        roll = random.random()
        priority = "high" if roll < 0.1 else "medium" if roll < 0.7 else "low"
        kind = random.choice(METRIC_KINDS)
        body = dumps(
            {
                "device_id": device,
                "timestamp": timestamp(random.randint(0, 600_000)),
                "metrics": {kind: round(random.uniform(0, 100), 2), "seq": unique()},
                "metadata": {"battery_level": random.randint(0, 100)},
            }
        )
        for _attempt in range(2):
            with self.client.post(
                "/api/v1/ingest",
                data=body,
                headers=headers("application/json", keys[index], priority),
                catch_response=True,
            ) as response:
                status = response.status_code
                response.request_meta["name"] = f"{priority} {status}"
                if status == 202:
                    response.success()
                else:
                    response.failure(f"status {status}")
            if status != 401 or len(keys) < 2:
                break
            index = (index + 1) % len(keys)
        self.current[device] = index
