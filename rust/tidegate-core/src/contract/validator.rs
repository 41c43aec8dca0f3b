//! The validator: body bytes in, per-record outcomes and delivery-ready records out.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::canonical::number;
use crate::canonical::records::{RecordRef, Records, encode_header};
use crate::canonical::{Writer, compare_keys, sort_entries, write_string, write_value};
use crate::contract::headers;
use crate::contract::quarantine;
use crate::contract::schema::{FieldError, Path};
use crate::contract::{Contract, ContractKind, Issue, UnknownFields};
use crate::decode::time::{self, Timestamp};
use crate::decode::value::Value;
use crate::decode::value::same_key;
use crate::decode::{self, Encoding, Format};
use crate::decode::{Limits, PayloadError};
use crate::deliver::kafka;

/// Domain separation for event ids; bump the version if the canonical form ever changes. v2: integers of the
/// 64-bit range are kept exactly and written as their digits, where v1 wrote a double's shortest digits
/// (2^60 was `1152921504606847000`).
pub const EVENT_ID_DOMAIN: &str = "tidegate:event-id:v2\n";

/// The default of [`ValidatorOptions::max_record_bytes`].
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Room made at once for a record's identity or enriched value: usually enough.
const RECORD_ROOM: usize = 448;

/// Records with up to this many fields are assembled on the stack.
const SMALL_RECORD: usize = 12;

static NULL: Value<'static> = Value::Null;

/// An object member: key and value.
type Entry<'e, 'v> = (&'e str, &'e Value<'v>);

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: &[u8; 512] = &{
    let mut pairs = [0u8; 512];
    let digits = b"0123456789abcdef";
    let mut i = 0;
    while i < 256 {
        pairs[2 * i] = digits[i >> 4];
        pairs[2 * i + 1] = digits[i & 15];
        i += 1;
    }
    pairs
};

const LAG_PREFIX: &[u8] = b",\"ingest_lag_ms\":";

/// A semantic range: values outside it are flagged with a warning, never rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRange {
    pub name: String,
    pub min: f64,
    pub max: f64,
}

/// Seed 001's expected ranges.
pub fn default_metric_ranges() -> Vec<MetricRange> {
    [
        ("temperature", -50.0, 150.0),
        ("humidity", 0.0, 100.0),
        ("pressure", 800.0, 1200.0),
        ("battery_level", 0.0, 100.0),
        ("signal_strength", -120.0, 0.0),
    ]
    .into_iter()
    .map(|(name, min, max)| MetricRange {
        name: name.into(),
        min,
        max,
    })
    .collect()
}

/// Everything configurable about a validator.
#[derive(Debug, Clone)]
pub struct ValidatorOptions {
    pub limits: Limits,
    /// Oldest accepted record time, relative to reception.
    pub max_past_ms: i64,
    /// Furthest accepted record time into the future, relative to reception.
    pub max_future_ms: i64,
    pub metric_ranges: Vec<MetricRange>,
    /// Most readings in one batch.
    pub max_batch_readings: usize,
    /// Largest record accepted, measured as Kafka measures it: the record's key, enriched value and every header
    /// it carries (dead-letter headers included for a flagged record's copy), encoded as a Kafka v2 record batch of
    /// its own, its header included ([`kafka::record_batch_size`]). The forwarder measures records the same
    /// way against its own `max_record_bytes`, which must be at least this (its default, 1 MiB, leaves the
    /// default 1,000,000 room for compression framing), so a record accepted here is never skipped there.
    pub max_record_bytes: usize,
    /// Where flagged records are copied.
    pub dlq_topic: String,
    /// Overrides the contract's topic.
    pub topic: Option<String>,
    /// Keep each rejected record's raw bytes and reason in [`Outcome::quarantine`].
    pub quarantine: bool,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        ValidatorOptions {
            limits: Limits::default(),
            max_past_ms: 7 * 24 * 3600 * 1000,
            max_future_ms: 5 * 60 * 1000,
            metric_ranges: default_metric_ranges(),
            max_batch_readings: 1000,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            dlq_topic: "ingest-dlq".into(),
            topic: None,
            quarantine: false,
        }
    }
}

/// One request to validate.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub content_encoding: Option<&'a str>,
    /// Server reception time, Unix milliseconds.
    pub received_at_ms: i64,
    pub priority: Option<&'a str>,
    /// Where the request came from (`http`, `mqtt`), copied into every record's `source` header.
    pub source: Option<&'a str>,
    /// W3C Trace Context headers, checked ([`headers::check_traceparent`]) and copied into every record's headers;
    /// `tracestate` only alongside a `traceparent` (it means nothing without one).
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// Only checked ([`headers::check_idempotency_key`]): the caller claims it in its dedup window.
    pub idempotency_key: Option<&'a str>,
    /// The device the transport names as the body's source (an MQTT topic's): a telemetry record without
    /// `device_id` takes this one, as a batch's readings take the batch's. A record naming another device is
    /// not rejected here: the caller refuses the whole body, as it does for a device key.
    pub device_id: Option<&'a str>,
}

