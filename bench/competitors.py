"""The validators under comparison, all enforcing seed 001's reading contract.

Constraints, as tidegate's `Contract.telemetry()` enforces them:

- an object with the fields device_id, timestamp, metrics (required) and metadata (optional; null means absent);
  other fields are allowed (seed 001's model ignores them; tidegate keeps them in the record, not in its id);
- device_id: a string matching ^[A-Za-z0-9_-]{1,64}$ (end of text, so no trailing newline);
- timestamp: an RFC 3339 date-time with a zone, within [reception - 7 days, reception + 5 minutes];
- metrics: a non-empty object of numbers (booleans are not numbers); metadata: an object when present;
- semantic ranges (temperature, humidity, pressure, battery_level, signal_strength in metrics or metadata) only
  produce warnings, identified by (record index, JSON path) as tidegate reports them.

tidegate does more than that per record: it computes the BLAKE3 event id, writes the canonical enriched JSON value
and headers into Kafka-ready records, and isolates bad records (the others are still accepted). The Python
competitors only validate and raise `Rejected` at the first bad record (all or nothing, which is cheaper).

Known differences at the edges of the grammar, outside the benchmark data and outside the correctness tests:
msgspec and Pydantic accept a zone without colon (`+0200`), Pydantic accepts a time without seconds
(`10:15Z`), msgspec, Pydantic and orjson keep the last of duplicate keys where tidegate rejects the record, and
JSON `NaN` or `1e400` fail the whole body in tidegate but only the record elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple, Protocol

import msgspec
import orjson
import tidegate
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from .data import content_type

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_PAST = timedelta(days=7)
MAX_FUTURE = timedelta(minutes=5)
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (-50.0, 150.0),
    "humidity": (0.0, 100.0),
    "pressure": (800.0, 1200.0),
    "battery_level": (0.0, 100.0),
    "signal_strength": (-120.0, 0.0),
}

LIBRARIES = ("tidegate", "msgspec", "pydantic", "orjson")

Warnings = list[tuple[int, str]]


class Rejected(ValueError):
    """A Python competitor found a bad record; the whole document is refused."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"record {index}: {reason}")
        self.index = index


@dataclass(frozen=True, slots=True)
class Checked:
    """A Python competitor's output: the validated records (structs, models or dicts) and the range warnings."""

    records: list[Any]
    warnings: Warnings


class Outcome(NamedTuple):
    """What any validator decided about a document, comparable across libraries."""

    accepted: int
    rejected: tuple[int, ...]
    warnings: tuple[tuple[int, str], ...]


def window(received_at_ms: int) -> tuple[datetime, datetime]:
    received = datetime.fromtimestamp(received_at_ms / 1000, UTC)
    return received - MAX_PAST, received + MAX_FUTURE


def _range_warnings(index: int, section: str, values: Mapping[str, Any], out: Warnings) -> None:
    for name, value in values.items():
        bounds = RANGES.get(name)
        if bounds is not None and (type(value) is float or type(value) is int) and not bounds[0] <= value <= bounds[1]:
            out.append((index, f"$.{section}.{name}"))


def _lines(body: bytes) -> list[bytes]:
    """NDJSON records as tidegate splits them: on newlines, skipping blank lines."""
    return [line for line in body.split(b"\n") if line and not line.isspace()]


class _Reading(Protocol):
    @property
    def timestamp(self) -> datetime: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def metadata(self) -> Mapping[str, Any] | msgspec.UnsetType: ...


def _after_decode(records: list[Any], received_at_ms: int) -> Checked:
    """The checks a typed decoder cannot express: the timestamp window and the semantic ranges."""
    lo, hi = window(received_at_ms)
    warnings: Warnings = []
    reading: _Reading
    for index, reading in enumerate(records):
        timestamp = reading.timestamp
        if timestamp < lo or timestamp > hi:
            raise Rejected(index, "timestamp outside the accepted window")
        _range_warnings(index, "metrics", reading.metrics, warnings)
        metadata = reading.metadata
        if metadata:
            _range_warnings(index, "metadata", metadata, warnings)
    return Checked(records, warnings)


