"""The OpenAPI 3.1 description of the HTTP API and the capabilities document."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from tidegate._native import (
    MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_TRACEPARENT_BYTES,
    MAX_TRACESTATE_BYTES,
)
from tidegate.config import PRIORITIES, Settings

FORMATS = ["application/json", "application/x-ndjson", "application/cbor"]
ENCODINGS = ["identity", "gzip", "zstd"]

_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339 with a time zone."}
_METRICS = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": "number"},
    "description": "Metric name to number. Values outside the semantic ranges add warnings, never rejections.",
}
_DEVICE_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_EVENT_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "BLAKE3-based id (see the README)."}
_LAG = {"type": ["integer", "null"], "description": "Reception time minus record time, in milliseconds."}
_ARCHIVE_KEY = {
    "type": "string",
    "pattern": "^raw/source=[^/]+/event_type=[^/]+/event_date=\\d{4}-\\d{2}-\\d{2}/ingest_date=\\d{4}-\\d{2}-\\d{2}/"
    "hour=\\d{2}/event_id=[0-9a-f]{32}$",
    "description": "Where the archive keeps this occurrence of the record: its partition directory under the archive's "
    "root and its event id (README: The archive). Absent for dry runs and with the archive off.",
}
_TIME = {"type": "string", "format": "date-time"}


def _schemas(settings: Settings) -> dict[str, Any]:
    reading = {
        "type": "object",
        "required": ["device_id", "timestamp", "metrics"],
        "additionalProperties": False,
        "properties": {
            "device_id": _DEVICE_ID,
            "timestamp": _TIMESTAMP,
            "metrics": _METRICS,
            "metadata": {"type": "object"},
        },
    }
    # In a batch, a reading inherits the batch's device_id (and may repeat it).
    batch_reading = reading | {"required": ["timestamp", "metrics"]}
    name = {"type": "string", "minLength": 1, "maxLength": 256}
    event = {
        "type": "object",
        "required": ["source", "event_type", "entity_id", "event_time", "payload"],
        "additionalProperties": False,
        "properties": {"source": name, "event_type": name, "entity_id": name, "event_time": _TIMESTAMP, "payload": {}},
    }
    field_error = {
        "type": "object",
        "required": ["path", "message"],
        "properties": {"path": {"type": "string"}, "message": {"type": "string"}, "index": {"type": "integer"}},
    }
    return {
        "TelemetryReading": reading,
        "Batch": {
            "type": "object",
            "required": ["device_id", "batch_id", "readings"],
            "additionalProperties": False,
            "properties": {
                "device_id": _DEVICE_ID,
                "batch_id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Idempotency key."},
                "readings": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_batch_readings,
                    "items": {"$ref": "#/components/schemas/BatchReading"},
                },
            },
        },
        "BatchReading": batch_reading,
        "Event": event,
        "Events": {
            "oneOf": [
                {"$ref": "#/components/schemas/Event"},
                {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            ]
        },
        "Readings": {
            "oneOf": [
                {"$ref": "#/components/schemas/TelemetryReading"},
                {"type": "array", "items": {"$ref": "#/components/schemas/TelemetryReading"}},
            ]
        },
        "FieldError": field_error,
        "SilentDevice": {
            "type": "object",
            "required": [
                "device_id",
                "last_seen",
                "silent_for_s",
                "expected_interval_s",
                "threshold_s",
                "alerted",
            ],
            "additionalProperties": False,
            "properties": {
                "device_id": _DEVICE_ID,
                "last_seen": {"type": "string", "format": "date-time"},
                "silent_for_s": {"type": "number", "minimum": 0},
                "expected_interval_s": {
                    "type": "number",
                    "description": "Configured for the device's id prefix, else learned from its inter-arrival "
                    "times (at least the default while it has little history).",
                },
                "threshold_s": {"type": "number", "description": "silence_factor x expected_interval_s."},
                "alerted": {
                    "type": "boolean",
                    "description": "A device_silence alert was raised (no device_recovered yet).",
                },
            },
        },
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "errors"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
            },
        },
        "ReadingAccepted": {
            "type": "object",
            "required": ["status", "event_id", "ingest_lag_ms", "warnings"],
            "properties": {
                "status": {"enum": ["accepted", "duplicate"]},
                "event_id": _EVENT_ID,
                "ingest_lag_ms": _LAG,
                "warnings": {"type": "array", "items": {"type": "string"}},
                "archive_key": _ARCHIVE_KEY,
                "dry_run": {"type": "boolean"},
            },
        },
        "ItemResult": {
            "type": "object",
            "required": ["index", "status", "event_id"],
            "properties": {
                "index": {"type": "integer"},
                "status": {"enum": ["accepted", "duplicate", "rejected", "ACCEPTED", "DUPLICATE", "REJECTED"]},
                "event_id": {"type": ["string", "null"]},
                "ingest_lag_ms": _LAG,
                "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
                "reason": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/FieldError"}},
                "warnings": {"type": "array", "items": {"type": "string"}},
                "archive_key": _ARCHIVE_KEY,
            },
        },
        "ManyAccepted": {
            "type": "object",
            "required": ["accepted", "duplicates", "rejected", "results"],
            "properties": {
                "accepted": {"type": "integer"},
                "duplicates": {"type": "integer"},
                "rejected": {"type": "integer"},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/ItemResult"}},
                "dry_run": {"type": "boolean"},
            },
        },
        "BatchAccepted": {
            "type": "object",
            "required": [
                "status",
                "batch_id",
                "device_id",
                "readings_count",
                "accepted",
                "duplicates",
                "rejected",
                "results",
            ],
            "properties": {
                "status": {"enum": ["accepted", "duplicate"]},
                "batch_id": {"type": "string"},
                "device_id": {"type": "string"},
                "readings_count": {"type": "integer"},
                "accepted": {"type": "integer"},
                "duplicates": {"type": "integer"},
                "rejected": {"type": "integer"},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/ItemResult"}},
                "warnings": {"type": "array", "items": {"type": "object"}},
                "dry_run": {"type": "boolean"},
            },
        },
        "EventAccepted": {
            "type": "object",
            "required": ["status", "event_id", "ingest_lag_ms"],
            "properties": {
                "status": {"enum": ["ACCEPTED", "DUPLICATE"]},
                "event_id": _EVENT_ID,
                "ingest_lag_ms": _LAG,
                "archive_key": _ARCHIVE_KEY,
                "dry_run": {"type": "boolean"},
            },
        },
        **_archive_schemas(),
    }


def _archive_schemas() -> dict[str, Any]:
    """The archive's rows and answers (tidegate.archive.query)."""
    occurrence = {
        "type": "object",
        "required": ["event_id", "status", "source", "event_type", "ingest_time", "archive_key"],
        "properties": {
            "event_id": _EVENT_ID,
            "status": {"enum": ["ACCEPTED", "DUPLICATE"]},
            "source": {"type": "string", "description": "Where the record came in: http or mqtt."},
            "event_type": {"type": "string", "description": "Its contract: telemetry or event."},
            "entity_id": {"type": ["string", "null"], "description": "The device or entity (the Kafka key)."},
            "event_time": {**_TIME, "type": ["string", "null"]},
            "ingest_time": _TIME,
            "ingest_lag_ms": _LAG,
            "archive_key": _ARCHIVE_KEY | {"description": "The row's archive key."},
            "payload_blake3": {"type": "string", "description": "BLAKE3 (hex) of the record's value as sent to Kafka."},
            "topic": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "record": {"type": "object", "description": "The record's value: canonical JSON, as sent to Kafka."},
        },
    }
    return {
        "ArchivedRow": occurrence,
        "ArchivedEvent": {
            "type": "object",
            "required": ["event_id", "status", "record", "metadata", "duplicates", "occurrences"],
            "properties": {
                "event_id": _EVENT_ID,
                "status": {"enum": ["ACCEPTED", "DUPLICATE"]},
                "record": {"type": ["object", "null"]},
                "metadata": {"type": "object"},
                "duplicates": {"type": "integer", "description": "Duplicate occurrences recorded."},
                "occurrences": {"type": "array", "items": {"$ref": "#/components/schemas/ArchivedRow"}},
            },
        },
        "ArchivedEvents": {
            "type": "object",
            "required": ["count", "events", "next_cursor"],
            "properties": {
                "count": {"type": "integer"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/ArchivedRow"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for the next page; null on the last one.",
                },
            },
        },
        "LateArrivals": {
            "type": "object",
            "required": ["min_lag_ms", "count", "events"],
            "properties": {
                "min_lag_ms": {"type": "integer"},
                "count": {"type": "integer"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/ArchivedRow"}},
            },
        },
        "HourlyCounts": {
            "type": "object",
            "required": ["hours"],
            "properties": {
                "hours": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["hour", "source", "event_type", "accepted", "duplicates"],
                        "properties": {
                            "hour": _TIME,
                            "source": {"type": "string"},
                            "event_type": {"type": "string"},
                            "accepted": {"type": "integer"},
                            "duplicates": {"type": "integer"},
                            "max_ingest_lag_ms": _LAG,
                        },
                    },
                }
            },
        },
    }


