//! The header phase of the native gateway (`tidegate-core`'s `gateway`): device and operator keys, and the one
//! admission decision per request, taken from the request's header pairs with the GIL released. Conversion only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::sync::{Arc, Mutex, PoisonError};
use tidegate_core::gateway::{
    Admission as CoreAdmission, AdmissionConfig, Decision, HeaderView, KeyStore, LimitConfig, Permit, Priority, Refusal,
};

use crate::spool::RateTable;

/// The keys file (`tidegate keys`), verified natively and re-read within `reload_interval` of a change.
#[pyclass(frozen, module = "tidegate._native")]
pub struct Keys(Arc<KeyStore>);

#[pymethods]
impl Keys {
    #[new]
    #[pyo3(signature = (path, *, reload_interval = 0.5))]
    fn new(py: Python<'_>, path: PathBuf, reload_interval: f64) -> Keys {
        let every = Duration::from_secs_f64(reload_interval.max(0.0));
        Keys(Arc::new(py.detach(|| KeyStore::open(&path, every))))
    }

    /// The device a presented key belongs to; None for a malformed, unknown or revoked key.
    fn device_for(&self, py: Python<'_>, key: &str) -> Option<String> {
        py.detach(|| self.0.device_for(key.as_bytes())).map(|d| d.to_string())
    }

    /// The name of the operator a presented key belongs to; None for any other key.
    fn operator_for(&self, py: Python<'_>, key: &str) -> Option<String> {
        py.detach(|| self.0.operator_for(key.as_bytes())).map(|d| d.to_string())
    }

    fn is_operator(&self, py: Python<'_>, key: &str) -> bool {
        py.detach(|| self.0.operator_for(key.as_bytes())).is_some()
    }
}

/// A request's place in admission, handed back to `Admission.done` once it is answered.
#[pyclass(frozen, module = "tidegate._native")]
pub struct AdmissionTicket {
    permit: Option<Permit>,
    decided_at: f64,
    done: AtomicBool,
}

#[pymethods]
impl AdmissionTicket {
    #[getter]
    fn admitted(&self) -> bool {
        self.permit.is_some()
    }
}

/// The header phase of one worker: see the core's `gateway::admission`.
#[pyclass(frozen, module = "tidegate._native")]
pub struct Admission {
    inner: CoreAdmission,
    bodies: Vec<Py<PyBytes>>,
    priorities: [Py<PyString>; 3],
    /// Refusals `screen` answered, by route (the caller's index) and status.
    refused_on_arrival: Mutex<BTreeMap<(usize, u16), u64>>,
}

/// The header names the decision reads, in `HeaderView` order.
const WANTED: [&[u8]; 6] = [
    b"content-length",
    b"content-encoding",
    b"x-device-token",
    b"x-api-key",
    b"authorization",
    b"x-priority",
];

type Decided<'py> = (
    AdmissionTicket,
    Option<Bound<'py, PyString>>,
    Py<PyString>,
    Option<(u16, Py<PyBytes>, Bound<'py, PyList>)>,
);

/// The header values admission reads, copied into one buffer (a header sent on several lines is one comma-joined
/// value), with their spans in `WANTED`'s order.
type WantedHeaders = (Vec<u8>, [Option<(usize, usize)>; 6]);

fn wanted_headers(headers: &Bound<'_, PyAny>) -> PyResult<WantedHeaders> {
    let mut buffer: Vec<u8> = Vec::with_capacity(160);
    let mut spans: [Option<(usize, usize)>; 6] = [None; 6];
    for item in headers.try_iter()? {
        let item = item?;
        let (name, value) = match item.cast::<PyTuple>() {
            Ok(pair) => (pair.get_item(0)?, pair.get_item(1)?),
            Err(_) => (item.get_item(0)?, item.get_item(1)?),
        };
        let name = name.cast::<PyString>()?.to_str()?;
        let Some(slot) = WANTED.iter().position(|w| *w == name.as_bytes()) else {
            continue;
        };
        let value = value.cast::<PyString>()?.to_str()?;
        let start = buffer.len();
        if let Some((a, b)) = spans[slot] {
            buffer.extend_from_within(a..b);
            buffer.push(b',');
        }
        buffer.extend_from_slice(value.as_bytes());
        spans[slot] = Some((start, buffer.len()));
    }
    Ok((buffer, spans))
}

