"""tidegate: a Rust-accelerated ingest engine for device telemetry and events."""

from importlib.metadata import version as _version

from tidegate._native import (
    EVENT_ID_DOMAIN,
    MAX_RECORD_BYTES,
    Contract,
    DedupWindow,
    InvalidHeader,
    Issue,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    RateTable,
    Records,
    SchemaError,
    Spool,
    SpoolFull,
    TidegateError,
    UnsupportedFormat,
    ValidationResult,
    Validator,
)

__version__ = _version("tidegate")

__all__ = [
    "EVENT_ID_DOMAIN",
    "MAX_RECORD_BYTES",
    "Contract",
    "DedupWindow",
    "InvalidHeader",
    "Issue",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "RateTable",
    "Records",
    "SchemaError",
    "Spool",
    "SpoolFull",
    "TidegateError",
    "UnsupportedFormat",
    "ValidationResult",
    "Validator",
    "__version__",
]
