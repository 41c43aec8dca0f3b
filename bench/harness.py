"""`python -m bench` / `tidegate bench`: tidegate against its peers, side by side, in one session; plots; the gate.

    python -m bench                                   # full run (about 6 minutes on two cores)
    python -m bench --quick                           # smoke run (about 2 minutes)
    python -m bench --core                            # also the pytest-benchmark core suite (bench/report.py)
    python -m bench --gate bench/baseline.json        # exit 1 when a ratio fell more than --tolerance below it
    python -m bench --save-baseline bench/baseline.json

One session starts a Kafka-protocol broker (tansu), tidegate (`python -m tidegate serve`, one Granian worker,
spool acknowledgements, forwarding to the broker), the no-op Starlette peer and the seed 001 reference service
(FastAPI + Pydantic + aiokafka, producing into the same broker), all served the same way. Every scenario runs
the peers and tidegate alternately, several short runs each, and reports medians; every headline figure is the
median of the ratios of runs made back to back, so it holds on a noisy machine.

Load comes from wrk (bench/wrk/*.lua) unless said otherwise; the same scenarios also run under Locust
(bench/locustfile.py), whose figures are recorded next to wrk's with the CPU Locust used: on two cores Locust
saturates before the servers do, so the headline figures are wrk's and every figure names its tool.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
from tidegate.testing.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
WRK_DIR = ROOT / "bench" / "wrk"
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
PLOTS_DIR = ROOT / "bench" / "plots"
PRIORITY_SHARES = {"high": 0.1, "medium": 0.6, "low": 0.3}
MAX_RAMP_CONNECTIONS = int(os.environ.get("BENCH_RAMP_MAX_CONNECTIONS", "256"))
RAMP_INTERVAL_S = float(os.environ.get("BENCH_RAMP_INTERVAL_S", "0.1"))
"""The overload ramp paces each connection to a request every RAMP_INTERVAL_S, with at most MAX_RAMP_CONNECTIONS per
priority: a connection whose answers take longer than its interval falls behind (HTTP/1.1 without pipelining is
closed-loop per connection), so the "sent" rate is recorded next to the offered one."""
RAMP_WARMUP_S = float(os.environ.get("BENCH_RAMP_WARMUP_S", "1.0"))
"""Each level of the ramp runs this long before it is measured, as every scenario is warmed up: its load generator
opens its connections (up to 768 at once) then, and the server meets the load's onset, which is reported apart
(`onset_p99_accepted_ms`). From idle the onset is steep: at about twice capacity (bench/pacer, per request, 10 s,
one worker) the high priority's first 50 ms had a p50 of 31-37 ms and a p99 of 43-59 ms, then a steady p99 of
12 ms. In the ramp a level follows a loaded one and the onset is milder (at 2x, 8.6-13.3 ms in the warm-up against
8.9-12.3 after, six passes); it matters most to the unloaded level, whose p99 every other is compared with: it
follows the fleet scenario's full load or an idle server, and its warm-up read up to 35.8 ms where the level after
read 3.5-5.1 (bench/JOURNAL.md, "Overload, the ramp measured again")."""
TARGET_LEVEL = 2.0
"""The ramp's level the issue's targets are set at (twice capacity)."""
DEVICES = 1000
ROTATING_SHARE = 0.1
"""Devices mid key rotation: they hold two keys and use both."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    script: str
    path: str
    records: int
    servers: tuple[str, ...]
    locust_user: str
    priority: str | None = None


TIDEGATES = ("tidegate", "tidegate-kafka")
"""tidegate as `tidegate serve` runs it by default (embedded spool, acknowledged once fsynced), and the same also
forwarding the spool to the broker in the background (`--kafka`; still acknowledged at spool)."""
PEERS = ("noop", "noop-raw", "noop-rsgi", "reference")

SCENARIOS = (
    Scenario("single", "single readings", "single.lua", "/api/v1/ingest", 1,
             (*TIDEGATES, "noop", "noop-raw", "noop-rsgi", "reference"), "SingleReading"),
    Scenario("batch", "100-reading batches", "batch.lua", "/api/v1/ingest/batch", 100,
             (*TIDEGATES, "noop", "noop-raw", "noop-rsgi", "reference"), "Batch"),
    Scenario("events", "seed 004 events, NDJSON x100", "events.lua", "/api/v1/events", 100,
             (*TIDEGATES, "noop", "noop-raw", "noop-rsgi"), "Events"),
    Scenario("fleet", "mixed fleet (10/60/30 priority, key rotation)", "fleet.lua", "/api/v1/ingest", 1,
             (*TIDEGATES, "noop", "noop-raw", "noop-rsgi"), "MixedFleet", "mix"),
)  # fmt: skip

GATED: dict[str, bool] = {
    "single.rps.tidegate/noop": True,
    "single.rps.tidegate/reference": True,
    "batch.records.tidegate/noop": True,
    "batch.records.tidegate/reference": True,
    "events.records.tidegate/noop": True,
    "fleet.rps.tidegate/noop": True,
    "single.rps.tidegate-kafka/reference": True,
    "batch.records.tidegate-kafka/reference": True,
}
"""Ratios the release gate compares with the baseline; True: higher is better. The overload figures are reported
but not gated: on a two-core machine shared with the load generator they swing by a third between runs."""
GATE_CAPS = {"overload.2x.high_goodput/offered": 1.0, "overload.2x.goodput/capacity": 1.0}
"""Fractions compared at most at 1: above it they only say that the closed-loop capacity run undershot."""


def gated_value(key: str, value: float) -> float:
    cap = GATE_CAPS.get(key)
    return min(value, cap) if cap is not None and not math.isnan(value) else value


@dataclass
class Options:
    quick: bool
    duration: float
    warmup: float
    reps: int
    connections: int
    wrk_threads: int
    ramp_duration: float
    ramp_levels: tuple[float, ...]
    unloaded_level: float
    locust: bool
    locust_duration: float
    locust_users: int
    tidegate_app: str | None
    max_in_flight_records: int | None
    workers: int = 1
    """Granian workers of every server (tidegate and the peers alike)."""
    unloaded_high_readings: int = 0
    """The unloaded level of the ramp lasts long enough to take this many high-priority readings (at least
    `ramp_duration`). The targets compare the p99 at each level with the unloaded p99, and at 0.1x a 5 s level
    gives about 500 high readings, a p99 that is their 5th slowest: over 24 passes it read 3.0-18.6 ms (median
    4.8), where the p50 read 1.9-2.1 ms. 2,000 readings make it their 20th slowest."""
    target_rounds: int = 1
    """After its pass, the ramp measures the unloaded level and the target level (TARGET_LEVEL) again, alternated,
    until each has this many rounds; the targets read the median over the rounds (of each round's ratio to the
    unloaded level just before it). One pass of a level is one sample of a wide spread: at about 2x, ten 10 s runs
    alike by hand read a high-priority p99 of 12.8-21.8 ms (bench/JOURNAL.md, "Overload, rounds")."""
    spare_rounds: int = 0
    """Rounds run beyond `target_rounds` in place of rounds that stalled on the disk (`round_stalled`)."""
    extra_env: dict[str, str] = field(default_factory=dict)


# ----- processes


