//! The gateway's accept path (see the core's `gateway`): types and GIL release only.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use tidegate_core::canonical::records::hex;
use tidegate_core::contract::quarantine::Item;
use tidegate_core::gateway::{
    self as core_gateway, Answer, Body, DurableEnds, Gateway as CoreGateway, Lane, Problem, Route, RouteKind, Settings,
    Source, Tables, accept::Whole,
};

use crate::Validator;
use crate::devices::DeviceTable;
use crate::spool::{DedupWindow, RateTable, Spool};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A worker's accept path: `accept` takes one admitted body in one call without the GIL.
#[pyclass(frozen, module = "tidegate._native")]
pub struct Gateway(CoreGateway);

/// `(records by (outcome, priority), quarantined by stage, quarantine dropped, lag counts, lag sum, lag observed)`.
type CountersTuple = (
    Vec<(&'static str, &'static str, u64)>,
    Vec<(&'static str, u64)>,
    u64,
    Vec<u64>,
    f64,
    bool,
);

#[pymethods]
impl Gateway {
    #[new]
    #[pyo3(signature = (
        routes, *, spool, dedup, decoded_bytes, quarantine_budget, devices, archive, duplicates_topic, quarantine,
        dead_letter_topic, max_record_bytes, max_body_bytes, high_spool = None,
    ))]
    fn new(
        routes: Vec<(String, String, PyRef<'_, Validator>)>,
        spool: &Spool,
        dedup: &DedupWindow,
        decoded_bytes: &RateTable,
        quarantine_budget: &RateTable,
        devices: &DeviceTable,
        archive: bool,
        duplicates_topic: String,
        quarantine: bool,
        dead_letter_topic: String,
        max_record_bytes: usize,
        max_body_bytes: usize,
        high_spool: Option<PyRef<'_, Spool>>,
    ) -> PyResult<Gateway> {
        let routes = routes
            .into_iter()
            .map(|(name, kind, validator)| {
                let kind = match kind.as_str() {
                    "telemetry" => RouteKind::Telemetry,
                    "batch" => RouteKind::Batch,
                    "event" => RouteKind::Event,
                    other => return Err(PyValueError::new_err(format!("unknown route kind {other:?}"))),
                };
                Ok(Route {
                    name,
                    kind,
                    validator: validator.0.clone(),
                })
            })
            .collect::<PyResult<Vec<Route>>>()?;
        let settings = Settings {
            archive,
            duplicates_topic,
            quarantine,
            dead_letter_topic,
            max_record_bytes,
            max_body_bytes,
            dedup_ttl_ms: dedup.ttl_ms,
            key_ttl_ms: dedup.key_ttl_ms,
        };
        let tables = Tables {
            dedup: Arc::clone(&dedup.inner),
            decoded_bytes: Arc::clone(&decoded_bytes.0),
            quarantine_budget: Arc::clone(&quarantine_budget.0),
            devices: Arc::clone(&devices.0),
        };
        Ok(Gateway(CoreGateway::new(
            routes,
            settings,
            tables,
            Arc::clone(&spool.inner),
            high_spool.map(|high| Arc::clone(&high.inner)),
        )))
    }

    /// Takes one admitted body (see `_native.pyi`).
    #[pyo3(signature = (
        route, body, *, content_type = None, content_encoding = None, traceparent = None, tracestate = None,
        idempotency_key = None, device_id = None, device_from_source = false, priority, dry_run = false,
        source = "http", source_headers = Vec::new(), undecodable_retried = false,
    ))]
    fn accept(
        &self,
        py: Python<'_>,
        route: usize,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        idempotency_key: Option<&str>,
        device_id: Option<&str>,
        device_from_source: bool,
        priority: &str,
        dry_run: bool,
        source: &str,
        source_headers: Vec<(String, Vec<u8>)>,
        undecodable_retried: bool,
    ) -> PyResult<Accepted> {
        if route >= self.0.routes().len() {
            return Err(PyValueError::new_err(format!("no route {route}")));
        }
        let received_ms = now_ms();
        let request = Body {
            route,
            body,
            content_type,
            content_encoding,
            traceparent,
            tracestate,
            idempotency_key,
            device_id,
            device_from_source,
            priority,
            dry_run,
            source: Source {
                name: source,
                headers: &source_headers,
                undecodable_retried,
            },
            received_ms,
            now_us: now_us(),
        };
        Ok(Accepted(py.detach(|| self.0.accept(&request))?))
    }

    /// Quarantines a body refused before any route took it (see `_native.pyi`).
    #[pyo3(signature = (body, *, status, slug, detail, errors, stage, content_type, route = None, source = "http", source_headers = Vec::new()))]
    fn quarantine(
        &self,
        py: Python<'_>,
        body: &[u8],
        status: u16,
        slug: String,
        detail: String,
        errors: Vec<(String, String)>,
        stage: &str,
        content_type: &str,
        route: Option<usize>,
        source: &str,
        source_headers: Vec<(String, Vec<u8>)>,
    ) -> PyResult<Accepted> {
        let mut problem = Problem::new(status, slug, detail);
        for (path, message) in errors {
            problem = problem.with_error(path, message);
        }
        let item = Item {
            index: None,
            raw: body.to_vec(),
            stage: stage.into(),
            reason: problem.reason(),
            content_type: content_type.into(),
        };
        let whole = Whole {
            body,
            route: route.filter(|r| *r < self.0.routes().len()),
            device_id: None,
            priority: None,
            content_encoding: None,
            traceparent: None,
            tracestate: None,
            source: Source {
                name: source,
                headers: &source_headers,
                undecodable_retried: false,
            },
            received_ms: now_ms(),
            now_us: now_us(),
        };
        Ok(Accepted(py.detach(|| self.0.quarantine(&whole, problem, item))?))
    }

    /// A commit's outcome, before any waiter is woken (see `_native.pyi`).
    fn settle(&self, py: Python<'_>, lane: usize, durable_seq: u64, failed: bool) -> PyResult<()> {
        let lane = match lane {
            0 => Lane::Main,
            1 => Lane::High,
            other => return Err(PyValueError::new_err(format!("no lane {other}"))),
        };
        Ok(py.detach(|| self.0.settle(lane, durable_seq, failed))?)
    }

    /// Whether a commit of a spool `accepted` waits for failed since it was registered (see `_native.pyi`).
    fn failed_since(&self, accepted: &Accepted) -> bool {
        self.0.failed_since(&accepted.0)
    }

    /// Requests waiting for their durability.
    #[getter]
    fn waiting(&self) -> usize {
        self.0.waiting()
    }

    fn counters(&self) -> CountersTuple {
        let c = self.0.counters();
        let mut records = Vec::new();
        for (o, outcome) in core_gateway::OUTCOMES.iter().enumerate() {
            for (p, priority) in core_gateway::PRIORITIES.iter().enumerate() {
                if c.records[o][p] > 0 {
                    records.push((*outcome, *priority, c.records[o][p]));
                }
            }
        }
        let quarantined = core_gateway::STAGES
            .iter()
            .zip(c.quarantined)
            .filter(|(_, n)| *n > 0)
            .map(|(stage, n)| (*stage, n))
            .collect();
        (
            records,
            quarantined,
            c.quarantine_dropped,
            c.lag.to_vec(),
            c.lag_sum,
            c.lag_observed,
        )
    }
}