# --- msgspec ---------------------------------------------------------------------------------------------------------


class MsgspecReading(msgspec.Struct):
    # msgspec matches patterns with re.search, where `$` also matches before a final newline: `\Z` is exact.
    device_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    metrics: Annotated[dict[str, float], msgspec.Meta(min_length=1)]
    metadata: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET


_msgspec_list = msgspec.json.Decoder(list[MsgspecReading])
_msgspec_one = msgspec.json.Decoder(MsgspecReading)
_MSGSPEC_INDEX = re.compile(r"`\$\[(\d+)\]")


def _msgspec_rejected(error: msgspec.ValidationError) -> Rejected:
    found = _MSGSPEC_INDEX.search(str(error))
    return Rejected(int(found.group(1)) if found else -1, str(error))


def msgspec_json_array(body: bytes, received_at_ms: int) -> Checked:
    try:
        records = _msgspec_list.decode(body)
    except msgspec.ValidationError as error:
        raise _msgspec_rejected(error) from None
    return _after_decode(records, received_at_ms)


if hasattr(_msgspec_one, "decode_lines"):

    def msgspec_ndjson(body: bytes, received_at_ms: int) -> Checked:
        try:
            records = _msgspec_one.decode_lines(body)
        except msgspec.ValidationError as error:
            raise _msgspec_rejected(error) from None
        return _after_decode(records, received_at_ms)

else:  # pragma: no cover - msgspec < 0.19

    def msgspec_ndjson(body: bytes, received_at_ms: int) -> Checked:
        records = []
        decode = _msgspec_one.decode
        for index, line in enumerate(_lines(body)):
            try:
                records.append(decode(line))
            except msgspec.ValidationError as error:
                raise Rejected(index, str(error)) from None
        return _after_decode(records, received_at_ms)


# --- Pydantic v2 -----------------------------------------------------------------------------------------------------


class PydanticReading(BaseModel):
    # strict: no "23.5" -> 23.5, no Unix seconds as a timestamp; numbers must be finite.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]  # Rust regex: `$` is end of text
    timestamp: AwareDatetime
    metrics: Annotated[dict[str, float], Field(min_length=1)]
    metadata: dict[str, Any] | None = None  # absent or null


_pydantic_list = TypeAdapter(list[PydanticReading])
_pydantic_one = TypeAdapter(PydanticReading)


def _pydantic_rejected(error: ValidationError, index: int | None = None) -> Rejected:
    location = error.errors()[0]["loc"]
    if index is None:
        index = int(location[0]) if location else -1
    return Rejected(index, str(error))


def pydantic_json_array(body: bytes, received_at_ms: int) -> Checked:
    try:
        records = _pydantic_list.validate_json(body)
    except ValidationError as error:
        raise _pydantic_rejected(error) from None
    return _after_decode(records, received_at_ms)


def pydantic_ndjson(body: bytes, received_at_ms: int) -> Checked:
    """One `validate_json` per line (joining the lines into an array would let a bad line change its neighbours)."""
    records = []
    validate = _pydantic_one.validate_json
    for index, line in enumerate(_lines(body)):
        try:
            records.append(validate(line))
        except ValidationError as error:
            raise _pydantic_rejected(error, index) from None
    return _after_decode(records, received_at_ms)


# --- orjson + hand-written checks ------------------------------------------------------------------------------------

_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}").fullmatch
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})").fullmatch
_fromisoformat = datetime.fromisoformat


