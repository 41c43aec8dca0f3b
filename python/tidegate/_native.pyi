"""Type stubs and documentation for tidegate's native core (`rust/tidegate-py`)."""

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Final, Literal, final

__all__ = [
    "BULK_BODY_BYTES",
    "EVENT_ID_DOMAIN",
    "LAG_BOUNDS_MS",
    "MAX_IDEMPOTENCY_KEY_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_TRACEPARENT_BYTES",
    "MAX_TRACESTATE_BYTES",
    "REFUSAL_DRAINED_BODY_MAX_BYTES",
    "Accepted",
    "Admission",
    "AdmissionTicket",
    "ArrowBuffer",
    "Contract",
    "DedupWindow",
    "DeviceAlerts",
    "DeviceSnapshot",
    "DeviceTable",
    "Gateway",
    "GroupCommit",
    "InvalidHeader",
    "Issue",
    "KafkaRange",
    "Keys",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "QuarantineItem",
    "RateTable",
    "Records",
    "SchemaError",
    "Spool",
    "SpoolFull",
    "TidegateError",
    "UnsupportedFormat",
    "ValidationResult",
    "Validator",
    "archive_parts",
    "quarantine_records",
    "read_kafka_range",
    "retain_freed_memory",
]

BULK_BODY_BYTES: Final[int]
"""A body this large or larger (declared; a compressed one weighs 4 times its length) is bulk: the worker takes it
on its accept thread, one at a time, and `Admission(bulk_bodies=)` bounds how many are in flight."""
EVENT_ID_DOMAIN: Final[str]
"""The prefix hashed before every event id's canonical form (see the README's event_id definition)."""
LAG_BOUNDS_MS: Final[tuple[float, ...]]
"""Upper bounds of the ingest lag histogram's buckets (`tidegate_ingest_lag_ms`), in ms, then +Inf: the counts
`Gateway.counters` gives are per bucket of these."""
MAX_RECORD_BYTES: Final[int]
"""`Validator(max_record_bytes=)`'s default: the largest record accepted, measured as Kafka measures it (key,
value and every header, as a Kafka v2 record batch of its own). The forwarder skips only records above its own
`KafkaSettings.max_record_bytes` by the same measure, which must not be smaller."""
REFUSAL_DRAINED_BODY_MAX_BYTES: Final[int]
"""A request refused before its body was read keeps its connection when its declared body is empty or at most this
long (and no `Expect` was sent): Granian reads the body after the answer and drops it (`Admission.screen`)."""
MAX_TRACEPARENT_BYTES: Final[int]
"""Longest `traceparent` accepted (version 00 is 55 characters; later versions may append fields)."""
MAX_TRACESTATE_BYTES: Final[int]
"""Longest `tracestate` accepted (the 512 characters W3C Trace Context asks every vendor to propagate)."""
MAX_IDEMPOTENCY_KEY_BYTES: Final[int]
"""Longest `X-Idempotency-Key` accepted (as long as a batch's `batch_id` may be)."""

class TidegateError(Exception):
    """Every error tidegate raises derives from this. I/O errors are the exception: they are the built-in
    `OSError` of their errno (`FileNotFoundError`, `PermissionError`, `OSError` with `errno` ENOSPC...)."""

class PayloadError(TidegateError, ValueError):
    """The whole body could not be taken apart into records."""

class MalformedPayload(PayloadError):
    """The body is not parseable in its declared format (syntax, truncation, invalid UTF-8, empty)."""

class PayloadTooLarge(PayloadError):
    """The body exceeds a size limit (measured after decompression) or the record count limit."""

class UnsupportedFormat(PayloadError):
    """The content type or content encoding is not supported."""

class InvalidHeader(PayloadError):
    """A request header copied into every record (`traceparent`, `tracestate`) or into the dedup window
    (`X-Idempotency-Key`) is malformed or too long."""

    header: str
    """The header's name: "traceparent", "tracestate" or "X-Idempotency-Key"."""

class SpoolFull(TidegateError, OSError):
    """The spool's disk quota is reached; the caller sheds load (503) rather than lose or corrupt data."""

class SchemaError(TidegateError, ValueError):
    """A JSON Schema could not be compiled: invalid, or using a keyword outside the supported subset."""

@final
class Contract:
    """What a record must look like, where it goes and which fields make its identity."""

    @staticmethod
    def telemetry(*, unknown_fields: Literal["keep", "reject", "drop"] = "keep") -> Contract:
        """Seed 001's reading: device_id, timestamp (RFC 3339), metrics (non-empty map of numbers), metadata.

        `unknown_fields`: undeclared top-level fields are kept in the record outside its identity (`keep`),
        reject the record (`reject`) or are left out of it (`drop`). Any other value raises ValueError.
        """

    @staticmethod
    def event(*, unknown_fields: Literal["keep", "reject", "drop"] = "keep") -> Contract:
        """Seed 004's event: source, event_type, entity_id, event_time, payload (any JSON), all required."""

    @staticmethod
    def batch(*, unknown_fields: Literal["keep", "reject", "drop"] = "keep") -> Contract:
        """Seed 001's batch: device_id, batch_id, readings[1..max]; each reading becomes a telemetry record."""

    @staticmethod
    def from_json_schema(
        schema: Mapping[str, Any] | str | bytes,
        *,
        name: str = "custom/v1",
        topic: str = "custom-raw",
        key_field: str | None = None,
        time_field: str | None = None,
        identity_fields: list[str] | None = None,
    ) -> Contract:
        """Compiles a JSON Schema subset: type, properties, required, additionalProperties, enum, const, pattern,
        minLength/maxLength, minimum/maximum, exclusiveMinimum/exclusiveMaximum, items, minItems/maxItems,
        minProperties/maxProperties, format date-time. Any other keyword raises SchemaError.
        """

    @property
    def name(self) -> str:
        """Name and version, sent in the `schema` header (`telemetry/v1`)."""

    @property
    def topic(self) -> str: ...
    @property
    def kind(self) -> Literal["telemetry", "batch", "event", "custom"]: ...
    @property
    def unknown_fields(self) -> Literal["keep", "reject", "drop"]:
        """The policy for undeclared top-level fields (a custom contract's: its schema's additionalProperties)."""