/// A header's check: `Err` holds why the value is refused.
type HeaderCheck = fn(&str) -> Result<(), String>;

impl Request<'_> {
    /// Checks the headers that reach every record or the dedup window, before any record is built.
    fn check_headers(&self) -> Result<(), PayloadError> {
        let checks: [(&'static str, Option<&str>, HeaderCheck); 3] = [
            ("traceparent", self.traceparent, headers::check_traceparent),
            ("tracestate", self.tracestate, headers::check_tracestate),
            (
                "X-Idempotency-Key",
                self.idempotency_key,
                headers::check_idempotency_key,
            ),
        ];
        for (header, value, check) in checks {
            if let Some(value) = value {
                check(value).map_err(|message| PayloadError::InvalidHeader { header, message })?;
            }
        }
        Ok(())
    }
}

/// The result of validating one body.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Records in the body (for a batch: readings).
    pub total: usize,
    pub accepted: usize,
    pub rejected: Vec<Issue>,
    pub warnings: Vec<Issue>,
    /// Per record, in input order: the event id, or `None` when rejected.
    pub event_ids: Vec<Option<[u8; 16]>>,
    /// Per record: reception time minus record time, when accepted and the contract has a time field.
    pub ingest_lag_ms: Vec<Option<i64>>,
    /// Accepted records, plus dead-letter copies of flagged ones.
    pub records: Records,
    /// For a batch body: its `device_id` and `batch_id`.
    pub envelope: Option<(String, String)>,
    /// The body held a sequence of records (a top-level array, or NDJSON) rather than one record.
    pub sequence: bool,
    /// The body's size after its content encoding was undone (what decoding it cost; per-device byte budgets).
    pub decoded_bytes: usize,
    /// With [`ValidatorOptions::quarantine`]: each rejected record's bytes and reasons, in input order.
    pub quarantine: Vec<quarantine::Item>,
}

/// A compiled contract plus options; immutable and safe to share between threads.
#[derive(Debug, Clone)]
pub struct Validator {
    contract: Contract,
    options: ValidatorOptions,
}

struct RecordContext<'r> {
    index: usize,
    inherited_device_id: Option<&'r str>,
    batch_id: Option<&'r str>,
}

impl Validator {
    pub fn new(contract: Contract, options: ValidatorOptions) -> Validator {
        Validator { contract, options }
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn options(&self) -> &ValidatorOptions {
        &self.options
    }

    pub fn topic(&self) -> &str {
        self.options.topic.as_deref().unwrap_or(&self.contract.topic)
    }

    /// Validates a body. Only whole-request failures (a bad header, an undecodable body) are errors; bad records
    /// are reported in the outcome.
    pub fn validate(&self, request: &Request<'_>) -> Result<Outcome, PayloadError> {
        request.check_headers()?;
        let format = Format::from_content_type(request.content_type)?;
        let encoding = Encoding::from_header(request.content_encoding)?;
        let body = decode::decompress(request.body, encoding, &self.options.limits)?;
        let limits = &self.options.limits;
        let mut run = Run::new(self, request);
        run.outcome.decoded_bytes = body.len();
        run.array_body = match format {
            Format::Json => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['),
            Format::Cbor => body.first().is_some_and(|b| b >> 5 == 4),
            Format::Ndjson => false,
        };
        run.outcome.sequence = run.array_body || format == Format::Ndjson;
        // Records the decoder could not decode (quarantined at the decode stage).
        let mut decode_failed = Vec::new();
        if self.contract.kind == ContractKind::Batch {
            let records = decode::parse_records(&body, format, limits)?;
            run.batch_envelope(records, body.len())?;
        } else {
            // Records are validated as they are decoded: each one's tree is freed before the next is built.
            run.reserve(0, body.len());
            let total = decode::for_each_record(&body, format, limits, |index, record| {
                let context = RecordContext {
                    index,
                    inherited_device_id: request
                        .device_id
                        .filter(|_| self.contract.sourced_record_schema.is_some()),
                    batch_id: None,
                };
                if self.options.quarantine && matches!(record, Value::Invalid(_)) {
                    decode_failed.push(index);
                }
                run.record(&record, &context);
            })?;
            run.outcome.total = total;
        }
        if self.options.quarantine {
            run.outcome.quarantine = quarantine::items(
                &body,
                format,
                request.content_type,
                self.contract.kind == ContractKind::Batch,
                &run.outcome.rejected,
                &decode_failed,
                limits,
            );
        }
        Ok(run.outcome)
    }
}

/// The state of one `validate` call.
struct Run<'v> {
    validator: &'v Validator,
    request: &'v Request<'v>,
    /// `,"server_received_at":"..."`, as it appears in every enriched value.
    received_member: Vec<u8>,
    /// `,"batch_id":"..."`, for a batch's readings.
    batch_member: Vec<u8>,
    /// `,"ingest_lag_ms":...` of the record at hand.
    lag_member: Vec<u8>,
    headers_common: Vec<u8>,
    outcome: Outcome,
    errors: Vec<FieldError>,
    /// The event id domain prefix and contract name, then the identity of the record at hand.
    scratch: Vec<u8>,
    identity_prefix_len: usize,
    /// The normalized time of the record at hand.
    time_text: Vec<u8>,
    /// Records came from a top-level array, so their paths start `$[i]`.
    array_body: bool,
    /// The Kafka size of a record without key, value or headers ([`record_bytes_bound`]).
    empty_record_bytes: usize,
}

impl<'v> Run<'v> {
    fn new(validator: &'v Validator, request: &'v Request<'v>) -> Self {
        let mut received_at = Vec::with_capacity(24);
        time::write_millis(&mut received_at, request.received_at_ms);
        let mut received_member = b",\"server_received_at\":".to_vec();
        write_string(
            &mut received_member,
            std::str::from_utf8(&received_at).unwrap_or_default(),
        );
        let mut headers_common = Vec::new();
        encode_header(&mut headers_common, "content-type", b"application/json");
        encode_header(&mut headers_common, "schema", validator.contract.name.as_bytes());
        if let Some(priority) = request.priority {
            encode_header(&mut headers_common, "priority", priority.as_bytes());
        }
        if let Some(source) = request.source {
            encode_header(&mut headers_common, "source", source.as_bytes());
        }
        if let Some(traceparent) = request.traceparent {
            encode_header(&mut headers_common, "traceparent", traceparent.as_bytes());
            if let Some(tracestate) = request
                .tracestate
                .filter(|t| !t.trim_matches([' ', '\t', ',']).is_empty())
            {
                encode_header(&mut headers_common, "tracestate", tracestate.as_bytes());
            }
        }
        let mut scratch = Vec::with_capacity(512);
        scratch.extend_from_slice(EVENT_ID_DOMAIN.as_bytes());
        scratch.extend_from_slice(validator.contract.name.as_bytes());
        scratch.push(b'\n');
        Run {
            validator,
            request,
            received_member,
            batch_member: Vec::new(),
            lag_member: LAG_PREFIX.to_vec(),
            headers_common,
            outcome: Outcome::default(),
            errors: Vec::new(),
            identity_prefix_len: scratch.len(),
            scratch,
            time_text: Vec::with_capacity(32),
            array_body: false,
            empty_record_bytes: kafka::record_batch_size(&RecordRef::from_parts("", None, &[], &[], [0; 16], 0)),
        }
    }

