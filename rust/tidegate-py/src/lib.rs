//! `tidegate._native`: the thin PyO3 binding of `tidegate-core`. Types, error mapping and GIL release; no logic.

// Python keyword arguments map one-to-one onto Rust parameters.
#![allow(clippy::too_many_arguments)]

mod admission;
mod archive;
mod devices;
mod errors;
mod gateway;
mod kafka;
mod spool;

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use tidegate_core as core;

#[pyclass(frozen, module = "tidegate._native")]
struct Contract(core::Contract);

#[pymethods]
impl Contract {
    #[staticmethod]
    #[pyo3(signature = (*, unknown_fields = "keep"))]
    fn telemetry(unknown_fields: &str) -> PyResult<Contract> {
        Ok(Contract(core::Contract::telemetry_with(unknown_fields_policy(
            unknown_fields,
        )?)))
    }

    #[staticmethod]
    #[pyo3(signature = (*, unknown_fields = "keep"))]
    fn event(unknown_fields: &str) -> PyResult<Contract> {
        Ok(Contract(core::Contract::event_with(unknown_fields_policy(
            unknown_fields,
        )?)))
    }

    #[staticmethod]
    #[pyo3(signature = (*, unknown_fields = "keep"))]
    fn batch(unknown_fields: &str) -> PyResult<Contract> {
        Ok(Contract(core::Contract::batch_with(unknown_fields_policy(
            unknown_fields,
        )?)))
    }

    #[getter]
    fn unknown_fields(&self) -> &'static str {
        self.0.unknown_fields.name()
    }

    #[staticmethod]
    #[pyo3(signature = (schema, *, name = "custom/v1", topic = "custom-raw", key_field = None, time_field = None, identity_fields = None))]
    fn from_json_schema(
        py: Python<'_>,
        schema: &Bound<'_, PyAny>,
        name: &str,
        topic: &str,
        key_field: Option<String>,
        time_field: Option<String>,
        identity_fields: Option<Vec<String>>,
    ) -> PyResult<Contract> {
        let text: String = if let Ok(text) = schema.cast::<PyString>() {
            text.to_str()?.to_owned()
        } else if let Ok(bytes) = schema.cast::<PyBytes>() {
            String::from_utf8(bytes.as_bytes().to_vec()).map_err(|_| errors::schema_error(py, "schema is not UTF-8"))?
        } else {
            py.import("json")?.call_method1("dumps", (schema,))?.extract()?
        };
        core::Contract::custom(name, &text, topic, key_field, time_field, identity_fields)
            .map(Contract)
            .map_err(|e| errors::to_py(py, e))
    }

    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }

    #[getter]
    fn topic(&self) -> &str {
        &self.0.topic
    }

    #[getter]
    fn kind(&self) -> &'static str {
        match self.0.kind {
            core::ContractKind::Telemetry => "telemetry",
            core::ContractKind::Batch => "batch",
            core::ContractKind::Event => "event",
            core::ContractKind::Custom => "custom",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Contract(kind={:?}, name={:?}, topic={:?})",
            self.kind(),
            self.0.name,
            self.0.topic
        )
    }
}

fn unknown_fields_policy(name: &str) -> PyResult<core::UnknownFields> {
    core::UnknownFields::parse(name).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "unknown_fields must be 'keep', 'reject' or 'drop', not {name:?}"
        ))
    })
}

#[pyclass(frozen, module = "tidegate._native")]
struct Validator(core::Validator);