@final
class Validator:
    """A compiled contract plus options. Immutable, safe to share between threads; `validate` releases the GIL."""

    def __new__(
        cls,
        contract: Contract,
        *,
        max_past_seconds: float = 604800.0,
        max_future_seconds: float = 300.0,
        metric_ranges: Mapping[str, tuple[float, float]] | None = None,
        max_body_bytes: int | None = None,
        max_depth: int | None = None,
        max_string_bytes: int | None = None,
        max_key_bytes: int | None = None,
        max_array_items: int | None = None,
        max_object_keys: int | None = None,
        max_records: int | None = None,
        max_batch_readings: int = 1000,
        max_record_bytes: int = 1000000,
        dlq_topic: str = "ingest-dlq",
        topic: str | None = None,
        quarantine: bool = False,
    ) -> Validator:
        """Limits default to: body 8 MiB (after decompression), depth 32, strings 64 KiB, keys 256 B, arrays
        10,000 items, objects 1,000 keys, 10,000 records per body, 1,000,000 bytes per record as Kafka measures it
        (key, value and headers as a Kafka record batch of its own: see MAX_RECORD_BYTES). `metric_ranges` adds to seed
        001's table (temperature, humidity, pressure, battery_level, signal_strength), replacing a range of the
        same name. With `quarantine`, each result keeps its rejected records' raw bytes and reasons
        (`ValidationResult.quarantine`).
        """

    def validate(
        self,
        body: bytes,
        content_type: str = "application/json",
        content_encoding: str | None = None,
        *,
        received_at_ms: int | None = None,
        priority: str | None = None,
        source: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
    ) -> ValidationResult:
        """Validates one body: a JSON object or array, NDJSON, or CBOR, optionally gzip or zstd encoded.

        `priority`, `source` (where the request came from: `http`, `mqtt`) and `traceparent` are copied into every
        record's headers, and `tracestate` along with a `traceparent`; `traceparent` and `tracestate` must follow
        W3C Trace Context. `idempotency_key` is only checked (at most MAX_IDEMPOTENCY_KEY_BYTES): the caller claims
        it in its dedup window.

        `device_id` is the device the transport names as the body's source (an MQTT topic's): a telemetry record
        without `device_id` takes it, as a batch's readings take the batch's, with the event id it would have had
        naming it. A record naming another device is not rejected: the caller refuses the body (as for a key).

        Bad records (including one too large for Kafka) are reported in the result and never spoil good ones.
        Raises a PayloadError subclass only when the request as a whole cannot be taken: InvalidHeader for a
        malformed or too long header, the others when the body cannot be decoded.
        """

    @property
    def contract(self) -> Contract: ...
    @property
    def topic(self) -> str: ...

@final
class Issue:
    """A rejection or a warning: the record's index (None for a batch envelope), a JSON path, a message."""

    @property
    def index(self) -> int | None: ...
    @property
    def path(self) -> str: ...
    @property
    def message(self) -> str: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class ValidationResult:
    """The outcome of one `validate` call."""

    @property
    def total(self) -> int:
        """Records in the body (for a batch: readings)."""

    @property
    def decoded_bytes(self) -> int:
        """The body's size once its content encoding was undone."""

    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> list[Issue]:
        """Every failure of every rejected record; a record may have several."""

    @property
    def warnings(self) -> list[Issue]:
        """Semantic-range warnings of accepted records (those records are also copied to the DLQ topic)."""

    @property
    def event_ids(self) -> list[str | None]:
        """Per record, in input order: the event id (32 hex digits), or None when rejected."""

    @property
    def ingest_lag_ms(self) -> list[int | None]:
        """Per record: reception time minus record time, or None when rejected."""

    def lag_histogram(self, bounds: list[float]) -> tuple[list[int], float]:
        """Counts of the accepted records' ingest lags per bucket (`le` bounds, then +Inf) and their sum."""

    @property
    def records(self) -> Records:
        """Accepted records ready for delivery, plus DLQ copies of flagged ones."""

    @property
    def sequence(self) -> bool:
        """The body held a sequence of records (a top-level array, or NDJSON) rather than one record."""

    @property
    def quarantine(self) -> list[QuarantineItem]:
        """With `Validator(quarantine=True)`: one item per rejected record, in input order, holding its bytes (a
        JSON array's element, an NDJSON line, a CBOR array's item, a batch's reading, after content decoding),
        its reasons (`path: message; ...`) and stage (`decode` for a record that could not be decoded, else
        `contract`); a batch whose envelope is refused is one item, the whole body."""

    @property
    def device_id(self) -> str | None:
        """For a batch body: its device_id."""

    @property
    def batch_id(self) -> str | None:
        """For a batch body: its batch_id."""

