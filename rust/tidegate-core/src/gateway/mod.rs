//! The gateway: what is decided per request, natively, in two calls. [`admission`] is the header phase
//! (readiness, priority, the adaptive limit, keys, device buckets), decided before the body is read; the accept
//! path takes the body, from the raw bytes to the rendered answer.
//!
//! [`Gateway::accept`] validates a body ([`crate::Validator`]), checks that its records name the authenticated
//! device, quarantines what it refuses ([`crate::contract::quarantine`]), claims its idempotency keys and event ids in the
//! dedup window shared by the host's workers ([`crate::state::table::SharedWindow`]), charges the device's decoded
//! bytes, appends the records (and, with the archive, the duplicate occurrences) to the spool, and renders the
//! answer: status, headers and body bytes, problem+json included. It returns the answer and the sequence the
//! caller awaits (the spool's group commit) before sending it.
//!
//! What a request changes beyond the spool waits for its durability: [`Gateway::settle`], called with each
//! commit's outcome before any waiter is woken, commits the claims of the requests it made durable (from then on
//! duplicates for every worker), records their devices as heard and adds their counts to [`Counters`]; after a
//! failed commit it releases the claims of every request still waiting, before any retry can run, so a retry is
//! never answered `duplicate` of a record that was not made durable. A request with nothing to write (every
//! record a repeat) waits for everything appended before it, and fails with it.
//!
//! A worker may have two spools, its lanes ([`Lane`]): high priority's records go to a spool of their own, with
//! its own group commit, so that a high-priority acknowledgement waits for its own small commits and never for
//! the large low-priority bodies appended before it (the main spool's commit carries them). A request waits for
//! its own lane; one that repeats records or keys already claimed waits for every lane (what it repeats may
//! still be waiting for its commit in the other), and so does one with nothing to write.

pub mod accept;
pub mod admission;
pub mod answer;
pub mod keys;
pub mod limit;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::canonical::id::Id;
use crate::contract::validator::Validator;
use crate::spool::{Spool, SpoolError};
use crate::state::lastseen::LastSeenTable;
use crate::state::table::{Claimed, RateTable, SharedWindow};

pub use accept::{Answer, Body, Source};
pub use admission::{Admission, AdmissionConfig, Decision, HeaderView, Hold, Refusal};
pub use answer::Problem;
pub use keys::KeyStore;
pub use limit::{BULK_BODY_BYTES, LimitConfig, Permit, Priority, declared_length};

/// What a route's bodies hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Readings (one, or a sequence): answered per record.
    Telemetry,
    /// Seed 001's batch object: answered with a summary.
    Batch,
    /// Seed 004's events: statuses in capitals.
    Event,
}

/// An ingest route: its name (in idempotency scopes), what it takes and its validator.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub kind: RouteKind,
    pub validator: Validator,
}

impl Route {
    /// The archive's `event_type` partition of the route's records (`telemetry/v1` -> `telemetry`).
    pub fn event_type(&self) -> &str {
        let name = self.validator.contract().name.as_str();
        match name.split('/').next() {
            Some(head) if !head.is_empty() => head,
            _ => "unknown",
        }
    }
}

/// The gateway's settings (from the service's configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Spool duplicate occurrences (on `duplicates_topic`) and answer each record's `archive_key`.
    pub archive: bool,
    pub duplicates_topic: String,
    /// Keep what is refused on `dead_letter_topic`.
    pub quarantine: bool,
    pub dead_letter_topic: String,
    pub max_record_bytes: usize,
    /// What an undecodable compressed body is charged (what decompressing it cost is not known).
    pub max_body_bytes: usize,
    pub dedup_ttl_ms: i64,
    pub key_ttl_ms: i64,
}

/// The tables the gateway shares with the host's other workers.
pub struct Tables {
    pub dedup: Arc<SharedWindow>,
    /// Post-paid buckets of decompressed bytes per device.
    pub decoded_bytes: Arc<RateTable>,
    /// Bytes each device may have quarantined.
    pub quarantine_budget: Arc<RateTable>,
    pub devices: Arc<LastSeenTable>,
}