// `Validator`'s `max_record_bytes` default is spelled as a literal so that Python sees its value.
const _: () = assert!(core::contract::validator::DEFAULT_MAX_RECORD_BYTES == 1_000_000);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[pymethods]
impl Validator {
    #[new]
    #[pyo3(signature = (
        contract, *, max_past_seconds = 604800.0, max_future_seconds = 300.0, metric_ranges = None,
        max_body_bytes = None, max_depth = None, max_string_bytes = None, max_key_bytes = None,
        max_array_items = None, max_object_keys = None, max_records = None, max_batch_readings = 1000, max_record_bytes = 1_000_000,
        dlq_topic = "ingest-dlq", topic = None, quarantine = false,
    ))]
    fn new(
        contract: &Contract,
        max_past_seconds: f64,
        max_future_seconds: f64,
        metric_ranges: Option<&Bound<'_, PyDict>>,
        max_body_bytes: Option<usize>,
        max_depth: Option<usize>,
        max_string_bytes: Option<usize>,
        max_key_bytes: Option<usize>,
        max_array_items: Option<usize>,
        max_object_keys: Option<usize>,
        max_records: Option<usize>,
        max_batch_readings: usize,
        max_record_bytes: usize,
        dlq_topic: &str,
        topic: Option<String>,
        quarantine: bool,
    ) -> PyResult<Validator> {
        let defaults = core::Limits::default();
        let limits = core::Limits {
            max_body_bytes: max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_depth: max_depth.unwrap_or(defaults.max_depth),
            max_string_bytes: max_string_bytes.unwrap_or(defaults.max_string_bytes),
            max_key_bytes: max_key_bytes.unwrap_or(defaults.max_key_bytes),
            max_array_items: max_array_items.unwrap_or(defaults.max_array_items),
            max_object_keys: max_object_keys.unwrap_or(defaults.max_object_keys),
            max_records: max_records.unwrap_or(defaults.max_records),
        };
        // Given ranges add to seed 001's defaults, replacing a default of the same name.
        let mut ranges = core::contract::validator::default_metric_ranges();
        for (name, bounds) in metric_ranges.iter().flat_map(|r| r.iter()) {
            let (min, max): (f64, f64) = bounds.extract()?;
            let name: String = name.extract()?;
            ranges.retain(|r| r.name != name);
            ranges.push(core::MetricRange { name, min, max });
        }
        let metric_ranges = ranges;
        let options = core::ValidatorOptions {
            limits,
            max_past_ms: (max_past_seconds * 1000.0) as i64,
            max_future_ms: (max_future_seconds * 1000.0) as i64,
            metric_ranges,
            max_batch_readings,
            max_record_bytes,
            dlq_topic: dlq_topic.to_string(),
            topic,
            quarantine,
        };
        Ok(Validator(core::Validator::new(contract.0.clone(), options)))
    }

    #[pyo3(signature = (body, content_type = "application/json", content_encoding = None, *, received_at_ms = None, priority = None, source = None, traceparent = None, tracestate = None, idempotency_key = None, device_id = None))]
    fn validate(
        &self,
        py: Python<'_>,
        body: &[u8],
        content_type: &str,
        content_encoding: Option<&str>,
        received_at_ms: Option<i64>,
        priority: Option<&str>,
        source: Option<&str>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        idempotency_key: Option<&str>,
        device_id: Option<&str>,
    ) -> PyResult<ValidationResult> {
        let request = core::Request {
            body,
            content_type,
            content_encoding,
            received_at_ms: received_at_ms.unwrap_or_else(now_ms),
            priority,
            source,
            traceparent,
            tracestate,
            idempotency_key,
            device_id,
        };
        let mut outcome = py
            .detach(|| self.0.validate(&request))
            .map_err(|e| errors::to_py(py, e))?;
        let records = Py::new(py, Records(std::mem::take(&mut outcome.records)))?;
        Ok(ValidationResult { outcome, records })
    }

    #[getter]
    fn contract(&self) -> Contract {
        Contract(self.0.contract().clone())
    }

    #[getter]
    fn topic(&self) -> &str {
        self.0.topic()
    }
}

#[pyclass(frozen, module = "tidegate._native")]
struct Issue {
    #[pyo3(get)]
    index: Option<usize>,
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    message: String,
}

#[pymethods]
impl Issue {
    fn __repr__(&self) -> String {
        let index = self.index.map_or_else(|| "None".to_string(), |i| i.to_string());
        format!("Issue(index={index}, path={:?}, message={:?})", self.path, self.message)
    }