    /// Sizes the outcome for `records` records from a body of `body_bytes`: a record's enriched value and
    /// headers take about twice its JSON size plus a constant.
    fn reserve(&mut self, records: usize, body_bytes: usize) {
        self.outcome.event_ids.reserve(records);
        self.outcome.ingest_lag_ms.reserve(records);
        let bytes = body_bytes.saturating_mul(2).saturating_add(records * 64);
        // Without a record count: records of about 200 bytes.
        let bytes = if records == 0 {
            bytes.saturating_add(body_bytes / 3)
        } else {
            bytes
        };
        self.outcome.records.reserve(records, bytes);
    }

    fn reject_envelope(&mut self, path: String, message: String) {
        self.outcome.rejected.push(Issue {
            index: None,
            path,
            message,
        });
    }

    fn batch_envelope(&mut self, records: Vec<Value<'_>>, body_bytes: usize) -> Result<(), PayloadError> {
        let [envelope] = records.as_slice() else {
            return Err(PayloadError::Malformed {
                offset: 0,
                message: "a batch body is one object".into(),
            });
        };
        let readings = match envelope.get("readings") {
            Some(Value::Array(items)) => items.as_slice(),
            _ => &[],
        };
        self.outcome.total = readings.len();
        if let Some(schema) = &self.validator.contract.envelope_schema {
            // Readings are checked one by one below; the envelope check must not descend into them.
            let shallow = match envelope {
                Value::Object(fields) => Value::Object(
                    fields
                        .iter()
                        .map(|(k, v)| match (k.as_ref(), v) {
                            ("readings", Value::Array(items)) => {
                                (k.clone(), Value::Array(vec![Value::Null; items.len().min(1)]))
                            }
                            _ => (k.clone(), v.clone()),
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            schema.validate(&shallow, &Path::Root, &mut self.errors);
        }
        let max = self.validator.options.max_batch_readings;
        if readings.len() > max {
            self.errors.push(FieldError {
                path: "$.readings".into(),
                message: format!("must have at most {max} items"),
            });
        }
        if !self.errors.is_empty() {
            for error in std::mem::take(&mut self.errors) {
                self.reject_envelope(error.path, error.message);
            }
            self.outcome.event_ids = vec![None; readings.len()];
            self.outcome.ingest_lag_ms = vec![None; readings.len()];
            return Ok(());
        }
        let device_id = envelope.get("device_id").and_then(Value::as_str).unwrap_or_default();
        let batch_id = envelope.get("batch_id").and_then(Value::as_str).unwrap_or_default();
        self.batch_member = b",\"batch_id\":".to_vec();
        write_string(&mut self.batch_member, batch_id);
        self.outcome.envelope = Some((device_id.to_string(), batch_id.to_string()));
        self.reserve(readings.len(), body_bytes);
        for (index, reading) in readings.iter().enumerate() {
            let context = RecordContext {
                index,
                inherited_device_id: Some(device_id),
                batch_id: Some(batch_id),
            };
            self.record(reading, &context);
        }
        Ok(())
    }

    fn reject(&mut self, index: usize, path: String, message: String) {
        self.outcome.rejected.push(Issue {
            index: Some(index),
            path,
            message,
        });
    }

    /// Path prefix of a record in the body: `$` for a lone record or an NDJSON line, `$[i]` in an array,
    /// `$.readings[i]` in a batch.
    fn record_path(&self, context: &RecordContext<'_>) -> String {
        if context.batch_id.is_some() {
            format!("$.readings[{}]", context.index)
        } else if self.array_body {
            format!("$[{}]", context.index)
        } else {
            "$".into()
        }
    }

    fn record(&mut self, record: &Value<'_>, context: &RecordContext<'_>) {
        let contract = &self.validator.contract;
        let options = &self.validator.options;
        let index = context.index;
        let fail_count = self.outcome.rejected.len();
        // The record's time, parsed once: the schema's `date-time` check is told it parses.
        let time_field = contract.time_field.as_deref();
        let time_source = time_field.and_then(|f| record.get(f)).and_then(Value::as_str);
        let timestamp = time_source.and_then(Timestamp::parse);
        let known_date_time = time_source.filter(|_| timestamp.is_some());
        let schema = match (context.inherited_device_id, &contract.sourced_record_schema) {
            (Some(_), Some(sourced)) => sourced,
            _ => &contract.record_schema,
        };
        schema.validate_knowing_date_time(record, &Path::Root, &mut self.errors, known_date_time);
        if !self.errors.is_empty() {
            let prefix = self.record_path(context);
            for error in std::mem::take(&mut self.errors) {
                self.reject(index, format!("{prefix}{}", &error.path[1..]), error.message);
            }
        }
        let Value::Object(fields) = record else {
            if self.outcome.rejected.len() == fail_count {
                // A schema without `"type": "object"` lets other values through; a record is still an object.
                let path = self.record_path(context);
                let message = format!("a record must be an object, got {}", record.type_name());
                self.reject(index, path, message);
            }
            return self.skip(fail_count);
        };
        if let (Some(inherited), Some(own), Some(_)) = (
            context.inherited_device_id,
            record.get("device_id").and_then(Value::as_str),
            context.batch_id,
        ) && own != inherited
        {
            let prefix = self.record_path(context);
            self.reject(
                index,
                format!("{prefix}.device_id"),
                "must equal the batch's device_id".into(),
            );
        }
        if let (Some(ts), Some(field), true) = (timestamp, time_field, contract.enforce_window) {
            let millis = ts.unix_millis();
            let received = self.request.received_at_ms;
            let problem = if millis < received - options.max_past_ms {
                Some(format!(
                    "is more than {} older than reception",
                    human_duration(options.max_past_ms)
                ))
            } else if millis > received + options.max_future_ms {
                Some(format!(
                    "is more than {} in the future",
                    human_duration(options.max_future_ms)
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                let prefix = self.record_path(context);
                self.reject(index, format!("{prefix}.{field}"), message);
            }
        }
        if self.outcome.rejected.len() > fail_count {
            return self.skip(fail_count);
        }

        let warnings_before = self.outcome.warnings.len();
        if contract.metric_ranges {
            self.check_ranges(record, context);
        }

        // The record's entries in canonical key order, the time field normalized, on the stack when few.
        let mut time_text = std::mem::take(&mut self.time_text);
        time_text.clear();
        let normalized_time = match (timestamp, time_source) {
            (Some(_), Some(text)) if Timestamp::is_canonical_text(text) => Some(Value::String(Cow::Borrowed(text))),
            (Some(ts), Some(text)) => {
                ts.write_canonical(text, &mut time_text);
                Some(Value::String(Cow::Borrowed(
                    std::str::from_utf8(&time_text).unwrap_or_default(),
                )))
            }
            _ => None,
        };
        let inherited_device = context
            .inherited_device_id
            .filter(|_| record.get("device_id").is_none())
            .map(|d| Value::String(Cow::Borrowed(d)));
        // Members left out of the stored record: `null` for an optional field (its absence), and, under the
        // `drop` policy, fields the contract does not declare.
        let schema = &contract.record_schema;
        let dropping = contract.unknown_fields == UnknownFields::Drop;
        let kept = |key: &str, value: &Value<'_>| {
            !((matches!(value, Value::Null) && schema.null_means_absent(key)) || (dropping && !schema.declares(key)))
        };
        let left_out = if dropping || fields.iter().any(|(_, v)| matches!(v, Value::Null)) {
            fields.iter().filter(|(k, v)| !kept(k, v)).count()
        } else {
            0
        };
        let count = fields.len() - left_out + usize::from(inherited_device.is_some());
        let mut small_entries: [(&str, &Value<'_>); SMALL_RECORD] = [("", &NULL); SMALL_RECORD];
        let mut large_entries = Vec::new();
        let mut small_spans = [(0usize, 0usize); SMALL_RECORD];
        let mut large_spans = Vec::new();
        let (entries, spans): (&mut [Entry<'_, '_>], &mut [(usize, usize)]) = if count <= SMALL_RECORD {
            (&mut small_entries[..count], &mut small_spans[..count])
        } else {
            large_entries.resize(count, ("", &NULL));
            large_spans.resize(count, (0, 0));
            (&mut large_entries, &mut large_spans)
        };
        let fields = fields.iter().filter(|(k, v)| left_out == 0 || kept(k, v));
        for (slot, (key, value)) in entries.iter_mut().zip(fields) {
            let value = match (&normalized_time, time_field) {
                (Some(normalized), Some(field)) if same_key(key, field) => normalized,
                _ => value,
            };
            *slot = (key.as_ref(), value);
        }
        if let (Some(device), Some(last)) = (&inherited_device, entries.last_mut()) {
            *last = ("device_id", device);
        }
        sort_entries(entries);

        // The identity's canonical form follows the domain prefix in `scratch`; each of its members' bytes
        // (`"key":value`) is remembered in `spans` and copied, not written again, into the enriched value.
        self.scratch.truncate(self.identity_prefix_len);
        let mut identity = Writer::with_room(&mut self.scratch, RECORD_ROOM);
        identity.byte(b'{');
        for (&(key, value), span) in entries.iter().zip(spans.iter_mut()) {
            let included = match &contract.identity_fields {
                Some(names) => names.iter().any(|n| same_key(n, key)),
                None => true,
            };
            if !included {
                continue;
            }
            if identity.len() > self.identity_prefix_len + 1 {
                identity.byte(b',');
            }
            let start = identity.len();
            identity.member(key, value);
            *span = (start, identity.len());
        }
        identity.byte(b'}');
        let digest = blake3::hash(identity.written());
        drop(identity);
        let mut event_id = [0u8; 16];
        event_id.copy_from_slice(&digest.as_bytes()[..16]);
        // `,"event_id":"<32 hex digits>"`, the member as it appears in the enriched value.
        const EVENT_ID_PREFIX: &[u8] = b",\"event_id\":\"";
        let mut event_id_member = [b'"'; EVENT_ID_PREFIX.len() + 33];
        event_id_member[..EVENT_ID_PREFIX.len()].copy_from_slice(EVENT_ID_PREFIX);
        let hex_digits = &mut event_id_member[EVENT_ID_PREFIX.len()..EVENT_ID_PREFIX.len() + 32];
        for (pair, byte) in hex_digits.chunks_exact_mut(2).zip(event_id) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte) * 2..usize::from(byte) * 2 + 2]);
        }
        let event_id_hex = &event_id_member[EVENT_ID_PREFIX.len()..EVENT_ID_PREFIX.len() + 32];

        let lag = timestamp.map(|ts| self.request.received_at_ms - ts.unix_millis());
        let key_value = contract
            .key_field
            .as_deref()
            .and_then(|f| entries.iter().find(|(k, _)| *k == f))
            .map(|(_, v)| *v);
        let key: Option<Cow<'_, [u8]>> = match key_value {
            Some(Value::String(s)) => Some(Cow::Borrowed(s.as_bytes())),
            Some(other) => {
                let mut out = Vec::new();
                write_value(&mut out, other);
                Some(Cow::Owned(out))
            }
            None => None,
        };

        if let Some(lag) = lag {
            self.lag_member.truncate(LAG_PREFIX.len());
            number::write_canonical_i64(&mut self.lag_member, lag);
        }
        // The added members, as they appear in the enriched value (`,"name":value`), in canonical key order; each
        // replaces a record field of the same name.
        let enriched: [(&str, Option<&[u8]>); 4] = [
            ("batch_id", context.batch_id.map(|_| &self.batch_member[..])),
            ("event_id", Some(&event_id_member[..])),
            ("ingest_lag_ms", lag.map(|_| &self.lag_member[..])),
            ("server_received_at", Some(&self.received_member[..])),
        ];

        let topic = self.validator.topic();
        let headers_common = &self.headers_common;
        let scratch = &self.scratch;
        let entries = &*entries;
        let spans = &*spans;
        self.outcome.records.push_with(
            topic,
            key.as_deref(),
            event_id,
            self.request.received_at_ms,
            |out| {
                let mut extra = enriched.iter().filter_map(|&(k, v)| v.map(|v| (k, v))).peekable();
                // Every member is written after a comma, then the first comma becomes the opening brace.
                let mut w = Writer::with_room(out, RECORD_ROOM);
                let start = w.len();
                for (&(key, value), &(from, to)) in entries.iter().zip(spans) {
                    let mut replaced = false;
                    while let Some(&(name, member)) = extra.peek() {
                        match compare_keys(name, key) {
                            Ordering::Greater => break,
                            order => {
                                replaced |= order == Ordering::Equal;
                                w.put(member);
                                extra.next();
                            }
                        }
                    }
                    if replaced {
                        continue;
                    }
                    w.byte(b',');
                    if to > from {
                        w.put(&scratch[from..to]);
                    } else {
                        w.member(key, value);
                    }
                }
                for (_, member) in extra {
                    w.put(member);
                }
                if w.len() == start {
                    w.byte(b'{');
                }
                w.byte(b'}');
                drop(w);
                out[start] = b'{';
            },
            |out| {
                encode_header(out, "event_id", event_id_hex);
                out.extend_from_slice(headers_common);
            },
        );
        self.time_text = time_text;
        let mut pushed = 1;
        let mut record_bytes = self.outcome.records.last().map_or(0, |r| self.record_bytes(&r));
        if self.outcome.warnings.len() > warnings_before {
            let reasons: Vec<String> = self.outcome.warnings[warnings_before..]
                .iter()
                .map(|w| format!("{}: {}", w.path, w.message))
                .collect();
            let mut extra = Vec::new();
            encode_header(&mut extra, "dlq-reason", b"semantic-range");
            encode_header(&mut extra, "warnings", reasons.join("; ").as_bytes());
            let last = self.outcome.records.len() - 1;
            self.outcome.records.copy_to_topic(last, &options.dlq_topic, &extra);
            pushed += 1;
            let copy_bytes = self.outcome.records.last().map_or(0, |r| self.record_bytes(&r));
            record_bytes = record_bytes.max(copy_bytes);
        }
        if record_bytes > options.max_record_bytes {
            // Refused here, while the client can still be told, rather than skipped by the forwarder after a 202.
            for _ in 0..pushed {
                self.outcome.records.pop();
            }
            self.outcome.warnings.truncate(warnings_before);
            let path = self.record_path(context);
            let message = format!(
                "record is {record_bytes} bytes as a Kafka record (key, value and headers), above the {} byte limit",
                options.max_record_bytes
            );
            self.reject(index, path, message);
            return self.skip(fail_count);
        }
        self.outcome.accepted += 1;
        self.outcome.event_ids.push(Some(event_id));
        self.outcome.ingest_lag_ms.push(lag);
    }

    /// The record's size as Kafka measures it ([`kafka::record_batch_size`]) when it may be above the limit;
    /// otherwise a bound of it that is within the limit too (sizes are only reported above the limit).
    fn record_bytes(&self, record: &RecordRef<'_>) -> usize {
        let bound = record_bytes_bound(self.empty_record_bytes, record);
        if bound <= self.validator.options.max_record_bytes {
            bound
        } else {
            kafka::record_batch_size(record)
        }
    }

    fn skip(&mut self, fail_count: usize) {
        debug_assert!(self.outcome.rejected.len() > fail_count);
        self.outcome.event_ids.push(None);
        self.outcome.ingest_lag_ms.push(None);
    }

    fn check_ranges(&mut self, record: &Value<'_>, context: &RecordContext<'_>) {
        let ranges = &self.validator.options.metric_ranges;
        for section in ["metrics", "metadata"] {
            let Some(Value::Object(values)) = record.get(section) else {
                continue;
            };
            for (name, value) in values {
                let n = match value {
                    Value::Number(n, _) => *n,
                    Value::Integer(i) => i.to_f64(),
                    _ => continue,
                };
                if let Some(range) = ranges.iter().find(|r| same_key(&r.name, name))
                    && !(range.min..=range.max).contains(&n)
                {
                    let mut path = self.record_path(context);
                    path.push('.');
                    path.push_str(section);
                    crate::decode::value::push_key(&mut path, name);
                    let mut shown = Vec::new();
                    write_value(&mut shown, value);
                    let message = format!(
                        "{name}={} outside expected range [{}, {}]",
                        String::from_utf8_lossy(&shown),
                        range.min,
                        range.max
                    );
                    self.outcome.warnings.push(Issue {
                        index: Some(context.index),
                        path,
                        message,
                    });
                }
            }
        }
    }
}

/// An upper bound of [`kafka::record_batch_size`] from the lengths of the record's parts alone (measuring exactly
/// reads every header), given `empty`, the size of a record without key, value or headers. Against an empty
/// record, each of the four length varints (key, value, header count, the record's own length) takes at most 4
/// bytes more (5 bytes hold any length below 2^31), and each header at most 2 bytes more than in the arena's
/// encoding ([`encode_header`]: 2-byte name and 4-byte value lengths, so at least 6 bytes a header).
fn record_bytes_bound(empty: usize, record: &RecordRef<'_>) -> usize {
    let headers = record.raw_headers().len();
    empty + record.key.map_or(0, <[u8]>::len) + record.value.len() + headers + headers / 3 + 16
}

fn human_duration(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} days", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} hours", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} minutes", ms / 60_000),
        ms => format!("{} seconds", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED_MS: i64 = 1_774_606_531_000;
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request(body: &[u8]) -> Request<'_> {
        Request {
            body,
            content_type: "application/json",
            content_encoding: None,
            received_at_ms: RECEIVED_MS,
            priority: None,
            source: None,
            traceparent: None,
            tracestate: None,
            idempotency_key: None,
            device_id: None,
        }
    }

