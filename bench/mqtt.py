"""MQTT QoS 1 readings/s into the spool against HTTP single readings/s, side by side in one session (issue 12).

    python -m bench.mqtt                      # 3 rounds of 10 s each way (about 2 minutes)
    python -m bench.mqtt --seconds 2 --rounds 1   # smoke run

One session starts mosquitto (Debian's, `tidegate.testing.mosquitto`) and `tidegate serve --mqtt` (auth off,
no rate limit, `--workers`), then alternates, round by round:

- HTTP: wrk with bench/wrk/single.lua (seed 001 readings, unique) for `--seconds`; figure: 202s per second.
- MQTT: `--publishers` processes, each a paho client publishing unique seed 001 readings with QoS 1 to
  `devices/<id>/telemetry` (up to `--inflight` unacknowledged by the broker), for `--seconds`; figure: records
  that reached tidegate's spool per second during the window (spool sequence numbers, so only what tidegate
  made durable counts, not what the broker queued). The backlog drains before the next round.

Each round reports the ratio MQTT/HTTP; the headline is the median ratio. CPU seconds of mosquitto, tidegate and
the load generators during each window are recorded to show what bounds the MQTT figure (the broker, the paho
publishers, or tidegate: aiomqtt's per-message Python and the pipeline). Results go to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil  # type: ignore[import-untyped,unused-ignore]
from paho.mqtt.enums import CallbackAPIVersion
from tidegate._native import Spool
from tidegate.testing.mosquitto import Mosquitto

from bench.harness import Service, ensure_wrk, free_port, log, run_wrk, wrk_figures

DEVICES = 1000


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


def publish(port: int, index: int, seconds: float, inflight: int, counts: Any) -> None:
    """One publisher process: QoS 1 readings for `seconds`, at most `inflight` awaiting the broker's PUBACK."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}-{os.getpid()}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    waiting: deque[paho.MQTTMessageInfo] = deque()
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        device = f"bench-{(sent * 7919 + index) % DEVICES:05d}"
        moment = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
        body = (
            f'{{"device_id":"{device}","timestamp":"{stamp}","metrics":{{"temperature":23.5,"humidity":67.2,'
            f'"pressure":1013.25,"seq":{index * 1_000_000_000 + sent}}},"metadata":{{"firmware_version":"2.1.0"}}}}'
        )
        waiting.append(client.publish(f"devices/{device}/telemetry", body, qos=1))
        sent += 1
        while len(waiting) >= 2 * inflight:
            waiting.popleft().wait_for_publish(30)
    while waiting:
        waiting.popleft().wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    counts[index] = sent


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

            log(f"round {number + 1}/{args.rounds}: MQTT QoS 1 ({args.publishers} publishers)")
            counts = multiprocessing.Manager().dict()
            publishers = [
                multiprocessing.Process(target=publish, args=(broker.port, i, args.seconds, args.inflight, counts))
                for i in range(args.publishers)
            ]
            start_records = spooled(data_dir)
            cpu_tidegate, cpu_broker = cpu_of(tidegate.processes()), cpu_of([mosquitto])
            started = time.monotonic()
            for process in publishers:
                process.start()
            pids = [psutil.Process(p.pid) for p in publishers if p.pid is not None]
            time.sleep(args.seconds)
            window = time.monotonic() - started
            in_window = spooled(data_dir) - start_records
            cpu = {
                "tidegate_cpu_s": cpu_of(tidegate.processes()) - cpu_tidegate,
                "mosquitto_cpu_s": cpu_of([mosquitto]) - cpu_broker,
                "publishers_cpu_s": cpu_of(pids),
            }
            for process in publishers:
                process.join()
            published = sum(counts.values())
            drain_deadline = time.monotonic() + 120
            while spooled(data_dir) - start_records < published and time.monotonic() < drain_deadline:
                time.sleep(0.1)
            drained = spooled(data_dir) - start_records
            mqtt = {
                "records_per_s": in_window / window,
                "published_per_s": published / window,
                "published": published,
                "spooled_after_drain": drained,
                **cpu,
            }
            rounds.append({"http": http, "mqtt": mqtt, "ratio": mqtt["records_per_s"] / max(http["records_per_s"], 1)})
            log(
                f"  HTTP {http['records_per_s']:,.0f}/s · MQTT {mqtt['records_per_s']:,.0f}/s into the spool "
                f"(published {mqtt['published_per_s']:,.0f}/s) · ratio {rounds[-1]['ratio']:.2f}"
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
    parser.add_argument("--publishers", type=int, default=2, help="MQTT publisher processes")
    parser.add_argument("--inflight", type=int, default=500, help="QoS 1 messages in flight per publisher")
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