/// Labels of [`Counters::records`]: outcome, then priority.
pub const OUTCOMES: [&str; 4] = ["accepted", "duplicate", "rejected", "dry_run"];
pub const PRIORITIES: [&str; 3] = ["high", "medium", "low"];
/// Labels of [`Counters::quarantined`].
pub const STAGES: [&str; 4] = ["decode", "contract", "auth", "route"];
/// Upper bounds of the ingest lag histogram's buckets, in ms (then +Inf).
pub const LAG_BOUNDS: [f64; 8] = [
    100.0,
    1_000.0,
    10_000.0,
    60_000.0,
    600_000.0,
    3_600_000.0,
    86_400_000.0,
    604_800_000.0,
];

/// Counts kept natively and rendered by `/metrics`: records by outcome and priority, quarantined records by
/// stage, quarantine items dropped over budget, the ingest lag histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub records: [[u64; 3]; 4],
    pub quarantined: [u64; 4],
    pub quarantine_dropped: u64,
    /// Per bucket of [`LAG_BOUNDS`], then +Inf.
    pub lag: [u64; 9],
    pub lag_sum: f64,
    /// Some lag was observed (the histogram is rendered from then on).
    pub lag_observed: bool,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        for (mine, theirs) in self.records.iter_mut().zip(&other.records) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (a, b) in self.quarantined.iter_mut().zip(&other.quarantined) {
            *a += b;
        }
        self.quarantine_dropped += other.quarantine_dropped;
        for (a, b) in self.lag.iter_mut().zip(&other.lag) {
            *a += b;
        }
        self.lag_sum += other.lag_sum;
        self.lag_observed |= other.lag_observed;
    }

    fn count(&mut self, outcome: usize, priority: &str, n: usize) {
        let priority = PRIORITIES.iter().position(|p| *p == priority).unwrap_or(2);
        self.records[outcome][priority] += n as u64;
    }

    fn quarantine(&mut self, stage: &[u8]) {
        let stage = STAGES.iter().position(|s| s.as_bytes() == stage).unwrap_or(1);
        self.quarantined[stage] += 1;
    }

    fn observe_lag(&mut self, lag: i64) {
        let lag = lag as f64;
        self.lag[LAG_BOUNDS.partition_point(|bound| *bound < lag)] += 1;
        self.lag_sum += lag;
    }
}

/// What a request repeats of what was claimed before it (its records' event ids, its keys), by what those claims
/// found ([`Claimed`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Repeats {
    /// Some record already durable: in this worker's spools, or in another worker's (or an earlier process's),
    /// which `X-Ack: kafka` must then see delivered too ([`Answer::repeats_durable`]).
    pub(crate) durable: bool,
    /// Some claim of this worker whose record is not durable yet.
    pub(crate) pending: bool,
}

impl Repeats {
    pub(crate) fn of(found: &[Claimed]) -> Repeats {
        let mut repeats = Repeats::default();
        repeats.add(found);
        repeats
    }

    pub(crate) fn add(&mut self, found: &[Claimed]) {
        for claimed in found {
            match claimed {
                Claimed::New => {}
                Claimed::Durable => self.durable = true,
                Claimed::Pending => self.pending = true,
            }
        }
    }

    fn any(self) -> bool {
        self.durable || self.pending
    }
}

/// Whether a request's priority (as the edge names it) is high: its records go to [`Lane::High`].
fn is_high(priority: Option<&str>) -> bool {
    priority.and_then(|p| Priority::parse(p.as_bytes())) == Some(Priority::High)
}

/// What [`Gateway::persist`] registered.
struct Persisted {
    /// What the answer waits for ([`Answer::durable_ends`]).
    durable_ends: DurableEnds,
    /// What `X-Ack: kafka` waits for the broker to acknowledge ([`Answer::delivered_ends`]).
    delivered_ends: DurableEnds,
    failures_before: [u64; LANES],
}

/// A worker's spools: the main one, and high priority's own (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Main = 0,
    High = 1,
}

/// How many lanes there are.
pub const LANES: usize = 2;

/// The sequence each lane's spool must be durable to for an answer to be sent (indexed by [`Lane`]); 0 for a lane
/// it does not wait for (every spool is durable to 0).
pub type DurableEnds = [u64; LANES];