/// A priority named by the caller (a route's default, MQTT's topic rule): anything but high or medium is low.
fn route_priority(name: &str) -> Priority {
    Priority::parse(name.as_bytes()).unwrap_or(Priority::Low)
}

/// Microseconds since the Unix epoch: the device buckets' clock, shared by every process of the host.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn header_view<'a>(buffer: &'a [u8], spans: &[Option<(usize, usize)>; 6]) -> HeaderView<'a> {
    let get = |i: usize| spans[i].map(|(a, b)| &buffer[a..b]);
    HeaderView {
        content_length: get(0),
        content_encoding: get(1),
        device_token: get(2),
        api_key: get(3),
        authorization: get(4),
        priority: get(5),
    }
}

impl Admission {
    /// `decide`'s tuple for a decision.
    fn decided<'py>(&self, py: Python<'py>, decision: Decision) -> PyResult<Decided<'py>> {
        Ok(match decision {
            Decision::Admitted {
                permit,
                device,
                priority,
            } => (
                AdmissionTicket {
                    permit: Some(permit),
                    decided_at: permit.started,
                    done: AtomicBool::new(false),
                },
                device.map(|d| PyString::new(py, &d)),
                self.priorities[priority as usize].clone_ref(py),
                None,
            ),
            Decision::Refused {
                refusal,
                priority,
                retry_after,
                decided_at,
            } => (
                AdmissionTicket {
                    permit: None,
                    decided_at,
                    done: AtomicBool::new(false),
                },
                None,
                self.priorities[priority as usize].clone_ref(py),
                Some(self.refusal_answer(py, refusal, priority, retry_after)?),
            ),
        })
    }

    /// A refusal's answer: its status, its pre-rendered problem+json body and its headers.
    fn refusal_answer<'py>(
        &self,
        py: Python<'py>,
        refusal: Refusal,
        priority: Priority,
        retry_after: Option<u32>,
    ) -> PyResult<(u16, Py<PyBytes>, Bound<'py, PyList>)> {
        let rendered = self.inner.rendered(refusal, priority);
        let body = self.bodies[refusal as usize * 3 + priority as usize].clone_ref(py);
        let head = PyList::empty(py);
        // Granian adds content-length (the body's size is known).
        let pair = |name: &str, value: &str| (PyString::intern(py, name), PyString::new(py, value));
        head.append(pair("content-type", "application/problem+json"))?;
        if let Some(seconds) = retry_after {
            head.append(pair("retry-after", &seconds.to_string()))?;
        }
        if let Some(challenge) = rendered.www_authenticate {
            head.append(pair("www-authenticate", challenge))?;
        }
        // A refusal is answered before the body is read, and Granian then closes the connection unless the body
        // had already arrived whole: said here, so that a keep-alive client does not send its next request on it.
        head.append(pair("connection", "close"))?;
        Ok((rendered.status, body, head))
    }
}

