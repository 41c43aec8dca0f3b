"""A real MQTT broker for tests: Debian's `mosquitto` on a free loopback port, with a generated configuration.

`Mosquitto(work_dir).start()` writes `mosquitto-<port>.conf` (a loopback listener, persistence under the work dir,
sessions that keep up to `max_queued` messages while their client is away), runs `mosquitto -c` and returns once
the broker answered a real MQTT CONNECT with a CONNACK. The broker's log goes to `mosquitto-<port>.log`.
`stop()` is SIGTERM (mosquitto saves its persistence file), `stop(kill=True)` SIGKILL. Anonymous clients are
allowed unless a password file is given, and an ACL file restricts topics when given.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tidegate.testing.processes import LOOPBACK, free_port, track, untrack

__all__ = ["Mosquitto", "MosquittoError", "find_mosquitto"]


class MosquittoError(RuntimeError):
    """The broker could not be found or started."""


def find_mosquitto() -> str:
    """`mosquitto` on PATH, or Debian's /usr/sbin/mosquitto (sbin is not on every PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise MosquittoError("no mosquitto binary: apt-get install -y mosquitto (the README's test command does)")
    return found


def _connack(port: int, timeout: float) -> bytes:
    """Sends an MQTT 3.1.1 CONNECT (clean session, client id `probe`) and returns the CONNACK packet."""
    client_id = b"tidegate-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        answer = sock.recv(4)
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return answer


class Mosquitto:
    """A mosquitto process on `127.0.0.1:<port>`; see the module docstring. Later starts reuse the port."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        max_queued: int = 1_000_000,
        startup_timeout: float = 10.0,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.max_queued = max_queued
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.work_dir / f"mosquitto-{self.port}.conf"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"mosquitto-{self.port}.log"

    def config(self) -> str:
        persistence = self.work_dir / f"mosquitto-{self.port}-data"
        persistence.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            # As root mosquitto would switch to the `mosquitto` user, who cannot write the work dir.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {persistence}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "connection_messages true",
            f"max_queued_messages {self.max_queued}",
            "max_inflight_messages 100",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Mosquitto:
        if self.running:
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        log = (self.work_dir / f"mosquitto-{self.port}.stdout").open("ab")
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        track(self.proc)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MosquittoError(f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if _connack(self.port, 1.0)[:2] == b"\x20\x02":
                    return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise MosquittoError(f"mosquitto did not answer CONNECT on port {self.port}: {self.log_tail()}")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        untrack(proc)

    def subscribers(self, topic_filter: str) -> set[str]:
        """The client ids that subscribed to `topic_filter` (as given, `$share/...` included), from the log."""
        clients = set()
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                fields = line.split(" ")
                if len(fields) == 4 and fields[3] == topic_filter and fields[2].isdigit():
                    clients.add(fields[1])
        return clients

    def log_tail(self, lines: int = 30) -> str:
        texts = []
        for path in (self.log_path, self.work_dir / f"mosquitto-{self.port}.stdout"):
            with contextlib.suppress(FileNotFoundError):
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