@final
class QuarantineItem:
    """A rejected item to quarantine: its raw bytes, why (`reason`), the step that refused it (`stage`), the
    media type of `raw`, and which record of its body it was (None: the whole body)."""

    def __new__(
        cls, raw: bytes, *, stage: str, reason: str, content_type: str, index: int | None = None
    ) -> QuarantineItem: ...
    @property
    def index(self) -> int | None: ...
    @property
    def raw(self) -> bytes: ...
    @property
    def stage(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def content_type(self) -> str: ...

def quarantine_records(
    items: Sequence[QuarantineItem],
    *,
    body: bytes,
    topic: str,
    key: str | None,
    headers: Sequence[tuple[str, bytes]],
    timestamp_ms: int,
    max_record_bytes: int = 1000000,
) -> Records:
    """The dead-letter records of `items`: value the raw bytes, key `key`, headers `dlq-reason`, `dlq-stage`,
    `dlq-id`, `content-type`, `dlq-index` (for a record of a body), then `headers`. An item too large for
    `max_record_bytes` (as Kafka measures a record) is cut to fit, header `dlq-truncated` giving its whole length.
    `dlq-id`, the record's event id, is the same for the same item of the same `body` (the request's, as
    received) with the same reason, stage and key: a retry or redelivery is a duplicate in the dedup window, the
    same bad record in another body is not."""

@final
class Records:
    """The record arena: delivery-ready records (Kafka key, canonical enriched JSON value, headers), grouped by
    topic, held in one native buffer: no Python object exists per record until asked for.
    """

    def __new__(cls) -> Records: ...
    def __len__(self) -> int: ...
    @property
    def topics(self) -> list[str]: ...
    @property
    def payload_bytes(self) -> int: ...
    def records(self, topic: str | None = None) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]], int]]:
        """(key, value, headers, timestamp_ms) per record of `topic` (all topics when None)."""

    def values(self, topic: str | None = None) -> list[bytes]: ...
    def event_ids(self, topic: str | None = None) -> list[str]: ...
    def count(self, topic: str | None = None) -> int:
        """Records of `topic`, or of all topics."""

    def distinct_keys(self) -> list[str]:
        """Distinct record keys, in order of first appearance."""

    def kafka_range(
        self,
        partitions: Mapping[str, int],
        *,
        compression: _Compression | None = None,
        max_batch_bytes: int = 1048576,
        max_record_bytes: int = 1048576,
        round_robin_start: int = 0,
    ) -> KafkaRange:
        """These records as runs, each one Kafka record batch (see `KafkaRange`); `partitions` gives each topic's
        partition count. The GIL is released while encoding. ValueError for an unknown `compression`."""

    def extend(self, other: Records) -> None: ...
    def moved_to(self, topic: str) -> Records:
        """Every record but the dead-letter copies, on `topic`: the duplicate occurrences of a repeated request."""

#: Kafka's codecs (``compression.type``).
_Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]

#: (key, value, headers, timestamp_ms) of one record.
_RecordTuple = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

@final
class ArrowBuffer:
    """Bytes owned by the native side, read through the buffer protocol (`pyarrow.py_buffer` wraps them without a
    copy): one buffer of an Arrow column that `archive_parts` built."""

    def __len__(self) -> int: ...

def archive_parts(
    reads: list[Records], skip_topics: list[str], duplicates_topic: str, chunk_rows: int
) -> list[tuple[str, int, list[tuple[int, list[list[ArrowBuffer | None]]]]]]:
    """The archive files of the records of `reads` (consecutive reads of one spool range; those of every topic
    but `skip_topics`, dead-letter copies left out, records of `duplicates_topic` as `DUPLICATE` occurrences),
    built without the GIL: per file (ordered by directory, then first event id) its partition directory, its row
    count and its chunks of at most `chunk_rows` rows (rows sorted by event id across them), each with its row
    count and, per column of the archive's schema (`tidegate.archive.writer.SCHEMA`), Arrow's buffers of it:
    `[validity, offsets (i32), data]` for a string, `[validity, data (i64)]` for an integer or timestamp;
    validity None without nulls. ValueError when a column would exceed 2 GiB."""

def retain_freed_memory() -> bool:
    """Lets the process's allocator (glibc) keep freed blocks below 32 MiB for reuse, trimming its heap only past
    256 MiB free, instead of returning them and taking fresh zeroed pages for the next ones; returns whether it
    took the settings. Process-wide: the archive writer calls it."""

