"""The native validator's contract: formats, outcomes, event ids, batches, limits and hostile input."""

from __future__ import annotations

import errno
import gzip
import json
import threading
import time
from typing import Any, ClassVar

import cbor2
import pytest
import tidegate
import zstandard

from tests.conftest import TRACEPARENT, event, iso_now, reading


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(dumps(r) for r in records) + b"\n"


class TestFormats:
    def test_one_object(self, telemetry: tidegate.Validator) -> None:
        result = telemetry.validate(dumps(reading()))
        assert (result.total, result.accepted, result.rejected) == (1, 1, [])
        assert len(result.event_ids) == 1
        assert result.event_ids[0] is not None and len(result.event_ids[0]) == 32

    def test_array_ndjson_and_cbor_agree(self, telemetry: tidegate.Validator) -> None:
        records = [reading(f"dev-{i}") for i in range(5)]
        as_array = telemetry.validate(dumps(records))
        as_lines = telemetry.validate(ndjson(records), "application/x-ndjson")
        as_cbor = telemetry.validate(cbor2.dumps(records), "application/cbor")
        assert as_array.accepted == as_lines.accepted == as_cbor.accepted == 5
        assert as_array.event_ids == as_lines.event_ids == as_cbor.event_ids

    @pytest.mark.parametrize("encoding", ["gzip", "zstd"])
    def test_compressed_bodies(self, telemetry: tidegate.Validator, encoding: str) -> None:
        body = dumps([reading(), reading("other")])
        packed = gzip.compress(body) if encoding == "gzip" else zstandard.ZstdCompressor().compress(body)
        assert telemetry.validate(packed, "application/json", encoding).accepted == 2

    def test_content_type_parameters_are_ignored(self, telemetry: tidegate.Validator) -> None:
        assert telemetry.validate(dumps(reading()), "application/json; charset=utf-8").accepted == 1

    @pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data"])
    def test_unsupported_content_type(self, telemetry: tidegate.Validator, content_type: str) -> None:
        with pytest.raises(tidegate.UnsupportedFormat):
            telemetry.validate(dumps(reading()), content_type)

    def test_unsupported_encoding(self, telemetry: tidegate.Validator) -> None:
        with pytest.raises(tidegate.UnsupportedFormat, match="br"):
            telemetry.validate(dumps(reading()), "application/json", "br")