def _archive_operation(summary: str, schema: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"operatorKey": []}],
        "parameters": parameters,
        "responses": {
            "200": {
                "description": summary,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            "400": _problem("A query parameter that cannot be used, named in `errors[].path` (`query:from`)."),
            "401": _problem("No key, or an unknown or revoked one."),
            "403": _problem("A device's key: the archive is read with an operator key (`tidegate keys add-operator`)."),
            "404": _problem("Not in the archive (yet), or the archive is off."),
            "503": _problem("The archive cannot be read right now (a damaged file, a bucket away).", retry_after=True),
        },
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema or {"type": "string"}, "description": description}


def _archive_paths() -> dict[str, Any]:
    time_range = [
        _query("from", "From this time (inclusive): ISO 8601 (UTC unless it has an offset) or Unix milliseconds."),
        _query("to", "Up to this time (exclusive)."),
        _query("source", "http or mqtt."),
        _query("event_type", "telemetry or event."),
    ]
    limit = _query("limit", "Rows per page.", {"type": "integer", "minimum": 1, "maximum": 1000})
    return {
        "/api/v1/events/{event_id}": {
            "get": _archive_operation(
                "One archived event: its record, metadata and every occurrence (duplicates too).",
                "ArchivedEvent",
                [{"name": "event_id", "in": "path", "required": True, "schema": _EVENT_ID}],
            )
        },
        "/api/v1/events/late": {
            "get": _archive_operation(
                "Late arrivals: records received (within from..to) more than min_lag_ms after their own time.",
                "LateArrivals",
                [
                    _query("min_lag_ms", "The bound, in milliseconds (60000).", {"type": "integer", "minimum": 0}),
                    *time_range,
                    limit,
                ],
            )
        },
        "/api/v1/events/hourly": {
            "get": _archive_operation(
                "Records per hour of reception (within from..to), source and event type.", "HourlyCounts", time_range
            )
        },
    }