def children_cpu() -> float:
    """CPU seconds of the finished child processes (the load generators: wrk and Locust are waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Service:
    """A server process group started for the session; ready once GET /health/ready says so."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], port: int, log_path: Path) -> None:
        self.name, self.command, self.env, self.port, self.log_path = name, command, dict(env), port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Service:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def metrics(self) -> str:
        """A scrape of the server's `/metrics` (tidegate's Prometheus text)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health/ready", timeout=1) as response:
                return response.status == 200 and bool(json.loads(response.read()).get("status") == "ready")
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def usage(self) -> tuple[float, int]:
        """CPU seconds used so far and resident memory, summed over the process tree."""
        cpu, rss = 0.0, 0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
        return cpu, rss

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


# ----- load generators


_nonce_counter = 0


def next_nonce() -> int:
    """A number < 1e6 distinct for every load process of a session (and, modulo a few hours, across sessions)."""
    global _nonce_counter  # noqa: PLW0603
    _nonce_counter += 1
    return (int(time.time()) % 9000 + 1000) * 100 + _nonce_counter % 100


def hist_percentile(hist: Mapping[str, Mapping[str, int]], statuses: Sequence[str], pct: float, step: float) -> float:
    """A percentile (ms) of the log-bucketed latency histograms of the given statuses (bench/wrk/common.lua)."""
    merged: dict[int, int] = {}
    for status in statuses:
        for key, count in hist.get(status, {}).items():
            merged[int(key)] = merged.get(int(key), 0) + int(count)
    total = sum(merged.values())
    if total == 0:
        return math.nan
    rank = pct / 100 * total
    seen = 0
    for index in sorted(merged):
        seen += merged[index]
        if seen >= rank:
            return float(step ** (index + 0.5) / 1000)
    return float(step ** (max(merged) + 0.5) / 1000)


def commit_buckets(text: str) -> dict[str, dict[float, float]]:
    """`tidegate_spool_commit_seconds` per spool (main, high) in a scrape of `/metrics`: cumulative count per bucket
    upper bound (+Inf as inf)."""
    buckets: dict[str, dict[float, float]] = {"main": {}, "high": {}}
    for spool, counts in buckets.items():
        prefix = f'tidegate_spool_commit_seconds_bucket{{spool="{spool}",le="'
        for line in text.splitlines():
            if line.startswith(prefix):
                counts[float(line[len(prefix) :].split('"', 1)[0])] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the `q` quantile of what was observed between two scrapes."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    return next((bound for bound, count in counts.items() if count >= q * total and total), float("nan"))


def commits_between(before: dict[float, float], after: dict[float, float]) -> int:
    """How many commits were observed between two scrapes (of one spool's `commit_buckets`)."""
    return int(after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0))


def commits_over(before: dict[float, float], after: dict[float, float], bound: float) -> int:
    """How many commits observed between two scrapes took longer than `bound` seconds, which must be one of the
    histogram's bucket bounds (a KeyError otherwise: any other bound would count every commit)."""
    total = commits_between(before, after)
    return total - int(after[bound] - before.get(bound, 0.0)) if total else 0


def stall_at_most(before: dict[float, float], after: dict[float, float], bound: float) -> float:
    """The most time (seconds) the commits observed between two scrapes that took longer than `bound` (a bucket
    bound) can have taken together: each counted at its bucket's upper bound, inf if one passed the last."""
    bounds = sorted(after)
    total = 0.0
    for lower, upper in itertools.pairwise(bounds):
        if lower >= bound:
            count = (after[upper] - before.get(upper, 0.0)) - (after[lower] - before.get(lower, 0.0))
            total += count * upper if count else 0.0
    return total


def ensure_wrk() -> bool:
    """wrk is a Debian package, not a Python one: install it when missing and this process may (root, apt)."""
    if shutil.which("wrk") is not None:
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    log("installing wrk (apt-get)")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(command, check=False, capture_output=True).returncode != 0:
            return False
    return shutil.which("wrk") is not None


def run_wrk(
    script: str,
    url: str,
    duration: float,
    *,
    connections: int,
    threads: int,
    env: Mapping[str, str],
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={int(timeout_s)}s",
        "-s",
        str(WRK_DIR / script),
        url,
    ]
    out = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    counts: dict[str, int] = {}
    rates: dict[str, float] = {}
    hist: dict[str, dict[str, int]] = {}
    for thread in raw.pop("threads", []):
        window = float(thread.get("window_us", 0)) / 1e6
        for status, count in thread.get("status_counts", {}).items():
            counts[status] = counts.get(status, 0) + int(count)
            if window > 0:
                rates[status] = rates.get(status, 0.0) + int(count) / window
        for status, buckets in thread.get("hist", {}).items():
            merged = hist.setdefault(status, {})
            for bucket, count in buckets.items():
                merged[bucket] = merged.get(bucket, 0) + int(count)
    raw["status_counts"], raw["status_rates"], raw["hist"] = counts, rates, hist
    return raw


PACER = "tidegate-pacer"
"""The overload ramp's load generator (bench/pacer): every paced connection on one thread."""


def ensure_pacer() -> Path:
    """Builds bench/pacer (cargo, release; a no-op once built) and returns its binary."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", PACER], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return (target if target.is_absolute() else ROOT / target) / "release" / PACER


def run_pacer(
    url: str,
    duration: float,
    priorities: Mapping[str, tuple[float, int]],
    *,
    devices: Path,
    honour_retry_after: bool,
    timeout_s: float = 10.0,
    warmup: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Offers each priority its rate (requests/s) over its connections for `warmup` then `duration` seconds; per
    priority what run_wrk returns (status counts and rates, log-bucketed latency histograms) for `duration`, with
    the offered rate and the connections, and the same for `warmup` under "warmup"."""
    command = [str(ensure_pacer()), "--url", url, "--devices", str(devices), "--seconds", str(duration)]
    command += ["--warmup", str(warmup)]
    command += ["--nonce", str(next_nonce()), "--timeout", str(timeout_s)]
    for name, (rate, connections) in priorities.items():
        command += ["--priority", f"{name}:{rate:.3f}:{connections}"]
    if honour_retry_after:
        command.append("--honour-retry-after")
    out = subprocess.run(command, capture_output=True, text=True, timeout=warmup + duration + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{PACER} failed ({out.returncode}): {out.stderr[-2000:]}")
    raw: dict[str, dict[str, Any]] = json.loads(out.stdout)["priorities"]
    for name, (rate, connections) in priorities.items():
        raw[name].update(offered_rps=rate, connections=connections)
    return raw


def wrk_figures(raw: Mapping[str, Any], records_per_request: int) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors"]
    failed = int(errors["status"])
    ok = int(raw["requests"]) - failed
    p = raw["latency_us"]["p"]
    return {
        "tool": "wrk",
        "seconds": round(seconds, 3),
        "requests": int(raw["requests"]),
        "rps": ok / seconds,
        "records_per_s": ok * records_per_request / seconds,
        "p50_ms": p["50"] / 1000,
        "p90_ms": p["90"] / 1000,
        "p99_ms": p["99"] / 1000,
        "p999_ms": p["99.9"] / 1000,
        "non_2xx": failed,
        "socket_errors": int(errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]),
    }


