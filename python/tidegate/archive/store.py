"""Where the archive's files live: a local directory (the embedded default) or an S3-compatible bucket
(`pyarrow.fs.S3FileSystem`). Files are only ever added, under names no other write uses, and never replaced."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tidegate.config import Settings

__all__ = ["PARQUET_OPTIONS", "ROW_GROUP_ROWS", "ArchiveStore", "writer_id"]

#: Rows per Parquet row group: small enough that a lookup by event id (rows are sorted by it) reads little of a
#: file, large enough to compress well.
ROW_GROUP_ROWS = 16_384

#: How the archive's Parquet files are written: zstd at its default level (1: level 3 cost twice the time here and
#: saved nothing); dictionaries only for the columns with few distinct values (a dictionary tried on a column of
#: unique values, then given up, costs time and bytes); min/max statistics only for the columns queries filter on
#: (the event id, sorted, lets a lookup skip every other row group).
PARQUET_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "use_dictionary": ["entity_id", "status", "topic"],
    "write_statistics": ["event_id", "entity_id", "event_time", "ingest_time", "ingest_lag_ms", "status"],
}


def _write_parquet(sink: BinaryIO, schema: pa.Schema, pieces: Iterable[pa.Table]) -> None:
    """The Parquet file of `pieces` (what `pq.write_table` writes of their concatenation: row groups of
    ROW_GROUP_ROWS within each piece)."""
    with pq.ParquetWriter(sink, schema, **PARQUET_OPTIONS) as writer:
        for piece in pieces:
            writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)


def writer_id(data_dir: Path) -> str:
    """The archive writer of a data dir on a host, in every file name it writes: two instances sharing a bucket
    never write the same name (the same rule as the MQTT client id)."""
    seed = f"{socket.gethostname()}:{data_dir.resolve()}".encode()
    return "a" + hashlib.blake2b(seed, digest_size=4).hexdigest()


@dataclass(frozen=True)
class ArchiveStore:
    """The archive's root: `root` is a local path or `bucket/prefix` within `filesystem`."""

    root: str
    filesystem: pafs.FileSystem
    local: bool

    @staticmethod
    def from_settings(settings: Settings) -> ArchiveStore:
        url = settings.archive_url or str(settings.data_dir / "archive")
        if url.startswith("s3://"):
            options: dict[str, object] = {}
            if settings.archive_s3_endpoint:
                scheme, _, host = settings.archive_s3_endpoint.partition("://")
                options["endpoint_override"] = host or scheme
                options["scheme"] = scheme if host else "https"
            if settings.archive_s3_region:
                options["region"] = settings.archive_s3_region
            # Delayed open: a file smaller than a part goes up in one PUT, not a multipart upload.
            filesystem = pafs.S3FileSystem(allow_delayed_open=True, **options)
            return ArchiveStore(url.removeprefix("s3://").rstrip("/"), filesystem, local=False)
        path = url.removeprefix("file://")
        return ArchiveStore(str(Path(path).resolve()), pafs.LocalFileSystem(), local=True)

    @property
    def url(self) -> str:
        return self.root if self.local else f"s3://{self.root}"

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def files(self, prefix: str = "") -> list[str]:
        """Every archive file (paths relative to the root), optionally only those whose name starts with `prefix`."""
        return [relative for relative, _ in self.listing(prefix)]

    def listing(self, prefix: str = "") -> list[tuple[str, int]]:
        """`files`, each with its size in bytes (from the same listing)."""
        if self.local and not Path(self.root, "raw").is_dir():
            return []
        selector = pafs.FileSelector(self.path("raw"), recursive=True, allow_not_found=True)
        found = []
        for info in self.filesystem.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(".parquet") and name.startswith(prefix):
                found.append((info.path[len(self.root) + 1 :], info.size or 0))
        return sorted(found)

    def write(self, relative: str, table: pa.Table) -> bool:
        """Writes `table` as the Parquet file `relative` (zstd) unless that file exists; returns whether it wrote.
        Locally: a temporary name, fsync, a hard link to the final name (which fails rather than replace a file)
        and the directory's fsync, so the file is there whole after a crash, or not at all. In a bucket a PUT
        is atomic: the object appears whole."""
        return self.write_pieces(relative, table.schema, [table])

    def write_pieces(self, relative: str, schema: pa.Schema, pieces: Iterable[pa.Table]) -> bool:
        """`write` of the table the `pieces` (of `schema`) make one after the other, each taken when the one before
        is written: a caller that makes them one at a time never holds the whole table twice."""
        target = self.path(relative)
        if self.local:
            directory = os.path.dirname(target)
            os.makedirs(directory, exist_ok=True)
            temporary = f"{target}.tmp"
            with open(temporary, "wb") as file:
                _write_parquet(file, schema, pieces)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            descriptor = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return True
        if self.filesystem.get_file_info(target).type != pafs.FileType.NotFound:
            return False
        buffer = io.BytesIO()
        _write_parquet(buffer, schema, pieces)
        with self.filesystem.open_output_stream(target) as stream:
            stream.write(buffer.getvalue())
        return True

    def read_bytes(self, relative: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(relative)) as stream:
            return bytes(stream.read())

    def size(self) -> int:
        """Bytes of every archive file."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for relative in self.files():
                total += self.filesystem.get_file_info(self.path(relative)).size or 0
        return total
