"""`tidegate serve` refuses to start beside another instance: same data dir, or a port already taken."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tidegate.config import Settings
from tidegate.delivery.process import Delivery
from tidegate.delivery.status import status_path
from tidegate.instance import hold_instance_lock
from tidegate.testing.processes import free_port
from tidegate.testing.server import Server

from tests.conftest import reading


def serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Runs `tidegate serve` expecting it to refuse: fails the test if it still runs after 30 s."""
    command = [sys.executable, "-m", "tidegate", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "TIDEGATE_AUTH": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the second `tidegate serve` kept running:\n{err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def still_serving(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/health/ready").status_code == 200
        answer = http.post("/api/v1/ingest", json=reading("refusals-1"))
        assert answer.status_code == 202 and answer.json()["status"] == "accepted"


def test_a_second_instance_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    with Server(tmp_path, {"TIDEGATE_AUTH": "false"}) as first:
        assert first.proc is not None
        refused = serve(tmp_path, free_port())
        assert refused.returncode != 0
        message = refused.stderr
        assert "another tidegate" in message and str(tmp_path.resolve()) in message, message
        assert re.search(rf"\bpid {first.proc.pid}\b", message), message
        assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["w0", "w0h"], (
            "no second worker spool was claimed"
        )
        still_serving(first)


def test_a_taken_port_is_refused(tmp_path: Path) -> None:
    with Server(tmp_path / "first", {"TIDEGATE_AUTH": "false"}) as first:
        refused = serve(tmp_path / "second", first.port)
        assert refused.returncode != 0
        assert f"127.0.0.1:{first.port}" in refused.stderr and "in use" in refused.stderr, refused.stderr
        assert not (tmp_path / "second" / "spool").exists(), "nothing was started for the refused instance"
        still_serving(first)


def test_a_port_held_by_another_program_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        refused = serve(tmp_path, port)
    assert refused.returncode != 0
    assert f"127.0.0.1:{port}" in refused.stderr and "in use" in refused.stderr, refused.stderr


def test_the_instance_lock_is_held_on_a_full_disk(tmp_path: Path) -> None:
    """The pid written into the lock only names the holder: a disk that cannot take it (here the lock file is
    /dev/full, whose every write fails with ENOSPC, as on a full disk) must not stop an instance from starting (the
    delivery process crashed at start, and again at each restart, while the chaos suite's disk was full)."""
    (tmp_path / "tidegate.lock").symlink_to("/dev/full")
    held = hold_instance_lock(tmp_path)
    try:
        with (tmp_path / "tidegate.lock").open() as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: another instance is refused
    finally:
        held.close()


def test_the_delivery_status_on_a_full_disk_is_said_once_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The delivery process writes its status every second: on a full disk that was a traceback a second. The
    status is written to a temporary file first, here /dev/full (every write fails with ENOSPC), then a file."""
    (tmp_path / "delivery").mkdir()
    temporary = status_path(tmp_path).with_suffix(".tmp")
    temporary.symlink_to("/dev/full")
    delivery = Delivery(Settings(data_dir=tmp_path))
    with caplog.at_level(logging.INFO, logger="tidegate"):
        for _ in range(3):
            asyncio.run(delivery._write_status())
    failures = [r for r in caplog.records if "status_write_failed" in r.getMessage()]
    assert len(failures) == 1, caplog.text
    temporary.unlink()
    with caplog.at_level(logging.INFO, logger="tidegate"):
        asyncio.run(delivery._write_status())
    assert "status_write_recovered" in caplog.text
    assert json.loads(status_path(tmp_path).read_text())["pid"] == os.getpid()
