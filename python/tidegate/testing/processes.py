"""What the test peers (tidegate, tansu, mosquitto) share: a free loopback port, and child processes that never
outlive the test run."""

from __future__ import annotations

import atexit
import contextlib
import socket
import subprocess

__all__ = ["LOOPBACK", "free_port", "track", "untrack"]

LOOPBACK = "127.0.0.1"

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(timeout=5)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def track(proc: subprocess.Popen[bytes]) -> None:
    """Kill `proc` at exit if it is still running then."""
    _live.add(proc)


def untrack(proc: subprocess.Popen[bytes]) -> None:
    _live.discard(proc)
