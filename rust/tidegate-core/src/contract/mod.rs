//! Contracts: what a record must look like, where it goes, and which fields make its identity.

pub mod headers;
pub mod quarantine;
pub mod schema;
pub mod validator;

use schema::{Schema, SchemaError};

/// A rejection or warning: which record (`None` for the batch envelope), where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub index: Option<usize>,
    pub path: String,
    pub message: String,
}

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

/// What becomes of a record's top-level fields that its contract does not declare (seed 001's model ignores
/// them; seed 004: when unsure, ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// Kept in the record as sent, never part of its identity (the default).
    #[default]
    Keep,
    /// The record is rejected, each such field named (`unknown field`).
    Reject,
    /// Left out of the record.
    Drop,
}

impl UnknownFields {
    pub fn parse(name: &str) -> Option<UnknownFields> {
        match name {
            "keep" => Some(UnknownFields::Keep),
            "reject" => Some(UnknownFields::Reject),
            "drop" => Some(UnknownFields::Drop),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UnknownFields::Keep => "keep",
            UnknownFields::Reject => "reject",
            UnknownFields::Drop => "drop",
        }
    }

    /// The `additionalProperties` member of a built-in schema under this policy.
    fn schema_member(self) -> &'static str {
        match self {
            UnknownFields::Reject => r#""additionalProperties":false,"#,
            UnknownFields::Keep | UnknownFields::Drop => "",
        }
    }
}

/// A compiled contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub kind: ContractKind,
    /// Name and version, as sent in the `schema` header: `telemetry/v1`.
    pub name: String,
    /// The schema each record is checked against (for a batch: each reading).
    pub record_schema: Schema,
    /// For telemetry: the record schema when the transport names the device ([`crate::Request::device_id`]), so
    /// that a record may leave `device_id` out.
    pub sourced_record_schema: Option<Schema>,
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
    /// Top-level fields the record schema does not declare. For a custom contract always `Reject` or `Keep`,
    /// as its schema's `additionalProperties` says.
    pub unknown_fields: UnknownFields,
}

const DEVICE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

fn reading_schema(device_id_required: bool, unknown_fields: UnknownFields) -> String {
    let required = if device_id_required {
        r#"["device_id","timestamp","metrics"]"#
    } else {
        r#"["timestamp","metrics"]"#
    };
    let additional = unknown_fields.schema_member();
    format!(
        r#"{{"type":"object","required":{required},{additional}"properties":{{
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
        Contract::telemetry_with(UnknownFields::default())
    }

    /// [`Contract::telemetry`] with a policy for unknown fields.
    pub fn telemetry_with(unknown_fields: UnknownFields) -> Contract {
        Contract {
            kind: ContractKind::Telemetry,
            name: "telemetry/v1".into(),
            record_schema: compiled(&reading_schema(true, unknown_fields)),
            sourced_record_schema: Some(compiled(&reading_schema(false, unknown_fields))),
            envelope_schema: None,
            topic: "telemetry-raw".into(),
            key_field: Some("device_id".into()),
            time_field: Some("timestamp".into()),
            enforce_window: true,
            identity_fields: Some(vec!["device_id".into(), "timestamp".into(), "metrics".into()]),
            metric_ranges: true,
            unknown_fields,
        }
    }

    /// Seed 001's batch: `device_id`, `batch_id`, `readings` (1..=max, each a reading without or with the same
    /// `device_id`). Each accepted reading becomes a telemetry record with the batch's `device_id`.
    pub fn batch() -> Contract {
        Contract::batch_with(UnknownFields::default())
    }

    /// [`Contract::batch`] with a policy for unknown fields (of the envelope, which is not stored, and of each
    /// reading).
    pub fn batch_with(unknown_fields: UnknownFields) -> Contract {
        let additional = unknown_fields.schema_member();
        let envelope = format!(
            r#"{{"type":"object","required":["device_id","batch_id","readings"],{additional}
                "properties":{{"device_id":{{"type":"string","pattern":"{DEVICE_ID_PATTERN}"}},
                "batch_id":{{"type":"string","minLength":1,"maxLength":128}},
                "readings":{{"type":"array","minItems":1}}}}}}"#
        );
        Contract {
            kind: ContractKind::Batch,
            record_schema: compiled(&reading_schema(false, unknown_fields)),
            sourced_record_schema: None,
            envelope_schema: Some(compiled(&envelope)),
            ..Contract::telemetry_with(unknown_fields)
        }
    }

    /// Seed 004's event: `source`, `event_type`, `entity_id`, `event_time`, `payload` (any JSON), all required.
    pub fn event() -> Contract {
        Contract::event_with(UnknownFields::default())
    }

    /// [`Contract::event`] with a policy for unknown fields.
    pub fn event_with(unknown_fields: UnknownFields) -> Contract {
        let name = r#"{"type":"string","minLength":1,"maxLength":256}"#;
        let additional = unknown_fields.schema_member();
        let fields = ["source", "event_type", "entity_id", "event_time", "payload"];
        let schema = format!(
            r#"{{"type":"object","required":["source","event_type","entity_id","event_time","payload"],
                {additional}"properties":{{"source":{name},"event_type":{name},"entity_id":{name},
                "event_time":{{"type":"string","format":"date-time"}},"payload":true}}}}"#
        );
        Contract {
            kind: ContractKind::Event,
            name: "event/v1".into(),
            record_schema: compiled(&schema),
            sourced_record_schema: None,
            envelope_schema: None,
            topic: "events-raw".into(),
            key_field: Some("entity_id".into()),
            time_field: Some("event_time".into()),
            enforce_window: false,
            identity_fields: Some(fields.map(String::from).to_vec()),
            metric_ranges: false,
            unknown_fields,
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
        let record_schema = Schema::compile_json(schema_json)?;
        let unknown_fields = if record_schema.forbids_additional() {
            UnknownFields::Reject
        } else {
            UnknownFields::Keep
        };
        Ok(Contract {
            kind: ContractKind::Custom,
            name: name.to_string(),
            record_schema,
            sourced_record_schema: None,
            envelope_schema: None,
            topic: topic.to_string(),
            enforce_window: time_field.is_some(),
            key_field,
            time_field,
            identity_fields,
            metric_ranges: false,
            unknown_fields,
        })
    }
}