class TestOutcomes:
    def test_bad_records_never_spoil_good_ones(self, telemetry: tidegate.Validator) -> None:
        records = [reading("a"), reading("bad id!"), reading("c", metrics={}), reading("d")]
        result = telemetry.validate(dumps(records))
        assert (result.total, result.accepted) == (4, 2)
        assert [i.index for i in result.rejected] == [1, 2]
        assert [i.path for i in result.rejected] == ["$[1].device_id", "$[2].metrics"]
        assert result.event_ids[1] is None and result.event_ids[2] is None
        assert result.event_ids[0] is not None and result.event_ids[3] is not None
        assert len(result.records) == 2

    def test_malformed_ndjson_line_is_one_rejection(self, telemetry: tidegate.Validator) -> None:
        body = dumps(reading("a")) + b"\n{not json\n" + b"\xff\xfe\n" + dumps(reading("b")) + b"\n"
        result = telemetry.validate(body, "application/x-ndjson")
        assert (result.total, result.accepted) == (4, 2)
        assert [i.index for i in result.rejected] == [1, 2]
        assert "malformed JSON" in result.rejected[0].message
        assert "UTF-8" in result.rejected[1].message

    def test_every_failure_has_a_path_and_message(self, telemetry: tidegate.Validator) -> None:
        bad = {"device_id": 7, "timestamp": "yesterday", "metrics": {"t": "hot"}, "extra": 1}
        result = tidegate.Validator(tidegate.Contract.telemetry(unknown_fields="reject")).validate(dumps(bad))
        found = {(i.path, i.message) for i in result.rejected}
        assert ("$.device_id", "expected string, got integer") in found
        assert ("$.timestamp", "must be an RFC 3339 date-time with a time zone") in found
        assert ("$.metrics.t", "expected number, got string") in found
        assert ("$.extra", "unknown field") in found

    def test_timestamp_window(self, telemetry: tidegate.Validator) -> None:
        records = [reading(timestamp=iso_now(-8 * 86400)), reading(timestamp=iso_now(600)), reading()]
        result = telemetry.validate(dumps(records))
        assert [i.index for i in result.rejected] == [0, 1]
        assert "7 days" in result.rejected[0].message
        assert "5 minutes" in result.rejected[1].message
        wide = tidegate.Validator(tidegate.Contract.telemetry(), max_past_seconds=9 * 86400, max_future_seconds=900)
        assert wide.validate(dumps(records)).accepted == 3

    def test_semantic_ranges_warn_and_copy_to_dlq(self, telemetry: tidegate.Validator) -> None:
        hot = reading(metrics={"temperature": 999})
        result = telemetry.validate(dumps([hot, reading()]))
        assert result.accepted == 2
        assert [(w.index, w.path) for w in result.warnings] == [(0, "$[0].metrics.temperature")]
        assert "outside expected range [-50, 150]" in result.warnings[0].message
        assert result.records.topics == ["telemetry-raw", "ingest-dlq"]
        (dlq,) = result.records.records("ingest-dlq")
        headers = dict(dlq[2])
        assert headers["dlq-reason"] == b"semantic-range"
        assert b"temperature=999" in headers["warnings"]
        custom = tidegate.Validator(tidegate.Contract.telemetry(), metric_ranges={"temperature": (0, 1000)})
        assert custom.validate(dumps(hot)).warnings == []

    def test_lag_is_reception_minus_record_time(self, telemetry: tidegate.Validator) -> None:
        now_ms = int(time.time() * 1000)
        record = reading(timestamp="2026-03-27T10:15:30.123Z")
        received = 1_774_606_530_123 + 5000
        wide = tidegate.Validator(tidegate.Contract.telemetry(), max_past_seconds=now_ms / 1000)
        assert wide.validate(dumps(record), received_at_ms=received).ingest_lag_ms == [5000]

    def test_enriched_value_and_headers(self, telemetry: tidegate.Validator) -> None:
        record = reading(timestamp="2026-03-27T12:15:30.1230+02:00")
        received = 1_774_606_531_000
        wide = tidegate.Validator(tidegate.Contract.telemetry(), max_past_seconds=10**9)
        result = wide.validate(dumps(record), received_at_ms=received, priority="high", traceparent=TRACEPARENT)
        ((key, value, headers, timestamp_ms),) = result.records.records()
        assert key == b"sensor-factory-floor-001"
        assert timestamp_ms == received
        parsed = json.loads(value)
        assert parsed["event_id"] == result.event_ids[0]
        assert parsed["timestamp"] == "2026-03-27T10:15:30.123Z"
        assert parsed["server_received_at"] == "2026-03-27T10:15:31.000Z"
        assert parsed["ingest_lag_ms"] == 877
        assert list(parsed) == sorted(parsed), "canonical JSON has sorted keys"
        assert value == json.dumps(parsed, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
        assert dict(headers) == {
            "event_id": result.event_ids[0].encode() if result.event_ids[0] else b"",
            "content-type": b"application/json",
            "schema": b"telemetry/v1",
            "priority": b"high",
            "traceparent": TRACEPARENT.encode(),
        }


class TestEventIds:
    def test_same_logical_record_same_id(self, telemetry: tidegate.Validator) -> None:
        spellings = [
            b'{"device_id":"d","timestamp":"2026-11-22T10:00:00Z","metrics":{"a":1.0,"b":2}}',
            b'{ "metrics" : { "b" : 2.00, "a" : 1 }, '
            b'"timestamp" : "2026-11-22T11:00:00.000+01:00", "device_id" : "d" }',
            b'{"device_id":"d","timestamp":"2026-11-22t10:00:00z","metrics":{"a":10e-1,"b":0.2e1}}',
        ]
        received = 1_795_341_600_000
        ids = {telemetry.validate(s, received_at_ms=received).event_ids[0] for s in spellings}
        cbor = cbor2.dumps({"metrics": {"b": 2.0, "a": 1}, "device_id": "d", "timestamp": "2026-11-22T10:00:00Z"})
        ids.add(telemetry.validate(cbor, "application/cbor", received_at_ms=received).event_ids[0])
        assert len(ids) == 1 and None not in ids

    def test_different_content_different_id(self, telemetry: tidegate.Validator) -> None:
        base = reading()
        ids = {
            telemetry.validate(dumps(r)).event_ids[0]
            for r in [base, {**base, "device_id": "x"}, {**base, "metrics": {"temperature": 23.6}}]
        }
        assert len(ids) == 3

    def test_metadata_is_not_identity(self, telemetry: tidegate.Validator) -> None:
        base = reading()
        other = {**base, "metadata": {"firmware_version": "9"}}
        assert telemetry.validate(dumps(base)).event_ids == telemetry.validate(dumps(other)).event_ids

    def test_single_and_batch_readings_share_ids(
        self, telemetry: tidegate.Validator, batches: tidegate.Validator
    ) -> None:
        single = reading("dev-9")
        batch = {
            "device_id": "dev-9",
            "batch_id": "b-1",
            "readings": [{k: v for k, v in single.items() if k != "device_id"}],
        }
        assert telemetry.validate(dumps(single)).event_ids == batches.validate(dumps(batch)).event_ids

    def test_event_ids_hash_every_event_field(self, events: tidegate.Validator) -> None:
        one = events.validate(dumps(event())).event_ids[0]
        two = events.validate(dumps(event(payload={"steps": 11}))).event_ids[0]
        assert one is not None and two is not None and one != two

    def test_client_cannot_choose_the_event_id(self) -> None:
        schema = {"type": "object", "properties": {"event_id": {"type": "string"}, "x": {"type": "integer"}}}
        validator = tidegate.Validator(tidegate.Contract.from_json_schema(schema))
        result = validator.validate(b'{"event_id": "0000", "x": 1}')
        value = json.loads(result.records.values()[0])
        assert value["event_id"] == result.event_ids[0] != "0000"


class TestBatchContract:
    def test_partial_batch(self, batches: tidegate.Validator) -> None:
        body = {
            "device_id": "dev-1",
            "batch_id": "b-42",
            "readings": [
                {"timestamp": iso_now(), "metrics": {"t": 1}},
                {"timestamp": iso_now(), "metrics": {"t": "x"}},
                {"device_id": "dev-2", "timestamp": iso_now(), "metrics": {"t": 1}},
                {"device_id": "dev-1", "timestamp": iso_now(), "metrics": {"t": 2}},
            ],
        }
        result = batches.validate(dumps(body))
        assert (result.total, result.accepted, result.device_id, result.batch_id) == (4, 2, "dev-1", "b-42")
        assert [(i.index, i.path) for i in result.rejected] == [
            (1, "$.readings[1].metrics.t"),
            (2, "$.readings[2].device_id"),
        ]
        values = [json.loads(v) for v in result.records.values()]
        assert {v["device_id"] for v in values} == {"dev-1"}
        assert {v["batch_id"] for v in values} == {"b-42"}
        assert result.records.distinct_keys() == ["dev-1"]

    def test_bad_envelope_rejects_everything(self, batches: tidegate.Validator) -> None:
        result = batches.validate(
            dumps({"device_id": "dev-1", "readings": [{"timestamp": iso_now(), "metrics": {"t": 1}}]})
        )
        assert result.accepted == 0
        assert [(i.index, i.path) for i in result.rejected] == [(None, "$.batch_id")]
        empty = batches.validate(dumps({"device_id": "d", "batch_id": "b", "readings": []}))
        assert [i.path for i in empty.rejected] == ["$.readings"]

    def test_reading_limit_is_configurable(self) -> None:
        small = tidegate.Validator(tidegate.Contract.batch(), max_batch_readings=2)
        readings = [{"timestamp": iso_now(), "metrics": {"t": i}} for i in range(3)]
        result = small.validate(dumps({"device_id": "d", "batch_id": "b", "readings": readings}))
        assert result.accepted == 0
        assert result.rejected[0].message == "must have at most 2 items"

    def test_a_batch_body_is_one_object(self, batches: tidegate.Validator) -> None:
        with pytest.raises(tidegate.MalformedPayload):
            batches.validate(b"[{}, {}]")


class TestJsonSchemaContracts:
    SCHEMA: ClassVar[dict[str, Any]] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "order",
        "type": "object",
        "required": ["id", "status", "items", "at"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^o-[0-9]+$", "minLength": 3, "maxLength": 12},
            "status": {"enum": ["new", "paid"]},
            "kind": {"const": "order"},
            "total": {"type": "number", "minimum": 0, "maximum": 1000},
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
            "at": {"type": "string", "format": "date-time"},
            "note": {"type": ["string", "null"]},
        },
    }

    def test_compiles_the_subset_and_enforces_it(self) -> None:
        contract = tidegate.Contract.from_json_schema(self.SCHEMA, name="order/v1", topic="orders", key_field="id")
        assert (contract.kind, contract.name, contract.topic) == ("custom", "order/v1", "orders")
        validator = tidegate.Validator(contract)
        good = {"id": "o-1", "status": "new", "items": [1], "at": iso_now(), "note": None, "kind": "order"}
        bad = {"id": "x", "status": "lost", "items": [], "at": "now", "total": -1, "note": 3, "kind": "o", "zz": 1}
        result = validator.validate(dumps([good, bad]))
        assert result.accepted == 1
        assert result.records.records()[0][0] == b"o-1"
        paths = sorted(i.path for i in result.rejected)
        assert paths == sorted(
            [
                "$[1].id",
                "$[1].id",
                "$[1].status",
                "$[1].items",
                "$[1].at",
                "$[1].total",
                "$[1].note",
                "$[1].kind",
                "$[1].zz",
            ]
        )

    def test_accepts_text_and_bytes(self) -> None:
        text = json.dumps(self.SCHEMA)
        assert tidegate.Contract.from_json_schema(text).kind == "custom"
        assert tidegate.Contract.from_json_schema(text.encode()).kind == "custom"

    @pytest.mark.parametrize(
        ("schema", "where"),
        [
            ({"oneOf": [{"type": "string"}]}, "$.oneOf"),
            ({"properties": {"a": {"$ref": "#/x"}}}, '$.properties.a["$ref"]'),
            ({"type": "strng"}, "$.type"),
            ({"format": "email"}, "$.format"),
            ({"pattern": "(unclosed"}, "$.pattern"),
            ({"minLength": -1}, "$.minLength"),
        ],
    )
    def test_unsupported_or_invalid_schemas_fail_at_compile_time(self, schema: dict[str, Any], where: str) -> None:
        with pytest.raises(tidegate.SchemaError) as raised:
            tidegate.Contract.from_json_schema(schema)
        assert f"at {where}:" in str(raised.value)

    def test_schema_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            tidegate.Contract.from_json_schema("{not json")


