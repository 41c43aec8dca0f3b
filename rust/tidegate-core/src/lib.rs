//! tidegate's ingest core, in pure Rust (no Python): decoders for JSON, NDJSON and CBOR with hostile-input
//! limits, contracts (a JSON Schema subset), the canonical form and event ids, and delivery-ready records.
//!
//! ```
//! use tidegate_core::{Contract, Request, Validator, ValidatorOptions};
//!
//! let validator = Validator::new(Contract::telemetry(), ValidatorOptions::default());
//! let body = br#"{"device_id":"dev-1","timestamp":"2026-03-27T10:15:30.123Z","metrics":{"temperature":23.5}}"#;
//! let request = Request {
//!     body,
//!     content_type: "application/json",
//!     content_encoding: None,
//!     received_at_ms: 1_774_606_531_000,
//!     priority: None,
//!     source: None,
//!     traceparent: None,
//!     tracestate: None,
//!     idempotency_key: None,
//!     device_id: None,
//! };
//! let outcome = validator.validate(&request).unwrap();
//! assert_eq!(outcome.accepted, 1);
//! assert_eq!(outcome.records.get(0).unwrap().key, Some(&b"dev-1"[..]));
//! ```

// The request path, one module per stage (rustfmt sorts the list): `decode` the body into values, hold them to a
// `contract`, write their `canonical` form and event id into a record arena, where the `gateway` decides each
// record's outcome with the tables shared by a host's workers (`state`) and appends to the `spool`; then, in the
// delivery process, `deliver` encodes Kafka records and `archive` writes the archive's columns.
pub mod archive;
pub mod canonical;
pub mod contract;
pub mod decode;
pub mod deliver;
pub mod error;
pub mod gateway;
pub mod spool;
pub mod state;

/// For tests: a directory of its own (`tidegate-<name>-…` under the system's temporary directory), removed with
/// everything in it when the returned value is dropped, even if the test panics.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tidegate-{name}-"))
        .tempdir()
        .unwrap()
}

pub use canonical::records::{RecordRef, Records};
pub use contract::schema::SchemaError;
pub use contract::validator::{MetricRange, Outcome, Request, Validator, ValidatorOptions};
pub use contract::{Contract, ContractKind, Issue, UnknownFields};
pub use decode::{Limits, PayloadError};
pub use error::Error;
