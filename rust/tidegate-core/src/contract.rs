//! Contracts: what a record must look like, where it goes, and which fields make its identity.

use crate::schema::{Schema, SchemaError};

/// The built-in contract kinds and user-defined ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractKind {
    /// Seed 001's telemetry reading.
    Telemetry,
    /// Seed 001's batch envelope; its readings are telemetry records.
    Batch,
    /// Seed 004's event.
    Event,
    /// Compiled from a user's JSON Schema.
    Custom,
}

/// A compiled contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub kind: ContractKind,
    /// Name and version, as sent in the `schema` header: `telemetry/v1`.
    pub name: String,
    /// The schema each record is checked against (for a batch: each reading).
    pub record_schema: Schema,
    /// For a batch: the envelope's schema (its `readings` are validated one by one with `record_schema`).
    pub envelope_schema: Option<Schema>,
    /// Default Kafka topic.
    pub topic: String,
    /// Field whose value is the Kafka key.
    pub key_field: Option<String>,
    /// RFC 3339 field giving the record's own time (for `ingest_lag_ms` and the timestamp window).
    pub time_field: Option<String>,
    /// Whether records outside the timestamp window are rejected (events never are: late data is data).
    pub enforce_window: bool,
    /// Fields whose canonical form is hashed into the event id; `None` means the whole record.
    pub identity_fields: Option<Vec<String>>,
    /// Whether metric ranges apply (telemetry only).
    pub metric_ranges: bool,
}

const DEVICE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn reading_schema(device_id_required: bool) -> String {
    let required = if device_id_required {
        r#"["device_id","timestamp","metrics"]"#
    } else {
        r#"["timestamp","metrics"]"#
    };
    format!(
        r#"{{"type":"object","required":{required},"additionalProperties":false,"properties":{{
            "device_id":{{"type":"string","pattern":"{DEVICE_ID_PATTERN}"}},
            "timestamp":{{"type":"string","format":"date-time"}},
            "metrics":{{"type":"object","minProperties":1,"additionalProperties":{{"type":"number"}}}},
            "metadata":{{"type":"object"}}}}}}"#
    )
}

fn compiled(text: &str) -> Schema {
    Schema::compile_json(text).unwrap_or_else(|e| unreachable!("built-in schema does not compile: {e}"))
}

impl Contract {
    /// Seed 001's telemetry reading: `device_id`, `timestamp`, `metrics` (non-empty, numbers), `metadata`.
    pub fn telemetry() -> Contract {
        Contract {
            kind: ContractKind::Telemetry,
            name: "telemetry/v1".into(),
            record_schema: compiled(&reading_schema(true)),
            envelope_schema: None,
            topic: "telemetry-raw".into(),
            key_field: Some("device_id".into()),
            time_field: Some("timestamp".into()),
            enforce_window: true,
            identity_fields: Some(vec!["device_id".into(), "timestamp".into(), "metrics".into()]),
            metric_ranges: true,
        }
    }

    /// Seed 001's batch: `device_id`, `batch_id`, `readings` (1..=max, each a reading without or with the same
    /// `device_id`). Each accepted reading becomes a telemetry record with the batch's `device_id`.
    pub fn batch() -> Contract {
        let envelope = format!(
            r#"{{"type":"object","required":["device_id","batch_id","readings"],"additionalProperties":false,
                "properties":{{"device_id":{{"type":"string","pattern":"{DEVICE_ID_PATTERN}"}},
                "batch_id":{{"type":"string","minLength":1,"maxLength":128}},
                "readings":{{"type":"array","minItems":1}}}}}}"#
        );
        Contract {
            kind: ContractKind::Batch,
            record_schema: compiled(&reading_schema(false)),
            envelope_schema: Some(compiled(&envelope)),
            ..Contract::telemetry()
        }
    }

    /// Seed 004's event: `source`, `event_type`, `entity_id`, `event_time`, `payload` (any JSON), all required.
    pub fn event() -> Contract {
        let name = r#"{"type":"string","minLength":1,"maxLength":256}"#;
        let schema = format!(
            r#"{{"type":"object","required":["source","event_type","entity_id","event_time","payload"],
                "additionalProperties":false,"properties":{{"source":{name},"event_type":{name},"entity_id":{name},
                "event_time":{{"type":"string","format":"date-time"}},"payload":true}}}}"#
        );
        Contract {
            kind: ContractKind::Event,
            name: "event/v1".into(),
            record_schema: compiled(&schema),
            envelope_schema: None,
            topic: "events-raw".into(),
            key_field: Some("entity_id".into()),
            time_field: Some("event_time".into()),
            enforce_window: false,
            identity_fields: None,
            metric_ranges: false,
        }
    }

    /// A user contract from a JSON Schema subset.
    pub fn custom(
        name: &str,
        schema_json: &str,
        topic: &str,
        key_field: Option<String>,
        time_field: Option<String>,
        identity_fields: Option<Vec<String>>,
    ) -> Result<Contract, SchemaError> {
        Ok(Contract {
            kind: ContractKind::Custom,
            name: name.to_string(),
            record_schema: Schema::compile_json(schema_json)?,
            envelope_schema: None,
            topic: topic.to_string(),
            enforce_window: time_field.is_some(),
            key_field,
            time_field,
            identity_fields,
            metric_ranges: false,
        })
    }
}
