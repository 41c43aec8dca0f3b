"""The delivery process draining a backlog: records/s from spool to broker-acknowledged, and its CPU and RSS.

    python bench/delivery_drain.py                      # 1,000,000 records, 4 partitions
    python bench/delivery_drain.py --records 200000 --workers 2

A backlog of `--records` seed-001 readings (values of about 300 bytes) is spooled first, the way workers spool
them (`--workers` spool directories, one fsync per 1000-record body), with no Kafka configured. Then `tidegate
deliver` is started as its own process against a real Kafka-protocol broker (tansu, memory storage) and timed
until every spool's checkpoint covers every record. Its CPU time (user + system, from /proc) and RSS are sampled
every 100 ms. The records are consumed back and counted unless `--no-verify`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]

import tidegate  # noqa: E402
from tidegate.delivery.spool import worker_spool_dirs  # noqa: E402
from tidegate.testing.broker import Broker, consume_all  # noqa: E402

from bench.spool_to_kafka import TOPIC, make_record_sets  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds_and_rss(pid: int) -> tuple[float, int]:
    """User + system CPU seconds and resident bytes of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return cpu, rss


def spool_backlog(data_dir: Path, records: int, workers: int) -> int:
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    spools = [tidegate.Spool(data_dir / "spool" / f"w{i}") for i in range(workers)]
    for index, part in enumerate(make_record_sets(validator, records)):
        spool = spools[index % workers]
        spool.append(part)
        spool.commit()
    return sum(s.stats()["next_seq"] for s in spools)


def acked(data_dir: Path) -> int:
    return sum(tidegate.Spool.open_read_only(d).acked_seq for d in worker_spool_dirs(data_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1, help="worker spools the backlog is spread over")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidegate-drain-") as tmp, Broker(Path(tmp) / "broker") as broker:
        broker.create_topics([TOPIC], partitions=args.partitions)
        broker.create_topics(["events-raw", "ingest-dlq"], partitions=1)
        data_dir = Path(tmp) / "data"
        began = time.perf_counter()
        total = spool_backlog(data_dir, args.records, args.workers)
        spool_bytes = sum(tidegate.Spool.open_read_only(d).stats()["bytes"] for d in worker_spool_dirs(data_dir))
        print(
            f"backlog: {total:,} records, {spool_bytes / 1e6:,.0f} MB in {args.workers} spool(s), "
            f"spooled in {time.perf_counter() - began:.1f} s; {args.partitions} partitions"
        )
        command = [
            sys.executable,
            "-m",
            "tidegate",
            "deliver",
            "--data-dir",
            str(data_dir),
            "--kafka",
            broker.bootstrap,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        log = (Path(tmp) / "deliver.log").open("wb")
        assert broker.pid is not None
        broker_cpu_before, _ = cpu_seconds_and_rss(broker.pid)
        began = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float, int]] = []
        try:
            while acked(data_dir) < total:
                if process.poll() is not None:
                    raise SystemExit(f"tidegate deliver exited with {process.returncode}")
                samples.append((time.perf_counter() - began, *cpu_seconds_and_rss(process.pid)))
                if samples[-1][0] > 900:
                    raise SystemExit("not drained within 15 minutes")
                time.sleep(0.1)
            elapsed = time.perf_counter() - began
            cpu, rss = cpu_seconds_and_rss(process.pid)
            broker_cpu = cpu_seconds_and_rss(broker.pid)[0] - broker_cpu_before
        finally:
            process.terminate()
            process.wait(30)
        peak_rss = max([rss, *(s[2] for s in samples)])
        print(
            f"drained: {total / elapsed:,.0f} records/s ({total:,} in {elapsed:.2f} s, from process start to the last "
            f"checkpoint); delivery process CPU {cpu:.1f} s ({100 * cpu / elapsed:.0f}% of one core), "
            f"RSS peak {peak_rss / 1e6:.0f} MB, at the end {rss / 1e6:.0f} MB; the broker (tansu, same machine) "
            f"CPU {broker_cpu:.1f} s ({100 * broker_cpu / elapsed:.0f}% of one core)"
        )
        if args.verify:
            consumed = asyncio.run(consume_all(broker.bootstrap, TOPIC, expected=total, timeout=120))
            ids = {dict(r.headers)["event_id"] for r in consumed}
            print(f"consumed back: {len(consumed):,} records, {len(ids):,} distinct event ids of {total:,}")
            if len(ids) != total:
                raise SystemExit("records missing in Kafka")


if __name__ == "__main__":
    main()