/// A request waiting for its durability: what [`Gateway::settle`] commits or releases.
struct Pending {
    /// Each lane's sequence it still waits for; 0 once that lane is durable to it.
    ends: DurableEnds,
    /// Its claims: event ids (and quarantine ids) of the records it wrote, and its idempotency keys.
    ids: Vec<Id>,
    /// The devices heard (recorded once durable).
    devices: Vec<String>,
    received_ms: i64,
    counts: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker's gateway: its routes, the shared tables and its spools.
pub struct Gateway {
    routes: Vec<Route>,
    settings: Settings,
    tables: Tables,
    spool: Arc<Spool>,
    /// High priority's own spool ([`Lane::High`]); without it every record goes to `spool`.
    high_spool: Option<Arc<Spool>>,
    /// Every lane's waiting requests: one lock, so that a request waiting for two lanes is settled by both.
    pending: Mutex<Vec<Pending>>,
    /// Each lane's failed commits so far (counted by [`Gateway::settle`] under `pending`'s lock).
    failed_commits: [AtomicU64; LANES],
    counters: Mutex<Counters>,
    /// Held by an `accept` from its first dedup claim until its append is done or its claims are released. The
    /// edge takes large bodies on a thread of their own while the event loop takes the others, so two `accept`s
    /// of one worker can overlap; a claim not yet appended is a duplicate to the worker's other requests, and one
    /// answered "duplicate" in that window would be acknowledged for a record whose append may still fail.
    claiming: Mutex<()>,
}

impl Gateway {
    /// With `high_spool`, high priority's records go there ([`Lane::High`]).
    pub fn new(
        routes: Vec<Route>,
        settings: Settings,
        tables: Tables,
        spool: Arc<Spool>,
        high_spool: Option<Arc<Spool>>,
    ) -> Gateway {
        Gateway {
            routes,
            settings,
            tables,
            spool,
            high_spool,
            pending: Mutex::new(Vec::new()),
            failed_commits: std::array::from_fn(|_| AtomicU64::new(0)),
            counters: Mutex::new(Counters::default()),
            claiming: Mutex::new(()),
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The main spool ([`Lane::Main`]).
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// A lane's spool, if the worker has it.
    pub fn lane_spool(&self, lane: Lane) -> Option<&Arc<Spool>> {
        match lane {
            Lane::Main => Some(&self.spool),
            Lane::High => self.high_spool.as_ref(),
        }
    }

    /// The lanes the worker has, with their spools.
    fn lanes(&self) -> impl Iterator<Item = (Lane, &Arc<Spool>)> {
        [Lane::Main, Lane::High]
            .into_iter()
            .filter_map(|lane| Some((lane, self.lane_spool(lane)?)))
    }

    /// The counts so far.
    pub fn counters(&self) -> Counters {
        lock(&self.counters).clone()
    }

    /// Requests waiting for their durability.
    pub fn waiting(&self) -> usize {
        lock(&self.pending).len()
    }

    fn count(&self, counts: &Counters) {
        lock(&self.counters).add(counts);
    }

    /// Appends `written` (nothing for empty records) to the lane of `priority` and registers `waiting` for its
    /// durability, in one hold of the lock [`Gateway::settle`] takes: a commit that fails after the append always
    /// finds it. When it repeats claims of this worker not durable yet ([`Repeats::Pending`]: they may wait in
    /// either lane) it also waits for everything appended before it in every lane; what repeats only durable
    /// records waits for nothing more than its own appends (under a flood, a high-priority retry of a durable
    /// reading would otherwise wait for the main spool's commit of megabytes). High priority's spool full (its
    /// quota), its records go to the main spool, as they would without it: the lane is a shortcut, never a reason
    /// to refuse. Returns the sequences to await (and, for `X-Ack: kafka`, to see delivered) and each lane's
    /// failed commits so far (for [`Gateway::failed_since`]). On an error nothing was written and nothing
    /// registered (the caller releases).
    fn persist(
        &self,
        written: &crate::Records,
        mut waiting: Pending,
        priority: Option<&str>,
        repeats: Repeats,
    ) -> Result<Persisted, SpoolError> {
        let mut pending = lock(&self.pending);
        let failures_before = self
            .failed_commits
            .each_ref()
            .map(|failed| failed.load(Ordering::Relaxed));
        let mut ends = [0; LANES];
        let lane = match &self.high_spool {
            Some(high) if is_high(priority) && !written.is_empty() => match high.append(written) {
                Ok(end) => {
                    ends[Lane::High as usize] = end;
                    Lane::High
                }
                Err(SpoolError::Full { .. }) => Lane::Main,
                Err(error) => return Err(error),
            },
            _ => Lane::Main,
        };
        if lane == Lane::Main && !written.is_empty() {
            ends[Lane::Main as usize] = self.spool.append(written)?;
        }
        // What a repeat repeats was appended before it, in either lane (read only for a repeat: each lane's next
        // sequence takes its writer's lock).
        let everything_before = repeats.any().then(|| {
            let mut before = ends;
            for (other, spool) in self.lanes() {
                if other != lane || written.is_empty() {
                    before[other as usize] = spool.next_seq();
                }
            }
            before
        });
        if repeats.pending
            && let Some(before) = everything_before
        {
            ends = before;
        }
        waiting.ends = ends;
        for (each, spool) in self.lanes() {
            if spool.durable_seq() >= waiting.ends[each as usize] {
                waiting.ends[each as usize] = 0;
            }
        }
        if waiting.ends == [0; LANES] {
            drop(pending);
            self.finish(waiting)?;
        } else {
            pending.push(waiting);
        }
        Ok(Persisted {
            durable_ends: ends,
            delivered_ends: everything_before.unwrap_or(ends),
            failures_before,
        })
    }

    /// Whether a commit of a spool `answer` waits for failed since it was registered: its claims may have been
    /// released (`settle`), so it must not be acknowledged, even once a later commit made that spool durable past
    /// its sequence (failed sequences are never reused). The caller's wait is not registered with a lane's
    /// committer until it awaits that lane, and a failure before then would not reach it. Over-failing is safe: a
    /// request made durable before a failure it is then failed for is answered `duplicate` on its retry.
    pub fn failed_since(&self, answer: &Answer) -> bool {
        let Some(ends) = answer.durable_ends else {
            return false;
        };
        (0..LANES).any(|lane| {
            ends[lane] != 0 && self.failed_commits[lane].load(Ordering::Relaxed) > answer.failures_before[lane]
        })
    }

    /// A durable request's effects.
    fn finish(&self, done: Pending) -> io::Result<()> {
        if !done.ids.is_empty() {
            self.tables.dedup.commit(&done.ids)?;
        }
        if !done.devices.is_empty() {
            self.tables.devices.seen(&done.devices, done.received_ms)?;
        }
        self.count(&done.counts);
        Ok(())
    }

    /// A commit's outcome on `lane`'s spool, before any waiter is woken: with `failed`, every request waiting for
    /// that lane failed (their claims are released: a retry is not a duplicate); otherwise those below
    /// `durable_seq` are durable in it, and each durable in every lane it waits for is done (claims committed,
    /// devices heard, counted).
    pub fn settle(&self, lane: Lane, durable_seq: u64, failed: bool) -> io::Result<()> {
        let lane = lane as usize;
        let mut pending = lock(&self.pending);
        let mut first_error = None;
        if failed {
            self.failed_commits[lane].fetch_add(1, Ordering::Relaxed);
            let (failed, still): (Vec<Pending>, Vec<Pending>) =
                pending.drain(..).partition(|waiting| waiting.ends[lane] != 0);
            *pending = still;
            for waiting in failed {
                if let Err(error) = self.tables.dedup.release(&waiting.ids) {
                    first_error.get_or_insert(error);
                }
            }
        } else {
            for waiting in pending.iter_mut() {
                if waiting.ends[lane] <= durable_seq {
                    waiting.ends[lane] = 0;
                }
            }
            let (done, still): (Vec<Pending>, Vec<Pending>) =
                pending.drain(..).partition(|waiting| waiting.ends == [0; LANES]);
            *pending = still;
            drop(pending);
            for waiting in done {
                if let Err(error) = self.finish(waiting) {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