#[pymethods]
impl Admission {
    #[new]
    #[pyo3(signature = (
        *, keys = None, rates = None, decoded_bytes = None, initial_limit = 1024.0, min_limit = 1024.0,
        max_limit = 4096.0, tolerance = 2.0, smoothing = 0.3, low_share = 0.5, medium_share = 0.8,
        refusal_weight = 2.0, shed_medium_at = 0.9, shed_low_at = 0.7, max_in_flight_records = 50_000.0,
        rate_per_device = 50.0, decoded_bytes_per_device = 2_097_152.0, loop_busy_target = 1.0,
        loop_queue_high = 256.0, loop_queue_medium = 32.0, loop_queue_low = 12.0, loop_queue_interval_s = 0.3,
        loop_queue_higher_recent_s = 1.0, bulk_bodies = 2.0,
    ))]
    fn new(
        py: Python<'_>,
        keys: Option<&Keys>,
        rates: Option<&RateTable>,
        decoded_bytes: Option<&RateTable>,
        initial_limit: f64,
        min_limit: f64,
        max_limit: f64,
        tolerance: f64,
        smoothing: f64,
        low_share: f64,
        medium_share: f64,
        refusal_weight: f64,
        shed_medium_at: f64,
        shed_low_at: f64,
        max_in_flight_records: f64,
        rate_per_device: f64,
        decoded_bytes_per_device: f64,
        loop_busy_target: f64,
        loop_queue_high: f64,
        loop_queue_medium: f64,
        loop_queue_low: f64,
        loop_queue_interval_s: f64,
        loop_queue_higher_recent_s: f64,
        bulk_bodies: f64,
    ) -> Admission {
        let config = AdmissionConfig {
            limit: LimitConfig {
                initial: initial_limit,
                minimum: min_limit,
                maximum: max_limit,
                tolerance,
                smoothing,
                shares: [1.0, medium_share, low_share],
                refusal_weight,
                bulk_bodies,
            },
            shed_medium_at,
            shed_low_at,
            max_in_flight_records,
            rate_per_device,
            decoded_bytes_per_device,
            loop_busy_target,
            loop_queue_shed_at: [loop_queue_high, loop_queue_medium, loop_queue_low],
            loop_queue_interval_s,
            loop_queue_higher_recent_s,
        };
        let inner = CoreAdmission::new(
            config,
            keys.map(|k| k.0.clone()),
            rates.map(|r| r.0.clone()),
            decoded_bytes.map(|r| r.0.clone()),
        );
        let mut bodies = Vec::new();
        for refusal in Refusal::ALL {
            for priority in Priority::ALL {
                bodies.push(PyBytes::new(py, &inner.rendered(refusal, priority).body).unbind());
            }
        }
        let priorities = Priority::ALL.map(|p| PyString::intern(py, p.name()).unbind());
        Admission {
            inner,
            bodies,
            priorities,
            refused_on_arrival: Mutex::new(BTreeMap::new()),
        }
    }

    /// Decides a request from its `headers` (RSGI's `scope.headers.items()`: `(name, value)` pairs of str, names in
    /// lower case), `default_priority` being its route's and `in_flight_records` the records awaiting durability in
    /// the worker. Returns `(ticket, device_id, priority, refusal)`: `refusal` is None when admitted, else
    /// `(status, body, headers)` to send. `screened`: `screen` let the request through (its load checks are not
    /// made again).
    #[pyo3(signature = (headers, default_priority, in_flight_records, screened = false))]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        headers: &Bound<'py, PyAny>,
        default_priority: &str,
        in_flight_records: u64,
        screened: bool,
    ) -> PyResult<Decided<'py>> {
        let (buffer, spans) = wanted_headers(headers)?;
        let default = route_priority(default_priority);
        let decision = py.detach(|| {
            let view = header_view(&buffer, &spans);
            if screened {
                self.inner.decide_screened(&view, default, now_us())
            } else {
                self.inner.decide(&view, default, in_flight_records, now_us())
            }
        });
        self.decided(py, decision)
    }

    /// The load checks of `decide` alone, as a request arrives and before it waits for the event loop (the core's
    /// `Admission::screen`): the request's priority when it is let through (then `decide(..., screened=True)`);
    /// else the refusal is sent on `proto` (`response_bytes`), counted for `route` (`refused_on_arrival`), and its
    /// status returned. The refusal is answered here, in the same call: under overload refusals are most of what
    /// arrives, and each holds the GIL on Granian's thread, which the event loop then waits for.
    fn screen<'py>(
        &self,
        py: Python<'py>,
        headers: &Bound<'py, PyAny>,
        default_priority: &str,
        in_flight_records: u64,
        route: usize,
        proto: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (buffer, spans) = wanted_headers(headers)?;
        let default = route_priority(default_priority);
        // With the GIL held: the checks take a few atomics and two short locks, and a thread that lets the GIL go
        // waits to take it back behind the event loop, which under load always wants it.
        // A refusal is answered from its parts: no ticket object, as `decide`'s callers need, is made for it.
        let (refusal, priority, retry_after, decided_at) =
            match self
                .inner
                .screen(&header_view(&buffer, &spans), default, in_flight_records)
            {
                Ok(priority) => return Ok(self.priorities[priority as usize].bind(py).clone().into_any()),
                Err(Decision::Refused {
                    refusal,
                    priority,
                    retry_after,
                    decided_at,
                }) => (refusal, priority, retry_after, decided_at),
                Err(Decision::Admitted { .. }) => unreachable!("screen lets through or refuses, it never admits"),
            };
        let (status, body, head) = self.refusal_answer(py, refusal, priority, retry_after)?;
        let sent = proto.call_method1(pyo3::intern!(py, "response_bytes"), (status, head, body));
        self.inner.refusal_answered(decided_at);
        sent?;
        *self
            .refused_on_arrival
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route, status))
            .or_insert(0) += 1;
        Ok(status.into_pyobject(py)?.into_any())
    }

    /// The refusals `screen` answered: (route, status, count).
    fn refused_on_arrival(&self) -> Vec<(usize, u16, u64)> {
        let counts = self.refused_on_arrival.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .iter()
            .map(|(&(route, status), &count)| (route, status, count))
            .collect()
    }

    /// A request `screen` let through will not reach the event loop after all (it could not be queued): its cost
    /// leaves the loop's queue. (`decide(..., screened=True)` takes it out of the queue for the others.)
    fn left_queue(&self, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let (buffer, spans) = wanted_headers(headers)?;
        self.inner.left_queue(&header_view(&buffer, &spans));
        Ok(())
    }

    /// The event loop was busy `busy` of the last `seconds` (see the core's `Admission::observe_loop`).
    fn observe_loop(&self, busy: f64, seconds: f64) {
        self.inner.observe_loop(busy, seconds);
    }

    /// The request of `ticket` was answered (an admitted one's time counts in the limit; a refused one's measures
    /// what a refusal costs). A second call does nothing.
    fn done(&self, ticket: &AdmissionTicket) {
        if ticket.done.swap(true, Ordering::Relaxed) {
            return;
        }
        match ticket.permit {
            Some(permit) => self.inner.release(permit),
            None => self.inner.refusal_answered(ticket.decided_at),
        }
    }

    /// Readiness (else 503 `not-ready`), a failing spool (503 `spool-error`), and the pressure that is not per
    /// request: `max(spool fill (1 when full), event-loop lag / its threshold)`.
    fn set_conditions(&self, ready: bool, spool_failing: bool, pressure: f64) {
        self.inner.set_conditions(ready, spool_failing, pressure);
    }

    /// For MQTT, which holds a message it cannot take yet instead of refusing it: 0 when a message of `device_id`
    /// at `priority` may be taken now (the device's token taken), else the seconds to wait before asking again.
    fn wait_for(&self, device_id: &str, priority: &str, in_flight_records: u64) -> f64 {
        let priority = route_priority(priority);
        self.inner.wait_for(device_id, priority, in_flight_records, now_us())
    }

    /// `max(in_flight_records / max_in_flight_records, pressure)`.
    fn utilization(&self, in_flight_records: u64) -> f64 {
        self.inner.utilization(in_flight_records)
    }

    /// Counters and gauges for `/metrics`: `limit`, `capacity_<priority>`, `in_flight`, `in_flight_<priority>`,
    /// `bulk_in_flight_<priority>`, `slowdown`, `drain_rate`, `refusal_seconds`, `loop_busy`, `shed_level`,
    /// `loop_queue`, `admitted_<priority>`, `refused_<reason>_<priority>`, `shed_<priority>` (the refusals that
    /// shed by load and priority).
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.snapshot();
        let out = PyDict::new(py);
        out.set_item("limit", s.limit)?;
        out.set_item("in_flight", s.in_flight)?;
        out.set_item("slowdown", s.slowdown)?;
        out.set_item("drain_rate", s.drain_rate)?;
        out.set_item("refusal_seconds", s.refusal_cost)?;
        out.set_item("loop_busy", s.loop_busy)?;
        out.set_item("shed_level", s.shed_level)?;
        out.set_item("loop_queue", s.loop_queue)?;
        for p in Priority::ALL {
            let name = p.name();
            out.set_item(format!("capacity_{name}"), s.capacity[p as usize])?;
            out.set_item(format!("in_flight_{name}"), s.in_flight_by[p as usize])?;
            out.set_item(format!("bulk_in_flight_{name}"), s.bulk_in_flight_by[p as usize])?;
            out.set_item(format!("admitted_{name}"), s.admitted[p as usize] as f64)?;
            let shed: u64 = Refusal::ALL
                .into_iter()
                .filter(|r| r.is_shed())
                .map(|r| s.refused[r as usize][p as usize])
                .sum();
            out.set_item(format!("shed_{name}"), shed as f64)?;
            for refusal in Refusal::ALL {
                let count = s.refused[refusal as usize][p as usize] as f64;
                out.set_item(format!("refused_{}_{name}", refusal.reason()), count)?;
            }
        }
        Ok(out)
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Keys>()?;
    module.add_class::<Admission>()?;
    module.add_class::<AdmissionTicket>()?;
    Ok(())
}
