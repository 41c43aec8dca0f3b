//! What decoding an untrusted body may not exceed (`Limits`), and why a whole body could not be decoded
//! (`PayloadError`). Per-record problems are data (`Issue`), never errors.

use std::fmt;

/// Why a whole request could not be taken apart into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// A request header that would be copied into every record (or into the dedup window) is malformed or too
    /// long; `header` is its name as documented (`traceparent`, `tracestate`, `X-Idempotency-Key`).
    InvalidHeader { header: &'static str, message: String },
    /// Not parseable in the declared format (syntax error, truncation, invalid UTF-8 outside a line of NDJSON,
    /// trailing data); `offset` is the byte position in the decoded body.
    Malformed { offset: usize, message: String },
    /// Larger than a configured limit (after decompression for the byte limit).
    TooLarge { what: &'static str, limit: usize },
    /// A content type this endpoint cannot decode.
    UnsupportedFormat(String),
    /// A content encoding this endpoint cannot decode.
    UnsupportedEncoding(String),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::InvalidHeader { header, message } => write!(f, "invalid {header} header: {message}"),
            PayloadError::Malformed { offset, message } => write!(f, "malformed body at byte {offset}: {message}"),
            PayloadError::TooLarge { what, limit } => write!(f, "{what} exceeds the limit of {limit}"),
            PayloadError::UnsupportedFormat(ct) => write!(
                f,
                "unsupported content type {ct:?}: use application/json, application/x-ndjson or application/cbor"
            ),
            PayloadError::UnsupportedEncoding(enc) => {
                write!(f, "unsupported content encoding {enc:?}: use identity, gzip or zstd")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// Limits applied while decoding untrusted bodies. Every one is configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Body size after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Nesting depth of arrays and objects (the top-level record is depth 1).
    pub max_depth: usize,
    /// Length of one string value, in bytes.
    pub max_string_bytes: usize,
    /// Length of one object key, in bytes.
    pub max_key_bytes: usize,
    /// Items in one array.
    pub max_array_items: usize,
    /// Keys in one object.
    pub max_object_keys: usize,
    /// Records in one body.
    pub max_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_depth: 32,
            max_string_bytes: 64 * 1024,
            max_key_bytes: 256,
            max_array_items: 10_000,
            max_object_keys: 1_000,
            max_records: 10_000,
        }
    }
}
