"""What real devices send (issue 9): every valid number, CBOR as RFC 8949 defines it, optional nulls, unknown
fields, leap seconds and long fractions, ECMA-262 pattern classes. Nothing valid is refused and nothing vanishes."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
import tidegate

from tests import reference

RECEIVED_MS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
NOW = "2026-11-22T09:59:00Z"
TELEMETRY = tidegate.Validator(tidegate.Contract.telemetry())
EVENTS = tidegate.Validator(tidegate.Contract.event())


def reading(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"device_id": "sensor-001", "timestamp": NOW, "metrics": {"t": 1}}
    record.update(changes)
    return record


def event(payload: Any, **changes: Any) -> dict[str, Any]:
    record = {"source": "s", "event_type": "t", "entity_id": "e", "event_time": NOW, "payload": payload}
    record.update(changes)
    return record


def accepted(validator: tidegate.Validator, body: bytes, content_type: str = "application/json") -> Any:
    result = validator.validate(body, content_type, received_at_ms=RECEIVED_MS)
    assert result.rejected == [], result.rejected
    return result


def payload_of(body: bytes, content_type: str = "application/json") -> Any:
    """The payload as stored (the canonical value's text, so numbers keep their digits)."""
    value = accepted(EVENTS, body, content_type).records.values()[0].decode()
    return value[value.index('"payload":') + len('"payload":') : value.index(',"server_received_at"')]


def event_body(payload_text: str) -> bytes:
    head = f'{{"source":"s","event_type":"t","entity_id":"e","event_time":"{NOW}","payload":'
    return f"{head}{payload_text}}}".encode()


# Numbers


@pytest.mark.parametrize(
    "text",
    ["1796077072273099728", "1796077072273099776", "18446744073709551615", "-9223372036854775808", "9007199254740993"],
)
def test_64_bit_integers_are_kept_exactly(text: str) -> None:
    assert payload_of(event_body(text)) == text
    body = json.dumps(reading(metrics={"counter": int(text)}, metadata={"serial": int(text)})).encode()
    value = accepted(TELEMETRY, body).records.values()[0].decode()
    assert f'"counter":{text}' in value and f'"serial":{text}' in value


def test_one_value_in_any_spelling_is_one_number() -> None:
    ids = {accepted(EVENTS, event_body(text)).event_ids[0] for text in ["10", "10.0", "1e1", "100e-1", "0.1e2"]}
    assert len(ids) == 1
    big = {accepted(EVENTS, event_body(t)).event_ids[0] for t in ["2305843009213693952", "2.305843009213693952e18"]}
    assert len(big) == 1


def test_printf_17g_doubles_are_the_nearest_double() -> None:
    for text, shortest in [("67.200000000000003", "67.2"), ("0.10000000000000001", "0.1"), ("1e400000", None)]:
        if shortest is None:
            result = EVENTS.validate(event_body(text), received_at_ms=RECEIVED_MS)
            assert result.event_ids == [None] and "double" in result.rejected[0].message
            continue
        assert payload_of(event_body(text)) == shortest
        assert accepted(EVENTS, event_body(text)).event_ids == accepted(EVENTS, event_body(shortest)).event_ids


def test_numbers_past_64_bits_are_the_nearest_double() -> None:
    assert payload_of(event_body("18446744073709551616")) == "18446744073709552000"
    assert payload_of(event_body("123456789012345678901234567890")) == "1.2345678901234568e+29"


@pytest.mark.parametrize("number", [2**60, 2**64 - 1, -(2**63), 2**53 + 1, -(2**53) - 1, 1796077072273099728])
def test_cbor_integers_above_2_53_match_their_json_spelling(number: int) -> None:
    record = event({"n": number})
    from_cbor = accepted(EVENTS, cbor2.dumps(record), "application/cbor").event_ids
    assert from_cbor == accepted(EVENTS, json.dumps(record).encode()).event_ids
    assert from_cbor == [reference.event_id("event/v1", record)]


# CBOR


def test_a_simple_value_with_its_extra_byte_rejects_only_its_record() -> None:
    bad = cbor2.dumps(event("x"))[:-2] + b"\xf8\x20"  # the payload "x" replaced by simple(32)
    good = cbor2.dumps(event("y"))
    body = b"\x82" + bad + good
    result = EVENTS.validate(body, "application/cbor", received_at_ms=RECEIVED_MS)
    assert result.accepted == 1 and result.event_ids[0] is None and result.event_ids[1] is not None
    assert result.rejected[0].path == "$[0].payload"


def test_cbor_epoch_time_is_a_timestamp() -> None:
    seconds = 1_795_341_540
    tagged = cbor2.dumps({**reading(), "timestamp": cbor2.CBORTag(1, seconds)})
    ids = accepted(TELEMETRY, tagged, "application/cbor").event_ids
    assert ids == accepted(TELEMETRY, json.dumps(reading()).encode()).event_ids
    fraction = cbor2.dumps({**reading(), "timestamp": cbor2.CBORTag(1, seconds + 0.25)})
    as_text = reading(timestamp="2026-11-22T09:59:00.25Z")
    assert accepted(TELEMETRY, fraction, "application/cbor").event_ids == [reference.event_id("telemetry/v1", as_text)]
    dated = cbor2.dumps({**reading(), "timestamp": cbor2.CBORTag(0, NOW)})
    assert accepted(TELEMETRY, dated, "application/cbor").event_ids == ids


def test_cbor_bignums_are_integers_like_json_ones() -> None:
    positive = b"\xc2\x48" + (2**64 - 1).to_bytes(8, "big")
    negative = b"\xc3\x48" + (2**63 - 1).to_bytes(8, "big")  # -1 - (2^63 - 1) = -2^63
    for encoded, number in [(positive, 2**64 - 1), (negative, -(2**63))]:
        body = cbor2.dumps(event(0))[:-1] + encoded
        assert payload_of(body, "application/cbor") == str(number)
    past_64_bits = cbor2.dumps(event(0))[:-1] + b"\xc2\x49" + b"\x01" + bytes(8)
    assert payload_of(past_64_bits, "application/cbor") == "18446744073709552000"  # as in JSON: nearest double
    not_bytes = cbor2.dumps(event(0))[:-1] + b"\xc2\x01"
    result = EVENTS.validate(not_bytes, "application/cbor", received_at_ms=RECEIVED_MS)
    assert result.rejected[0].path == "$.payload"


# Shapes


def test_null_for_an_optional_field_means_absent() -> None:
    with_null = accepted(TELEMETRY, json.dumps(reading(metadata=None)).encode())
    without = accepted(TELEMETRY, json.dumps(reading()).encode())
    assert with_null.event_ids == without.event_ids
    assert with_null.records.values()[0] == without.records.values()[0]
    required = TELEMETRY.validate(json.dumps(reading(metrics=None)).encode(), received_at_ms=RECEIVED_MS)
    assert required.rejected[0].path == "$.metrics"


def test_unknown_fields_are_kept_outside_the_identity_by_default() -> None:
    extra = accepted(TELEMETRY, json.dumps(reading(location={"lat": 1.5})).encode())
    assert extra.event_ids == accepted(TELEMETRY, json.dumps(reading()).encode()).event_ids
    assert b'"location":{"lat":1.5}' in extra.records.values()[0]
    an_event = accepted(EVENTS, json.dumps(event(1, trace="abc")).encode())
    assert an_event.event_ids == accepted(EVENTS, json.dumps(event(1)).encode()).event_ids
    assert b'"trace":"abc"' in an_event.records.values()[0]


def test_unknown_fields_can_be_rejected_or_dropped() -> None:
    body = json.dumps(reading(location="x")).encode()
    strict = tidegate.Validator(tidegate.Contract.telemetry(unknown_fields="reject"))
    result = strict.validate(body, received_at_ms=RECEIVED_MS)
    assert [(i.path, i.message) for i in result.rejected] == [("$.location", "unknown field")]
    dropping = tidegate.Validator(tidegate.Contract.telemetry(unknown_fields="drop"))
    assert b"location" not in accepted(dropping, body).records.values()[0]
    with pytest.raises(ValueError, match="unknown_fields"):
        tidegate.Contract.event(unknown_fields="ignore")  # type: ignore[arg-type]


def test_a_record_that_is_not_an_object_is_rejected_with_its_reason() -> None:
    validator = tidegate.Validator(tidegate.Contract.from_json_schema({"properties": {"a": {"type": "string"}}}))
    result = validator.validate(b'[{"a": "x"}, 5, "text", null]', received_at_ms=RECEIVED_MS)
    assert (result.total, result.accepted) == (4, 1)
    assert [(i.index, i.path) for i in result.rejected] == [(1, "$[1]"), (2, "$[2]"), (3, "$[3]")]
    assert "object" in result.rejected[0].message


# Times


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2026-06-30T23:59:60Z", "2026-06-30T23:59:60Z"),
        ("2026-07-01T01:59:60.5+02:00", "2026-06-30T23:59:60.5Z"),
        ("2026-06-30T10:15:30.123456789012Z", "2026-06-30T10:15:30.123456789012Z"),
        ("2026-06-30T10:15:30.1000000000000Z", "2026-06-30T10:15:30.1Z"),
    ],
)
def test_leap_seconds_and_long_fractions_are_times(text: str, canonical: str) -> None:
    validator = tidegate.Validator(tidegate.Contract.event())
    result = accepted(validator, json.dumps(event(1, event_time=text)).encode())
    assert f'"event_time":"{canonical}"'.encode() in result.records.values()[0]
    assert reference.canonical_timestamp(text) == canonical
    assert result.event_ids == [reference.event_id("event/v1", event(1, event_time=text))]


def test_a_leap_second_is_only_the_last_second_of_a_utc_day() -> None:
    result = EVENTS.validate(json.dumps(event(1, event_time="2026-06-30T12:30:60Z")).encode())
    assert result.rejected[0].path == "$.event_time"


# Patterns


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (r"^\d+$", "0123456789", "\u09e7\u09e8\u09e9"),  # Bengali digits are not \d in ECMA-262
        (r"^\w+$", "A_z9", "\u00e9t\u00e9"),
        (r"^[\w-]+$", "a-b_c", "\u00e9"),
        (r"^\D$", "\u09e7", "7"),
        (r"^a\sb$", "a\u00a0b", "a\u0085b"),  # ECMA-262 \s: NBSP yes, NEL no
        (r"^.\bx$", "\u00e9x", "ax"),  # \b between ASCII word and non-word characters
    ],
)
def test_pattern_classes_follow_ecma_262(pattern: str, good: str, bad: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}}
    validator = tidegate.Validator(tidegate.Contract.from_json_schema(schema))
    assert validator.validate(json.dumps({"a": good}).encode()).rejected == []
    assert validator.validate(json.dumps({"a": bad}).encode()).rejected != []
