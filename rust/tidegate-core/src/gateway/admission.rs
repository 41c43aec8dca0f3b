//! The header phase of an ingest request: one decision, from the raw headers alone, before the body is read.
//!
//! In order: readiness (503 `not-ready`, `spool-error` or `spool-full`), `X-Priority` (400 when unknown), utilization
//! shedding (records awaiting durability, spool fill, event-loop lag: 503 `shed`), the loop's busy share and its
//! queue (as the request arrives, `Admission::screen`: 503 `shed`), the adaptive concurrency limit
//! with its priority partitions ([`super::limit`]: 503 `shed`), the device key (401), the device's request rate and
//! its budget of decoded bytes (429). Shedding comes before the key so that a shed costs no hash; a request
//! refused after the limit gives its permit back (its time is not counted). Every refusal is answered with a body rendered once, at start, and a
//! `Retry-After`; every refusal and admission is counted here, for `/metrics`.
//!
//! The decision takes no lock but the limit's and the loop queue's (a few arithmetic operations each) and the keys'
//! and buckets' own.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::accept::SPOOL_REFUSED_DETAIL;
use super::keys::{KeyStore, presented_key};
use super::limit::{AdaptiveLimit, LimitConfig, NoRoom, Permit, Priority, request_cost};
use crate::state::table::RateTable;

/// Why a request was refused before its body was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotReady = 0,
    SpoolError = 1,
    InvalidPriority = 2,
    MissingCredential = 3,
    InvalidCredential = 4,
    /// Utilization (records awaiting durability, spool fill, loop lag) over the priority's threshold.
    Overloaded = 5,
    /// Over the priority's part of the adaptive limit.
    Shed = 6,
    RateLimited = 7,
    ByteBudget = 8,
    /// The worker's event loop busy past its target: low, then medium priority shed in proportion.
    LoopBusy = 9,
    /// More work waiting for the worker's event loop than the priority may queue behind (`screen`).
    LoopQueue = 10,
    /// A bulk body over its priority's places in the bulk lane (`limit.rs`).
    Bulk = 11,
    /// The worker's spool at its quota (`spool_quota_bytes`) until delivery and the archive let cleanup free room.
    SpoolFull = 12,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::NotReady,
        Refusal::SpoolError,
        Refusal::InvalidPriority,
        Refusal::MissingCredential,
        Refusal::InvalidCredential,
        Refusal::Overloaded,
        Refusal::Shed,
        Refusal::RateLimited,
        Refusal::ByteBudget,
        Refusal::LoopBusy,
        Refusal::LoopQueue,
        Refusal::Bulk,
        Refusal::SpoolFull,
    ];

    /// Whether it sheds by load and priority (a `503 shed`, counted in `tidegate_shed_total`), rather than
    /// refusing for readiness, credentials or a device's own rate.
    pub fn is_shed(self) -> bool {
        matches!(
            self,
            Refusal::Overloaded | Refusal::Shed | Refusal::LoopBusy | Refusal::LoopQueue | Refusal::Bulk
        )
    }

    /// The label in `/metrics`.
    pub fn reason(self) -> &'static str {
        [
            "not_ready",
            "spool_error",
            "invalid_priority",
            "missing_credential",
            "invalid_credential",
            "utilization",
            "limit",
            "rate",
            "decoded_bytes",
            "loop_busy",
            "loop_queue",
            "bulk",
            "spool_full",
        ][self as usize]
    }
}

/// What the worker decides with, besides the limit.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub limit: LimitConfig,
    /// Utilization at which medium (and low) priority is shed.
    pub shed_medium_at: f64,
    /// Utilization at which low priority is shed.
    pub shed_low_at: f64,
    /// Records awaiting durability at which utilization reaches 1.
    pub max_in_flight_records: f64,
    /// For the 429 bodies: a device's requests per second and decoded bytes per second.
    pub rate_per_device: f64,
    pub decoded_bytes_per_device: f64,
    /// The share of its time the event loop may be busy (not waiting for I/O) before low priority is shed; 1 (the
    /// default) never sheds by it.
    pub loop_busy_target: f64,
    /// The cost let in and still waiting for the event loop (`screen`) at which a request of each priority
    /// (high, medium, low) is shed as it arrives.
    pub loop_queue_shed_at: [f64; 3],
    /// How long the loop's queue must stay past a priority's mark before that priority is shed (and below it
    /// before shedding stops): a burst shorter than this is let through.
    pub loop_queue_interval_s: f64,
    /// Medium and low are shed by the loop's queue only while a higher priority has arrived within this many
    /// seconds: shedding makes room for the priorities above, and with none of them coming a refusal helps no one.
    pub loop_queue_higher_recent_s: f64,
    /// The longest a shed refusal made as the request arrives (`screen`) is held before it is answered
    /// (`refusal_hold`); 0 answers at once.
    pub refusal_hold_s: f64,
}

/// A shed refusal's answer held back (`Admission::refusal_hold`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold {
    /// How long the answer is held.
    pub duration: Duration,
    /// The Retry-After to send: the one decided, less the hold, rounded (0 when the hold took all of it).
    pub retry_after: Option<u32>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            limit: LimitConfig::default(),
            shed_medium_at: 0.9,
            shed_low_at: 0.8,
            max_in_flight_records: 50_000.0,
            rate_per_device: 50.0,
            decoded_bytes_per_device: 2.0 * 1024.0 * 1024.0,
            loop_busy_target: 1.0,
            loop_queue_shed_at: [256.0, 32.0, 12.0],
            loop_queue_interval_s: 0.3,
            loop_queue_higher_recent_s: 1.0,
            refusal_hold_s: 1.0,
        }
    }
}

/// The headers the decision reads (each as sent, several lines already joined by commas).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderView<'a> {
    pub content_length: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    pub device_token: Option<&'a [u8]>,
    pub api_key: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub priority: Option<&'a [u8]>,
}

/// A refusal's answer, rendered once: the status, the problem+json body and a `WWW-Authenticate` for 401s.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub status: u16,
    pub body: Arc<[u8]>,
    pub www_authenticate: Option<&'static str>,
}

#[derive(Debug)]
pub enum Decision {
    Admitted {
        permit: Permit,
        device: Option<Arc<str>>,
        priority: Priority,
    },
    Refused {
        refusal: Refusal,
        priority: Priority,
        retry_after: Option<u32>,
        decided_at: f64,
    },
}

/// Readiness as the worker sets it (`set_conditions`).
/// How long `wait_for` holds a message back while the worker is not ready or sheds its priority.
pub const HOLD_S: f64 = 0.05;
const READY: u8 = 0;
const NOT_READY: u8 = 1;
const SPOOL_FAILING: u8 = 2;
const SPOOL_FULL: u8 = 3;

