//! Whole-payload failures. Per-record problems are data (`Rejection`), never errors.

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

/// Every failure the crate reports, in one enum: the binding turns this into Python exceptions in one place.
/// Per-record problems are not errors (see `Issue`); the variants wrap each stage's own error so that a stage's
/// functions keep their precise type and convert with `?`.
#[derive(Debug)]
pub enum Error {
    /// A whole request body could not be taken apart into records (decode, limits, headers).
    Payload(PayloadError),
    /// A JSON Schema could not be compiled into a contract.
    Schema(crate::schema::SchemaError),
    /// The spool's disk quota is reached: the caller sheds load rather than lose data.
    SpoolFull { quota_bytes: u64, used_bytes: u64 },
    /// The operating system refused a read, write, fsync, lock or map; the errno is kept.
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Payload(error) => error.fmt(f),
            Error::Schema(error) => error.fmt(f),
            Error::SpoolFull {
                quota_bytes,
                used_bytes,
            } => write!(f, "spool full: {used_bytes} of {quota_bytes} bytes used"),
            Error::Io(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<PayloadError> for Error {
    fn from(error: PayloadError) -> Self {
        Error::Payload(error)
    }
}

impl From<crate::schema::SchemaError> for Error {
    fn from(error: crate::schema::SchemaError) -> Self {
        Error::Schema(error)
    }
}

impl From<crate::spool::SpoolError> for Error {
    fn from(error: crate::spool::SpoolError) -> Self {
        match error {
            crate::spool::SpoolError::Full {
                quota_bytes,
                used_bytes,
            } => Error::SpoolFull {
                quota_bytes,
                used_bytes,
            },
            crate::spool::SpoolError::Io(error) => Error::Io(error),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Io(error)
    }
}