@final
class KafkaRange:
    """A range of records as finished runs, each one Kafka v2 record batch (magic 2, no producer id),
    compressed with `compression` where that makes them smaller (the codec in the attributes, the CRC over the
    compressed bytes: what brokers and consumers decode).

    Partitions are the default partitioner's (keyed records: murmur2 of the key modulo the topic's partition count,
    like the Java client and aiokafka; unkeyed ones round robin from `round_robin_start`), and each partition's
    records, in range order, are packed into runs of at most `max_batch_bytes` before compression (a larger
    record alone in its run). Records larger than `max_record_bytes` as a Kafka record batch of their own (the measure
    of the validator's `max_record_bytes` and of a broker's ``message.max.bytes``) are left out (`oversize`).

    The records are laid out in one order: per topic and partition, then the oversize records; a run's
    records are the positions `start..end` of it, so a run can be encoded again (`split`) or its records looked
    up (`record`).
    """

    def __len__(self) -> int:
        """Records in the range (placed, oversize or of a missing topic)."""

    @property
    def records(self) -> Records:
        """The range's records."""

    @property
    def runs(self) -> list[tuple[str, int, bytes, int, int, int]]:
        """`(topic, partition, Kafka record batch bytes, record count, start, end)` per run."""

    @property
    def oversize(self) -> list[tuple[str, int]]:
        """`(topic, position)` of each record left out as larger than `max_record_bytes`."""

    @property
    def missing_topics(self) -> list[str]:
        """Topics of the range without a partition count: their records are in no run (`encode_again`)."""

    @property
    def partitions(self) -> dict[str, int]:
        """The partition counts it was encoded with."""

    @property
    def compression(self) -> _Compression: ...
    def record(self, position: int) -> _RecordTuple:
        """The record at `position`. IndexError past the end."""

    def encode_again(self, partitions: Mapping[str, int]) -> KafkaRange:
        """The same records encoded with other partition counts (same codec, limits and round robin start)."""

    def split(self, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
        """The records at `start..end` (a run the broker refused as too large) encoded again by the same
        encoder as runs of at most half their size before compression: `(Kafka record batch bytes, record count,
        start, end)` per run, in order. One record comes back as one run. IndexError for a range out of bounds."""

def read_kafka_range(
    spool: Spool,
    seq: int,
    partitions: Mapping[str, int],
    *,
    max_records: int = 10000,
    max_bytes: int = 4194304,
    compression: _Compression | None = None,
    max_batch_bytes: int = 1048576,
    max_record_bytes: int = 1048576,
    round_robin_start: int = 0,
) -> tuple[KafkaRange, int]:
    """Reads durable records from `seq` (as `spool.read(seq, max_records, max_bytes)`) and encodes them as
    `Records.kafka_range` does, in one native call without the GIL. Returns the range and the sequence number
    to read from next."""

@final
class GroupCommit:
    """Group commit on a native thread. `request()` asks for a commit of everything appended so far (cheap, never
    blocks); the thread waits its window, fsyncs, and makes `fileno()` readable once per commit, for an event loop
    to watch; `take()` then returns `(durable_seq, commits, failures, errno, error)`, failures counting every
    failed commit so far and errno/error describing the latest."""

    def request(self) -> None: ...
    def fileno(self) -> int: ...
    def has_news(self) -> bool:
        """Whether a commit finished that `take` has not taken (`fileno` readable), without a system call."""

    def take(self) -> tuple[int, int, int, int | None, str | None]: ...
    def stop(self) -> None:
        """Stops the thread after the commit in progress; what is appended and not committed stays for
        `Spool.commit`."""

@final
class Spool:
    """The append-only segment log that makes records durable before they are acknowledged.

    Records get consecutive sequence numbers. `append` writes (page cache); `commit` fsyncs everything appended
    so far and is shared by every append it covers (group commit). `read` returns records in order, `ack` records
    what the broker acknowledged (persisted), `cleanup` deletes fully acknowledged segments past retention.
    Opening recovers from a crash: a torn tail is truncated, every complete record before it is kept.
    """

    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        segment_bytes: int = 67108864,
        quota_bytes: int = 1073741824,
        retention_seconds: float = 3600.0,
    ) -> Spool: ...
    @staticmethod
    def open_read_only(path: str | PathLike[str]) -> Spool:
        """Opens a spool another process may be writing, only to read it: nothing is created, truncated or
        removed, and appends fail."""

    @staticmethod
    def open_for_delivery(path: str | PathLike[str]) -> Spool:
        """Opens the spool a worker process writes, to deliver it: `read` follows the writer (new and deleted
        segments) up to what it made durable; `ack` writes the checkpoint the writer's cleanup obeys and
        `publish_delivered` tells the writer what the broker acknowledged. Nothing else is written."""

    @property
    def delivered_seq(self) -> int:
        """What the delivery process last saw the broker acknowledge (every record below it)."""

    @staticmethod
    def published_progress(path: str | PathLike[str]) -> tuple[int, int]:
        """`(durable, delivered)` as the writer and the delivery process of the spool directory `path` published
        them, read without opening the spool (another worker's): every record below the first is durable, every
        one below the second acknowledged by the broker. `(0, 0)` when nothing was published."""

    @staticmethod
    def read_acked(path: str | PathLike[str]) -> int:
        """The delivery process's checkpoint in the spool directory `path` (every record below it acknowledged by
        the broker; 0 when there is none), read without opening the spool."""

    @staticmethod
    def cleanup_unwritten(
        path: str | PathLike[str], horizon: int, *, quota_bytes: int, retention_seconds: float
    ) -> int:
        """Deletes from the spool in `path`, which no process writes (the caller holds its worker directory's
        lock), the segments `cleanup_below(horizon)` would, judged from its files alone (opening the spool would
        read every segment). Returns how many went."""

    def publish_delivered(self, seq: int) -> None:
        """Tells the writer the broker acknowledged every record below `seq` (page cache, no fsync)."""

    def refresh_acked(self) -> int:
        """Reads the checkpoint the delivery process wrote (cleanup deletes what it covers); returns it. Raises
        OSError when it cannot be read (the last good one stays)."""

    def append(self, records: Records) -> int:
        """Writes the records; returns the sequence after its last record (durable once `durable_seq` reaches it).
        Raises SpoolFull when the quota would be exceeded."""

    def commit(self) -> int:
        """fsyncs what was appended; returns the durable sequence. Raises OSError when the write or fsync failed:
        none of the records it covered is durable, their sequence numbers are never reused, and the next commit
        starts a new segment (`failing` until one could be started)."""

    def group_commit(self, window_ms: float = 1.0) -> GroupCommit:
        """Starts a committer thread for this spool (see `GroupCommit`)."""

    @property
    def failing(self) -> bool:
        """The last write or fsync failed and no new segment could be started since: shed writes, not ready."""

    def recover(self) -> bool:
        """After a failure, tries to start a new segment now (the disk may have room again); returns whether the
        spool can write."""

    def inject_write_failures(self, count: int) -> None:
        """Makes the next `count` writes fail as on a full disk (a commit writes half its frames; starting a new
        segment fails): fault injection for tests where no small filesystem can be mounted."""

    def inject_commit_delay(self, delay_ms: int) -> None:
        """Makes every commit's fsync start `delay_ms` late, as on a disk that stalls, until set to 0 (fault injection
        for the chaos suite)."""

    @property
    def checkpoint_error(self) -> str | None:
        """Why the delivery checkpoint could not be read at open (delivery restarts from the oldest record on
        disk, never from 0), or None."""

    def append_durable(self, records: Records, window_ms: float = 2.0) -> int:
        """Blocking append + group commit: waits `window_ms` for concurrent appends to share the fsync."""

    def ack(self, seq: int) -> None:
        """Every record below `seq` was acknowledged by the broker. Raises OSError when the checkpoint could not be
        written; the previous one stays in force (try again later)."""

    def cleanup(self, horizon: int | None = None) -> int:
        """Deletes acknowledged segments past retention (or when over half the quota); returns how many. With
        `horizon`, only segments wholly below it count as acknowledged (instead of below the Kafka checkpoint):
        the least of what Kafka delivery and the archive have passed."""

    def read(
        self, seq: int, max_records: int = 10000, max_bytes: int = 4194304, durable_only: bool = True
    ) -> tuple[Records, int]:
        """Records from `seq` (or the oldest still on disk) and the sequence to read next."""

    @property
    def path(self) -> Path: ...
    @property
    def durable_seq(self) -> int: ...
    @property
    def acked_seq(self) -> int: ...
    def stats(self) -> dict[str, int]:
        """segments, bytes, quota_bytes, next_seq, durable_seq, acked_seq, lag_records, fsyncs,
        appended_records, unreadable_records (stepped over: torn by a failed write, or damaged), failed_commits,
        removed_segments (by cleanup since open), recovered_records, truncated_bytes."""
    def commit_times(self) -> tuple[list[float], list[int], float]:
        """The successful commits' times, each from the start of its write to the end of its fsync, as a
        histogram: (bucket upper bounds in seconds, count per bucket then +Inf, sum of seconds)."""