pub struct Admission {
    config: AdmissionConfig,
    keys: Option<Arc<KeyStore>>,
    rates: Option<Arc<RateTable>>,
    decoded_bytes: Option<Arc<RateTable>>,
    limit: Mutex<AdaptiveLimit>,
    epoch: Instant,
    readiness: AtomicU8,
    /// `max(spool fill, loop lag / its threshold)`, as f64 bits.
    pressure: AtomicU64,
    admitted: [AtomicU64; 3],
    refused: [[AtomicU64; 3]; Refusal::ALL.len()],
    rendered: Vec<Rendered>,
    /// `observe_loop`'s shed level, f64 bits: 0 sheds nothing, 1 all low priority, 2 all medium too.
    shed_level: AtomicU64,
    /// The last busy share `observe_loop` was given, f64 bits.
    loop_busy: AtomicU64,
    /// The state of the coin that picks which requests a shed level refuses.
    coin: AtomicU64,
    /// The cost `screen` let in that the loop has not begun yet (`decide_screened`), in `QUEUE_UNITS` per cost.
    loop_queue: AtomicU64,
    /// Per priority, whether the loop's queue stands past its mark (`standing_past_mark`).
    standing: Mutex<[Standing; 3]>,
    /// Per priority, when a request of it last arrived at `screen` (seconds on the admission's clock, f64 bits;
    /// negative infinity: never).
    last_arrival: [AtomicU64; 3],
}

/// Whether the loop's queue stands past a priority's mark, the way CoDel tells a standing queue from a burst: the
/// state turns only once the queue has stayed on the other side of the mark for `loop_queue_interval_s`.
#[derive(Clone, Copy, Debug, Default)]
struct Standing {
    past_mark: bool,
    /// When the queue was last seen crossing to the side the state is not on (None: on the state's side).
    crossed_at: Option<f64>,
}

/// A burst past a priority's loop-queue mark is let through for `loop_queue_interval_s`, but never past this many
/// times the mark: the queue a burst may build in front of the priorities above is bounded too.
pub const LOOP_QUEUE_BURST_FACTOR: f64 = 4.0;

/// Fixed-point units per unit of cost in `Admission::loop_queue` (an atomic add needs an integer).
const QUEUE_UNITS: f64 = 1024.0;

/// How fast the shed level follows the loop's busy share: per second, per unit of busy share over (or under) the
/// target. Busy all the time against a target of 0.85, all low priority is shed within ~0.8 s; once the loop idles,
/// shedding stops within ~0.2 s.
pub const SHED_GAIN: f64 = 8.0;

fn refusal_for(no_room: NoRoom) -> Refusal {
    match no_room {
        NoRoom::Limit => Refusal::Shed,
        NoRoom::Bulk => Refusal::Bulk,
    }
}

fn queue_units(cost: f64) -> u64 {
    (cost * QUEUE_UNITS) as u64
}

