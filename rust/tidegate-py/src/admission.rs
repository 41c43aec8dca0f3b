//! The header phase of the native gateway (`tidegate-core`'s `gateway`): device and operator keys, and the one
//! admission decision per request, taken from the request's header pairs with the GIL released. Conversion only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::sync::{Arc, Mutex, PoisonError};
use tidegate_core::gateway::{
    Admission as CoreAdmission, AdmissionConfig, Decision, HeaderView, Hold, KeyStore, LimitConfig, Permit, Priority,
    Refusal, declared_length,
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
    /// Refused requests whose bodies Granian reads after the answer (`keeps_connection`): when each began, and
    /// Granian's awaitable of the read (never awaited: `sweep_drains` forgets it once done, cancels it when late).
    draining: Mutex<Vec<(Instant, Py<PyAny>)>>,
    /// Refusals answered with the connection kept open, and closed (`keeps_connection`).
    refusal_connections: [AtomicU64; 2],
    /// Reads `sweep_drains` cancelled: the client never sent the body it declared.
    drains_cancelled: AtomicU64,
    /// Refusals `screen` made and holds before answering (the core's `refusal_hold`), until `release_held`.
    held: Mutex<Vec<HeldRefusal>>,
    /// Refusals held since the start.
    refusals_held: AtomicU64,
    /// Set once the worker stops (`stop_holding`): every refusal is answered at once.
    holding_stopped: AtomicBool,
}

/// A refusal rendered and held: answered on `proto` once `due` (`Admission.release_held`).
struct HeldRefusal {
    due: Instant,
    proto: Py<PyAny>,
    status: u16,
    body: Py<PyBytes>,
    head: Py<PyList>,
}

/// At most this many refusals are held at once (checked before each is held, so a few more under a race); past it
/// they are answered at once. Each holds its connection's request (Granian's few hundred bytes, the rendered answer
/// shared): a bound on memory for a flood of clients far larger than any seen (the overload ramp holds a few
/// hundred).
const HELD_REFUSALS_MAX: usize = 4096;

/// A refused request whose declared body is at most this long keeps its connection (`keeps_connection`): reading
/// and dropping a few kilobytes costs the server less than the client's next connection (and, behind TLS, its
/// handshake). A larger body, or one of unknown length, is not read: the refusal says `Connection: close`.
pub const DRAINED_BODY_MAX_BYTES: u64 = 64 * 1024;

/// The header names the decision reads, in `HeaderView` order, then `expect` (`keeps_connection`).
const WANTED: [&[u8]; 7] = [
    b"content-length",
    b"content-encoding",
    b"x-device-token",
    b"x-api-key",
    b"authorization",
    b"x-priority",
    b"expect",
];
/// Where `expect` is in `WANTED`.
const EXPECT: usize = 6;

/// Each wanted header's span in the buffer (`wanted_headers`).
type Spans = [Option<(usize, usize)>; WANTED.len()];

type Decided<'py> = (
    AdmissionTicket,
    Option<Bound<'py, PyString>>,
    Py<PyString>,
    Option<(u16, Py<PyBytes>, Bound<'py, PyList>)>,
);

/// The header values admission reads, copied into one buffer (a header sent on several lines is one comma-joined
/// value), with their spans in `WANTED`'s order.
type WantedHeaders = (Vec<u8>, Spans);

