"""MQTT QoS 1 readings/s into the spool against HTTP single readings/s, side by side in one session (issue 12).

    python -m bench.mqtt                      # 3 rounds of 10 s each way (about 2 minutes)
    python -m bench.mqtt --seconds 2 --rounds 1   # smoke run

One session starts mosquitto (Debian's, `tidegate.testing.mosquitto`) and `tidegate serve --mqtt` (auth off,
no rate limit, `--workers`), then alternates, round by round:

- HTTP: wrk with bench/wrk/single.lua (seed 001 readings, unique) for `--seconds`; figure: 202s per second.
- MQTT: `--publishers` `mosquitto_pub -l` processes (C, as wrk is: a Python publisher took more CPU than tidegate
  on a 2-core machine), each a device publishing unique seed 001 readings with QoS 1 to `devices/<id>/telemetry`
  (up to `--inflight` unacknowledged by the broker), `--messages-per-s` x `--seconds` in all, written to files
  before the window; figure: records that reached tidegate's spool per second during the `--seconds` window
  (spool sequence numbers, so only what tidegate made durable counts, not what the broker queued). Every message
  must then reach the spool before the next round; `backlog_outlasted_window` false means the publishers and the
  broker's queue ran dry within the window, so the figure is a lower bound (raise `--messages-per-s`).

Each round reports the ratio MQTT/HTTP; the headline is the median ratio. CPU seconds of mosquitto, tidegate and
the load generators during each window are recorded to show what bounds the MQTT figure (the broker, the
publishers, or tidegate). Results go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
from tidegate._native import Spool
from tidegate.testing.mosquitto import Mosquitto

from bench.harness import Service, ensure_wrk, free_port, log, run_wrk, wrk_figures


def spooled(data_dir: Path) -> int:
    """Records written to every worker spool of a data dir (durable or about to be: the commit window is 1 ms)."""
    root = data_dir / "spool"
    return sum(Spool.open_read_only(d).stats()["next_seq"] for d in root.glob("w*") if d.is_dir())


def cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def readings(device: str, count: int) -> bytes:
    """`count` unique seed 001 readings of one device, one a line (what `mosquitto_pub -l` publishes)."""
    moment = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
    return "".join(
        f'{{"device_id":"{device}","timestamp":"{stamp}","metrics":{{"temperature":23.5,"humidity":67.2,'
        f'"pressure":1013.25,"seq":{seq}}},"metadata":{{"firmware_version":"2.1.0"}}}}\n'
        for seq in range(count)
    ).encode()


def publishers(work: Path, round_number: int, args: argparse.Namespace) -> tuple[list[tuple[str, Path]], int]:
    """Writes each publisher's readings to a file; returns (device, file) per publisher and how many messages."""
    per_publisher = max(1, int(args.messages_per_s * args.seconds) // args.publishers)
    files = []
    for index in range(args.publishers):
        device = f"bench-{round_number}-{index:03d}"
        path = work / f"{device}.ndjson"
        path.write_bytes(readings(device, per_publisher))
        files.append((device, path))
    return files, per_publisher * args.publishers


def start_publisher(port: int, device: str, path: Path, inflight: int) -> subprocess.Popen[bytes]:
    command = [find_mosquitto_pub(), "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-M", str(inflight)]
    command += ["-i", f"bench-pub-{device}", "-t", f"devices/{device}/telemetry", "-l"]
    with path.open("rb") as lines:
        return subprocess.Popen(command, stdin=lines)


def find_mosquitto_pub() -> str:
    found = shutil.which("mosquitto_pub")
    if found is None:
        raise RuntimeError("bench.mqtt needs mosquitto_pub: apt-get install -y mosquitto-clients")
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-mqtt-"))
    data_dir = work / "data"
    broker = Mosquitto(work / "broker").start()
    port = free_port()
    env = {
        "TIDEGATE_AUTH": "false",
        "TIDEGATE_RATE_PER_DEVICE": "0",
        "TIDEGATE_LOG_FULL_BELOW_RPS": "0",
        "TIDEGATE_MQTT": broker.url,
    }
    command = [sys.executable, "-m", "tidegate", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--workers", str(args.workers)]
    tidegate = Service("tidegate", command, env, port, work / "tidegate.log").start()
    assert broker.proc is not None
    mosquitto = psutil.Process(broker.proc.pid)
    rounds: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while len(broker.subscribers("$share/tidegate/devices/+/events")) < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("tidegate did not subscribe")
            time.sleep(0.1)
        for number in range(args.rounds):
            log(f"round {number + 1}/{args.rounds}: HTTP single readings (wrk -c{args.connections})")
            before = cpu_of(tidegate.processes())
            raw = run_wrk(
                "single.lua",
                tidegate.url + "/api/v1/ingest",
                args.seconds,
                connections=args.connections,
                threads=1,
                env={"BENCH_NONCE": str(number + 1)},
            )
            http = wrk_figures(raw, 1)
            http["tidegate_cpu_s"] = cpu_of(tidegate.processes()) - before

            log(f"round {number + 1}/{args.rounds}: MQTT QoS 1 ({args.publishers} mosquitto_pub publishers)")
            files, published = publishers(work, number + 1, args)
            start_records = spooled(data_dir)
            cpu_tidegate, cpu_broker = cpu_of(tidegate.processes()), cpu_of([mosquitto])
            started = time.monotonic()
            running = [start_publisher(broker.port, device, path, args.inflight) for device, path in files]
            pids = [psutil.Process(process.pid) for process in running]
            cpu_publishers = 0.0
            while time.monotonic() - started < args.seconds:
                cpu_publishers = max(cpu_publishers, cpu_of(pids))  # their CPU times vanish when they exit
                time.sleep(0.05)
            window = time.monotonic() - started
            in_window = spooled(data_dir) - start_records
            cpu = {
                "tidegate_cpu_s": cpu_of(tidegate.processes()) - cpu_tidegate,
                "mosquitto_cpu_s": cpu_of([mosquitto]) - cpu_broker,
                "publishers_cpu_s": max(cpu_publishers, cpu_of(pids)),
            }
            for process in running:
                if process.wait(300) != 0:
                    raise RuntimeError(f"mosquitto_pub exited with {process.returncode}")
            drain_deadline = time.monotonic() + 300
            while spooled(data_dir) - start_records < published and time.monotonic() < drain_deadline:
                time.sleep(0.1)
            drained = spooled(data_dir) - start_records
            if drained != published:
                raise RuntimeError(f"{published} published, {drained} spooled: messages went missing")
            for _, path in files:
                path.unlink()
            mqtt = {
                "records_per_s": in_window / window,
                "published": published,
                "backlog_outlasted_window": in_window < published,
                **cpu,
            }
            rounds.append({"http": http, "mqtt": mqtt, "ratio": mqtt["records_per_s"] / max(http["records_per_s"], 1)})
            log(
                f"  HTTP {http['records_per_s']:,.0f}/s · MQTT {mqtt['records_per_s']:,.0f}/s into the spool "
                f"(backlog outlasted the window: {mqtt['backlog_outlasted_window']}) · ratio {rounds[-1]['ratio']:.2f}"
            )
    finally:
        tidegate.stop()
        broker.stop()
    return {
        "settings": vars(args),
        "rounds": rounds,
        "median_ratio_mqtt_over_http": statistics.median(r["ratio"] for r in rounds) if rounds else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for HTTP")
    parser.add_argument("--publishers", type=int, default=8, help="mosquitto_pub processes, one device each")
    parser.add_argument("--inflight", type=int, default=500, help="QoS 1 messages in flight per publisher")
    parser.add_argument(
        "--messages-per-s", type=float, default=15000, help="messages published per second of window, in all"
    )
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results-mqtt.json"))
    args = parser.parse_args(argv)
    if not ensure_wrk():
        print("bench.mqtt: wrk is needed for the HTTP side (apt-get install wrk)", file=sys.stderr)
        return 2
    results = run(args)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({"median_ratio_mqtt_over_http": results["median_ratio_mqtt_over_http"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
