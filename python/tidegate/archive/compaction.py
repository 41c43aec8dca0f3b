"""Compaction: when traffic is light, the writer makes a small file per partition per flush (up to 3,600 an hour in
a partition), and every query opens them all. Once a partition's hour is over, the writer that made its files
copies their rows into one file (sorted by event id, in row groups) and leaves them where they are: nothing is
overwritten or deleted.

The compacted file's name says which files it supersedes, so readers need nothing else to skip them:

    c-<writer>-<spool>-<first seq>-<end seq>.parquet

supersedes every file of that writer and spool in the same directory whose spool range lies within
`[first, end)`. That is exactly the files it was made from, because it is made only from ranges the writer has
finished (below its cursor: every file of them is written, and ranges are never written again once complete), and
takes every such file of the directory not already superseded; a file written later comes from a later range.
A compacted file is written like any other (temporary name, fsync, link that never replaces a file), so after a
crash there is the compacted file and its sources (readers take the compacted file), or the sources alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tidegate.archive.store import ROW_GROUP_ROWS, ArchiveStore

__all__ = [
    "COMPACTED_NAME",
    "FILE_NAME",
    "MAX_COMPACTED_BYTES",
    "SMALL_FILE_BYTES",
    "CompactionJob",
    "compact",
    "compact_apart",
    "plan",
    "visible",
]

#: A file the writer made from one spool range (`<part>of<parts>`: one of the range's files).
FILE_NAME = re.compile(r"^(?P<writer>[^-]+)-(?P<spool>[^-]+)-(?P<first>\d+)-(?P<end>\d+)-(?P<part>\d+)of(?P<parts>\d+)")
#: A compacted file (see the module docstring).
COMPACTED_NAME = re.compile(r"^c-(?P<writer>[^-]+)-(?P<spool>[^-]+)-(?P<first>\d+)-(?P<end>\d+)\.parquet$")

_HOUR = re.compile(r"/ingest_date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})$")


def _split(relative: str) -> tuple[str, str]:
    directory, _, name = relative.rpartition("/")
    return directory, name


def visible(files: list[str]) -> list[str]:
    """`files` (paths relative to the archive's root) without those a compacted file among them supersedes."""
    spans: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for relative in files:
        directory, name = _split(relative)
        match = COMPACTED_NAME.match(name)
        if match is not None:
            spans[(directory, match["writer"], match["spool"])].append((int(match["first"]), int(match["end"])))
    if not spans:
        return files
    kept = []
    for relative in files:
        directory, name = _split(relative)
        match = FILE_NAME.match(name)
        if match is not None:
            first, end = int(match["first"]), int(match["end"])
            covering = spans.get((directory, match["writer"], match["spool"]), [])
            if any(low <= first and end <= high for low, high in covering):
                continue
        kept.append(relative)
    return kept


def _hour_end_ms(directory: str) -> int | None:
    match = _HOUR.search(directory)
    if match is None:
        return None
    start = dt.datetime.fromisoformat(f"{match['date']}T{match['hour']}:00:00+00:00")
    return int(start.timestamp() * 1000) + 3_600_000


#: A file of at most this many bytes is small: worth compacting (a full 100,000-record file is about 13 MB).
SMALL_FILE_BYTES = 1 << 20
#: A compacted file is made of at most this many bytes of small files (tens of thousands of rows, about as many as
#: a full file holds): compaction holds them all decoded, and they decode to about 8 times their size. Compacting
#: the bench's hour of small files (72 MB in 442), Arrow's memory pool peaked at 284 MB with runs of up to 64 MiB
#: sorted whole, 194 MB sorted a row group at a time, 138 MB with runs of 16 MiB and 49 MB with 4 MiB.
MAX_COMPACTED_BYTES = 8 << 20


@dataclass(frozen=True)
class CompactionJob:
    """The runs of small files one writer's spool has to compact, with all a process needs to write them: the job is
    handed to a short-lived process of its own (`compact_apart`)."""

    store: ArchiveStore
    writer: str
    spool: str
    #: Each run's directory and files (first seq, end seq, path relative to the archive's root), in spool order.
    runs: tuple[tuple[str, tuple[tuple[int, int, str], ...]], ...]
    #: Rows per row group of the compacted files (`ROW_GROUP_ROWS`, read when the job is planned).
    row_group_rows: int


def plan(
    store: ArchiveStore,
    writer: str,
    spool: str,
    cursor: int,
    *,
    before_ms: int,
    min_files: int,
) -> CompactionJob | None:
    """What to compact of the small files of `writer` and `spool` below `cursor`, in each partition whose ingest
    hour ended before `before_ms`: runs of at least `min_files` consecutive ones (by spool range) not yet
    superseded; None when there is nothing. Reads only the listing.

    A compacted file's range must hold no file but its sources (any other file in it would be hidden from
    readers): so a run is cut at every file that is not taken (a large one, or one of a range not finished)."""
    sizes = dict(store.listing(f"{writer}-{spool}-") + store.listing(f"c-{writer}-{spool}-"))
    by_directory: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for relative in visible(sorted(sizes)):
        directory, name = _split(relative)
        match = FILE_NAME.match(name)
        if match is not None:
            by_directory[directory].append((int(match["first"]), int(match["end"]), relative))
    taken = []
    for directory, files in sorted(by_directory.items()):
        hour_end = _hour_end_ms(directory)
        if hour_end is None or hour_end > before_ms:
            continue
        runs: list[list[tuple[int, int, str]]] = [[]]
        total = 0
        for first, end, relative in sorted(files):
            if end > cursor or sizes[relative] > SMALL_FILE_BYTES:
                runs.append([])  # not taken: the run stops before it
                total = 0
                continue
            if total + sizes[relative] > MAX_COMPACTED_BYTES:
                runs.append([])
                total = 0
            runs[-1].append((first, end, relative))
            total += sizes[relative]
        taken += [(directory, tuple(run)) for run in runs if len(run) >= min_files]
    return CompactionJob(store, writer, spool, tuple(taken), ROW_GROUP_ROWS) if taken else None


def compact_apart(job: CompactionJob) -> list[str]:
    """Does `job` in a short-lived process of its own and returns the files it wrote. Compaction holds each run
    decoded (`MAX_COMPACTED_BYTES`), and the allocators keep such a peak: done in the writer's process, even on the
    system allocator and trimmed after, the bench saw the server keep 110 MB after an hourly compaction. A process
    of its own gives everything back as it exits, for a Python start and the imports, once an hour per spool with
    small files to compact. A new interpreter rather than `multiprocessing`: forking a process with threads is
    unsafe, and its spawn re-imports the caller's main module, which fails in a script without a main guard."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        # The system's allocator rather than Arrow's default (mimalloc), from the start: a lower peak for the same
        # time (the bench's hour of small files, 72 MB in 442: 212-226 MB against 333 MB, 3.6 s either way; 264-272
        # MB when switched in `main`, after the imports; /tmp script, 2 runs each).
        "ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from tidegate.archive.compaction import main; main()"],
        input=pickle.dumps(job),
        capture_output=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"compaction failed (exit {done.returncode}): {error[-1] if error else 'no message'}")
    written: list[str] = json.loads(done.stdout)
    return written


def main() -> None:
    """`compact_apart`'s process: a pickled job on stdin, the files written (JSON) on stdout."""
    job = pickle.load(sys.stdin.buffer)
    json.dump(compact(job), sys.stdout)


def compact(job: CompactionJob) -> list[str]:
    """Writes `job`'s compacted files, in this process; returns those written (a file that exists already is left
    as it is: a run compacted before a crash)."""
    written = [_write_compacted(job, directory, run) for directory, run in job.runs]
    return [target for target in written if target]


def _write_compacted(job: CompactionJob, directory: str, run: tuple[tuple[int, int, str], ...]) -> str:
    store, rows = job.store, job.row_group_rows
    first, end = run[0][0], run[-1][1]
    tables = []
    for _, _, relative in run:
        with store.filesystem.open_input_file(store.path(relative)) as file:
            tables.append(pq.ParquetFile(file).read().replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    # Sorted a row group at a time as it is written (`sort_by` would hold a sorted copy of the whole table).
    order = pc.sort_indices(table, sort_keys=[("event_id", "ascending")])
    sorted_pieces = (table.take(order[at : at + rows]) for at in range(0, len(table), rows))
    target = f"{directory}/c-{job.writer}-{job.spool}-{first:020d}-{end:020d}.parquet"
    metadata = {
        b"tidegate.spool": job.spool.encode(),
        b"tidegate.first_seq": str(first).encode(),
        b"tidegate.end_seq": str(end).encode(),
        b"tidegate.supersedes": "\n".join(_split(relative)[1] for _, _, relative in run).encode(),
    }
    written = store.write_pieces(target, table.schema.with_metadata(metadata), sorted_pieces)
    return target if written else ""