class TestHostileInput:
    @pytest.mark.parametrize(
        "body",
        [b"", b"   ", b"{", b'{"a":1', b"[1,]", b"NaN", b'{"a":NaN}', b'{"a":-Infinity}', b"\xff\xfe", b'{"a":1} x'],
    )
    def test_malformed_bodies_raise(self, telemetry: tidegate.Validator, body: bytes) -> None:
        with pytest.raises(tidegate.MalformedPayload):
            telemetry.validate(body)

    @pytest.mark.parametrize(
        ("fragment", "message"),
        [
            (b'"metrics": {"a": 1, "a": 2}', "duplicate key"),
            (b'"metrics": {"a": 1e400}', "beyond the range of a double"),
            (b'"metrics": {"a": 1}, "metadata": {"s": "\\ud800"}', "lone surrogate"),
            (b'"metrics": {"a": 1}, "metadata": {"x": ' + b"[" * 40 + b"]" * 40 + b"}", "nesting deeper than 32"),
        ],
    )
    def test_record_level_problems_reject_only_that_record(
        self, telemetry: tidegate.Validator, fragment: bytes, message: str
    ) -> None:
        bad = b'{"device_id": "d", "timestamp": "' + iso_now().encode() + b'", ' + fragment + b"}"
        body = b"[" + bad + b"," + dumps(reading()) + b"]"
        result = telemetry.validate(body)
        assert result.accepted == 1
        assert [i.index for i in result.rejected] == [0]
        assert message in result.rejected[0].message

    def test_deep_nesting_does_not_overflow_the_stack(self, telemetry: tidegate.Validator) -> None:
        body = b"[" * 1_000_000 + b"]" * 1_000_000
        result = telemetry.validate(body)
        assert result.accepted == 0

    def test_huge_declared_cbor_lengths(self, telemetry: tidegate.Validator) -> None:
        for body in [b"\x9b" + b"\xff" * 8, b"\xbb" + b"\x7f" * 8, b"\x7b" + b"\x7f" + b"\xff" * 7 + b"x"]:
            with pytest.raises(tidegate.MalformedPayload):
                telemetry.validate(body, "application/cbor")

    def test_truncated_cbor(self, telemetry: tidegate.Validator) -> None:
        body = cbor2.dumps(reading())
        for cut in range(len(body)):
            with pytest.raises(tidegate.MalformedPayload):
                telemetry.validate(body[:cut], "application/cbor")

    def test_cbor_values_without_json_equivalent(self, telemetry: tidegate.Validator) -> None:
        record = reading()
        record["metadata"] = {"blob": b"\x00\x01"}
        result = telemetry.validate(cbor2.dumps(record), "application/cbor")
        assert result.accepted == 0 and "byte strings" in result.rejected[0].message
        record["metadata"] = {"n": float("nan")}
        assert telemetry.validate(cbor2.dumps(record), "application/cbor").accepted == 0

    @pytest.mark.parametrize("encoding", ["gzip", "zstd"])
    def test_decompression_bombs(self, encoding: str) -> None:
        validator = tidegate.Validator(tidegate.Contract.telemetry(), max_body_bytes=1 << 20)
        raw = b"[" + b" " * (64 << 20) + b"]"
        bomb = gzip.compress(raw, 9) if encoding == "gzip" else zstandard.ZstdCompressor(level=19).compress(raw)
        assert len(bomb) < 1 << 20
        with pytest.raises(tidegate.PayloadTooLarge):
            validator.validate(bomb, "application/json", encoding)

    def test_corrupt_compressed_bodies(self, telemetry: tidegate.Validator) -> None:
        for encoding in ["gzip", "zstd"]:
            with pytest.raises(tidegate.MalformedPayload):
                telemetry.validate(b"\x1f\x8b\x08\x00garbage-bytes", "application/json", encoding)

    def test_size_limit_applies_to_identity_bodies(self) -> None:
        validator = tidegate.Validator(tidegate.Contract.telemetry(), max_body_bytes=100)
        with pytest.raises(tidegate.PayloadTooLarge):
            validator.validate(dumps(reading()))

    def test_string_key_array_and_record_limits(self) -> None:
        contract = tidegate.Contract.telemetry()
        cases: list[tuple[dict[str, int], str, dict[str, Any]]] = [
            ({"max_string_bytes": 30}, "string longer than 30 bytes", {"metadata": {"s": "x" * 31}}),
            ({"max_key_bytes": 16}, "object key longer than 16 bytes", {"metadata": {"k" * 17: 1}}),
            ({"max_array_items": 2}, "array longer than 2 items", {"metadata": {"a": [1, 2, 3]}}),
            ({"max_object_keys": 5}, "object with more than 5 keys", {"metadata": {str(i): i for i in range(6)}}),
        ]
        for limits, message, overrides in cases:
            validator = tidegate.Validator(contract, **limits)  # type: ignore[arg-type]
            assert validator.validate(dumps(reading("d"))).accepted == 1
            result = validator.validate(dumps(reading("d", **overrides)))
            assert result.accepted == 0 and message in result.rejected[0].message
        with pytest.raises(tidegate.PayloadTooLarge):
            tidegate.Validator(contract, max_records=3).validate(dumps([reading("d")] * 4))

    def test_records_too_large_for_kafka_are_rejected_at_validation(self) -> None:
        validator = tidegate.Validator(tidegate.Contract.event(), max_record_bytes=2000)
        small, big = event(payload={"x": "y" * 100}), event(payload={"x": "y" * 3000})
        result = validator.validate(dumps([small, big, small | {"entity_id": "other"}]))
        assert result.accepted == 2
        assert [(i.index, i.path) for i in result.rejected] == [(1, "$[1]")]
        assert "above the 2000 byte limit" in result.rejected[0].message
        assert len(result.records) == 2 and all(len(v) < 2000 for v in result.records.values())

    def test_the_record_limit_counts_key_and_headers_as_kafka_does(self) -> None:
        """A record is measured as the forwarder measures it (a Kafka v2 record batch of its own: its header, key,
        value and every header): its value fitting the limit is not enough."""
        records = [event(entity_id="a"), event(entity_id="big", payload={"x": "y" * 1500}), event(entity_id="b")]
        received = int(time.time() * 1000)

        def validate(limit: int) -> tidegate.ValidationResult:
            validator = tidegate.Validator(tidegate.Contract.event(), max_record_bytes=limit)
            return validator.validate(
                dumps(records), received_at_ms=received, traceparent=TRACEPARENT, tracestate="congo=t61rc"
            )

        unbounded = validate(10**9)
        limit = len(unbounded.records.values()[1]) + 100

        def left_out(records: tidegate.Records) -> list[bytes]:
            """Values the forwarder's encoder leaves out with the same limit."""
            encoded = records.kafka_range({"events-raw": 1}, max_record_bytes=limit)
            return [encoded.record(position)[1] for _, position in encoded.oversize]

        assert left_out(unbounded.records) == [unbounded.records.values()[1]]
        result = validate(limit)
        assert result.accepted == 2, "the neighbours are kept"
        assert [(i.index, i.path) for i in result.rejected] == [(1, "$[1]")]
        assert "as a Kafka record (key, value and headers)" in result.rejected[0].message
        assert left_out(result.records) == []

    def test_all_exceptions_are_value_errors(self) -> None:
        for error in [
            tidegate.MalformedPayload,
            tidegate.PayloadTooLarge,
            tidegate.UnsupportedFormat,
            tidegate.InvalidHeader,
        ]:
            assert issubclass(error, tidegate.PayloadError) and issubclass(error, ValueError)