    fn __eq__(&self, other: &Issue) -> bool {
        (self.index, &self.path, &self.message) == (other.index, &other.path, &other.message)
    }
}

fn issues(list: &[core::Issue]) -> Vec<Issue> {
    list.iter()
        .map(|i| Issue {
            index: i.index,
            path: i.path.clone(),
            message: i.message.clone(),
        })
        .collect()
}

#[pyclass(frozen, module = "tidegate._native")]
struct ValidationResult {
    outcome: core::Outcome,
    records: Py<Records>,
}

#[pymethods]
impl ValidationResult {
    #[getter]
    fn total(&self) -> usize {
        self.outcome.total
    }

    #[getter]
    fn accepted(&self) -> usize {
        self.outcome.accepted
    }

    #[getter]
    fn rejected(&self) -> Vec<Issue> {
        issues(&self.outcome.rejected)
    }

    #[getter]
    fn warnings(&self) -> Vec<Issue> {
        issues(&self.outcome.warnings)
    }

    #[getter]
    fn event_ids(&self) -> Vec<Option<String>> {
        self.outcome
            .event_ids
            .iter()
            .map(|id| id.map(|id| core::canonical::records::hex(&id)))
            .collect()
    }

    #[getter]
    fn ingest_lag_ms(&self) -> Vec<Option<i64>> {
        self.outcome.ingest_lag_ms.clone()
    }

    /// Counts of the accepted records' ingest lags per histogram bucket (`le` bounds, then +Inf) and their sum,
    /// so a metrics histogram is fed once per request rather than once per record.
    fn lag_histogram(&self, bounds: Vec<f64>) -> (Vec<u64>, f64) {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = 0.0;
        for lag in self.outcome.ingest_lag_ms.iter().flatten() {
            let lag = *lag as f64;
            counts[bounds.partition_point(|bound| *bound < lag)] += 1;
            sum += lag;
        }
        (counts, sum)
    }

    #[getter]
    fn records(&self, py: Python<'_>) -> Py<Records> {
        self.records.clone_ref(py)
    }

    /// The body held a sequence of records (a top-level array, or NDJSON) rather than one record.
    #[getter]
    fn sequence(&self) -> bool {
        self.outcome.sequence
    }

    /// The body's size once its content encoding was undone.
    #[getter]
    fn decoded_bytes(&self) -> usize {
        self.outcome.decoded_bytes
    }

    /// With `Validator(quarantine=True)`: each rejected record's raw bytes and reasons, in input order.
    #[getter]
    fn quarantine(&self) -> Vec<QuarantineItem> {
        self.outcome.quarantine.iter().cloned().map(QuarantineItem).collect()
    }

    #[getter]
    fn device_id(&self) -> Option<&str> {
        self.outcome.envelope.as_ref().map(|(device, _)| device.as_str())
    }

    #[getter]
    fn batch_id(&self) -> Option<&str> {
        self.outcome.envelope.as_ref().map(|(_, batch)| batch.as_str())
    }

    fn __repr__(&self) -> String {
        format!(
            "ValidationResult(total={}, accepted={}, rejected={}, warnings={})",
            self.outcome.total,
            self.outcome.accepted,
            self.outcome.rejected.len(),
            self.outcome.warnings.len()
        )
    }
}

/// `(key, value, headers, timestamp_ms)`.
type RecordTuple<'py> = (
    Option<Bound<'py, PyBytes>>,
    Bound<'py, PyBytes>,
    Vec<(String, Bound<'py, PyBytes>)>,
    i64,
);

fn record_tuple<'py>(py: Python<'py>, record: &core::RecordRef<'_>) -> RecordTuple<'py> {
    let headers = record
        .headers()
        .map(|(name, value)| (name.to_string(), PyBytes::new(py, value)))
        .collect();
    (
        record.key.map(|k| PyBytes::new(py, k)),
        PyBytes::new(py, record.value),
        headers,
        record.timestamp_ms,
    )
}