/// SplitMix64: a well-mixed 64-bit value from a counter (uniform enough to pick a share of requests; not for secrets).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A JSON string's contents (the details are ASCII; quotes and backslashes escaped).
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn problem(status: u16, slug: &str, detail: &str, errors: &str) -> Arc<[u8]> {
    let title = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let body = format!(
        r#"{{"type":"urn:tidegate:problem:{slug}","title":"{title}","status":{status},"detail":"{}","errors":{errors}}}"#,
        escape(detail)
    );
    Arc::from(body.into_bytes())
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The bodies of every refusal, by `Refusal as usize * 3 + Priority as usize`.
fn render(config: &AdmissionConfig) -> Vec<Rendered> {
    let mut out = Vec::new();
    for refusal in Refusal::ALL {
        for priority in Priority::ALL {
            let p = priority.name();
            let (status, body, www_authenticate) = match refusal {
                Refusal::NotReady => (
                    503,
                    problem(
                        503,
                        "not-ready",
                        "the service is starting or draining (or Kafka is down and ready_requires_kafka is set)",
                        "[]",
                    ),
                    None,
                ),
                Refusal::SpoolFull => (503, problem(503, "spool-full", SPOOL_REFUSED_DETAIL, "[]"), None),
                Refusal::SpoolError => (
                    503,
                    problem(
                        503,
                        "spool-error",
                        "the local spool cannot write right now (disk full or failing); nothing was acknowledged",
                        "[]",
                    ),
                    None,
                ),
                Refusal::InvalidPriority => (
                    400,
                    problem(
                        400,
                        "invalid-priority",
                        "X-Priority must be high, medium or low",
                        r#"[{"path":"header:X-Priority","message":"unknown priority"}]"#,
                    ),
                    None,
                ),
                Refusal::MissingCredential => (
                    401,
                    problem(
                        401,
                        "missing-credential",
                        "send the device key as X-Device-Token, X-API-Key or Authorization: Bearer",
                        "[]",
                    ),
                    Some(r#"Bearer realm="tidegate""#),
                ),
                Refusal::InvalidCredential => (
                    401,
                    problem(401, "invalid-credential", "the device key is unknown or revoked", "[]"),
                    Some(r#"Bearer realm="tidegate", error="invalid_token""#),
                ),
                Refusal::Overloaded => (
                    503,
                    problem(
                        503,
                        "shed",
                        &format!(
                            "overloaded (records awaiting durability, spool fill or loop lag); {p} priority traffic is shed"
                        ),
                        "[]",
                    ),
                    None,
                ),
                Refusal::Shed => (
                    503,
                    problem(
                        503,
                        "shed",
                        &format!("overloaded: {p} priority traffic is shed first; retry after Retry-After"),
                        "[]",
                    ),
                    None,
                ),
                Refusal::RateLimited => (
                    429,
                    problem(
                        429,
                        "rate-limited",
                        &format!(
                            "the device is over its rate of {} requests/s",
                            number(config.rate_per_device)
                        ),
                        "[]",
                    ),
                    None,
                ),
                Refusal::LoopBusy => (
                    503,
                    problem(
                        503,
                        "shed",
                        &format!(
                            "overloaded (this worker's CPU is saturated): {p} priority traffic is shed first; retry after Retry-After"
                        ),
                        "[]",
                    ),
                    None,
                ),
                Refusal::LoopQueue => (
                    503,
                    problem(
                        503,
                        "shed",
                        &format!(
                            "overloaded (requests are waiting for this worker's CPU): {p} priority traffic is shed first; retry after Retry-After"
                        ),
                        "[]",
                    ),
                    None,
                ),
                Refusal::Bulk => (
                    503,
                    problem(
                        503,
                        "shed",
                        &format!(
                            "overloaded (this worker takes only a few large bodies at a time): large {p} priority bodies are shed first; retry after Retry-After"
                        ),
                        "[]",
                    ),
                    None,
                ),
                Refusal::ByteBudget => (
                    429,
                    problem(
                        429,
                        "byte-budget",
                        &format!(
                            "the device is over its budget of {} decompressed bytes/s",
                            number(config.decoded_bytes_per_device)
                        ),
                        "[]",
                    ),
                    None,
                ),
            };
            out.push(Rendered {
                status,
                body,
                www_authenticate,
            });
        }
    }
    out
}

/// Counters and gauges for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub admitted: [u64; 3],
    /// By `Refusal as usize`, then priority.
    pub refused: [[u64; 3]; Refusal::ALL.len()],
    pub limit: f64,
    pub capacity: [f64; 3],
    pub in_flight: f64,
    pub in_flight_by: [f64; 3],
    pub bulk_in_flight_by: [f64; 3],
    /// Large low-priority bodies the bulk lane lets in flight now (medium twice as many).
    pub bulk_places: f64,
    /// High priority's time (the median of its last small requests) against the bulk lane's baseline of it (0:
    /// not judged yet).
    pub high_slowdown: f64,
    /// Times the bulk lane narrowed, and seconds it was narrow, so far.
    pub bulk_narrowings: u64,
    pub bulk_narrow_seconds: f64,
    pub slowdown: f64,
    pub drain_rate: f64,
    pub refusal_cost: f64,
    pub loop_busy: f64,
    pub shed_level: f64,
    /// The cost let in and waiting for the event loop.
    pub loop_queue: f64,
}

impl Admission {
    /// `keys`: None when auth is off. `rates`, `decoded_bytes`: the device buckets (None: unlimited).
    pub fn new(
        config: AdmissionConfig,
        keys: Option<Arc<KeyStore>>,
        rates: Option<Arc<RateTable>>,
        decoded_bytes: Option<Arc<RateTable>>,
    ) -> Admission {
        let epoch = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32;
        Admission {
            rendered: render(&config),
            limit: Mutex::new(AdaptiveLimit::new(config.limit.clone(), 0.0, seed)),
            config,
            keys,
            rates,
            decoded_bytes,
            epoch,
            readiness: AtomicU8::new(NOT_READY),
            pressure: AtomicU64::new(0f64.to_bits()),
            admitted: Default::default(),
            refused: Default::default(),
            shed_level: AtomicU64::new(0f64.to_bits()),
            loop_busy: AtomicU64::new(0f64.to_bits()),
            coin: AtomicU64::new(seed),
            loop_queue: AtomicU64::new(0),
            standing: Mutex::new([Standing::default(); 3]),
            last_arrival: std::array::from_fn(|_| AtomicU64::new(f64::NEG_INFINITY.to_bits())),
        }
    }

    /// The event loop was busy (running callbacks, or ready to and waiting for a CPU or the GIL, rather than
    /// waiting for I/O) `busy` of the last `seconds`. When the CPU is what runs out, requests queue where the
    /// worker cannot see them (in Granian, waiting for the loop; in the kernel), and the loop's busy share is the
    /// signal that rises: an integral controller moves the shed level by `SHED_GAIN * (busy - target) * seconds`,
    /// between 0 and 2. Level `x` <= 1 sheds that share of low priority requests, `1 + x` all low and that share of
    /// medium; high is never shed by it. A refusal costs a fraction of an acceptance (no body is read), so
    /// shedding frees the loop.
    pub fn observe_loop(&self, busy: f64, seconds: f64) {
        // A NaN would stick in the level for good; a target that is not a share turns the shedding off.
        let target = self.config.loop_busy_target;
        if !(busy.is_finite() && seconds.is_finite() && target > 0.0 && target < 1.0) {
            return;
        }
        let busy = busy.clamp(0.0, 1.0);
        let level = f64::from_bits(self.shed_level.load(Ordering::Relaxed));
        let error = busy - target;
        let next = (level + SHED_GAIN * error * seconds.clamp(0.0, 1.0)).clamp(0.0, 2.0);
        self.shed_level.store(next.to_bits(), Ordering::Relaxed);
        self.loop_busy.store(busy.to_bits(), Ordering::Relaxed);
    }

    /// Whether the shed level refuses a request of `priority` (see `observe_loop`).
    fn shed_for_load(&self, priority: Priority) -> bool {
        let level = f64::from_bits(self.shed_level.load(Ordering::Relaxed));
        let share = match priority {
            Priority::High => return false,
            Priority::Medium => level - 1.0,
            Priority::Low => level,
        };
        if share <= 0.0 {
            return false;
        }
        let draw = splitmix64(self.coin.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)) >> 11;
        (draw as f64) < share * (1u64 << 53) as f64
    }

    pub fn keys(&self) -> Option<&KeyStore> {
        self.keys.as_deref()
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdaptiveLimit> {
        self.limit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's state, set whenever it changes: refused with 503 `spool-error` while the spool is failing,
    /// `spool-full` while it is at its quota (each says why better than readiness, which both also take away),
    /// `not-ready` while otherwise not ready (starting, draining); and the pressure that is not per request: spool
    /// fill (1 when full) and event-loop lag against its threshold.
    pub fn set_conditions(&self, ready: bool, spool_failing: bool, spool_full: bool, pressure: f64) {
        let state = if spool_failing {
            SPOOL_FAILING
        } else if spool_full {
            SPOOL_FULL
        } else if ready {
            READY
        } else {
            NOT_READY
        };
        self.readiness.store(state, Ordering::Relaxed);
        self.pressure.store(pressure.to_bits(), Ordering::Relaxed);
    }

    /// `max(records awaiting durability / max_in_flight_records, pressure)`.
    pub fn utilization(&self, in_flight_records: u64) -> f64 {
        let pressure = f64::from_bits(self.pressure.load(Ordering::Relaxed));
        (in_flight_records as f64 / self.config.max_in_flight_records.max(1.0)).max(pressure)
    }

    /// The rendered answer of a refusal at a priority.
    pub fn rendered(&self, refusal: Refusal, priority: Priority) -> &Rendered {
        &self.rendered[refusal as usize * 3 + priority as usize]
    }

    fn refuse(&self, refusal: Refusal, priority: Priority, retry_after: Option<u32>) -> Decision {
        self.refused[refusal as usize][priority as usize].fetch_add(1, Ordering::Relaxed);
        self.lock().refused();
        Decision::Refused {
            refusal,
            priority,
            retry_after,
            decided_at: self.now(),
        }
    }

    /// Decides a request from its headers, at `now_us` (µs since the epoch, for the device buckets), with
    /// `in_flight_records` awaiting durability in the worker and `default_priority` the route's.
    pub fn decide(
        &self,
        headers: &HeaderView<'_>,
        default_priority: Priority,
        in_flight_records: u64,
        now_us: i64,
    ) -> Decision {
        match self.load_checks(headers, default_priority, in_flight_records) {
            Ok(priority) => self.decide_admissible(headers, priority, now_us),
            Err(refused) => refused,
        }
    }

    /// `decide` for a request `screen` let through moments ago: its load checks are not made again (the loop's
    /// shed level is a coin per request: a second toss would shed more than the level says); the limit's permit,
    /// the key and the device's buckets are.
    pub fn decide_screened(&self, headers: &HeaderView<'_>, default_priority: Priority, now_us: i64) -> Decision {
        self.left_queue(headers);
        let priority = headers
            .priority
            .map_or(Some(default_priority), Priority::parse)
            .unwrap_or(Priority::Low);
        self.decide_admissible(headers, priority, now_us)
    }

    /// The load checks of `decide` alone, made as a request arrives, before it waits for the event loop: when the
    /// CPU is what runs out, that wait is where requests queue, and a request shed there neither waits nor costs
    /// the loop anything. Readiness, the priority, utilization, the loop's shed level, the loop's queue, and
    /// whether the limit has room for it (no permit is taken: `decide_screened` takes it). Ok(its priority): let
    /// through, its cost counted in the loop's queue until `decide_screened` (or `left_queue`) takes it out.
    ///
    /// The loop's queue is the cost let through and not yet begun by the loop. It is the wait a request arriving
    /// now has in front of it, known at once (a delay is known only once it has been waited), and it sheds by
    /// priority where the wait is: low is refused once `loop_queue_shed_at[low]` is waiting, medium at its own
    /// (larger) mark, high at the largest. Whatever the load, a high request waits behind at most medium's mark
    /// of newly arrived work, so its latency stays near the unloaded one while the loop is kept busy.
    pub fn screen(
        &self,
        headers: &HeaderView<'_>,
        default_priority: Priority,
        in_flight_records: u64,
    ) -> Result<Priority, Decision> {
        self.screen_at(headers, default_priority, in_flight_records, self.now())
    }

    /// `screen` at `now` (seconds on the admission's clock).
    fn screen_at(
        &self,
        headers: &HeaderView<'_>,
        default_priority: Priority,
        in_flight_records: u64,
        now: f64,
    ) -> Result<Priority, Decision> {
        let priority = self.load_checks(headers, default_priority, in_flight_records)?;
        let cost = request_cost(headers.content_length, headers.content_encoding);
        self.last_arrival[priority as usize].store(now.to_bits(), Ordering::Relaxed);
        let higher_recent = self.higher_recent(priority, now);
        let refusal = if self.standing_past_mark(priority, now, higher_recent) {
            Refusal::LoopQueue
        } else {
            match self.lock().has_room(priority, cost, higher_recent) {
                Ok(()) => {
                    self.loop_queue.fetch_add(queue_units(cost), Ordering::Relaxed);
                    return Ok(priority);
                }
                Err(no_room) => refusal_for(no_room),
            }
        };
        let retry_after = self.lock().retry_after();
        Err(self.refuse(refusal, priority, Some(retry_after)))
    }

    /// Whether, and how long, the shed refusal `screen` made is held before it is answered: None for a refusal
    /// that is not a shed (`Refusal::is_shed`: a client error, readiness) or when holding is off, else between
    /// half and all of `refusal_hold_s`, at most its Retry-After (jitter, so that held clients do not return in
    /// step). The hold is part of the backoff the refusal asks for: the Retry-After to send is what is left of it.
    ///
    /// Why: under CPU saturation every arrival, refused or not, costs the worker a turn of its one Python thread
    /// (Granian hands each request over there), which the high-priority requests then wait behind. A client that
    /// honours Retry-After stays away for a second or more after a refusal; one that ignores it sends again as
    /// soon as the answer comes, on the same connection. Holding the answer holds that client too: each of its
    /// connections then costs one arrival per hold instead of one per round trip, whatever it does with the
    /// Retry-After, and a client that honours it waits no longer in all than it was asked to.
    pub fn refusal_hold(&self, refusal: Refusal, retry_after: Option<u32>) -> Option<Hold> {
        let longest = match retry_after {
            Some(seconds) => self.config.refusal_hold_s.min(f64::from(seconds)),
            None => self.config.refusal_hold_s,
        };
        if !refusal.is_shed() || longest <= 0.0 || longest.is_nan() {
            return None;
        }
        let held = longest * (0.5 + 0.5 * self.lock().uniform());
        Some(Hold {
            duration: Duration::from_secs_f64(held),
            retry_after: retry_after.map(|seconds| (f64::from(seconds) - held).round().max(0.0) as u32),
        })
    }

    /// Whether a request of `priority` arriving at `now` finds the loop's queue past the priority's mark, and
    /// standing there (past it for `loop_queue_interval_s`, not a burst). Every clients' pause a refusal causes is
    /// a second or more of their requests (the smallest Retry-After), so a burst of a few milliseconds must not
    /// refuse anyone; a queue that stands is an overload. Medium and low are shed only while a higher priority is
    /// arriving (`loop_queue_higher_recent_s`): with 256 low-priority clients alone in a closed loop, shedding them
    /// by the queue halved what was accepted (their refusals and retries took the CPU) and protected no one
    /// (`higher_recent`, from `higher_recent`).
    fn standing_past_mark(&self, priority: Priority, now: f64, higher_recent: bool) -> bool {
        let queued = self.loop_queue.load(Ordering::Relaxed) as f64 / QUEUE_UNITS;
        let past_mark = queued >= self.config.loop_queue_shed_at[priority as usize];
        let mut standing = self.standing.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut standing[priority as usize];
        if past_mark == state.past_mark {
            state.crossed_at = None;
        } else {
            let crossed_at = *state.crossed_at.get_or_insert(now);
            if now - crossed_at >= self.config.loop_queue_interval_s {
                *state = Standing {
                    past_mark,
                    crossed_at: None,
                };
            }
        }
        let standing =
            state.past_mark || queued >= LOOP_QUEUE_BURST_FACTOR * self.config.loop_queue_shed_at[priority as usize];
        past_mark && standing && (priority == Priority::High || higher_recent)
    }

    /// Whether a request of a priority above `priority` arrived at `screen` within `loop_queue_higher_recent_s`
    /// of `now`: shedding `priority` (by the loop's queue, by the bulk lane) makes room for them; with none of
    /// them coming it helps no one.
    fn higher_recent(&self, priority: Priority, now: f64) -> bool {
        Priority::ALL[..priority as usize].iter().any(|higher| {
            now - f64::from_bits(self.last_arrival[*higher as usize].load(Ordering::Relaxed))
                <= self.config.loop_queue_higher_recent_s
        })
    }

    /// A request `screen` let through has left the loop's queue: begun by the loop (`decide_screened` calls this),
    /// or never to reach it (it could not be queued).
    pub fn left_queue(&self, headers: &HeaderView<'_>) {
        let units = queue_units(request_cost(headers.content_length, headers.content_encoding));
        // Never below zero, whatever the order of the threads' updates.
        let _ = self
            .loop_queue
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(units)));
    }

    /// Readiness, the priority, utilization and the loop's shed level: the request's priority, or its refusal.
    fn load_checks(
        &self,
        headers: &HeaderView<'_>,
        default_priority: Priority,
        in_flight_records: u64,
    ) -> Result<Priority, Decision> {
        let parsed = headers.priority.map_or(Some(default_priority), Priority::parse);
        let priority = parsed.unwrap_or(Priority::Low);
        match self.readiness.load(Ordering::Relaxed) {
            READY => {}
            SPOOL_FAILING => return Err(self.refuse(Refusal::SpoolError, priority, Some(5))),
            SPOOL_FULL => return Err(self.refuse(Refusal::SpoolFull, priority, Some(5))),
            _ => return Err(self.refuse(Refusal::NotReady, priority, Some(5))),
        }
        if parsed.is_none() {
            return Err(self.refuse(Refusal::InvalidPriority, priority, None));
        }
        let utilization = self.utilization(in_flight_records);
        if (utilization >= self.config.shed_medium_at && priority != Priority::High)
            || (utilization >= self.config.shed_low_at && priority == Priority::Low)
        {
            return Err(self.refuse(Refusal::Overloaded, priority, Some(1)));
        }
        if self.shed_for_load(priority) {
            let retry_after = self.lock().retry_after();
            return Err(self.refuse(Refusal::LoopBusy, priority, Some(retry_after)));
        }
        Ok(priority)
    }

    /// The rest of `decide` for a request the load checks let through: the limit's permit, the key, the buckets.
    fn decide_admissible(&self, headers: &HeaderView<'_>, priority: Priority, now_us: i64) -> Decision {
        let cost = request_cost(headers.content_length, headers.content_encoding);
        let permit = {
            let mut limit = self.lock();
            let now = self.now();
            match limit.try_acquire(priority, cost, now, self.higher_recent(priority, now)) {
                Ok(permit) => permit,
                Err(no_room) => {
                    let retry_after = limit.retry_after();
                    drop(limit);
                    return self.refuse(refusal_for(no_room), priority, Some(retry_after));
                }
            }
        };
        // The key after the limit: a shed costs no hash. A request refused by its key gives its permit back.
        let device = match &self.keys {
            None => None,
            Some(keys) => {
                let found = presented_key(headers.device_token, headers.api_key, headers.authorization)
                    .map(|key| keys.device_for(key));
                match found {
                    Some(Some(device)) => Some(device),
                    refused => {
                        self.lock().cancel(permit);
                        let refusal = if refused.is_none() {
                            Refusal::MissingCredential
                        } else {
                            Refusal::InvalidCredential
                        };
                        return self.refuse(refusal, priority, None);
                    }
                }
            }
        };
        if let Some(device_id) = &device {
            let id = RateTable::device_id(device_id);
            for (table, refusal) in [
                (&self.rates, Refusal::RateLimited),
                (&self.decoded_bytes, Refusal::ByteBudget),
            ] {
                let Some(table) = table else { continue };
                // A table that cannot be locked (its file damaged) does not refuse traffic.
                let wait = if refusal == Refusal::RateLimited {
                    table.take(&id, now_us)
                } else {
                    table.wait(&id, now_us)
                };
                let wait = wait.unwrap_or(0.0);
                if wait > 0.0 {
                    self.lock().cancel(permit);
                    return self.refuse(refusal, priority, Some(wait.ceil().max(1.0) as u32));
                }
            }
        }
        self.admitted[priority as usize].fetch_add(1, Ordering::Relaxed);
        Decision::Admitted {
            permit,
            device,
            priority,
        }
    }

    /// For a source that holds what it cannot take yet instead of refusing it (MQTT: an unacknowledged message
    /// slows the subscription): 0 when a message of `device_id` at `priority` may be taken now (the device's token
    /// taken), else the seconds to wait before asking again. The same readiness, utilization and device buckets as
    /// `decide`; no limit permit (the source bounds its own window) and no key (the topic names the device).
    pub fn wait_for(&self, device_id: &str, priority: Priority, in_flight_records: u64, now_us: i64) -> f64 {
        let utilization = self.utilization(in_flight_records);
        if self.readiness.load(Ordering::Relaxed) != READY
            || (utilization >= self.config.shed_medium_at && priority != Priority::High)
            || (utilization >= self.config.shed_low_at && priority == Priority::Low)
        {
            return HOLD_S;
        }
        let id = RateTable::device_id(device_id);
        // The byte budget is post-paid (waiting takes nothing); the token is taken last, only when it is let in.
        // A table that cannot be locked (its file damaged) holds nothing back, as in `decide`.
        if let Some(bytes) = &self.decoded_bytes {
            let wait = bytes.wait(&id, now_us).unwrap_or(0.0);
            if wait > 0.0 {
                return wait;
            }
        }
        self.rates
            .as_ref()
            .map_or(0.0, |rates| rates.take(&id, now_us).unwrap_or(0.0))
    }

    /// An admitted request was answered: its time counts in the limit.
    pub fn release(&self, permit: Permit) {
        let now = self.now();
        self.lock().release(permit, now);
    }

    /// A refused request was answered (`decided_at` from its decision): the worker's part of a refusal's cost.
    pub fn refusal_answered(&self, decided_at: f64) {
        let now = self.now();
        self.lock().refusal_answered(now - decided_at, now);
    }

    pub fn snapshot(&self) -> Snapshot {
        let limit = self.lock();
        let mut snapshot = Snapshot {
            limit: limit.limit,
            capacity: Priority::ALL.map(|p| limit.capacity(p)),
            in_flight: limit.in_flight,
            in_flight_by: limit.in_flight_by,
            bulk_in_flight_by: limit.bulk_in_flight_by,
            bulk_places: limit.bulk_places(),
            high_slowdown: limit.bulk_lane.slowdown(),
            bulk_narrowings: limit.bulk_lane.narrowings,
            bulk_narrow_seconds: limit.bulk_lane.narrow_seconds,
            slowdown: limit.slowdown,
            drain_rate: limit.drain_rate,
            refusal_cost: limit.refusal_cost,
            loop_busy: f64::from_bits(self.loop_busy.load(Ordering::Relaxed)),
            shed_level: f64::from_bits(self.shed_level.load(Ordering::Relaxed)),
            loop_queue: self.loop_queue.load(Ordering::Relaxed) as f64 / QUEUE_UNITS,
            ..Snapshot::default()
        };
        drop(limit);
        for (i, counter) in self.admitted.iter().enumerate() {
            snapshot.admitted[i] = counter.load(Ordering::Relaxed);
        }
        for (r, row) in self.refused.iter().enumerate() {
            for (p, counter) in row.iter().enumerate() {
                snapshot.refused[r][p] = counter.load(Ordering::Relaxed);
            }
        }
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// An admission without keys or device tables.
    fn without_tables(config: AdmissionConfig) -> Admission {
        Admission::new(config, None, None, None)
    }

    fn fixed(limit: f64) -> AdmissionConfig {
        let limit = LimitConfig {
            initial: limit,
            minimum: limit,
            maximum: limit,
            ..LimitConfig::default()
        };
        AdmissionConfig {
            limit,
            ..AdmissionConfig::default()
        }
    }

    fn refusal(decision: &Decision) -> Option<Refusal> {
        match decision {
            Decision::Refused { refusal, .. } => Some(*refusal),
            Decision::Admitted { .. } => None,
        }
    }

    fn headers<'a>(priority: &'a [u8], length: &'a [u8]) -> HeaderView<'a> {
        HeaderView {
            priority: Some(priority),
            content_length: Some(length),
            ..HeaderView::default()
        }
    }

    #[test]
    fn only_sheds_are_held_between_half_and_all_of_the_hold_never_past_retry_after_which_is_what_is_left() {
        let admission = without_tables(AdmissionConfig {
            refusal_hold_s: 2.0,
            ..AdmissionConfig::default()
        });
        for refusal in Refusal::ALL {
            let hold = admission.refusal_hold(refusal, Some(5));
            assert_eq!(hold.is_some(), refusal.is_shed(), "{refusal:?}");
        }
        let holds: Vec<Hold> = (0..200)
            .filter_map(|_| admission.refusal_hold(Refusal::LoopQueue, Some(5)))
            .collect();
        for hold in &holds {
            let held = hold.duration.as_secs_f64();
            assert!((1.0..=2.0).contains(&held), "{hold:?}");
            assert_eq!(hold.retry_after, Some((5.0 - held).round() as u32));
        }
        assert!(holds.iter().any(|h| h.retry_after == Some(4)) && holds.iter().any(|h| h.retry_after == Some(3)));
        let capped = admission.refusal_hold(Refusal::Shed, Some(1)).unwrap();
        assert!((0.5..=1.0).contains(&capped.duration.as_secs_f64()));
        assert!(capped.retry_after <= Some(1));
        let no_retry_after = admission.refusal_hold(Refusal::Bulk, None).unwrap();
        assert_eq!(no_retry_after.retry_after, None);
        let off = without_tables(AdmissionConfig {
            refusal_hold_s: 0.0,
            ..AdmissionConfig::default()
        });
        assert_eq!(off.refusal_hold(Refusal::LoopQueue, Some(5)), None);
    }

    #[test]
    fn not_ready_until_told_and_bad_priorities_refused() {
        let admission = without_tables(fixed(8.0));
        let d = admission.decide(&headers(b"high", b"100"), Priority::Low, 0, 0);
        assert_eq!(refusal(&d), Some(Refusal::NotReady));
        admission.set_conditions(true, false, false, 0.0);
        assert_eq!(
            refusal(&admission.decide(&headers(b"urgent", b"1"), Priority::Low, 0, 0)),
            Some(Refusal::InvalidPriority)
        );
        assert_eq!(
            refusal(&admission.decide(&HeaderView::default(), Priority::Medium, 0, 0)),
            None
        );
        admission.set_conditions(true, true, false, 0.0);
        assert_eq!(
            refusal(&admission.decide(&headers(b"high", b"1"), Priority::Low, 0, 0)),
            Some(Refusal::SpoolError)
        );
        admission.set_conditions(false, false, true, 0.0);
        assert_eq!(
            refusal(&admission.decide(&headers(b"high", b"1"), Priority::Low, 0, 0)),
            Some(Refusal::SpoolFull)
        );
        let full = admission.rendered(Refusal::SpoolFull, Priority::High);
        assert!(
            std::str::from_utf8(&full.body)
                .unwrap()
                .starts_with(r#"{"type":"urn:tidegate:problem:spool-full","#)
        );
        admission.set_conditions(false, false, false, 0.0);
        assert_eq!(
            refusal(&admission.decide(&headers(b"high", b"1"), Priority::Low, 0, 0)),
            Some(Refusal::NotReady)
        );
        let rendered = admission.rendered(Refusal::SpoolError, Priority::High);
        assert_eq!(rendered.status, 503);
        let body = std::str::from_utf8(&rendered.body).unwrap();
        assert!(
            body.starts_with(
                r#"{"type":"urn:tidegate:problem:spool-error","title":"Service Unavailable","status":503,"#
            )
        );
    }

    #[test]
    fn a_busy_loop_sheds_low_then_medium_in_proportion_and_never_high() {
        let config = AdmissionConfig {
            loop_busy_target: 0.85,
            ..fixed(1e9)
        };
        let admission = without_tables(config);
        admission.set_conditions(true, false, false, 0.0);
        let refused = |priority: &[u8]| {
            (0..2000)
                .filter(|_| {
                    let d = admission.decide(&headers(priority, b"100"), Priority::Low, 0, 0);
                    if let Decision::Admitted { permit, .. } = &d {
                        admission.release(*permit);
                    }
                    refusal(&d) == Some(Refusal::LoopBusy)
                })
                .count()
        };
        // Below the target nothing is shed, however long.
        admission.observe_loop(0.5, 10.0);
        assert_eq!((refused(b"low"), refused(b"medium")), (0, 0));
        // Busy 0.85 + 1/16 for one second: the level rises by 8 * (1/16) = 0.5: half of low, no medium.
        admission.observe_loop(0.85 + 1.0 / 16.0, 1.0);
        let low = refused(b"low");
        assert!((800..1200).contains(&low), "about half of low: {low}");
        assert_eq!(refused(b"medium"), 0);
        // Further: all of low and about half of medium; high never.
        admission.observe_loop(0.85 + 1.0 / 8.0, 1.0);
        assert_eq!(refused(b"low"), 2000);
        let medium = refused(b"medium");
        assert!((800..1200).contains(&medium), "about half of medium: {medium}");
        admission.observe_loop(1.0, 10.0);
        assert_eq!((refused(b"medium"), refused(b"high")), (2000, 0));
        assert_eq!(admission.snapshot().shed_level, 2.0);
        assert_eq!(
            admission.snapshot().refused[Refusal::LoopBusy as usize][Priority::High as usize],
            0
        );
        // The loop idles: shedding stops.
        admission.observe_loop(0.1, 0.5);
        assert_eq!((refused(b"low"), refused(b"medium")), (0, 0));
        let rendered = admission.rendered(Refusal::LoopBusy, Priority::Low);
        assert_eq!(rendered.status, 503);
        assert!(
            std::str::from_utf8(&rendered.body)
                .unwrap()
                .contains("CPU is saturated")
        );
    }

    #[test]
    fn screening_refuses_on_the_load_checks_and_takes_nothing_from_what_it_lets_through() {
        let config = AdmissionConfig {
            loop_busy_target: 0.85,
            // The loop's queue has its own test.
            loop_queue_shed_at: [f64::INFINITY; 3],
            ..fixed(8.0)
        };
        let admission = without_tables(config);
        // Not ready, then a priority that is none: refused as they arrive.
        let screened = |priority: &[u8]| {
            admission
                .screen(&headers(priority, b"100"), Priority::Low, 0)
                .err()
                .as_ref()
                .and_then(refusal)
        };
        assert_eq!(screened(b"high"), Some(Refusal::NotReady));
        admission.set_conditions(true, false, false, 0.0);
        assert_eq!(screened(b"urgent"), Some(Refusal::InvalidPriority));
        // Let through: no permit taken, so however many are screened, the limit is untouched.
        for _ in 0..100 {
            assert_eq!(screened(b"low"), None);
        }
        // What is let through goes to the loop with its priority (the loop serves high first).
        assert!(matches!(
            admission.screen(&headers(b"high", b"100"), Priority::Low, 0),
            Ok(Priority::High)
        ));
        assert_eq!(admission.snapshot().in_flight, 0.0);
        // Low's part of the limit (half of 8) filled by three (each costs a little over 1): screened out; high still
        // let through.
        let permits: Vec<Permit> = (0..3)
            .map(
                |_| match admission.decide_screened(&headers(b"low", b"100"), Priority::Low, 0) {
                    Decision::Admitted { permit, .. } => permit,
                    refused => panic!("{:?}", refusal(&refused)),
                },
            )
            .collect();
        assert_eq!(screened(b"low"), Some(Refusal::Shed));
        assert_eq!(screened(b"high"), None);
        for permit in permits {
            admission.release(permit);
        }
        // The loop fully busy: every low request is shed on arrival; one let through is not tossed for again.
        admission.observe_loop(1.0, 10.0);
        assert_eq!(screened(b"low"), Some(Refusal::LoopBusy));
        assert!(matches!(
            admission.decide_screened(&headers(b"low", b"100"), Priority::Low, 0),
            Decision::Admitted { .. }
        ));
        let refused = admission.snapshot().refused;
        assert_eq!(refused[Refusal::LoopBusy as usize][Priority::Low as usize], 1);
        assert_eq!(refused[Refusal::Shed as usize][Priority::Low as usize], 1);
    }

    #[test]
    fn the_loop_queue_sheds_low_then_medium_then_high_as_requests_arrive() {
        let config = AdmissionConfig {
            loop_queue_shed_at: [6.0, 4.0, 2.0],
            loop_queue_interval_s: 0.0,
            ..fixed(1e9)
        };
        let admission = without_tables(config);
        admission.set_conditions(true, false, false, 0.0);
        // Each request costs 1 + 100 / 4096.
        let screened = |priority: &[u8]| {
            admission
                .screen(&headers(priority, b"100"), Priority::Low, 0)
                .err()
                .as_ref()
                .and_then(refusal)
        };
        let queued = || admission.snapshot().loop_queue;
        // Low alone is not shed by the queue: there is no one to make room for.
        for _ in 0..3 {
            assert_eq!(screened(b"low"), None);
        }
        for _ in 0..3 {
            admission.left_queue(&headers(b"low", b"100"));
        }
        assert_eq!(screened(b"high"), None);
        assert_eq!(screened(b"low"), None);
        assert_eq!(screened(b"low"), Some(Refusal::LoopQueue));
        assert_eq!((screened(b"medium"), screened(b"medium")), (None, None));
        assert_eq!(screened(b"medium"), Some(Refusal::LoopQueue));
        assert_eq!(screened(b"low"), Some(Refusal::LoopQueue));
        assert_eq!((screened(b"high"), screened(b"high")), (None, None));
        assert_eq!(screened(b"high"), Some(Refusal::LoopQueue));
        assert_eq!(screened(b"high"), Some(Refusal::LoopQueue));
        assert!((queued() - 6.0 * (1.0 + 100.0 / 4096.0)).abs() < 1e-3, "{}", queued());
        // A shed on arrival says when to come back.
        let shed = admission.screen(&headers(b"low", b"100"), Priority::Low, 0);
        assert!(matches!(
            shed,
            Err(Decision::Refused {
                retry_after: Some(1..=30),
                ..
            })
        ));
        // The loop begins them: each leaves the queue, and low is let in again.
        for _ in 0..6 {
            let decision = admission.decide_screened(&headers(b"low", b"100"), Priority::Low, 0);
            assert!(matches!(decision, Decision::Admitted { .. }));
        }
        assert_eq!(queued(), 0.0);
        assert_eq!(screened(b"low"), None);
        // One that could not be handed to the loop leaves it too; the queue never goes below zero.
        admission.left_queue(&headers(b"low", b"100"));
        admission.left_queue(&headers(b"low", b"100"));
        assert_eq!(queued(), 0.0);
        let refused = admission.snapshot().refused[Refusal::LoopQueue as usize];
        assert_eq!(refused, [2, 1, 3]);
        let rendered = admission.rendered(Refusal::LoopQueue, Priority::Medium);
        assert_eq!(rendered.status, 503);
        assert!(
            std::str::from_utf8(&rendered.body)
                .unwrap()
                .contains("medium priority traffic is shed first")
        );
    }

    #[test]
    fn the_refusals_that_shed_are_those_by_load_and_priority() {
        let shed: Vec<&str> = Refusal::ALL
            .into_iter()
            .filter(|r| r.is_shed())
            .map(Refusal::reason)
            .collect();
        assert_eq!(shed, ["utilization", "limit", "loop_busy", "loop_queue", "bulk"]);
    }

    #[test]
    fn the_bulk_lane_holds_low_only_while_a_higher_priority_is_arriving() {
        let admission = without_tables(fixed(4096.0));
        admission.set_conditions(true, false, false, 0.0);
        let big_low = headers(b"low", b"300000");
        let decided = |h: &HeaderView<'_>| refusal(&admission.decide(h, Priority::Low, 0, 0));
        let high = headers(b"high", b"100");
        let arrives = |h: &HeaderView<'_>, at: f64| {
            assert!(admission.screen_at(h, Priority::Low, 0, at).is_ok());
            admission.left_queue(h);
        };
        // A high request 10 s ago, none since: three large low bodies are taken (low has 2 places, but with no
        // higher priority coming a refusal helps no one).
        arrives(&high, admission.now() - 10.0);
        assert_eq!([decided(&big_low), decided(&big_low), decided(&big_low)], [None; 3]);
        assert_eq!(admission.snapshot().bulk_in_flight_by, [0.0, 0.0, 3.0]);
        // High arriving now: the lane holds low (3 in flight, past its 2), not medium (which counts medium and
        // high), nor a small low request.
        arrives(&high, admission.now());
        assert_eq!(decided(&big_low), Some(Refusal::Bulk));
        assert_eq!(decided(&headers(b"medium", b"300000")), None);
        assert_eq!(decided(&headers(b"low", b"100")), None);
        assert_eq!(admission.snapshot().refused[Refusal::Bulk as usize], [0, 0, 1]);
    }

    #[test]
    fn a_burst_past_the_mark_is_let_through_and_a_standing_queue_is_shed() {
        let config = AdmissionConfig {
            loop_queue_shed_at: [1e9, 1e9, 2.0],
            loop_queue_interval_s: 0.1,
            ..fixed(1e9)
        };
        let admission = without_tables(config);
        admission.set_conditions(true, false, false, 0.0);
        let low = headers(b"low", b"100");
        let screened = |now: f64| {
            admission
                .screen_at(&low, Priority::Low, 0, now)
                .err()
                .as_ref()
                .and_then(refusal)
        };
        let begun = || admission.left_queue(&low);
        // A medium request arrived (within `loop_queue_higher_recent_s` of what follows): low may be shed.
        let medium = headers(b"medium", b"100");
        assert!(admission.screen_at(&medium, Priority::Low, 0, 0.0).is_ok());
        admission.left_queue(&medium);
        // Past the mark (3 waiting) for less than the interval: a burst, let through.
        for now in [0.0, 0.001, 0.002, 0.05, 0.099] {
            assert_eq!(screened(now), None, "at {now}");
        }
        // Never past 4 times the mark (8), burst or not.
        assert_eq!((screened(0.0991), screened(0.0992)), (None, None));
        assert_eq!(screened(0.0993), None);
        assert_eq!(screened(0.0994), Some(Refusal::LoopQueue));
        // Back under the mark at 0.1, past it again from 0.2: the interval starts again.
        for _ in 0..8 {
            begun();
        }
        assert_eq!((screened(0.1), screened(0.15)), (None, None));
        assert_eq!((screened(0.2), screened(0.299)), (None, None));
        // Past it for the whole interval (and a little: 0.3 - 0.2 < 0.1 in binary): shed, for as long as it stays
        // past the mark.
        assert_eq!(screened(0.31), Some(Refusal::LoopQueue));
        assert_eq!(screened(0.35), Some(Refusal::LoopQueue));
        // A short dip under the mark lets a request in and does not end the shedding.
        for _ in 0..3 {
            begun();
        }
        assert_eq!(screened(0.36), None);
        assert_eq!(screened(0.37), Some(Refusal::LoopQueue));
        // Under the mark for the interval: shedding ends, and a new crossing is a burst again.
        for _ in 0..3 {
            begun();
        }
        assert_eq!(screened(0.4), None);
        assert_eq!(screened(0.51), None);
        assert_eq!((screened(0.52), screened(0.53)), (None, None));
        assert_eq!(screened(0.54), None);
        // Standing past the mark again: shed while the medium request is recent (1 s), not after.
        assert_eq!(screened(0.7), Some(Refusal::LoopQueue));
        assert_eq!(screened(1.1), None);
    }

    #[test]
    fn under_a_low_flood_low_is_shed_and_high_admitted_and_counted() {
        let admission = without_tables(fixed(8.0));
        admission.set_conditions(true, false, false, 0.0);
        let mut held = Vec::new();
        let mut shed = 0;
        for _ in 0..20 {
            match admission.decide(&headers(b"low", b"4096"), Priority::Low, 0, 0) {
                Decision::Admitted { permit, .. } => held.push(permit),
                Decision::Refused {
                    refusal, retry_after, ..
                } => {
                    assert_eq!(refusal, Refusal::Shed);
                    assert!((1..=30).contains(&retry_after.unwrap()));
                    shed += 1;
                }
            }
        }
        assert_eq!(held.len(), 2, "low fills half the limit (two requests of cost 2)");
        for _ in 0..2 {
            let d = admission.decide(&headers(b"high", b"200"), Priority::Low, 0, 0);
            assert!(matches!(
                d,
                Decision::Admitted {
                    priority: Priority::High,
                    ..
                }
            ));
        }
        let snapshot = admission.snapshot();
        assert_eq!(snapshot.refused[Refusal::Shed as usize], [0, 0, shed]);
        assert_eq!(snapshot.admitted, [2, 0, 2]);
        assert_eq!(snapshot.limit, 8.0);
        assert_eq!(snapshot.capacity, [8.0, 6.4, 4.0]);
        for permit in held {
            admission.release(permit);
        }
        assert!(admission.snapshot().in_flight < 3.0);
    }

    #[test]
    fn utilization_sheds_low_then_medium() {
        let admission = without_tables(AdmissionConfig {
            max_in_flight_records: 10.0,
            ..AdmissionConfig::default()
        });
        admission.set_conditions(true, false, false, 0.0);
        let at = |records: u64, p: &[u8]| refusal(&admission.decide(&headers(p, b"10"), Priority::Low, records, 0));
        assert_eq!(at(8, b"low"), Some(Refusal::Overloaded));
        assert_eq!(at(8, b"medium"), None);
        assert_eq!(at(9, b"medium"), Some(Refusal::Overloaded));
        assert_eq!(at(9, b"high"), None);
        admission.set_conditions(true, false, false, 0.95); // spool nearly full
        assert_eq!(at(0, b"medium"), Some(Refusal::Overloaded));
    }

    #[test]
    fn a_held_source_waits_where_a_request_would_be_refused() {
        let dir = crate::test_dir("wait-for");
        let rates = Arc::new(RateTable::open(Some(&dir.path().join("rates.tbl")), 64, 1.0, 2.0).unwrap());
        let admission = Admission::new(
            AdmissionConfig {
                max_in_flight_records: 10.0,
                ..AdmissionConfig::default()
            },
            None,
            Some(rates),
            None,
        );
        assert_eq!(
            admission.wait_for("dev-1", Priority::High, 0, 0),
            HOLD_S,
            "not ready yet"
        );
        admission.set_conditions(true, false, false, 0.0);
        assert_eq!(
            admission.wait_for("dev-1", Priority::Low, 8, 0),
            HOLD_S,
            "low is held first"
        );
        assert_eq!(admission.wait_for("dev-1", Priority::High, 0, 0), 0.0);
        assert_eq!(
            admission.wait_for("dev-1", Priority::High, 0, 0),
            0.0,
            "the burst of two"
        );
        let wait = admission.wait_for("dev-1", Priority::High, 0, 0);
        assert!(wait > 0.0 && wait <= 1.0, "the third waits for its token: {wait}");
        assert_eq!(admission.wait_for("dev-2", Priority::High, 0, 0), 0.0, "per device");
    }

    #[test]
    fn keys_and_device_buckets() {
        let dir = crate::test_dir("admission");
        let path = dir.path().join("keys.json");
        let digest: String = super::super::keys::sha256(b"pw")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            &path,
            format!(r#"{{"keys":[{{"key_id":"k1","device_id":"dev-1","secret_sha256":"{digest}"}}]}}"#),
        )
        .unwrap();
        let keys = KeyStore::open(Path::new(&path), Duration::from_millis(500));
        let rates = Arc::new(RateTable::open(None, 64, 1.0, 2.0).unwrap());
        let admission = Admission::new(AdmissionConfig::default(), Some(Arc::new(keys)), Some(rates), None);
        admission.set_conditions(true, false, false, 0.0);
        let none = HeaderView::default();
        assert_eq!(
            refusal(&admission.decide(&none, Priority::Low, 0, 0)),
            Some(Refusal::MissingCredential)
        );
        let wrong = HeaderView {
            device_token: Some(b"tg_k1_px"),
            ..none
        };
        assert_eq!(
            refusal(&admission.decide(&wrong, Priority::Low, 0, 0)),
            Some(Refusal::InvalidCredential)
        );
        let rendered = admission.rendered(Refusal::InvalidCredential, Priority::Low);
        assert_eq!((rendered.status, rendered.www_authenticate.is_some()), (401, true));
        let good = HeaderView {
            authorization: Some(b"Bearer tg_k1_pw"),
            ..none
        };
        let now = 1_000_000_000_000;
        for _ in 0..2 {
            match admission.decide(&good, Priority::Low, 0, now) {
                Decision::Admitted { device, permit, .. } => {
                    assert_eq!(device.as_deref(), Some("dev-1"));
                    admission.release(permit);
                }
                other => panic!("{other:?}"),
            }
        }
        match admission.decide(&good, Priority::Low, 0, now) {
            Decision::Refused {
                refusal: Refusal::RateLimited,
                retry_after,
                ..
            } => assert_eq!(retry_after, Some(1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            admission.snapshot().in_flight,
            0.0,
            "a request refused by its rate gives its permit back"
        );
        let body = std::str::from_utf8(&admission.rendered(Refusal::RateLimited, Priority::Low).body)
            .unwrap()
            .to_owned();
        assert!(body.contains("over its rate of 50 requests/s"), "{body}");
    }
}