class TestRequestHeaders:
    """Headers copied into every record (trace context) or into the dedup window (the idempotency key)."""

    def test_trace_context_is_copied_into_every_record(self, events: tidegate.Validator) -> None:
        tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        result = events.validate(
            dumps([event(), event(entity_id="other")]), traceparent=TRACEPARENT, tracestate=tracestate
        )
        for _, _, headers, _ in result.records.records():
            assert (dict(headers)["traceparent"], dict(headers)["tracestate"]) == (
                TRACEPARENT.encode(),
                tracestate.encode(),
            )
        alone = events.validate(dumps(event()), tracestate=tracestate)
        assert "tracestate" not in dict(alone.records.records()[0][2]), "tracestate means nothing without traceparent"

    @pytest.mark.parametrize(
        ("header", "value"),
        [
            ("traceparent", "0" * 400_000),
            ("traceparent", "00-ab-cd-01"),
            ("traceparent", TRACEPARENT.upper()),
            ("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            ("traceparent", "ff" + TRACEPARENT[2:]),
            ("traceparent", TRACEPARENT + "-more"),
            ("tracestate", "Congo=x"),
            ("tracestate", "congo=1,congo=2"),
            ("tracestate", ",".join(f"k{i}=v" for i in range(33))),
            ("tracestate", "k=" + "v" * 600),
            ("idempotency_key", "k" * (tidegate._native.MAX_IDEMPOTENCY_KEY_BYTES + 1)),
        ],
    )
    def test_malformed_or_long_headers_refuse_the_request(
        self, events: tidegate.Validator, header: str, value: str
    ) -> None:
        extra: dict[str, Any] = {"traceparent": TRACEPARENT} if header == "tracestate" else {}
        with pytest.raises(tidegate.InvalidHeader) as raised:
            events.validate(dumps(event()), **{header: value, **extra})
        assert raised.value.header == {"idempotency_key": "X-Idempotency-Key"}.get(header, header)
        assert len(str(raised.value)) < 200, "the message does not echo the value"

    def test_valid_headers_pass(self, events: tidegate.Validator) -> None:
        future = "cc" + TRACEPARENT[2:] + "-what-comes-next"
        for traceparent in [TRACEPARENT, TRACEPARENT[:-2] + "00", future]:
            assert events.validate(dumps(event()), traceparent=traceparent).accepted == 1
        key = "k" * tidegate._native.MAX_IDEMPOTENCY_KEY_BYTES
        assert events.validate(dumps(event()), traceparent=TRACEPARENT, tracestate="", idempotency_key=key).accepted


class TestRecords:
    def test_grouping_and_merging(self, telemetry: tidegate.Validator, events: tidegate.Validator) -> None:
        merged = tidegate.Records()
        merged.extend(telemetry.validate(dumps([reading("a"), reading("b")])).records)
        merged.extend(events.validate(dumps(event())).records)
        assert len(merged) == 3
        assert merged.topics == ["telemetry-raw", "events-raw"]
        assert len(merged.records("telemetry-raw")) == 2
        assert merged.distinct_keys() == ["a", "b", "user_123"]
        assert len(merged.event_ids("events-raw")) == 1
        assert merged.payload_bytes > 0

    def test_topic_override(self) -> None:
        validator = tidegate.Validator(tidegate.Contract.telemetry(), topic="fleet-a")
        assert validator.topic == "fleet-a"
        assert validator.validate(dumps(reading())).records.topics == ["fleet-a"]


def test_a_validator_is_shared_between_threads(telemetry: tidegate.Validator) -> None:
    bodies = [dumps([reading(f"dev-{t}-{i}") for i in range(50)]) for t in range(8)]
    expected = [telemetry.validate(b, received_at_ms=1_795_341_600_000).event_ids for b in bodies]
    results: list[list[str | None]] = [[] for _ in bodies]

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = telemetry.validate(bodies[i], received_at_ms=1_795_341_600_000).event_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_every_tidegate_error_has_one_base_and_keeps_its_builtin_one() -> None:
    for name in ("PayloadError", "MalformedPayload", "PayloadTooLarge", "UnsupportedFormat", "InvalidHeader"):
        assert issubclass(getattr(tidegate, name), (tidegate.TidegateError, ValueError))
    assert issubclass(tidegate.SchemaError, tidegate.TidegateError)
    assert issubclass(tidegate.SchemaError, ValueError)
    assert issubclass(tidegate.SpoolFull, tidegate.TidegateError)
    assert issubclass(tidegate.SpoolFull, OSError)
    validator = tidegate.Validator(tidegate.Contract.telemetry())
    with pytest.raises(tidegate.TidegateError) as raised:
        validator.validate(b"{", "application/json")
    assert type(raised.value) is tidegate.MalformedPayload
    with pytest.raises(tidegate.TidegateError):
        tidegate.Contract.from_json_schema({"type": "object", "if": {}})


def test_a_spool_io_error_keeps_its_errno_subclass(tmp_path: Any) -> None:
    """The old binding raised a bare OSError without errno for every spool I/O failure."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError) as raised:
        tidegate.Spool(tmp_path / "a-file" / "spool")
    assert raised.value.errno == errno.ENOTDIR


def test_a_full_spool_raises_spool_full_under_both_bases(tmp_path: Any) -> None:
    spool = tidegate.Spool(tmp_path / "spool", segment_bytes=1 << 16, quota_bytes=1 << 16)
    result = tidegate.Validator(tidegate.Contract.telemetry()).validate(
        json.dumps([reading(seq=i) for i in range(200)]).encode(), "application/json"
    )
    with pytest.raises(tidegate.SpoolFull) as raised:
        for _ in range(100):
            spool.append(result.records)
            spool.commit()
    assert isinstance(raised.value, tidegate.TidegateError)
    assert isinstance(raised.value, OSError)