@final
class DedupWindow:
    """Event ids and idempotency keys seen recently, bounded in count and time, in a memory-mapped table at `path`
    shared by every process that opens it and surviving restarts (in this process's memory when `path` is None).
    A claim is pending until `commit`: only committed ids, and this window's own pending claims, are duplicates.
    A torn slot (a writer killed mid-update) counts as empty. Thread- and process-safe. Raises OSError when the
    table file cannot be opened or locked."""

    def __new__(
        cls,
        path: str | PathLike[str] | None = None,
        *,
        capacity: int = 1000000,
        ttl_seconds: float = 3600.0,
        key_ttl_seconds: float = 86400.0,
    ) -> DedupWindow: ...
    def claim_records(
        self,
        records: Records,
        now_ms: int,
        *,
        duplicates: Records | None = None,
        duplicates_topic: str = "tidegate-duplicates",
    ) -> list[str]:
        """Claims the records' event ids; removes records seen before (and repeats within `records`) from
        `records` in place; returns the event ids that were seen before. With `duplicates`, each removed record
        (not a dead-letter copy) is added to it on `duplicates_topic`: the archive records duplicate occurrences."""

    def release_records(self, records: Records) -> None:
        """Forgets the records' ids (they could not be made durable) so a retry is not called a duplicate."""

    def commit(self, records: Records, keys: list[tuple[str, str]]) -> None:
        """Marks the claims of the records' ids and of the idempotency keys `(scope, key)` durable: duplicates for
        every process sharing the table from now on."""

    def claim_key(self, scope: str, key: str, now_ms: int) -> bool:
        """Claims an idempotency key (`batch_id`, `X-Idempotency-Key`) for `key_ttl_seconds`; False if seen within
        that window."""

    def contains_key(self, scope: str, key: str, now_ms: int) -> bool:
        """Whether an idempotency key was claimed within the window (without claiming it)."""

    def release_key(self, scope: str, key: str) -> None: ...
    def contains(self, event_id: str, now_ms: int) -> bool: ...
    def load_spool(self, spool: Spool, now_ms: int, since_ms: int, *, occurrences_topic: str, tail: int = 0) -> int:
        """Adds the spool's records received since `since_ms` and before the table was started (it was missing
        or damaged), and the spool's last `tail` records whatever the table's age (a writer killed between a
        commit and marking its claims durable left them pending, owned by nobody); returns how many ids were
        read. Records on `occurrences_topic` (duplicate occurrences, `tidegate.archive.DUPLICATES_TOPIC`) are not
        loaded: one is durable while the record it repeats may not be (it may wait for another spool's commit)."""

    @property
    def bytes_per_id(self) -> float:
        """The table's bytes per id it holds at capacity."""

    def __len__(self) -> int:
        """Ids live now (reads the whole table)."""

@final
class RateTable:
    """Per-device token buckets (`rate` per second up to `burst`; a rate of 0 grants everything) in a
    memory-mapped table at `path` shared by every process that opens it (in this process's memory when None)."""

    def __new__(
        cls, path: str | PathLike[str] | None = None, *, rate: float, burst: float, capacity: int = 1000000
    ) -> RateTable: ...
    def take(self, device_id: str, now_us: int) -> float:
        """Takes one token at `now_us` (µs since the epoch); 0 when granted, else the seconds until one is."""
    def wait(self, device_id: str, now_us: int) -> float:
        """Seconds until the bucket's balance is positive (0: now); for post-paid use with `charge`."""

    def charge(self, device_id: str, now_us: int, cost: float) -> None:
        """Takes `cost` tokens, into debt if need be (at most one burst of debt)."""
    def take_each(self, device_id: str, costs: Sequence[float], now_us: int) -> list[bool]:
        """Takes `costs[i]` tokens for each item in turn, in one lock; which were granted (an item that does not
        fit is refused, and the next one tried)."""