fn wanted_headers(headers: &Bound<'_, PyAny>) -> PyResult<WantedHeaders> {
    let mut buffer: Vec<u8> = Vec::with_capacity(160);
    let mut spans: Spans = [None; WANTED.len()];
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

fn header_view<'a>(buffer: &'a [u8], spans: &Spans) -> HeaderView<'a> {
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
    fn decided<'py>(&self, py: Python<'py>, decision: Decision, keeps_connection: bool) -> PyResult<Decided<'py>> {
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
                Some(self.refusal_answer(py, refusal, priority, retry_after, keeps_connection)?),
            ),
        })
    }

    /// A refusal's answer: its status, its pre-rendered problem+json body and its headers (`Connection: close`
    /// unless `keeps_connection` said the connection stays open).
    fn refusal_answer<'py>(
        &self,
        py: Python<'py>,
        refusal: Refusal,
        priority: Priority,
        retry_after: Option<u32>,
        keeps_connection: bool,
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
        if !keeps_connection {
            head.append(pair("connection", "close"))?;
        }
        Ok((rendered.status, body, head))
    }

    /// Whether a refused request's connection stays open. A refusal is answered before the body is read, and
    /// hyper (under Granian) closes a connection whose request body was dropped before it arrived whole, without
    /// saying so: a keep-alive client would send its next request on a closed connection. So the body is read
    /// (`proto()`: Granian reads it on its own runtime, and the awaitable is kept in `draining`, never awaited)
    /// when its declared length is at most `DRAINED_BODY_MAX_BYTES`; an empty one needs no read. Otherwise (no
    /// `proto`, no or a larger declared length, chunked, or `Expect`: a client waiting for `100 Continue` may
    /// never send the body) the answer says `Connection: close`.
    fn keeps_connection(&self, buffer: &[u8], spans: &Spans, proto: Option<&Bound<'_, PyAny>>) -> bool {
        let kept = self.may_keep_connection(buffer, spans, proto);
        self.refusal_connections[usize::from(!kept)].fetch_add(1, Ordering::Relaxed);
        kept
    }

    /// The core's `refusal_hold`, unless the worker stops (`stop_holding`) or `HELD_REFUSALS_MAX` are held.
    fn hold_for(&self, refusal: Refusal, retry_after: Option<u32>) -> Option<Hold> {
        let room = self.held.lock().unwrap_or_else(PoisonError::into_inner).len() < HELD_REFUSALS_MAX;
        if !room || self.holding_stopped.load(Ordering::Relaxed) {
            return None;
        }
        self.inner.refusal_hold(refusal, retry_after)
    }

    /// Holds a refusal's answer on `proto` for `duration` (`release_held` sends it).
    fn hold(
        &self,
        proto: &Bound<'_, PyAny>,
        duration: Duration,
        status: u16,
        body: Py<PyBytes>,
        head: Bound<'_, PyList>,
    ) {
        let refusal = HeldRefusal {
            due: Instant::now() + duration,
            proto: proto.clone().unbind(),
            status,
            body,
            head: head.unbind(),
        };
        self.held.lock().unwrap_or_else(PoisonError::into_inner).push(refusal);
        self.refusals_held.fetch_add(1, Ordering::Relaxed);
    }

    fn may_keep_connection(&self, buffer: &[u8], spans: &Spans, proto: Option<&Bound<'_, PyAny>>) -> bool {
        let Some(proto) = proto else {
            return false;
        };
        if spans[EXPECT].is_some() {
            return false;
        }
        match declared_length(header_view(buffer, spans).content_length) {
            Some(0) => true,
            Some(length) if length <= DRAINED_BODY_MAX_BYTES => match proto.call0() {
                Ok(reading) => {
                    let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
                    draining.push((Instant::now(), reading.unbind()));
                    true
                }
                // The body was taken already (not by tidegate's path): nothing to read, so say close.
                Err(_) => false,
            },
            _ => false,
        }
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
        loop_queue_higher_recent_s = 1.0, bulk_bodies = 2.0, bulk_narrow_at = 2.0, refusal_hold_s = 1.0,
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
        bulk_narrow_at: f64,
        refusal_hold_s: f64,
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
                bulk_narrow_at,
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
            refusal_hold_s,
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
            draining: Mutex::new(Vec::new()),
            refusal_connections: [AtomicU64::new(0), AtomicU64::new(0)],
            drains_cancelled: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            refusals_held: AtomicU64::new(0),
            holding_stopped: AtomicBool::new(false),
        }
    }

    /// Decides a request from its `headers` (RSGI's `scope.headers.items()`: `(name, value)` pairs of str, names in
    /// lower case), `default_priority` being its route's and `in_flight_records` the records awaiting durability in
    /// the worker. Returns `(ticket, device_id, priority, refusal)`: `refusal` is None when admitted, else
    /// `(status, body, headers)` to send. `screened`: `screen` let the request through (its load checks are not
    /// made again).
    #[pyo3(signature = (headers, default_priority, in_flight_records, screened = false, proto = None))]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        headers: &Bound<'py, PyAny>,
        default_priority: &str,
        in_flight_records: u64,
        screened: bool,
        proto: Option<&Bound<'py, PyAny>>,
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
        let keeps_connection =
            matches!(decision, Decision::Refused { .. }) && self.keeps_connection(&buffer, &spans, proto);
        self.decided(py, decision, keeps_connection)
    }

    /// The load checks of `decide` alone, as a request arrives and before it waits for the event loop (the core's
    /// `Admission::screen`): the request's priority when it is let through (then `decide(..., screened=True)`);
    /// else the refusal is sent on `proto` (`response_bytes`), counted for `route` (`refused_on_arrival`), and its
    /// status returned. A refusal is decided here, in the same call: under overload refusals are most of what
    /// arrives, and each holds the GIL on Granian's thread, which the event loop then waits for. It is answered
    /// here too, unless it is a shed, which is held (the core's `refusal_hold` says why) and answered by
    /// `release_held`; the caller does nothing more with the request either way.
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
        let keeps_connection = self.keeps_connection(&buffer, &spans, Some(proto));
        let hold = self.hold_for(refusal, retry_after);
        let retry_after = hold.map_or(retry_after, |hold| hold.retry_after);
        let (status, body, head) = self.refusal_answer(py, refusal, priority, retry_after, keeps_connection)?;
        let sent = match hold {
            Some(hold) => {
                self.hold(proto, hold.duration, status, body, head);
                Ok(())
            }
            None => proto
                .call_method1(pyo3::intern!(py, "response_bytes"), (status, head, body))
                .map(drop),
        };
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

    /// Forgets the refused requests' body reads that are done (`keeps_connection`), and cancels those still
    /// unfinished after `timeout_s` (Granian drops the body; hyper closes the connection): a client that declared a
    /// body and never sent it holds its connection no longer than an admitted one would. Returns how many were
    /// cancelled. Called about once a second.
    fn sweep_drains(&self, py: Python<'_>, timeout_s: f64) -> PyResult<u64> {
        // Taken out of the lock: a Python call below may let another thread run `screen`, which takes it.
        let pending = std::mem::take(&mut *self.draining.lock().unwrap_or_else(PoisonError::into_inner));
        let late = Duration::from_secs_f64(timeout_s.max(0.0));
        let now = Instant::now();
        let mut unfinished = Vec::new();
        let mut cancelled = 0;
        for (began, reading) in pending {
            let bound = reading.bind(py);
            if bound.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                continue;
            }
            if now.duration_since(began) >= late {
                bound.call_method0(pyo3::intern!(py, "cancel"))?;
                cancelled += 1;
            } else {
                unfinished.push((began, reading));
            }
        }
        if !unfinished.is_empty() {
            let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
            unfinished.append(&mut draining);
            *draining = unfinished;
        }
        self.drains_cancelled.fetch_add(cancelled, Ordering::Relaxed);
        Ok(cancelled)
    }

    /// Answers the held refusals that are due (all of them with `all`). Returns how many were answered.
    #[pyo3(signature = (all = false))]
    fn release_held(&self, py: Python<'_>, all: bool) -> PyResult<usize> {
        let now = Instant::now();
        // Taken out of the lock: answering is a Python call, during which Granian's thread may run `screen`.
        let due: Vec<HeldRefusal> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extract_if(.., |h| all || h.due <= now)
            .collect();
        let mut first_error = None;
        for refusal in &due {
            let answer = (refusal.status, refusal.head.bind(py), refusal.body.bind(py));
            if let Err(error) = refusal
                .proto
                .bind(py)
                .call_method1(pyo3::intern!(py, "response_bytes"), answer)
            {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(due.len()), Err)
    }

    /// The worker stops: every held refusal is answered now, and every later one at once. Returns how many were
    /// held.
    fn stop_holding(&self, py: Python<'_>) -> PyResult<usize> {
        self.holding_stopped.store(true, Ordering::Relaxed);
        self.release_held(py, true)
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

    /// Readiness, else 503 `spool-error` (a failing spool), `spool-full` (at its quota) or `not-ready`; and the
    /// pressure that is not per request: `max(spool fill (1 when full), event-loop lag / its threshold)`.
    fn set_conditions(&self, ready: bool, spool_failing: bool, spool_full: bool, pressure: f64) {
        self.inner.set_conditions(ready, spool_failing, spool_full, pressure);
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
    /// `bulk_in_flight_<priority>`, `bulk_places`, `high_slowdown`, `bulk_narrowings`, `bulk_narrow_seconds`,
    /// `slowdown`, `drain_rate`, `refusal_seconds`, `loop_busy`, `shed_level`, `loop_queue`, `admitted_<priority>`,
    /// `refused_<reason>_<priority>`, `shed_<priority>` (the refusals that shed by load and priority),
    /// `refusals_held` (since the start) and `refusals_holding` (now).
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.snapshot();
        let out = PyDict::new(py);
        out.set_item("limit", s.limit)?;
        out.set_item("in_flight", s.in_flight)?;
        out.set_item("slowdown", s.slowdown)?;
        out.set_item("bulk_places", s.bulk_places)?;
        out.set_item("high_slowdown", s.high_slowdown)?;
        out.set_item("bulk_narrowings", s.bulk_narrowings as f64)?;
        out.set_item("bulk_narrow_seconds", s.bulk_narrow_seconds)?;
        out.set_item("drain_rate", s.drain_rate)?;
        out.set_item("refusal_seconds", s.refusal_cost)?;
        out.set_item("loop_busy", s.loop_busy)?;
        out.set_item("shed_level", s.shed_level)?;
        out.set_item("loop_queue", s.loop_queue)?;
        out.set_item(
            "refusals_connection_kept",
            self.refusal_connections[0].load(Ordering::Relaxed) as f64,
        )?;
        out.set_item(
            "refusals_connection_closed",
            self.refusal_connections[1].load(Ordering::Relaxed) as f64,
        )?;
        out.set_item("refusals_held", self.refusals_held.load(Ordering::Relaxed) as f64)?;
        let holding = self.held.lock().unwrap_or_else(PoisonError::into_inner).len();
        out.set_item("refusals_holding", holding as f64)?;
        out.set_item(
            "refusal_bodies_never_sent",
            self.drains_cancelled.load(Ordering::Relaxed) as f64,
        )?;
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
