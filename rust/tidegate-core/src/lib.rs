//! tidegate's ingest core, in pure Rust (no Python): decoders for JSON, NDJSON and CBOR with hostile-input
//! limits, contracts (a JSON Schema subset), the canonical form and event ids, and delivery-ready batches.
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
//! assert_eq!(outcome.batch.get(0).unwrap().key, Some(&b"dev-1"[..]));
//! ```

pub mod archive_parts;
pub mod batch;
pub mod canonical;
pub mod cbor;
pub mod contract;
pub mod decode;
pub mod dedup;
pub mod error;
pub mod group_commit;
pub mod headers;
pub mod json;
pub mod kafka;
pub mod lastseen;
pub mod number;
pub mod quarantine;
pub mod schema;
pub mod shared;
pub mod spool;
pub mod time;
pub mod validator;
pub mod value;

pub use batch::{RecordBatch, RecordRef};
pub use contract::{Contract, ContractKind, UnknownFields};
pub use error::{Error, Limits, PayloadError};
pub use schema::SchemaError;
pub use validator::{Issue, MetricRange, Outcome, Request, Validator, ValidatorOptions};
