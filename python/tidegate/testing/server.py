"""A real tidegate server for tests: `python -m tidegate serve` (Granian, RSGI) in a subprocess on a free port."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tidegate.instance import LOCK_NAME
from tidegate.testing.processes import free_port


def arm_spool_write_failures(data_dir: Path, count: int) -> Path:
    """Has a worker serving `data_dir` with fault injection on make its next `count` writes to its main spool fail (the
    setting `fault_injection`); returns the trigger file, which the worker deletes once it took it."""
    return _arm_fault(data_dir, "spool-write-failures", count)


def arm_spool_commit_delay(data_dir: Path, delay_ms: int) -> Path:
    """Has a worker serving `data_dir` with fault injection on start every commit's fsync `delay_ms` late, as on a
    disk that stalls, until armed again with 0 or the worker dies; returns the trigger file, which the worker deletes
    once it took it."""
    return _arm_fault(data_dir, "spool-commit-delay", delay_ms)


def fault_taken(trigger: Path) -> bool:
    """Whether a worker took an armed fault: it deletes the trigger file as it does."""
    return not trigger.exists()


def _arm_fault(data_dir: Path, name: str, value: int) -> Path:
    """Writes a fault's trigger file (`Gateway._take_fault` looks for it about once a second). Written whole under
    another name and renamed, so that no worker reads a number half written ("250" as "2")."""
    trigger = data_dir / "faults" / name
    trigger.parent.mkdir(parents=True, exist_ok=True)
    written = trigger.with_name(f"{trigger.name}.{os.getpid()}.tmp")
    written.write_text(str(value))
    written.replace(trigger)
    return trigger


class Server:
    """Starts `tidegate serve` with `TIDEGATE_*` settings from `env`; `start()` returns once /health/ready is 200
    (or /health/live, for a server expected not to be ready)."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None, *, workers: int = 1) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def keys(self, *device_ids: str) -> dict[str, str]:
        """Creates a key per device with the real CLI; returns device id → key."""
        out = subprocess.run(
            [sys.executable, "-m", "tidegate", "keys", "add", "--data-dir", str(self.data_dir), *device_ids],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return dict(line.split(" ", 1) for line in out.strip().splitlines())

    def operator_key(self, name: str = "tests") -> str:
        """Creates an operator key with the real CLI (`tidegate keys add-operator`); returns it."""
        command = [sys.executable, "-m", "tidegate", "keys", "add-operator", "--data-dir", str(self.data_dir), name]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    def start(self, timeout: float = 30.0, *, until: str = "/health/ready") -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TIDEGATE_LOG_FULL_BELOW_RPS": "0", **self.env}
        command = [
            sys.executable,
            "-m",
            "tidegate",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tidegate exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + until, timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop(kill=True)
        raise RuntimeError(f"tidegate did not answer {until} with 200:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False, group: bool = True, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful drain) or SIGKILL the whole process group, or with `group` False signal the main process
        alone, as a container runtime stops its PID 1 (it then stops the rest); returns the exit code. What has not
        stopped after `timeout` seconds is killed."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._wait_released(timeout)
        return proc.returncode

    def _wait_released(self, timeout: float) -> None:
        """Waits until no process of the stopped instance holds the data dir's instance lock. The workers share the
        main process's lock (they are forked from it), and a worker SIGKILLed in the middle of an fsync dies only
        once the fsync returns, which a slow disk can make last past the main process's end (the likeliest reading of
        a restart refused at once, `another tidegate ... serves the data dir`, in CI's scenario k on 2026-12-03,
        on a machine whose disk stalled for 50-300 ms at times)."""
        path = self.data_dir / LOCK_NAME
        if not path.exists():
            return
        deadline = time.monotonic() + timeout  # a hang guard: the restart after it reports what still holds it
        with path.open("a") as probe:
            while True:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)
                    continue
                fcntl.flock(probe, fcntl.LOCK_UN)
                return

    def worker_pids(self) -> list[int]:
        """The running HTTP workers' process ids, oldest first: the main process's children but the delivery
        process's supervisor (read from `/proc`, Linux; empty once the server stopped)."""
        if self.proc is None:
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except FileNotFoundError:
            return []
        started: dict[int, int] = {}
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                # `/proc/<pid>/stat` field 22: the start time, in clock ticks since boot.
                ticks = int(Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[19])
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended while being read
            if b"deliver" not in command:
                started[int(child)] = ticks
        return sorted(started, key=started.__getitem__)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