def run_locust(
    user: str, url: str, duration: float, *, users: int, env: Mapping[str, str], workdir: Path
) -> tuple[list[dict[str, Any]], float, float]:
    """Runs Locust headless; returns its per-name statistics, the seconds it ran and the CPU cores it used."""
    json_base = workdir / f"locust-{user}-{next_nonce()}"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{max(1, round(duration))}s",
        "--host",
        url,
        "--json-file",
        str(json_base),
        "--only-summary",
        "--loglevel",
        "ERROR",
        "--exit-code-on-error",
        "0",
        user,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    cpu = 0.0
    process = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            cpu = times.user + times.system
        time.sleep(0.2)
    _, stderr = proc.communicate()
    elapsed = time.monotonic() - started
    path = json_base.with_suffix(".json")
    if not path.exists():
        raise RuntimeError(f"locust wrote no statistics ({proc.returncode}): {stderr.decode()[-2000:]}")
    stats: list[dict[str, Any]] = json.loads(path.read_text())
    starts = [entry["start_time"] for entry in stats if entry.get("num_requests")]
    ends = [entry["last_request_timestamp"] for entry in stats if entry.get("num_requests")]
    seconds = max(ends) - min(starts) if starts else duration
    return stats, max(seconds, 1e-3), cpu / max(elapsed, 1e-3)


def locust_percentile(entries: Sequence[Mapping[str, Any]], pct: float) -> float:
    merged: dict[float, int] = {}
    for entry in entries:
        for value, count in entry["response_times"].items():
            merged[float(value)] = merged.get(float(value), 0) + int(count)
    total = sum(merged.values())
    if not total:
        return math.nan
    seen = 0
    for value in sorted(merged):
        seen += merged[value]
        if seen >= pct / 100 * total:
            return value
    return max(merged)