    fn event(entity_id: &str, payload_bytes: usize) -> String {
        format!(
            r#"{{"source":"s","event_type":"t","entity_id":"{entity_id}","event_time":"2026-03-27T10:15:30Z","payload":{{"x":"{}"}}}}"#,
            "y".repeat(payload_bytes)
        )
    }

    fn events_validator(max_record_bytes: usize) -> Validator {
        let options = ValidatorOptions {
            max_record_bytes,
            ..ValidatorOptions::default()
        };
        Validator::new(Contract::event(), options)
    }

    #[test]
    fn the_whole_kafka_record_is_held_to_the_limit() {
        let body = format!("[{},{}]", event("small", 100), event("big", 1_500));
        let trace = Request {
            traceparent: Some(TRACEPARENT),
            tracestate: Some("congo=t61rcWkgMzE"),
            ..request(body.as_bytes())
        };
        let unbounded = events_validator(usize::MAX).validate(&trace).unwrap();
        let big = unbounded.records.get(1).unwrap();
        // The value alone fits this limit; with its key and headers the record does not.
        let limit = big.value.len() + 100;
        assert!(kafka::record_batch_size(&big) > limit);

        let outcome = events_validator(limit).validate(&trace).unwrap();
        assert_eq!(outcome.accepted, 1, "the small neighbour is kept");
        let [rejection] = outcome.rejected.as_slice() else {
            panic!("{:?}", outcome.rejected)
        };
        assert_eq!((rejection.index, rejection.path.as_str()), (Some(1), "$[1]"));
        assert!(
            rejection.message.ends_with(&format!("above the {limit} byte limit")),
            "{}",
            rejection.message
        );
        assert_eq!(outcome.records.len(), 1);
        assert!(outcome.records.iter().all(|r| kafka::record_batch_size(&r) <= limit));
    }