@final
class Keys:
    """The keys file (`tidegate keys`: hashed device and operator keys), verified natively: SHA-256 of the
    presented secret compared in constant time; the file is re-read when it changed, checked at most every
    `reload_interval` seconds (a revocation takes effect within a second)."""

    def __new__(cls, path: str | PathLike[str], *, reload_interval: float = 0.5) -> Keys: ...
    def device_for(self, key: str) -> str | None:
        """The device a presented key belongs to; None for a malformed, unknown or revoked key."""
    def operator_for(self, key: str) -> str | None:
        """The name of the operator a presented key belongs to; None for any other key."""
    def is_operator(self, key: str) -> bool: ...

@final
class AdmissionTicket:
    """A request's place in admission, handed back to `Admission.done` once it is answered."""

    @property
    def admitted(self) -> bool: ...

@final
class Admission:
    """The header phase of an ingest request in one worker, decided natively before the body is read:
    readiness, `X-Priority`, the device key, utilization shedding, the adaptive concurrency limit with priority
    partitions (cost-weighted; refusals' loop time kept out of its signal) and its bulk lane (`bulk_bodies` bulk
    bodies of low priority in flight, counting every priority's; medium twice that; high unheld; each only while a
    higher priority arrived within `loop_queue_higher_recent_s`; 0 turns it off; one body wide for a hold while high
    priority's own time is past `bulk_narrow_at` times its baseline, 0: never),
    the device's rate and decoded-bytes budget. Refusals are answered with problem+json bodies rendered once. See
    the core's `gateway/limit.rs`."""

    def __new__(
        cls,
        *,
        keys: Keys | None = None,
        rates: RateTable | None = None,
        decoded_bytes: RateTable | None = None,
        initial_limit: float = 1024.0,
        min_limit: float = 1024.0,
        max_limit: float = 4096.0,
        tolerance: float = 2.0,
        smoothing: float = 0.3,
        low_share: float = 0.5,
        medium_share: float = 0.8,
        refusal_weight: float = 2.0,
        shed_medium_at: float = 0.9,
        shed_low_at: float = 0.7,
        max_in_flight_records: float = 50000.0,
        rate_per_device: float = 50.0,
        decoded_bytes_per_device: float = 2097152.0,
        loop_busy_target: float = 1.0,
        loop_queue_high: float = 256.0,
        loop_queue_medium: float = 32.0,
        loop_queue_low: float = 12.0,
        loop_queue_interval_s: float = 0.3,
        loop_queue_higher_recent_s: float = 1.0,
        bulk_bodies: float = 2.0,
        bulk_narrow_at: float = 2.0,
        refusal_hold_s: float = 1.0,
    ) -> Admission: ...
    def decide(
        self,
        headers: Sequence[tuple[str, str]],
        default_priority: str,
        in_flight_records: int,
        screened: bool = False,
        proto: Any = None,
    ) -> tuple[AdmissionTicket, str | None, str, tuple[int, bytes, list[tuple[str, str]]] | None]:
        """Decides a request from its header pairs (RSGI's `scope.headers.items()`, names in lower case; the
        route's `default_priority`; the worker's records awaiting durability). `(ticket, device_id, priority,
        refusal)`: `refusal` is None when admitted, else the `(status, body, headers)` to send (content-type,
        Retry-After, WWW-Authenticate, and `Connection: close` unless the connection stays open: see `screen`;
        the server adds content-length). `screened`: `screen` let the request through (its load checks are not
        made again). `proto`: the request's RSGI protocol, whose small body a refusal has Granian read."""
    def screen(
        self,
        headers: Sequence[tuple[str, str]],
        default_priority: str,
        in_flight_records: int,
        route: int,
        proto: Any,
    ) -> str | int:
        """The load checks of `decide` alone (readiness, priority, utilization, the loop's shed level, the cost
        already waiting for the loop against the priority's `loop_queue_<p>`, room in the limit), as a request
        arrives and before it waits for the event loop: the request's priority (high, medium or low) lets it
        through, its cost counted as waiting for the loop until `decide(..., screened=True)` (or `left_queue`).
        Else the refusal is answered on `proto` (RSGI's protocol: `response_bytes`) in this call, counted for
        `route` (`refused_on_arrival`), and its status returned. A refused request keeps its connection when its
        declared body is empty, or at most `REFUSAL_DRAINED_BODY_MAX_BYTES` without `Expect` (Granian is then told
        to read it after the answer: `sweep_drains`); otherwise the refusal says `Connection: close`. A shed (not a
        client error, not readiness) is held first, between half and all of `min(refusal_hold_s, its Retry-After)`,
        and answered by `release_held` with what is left of its Retry-After (at most 4096 held; past that, answered
        at once): a client that ignores Retry-After then costs the worker one arrival per hold on each of its
        connections instead of one per round trip. Either way the caller does nothing more with a refused request."""
    def release_held(self, all: bool = False) -> int:
        """Answers the held refusals that are due (every one with `all`); returns how many. The worker calls it on
        each housekeeping tick (50 ms)."""
    def stop_holding(self) -> int:
        """The worker stops: answers every held refusal now, and every later refusal at once; returns how many
        were held."""
    def sweep_drains(self, timeout_s: float) -> int:
        """Forgets the finished body reads of refused requests and cancels those unfinished after `timeout_s`
        (the connection is then closed); returns how many were cancelled. About once a second."""
    def refused_on_arrival(self) -> list[tuple[int, int, int]]:
        """The refusals `screen` answered: (route, status, count)."""
    def left_queue(self, headers: Sequence[tuple[str, str]]) -> None:
        """A request `screen` let through will not reach the event loop after all: its cost leaves the loop's
        queue."""
    def observe_loop(self, busy: float, seconds: float) -> None:
        """The event loop was busy (not waiting for I/O) `busy` of the last `seconds`: above `loop_busy_target`
        the shed level rises (low priority shed in proportion, then medium; never high), below it falls."""
    def done(self, ticket: AdmissionTicket) -> None:
        """The ticket's request was answered (an admitted one's time counts in the limit). Idempotent."""
    def set_conditions(self, ready: bool, spool_failing: bool, spool_full: bool, pressure: float) -> None:
        """Readiness (when not ready: a failing spool is refused `spool-error`, a full one `spool-full`, else
        `not-ready`), and `max(spool fill (1 when full), loop lag / its threshold)`."""
    def wait_for(self, device_id: str, priority: str, in_flight_records: int) -> float:
        """For MQTT, which holds a message it cannot take yet instead of refusing it: 0 when a message of
        `device_id` at `priority` may be taken now (the device's token taken), else the seconds to wait before
        asking again (the same readiness, utilization and device buckets as `decide`)."""

    def utilization(self, in_flight_records: int) -> float:
        """`max(in_flight_records / max_in_flight_records, pressure)`."""
    def snapshot(self) -> dict[str, float]:
        """Counters and gauges for `/metrics` (`limit`, `capacity_<p>`, `in_flight[_<p>]`, `bulk_in_flight_<p>`,
        `bulk_places`, `high_slowdown`, `bulk_narrowings`, `bulk_narrow_seconds`, `slowdown`, `drain_rate`,
        `shed_<p>` (refusals that shed by load and priority),
        `refusal_seconds`, `loop_busy`, `shed_level`, `loop_queue`, `admitted_<p>`, `refused_<reason>_<p>`,
        `refusals_held` (since the start), `refusals_holding` (now))."""

