"""One `tidegate serve` per data dir and per address: checked before anything starts.

Granian listens with SO_REUSEPORT, so a second server on a taken port would share it with the first, and its
workers would claim further spool directories of a shared data dir, with a delivery process and settings of its
own. `tidegate serve` therefore holds an instance lock on the data dir for its whole life (the delivery process
holds `delivery.lock`), and checks that the address is free before Granian binds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

LOCK_NAME = "tidegate.lock"


class StartRefused(RuntimeError):
    """Another instance holds the data dir, or the address is taken: the message says which and what to do."""


def hold_instance_lock(data_dir: Path, name: str = LOCK_NAME, what: str = "tidegate") -> IO[str]:
    """Takes `<data_dir>/<name>` (flock, released when this process is gone) and writes this process's pid into
    it. Keep the returned file open for as long as the instance runs. `what` names the holder in the refusal."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    lock = path.open("a+")  # not "w": the holder's pid must survive a refused attempt
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StartRefused(
            f"another {what} (pid {holder}) serves the data dir {data_dir.resolve()}; "
            f"stop it, or give this instance its own --data-dir"
        ) from None
    # The pid only names the holder in another instance's refusal: a disk too full to take it must not stop the
    # instance (the delivery process crashed at start in a loop while the chaos suite's disk was full).
    # Written past the file object's buffer, so that a write the disk refused is not tried again at close.
    with contextlib.suppress(OSError):
        os.ftruncate(lock.fileno(), 0)
        os.write(lock.fileno(), f"{os.getpid()}\n".encode())  # appended ("a+"): at 0 after the truncate
    return lock


def check_address_free(host: str, port: int) -> None:
    """Binds `host:port` once without SO_REUSEPORT, so that a listener already there (even one that set
    SO_REUSEPORT, as Granian does) makes the bind fail. SO_REUSEADDR keeps a restart from being refused for
    connections of a previous run still in TIME_WAIT."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartRefused(f"cannot listen on {host}:{port}: {error}") from None
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind(address)
        except OSError as error:
            reason = "already in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise StartRefused(
                f"cannot listen on {host}:{port}: {reason} (another tidegate, or another program, listens there); "
                f"stop it, or choose another --port"
            ) from None