def _check(index: int, record: object, lo: datetime, hi: datetime, warnings: Warnings) -> None:
    if type(record) is not dict:
        raise Rejected(index, "expected an object")
    device_id = record.get("device_id")
    if type(device_id) is not str or _DEVICE_ID(device_id) is None:
        raise Rejected(index, "device_id must be a string matching " + DEVICE_ID_PATTERN)
    timestamp = record.get("timestamp")
    if type(timestamp) is not str or _RFC3339(timestamp) is None:
        raise Rejected(index, "timestamp must be an RFC 3339 date-time with a zone")
    try:
        moment = _fromisoformat(timestamp)
    except ValueError:
        try:  # Python 3.11 refuses a lowercase `t` or `z`, RFC 3339 allows them
            moment = _fromisoformat(timestamp.upper())
        except ValueError:
            raise Rejected(index, "timestamp is not a valid date-time") from None
    if moment < lo or moment > hi:
        raise Rejected(index, "timestamp outside the accepted window")
    metrics = record.get("metrics")
    if type(metrics) is not dict or not metrics:
        raise Rejected(index, "metrics must be a non-empty object")
    for value in metrics.values():
        if type(value) is not float and type(value) is not int:
            raise Rejected(index, "metric values must be numbers")
    _range_warnings(index, "metrics", metrics, warnings)
    metadata = record.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise Rejected(index, "metadata must be an object")
        _range_warnings(index, "metadata", metadata, warnings)


def _check_all(records: Iterable[object], received_at_ms: int) -> Checked:
    lo, hi = window(received_at_ms)
    warnings: Warnings = []
    checked = []
    for index, record in enumerate(records):
        _check(index, record, lo, hi, warnings)
        checked.append(record)
    return Checked(checked, warnings)


def orjson_json_array(body: bytes, received_at_ms: int) -> Checked:
    document = orjson.loads(body)
    return _check_all(document if type(document) is list else [document], received_at_ms)


def orjson_ndjson(body: bytes, received_at_ms: int) -> Checked:
    loads = orjson.loads
    records: list[object] = []
    for index, line in enumerate(_lines(body)):
        try:
            records.append(loads(line))
        except orjson.JSONDecodeError as error:
            raise Rejected(index, str(error)) from None
    return _check_all(records, received_at_ms)


# --- registry --------------------------------------------------------------------------------------------------------

Runner = Callable[[bytes], object]


def tidegate_runner(fmt: str, received_at_ms: int) -> Callable[[bytes], tidegate.ValidationResult]:
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    declared = content_type(fmt)

    def run(body: bytes) -> tidegate.ValidationResult:
        return validator.validate(body, declared, received_at_ms=received_at_ms)

    return run


_PYTHON: dict[str, dict[str, Callable[[bytes, int], Checked]]] = {
    "msgspec": {"json-array": msgspec_json_array, "ndjson": msgspec_ndjson},
    "pydantic": {"json-array": pydantic_json_array, "ndjson": pydantic_ndjson},
    "orjson": {"json-array": orjson_json_array, "ndjson": orjson_ndjson},
}


def runner(library: str, fmt: str, received_at_ms: int) -> Runner:
    """A one-argument callable validating one document of `fmt`, as benchmarked."""
    if library == "tidegate":
        return tidegate_runner(fmt, received_at_ms)
    check = _PYTHON[library][fmt]

    def run(body: bytes) -> Checked:
        return check(body, received_at_ms)

    return run


_RECORD_PREFIX = re.compile(r"^\$\[\d+\]")  # an array body's paths start at the document: `$[3].metrics.x`


def outcome(library: str, fmt: str, body: bytes, received_at_ms: int) -> Outcome:
    """What `library` decided about `body`, with warning paths relative to the record.

    A Python competitor refusing the document counts as 0 accepted and the index of the first bad record;
    tidegate reports every bad record and accepts the others.
    """
    if library == "tidegate":
        result = tidegate_runner(fmt, received_at_ms)(body)
        warnings = tuple(
            (-1 if issue.index is None else issue.index, _RECORD_PREFIX.sub("$", issue.path, count=1))
            for issue in result.warnings
        )
        rejected = tuple(sorted({-1 if issue.index is None else issue.index for issue in result.rejected}))
        return Outcome(result.accepted, rejected, warnings)
    try:
        checked = _PYTHON[library][fmt](body, received_at_ms)
    except Rejected as rejection:
        return Outcome(0, (rejection.index,), ())
    return Outcome(len(checked.records), (), tuple(checked.warnings))