@final
class DeviceTable:
    """Devices' last-seen state in a memory-mapped table at `path` shared by every process that opens it and
    surviving restarts (in this process's memory when None): last-seen time, learned interval, silence alert state
    and the device id, for up to `capacity` devices. A device is silent once unheard for `silence_factor` (3) times
    its interval: configured by id prefix in `intervals` (`(prefix, seconds)`, longest prefix first), else learned
    from its inter-arrival times (bursts closer than `min_interval_seconds` ignored), at least
    `default_interval_seconds` while it has little history. A device unheard for `forget_after_seconds` is
    forgotten. Raises OSError when the table file cannot be opened or locked."""

    def __new__(
        cls,
        path: str | PathLike[str] | None = None,
        *,
        capacity: int = 100000,
        default_interval_seconds: float = 60.0,
        min_interval_seconds: float = 1.0,
        intervals: list[tuple[str, float]] = ...,
        forget_after_seconds: float = 604800.0,
    ) -> DeviceTable: ...
    def seen(self, devices: list[str], now_ms: int) -> None:
        """Records that `devices` were heard at `now_ms` (one lock, one slot each)."""

    def state(self, device: str, now_ms: int) -> tuple[int, int, int, bool] | None:
        """`(last_seen_ms, interval_ms, samples, alerted)` of one device, or None when it is not held."""

    def snapshot(self, now_ms: int) -> DeviceSnapshot:
        """The silent devices at `now_ms` (reads the whole table, a chunk of slots per hold of the lock)."""

    def detect(self, now_ms: int, since_ms: int, topic: str, *, max_alerts: int = 10000) -> DeviceAlerts:
        """The detector's scan (one detector at a time): records each new silence in the table and returns the
        alerts due (about `max_alerts` at most: the rest are found by the next scan), with their records for
        `topic`. `since_ms` is when the detector started: a silence is alerted only once it lasted its threshold
        after that."""

    def confirm(self, alerts: DeviceAlerts) -> None:
        """Marks `alerts` sent, once their records are durable; until then `detect` returns them again (with the
        same event ids)."""

    @property
    def silence_factor(self) -> int: ...

@final
class DeviceSnapshot:
    """The silent devices at one instant, sorted by device id."""

    @property
    def taken_ms(self) -> int: ...
    @property
    def tracked(self) -> int:
        """Devices the table holds."""

    @property
    def silent(self) -> int: ...
    def page(self, after: str | None = None, limit: int = 100) -> tuple[list[tuple[str, int, int, bool]], str | None]:
        """Up to `limit` silent devices whose id sorts after `after`, as `(device_id, last_seen_ms, interval_ms,
        alerted)`, and the next page's cursor (None on the last page)."""

@final
class DeviceAlerts:
    """Alerts due, from `DeviceTable.detect`."""

    def __len__(self) -> int: ...
    @property
    def records(self) -> Records:
        """The alert records (canonical JSON, key the device id, headers event_id, content-type, schema)."""

    @property
    def alerts(self) -> list[tuple[str, str, int, int, str]]:
        """`(kind, device_id, last_seen_ms, interval_ms, event_id)` per alert; kind `device_silence` or
        `device_recovered`."""

