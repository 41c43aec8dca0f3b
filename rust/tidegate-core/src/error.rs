//! The crate's one error type: each stage's own error, wrapped.

use std::fmt;

use crate::decode::PayloadError;

/// Every failure the crate reports, in one enum: the binding turns this into Python exceptions in one place.
/// Per-record problems are not errors (see `Issue`); the variants wrap each stage's own error so that a stage's
/// functions keep their precise type and convert with `?`.
#[derive(Debug)]
pub enum Error {
    /// A whole request body could not be taken apart into records (decode, limits, headers).
    Payload(PayloadError),
    /// A JSON Schema could not be compiled into a contract.
    Schema(crate::contract::schema::SchemaError),
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

impl From<crate::contract::schema::SchemaError> for Error {
    fn from(error: crate::contract::schema::SchemaError) -> Self {
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
