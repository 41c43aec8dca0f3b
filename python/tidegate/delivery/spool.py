"""Asynchronous group commit over the native spool.

Appends are written at once (native, GIL released); durability is awaited. A native committer thread
(`Spool.group_commit`) runs one fsync at a time, after a commit window in which requests gather, and wakes the
event loop once per commit through a descriptor the loop watches: no task, timer or thread hop per commit. Every
append a commit covers is released together: many concurrent requests share one fsync, and none is released
before its records are on disk.

A failed commit fails every waiter (over-failing is safe: a record written after all is a duplicate of the
client's retry, with the same event_id; under-failing would be a lost acknowledgement). The `settle` hook (the
native gateway's, `Gateway.settle`) learns each commit's outcome synchronously, before any waiter is woken and
before any other request can run: after a failure it releases the dedup claims of every request still waiting, so
a retry is not mistaken for a duplicate of a record that never became durable; after a success it commits those
made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tidegate._native import GroupCommit, Records, Spool
from tidegate.loop import high_context, poll_between_callbacks

#: A worker's spools by lane (`tidegate._native.Gateway`): the main one, and high priority's own.
LANE_NAMES = ("main", "high")

#: A worker's high-priority spool is its directory's name with this suffix (`spool/w<N>h`), beside it. No `-`: the
#: archive's file names are `<writer>-<spool>-<first>-<end>...`, read back by `tidegate.archive.compaction`.
HIGH_LANE_SUFFIX = "h"

#: The share of `spool_quota_bytes` a worker's high-priority spool holds (the main spool has the rest): alarms and
#: the like are a small part of a fleet's bytes, and records that do not fit go to the main spool.
HIGH_LANE_QUOTA_SHARE = 0.125


def worker_spool_dirs(data_dir: Path) -> list[Path]:
    """Every worker's spool directories under a data dir (`spool/w<N>` and `spool/w<N>h`), in order."""
    root = data_dir / "spool"
    return sorted(p for p in root.glob("w*") if p.is_dir()) if root.is_dir() else []


#: In each spool directory: every record below this sequence is in the archive (the archive writer publishes it
#: once the files holding them are durable; the worker's cleanup reads it).
ARCHIVED_FILE = "archived"


def read_archived(spool_dir: Path) -> int:
    """What the archive writer published for this spool (0 when nothing yet, or unreadable: nothing is deleted)."""
    try:
        return int((spool_dir / ARCHIVED_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def publish_archived(spool_dir: Path, seq: int) -> None:
    """Publishes that every record of the spool below `seq` is in the archive (a temporary file and a rename:
    readers see the old or the new number whole). Written after the archive's files are durable, so it is never
    ahead of them; no fsync: after a power loss an older number only keeps segments longer."""
    temporary = spool_dir / f"{ARCHIVED_FILE}.tmp"
    temporary.write_text(str(seq))
    temporary.replace(spool_dir / ARCHIVED_FILE)


def cleanup_horizon(spool_dir: Path, *, acked_seq: int | None, archive: bool) -> int | None:
    """The sequence below which cleanup may delete segments of the spool in `spool_dir`: the least of what each
    reader of the spool has passed (Kafka delivery's checkpoint `acked_seq`, None without Kafka; the archive's
    published sequence). None when neither is configured: then nothing is ever acknowledged, and nothing
    deleted."""
    passed = [] if acked_seq is None else [acked_seq]
    if archive:
        passed.append(read_archived(spool_dir))
    return min(passed) if passed else None


class SpoolWriter:
    """Writes records to a spool and awaits their durability with group commit."""

    def __init__(
        self,
        spool: Spool,
        *,
        commit_window_ms: float = 1.0,
        settle: Callable[[int, bool], None] | None = None,
        urgent: bool = False,
    ) -> None:
        self.spool = spool
        self.commit_window_ms = commit_window_ms
        #: Its commits are looked for between the loop's callbacks, not only when the loop next waits for I/O
        #: (`tidegate.loop.poll_between_callbacks`): high priority's spool.
        self.urgent = urgent
        #: Told each commit's outcome `(durable_seq, failed)` before any waiter wakes (`Gateway.settle`).
        self.settle = settle
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._committer: GroupCommit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failures_seen = 0
        self.commits = 0

    async def start(self) -> None:
        self._committer = self.spool.group_commit(self.commit_window_ms)
        self._loop = asyncio.get_running_loop()
        # In the loop's first lane (`tidegate.loop`): a commit's news wakes every request waiting on it, high
        # priority's among them, and costs the loop nothing it would not spend anyway.
        first_lane = high_context(contextvars.copy_context())
        first_lane.run(self._loop.add_reader, self._committer.fileno(), self._on_commit)
        if self.urgent:
            poll_between_callbacks(self._loop, self._committer.has_news, self._on_commit)

    async def stop(self) -> None:
        """Commits whatever is pending, then stops the committer."""
        if self._committer is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._committer.fileno())
            if self.urgent:
                poll_between_callbacks(self._loop, None, self._on_commit)
            await asyncio.to_thread(self._committer.stop)
            self._on_commit()  # a commit that finished after the loop last looked
            self._committer = None
        try:
            durable = await asyncio.to_thread(self.spool.commit)
        except OSError as error:
            self._fail(error)
            raise
        self._release(durable)

    async def write(self, records: Records) -> int:
        """Appends `records` and returns once it is durable; returns the sequence after its last record.
        Raises SpoolFull when the quota is reached (none of the records was written then), OSError when the
        commit failed (none of it is acknowledged)."""
        end = self.spool.append(records)
        await self.durable(end)
        return end

    async def durable(self, end: int) -> None:
        """Returns once every record below `end` is durable; raises OSError if a commit failed meanwhile (the
        gateway's appends are awaited so: `Gateway.accept` returns the sequence)."""
        if self.spool.durable_seq >= end:
            return
        if self._committer is None:
            if self.settle is not None:
                self.settle(self.spool.durable_seq, True)
            raise OSError(errno.ESHUTDOWN, "the spool writer is stopped: nothing more is made durable")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((end, future))
        self._committer.request()
        await future

    def _on_commit(self) -> None:
        """The committer's descriptor is readable: one commit (or more) finished."""
        if self._committer is None:
            return
        durable, commits, failures, error_number, message = self._committer.take()
        self.commits = commits
        if failures > self._failures_seen:
            # Every waiter fails, those a later successful commit covered too (over-failing is safe, see above).
            self._failures_seen = failures
            self._fail(OSError(error_number or errno.EIO, message or "spool commit failed"))
        self._release(durable)
        if self._waiters:
            self._committer.request()

    def _release(self, durable: int) -> None:
        if self.settle is not None:
            self.settle(durable, False)
        still_waiting = []
        for waiter in self._waiters:
            end, future = waiter
            if end <= durable:
                if not future.done():
                    future.set_result(None)
            else:
                still_waiting.append(waiter)
        self._waiters = still_waiting

    def _fail(self, error: BaseException) -> None:
        if self.settle is not None:
            self.settle(self.spool.durable_seq, True)
        waiters, self._waiters = self._waiters, []
        for _, future in waiters:
            if not future.done():
                future.set_exception(error)


@contextlib.asynccontextmanager
async def open_writer(
    spool: Spool, *, commit_window_ms: float = 1.0, settle: Callable[[int, bool], None] | None = None
) -> AsyncIterator[SpoolWriter]:
    writer = SpoolWriter(spool, commit_window_ms=commit_window_ms, settle=settle)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