@final
class Gateway:
    """One worker's accept path (the core's `gateway`): everything a body goes through once its request was
    admitted, in one call per body without the GIL. `routes` are `(name, kind, validator)`, kind `telemetry`,
    `batch` or `event`; a route is named by its index. The tables are shared with the host's other workers; the
    dedup window's lifetimes are its own.

    With `high_spool`, high priority's records go to that spool (lane 1; the others to `spool`, lane 0), whose own
    group commit does not carry the large bodies of lower priorities; when it is full they go to `spool`. A body
    waits for its lane, and for both when it repeats records or keys claimed before it (their originals may wait
    in the other lane) or has nothing to write.

    What a body changes beyond the spool waits for its durability: `settle`, told each commit's outcome before any
    waiter wakes (the spool writer's hook), commits the claims of the bodies made durable (duplicates for every
    worker from then on), records their devices as heard and counts them; after a failed commit it releases the
    claims of every body still waiting for that lane, so a retry is never a duplicate of what was not made
    durable."""

    def __new__(
        cls,
        routes: Sequence[tuple[str, Literal["telemetry", "batch", "event"] | str, Validator]],
        *,
        spool: Spool,
        dedup: DedupWindow,
        decoded_bytes: RateTable,
        quarantine_budget: RateTable,
        devices: DeviceTable,
        archive: bool,
        duplicates_topic: str,
        quarantine: bool,
        dead_letter_topic: str,
        max_record_bytes: int,
        max_body_bytes: int,
        high_spool: Spool | None = None,
    ) -> Gateway: ...
    def accept(
        self,
        route: int,
        body: bytes,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
        device_from_source: bool = False,
        priority: str,
        dry_run: bool = False,
        source: str = "http",
        source_headers: Sequence[tuple[str, bytes]] = ...,
        undecodable_retried: bool = False,
    ) -> Accepted:
        """Takes one body: validates it (charging `device_id` its decoded bytes), checks that its records name
        `device_id` (403 otherwise; with `device_from_source` a telemetry record without device_id is that
        device's), quarantines what is refused, claims its idempotency keys (`X-Idempotency-Key`, a batch's
        `batch_id`, in scopes no two devices share) and event ids, appends what is new to the spool (with the
        archive, duplicate occurrences too) and renders the answer. Nothing is written in a dry run.
        `source_headers` are added to each quarantined item; with `undecodable_retried` a malformed body is not
        quarantined (it will be tried another way). ValueError for an unknown route; OSError when a shared table
        cannot be locked."""

    def quarantine(
        self,
        body: bytes,
        *,
        status: int,
        slug: str,
        detail: str,
        errors: Sequence[tuple[str, str]],
        stage: str,
        content_type: str,
        route: int | None = None,
        source: str = "http",
        source_headers: Sequence[tuple[str, bytes]] = ...,
    ) -> Accepted:
        """Quarantines a body refused before any route took it (MQTT's topic that names no route or no device),
        under the unattributed budget; the answer is the problem (`X-Tidegate-Quarantined` when kept), or a 503
        when the spool cannot take it."""

    def settle(self, lane: int, durable_seq: int, failed: bool) -> None:
        """A commit's outcome in `lane`'s spool (0 `spool`, 1 `high_spool`), before any waiter is woken (see the
        class). ValueError for another lane."""

    def failed_since(self, accepted: Accepted) -> bool:
        """Whether a commit of a spool `accepted` waits for failed since it was accepted (its claims may have been
        released): it must not be acknowledged, even once a later commit made that spool durable past it (failed
        sequences are never reused). A wait registers with a lane's writer only when it awaits that lane, so a
        failure before then does not reach it; the edge asks this once it has waited."""

    @property
    def waiting(self) -> int:
        """Bodies waiting for their durability."""

    def counters(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]], int, list[int], float, bool]:
        """Records by `(outcome, priority)` (accepted, duplicate, rejected, dry_run), quarantined records by stage,
        quarantine items dropped over budget, the ingest lag histogram's counts (per bucket of 100 ms, 1 s, 10 s,
        1 min, 10 min, 1 h, 1 d, 7 d, then +Inf), their sum, and whether any lag was observed."""

@final
class Accepted:
    """One body's answer, rendered: send `status`, `headers` and `body` once `durable_ends` are durable (each lane's
    spool writer's `durable`); a 202 adds `X-Durability` then."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header of the answer (content-type and content-length included) but `X-Durability`."""

    @property
    def body(self) -> bytes: ...
    @property
    def durable_ends(self) -> tuple[int, int] | None:
        """The sequence each lane's spool (the gateway's `spool`, then its `high_spool`) must be durable to before
        sending, 0 for one it need not wait for; None: send now (a dry run, a refusal with nothing kept). A repeat
        of claims not durable yet waits for every lane; one of durable records only for what it wrote."""

    @property
    def delivered_ends(self) -> tuple[int, int] | None:
        """The sequence each lane's spool must be acknowledged by the broker to for `X-Ack: kafka`: what it wrote,
        and for a repeat everything appended before it in every lane (what it repeats is there, when this worker
        wrote it)."""

    @property
    def repeats_durable(self) -> bool:
        """It repeats records already durable, perhaps in another spool of the host (another worker's, or one an
        earlier process left): `X-Ack: kafka` must also see the other spools delivered as far as they are
        durable (`Spool.published_progress`)."""

    @property
    def spool_full(self) -> bool:
        """The append hit the spool's quota (the answer is a 503)."""

    @property
    def slug(self) -> str | None:
        """A problem's type (`malformed`, `invalid`, `wrong-device`, `spool-full`...)."""

    @property
    def records(self) -> int:
        """Records written, awaiting durability."""

    @property
    def total(self) -> int:
        """Records in the body."""

    @property
    def rejected(self) -> int:
        """Issues of the body's rejected records."""

    @property
    def device_id(self) -> str | None:
        """A batch's device."""

    @property
    def event_id(self) -> str | None:
        """The first record's event id."""
