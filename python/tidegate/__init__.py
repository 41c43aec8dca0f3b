"""tidegate: a Rust-accelerated ingest engine for device telemetry and events."""

from tidegate._native import (
    EVENT_ID_DOMAIN,
    Contract,
    DedupWindow,
    Issue,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    RecordBatch,
    SchemaError,
    Spool,
    SpoolFull,
    UnsupportedFormat,
    ValidationResult,
    Validator,
)

__all__ = [
    "EVENT_ID_DOMAIN",
    "Contract",
    "DedupWindow",
    "Issue",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "RecordBatch",
    "SchemaError",
    "Spool",
    "SpoolFull",
    "UnsupportedFormat",
    "ValidationResult",
    "Validator",
]