#[pyclass(module = "tidegate._native")]
pub struct Records(pub core::Records);

#[pymethods]
impl Records {
    #[new]
    fn new() -> Records {
        Records(core::Records::new())
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    #[getter]
    fn topics(&self) -> Vec<String> {
        self.0.topics().to_vec()
    }

    #[getter]
    fn payload_bytes(&self) -> usize {
        self.0.payload_bytes()
    }

    /// `(key, value, headers, timestamp_ms)` for each record of `topic` (all topics when `None`).
    #[pyo3(signature = (topic = None))]
    fn records<'py>(&self, py: Python<'py>, topic: Option<&str>) -> Vec<RecordTuple<'py>> {
        self.0
            .iter()
            .filter(|r| topic.is_none_or(|t| t == r.topic))
            .map(|r| record_tuple(py, &r))
            .collect()
    }

    /// Record values (canonical enriched JSON) of `topic`, or of all topics.
    #[pyo3(signature = (topic = None))]
    fn values<'py>(&self, py: Python<'py>, topic: Option<&str>) -> Vec<Bound<'py, PyBytes>> {
        self.0
            .iter()
            .filter(|r| topic.is_none_or(|t| t == r.topic))
            .map(|r| PyBytes::new(py, r.value))
            .collect()
    }

    #[pyo3(signature = (topic = None))]
    fn event_ids(&self, topic: Option<&str>) -> Vec<String> {
        self.0
            .iter()
            .filter(|r| topic.is_none_or(|t| t == r.topic))
            .map(|r| r.event_id_hex())
            .collect()
    }

    /// Records of `topic`, or of all topics.
    #[pyo3(signature = (topic = None))]
    fn count(&self, topic: Option<&str>) -> usize {
        match topic {
            None => self.0.len(),
            Some(topic) => self.0.iter().filter(|r| r.topic == topic).count(),
        }
    }

    /// Distinct record keys, in order of first appearance.
    fn distinct_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for record in self.0.iter() {
            if let Some(key) = record.key.and_then(|k| std::str::from_utf8(k).ok())
                && !keys.iter().any(|k| k == key)
            {
                keys.push(key.to_string());
            }
        }
        keys
    }

    /// The records as runs, each one Kafka record batch (see `KafkaRange`), encoded without the GIL.
    #[pyo3(signature = (partitions, *, compression = None, max_batch_bytes = 1_048_576, max_record_bytes = 1_048_576, round_robin_start = 0))]
    fn kafka_range(
        slf: &Bound<'_, Self>,
        partitions: &Bound<'_, PyDict>,
        compression: Option<&str>,
        max_batch_bytes: usize,
        max_record_bytes: usize,
        round_robin_start: u32,
    ) -> PyResult<kafka::KafkaRange> {
        let options = kafka::encode_options(compression, max_batch_bytes, max_record_bytes, round_robin_start)?;
        let partitions = kafka::partition_counts(partitions)?;
        Ok(kafka::KafkaRange::encode(
            slf.py(),
            slf.clone().unbind(),
            partitions,
            options,
        ))
    }

    fn extend(&mut self, other: &Records) {
        self.0.extend(&other.0);
    }

    /// Every record but the dead-letter copies, on `topic`: the duplicate occurrences of a repeated request.
    fn moved_to(&self, topic: &str) -> Records {
        Records(self.0.moved_to(topic))
    }

    fn __repr__(&self) -> String {
        format!("Records(records={}, topics={:?})", self.0.len(), self.0.topics())
    }
}

/// A rejected item to quarantine: its raw bytes, why, at which stage, and which record of its body it was.
#[pyclass(frozen, module = "tidegate._native")]
#[derive(Clone)]
struct QuarantineItem(core::contract::quarantine::Item);

