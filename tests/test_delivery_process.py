"""Delivery in its own process: `tidegate serve --kafka` supervises one delivery process per data dir, which drains
every worker's spool; killed, it is restarted and goes on from its checkpoints. Real server, real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tidegate.delivery.status import running_delivery_pid
from tidegate.testing.broker import Broker, consume_all
from tidegate.testing.server import Server

from tests.conftest import reading

TOPICS = ("telemetry-raw", "events-raw", "ingest-dlq")


def wait_for_delivery(data_dir: Path, other_than: int | None = None) -> int:
    """The pid of a running delivery process (a new one, with `other_than`)."""
    pid = running_delivery_pid(data_dir, other_than=other_than)
    assert pid is not None, f"no delivery process (other than {other_than}) reported"
    return pid


async def delivered_ids(bootstrap: str, wanted: set[str], timeout: float = 30) -> set[str]:
    """Event ids in the telemetry topic, read again until every wanted one is there or `timeout` passed (counts
    are no guide: a restarted delivery process may send a range twice)."""
    deadline = time.monotonic() + timeout
    while True:
        records = await consume_all(bootstrap, "telemetry-raw", timeout=10)
        ids = {json.loads(r.value)["event_id"] for r in records}
        if wanted <= ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.5)


def nice_values(pid: int) -> set[int]:
    """The nice of each of the process's threads (a thread has its own on Linux); one that ends while they are read
    is left out."""
    nices = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            nices.add(int(stat.read_text().rpartition(")")[2].split()[16]))
    return nices


def autogroups() -> bool:
    """Whether this kernel shares the CPU between sessions first (autogroups), where a nice counts only within its
    session."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def autogroup_nice(pid: int) -> int:
    """The nice of the process's session (`/proc/<pid>/autogroup`: `/autogroup-<n> nice <nice>`)."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


def test_a_delivery_process_leading_its_own_session_lowers_the_session(tmp_path: Path) -> None:
    # As a service of its own (a session leader, apart from the workers): with autogroups its nice alone would
    # count only within its session, and it would run level with the workers.
    command = [sys.executable, "-m", "tidegate", "deliver", "--data-dir", str(tmp_path)]
    process = subprocess.Popen(command, start_new_session=True)
    try:
        pid = wait_for_delivery(tmp_path)
        assert pid == process.pid
        assert nice_values(pid) == {10}
        if autogroups():
            assert autogroup_nice(pid) == 10
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_delivery_process_drains_every_worker_and_is_restarted_when_killed(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        broker.create_topics(list(TOPICS), partitions=3)
        env = {"TIDEGATE_AUTH": "false", "TIDEGATE_KAFKA": broker.bootstrap, "TIDEGATE_SPOOL_SEGMENT_BYTES": "32768"}
        with Server(tmp_path / "server", env, workers=2) as server, httpx.Client(base_url=server.url) as http:
            pid = wait_for_delivery(server.data_dir)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"deliver" in cmdline, "a process of its own, not a worker"
            assert server.proc is not None and pid != server.proc.pid
            # When the CPU runs out, the kernel serves the workers first: delivery waits (`delivery_nice`).
            assert nice_values(pid) == {10}
            assert nice_values(server.proc.pid) == {0}
            if autogroups():  # started by `tidegate serve`, it shares the workers' session, which is left alone
                assert autogroup_nice(server.proc.pid) == 0
            acknowledged: set[str] = set()
            for kill in range(4):
                for i in range(150):
                    response = http.post(
                        "/api/v1/ingest",
                        json=reading(f"dev-{i % 9}", metrics={"kill": kill, "i": i}),
                        headers={"Connection": "close"},  # spread over both workers
                    )
                    assert response.status_code == 202
                    acknowledged.add(response.json()["event_id"])
                if kill < 3:
                    os.kill(pid, signal.SIGKILL)
                    pid = wait_for_delivery(server.data_dir, other_than=pid)
                    assert nice_values(pid) == {10}, "a restarted delivery process runs behind the workers too"
            assert sorted(p.name for p in (server.data_dir / "spool").iterdir()) == ["w0", "w0h", "w1", "w1h"]
            delivered = asyncio.run(delivered_ids(broker.bootstrap, acknowledged))
            assert acknowledged <= delivered, f"lost: {len(acknowledged - delivered)}"
            metrics = http.get("/metrics").text
            assert "tidegate_delivery_up 1" in metrics.replace(".0", "")
        assert "the delivery process exited" in server.log_tail(200)