_QUARANTINED = {
    "X-Tidegate-Quarantined": {
        "schema": {"type": "integer", "minimum": 1},
        "description": "How many rejected records (or the refused body) were kept on the dead-letter topic; absent "
        "when none were (quarantine off, a dry run, or the device's quarantine budget spent).",
    }
}


def _problem(description: str, retry_after: bool = False, quarantined: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    if quarantined:
        response["headers"] = _QUARANTINED
    return response


def _ingest_operation(summary: str, request_schema: str, accepted: list[str], settings: Settings) -> dict[str, Any]:
    body_schema = {"$ref": f"#/components/schemas/{request_schema}"}
    accepted_schema: dict[str, Any] = (
        {"$ref": f"#/components/schemas/{accepted[0]}"}
        if len(accepted) == 1
        else {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in accepted]}
    )
    parameters = [
        {
            "name": "X-Device-Token",
            "in": "header",
            "schema": {"type": "string"},
            "description": "The device key (or X-API-Key, or Authorization: Bearer).",
        },
        {"name": "X-API-Key", "in": "header", "schema": {"type": "string"}, "description": "The device key."},
        {"name": "X-Priority", "in": "header", "schema": {"enum": list(PRIORITIES)}},
        {
            "name": "X-Idempotency-Key",
            "in": "header",
            "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_BYTES},
            "description": "A retry with the same key (per device and route) within the dedup window is a duplicate.",
        },
        {
            "name": "X-Dry-Run",
            "in": "header",
            "schema": {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$"},
            "description": "true or 1 (any case): validate and compute ids, write nothing; false or 0: write. "
            "Any other value is a 400.",
        },
        {
            "name": "X-Ack",
            "in": "header",
            "schema": {"enum": ["spool", "kafka"]},
            "description": "Answer once the spool (default) or the broker holds the records (case-insensitive); "
            "kafka without Kafka configured is a 400.",
        },
        {
            "name": "traceparent",
            "in": "header",
            "schema": {"type": "string", "maxLength": MAX_TRACEPARENT_BYTES},
            "description": "W3C Trace Context; copied into every record's headers.",
        },
        {
            "name": "tracestate",
            "in": "header",
            "schema": {"type": "string", "maxLength": MAX_TRACESTATE_BYTES},
            "description": "W3C Trace Context; copied into every record's headers along with traceparent.",
        },
        {"name": "Content-Encoding", "in": "header", "schema": {"enum": ENCODINGS}},
    ]
    return {
        "summary": summary,
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body_schema},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/cbor": {"schema": {"type": "string", "contentEncoding": "binary"}},
            },
        },
        "responses": {
            "202": {
                "description": "Accepted: durable at the level X-Durability names.",
                "headers": {
                    "X-Durability": {"schema": {"enum": ["spool", "kafka", "none"]}},
                    "X-Tidegate-Flagged": {
                        "schema": {"enum": ["true"]},
                        "description": "Some value is outside its semantic range.",
                    },
                    **_QUARANTINED,
                },
                "content": {"application/json": {"schema": accepted_schema}},
            },
            "400": _problem(
                "Malformed or invalid (every record rejected), with JSON paths; or a malformed header "
                "(`header:traceparent`, `header:tracestate`, `header:X-Idempotency-Key`, `header:X-Ack`, "
                "`header:X-Priority`)."
                " A malformed body, and every rejected record, is quarantined.",
                quarantined=True,
            ),
            "401": _problem("No or unknown device key."),
            "403": _problem("The key belongs to another device (the body is quarantined).", quarantined=True),
            "408": _problem("The body was not received in time."),
            "413": _problem(
                f"The body exceeds {settings.max_body_bytes} bytes (once decompressed: the body is quarantined).",
                quarantined=True,
            ),
            "415": _problem("Unsupported content type or encoding (the body is quarantined).", quarantined=True),
            "429": _problem("The device is over its rate.", retry_after=True),
            "503": _problem("Shed under load, not ready, or the spool is full.", retry_after=True),
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    health = {"type": "object", "properties": {"status": {"type": "string"}, "checks": {"type": "object"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tidegate",
            "version": version("tidegate"),
            "description": "Ingest API for device telemetry and events.",
        },
        "paths": {
            "/api/v1/ingest": {
                "post": _ingest_operation(
                    "One telemetry reading (or an array / NDJSON of them).",
                    "Readings",
                    ["ReadingAccepted", "ManyAccepted"],
                    settings,
                )
            },
            "/api/v1/ingest/batch": {
                "post": _ingest_operation(
                    "A batch of readings from one device; batch_id is an idempotency key.",
                    "Batch",
                    ["BatchAccepted"],
                    settings,
                )
            },
            "/api/v1/events": {
                "post": _ingest_operation(
                    "Events: one object, an array or NDJSON.", "Events", ["EventAccepted", "ManyAccepted"], settings
                ),
                "get": _archive_operation(
                    "Archived records by entity, source, event type and event time (from..to), in event-time order.",
                    "ArchivedEvents",
                    [
                        _query("entity_id", "The device or entity."),
                        _query("from", "Event time from (inclusive): ISO 8601 or Unix milliseconds."),
                        _query("to", "Event time up to (exclusive)."),
                        _query("source", "http or mqtt."),
                        _query("event_type", "telemetry or event."),
                        _query("status", "ACCEPTED or DUPLICATE.", {"enum": ["ACCEPTED", "DUPLICATE"]}),
                        _query("cursor", "The next_cursor of the previous page."),
                        _query("limit", "Rows per page.", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    ],
                ),
            },
            **_archive_paths(),
            "/health/live": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": health}}}},
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "Ready", "content": {"application/json": {"schema": health}}},
                        "503": {"description": "Not ready", "content": {"application/json": {"schema": health}}},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/v1/capabilities": {
                "get": {
                    "summary": "Formats, encodings, limits, contracts",
                    "responses": {
                        "200": {
                            "description": "Capabilities",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/api/v1/devices/silent": {
                "get": {
                    "summary": "Silent devices: unheard for 3x their expected interval (configured, else learned)",
                    "description": "The rule of the `tidegate_silent_devices` gauge and of the `device_silence` "
                    "alerts. Sorted by device id, a page at a time, from a snapshot of the devices' shared table at "
                    "most `silence_scan_interval_s` old. Needs an operator key (`tidegate keys add-operator`) as "
                    "`X-Operator-Key` or `Authorization: Bearer`, unless auth is off.",
                    "parameters": [
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "`next_cursor` of the previous page.",
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {"name": "X-Operator-Key", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of silent devices",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["as_of", "silence_factor", "count", "devices", "next_cursor"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "as_of": {"type": "string", "format": "date-time"},
                                            "silence_factor": {"type": "integer"},
                                            "count": {"type": "integer", "description": "Silent devices in all."},
                                            "devices": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/SilentDevice"},
                                            },
                                            "next_cursor": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        "400": _problem("`cursor` or `limit` is malformed."),
                        "401": _problem("No operator key, or an unknown or revoked one."),
                        "403": _problem("A device's key: it cannot list the fleet."),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "operatorKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An operator key (`tidegate keys add-operator NAME`); also as X-Operator-Key.",
                }
            },
        },
    }


def capabilities(settings: Settings) -> dict[str, Any]:
    return {
        "version": version("tidegate"),
        "formats": FORMATS,
        "encodings": ENCODINGS,
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_batch_readings": settings.max_batch_readings,
            "max_record_bytes": settings.max_record_bytes,
            "max_depth": 32,
            "max_past_seconds": settings.max_past_seconds,
            "max_future_seconds": settings.max_future_seconds,
            "rate_per_device": settings.rate_per_device,
            "burst_per_device": settings.burst_per_device,
            "decoded_bytes_per_device": settings.decoded_bytes_per_device,
            "decoded_bytes_burst_per_device": settings.decoded_bytes_burst_per_device,
            "body_timeout_s": settings.body_timeout_s,
        },
        "contracts": {"telemetry": "telemetry/v1", "batch": "telemetry/v1", "event": "event/v1"},
        "priorities": list(PRIORITIES),
        "ack_levels": ["spool", "kafka"] if settings.kafka else ["spool"],
        "auth": ["X-Device-Token", "X-API-Key", "Authorization: Bearer"] if settings.auth else [],
        "dry_run": settings.dry_run,
        "unknown_fields": settings.unknown_fields,
        "quarantine": settings.quarantine,
        "archive": settings.archive,
    }