#[pymethods]
impl QuarantineItem {
    #[new]
    #[pyo3(signature = (raw, *, stage, reason, content_type, index = None))]
    fn new(raw: Vec<u8>, stage: String, reason: String, content_type: String, index: Option<usize>) -> Self {
        QuarantineItem(core::contract::quarantine::Item {
            index,
            raw,
            stage,
            reason,
            content_type,
        })
    }

    #[getter]
    fn index(&self) -> Option<usize> {
        self.0.index
    }

    #[getter]
    fn raw<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.raw)
    }

    #[getter]
    fn stage(&self) -> &str {
        &self.0.stage
    }

    #[getter]
    fn reason(&self) -> &str {
        &self.0.reason
    }

    #[getter]
    fn content_type(&self) -> &str {
        &self.0.content_type
    }

    fn __repr__(&self) -> String {
        format!(
            "QuarantineItem(index={:?}, stage={:?}, bytes={}, reason={:?})",
            self.0.index,
            self.0.stage,
            self.0.raw.len(),
            self.0.reason
        )
    }
}

/// The dead-letter records of `items`: value the raw bytes, key `key`, headers `dlq-reason`, `dlq-stage`,
/// `dlq-id`, `content-type`, `dlq-index` (a record of a body), then `headers`; cut to `max_record_bytes` (header
/// `dlq-truncated`). Each record's id (`dlq-id`) is the same for the same item of the same `body` (the request's,
/// as received), reason and key.
#[pyfunction]
#[pyo3(signature = (items, *, body, topic, key, headers, timestamp_ms, max_record_bytes = 1_000_000))]
fn quarantine_records(
    py: Python<'_>,
    items: Vec<PyRef<'_, QuarantineItem>>,
    body: &[u8],
    topic: &str,
    key: Option<&str>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
    max_record_bytes: usize,
) -> Records {
    let items: Vec<&core::contract::quarantine::Item> = items.iter().map(|item| &item.0).collect();
    let mut encoded = Vec::new();
    for (name, value) in &headers {
        core::canonical::records::encode_header(&mut encoded, name, value);
    }
    let destination = core::contract::quarantine::Destination {
        topic,
        key: key.map(str::as_bytes),
        headers: &encoded,
        body_digest: py.detach(|| core::contract::quarantine::body_digest(body)),
        timestamp_ms,
        max_record_bytes,
    };
    let mut records = core::Records::new();
    py.detach(|| {
        for item in items {
            core::contract::quarantine::push(&mut records, &destination, item);
        }
    });
    Records(records)
}

#[pymodule(gil_used = false)]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Contract>()?;
    module.add_class::<Validator>()?;
    module.add_class::<ValidationResult>()?;
    module.add_class::<Issue>()?;
    module.add_class::<Records>()?;
    module.add_class::<QuarantineItem>()?;
    module.add_function(wrap_pyfunction!(quarantine_records, module)?)?;
    module.add("BULK_BODY_BYTES", core::gateway::BULK_BODY_BYTES)?;
    module.add("EVENT_ID_DOMAIN", core::contract::validator::EVENT_ID_DOMAIN)?;
    module.add("LAG_BOUNDS_MS", PyTuple::new(module.py(), core::gateway::LAG_BOUNDS)?)?;
    module.add("MAX_RECORD_BYTES", core::contract::validator::DEFAULT_MAX_RECORD_BYTES)?;
    module.add("REFUSAL_DRAINED_BODY_MAX_BYTES", admission::DRAINED_BODY_MAX_BYTES)?;
    module.add("MAX_TRACEPARENT_BYTES", core::contract::headers::MAX_TRACEPARENT_BYTES)?;
    module.add("MAX_TRACESTATE_BYTES", core::contract::headers::MAX_TRACESTATE_BYTES)?;
    module.add(
        "MAX_IDEMPOTENCY_KEY_BYTES",
        core::contract::headers::MAX_IDEMPOTENCY_KEY_BYTES,
    )?;
    errors::register(module)?;
    archive::register(module)?;
    kafka::register(module)?;
    devices::register(module)?;
    gateway::register(module)?;
    admission::register(module)?;
    spool::register(module)
}
