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

pub mod accept;
pub mod admission;
pub mod answer;
pub mod keys;
pub mod limit;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::canonical::id::Id;
use crate::contract::validator::Validator;
use crate::spool::{Spool, SpoolError};
use crate::state::lastseen::LastSeenTable;
use crate::state::table::{RateTable, SharedWindow};

pub use accept::{Answer, Body, Source};
pub use admission::{Admission, AdmissionConfig, Decision, HeaderView, Refusal};
pub use answer::Problem;
pub use keys::KeyStore;
pub use limit::{BULK_BODY_BYTES, LimitConfig, Permit, Priority};

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

/// A request waiting for its durability: what [`Gateway::settle`] commits or releases.
struct Pending {
    end: u64,
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

/// One worker's gateway: its routes, the shared tables and its spool.
pub struct Gateway {
    routes: Vec<Route>,
    settings: Settings,
    tables: Tables,
    spool: Arc<Spool>,
    pending: Mutex<Vec<Pending>>,
    counters: Mutex<Counters>,
    /// Held by an `accept` from its first dedup claim until its append is done or its claims are released. The
    /// edge takes large bodies on a thread of their own while the event loop takes the others, so two `accept`s
    /// of one worker can overlap; a claim not yet appended is a duplicate to the worker's other requests, and one
    /// answered "duplicate" in that window would be acknowledged for a record whose append may still fail.
    claiming: Mutex<()>,
}

impl Gateway {
    pub fn new(routes: Vec<Route>, settings: Settings, tables: Tables, spool: Arc<Spool>) -> Gateway {
        Gateway {
            routes,
            settings,
            tables,
            spool,
            pending: Mutex::new(Vec::new()),
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

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
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

    /// Appends `written` (nothing for empty records) and registers `waiting` for its durability, in one hold of
    /// the lock [`Gateway::settle`] takes: a commit that fails after the append always finds it. Returns the
    /// sequence to await. On an error nothing was written and nothing registered (the caller releases).
    fn persist(&self, written: &crate::Records, mut waiting: Pending) -> Result<u64, SpoolError> {
        let mut pending = lock(&self.pending);
        let end = if written.is_empty() {
            self.spool.next_seq()
        } else {
            self.spool.append(written)?
        };
        waiting.end = end;
        if self.spool.durable_seq() >= end {
            drop(pending);
            self.finish(waiting)?;
        } else {
            pending.push(waiting);
        }
        Ok(end)
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

    /// A commit's outcome, before any waiter is woken: with `failed`, every waiting request failed (their claims
    /// are released: a retry is not a duplicate); otherwise those below `durable_seq` are durable (claims
    /// committed, devices heard, counted).
    pub fn settle(&self, durable_seq: u64, failed: bool) -> io::Result<()> {
        let mut pending = lock(&self.pending);
        let mut first_error = None;
        if failed {
            for waiting in pending.drain(..) {
                if let Err(error) = self.tables.dedup.release(&waiting.ids) {
                    first_error.get_or_insert(error);
                }
            }
        } else {
            let (done, still): (Vec<Pending>, Vec<Pending>) =
                pending.drain(..).partition(|waiting| waiting.end <= durable_seq);
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
