"""event_id: the native implementation against the pure-Python reference in tests/reference.py."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import cbor2
import tidegate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import reference

RECEIVED_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
TELEMETRY = tidegate.Validator(tidegate.Contract.telemetry(), max_past_seconds=10**10, max_future_seconds=10**10)
EVENTS = tidegate.Validator(tidegate.Contract.event())

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
# Past the 64-bit range too, where integers are the nearest double.
integers = st.one_of(int64, st.integers(min_value=-(2**70), max_value=2**70))
numbers = st.one_of(finite, integers)
names = st.text(min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=20,
)
timestamps = st.builds(
    lambda y, mo, d, h, mi, s, frac, offset: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{offset}",
    st.integers(1971, 2099),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from(["", ".0", ".5", ".123", ".120", ".000001", ".123456789"]),
    st.sampled_from(["Z", "z", "+00:00", "+05:30", "-08:00"]),
)
device_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
readings = st.fixed_dictionaries(
    {
        "device_id": device_ids,
        "timestamp": timestamps,
        "metrics": st.dictionaries(names, numbers, min_size=1, max_size=6),
    },
    optional={"metadata": st.dictionaries(names, json_values, max_size=4)},
)
events = st.fixed_dictionaries(
    {
        "source": st.text(min_size=1, max_size=10),
        "event_type": st.text(min_size=1, max_size=10),
        "entity_id": st.text(min_size=1, max_size=10),
        "event_time": timestamps,
        "payload": json_values,
    }
)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same value with every object's keys in another order."""
    if isinstance(value, dict):
        items = [(k, shuffled(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def spaced(value: Any) -> bytes:
    return json.dumps(value, indent=3, ensure_ascii=True, separators=(" ,\r\n", " :\t")).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings, st.randoms(use_true_random=False))
def test_telemetry_ids_match_the_reference(record: dict[str, Any], rng: random.Random) -> None:
    expected = reference.event_id("telemetry/v1", record)
    bodies = [
        (json.dumps(record).encode(), "application/json"),
        (spaced(shuffled(record, rng)), "application/json"),
        (cbor2.dumps(shuffled(record, rng)), "application/cbor"),
    ]
    for body, content_type in bodies:
        result = TELEMETRY.validate(body, content_type, received_at_ms=RECEIVED_MS)
        assert result.rejected == [], result.rejected
        assert result.event_ids == [expected]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.randoms(use_true_random=False))
def test_event_ids_match_the_reference(record: dict[str, Any], rng: random.Random) -> None:
    expected = reference.event_id("event/v1", record)
    for body, content_type in [
        (json.dumps(shuffled(record, rng), ensure_ascii=False).encode(), "application/json"),
        (cbor2.dumps(shuffled(record, rng)), "application/cbor"),
    ]:
        result = EVENTS.validate(body, content_type, received_at_ms=RECEIVED_MS)
        assert result.event_ids == [expected], result.rejected


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_value_matches_the_reference(payload: Any) -> None:
    record = {
        "source": "s",
        "event_type": "t",
        "entity_id": "e",
        "event_time": "2026-01-01T00:00:00Z",
        "payload": payload,
    }
    result = EVENTS.validate(json.dumps(record).encode(), received_at_ms=RECEIVED_MS)
    value = json.loads(result.records.values()[0])
    assert reference.canonical_json(value["payload"]) == reference.canonical_json(payload)
    assert result.records.values()[0].decode() == reference.canonical_json(value)


def spellings(number: float) -> set[str]:
    """Ways to write the same decimal value: exponent forms, leading and trailing zeros."""
    sign, digit_tuple, exponent = Decimal(repr(number)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    minus = "-" if sign else ""
    return {
        repr(number),
        f"{minus}0.{digits}e{exponent + len(digits)}",
        f"{minus}{digits}E{exponent:+d}",
        f"{minus}{digits[0]}.{digits[1:]}000e{exponent + len(digits) - 1}",
    }


@settings(max_examples=500, deadline=None)
@given(finite)
def test_number_spellings_are_one_number(number: float) -> None:
    ids = {EVENTS.validate(event_with(s), received_at_ms=RECEIVED_MS).event_ids[0] for s in spellings(number)}
    record = {
        "source": "s",
        "event_type": "t",
        "entity_id": "e",
        "event_time": "2026-01-01T00:00:00Z",
        "payload": number,
    }
    assert ids == {reference.event_id("event/v1", record)}


def event_with(payload: str) -> bytes:
    head = '{"source":"s","event_type":"t","entity_id":"e","event_time":"2026-01-01T00:00:00Z","payload":'
    return f"{head}{payload}}}".encode()


def stored_payload(body: bytes, content_type: str = "application/json") -> str:
    """The payload's canonical text, as stored in the record's value."""
    result = EVENTS.validate(body, content_type, received_at_ms=RECEIVED_MS)
    assert result.rejected == [], result.rejected
    value = result.records.values()[0].decode()
    return value[value.index('"payload":') + len('"payload":') : value.index(',"server_received_at"')]


@settings(max_examples=500, deadline=None)
@given(integers)
def test_integers_keep_their_digits_across_the_64_bit_range(number: int) -> None:
    """README "event_id": an integer of the 64-bit range is its digits; past it, the nearest double."""
    expected = str(number) if -(2**63) <= number < 2**64 else reference.canonical_number(float(number))
    assert reference.canonical_number(number) == expected
    assert stored_payload(event_with(str(number))) == expected
    if -(2**64) <= number < 2**64:  # what CBOR integers can carry
        assert stored_payload(cbor2.dumps(_event(number)), "application/cbor") == expected
    for big in (number,) if -(2**64) <= number < 2**64 else ():
        as_bignum = cbor2.dumps(_event(0))[:-1] + cbor2.dumps(cbor2.CBORTag(2 if big >= 0 else 3, _magnitude(big)))
        assert stored_payload(as_bignum, "application/cbor") == expected


def _event(payload: Any) -> dict[str, Any]:
    head = {"source": "s", "event_type": "t", "entity_id": "e", "event_time": "2026-01-01T00:00:00Z"}
    return {**head, "payload": payload}


def _magnitude(number: int) -> bytes:
    """A CBOR bignum's bytes: n for tag 2, -1 - n for tag 3."""
    n = number if number >= 0 else -1 - number
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


@settings(max_examples=500, deadline=None)
@given(finite)
def test_doubles_printed_any_way_are_the_nearest_double(number: float) -> None:
    """Shortest, C's %.17g (always the same double) and %.15g (the double nearest those 15 digits), and the
    double as CBOR: the documented canonical form and ids."""
    shortest_id = reference.event_id("event/v1", _event(number))
    for text in [repr(number), f"{number:.17g}", f"{number:.17e}"]:
        assert stored_payload(event_with(text)) == reference.canonical_number(number), text
        assert EVENTS.validate(event_with(text), received_at_ms=RECEIVED_MS).event_ids == [shortest_id], text
    fifteen = f"{number:.15g}"
    nearest = json.loads(fifteen)  # an int when %.15g prints digits only, which tidegate keeps exactly too
    if nearest not in (float("inf"), float("-inf")):  # rounded up past the largest double
        assert stored_payload(event_with(fifteen)) == reference.canonical_number(nearest)
    from_cbor = EVENTS.validate(cbor2.dumps(_event(number)), "application/cbor", received_at_ms=RECEIVED_MS)
    assert from_cbor.event_ids == [shortest_id]


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e3).filter(lambda x: len(repr(x)) > 6))
def test_digits_past_double_precision_are_the_nearest_double(number: float) -> None:
    """A spelling with more digits than a double holds is read as the nearest double (never refused)."""
    overlong = repr(number) + "000000000000000000001" if "e" not in repr(number) else None
    if overlong is None or "." not in overlong:
        return
    assert stored_payload(event_with(overlong)) == reference.canonical_number(float(overlong))


README_VECTORS = [
    (
        "telemetry/v1",
        {
            "device_id": "sensor-factory-floor-001",
            "timestamp": "2026-03-27T10:15:30.123Z",
            "metrics": {"temperature": 23.5, "humidity": 67.2, "pressure": 1013.25},
            "metadata": {"firmware_version": "2.1.0", "battery_level": 85, "signal_strength": -67},
        },
    ),
    (
        "event/v1",
        {
            "source": "demo",
            "event_type": "heartbeat",
            "entity_id": "user_123",
            "event_time": "2025-12-28T23:59:59Z",
            "payload": {"steps": 10},
        },
    ),
]


def test_readme_vectors() -> None:
    """The README's test vectors, recomputed both ways."""
    readme = (__import__("pathlib").Path(__file__).parent.parent / "README.md").read_text()
    for name, record in README_VECTORS:
        validator = TELEMETRY if name == "telemetry/v1" else EVENTS
        native = validator.validate(json.dumps(record).encode(), received_at_ms=RECEIVED_MS).event_ids[0]
        assert native == reference.event_id(name, record)
        assert native in readme, f"README lacks the {name} vector {native}"
