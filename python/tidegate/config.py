"""Settings: defaults, overridden by a TOML file, then by `TIDEGATE_*` environment variables, then by CLI flags."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from tidegate._native import MAX_RECORD_BYTES

Priority = Literal["high", "medium", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "medium", "low")
KafkaAcks = Literal["all", "1"]
KafkaCompression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
MqttProtocol = Literal["auto", "5", "3.1.1"]
HttpMode = Literal["1", "auto"]
UnknownFields = Literal["keep", "reject", "drop"]
#: Settings whose values are one of a few names: the type's name (as the dataclass records it) → the names.
_CHOICES: dict[str, tuple[str, ...]] = {
    "Priority": PRIORITIES,
    "KafkaAcks": get_args(KafkaAcks),
    "KafkaCompression": get_args(KafkaCompression),
    "SaslMechanism": get_args(SaslMechanism),
    "MqttProtocol": get_args(MqttProtocol),
    "HttpMode": get_args(HttpMode),
    "UnknownFields": get_args(UnknownFields),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    data_dir: Path = Path("data")
    kafka: str | None = None
    """Kafka bootstrap servers (`host:port[,host:port...]`); None keeps everything in the spool (the default)."""
    kafka_tls: bool = False
    """TLS to the brokers, verified against the system's CAs unless `kafka_tls_ca_file` is given. Setting any
    `kafka_tls_*_file` turns TLS on too."""
    kafka_tls_ca_file: Path | None = None
    kafka_tls_cert_file: Path | None = None
    """A client certificate (PEM) for brokers that authenticate clients by TLS; with `kafka_tls_key_file`."""
    kafka_tls_key_file: Path | None = None
    kafka_tls_check_hostname: bool = True
    kafka_sasl_mechanism: SaslMechanism | None = None
    """SASL authentication (over TLS when TLS is on, else in plain text), with the two settings below."""
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    """Give it in the TOML file or `TIDEGATE_KAFKA_SASL_PASSWORD`: there is no flag, as flags show in `ps`."""
    kafka_acks: KafkaAcks = "all"
    """"all": a record counts as delivered once every in-sync replica has it. "1": once the partition's
    leader has it (faster, but a leader that fails before its followers copied the record loses it)."""
    kafka_compression: KafkaCompression = "none"
    kafka_linger_ms: float = 5.0
    """How long the forwarder waits for more records once new ones are spooled, to send fewer, larger Kafka record
    batches."""
    kafka_max_request_bytes: int = 1 << 20
    """The largest Kafka record batch sent, and so the largest record; keep it at or below the brokers'
    `message.max.bytes` (and the topics' `max.message.bytes`)."""
    kafka_topic_telemetry: str = "telemetry-raw"
    kafka_topic_events: str = "events-raw"
    kafka_topic_dead_letter: str = "ingest-dlq"
    kafka_topic_check_interval_s: float = 10.0
    """How often the brokers are asked whether they are reachable and hold the topics above."""
    ready_requires_kafka: bool = False
    """Seed 001's rule: not ready while Kafka cannot be reached (the breaker is open, or the last check failed).
    By default the spool absorbs traffic while Kafka is down, and the service stays ready."""
    auth: bool = True
    dry_run: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    """Limit on the body after decompression; the raw body is capped at the same size."""
    body_timeout_s: float = 10.0
    max_batch_readings: int = 1000
    unknown_fields: UnknownFields = "keep"
    """Top-level fields the contract does not declare, on every route and MQTT: "keep" (kept in the stored record,
    never part of its event id), "reject" (the record is rejected, each such field named `unknown field`) or
    "drop" (left out of the stored record)."""
    quarantine: bool = True
    """Keep what is refused (rejected records, bodies refused as a whole) on the dead-letter topic, as received,
    with `dlq-reason` and `dlq-stage` headers (tidegate/quarantine.py)."""
    quarantine_device_bytes_per_s: float = 16384.0
    """Each device's quarantine budget: bytes per second it may sustain (each item costs its size plus 256 bytes),
    so no device can fill the spool with junk; past it, items are counted in `tidegate_quarantine_dropped_total`
    and not kept. 0: no bound. Without authentication every request shares one budget."""
    quarantine_device_burst_bytes: float = float(1 << 20)
    """The most a device may quarantine at once (its budget's bucket size)."""
    max_past_seconds: float = 7 * 86400.0
    max_future_seconds: float = 300.0
    rate_per_device: float = 50.0
    """Requests per second a device may sustain (token bucket refill); 0 disables rate limiting."""
    burst_per_device: float = 100.0
    decoded_bytes_per_device: float = 2 * 1024 * 1024
    """Bytes per second of decompressed body a device may sustain (post-paid: a request is let in while the
    device's balance is positive and charged its decoded size afterwards; a compressed body that fails to decode
    is charged `max_body_bytes`). Bounds what a few hundred bytes of zstd expanding to megabytes cost the other
    devices. 0 disables it."""
    decoded_bytes_burst_per_device: float = 16 * 1024 * 1024
    """The balance a device may spend at once (at least one body of `max_body_bytes`)."""
    max_in_flight_records: int = 50_000
    """Records awaiting durability at which utilization reaches 1.0."""
    shed_loop_lag_ms: float = 200.0
    """Event-loop lag at which utilization reaches 1.0 (requests queue before any record waits); 0 disables."""
    shed_medium_at: float = 0.9
    shed_low_at: float = 0.7
    priority_ingest: Priority = "medium"
    priority_batch: Priority = "medium"
    priority_events: Priority = "medium"
    spool_quota_bytes: int = 1 << 30
    """Bytes a worker's spools may hold (with `high_priority_spool`, an eighth of it is high priority's own)."""
    high_priority_spool: bool = True
    """High priority's records go to a spool of their own per worker (`spool/w<N>h`), with its own group commit,
    so that a high-priority acknowledgement waits for its own small commits and never for the large bodies of lower
    priorities appended before it. It holds an eighth of `spool_quota_bytes`; when it is full, high priority's
    records go to the worker's main spool. Delivery and the archive drain both."""
    spool_segment_bytes: int = 64 << 20
    spool_retention_seconds: float = 3600.0
    commit_window_ms: float = 1.0
    """How long a worker's main spool's committer waits, after the first request of a commit, for others to share
    its fsync (group commit)."""
    high_priority_commit_window_ms: float = 0.0
    """`commit_window_ms` of high priority's own spool (`high_priority_spool`): 0, it commits as soon as asked.
    High priority is meant to be a trickle, so waiting for company there saves few fsyncs and costs every reading
    the window: unloaded, a single high reading took 2.8 ms at the median against 3.9 ms with the 1 ms window
    (300 readings 50 ms apart, one worker; a commit's fsync took 0.4 ms). Requests that come while a commit runs
    still share the next one."""
    dedup_capacity: int = 1_000_000
    dedup_ttl_seconds: float = 3600.0
    kafka_ack_timeout_s: float = 10.0
    shutdown_deadline_s: float = 10.0
    delivery_nice: int = 10
    """The OS priority (nice, 0-19) the delivery process (`tidegate deliver`: Kafka, the archive) runs at. When the
    CPU runs out, the kernel gives its share to the workers, which answer requests, first: what delivery does not
    get to waits in the spool, durable, and is delivered once the CPU is free (`tidegate_spool_lag_records`). In
    `bench/flood.py` delivery took a third of the CPU the workers needed. 0 runs it beside them as an equal."""
    silence_default_interval_s: float = 60.0
    """The expected reporting interval of a device with little history (fewer than 3 intervals learned): it is
    silent once unheard for 3x this (seed 001: 3x a 60 s interval). A device is silent once unheard for 3x its
    interval: configured (`silence_intervals`), else learned from its inter-arrival times."""
    silence_min_interval_s: float = 1.0
    """The floor of learned intervals: arrivals closer than this to the previous one (retries, a batch sent over
    several requests) are a burst and teach nothing."""
    silence_intervals: str = ""
    """Intervals that override the learned ones, as `prefix=seconds` pairs separated by commas (e.g.
    `meter-=900,meter-hall=60`): the longest prefix a device id starts with wins (a whole id is its own prefix)."""
    silence_scan_interval_s: float = 1.0
    """How often the silence detector (one worker of the host at a time) scans the devices' table."""
    device_capacity: int = 100_000
    """Devices whose last-seen state `<data_dir>/state/devices.tbl` holds (shared by the workers of a host, kept
    across restarts, about 171 bytes each); past it, the device unheard for longest is forgotten."""
    device_forget_after_s: float = 7 * 86400.0
    """A device unheard for this long is forgotten (no longer listed as silent)."""
    kafka_topic_device_alerts: str = "device-alerts"
    """Where `device_silence` and `device_recovered` records go."""
    log_sample_rate: float = 0.01
    """Share of successful requests logged once the request rate passes `log_full_below_rps`."""
    log_full_below_rps: float = 50.0
    fault_injection: bool = False
    """For tests and the chaos suite only: a worker turns a file `<data_dir>/faults/spool-write-failures` holding
    N into its next N spool commits failing halfway, as on a full disk (where no small filesystem can be mounted),
    a file `<data_dir>/faults/spool-commit-delay` holding M into every commit's fsync starting M ms late, as on a
    disk that stalls (0 lifts it), and a file `<data_dir>/faults/loop-stall` into its event loop stopping until
    `<data_dir>/faults/loop-resume` appears."""
    admission_initial_limit: float = 1024.0
    """The adaptive concurrency limit per worker, in cost units (a body costs 1 + size / 4 KiB), at start;
    it adapts between `admission_min_limit` and `admission_max_limit` (the core's `gateway/limit.rs`)."""
    admission_min_limit: float = 1024.0
    admission_max_limit: float = 4096.0
    admission_low_share: float = 0.5
    """Share of the limit low-priority requests may fill (they are shed first)."""
    admission_medium_share: float = 0.8
    admission_bulk_bodies: int = 2
    """Large bodies (64 KiB or more declared; compressed, 16 KiB) of low priority a worker has in flight at once,
    counting those of every priority, while a higher priority is arriving (`admission_loop_queue_higher_recent_s`);
    medium may find twice as many while high is arriving; high is not held by it; 0 turns it off. The worker takes
    such bodies one at a time (its accept thread): more in flight only wait there, and every commit, which a
    high-priority reading waits for, grows with them (`bench/flood.py`)."""
    admission_bulk_narrow_at: float = 2.0
    """High priority's own time (the median of its last 8 small requests, admission to answer) against its baseline
    (following it down over about 5 s, up over about 20 s) at which the bulk lane narrows to one large body in
    flight, for a hold of 5 s that doubles, up to 80 s, when high suffers again soon after the lane widened. Under a
    flood of large bodies one at a time keeps a high reading's p99 lower and takes a fifth to a third fewer of them
    (`bench/flood.py`), so the lane narrows only while high priority pays for its width. 0: the lane keeps
    `admission_bulk_bodies`."""
    admission_tolerance: float = 2.0
    """How much slower than its best a request may get before the limit shrinks."""
    admission_loop_busy_target: float = 1.0
    """Share of its time a worker's event loop may be busy (not waiting for I/O) before low priority is shed, then
    medium, in proportion (high never by it): under CPU saturation requests queue before the app (the loop's ready
    queue, Granian, the kernel), out of the limit's sight, and this is the signal that rises. 1 (the default) turns
    it off: at full utilization with a bounded set of clients (a closed-loop benchmark) the loop is just as busy,
    and it would shed there too; 0.85 is what the overload ramp was measured with (bench/JOURNAL.md)."""
    admission_loop_queue_low: float = 12.0
    """Cost (a reading costs about 1) let in as it arrived and still waiting for the worker's event loop at which
    a low-priority request is shed as it arrives: under CPU saturation that wait is where requests queue, first
    come first served whatever their priority. Medium is shed at `admission_loop_queue_medium`, high at
    `admission_loop_queue_high`, so high waits behind at most medium's mark of new work."""
    admission_loop_queue_medium: float = 32.0
    admission_loop_queue_high: float = 256.0
    admission_loop_queue_interval_s: float = 0.3
    """How long the loop's queue must stand past a priority's mark before that priority is shed (and under it
    before shedding stops): a shorter burst sheds nothing, as each refusal pauses a well-behaved client for at
    least the smallest Retry-After, a second."""
    admission_loop_queue_higher_recent_s: float = 1.0
    """Medium and low are shed by the loop's queue, and held by the bulk lane (`admission_bulk_bodies`), only while a
    higher priority has arrived within this many seconds: the shedding makes room for the priorities above, and with
    none of them coming it helps no one."""
    admission_refusal_hold_s: float = 1.0
    """The longest a shed (load, not a client error) refused as the request arrives is held before it is answered:
    between half and all of this, at most its Retry-After, and the Retry-After sent is what is left of it; 0 answers
    at once. Under CPU saturation every arrival, refused or not, costs the worker a turn of its one Python thread,
    which high priority waits behind; a client that ignores Retry-After sends again as soon as its refusal comes, and
    the hold paces it to one arrival per hold per connection, while one that honours it waits no longer in all than
    before (README, Admission)."""
    admission_refusal_weight: float = 2.0
    """Event-loop time of one refusal, as a multiple of the part the worker measures (from the decision to the
    answer sent; Granian's part of a request comes on top). That much time is taken out of the admitted requests'
    time per refusal made while they were in flight, so that refusals do not shrink the limit."""
    mqtt: str | None = None
    """An MQTT broker to ingest from, `mqtt://host[:1883]` (or `mqtts://host[:8883]`, verified against the system's
    CAs); None (the default) runs no MQTT source."""
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    """Give it in the TOML file or `TIDEGATE_MQTT_PASSWORD`: there is no flag, as flags show in `ps`."""
    mqtt_protocol: MqttProtocol = "auto"
    """"5", "3.1.1", or "auto": MQTT 5 (shared subscriptions), falling back to 3.1.1 when the broker refuses 5."""
    mqtt_shared_group: str = "tidegate"
    """Subscribe as `$share/<group>/<topic>`, so every worker of every instance in the group takes a share of the
    fleet (MQTT 5, or MQTT 3.1.1 set by `mqtt_protocol`). Empty, or 3.1.1 as the fallback of `auto`: a plain
    subscription, held by worker 0 of the instance alone."""
    mqtt_client_id: str | None = None
    """The prefix of each worker's client id (`<prefix>-w<N>`); by default `tidegate-<host>-<hash of the data dir>`.
    Stable across restarts, so the broker keeps each worker's session and redelivers what it had not acknowledged."""
    mqtt_session_expiry_s: int = 86400
    """How long the broker keeps a worker's session (its subscription and unacknowledged messages) while it is away."""
    mqtt_receive_maximum: int = 256
    """Messages a worker reads and holds unacknowledged, at most: the bounded window that withheld acknowledgements
    close under overload. The worker stops reading at this many (MQTT 5 brokers are also told, as the Receive
    Maximum; mosquitto 2.0.11 does not keep to it), so it holds under MQTT 3.1.1 too."""
    mqtt_topic_telemetry: str = "devices/{device_id}/telemetry"
    """Topic patterns: `{device_id}` stands for one topic level, the device the message is taken from."""
    mqtt_topic_batch: str = "devices/{device_id}/batch"
    mqtt_topic_events: str = "devices/{device_id}/events"
    dedup_key_ttl_seconds: float = 86400.0
    """How long an idempotency key (`X-Idempotency-Key`, a batch's `batch_id`) is remembered; event ids are
    remembered `dedup_ttl_seconds`. Both live in `<data_dir>/state/dedup.tbl`, shared by the workers of a host and
    kept across restarts; `dedup_capacity` bounds the ids it holds (about 43 bytes each)."""
    rate_capacity: int = 100_000
    """Devices whose token buckets are held at once in `<data_dir>/state/rate.tbl` (shared by the workers of a
    host, about 43 bytes each). A bucket takes room only until it is full again (`burst_per_device /
    rate_per_device` seconds after the device's last request); past the capacity the fullest bucket is forgotten
    (its device gets its burst again)."""
    archive: bool = True
    """Seed 004's immutable archive: the delivery process writes every accepted record and every duplicate
    occurrence from the spool to Parquet (README: The archive). A spool segment is deleted only once the archive
    (and Kafka, when configured) has passed it."""
    archive_url: str | None = None
    """Where the archive lives: None is `<data_dir>/archive`; a directory; or `s3://bucket/prefix` (an
    S3-compatible bucket, credentials from the usual `AWS_*` variables)."""
    archive_s3_endpoint: str | None = None
    """The S3-compatible service's address (`http://127.0.0.1:9000`); None is AWS itself."""
    archive_s3_region: str | None = None
    archive_flush_interval_s: float = 1.0
    """How long new records wait to be archived together (fewer, larger files): they are queryable this long
    after they were spooled, at most."""
    archive_max_file_records: int = 100_000
    """Records read from a spool at once, so the most one Parquet file holds."""
    idle_timeout_s: float = 10.0
    """A connection is closed when a request's headers have not all arrived this long after it was opened, after
    it became idle (after its previous request) or after their first byte (Granian's HTTP/1 header read timeout:
    0.001 to 60 s)."""
    http: HttpMode = "1"
    """HTTP/1.1 only (`1`, the default), or `auto` (HTTP/1.1 and cleartext HTTP/2 by prior knowledge). With
    `auto`, a connection that never sends a byte is never closed (Granian's protocol detection has no timer):
    choose it only behind a proxy that bounds idle connections."""

    @property
    def spool_root(self) -> Path:
        return self.data_dir / "spool"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "keys.json"

    @property
    def max_record_bytes(self) -> int:
        """The largest record (key, value and headers as a Kafka record batch of its own) accepted at the door: what
        Kafka will take, so that nothing acknowledged is refused later. One limit for the validators and the
        forwarder."""
        return min(MAX_RECORD_BYTES, self.kafka_max_request_bytes)

    @property
    def kafka_topics(self) -> tuple[str, ...]:
        """Every topic records are delivered to."""
        return (
            self.kafka_topic_telemetry,
            self.kafka_topic_events,
            self.kafka_topic_dead_letter,
            self.kafka_topic_device_alerts,
        )

    @property
    def silence_interval_rules(self) -> list[tuple[str, float]]:
        """`silence_intervals` as `(prefix, seconds)` pairs; a ValueError names a malformed one."""
        return parse_intervals(self.silence_intervals)


def parse_intervals(text: str) -> list[tuple[str, float]]:
    """`prefix=seconds,...` (see `Settings.silence_intervals`) as pairs; ValueError for a malformed pair."""
    rules = []
    for item in text.split(","):
        if not item.strip():
            continue
        prefix, equals, seconds = item.strip().partition("=")
        try:
            interval = float(seconds)
        except ValueError:
            interval = math.nan
        if not equals or not prefix.strip() or not math.isfinite(interval) or interval <= 0:
            raise ValueError(f"silence_intervals: {item.strip()!r} is not prefix=seconds (a positive number)")
        rules.append((prefix.strip(), interval))
    return rules


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
SETTING_NAMES = tuple(_FIELDS)


def choices_of(name: str) -> tuple[str, ...]:
    """The values a setting may take when they are a few names ("true", "false" for a flag), else ()."""
    kind = str(_FIELDS[name].type).removesuffix(" | None")
    return ("true", "false") if kind == "bool" else _CHOICES.get(kind, ())


def _coerce(name: str, raw: Any) -> Any:
    kind = str(_FIELDS[name].type)
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if raw is None or (optional and raw == ""):
        return None
    if kind == "bool":
        if isinstance(raw, str):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return bool(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    if kind in _CHOICES:
        value = str(raw)  # `kafka_acks = 1` in TOML is the number 1
        if value not in _CHOICES[kind]:
            raise ValueError(f"{name} must be one of {', '.join(_CHOICES[kind])}, not {raw!r}")
        return value
    return str(raw)


ENV_ALIASES = {"dry_run": "DRY_RUN"}
"""Variables read when the `TIDEGATE_` one is not set: seed 001's names."""


def load_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults < TOML file (`[tidegate]` table or top level) < `TIDEGATE_<NAME>` variables < overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or (Path(env["TIDEGATE_CONFIG"]) if env.get("TIDEGATE_CONFIG") else None)
    if config_file is not None:
        document = tomllib.loads(config_file.read_text())
        table = document.get("tidegate", document)
        unknown = set(table) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown settings in {config_file}: {', '.join(sorted(unknown))}")
        values.update({name: _coerce(name, raw) for name, raw in table.items()})
    for name in _FIELDS:
        raw = env.get(f"TIDEGATE_{name.upper()}", env.get(ENV_ALIASES.get(name, "")))
        if raw is not None:
            values[name] = _coerce(name, raw)
    values.update({name: _coerce(name, raw) for name, raw in overrides.items() if raw is not None})
    return Settings(**values)


def to_env(settings: Settings) -> dict[str, str]:
    """The settings as `TIDEGATE_*` variables, to hand them to server worker processes."""
    out = {}
    for name in _FIELDS:
        value = getattr(settings, name)
        if value is not None:
            out[f"TIDEGATE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