    #[test]
    fn a_flagged_record_is_held_to_the_limit_with_its_dead_letter_headers() {
        let metrics: Vec<String> = (0..40).map(|i| format!(r#""temperature_{i:02}":999"#)).collect();
        let ranges: Vec<MetricRange> = (0..40)
            .map(|i| MetricRange {
                name: format!("temperature_{i:02}"),
                min: 0.0,
                max: 100.0,
            })
            .collect();
        let body = format!(
            r#"{{"device_id":"d","timestamp":"2026-03-27T10:15:30Z","metrics":{{{}}}}}"#,
            metrics.join(",")
        );
        let options = |max_record_bytes| ValidatorOptions {
            max_record_bytes,
            metric_ranges: ranges.clone(),
            ..ValidatorOptions::default()
        };
        let flagged = Validator::new(Contract::telemetry(), options(usize::MAX))
            .validate(&request(body.as_bytes()))
            .unwrap();
        let (original, copy) = (flagged.records.get(0).unwrap(), flagged.records.get(1).unwrap());
        assert_eq!(copy.topic, "ingest-dlq");
        let limit = kafka::record_batch_size(&original);
        assert!(kafka::record_batch_size(&copy) > limit);

        let outcome = Validator::new(Contract::telemetry(), options(limit))
            .validate(&request(body.as_bytes()))
            .unwrap();
        assert_eq!((outcome.accepted, outcome.rejected.len()), (0, 1));
        assert!(outcome.warnings.is_empty() && outcome.records.is_empty());
        assert!(outcome.records.topics().is_empty(), "no topic left without records");
    }

    #[test]
    fn the_size_bound_holds_at_every_varint_width() {
        let empty = kafka::record_batch_size(&RecordRef::from_parts("", None, &[], &[], [0; 16], 0));
        let lengths = [0, 1, 63, 64, 65, 8_191, 8_192, 1_048_575, 1_048_576, 3_000_000];
        let bytes = vec![b'x'; 3_000_000];
        for &key in &lengths[..6] {
            for &value in &lengths {
                for headers in [0, 1, 3, 200] {
                    let mut encoded = Vec::new();
                    for i in 0..headers {
                        let name = if i % 2 == 0 { "n" } else { "a-longer-header-name" };
                        encode_header(&mut encoded, name, &bytes[..i % 70]);
                    }
                    for key in [None, Some(&bytes[..key])] {
                        let record = RecordRef::from_parts("t", key, &bytes[..value], &encoded, [0; 16], RECEIVED_MS);
                        let exact = kafka::record_batch_size(&record);
                        assert!(
                            record_bytes_bound(empty, &record) >= exact,
                            "{:?} {value} {headers}",
                            key.map(<[u8]>::len)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn source_is_copied_into_every_record() {
        let body = format!("{}\n{}", event("e", 1), event("f", 2));
        let validator = events_validator(DEFAULT_MAX_RECORD_BYTES);
        let from_mqtt = Request {
            content_type: "application/x-ndjson",
            source: Some("mqtt"),
            ..request(body.as_bytes())
        };
        let outcome = validator.validate(&from_mqtt).unwrap();
        assert_eq!(outcome.records.len(), 2);
        for record in outcome.records.iter() {
            assert!(record.headers().any(|h| h == ("source", &b"mqtt"[..])));
        }
    }

    #[test]
    fn date_times_are_checked_beside_the_parsed_time_field() {
        let schema = r#"{"type":"object","properties":{"t":{"type":"string","format":"date-time"},
            "u":{"type":"string","format":"date-time"}}}"#;
        let contract = Contract::custom("c/v1", schema, "c", None, Some("t".into()), None).unwrap();
        let validator = Validator::new(contract, ValidatorOptions::default());
        let paths = |body: &str| -> Vec<String> {
            let outcome = validator.validate(&request(body.as_bytes())).unwrap();
            outcome.rejected.into_iter().map(|issue| issue.path).collect()
        };
        let good = "2026-03-27T10:15:30Z";
        assert!(paths(&format!(r#"{{"t":"{good}","u":"{good}"}}"#)).is_empty());
        assert_eq!(
            paths(&format!(r#"{{"t":"{good}","u":"2026-02-30T10:15:30Z"}}"#)),
            ["$.u"]
        );
        assert_eq!(paths(&format!(r#"{{"t":"yesterday","u":"{good}"}}"#)), ["$.t"]);
        assert_eq!(paths(r#"{"t":"2026-03-27T10:15:30","u":"x"}"#), ["$.t", "$.u"]);
    }

    #[test]
    fn trace_context_is_checked_and_copied() {
        let body = event("e", 1);
        let validator = events_validator(DEFAULT_MAX_RECORD_BYTES);
        let traced = Request {
            traceparent: Some(TRACEPARENT),
            tracestate: Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ..request(body.as_bytes())
        };
        let outcome = validator.validate(&traced).unwrap();
        let headers: Vec<(&str, &[u8])> = outcome.records.get(0).unwrap().headers().collect();
        assert!(headers.contains(&("traceparent", TRACEPARENT.as_bytes())));
        assert!(headers.contains(&("tracestate", &b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"[..])));

        let state_alone = Request {
            tracestate: Some("congo=t61rcWkgMzE"),
            ..request(body.as_bytes())
        };
        let outcome = validator.validate(&state_alone).unwrap();
        assert!(
            outcome
                .records
                .get(0)
                .unwrap()
                .headers()
                .all(|(name, _)| name != "tracestate")
        );

        let huge = "0".repeat(400_000);
        let cases = [
            (
                "traceparent",
                Request {
                    traceparent: Some(&huge),
                    ..request(body.as_bytes())
                },
            ),
            (
                "traceparent",
                Request {
                    traceparent: Some("00-abc-def-01"),
                    ..request(body.as_bytes())
                },
            ),
            (
                "tracestate",
                Request {
                    traceparent: Some(TRACEPARENT),
                    tracestate: Some("Congo=x"),
                    ..request(body.as_bytes())
                },
            ),
            (
                "X-Idempotency-Key",
                Request {
                    idempotency_key: Some(&huge),
                    ..request(body.as_bytes())
                },
            ),
        ];
        for (expected, bad) in cases {
            match validator.validate(&bad) {
                Err(PayloadError::InvalidHeader { header, .. }) => assert_eq!(header, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_reading_without_device_id_takes_the_device_the_transport_names() {
        let validator = Validator::new(Contract::telemetry(), ValidatorOptions::default());
        let reading = r#"{"timestamp":"2026-03-27T10:15:30Z","metrics":{"temperature":21.5}}"#;
        let named = r#"{"device_id":"dev-1","timestamp":"2026-03-27T10:15:30Z","metrics":{"temperature":21.5}}"#;
        let sourced = |body: &'static str, device_id| {
            validator
                .validate(&Request {
                    device_id,
                    ..request(body.as_bytes())
                })
                .unwrap()
        };

        let refused = sourced(reading, None);
        assert_eq!(refused.accepted, 0, "no device anywhere: device_id is required");
        let filled = sourced(reading, Some("dev-1"));
        assert_eq!(filled.accepted, 1, "{:?}", filled.rejected);
        let record = filled.records.get(0).unwrap();
        assert_eq!(record.key, Some(&b"dev-1"[..]));
        let value = std::str::from_utf8(record.value).unwrap();
        assert!(value.starts_with(r#"{"device_id":"dev-1","#), "{value}");
        assert_eq!(
            filled.event_ids,
            sourced(named, None).event_ids,
            "the same reading as one that names its device"
        );
        // Naming another device is for the caller to refuse (the whole body, as for a device key).
        let other = sourced(named, Some("dev-2"));
        assert_eq!(other.records.get(0).unwrap().key, Some(&b"dev-1"[..]));
        // Events have no device: the transport's is not added.
        let events = Validator::new(Contract::event(), ValidatorOptions::default());
        let body = event("user-1", 1);
        let plain = events.validate(&request(body.as_bytes())).unwrap();
        let with_device = events
            .validate(&Request {
                device_id: Some("dev-1"),
                ..request(body.as_bytes())
            })
            .unwrap();
        assert_eq!(plain.event_ids, with_device.event_ids);
        assert_eq!(
            plain.records.get(0).unwrap().value,
            with_device.records.get(0).unwrap().value
        );
    }
}