# ----- the session


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Session:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.services: dict[str, Service] = {}
        self.broker: Any = None
        self.started = time.monotonic()
        self.results: dict[str, Any] = {"scenarios": {}, "locust": {}, "notes": []}
        self.devices_lua = workdir / "devices.lua"
        self.devices_one_key_lua = workdir / "devices-one-key.lua"
        self.devices_one_key_json = workdir / "devices-one-key.json"
        self.devices_json = workdir / "devices.json"
        self.tokens_json = workdir / "tokens.json"

    def progress(self, message: str) -> None:
        log(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    # -- setup

    def keys(self, data_dir: Path) -> None:
        """Device keys through the real CLI; a share of the devices mid rotation (two keys each)."""
        devices = [f"sensor-{i:05d}" for i in range(1, DEVICES + 1)]
        rotating = devices[: int(DEVICES * ROTATING_SHARE)]
        held: dict[str, list[str]] = {device: [] for device in devices}
        for group in (devices, rotating):
            out = subprocess.run(
                [sys.executable, "-m", "tidegate", "keys", "add", "--data-dir", str(data_dir), *group],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            ).stdout
            for line in out.strip().splitlines():
                device, key = line.split(" ", 1)
                held[device].append(key)
        entries = [[device, *keys] for device, keys in held.items()]
        self.devices_json.write_text(json.dumps(entries))
        self.devices_one_key_json.write_text(json.dumps([entry[:2] for entry in entries]))
        self.tokens_json.write_text(json.dumps({device: keys[0] for device, keys in held.items()}))
        for path, rows in ((self.devices_lua, entries), (self.devices_one_key_lua, [e[:2] for e in entries])):
            path.write_text(
                "return {\n" + "".join("{" + ",".join(json.dumps(v) for v in row) + "},\n" for row in rows) + "}\n"
            )

    def start(self) -> None:
        from tidegate.testing.broker import Broker  # noqa: PLC0415 (needs the test extras)

        self.progress("starting the broker (tansu)")
        self.broker = Broker(self.workdir).start()
        tg_dir = self.workdir / "tidegate"
        self.progress(f"creating {DEVICES} device keys ({int(ROTATING_SHARE * 100)}% mid rotation)")
        self.keys(tg_dir)
        services: dict[str, Service] = {}
        workers = self.options.workers
        for name in TIDEGATES:
            data_dir = self.workdir / name
            if data_dir != tg_dir:
                data_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(tg_dir / "keys.json", data_dir / "keys.json")
            env = {
                "TIDEGATE_DATA_DIR": str(data_dir),
                # The rate limit is lifted but still consulted on every request, as the reference's is.
                "TIDEGATE_RATE_PER_DEVICE": "1e9",
                "TIDEGATE_BURST_PER_DEVICE": "1e9",
                "TIDEGATE_SPOOL_QUOTA_BYTES": str(64 << 30),
                **self.options.extra_env,
            }
            if name == "tidegate-kafka":
                env["TIDEGATE_KAFKA"] = self.broker.bootstrap
            if self.options.max_in_flight_records:
                env["TIDEGATE_MAX_IN_FLIGHT_RECORDS"] = str(self.options.max_in_flight_records)
            port = free_port()
            if self.options.tidegate_app:
                command = [
                    *(sys.executable, "-m", "bench.peers.serve", self.options.tidegate_app),
                    *("--factory", "--interface", "rsgi"),
                ]
                command += ["--workers", str(workers)]
            else:
                command = [sys.executable, "-m", "tidegate", "serve", "--data-dir", str(data_dir)]
                command += ["--workers", str(workers)]
            services[name] = Service(name, [*command, "--port", str(port)], env, port, self.workdir / f"{name}.log")
        for name, target, interface in (
            ("noop", "bench.peers.noop:app", "asgi"),
            ("noop-raw", "bench.peers.noop_raw:app", "asgi"),
            ("noop-rsgi", "bench.peers.noop_rsgi:app", "rsgi"),
        ):
            port = free_port()
            services[name] = Service(
                name,
                [
                    *(sys.executable, "-m", "bench.peers.serve", target, "--interface", interface),
                    *("--workers", str(workers), "--port", str(port)),
                ],
                {},
                port,
                self.workdir / f"{name}.log",
            )
        port = free_port()
        reference = ["bench.peers.reference.main:app", "--workers", str(workers), "--port", str(port)]
        services["reference"] = Service(
            "reference",
            [sys.executable, "-m", "bench.peers.serve", *reference],
            {
                "REFERENCE_KAFKA": self.broker.bootstrap,
                "REFERENCE_DEVICE_TOKENS": str(self.tokens_json),
                "REFERENCE_RATE_LIMIT": "1e9",
            },
            port,
            self.workdir / "reference.log",
        )
        self.results["servers"] = {
            name: {"command": " ".join(service.command[1:]), "env": service.env} for name, service in services.items()
        }
        for name, service in services.items():
            self.progress(f"starting {name}: {' '.join(service.command[1:])}")
            self.services[name] = service.start()

    def dedup_table(self) -> None:
        """The shared dedup table's size per id (issue 10: at most 64 bytes), and how many ids it held at the end."""
        from tidegate._native import DedupWindow  # noqa: PLC0415

        path = self.workdir / "tidegate" / "state" / "dedup.tbl"
        if not path.exists():
            return
        window = DedupWindow(path)
        self.results["dedup_table"] = {
            "path": str(path),
            "file_bytes": path.stat().st_size,
            "bytes_per_id": window.bytes_per_id,
            "ids_held": len(window),
        }

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
        if self.broker is not None:
            self.broker.stop(grace=0)
        for name in TIDEGATES:  # the spools hold gigabytes by now; the logs stay for reading
            shutil.rmtree(self.workdir / name / "spool", ignore_errors=True)

    def load_env(self, *, rotation: bool = True, **extra: str) -> dict[str, str]:
        """Environment for a wrk script; without `rotation` every device uses one key (the reference knows one)."""
        devices = self.devices_lua if rotation else self.devices_one_key_lua
        return {"BENCH_DEVICES": str(devices), "BENCH_NONCE": str(next_nonce()), **extra}

    # -- closed-loop scenarios, alternating servers

    def measure(self, scenario: Scenario, server: str, duration: float) -> dict[str, Any]:
        service = self.services[server]
        env = self.load_env(rotation=scenario.name == "fleet", BENCH_RECORDS=str(scenario.records))
        if scenario.priority:
            env["BENCH_PRIORITY"] = scenario.priority
        cpu_before, _ = service.usage()
        load_before = children_cpu()
        raw = run_wrk(
            scenario.script,
            service.url + scenario.path,
            duration,
            connections=self.options.connections,
            threads=self.options.wrk_threads,
            env=env,
        )
        cpu_after, rss = service.usage()
        figures = wrk_figures(raw, scenario.records)
        figures["cpu_cores"] = (cpu_after - cpu_before) / figures["seconds"]
        figures["load_cpu_cores"] = (children_cpu() - load_before) / figures["seconds"]
        figures["rss_mb"] = rss / 2**20
        return figures

    def scenario(self, scenario: Scenario) -> None:
        options = self.options
        runs: dict[str, list[dict[str, Any]]] = {server: [] for server in scenario.servers}
        for server in scenario.servers:
            self.progress(f"{scenario.name}: warming up {server}")
            self.measure(scenario, server, options.warmup)
        for rep in range(options.reps):
            order = scenario.servers[rep % len(scenario.servers) :] + scenario.servers[: rep % len(scenario.servers)]
            for server in order:
                figures = self.measure(scenario, server, options.duration)
                runs[server].append(figures)
                self.progress(
                    f"{scenario.name} {rep + 1}/{options.reps} {server:>9}: {figures['rps']:9,.0f} req/s "
                    f"{figures['records_per_s']:11,.0f} records/s  p99 {figures['p99_ms']:7.1f} ms  "
                    f"non-2xx {figures['non_2xx']}  cpu {figures['cpu_cores']:.2f}"
                )
        summary: dict[str, Any] = {
            "title": scenario.title,
            "tool": "wrk",
            "path": scenario.path,
            "records_per_request": scenario.records,
            "connections": options.connections,
            "servers": {},
            "paired_ratios": {},
        }
        for server, server_runs in runs.items():
            keys = [k for k in server_runs[0] if isinstance(server_runs[0][k], int | float)]
            summary["servers"][server] = {
                "median": {k: median([run[k] for run in server_runs]) for k in keys},
                "runs": server_runs,
            }
        for mine_name in (s for s in scenario.servers if s in TIDEGATES):
            for peer in (s for s in scenario.servers if s in PEERS):
                for metric, key in (("rps", "rps"), ("records", "records_per_s")):
                    pairs = [
                        mine[key] / theirs[key] if theirs[key] else math.nan
                        for mine, theirs in zip(runs[mine_name], runs[peer], strict=True)
                    ]
                    summary["paired_ratios"][f"{metric}.{mine_name}/{peer}"] = {"median": median(pairs), "runs": pairs}
        self.results["scenarios"][scenario.name] = summary

    # -- the overload ramp (bench/pacer: paced connections per priority)

    def ramp(self, capacity: float, *, honour_retry_after: bool) -> None:
        """One pass of the ramp; clients that honour Retry-After wait it out after a 429/503 (as a good SDK does),
        the others keep their pace. Then the unloaded and the target level again, alternated, until each has
        `target_rounds` rounds. Results under `overload` (ignoring) and `overload_honouring`."""
        options = self.options
        service = self.services["tidegate"]
        levels = (options.unloaded_level, *options.ramp_levels)
        mode = "honouring" if honour_retry_after else "ignoring"
        out: dict[str, Any] = {
            "tool": f"tidegate-pacer (bench/pacer: paced connections per priority; clients {mode} Retry-After)",
            "clients": mode,
            "capacity_rps": capacity,
            "capacity_from": "fleet scenario, tidegate, closed loop (median)",
            "levels": [],
            "rounds": [],
        }
        rss_start = service.usage()[1]
        for level in levels:
            out["levels"].append(self.ramp_level(capacity, level, honour_retry_after=honour_retry_after))
        by_level = {entry["level"]: entry for entry in out["levels"]}
        if TARGET_LEVEL in by_level:
            # The pass's own pair is the first round; its unloaded level ran before the levels between them.
            out["rounds"].append({"unloaded": by_level[options.unloaded_level], "loaded": by_level[TARGET_LEVEL]})
            # A round that stalled on the disk measures nothing (`round_stalled`): it is kept and tabled, and another
            # is run in its place, up to `spare_rounds` more.
            while (
                sum(not round_stalled(pair) for pair in out["rounds"]) < options.target_rounds
                and len(out["rounds"]) < options.target_rounds + options.spare_rounds
            ):
                if len(out["rounds"]) >= options.target_rounds:
                    self.progress(f"overload ({mode} Retry-After): a round stalled on the disk, another in its place")
                unloaded = self.ramp_level(capacity, options.unloaded_level, honour_retry_after=honour_retry_after)
                out["rounds"].append(
                    {
                        "unloaded": unloaded,
                        "loaded": self.ramp_level(capacity, TARGET_LEVEL, honour_retry_after=honour_retry_after),
                    }
                )
        rss_end = service.usage()[1]
        out["rss_mb_before"] = rss_start / 2**20
        out["rss_mb_after"] = rss_end / 2**20
        self.results["overload_honouring" if honour_retry_after else "overload"] = out

    def ramp_level(self, capacity: float, level: float, *, honour_retry_after: bool) -> dict[str, Any]:
        """One level of the ramp: `level` times `capacity` offered, in the shares of PRIORITY_SHARES."""
        options = self.options
        service = self.services["tidegate"]
        mode = "honouring" if honour_retry_after else "ignoring"
        offered = capacity * level
        duration = options.ramp_duration
        if level == options.unloaded_level and offered:
            duration = max(duration, options.unloaded_high_readings / (offered * PRIORITY_SHARES["high"]))
        samples: list[int] = []
        stop = threading.Event()

        def sample(samples: list[int] = samples, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                samples.append(service.usage()[1])
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = service.usage()[0]
        load_before = children_cpu()
        # The spools' commit times over the level: the high priority's answer waits for its spool's fsync, so a
        # disk that stalls shows here before it shows in the p99 (bench/JOURNAL.md, 2026-12-03 "the disk's
        # stalls"). They include the warm-up, which the p99 does not: a stall in that second alone can mark a level
        # stalled (`disk_stalled`) that measured well, never the other way round. `/metrics` is one worker's, so
        # they are read with one worker only (two scrapes could reach two workers).
        count_commits = options.workers == 1
        commits_before = commit_buckets(service.metrics()) if count_commits else {}
        # The CPU figures cover the warm-up too: they are rates over the whole pacer run.
        wall_before = time.monotonic()
        rates = {priority: offered * share for priority, share in PRIORITY_SHARES.items()}
        try:
            results = run_pacer(
                service.url + "/api/v1/ingest",
                duration,
                {
                    p: (rate, max(2, min(MAX_RAMP_CONNECTIONS, math.ceil(rate * RAMP_INTERVAL_S))))
                    for p, rate in rates.items()
                },
                devices=self.devices_json,
                honour_retry_after=honour_retry_after,
                warmup=RAMP_WARMUP_S,
            )
            cpu_after = service.usage()[0]
            load_after = children_cpu()
            wall = time.monotonic() - wall_before
            commits_after = commit_buckets(service.metrics()) if count_commits else {}
        finally:
            stop.set()
            sampler.join()
        step = 1.02
        entry: dict[str, Any] = {"level": level, "offered_rps": offered, "duration_s": duration, "priorities": {}}
        all_hist: dict[str, dict[str, int]] = {}
        good_total = sent_total = 0.0
        for priority, raw in results.items():
            counts = {k: int(v) for k, v in raw["status_counts"].items()}
            hist = raw["hist"]
            step = float(raw.get("hist_log_step", 1.02))
            good = raw["status_rates"].get("202", 0.0)
            sent = sum(raw["status_rates"].values())
            good_total += good
            sent_total += sent
            for status, buckets in hist.items():
                target = all_hist.setdefault(status, {})
                for bucket, count in buckets.items():
                    target[bucket] = target.get(bucket, 0) + int(count)
            entry["priorities"][priority] = {
                "offered_rps": raw["offered_rps"],
                "sent_rps": sent,
                "goodput_rps": good,
                "goodput_fraction_of_offered": good / raw["offered_rps"] if raw["offered_rps"] else math.nan,
                "status_counts": counts,
                "socket_errors": int(sum(v for k, v in raw["errors"].items() if k != "status")),
                "p50_accepted_ms": hist_percentile(hist, ["202"], 50, step),
                "p99_accepted_ms": hist_percentile(hist, ["202"], 99, step),
                "p99_all_ms": raw["latency_us"]["p"]["99"] / 1000,
                "onset_status_counts": {k: int(v) for k, v in raw["warmup"]["status_counts"].items()},
                "onset_p99_accepted_ms": hist_percentile(raw["warmup"]["hist"], ["202"], 99, step),
                "connections": raw["connections"],
            }
        entry.update(
            {
                "sent_rps": sent_total,
                "goodput_rps": good_total,
                "goodput_fraction_of_capacity": good_total / capacity if capacity else math.nan,
                "p50_accepted_ms": hist_percentile(all_hist, ["202"], 50, step),
                "p99_accepted_ms": hist_percentile(all_hist, ["202"], 99, step),
                "p999_accepted_ms": hist_percentile(all_hist, ["202"], 99.9, step),
                "cpu_cores": (cpu_after - cpu_before) / wall,
                "load_cpu_cores": (load_after - load_before) / wall,
                "rss_mb_start": (samples[0] if samples else 0) / 2**20,
                "rss_mb_end": (samples[-1] if samples else 0) / 2**20,
                "rss_mb_max": (max(samples) if samples else 0) / 2**20,
                "commits": {
                    spool: {
                        "p99_ms": bucket_quantile(commits_before[spool], commits_after[spool], 0.99) * 1000,
                        "over_50ms": commits_over(commits_before[spool], commits_after[spool], 0.05),
                        "over_50ms_at_most_ms": stall_at_most(commits_before[spool], commits_after[spool], 0.05) * 1000,
                        "total": commits_between(commits_before[spool], commits_after[spool]),
                    }
                    for spool in commits_after
                },
            }
        )
        pr = entry["priorities"]
        self.progress(
            f"overload ({mode} Retry-After) {level:.2g}x ({offered:,.0f} req/s offered, {sent_total:,.0f} sent, "
            f"{duration:.0f} s): "
            + "goodput "
            + " ".join(
                f"{p} {pr[p]['goodput_rps']:,.0f}/{pr[p]['offered_rps']:,.0f} "
                f"(503: {pr[p]['status_counts'].get('503', 0)})"
                for p in PRIORITY_SHARES
            )
            + f"  p99 accepted {entry['p99_accepted_ms']:.1f} ms (high {pr['high']['p99_accepted_ms']:.1f}, "
            f"in the warm-up {pr['high']['onset_p99_accepted_ms']:.1f})  rss {entry['rss_mb_end']:.0f} MB"
            + f"  cpu {entry['cpu_cores']:.2f} (wrk {entry['load_cpu_cores']:.2f})"
            + f"  high commit p99 ms (commits > 50 ms) {commit_cell(entry)}"
        )
        return entry

    # -- Locust

    def locust_scenarios(self) -> None:
        options = self.options
        for scenario in SCENARIOS:
            if scenario.name not in self.results["scenarios"]:
                continue
            entry: dict[str, Any] = {"tool": "locust (FastHttpUser, one process)", "servers": {}}
            devices = self.devices_json if scenario.name == "fleet" else self.devices_one_key_json
            for server in (s for s in scenario.servers if s != "tidegate-kafka"):
                env = {
                    "BENCH_DEVICES_JSON": str(devices),
                    "BENCH_RECORDS": str(scenario.records),
                    "BENCH_NONCE": str(next_nonce()),
                }
                stats, seconds, cpu = run_locust(
                    scenario.locust_user,
                    self.services[server].url,
                    options.locust_duration,
                    users=options.locust_users,
                    env=env,
                    workdir=self.workdir,
                )
                requests = sum(int(e["num_requests"]) for e in stats)
                failures = sum(int(e["num_failures"]) for e in stats)
                ok_rps = (requests - failures) / seconds
                wrk_rps = self.results["scenarios"].get(scenario.name, {}).get("servers", {}).get(server, {})
                wrk_rps = wrk_rps.get("median", {}).get("rps", math.nan)
                figures = {
                    "rps": ok_rps,
                    "records_per_s": ok_rps * scenario.records,
                    "failures": failures,
                    "p50_ms": locust_percentile(stats, 50),
                    "p99_ms": locust_percentile(stats, 99),
                    "locust_cpu_cores": cpu,
                    "wrk_rps": wrk_rps,
                    "locust_saturated": cpu >= 0.85 or ok_rps < 0.8 * wrk_rps,
                }
                entry["servers"][server] = figures
                self.progress(
                    f"locust {scenario.name} {server:>9}: {ok_rps:9,.0f} req/s (wrk {wrk_rps:,.0f})  "
                    f"locust cpu {cpu:.2f}{'  SATURATED' if figures['locust_saturated'] else ''}"
                )
            self.results["locust"][scenario.name] = entry

    def locust_ramp(self, capacity: float) -> None:
        options = self.options
        levels: list[dict[str, Any]] = []
        users = options.locust_users * 2
        for level in options.ramp_levels:
            offered = capacity * level
            env = {
                "BENCH_DEVICES_JSON": str(self.devices_json),
                "BENCH_PACE_RPS": f"{offered / users:.3f}",
                "BENCH_NONCE": str(next_nonce()),
            }
            stats, seconds, cpu = run_locust(
                "MixedFleet", self.services["tidegate"].url, options.locust_duration, users=users, env=env,
                workdir=self.workdir,
            )  # fmt: skip
            per: dict[str, Any] = {}
            for priority, share in PRIORITY_SHARES.items():
                mine = [e for e in stats if e["name"].startswith(priority + " ")]
                accepted = [e for e in mine if e["name"].endswith(" 202")]
                per[priority] = {
                    "offered_rps": offered * share,
                    "sent_rps": sum(int(e["num_requests"]) for e in mine) / seconds,
                    "goodput_rps": sum(int(e["num_requests"]) for e in accepted) / seconds,
                    "p99_accepted_ms": locust_percentile(accepted, 99),
                }
            sent = sum(p["sent_rps"] for p in per.values())
            levels.append(
                {
                    "level": level,
                    "offered_rps": offered,
                    "sent_rps": sent,
                    "goodput_rps": sum(p["goodput_rps"] for p in per.values()),
                    "priorities": per,
                    "locust_cpu_cores": cpu,
                    "locust_saturated": sent < 0.9 * offered,
                }
            )
            self.progress(
                f"locust overload {level:g}x: offered {offered:,.0f}, sent {sent:,.0f} req/s, locust cpu {cpu:.2f}"
                + ("  SATURATED (Locust could not offer the load)" if sent < 0.9 * offered else "")
            )
        self.results["locust"]["overload"] = {"tool": "locust (FastHttpUser, one process, paced)", "levels": levels}


# ----- ratios, targets, table


def ratios(results: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, scenario in results["scenarios"].items():
        for key, value in scenario["paired_ratios"].items():
            out[f"{name}.{key}"] = value["median"]
    for part in ("overload", "overload_honouring"):
        overload = results.get(part)
        if not overload:
            continue
        unloaded = overload["levels"][0]
        for entry in overload["levels"][1:]:
            tag = f"{part}.{entry['level']:g}x"
            out.update({f"{tag}.{key}": value for key, value in level_ratios(entry, unloaded).items()})
        if rounds := overload.get("rounds"):
            # The target level's figures are the medians over its rounds, each against the unloaded level before it;
            # a ratio not measured (the unloaded level stalled on the disk) is left out, NaN when every round's was.
            per_round = [level_ratios(pair["loaded"], pair["unloaded"]) for pair in rounds]
            tag = f"{part}.{TARGET_LEVEL:g}x"
            out.update({f"{tag}.{key}": median([r[key] for r in per_round]) for key in per_round[0]})
        out[f"{part}.rss_after/rss_before"] = overload["rss_mb_after"] / overload["rss_mb_before"]
    return out


STALL_SHARE_OF_LEVEL = 0.01
"""A ramp level measured the disk, not the server, when its high-priority commits slower than 50 ms can have taken
this share of its measured time or more: a high reading is answered only after its spool's fsync, so a stall holds
every high reading that arrives meanwhile, and stalls that add up to 1% of a level can hold its slowest 1% of high
readings, which is its p99, whatever the server did. Counted at the most (`stall_at_most`: each commit at its
bucket's upper bound), so a level is left out whenever the disk may have decided its p99. On 2026-12-03 one
machine's unloaded high p99 read 1.9-3.4 ms in one run and 73-259 ms half an hour later, with 5-25 such commits per
level; on 2026-12-04 two commits over 50 ms in a 24 s unloaded level made its p99 27.7 ms against 3.5-3.8 in the
other rounds, and three in a 5 s level at 2x made that one 217 ms against 11.6 (bench/JOURNAL.md)."""


def disk_stalled(entry: Mapping[str, Any]) -> bool:
    """Whether a ramp level's high-priority spool stalled on the disk (`STALL_SHARE_OF_LEVEL`); False for results
    from before the bench recorded commits, and True for any commit over 50 ms in results that recorded only their
    count (before 2026-12-04), whose durations are unknown."""
    commits = entry.get("commits", {}).get("high")
    if not commits:
        return False
    at_most_ms = commits.get("over_50ms_at_most_ms", math.inf if commits["over_50ms"] else 0.0)
    return bool(at_most_ms >= STALL_SHARE_OF_LEVEL * entry["duration_s"] * 1000)


def round_stalled(pair: Mapping[str, Any]) -> bool:
    """Whether either level of a round (its unloaded level or its target level) stalled on the disk: a stall
    lengthens the p99 on whichever side of the ratio it falls, flattering the target or failing it."""
    return disk_stalled(pair["unloaded"]) or disk_stalled(pair["loaded"])


def level_ratios(entry: Mapping[str, Any], unloaded: Mapping[str, Any]) -> dict[str, float]:
    """A level of the ramp's figures, the p99s as ratios to the unloaded level's; those are NaN (not measured) when
    either level stalled on the disk (`round_stalled`): such a ratio measures the disk."""
    high, unloaded_high = entry["priorities"]["high"], unloaded["priorities"]["high"]
    stalled = round_stalled({"unloaded": unloaded, "loaded": entry})

    def over(value: float, unloaded_value: float) -> float:
        return math.nan if stalled else value / unloaded_value

    return {
        "high_goodput/offered": high["goodput_fraction_of_offered"],
        "goodput/capacity": entry["goodput_fraction_of_capacity"],
        "p99_accepted/unloaded_p99": over(entry["p99_accepted_ms"], unloaded["p99_accepted_ms"]),
        "high_p99/unloaded_high_p99": over(high["p99_accepted_ms"], unloaded_high["p99_accepted_ms"]),
        "high_onset_p99/unloaded_high_p99": over(high["onset_p99_accepted_ms"], unloaded_high["p99_accepted_ms"]),
    }


def targets(values: Mapping[str, float]) -> list[dict[str, Any]]:
    wanted = [
        ("single readings: tidegate / no-op (requests/s)", "single.rps.tidegate/noop", ">=", 1.0),
        ("single readings: tidegate / reference (requests/s)", "single.rps.tidegate/reference", ">=", 8.0),
        ("batches: tidegate / reference (records/s)", "batch.records.tidegate/reference", ">=", 20.0),
        ("batches: tidegate / no-op (records/s)", "batch.records.tidegate/noop", ">=", 0.5),
        ("overload 2x: high-priority goodput / offered", "overload.2x.high_goodput/offered", ">=", 0.99),
        (
            "overload 2x, clients ignoring Retry-After: high-priority p99 / unloaded",
            "overload.2x.high_p99/unloaded_high_p99",
            "<=",
            3.0,
        ),
        ("overload 2x, clients ignoring Retry-After: goodput / capacity", "overload.2x.goodput/capacity", ">=", 0.70),
        (
            "overload 2x, clients honouring Retry-After: goodput / capacity",
            "overload_honouring.2x.goodput/capacity",
            ">=",
            0.90,
        ),
        (
            "overload 2x, clients honouring Retry-After: high-priority goodput / offered",
            "overload_honouring.2x.high_goodput/offered",
            ">=",
            0.99,
        ),
        (
            "overload 2x, clients honouring Retry-After: high-priority p99 / unloaded",
            "overload_honouring.2x.high_p99/unloaded_high_p99",
            "<=",
            3.0,
        ),
        ("memory over the ramp: RSS after / before", "overload.rss_after/rss_before", "<=", 1.10),
        (
            "memory over the ramp, clients honouring Retry-After: RSS after / before",
            "overload_honouring.rss_after/rss_before",
            "<=",
            1.10,
        ),
    ]
    out = []
    for title, key, op, target in wanted:
        value = values.get(key, math.nan)
        met = (value >= target) if op == ">=" else (value <= target)
        out.append({"target": title, "metric": key, "value": value, "wanted": f"{op} {target:g}", "met": bool(met)})
    return out


def fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def commit_cell(entry: Mapping[str, Any]) -> str:
    """The high-priority spool's commit p99 over a ramp level, and its commits slower than 50 ms ("-" for results
    from before the bench recorded them)."""
    commits = entry.get("commits", {}).get("high")
    return f"{fmt(commits['p99_ms'], 1)} ({commits['over_50ms']})" if commits else "-"


def markdown(results: Mapping[str, Any]) -> str:
    lines = [
        "| scenario | server | requests/s | records/s | p50 ms | p90 ms | p99 ms | p99.9 ms | non-2xx | server CPU "
        "| RSS MB | tool (its CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, scenario in results["scenarios"].items():
        for server, data in scenario["servers"].items():
            m = data["median"]
            lines.append(
                f"| {name} | {server} | {fmt(m['rps'])} | {fmt(m['records_per_s'])} | {fmt(m['p50_ms'], 1)} "
                f"| {fmt(m['p90_ms'], 1)} | {fmt(m['p99_ms'], 1)} | {fmt(m['p999_ms'], 1)} | {fmt(m['non_2xx'])} "
                f"| {fmt(m['cpu_cores'], 2)} | {fmt(m['rss_mb'])} "
                f"| wrk, {scenario['connections']} conns ({fmt(m.get('load_cpu_cores', math.nan), 2)}) |"
            )
    lines += [
        "",
        "The latencies above are wrk's, corrected for coordinated omission: an answer far slower than its connection's "
        "mean interval counts again at every interval it covered, so a scenario with refusals held 0.5-1 s before "
        "their answer (`admission_refusal_hold_s`: non-2xx above) reads a p99 of hundreds of ms though its accepted "
        "requests took tens (bench/README.md, Output).",
    ]
    lines += ["", "| ratio (median of back-to-back pairs) | value | tool |", "|---|---:|---|"]
    for key, value in results["ratios"].items():
        tool = "tidegate-pacer" if key.startswith("overload") else "wrk"
        lines.append(f"| {key} | {fmt(value, 2)} | {tool} |")
    lines += ["", "| target | wanted | value | met |", "|---|---|---:|---|"]
    for target in results["targets"]:
        lines.append(
            f"| {target['target']} | {target['wanted']} | {fmt(target['value'], 2)} | "
            f"{'yes' if target['met'] else 'not measured' if math.isnan(target['value']) else '**no**'} |"
        )
    if table := results.get("dedup_table"):
        lines += [
            "",
            f"Shared dedup table: {fmt(table['bytes_per_id'], 1)} bytes per id at capacity "
            f"({fmt(table['file_bytes'] / 1e6, 1)} MB file, {fmt(table['ids_held'])} ids held at the end).",
        ]
    for part in ("overload", "overload_honouring"):
        overload = results.get(part)
        if not overload:
            continue
        lines += [
            "",
            f"Overload ramp (capacity {fmt(overload['capacity_rps'])} req/s, {overload['tool']}):",
            "",
            "| load | offered | sent | goodput | high good/offered | medium good/offered | low good/offered "
            "| shed (503) | p99 accepted ms | high p99 ms | high p99 ms, warm-up "
            "| high commit p99 ms (commits > 50 ms) | server CPU | wrk CPU | RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in overload["levels"]:
            pr = entry["priorities"]
            lines.append(
                f"| {entry['level']:g}x | {fmt(entry['offered_rps'])} | {fmt(entry['sent_rps'])} "
                f"| {fmt(entry['goodput_rps'])} "
                + " ".join(
                    f"| {fmt(pr[p]['goodput_rps'])}/{fmt(pr[p]['offered_rps'])}" for p in ("high", "medium", "low")
                )
                + f" | {sum(pr[p]['status_counts'].get('503', 0) for p in pr)} | {fmt(entry['p99_accepted_ms'], 1)} "
                f"| {fmt(pr['high']['p99_accepted_ms'], 1)} | {fmt(pr['high']['onset_p99_accepted_ms'], 1)} "
                f"| {commit_cell(entry)} | {fmt(entry['cpu_cores'], 2)} | {fmt(entry['load_cpu_cores'], 2)} "
                f"| {fmt(entry['rss_mb_end'])} |"
            )
        if len(rounds := overload.get("rounds", [])) > 1:
            lines += [
                "",
                f"Its rounds at {TARGET_LEVEL:g}x (the targets read the medians; the first is the pass above):",
                "",
                "| round | unloaded high p99 ms | its high commit p99 ms (commits > 50 ms) | high p99 ms "
                "| its high commit p99 ms (commits > 50 ms) | high p99 / unloaded | high good/offered "
                "| goodput/capacity |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for number, pair in enumerate(rounds, 1):
                figures = level_ratios(pair["loaded"], pair["unloaded"])
                lines.append(
                    f"| {number} | {fmt(pair['unloaded']['priorities']['high']['p99_accepted_ms'], 1)} "
                    f"| {commit_cell(pair['unloaded'])} "
                    f"| {fmt(pair['loaded']['priorities']['high']['p99_accepted_ms'], 1)} "
                    f"| {commit_cell(pair['loaded'])} "
                    f"| {fmt(figures['high_p99/unloaded_high_p99'], 2)} | {fmt(figures['high_goodput/offered'], 3)} "
                    f"| {fmt(figures['goodput/capacity'], 2)} |"
                )
    locust = results.get("locust") or {}
    if locust:
        lines += [
            "",
            "Locust (FastHttpUser, one process) next to wrk:",
            "",
            "| scenario | server | Locust req/s | wrk req/s | Locust CPU cores | Locust saturated |",
            "|---|---|---:|---:|---:|---|",
        ]
        for name, entry in locust.items():
            if name == "overload":
                continue
            for server, data in entry["servers"].items():
                lines.append(
                    f"| {name} | {server} | {fmt(data['rps'])} | {fmt(data['wrk_rps'])} "
                    f"| {fmt(data['locust_cpu_cores'], 2)} | {'yes' if data['locust_saturated'] else 'no'} |"
                )
        if "overload" in locust:
            for entry in locust["overload"]["levels"]:
                lines.append(
                    f"| overload {entry['level']:g}x | tidegate | {fmt(entry['sent_rps'])} sent of "
                    f"{fmt(entry['offered_rps'])} offered | - | {fmt(entry['locust_cpu_cores'], 2)} "
                    f"| {'yes' if entry['locust_saturated'] else 'no'} |"
                )
    return "\n".join(lines)


# ----- the gate


def gate(values: Mapping[str, float], baseline_path: Path, tolerance: float | None) -> tuple[bool, str]:
    baseline = json.loads(baseline_path.read_text())
    tol = float(tolerance if tolerance is not None else baseline.get("tolerance", 0.10))
    lines = [f"gate against {baseline_path} (tolerance {tol:.0%}):"]
    passed = True
    for key, spec in baseline["ratios"].items():
        base = float(spec["value"])
        higher = bool(spec.get("higher_is_better", True))
        value = gated_value(key, values.get(key, math.nan))
        if math.isnan(value):
            ok = False
            verdict = "MISSING"
        elif higher:
            ok = value >= base * (1 - tol)
            verdict = "ok" if ok else f"FELL {1 - value / base:.0%} below the baseline"
        else:
            ok = value <= base * (1 + tol)
            verdict = "ok" if ok else f"ROSE {value / base - 1:.0%} above the baseline"
        passed = passed and ok
        lines.append(f"  {'ok  ' if ok else 'FAIL'} {key:40} baseline {base:8.3f}  now {value:8.3f}  {verdict}")
    lines.append("gate: PASSED" if passed else "gate: FAILED")
    return passed, "\n".join(lines)


def save_baseline(values: Mapping[str, float], path: Path, tolerance: float, source: str) -> None:
    document = {
        "about": "Release gate baseline: ratios against peers measured in the same session (python -m bench). "
        "`python -m bench --gate bench/baseline.json` fails when one falls more than the tolerance below.",
        "source": source,
        "tolerance": tolerance,
        "ratios": {
            key: {"value": round(gated_value(key, values[key]), 4), "higher_is_better": higher}
            for key, higher in GATED.items()
            if key in values and not math.isnan(values[key])
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# ----- entry point


def options_from(args: argparse.Namespace) -> Options:
    if args.quick:
        options = Options(
            quick=True, duration=2.0, warmup=1.0, reps=2, connections=64, wrk_threads=2, ramp_duration=2.0,
            ramp_levels=(0.5, 1.0, 2.0, 4.0), unloaded_level=0.1, locust=True, locust_duration=2.0, locust_users=64,
            tidegate_app=args.tidegate_app, max_in_flight_records=args.max_in_flight_records,
        )  # fmt: skip
    else:
        options = Options(
            quick=False, duration=4.0, warmup=1.0, reps=4, connections=64, wrk_threads=2, ramp_duration=5.0,
            ramp_levels=(0.5, 1.0, 2.0, 4.0), unloaded_level=0.1, locust=True, locust_duration=4.0, locust_users=64,
            tidegate_app=args.tidegate_app, max_in_flight_records=args.max_in_flight_records,
            unloaded_high_readings=2000, target_rounds=3, spare_rounds=3,
        )  # fmt: skip
    if args.reps:
        options.reps = args.reps
    if args.duration:
        options.duration = args.duration
    if args.no_locust:
        options.locust = False
    options.workers = args.workers
    for item in args.env or []:
        name, _, value = item.partition("=")
        options.extra_env[name] = value
    return options


def run_core(quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.report"]
    if quick:
        command += ["--", "--benchmark-max-time=0.2", "--benchmark-min-rounds=3"]
    log("$ " + " ".join(command))
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(out.stderr[-3000:])
    print(out.stdout)
    return {"command": command, "exit": out.returncode, "table": out.stdout}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of the whole pipeline")
    parser.add_argument("--core", action="store_true", help="also run the pytest-benchmark core suite")
    parser.add_argument("--gate", type=Path, metavar="BASELINE", help="fail when a ratio fell below this baseline")
    parser.add_argument("--tolerance", type=float, help="allowed fall below the baseline (default: the baseline's)")
    parser.add_argument("--save-baseline", type=Path, metavar="PATH", help="write this run's ratios as a baseline")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-locust", action="store_true", help="skip the Locust runs (wrk only)")
    parser.add_argument("--reps", type=int, help="runs per server and scenario")
    parser.add_argument("--duration", type=float, help="seconds per run")
    parser.add_argument(
        "--tidegate-app",
        metavar="MODULE:FACTORY",
        help="serve this ASGI app factory as tidegate instead of `tidegate serve` (e.g. bench.slowed:create_app)",
    )
    parser.add_argument(
        "--max-in-flight-records",
        type=int,
        help="TIDEGATE_MAX_IN_FLIGHT_RECORDS for the session (default: tidegate's own default)",
    )
    parser.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment for tidegate")
    parser.add_argument("--workers", type=int, default=1, help="Granian workers of every server (default 1)")
    parser.add_argument(
        "--only",
        help="comma-separated parts to run: " + ",".join(s.name for s in SCENARIOS) + ",overload,locust (default: all)",
    )
    parser.add_argument("--capacity", type=float, help="req/s for the overload ramp (default: the fleet scenario's)")
    parser.add_argument(
        "--results",
        type=Path,
        metavar="JSON",
        help="run nothing: gate, save a baseline or draw plots from this results file of an earlier run",
    )
    args = parser.parse_args(argv)
    options = options_from(args)
    parts = set((args.only or ",".join([*(s.name for s in SCENARIOS), "overload", "locust"])).split(","))

    if args.results is not None:
        loaded: dict[str, Any] = json.loads(args.results.read_text())
        loaded["ratios"] = ratios(loaded)
        loaded["targets"] = targets(loaded["ratios"])
        return finish(args, loaded, args.results, None)

    if not ensure_wrk():
        log("python -m bench needs wrk: apt-get install -y wrk")
        return 2

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    session = Session(options, workdir)
    load_before = os.getloadavg()
    results = session.results
    results.update(
        {
            "version": 1,
            "timestamp": stamp,
            "options": asdict(options),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "loadavg_before": load_before,
            },
        }
    )
    try:
        session.start()
        for scenario in SCENARIOS:
            if scenario.name in parts:
                session.scenario(scenario)
        capacity = args.capacity
        if capacity is None and "fleet" in results["scenarios"]:
            capacity = results["scenarios"]["fleet"]["servers"]["tidegate"]["median"]["rps"]
        if "overload" in parts and capacity:
            ensure_pacer()  # built before the ramp, so cargo's CPU is not counted as the load generator's
            session.ramp(capacity, honour_retry_after=False)
            session.ramp(capacity, honour_retry_after=True)
        if options.locust and "locust" in parts:
            session.locust_scenarios()
            if capacity:
                session.locust_ramp(capacity)
        session.dedup_table()
    finally:
        session.stop()
    results["machine"]["loadavg_after"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - session.started, 1)
    if args.core:
        results["core"] = run_core(options.quick)
    results["ratios"] = ratios(results)
    results["targets"] = targets(results["ratios"])
    results_path = args.results_dir / f"{stamp}.json"
    results_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    log(f"\nresults: {results_path} ({results['seconds']} s; server logs in {workdir})")
    return finish(args, results, results_path, stamp)


def finish(args: argparse.Namespace, results: dict[str, Any], results_path: Path, stamp: str | None) -> int:
    """Tables, plots, baseline and gate for a results document (just measured, or loaded with --results)."""
    table = markdown(results)
    if stamp is not None:
        (args.results_dir / f"{stamp}.md").write_text(table + "\n")
    print(table)
    if not args.no_plots:
        from bench.charts import draw  # noqa: PLC0415 (matplotlib is slow to import)

        fresh = stamp is not None and args.only is None and args.tidegate_app is None
        for png in draw(results, results_path.parent, results["timestamp"]):
            log(f"plot: {png}")
            if fresh:  # only a complete, unmodified run updates the committed plots
                PLOTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copy(png, PLOTS_DIR / png.name.removeprefix(f"{stamp}-"))
                log(f"  copied to {PLOTS_DIR / png.name.removeprefix(f'{stamp}-')}")
    if args.save_baseline:
        save_baseline(results["ratios"], args.save_baseline, args.tolerance or 0.10, results_path.name)
        log(f"baseline written: {args.save_baseline}")
    code = 0
    if "core" in results and results["core"]["exit"] != 0:
        code = 1
    if args.gate:
        passed, report = gate(results["ratios"], args.gate, args.tolerance)
        print("\n" + report)
        if not passed:
            code = 1
    return code