/// One body's answer, rendered (see `_native.pyi`).
#[pyclass(frozen, module = "tidegate._native")]
pub struct Accepted(Answer);

#[pymethods]
impl Accepted {
    #[getter]
    fn status(&self) -> u16 {
        self.0.status
    }

    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyString>, Bound<'py, PyString>)> {
        // Header values are ASCII (numbers, ids, media types): the lossy conversion never replaces anything.
        self.0
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    PyString::intern(py, name),
                    PyString::new(py, &String::from_utf8_lossy(value)),
                )
            })
            .collect()
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.body)
    }

    #[getter]
    fn durable_ends(&self) -> Option<DurableEnds> {
        self.0.durable_ends
    }

    #[getter]
    fn delivered_ends(&self) -> Option<DurableEnds> {
        self.0.delivered_ends
    }

    #[getter]
    fn repeats_durable(&self) -> bool {
        self.0.repeats_durable
    }

    #[getter]
    fn spool_full(&self) -> bool {
        self.0.spool_full
    }

    #[getter]
    fn slug(&self) -> Option<&str> {
        self.0.slug.as_deref()
    }

    #[getter]
    fn records(&self) -> usize {
        self.0.records
    }

    #[getter]
    fn total(&self) -> usize {
        self.0.total
    }

    #[getter]
    fn rejected(&self) -> usize {
        self.0.rejected
    }

    #[getter]
    fn device_id(&self) -> Option<&str> {
        self.0.device_id.as_deref()
    }

    #[getter]
    fn event_id(&self) -> Option<String> {
        self.0.event_id.map(|id| hex(&id))
    }

    fn __repr__(&self) -> String {
        format!(
            "Accepted(status={}, durable_ends={:?}, records={})",
            self.0.status, self.0.durable_ends, self.0.records
        )
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Gateway>()?;
    module.add_class::<Accepted>()?;
    Ok(())
}
