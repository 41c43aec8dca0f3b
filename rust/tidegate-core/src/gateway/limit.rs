//! The adaptive concurrency limit of one worker, over the cost of the requests in flight, with priority
//! partitions (issue 11).
//!
//! When the CPU is what runs out, no queue tidegate owns grows: requests wait inside Granian and the kernel for an
//! event loop busy with other requests, and the loop's lag stays small. What grows is the time an admitted request
//! spends between its admission and its answer: every await puts it back behind every runnable request. So the
//! signal is that time, per unit of cost, against the lowest seen recently (TCP Vegas and Netflix's gradient
//! limiters do the same with round-trip times):
//!
//! * A request costs about its size: `1 + Content-Length / COST_BYTES` (a compressed body counts
//!   `COMPRESSED_FACTOR` times its length), so a 2,000-event body weighs what it costs, not what one reading does.
//! * Requests are compared with their own kind, by size class (`floor(log2(cost))`). Every `WINDOW_S`, each class's
//!   mean time is divided by its `base`, a long-run mean (about `1 / BASE_WEIGHT` windows); `slowdown` is those
//!   ratios averaged by cost. `gradient = clamp(tolerance / slowdown, 0.5, 1)` and the limit becomes
//!   `limit * gradient + sqrt(limit)`, smoothed, between the floor and the ceiling. A steady load is its own base;
//!   a sudden slowdown shrinks the limit up to half per window. When load drops the base follows it down at once.
//! * **Refusals are not counted in the admitted requests' time.** Refused requests still take event-loop time
//!   (Granian hands them over, the 503 is sent), and that time shows up as waiting in the admitted requests' awaits.
//!   Counted, it made the limit shrink because requests were refused, which refused more: with a low floor the
//!   limit sat at it and goodput collapsed. So every refusal advances a *refusal clock* by the loop time a refusal
//!   takes (the smallest refusal time measured in a window, smoothed: a refusal that waited is not counted as its
//!   cost), times `refusal_weight` (for Granian's part of a request, which the worker does not see); an admitted
//!   request's time is its wall time minus what the refusal clock advanced while it was in flight (never less than
//!   `OWN_SHARE` of it). What is left rises with the queueing admission controls, the admitted work.
//! * Priority partitions: a request counts the work in flight of its own priority and those above it, against its
//!   share of the limit: low counts everything and may fill `shares[low]` of it, medium counts medium and high
//!   against `shares[medium]`, high counts only high against all of it. Low is shed first and never takes room
//!   from high. A request larger than its share is admitted when nothing it counts is in flight.
//! * **The bulk lane.** A body of `BULK_BODY_BYTES` or more is taken off the event loop by the worker's one accept
//!   thread, one at a time, and its records make a commit megabytes long. Past a few such bodies in flight, more
//!   only wait there, and every commit grows: a high-priority reading, answered once a commit covers it, waits for
//!   commits that carry the flood (`bench/flood.py`: 16 low-priority clients posting 2,000-event bodies, at the
//!   limit's low share, about 7 bodies in flight, took the high reading's p99 from 9 ms unloaded to 80-100 ms;
//!   at about one body in flight, 28-38 ms). So low priority may have `bulk_bodies` large bodies in flight,
//!   counting those of every priority; medium counts medium and high ones against twice that; high is not held
//!   by it. At least one always fits. The lane holds a priority only while a higher one is arriving (the
//!   caller says so, `Admission`): with none coming, a refusal helps no one.
//! * **The lane narrows while high priority suffers** (`BulkLane`). One large body at a time took the flood's
//!   high p99 from 3.7x to 2.4x its unloaded p99, but took 35% fewer low bodies when two clients sent them back
//!   to back. So the lane is `bulk_bodies` wide until high priority's own time rises past `bulk_narrow_at` times
//!   its baseline, then one body wide for a hold. High's time is the median of its last `LANE_SAMPLES` small
//!   requests (admission to answer): a flood that takes the CPU moves the median, while bulk bodies the CPU has
//!   room for move only the tail (4 clients sending a body every 200 ms: median 2.8 ms against 2.9 unloaded),
//!   and a smoothed mean, driven by that tail, kept the lane narrow there. The baseline follows that median
//!   down over about 5 s (`LANE_BASE_FALL`: faster, it sat at the median's lowest dips, and ordinary ones
//!   crossed twice that) and up only over about 20 s (`LANE_BASE_RISE`): the limit's per-class base follows a
//!   steady load within seconds, and would take a flood as the new normal.
//!   A narrow lane lowers the signal it is driven by, so it widens again only when the hold is over; if high
//!   suffers again within a hold of widening, the hold doubles (`LANE_HOLD_S` up to `LANE_HOLD_MAX_S`): the
//!   lane does not swing in and out of the flood it protects from.
//! * `Retry-After` of a shed request: the time the work in flight takes to drain at the measured completion rate,
//!   at least 1 s (the header's smallest), jittered up to twice that and rounded (clients that honour it do not
//!   come back together: under a CPU-bound overload the drain takes milliseconds, and a Retry-After of 1 for every
//!   client brought them all back in the same second), 1 to 30 s.
//!
//! Times are seconds on a monotonic clock, passed in by the caller (so the controller is tested without sleeping).

/// Bytes that weigh as much as one request: a reading (~250 B) costs about 1, a 2,000-event body about 90.
pub const COST_BYTES: f64 = 4096.0;
/// Assumed when a request does not say how long its body is (chunked).
pub const UNKNOWN_BYTES: f64 = 16384.0;
pub const COMPRESSED_FACTOR: f64 = 4.0;
/// A body this large or larger (as `request_cost` weighs it) is bulk: the worker takes it on its accept thread.
pub const BULK_BODY_BYTES: usize = 64 * 1024;
pub const WINDOW_S: f64 = 0.1;
/// Weight of a window in the long-run mean time per size class (about 5 s at 100 ms windows).
pub const BASE_WEIGHT: f64 = 0.02;
/// An admitted request's own time is at least this share of its wall time, whatever the refusal clock says.
pub const OWN_SHARE: f64 = 0.1;
/// High priority's time, for the bulk lane: the median of this many of its last small requests.
pub const LANE_SAMPLES: usize = 8;
/// Weight of a window in the bulk lane's baseline of high priority's time, when it falls (about 5 s) and when it
/// rises (about 20 s).
pub const LANE_BASE_FALL: f64 = 0.02;
pub const LANE_BASE_RISE: f64 = 0.005;
/// How long the bulk lane stays narrow, at first and at most (it doubles each time high suffers again soon after
/// it widened).
pub const LANE_HOLD_S: f64 = 5.0;
pub const LANE_HOLD_MAX_S: f64 = 80.0;
const CLASSES: usize = 64;

/// `X-Priority`: high, medium, low.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    High = 0,
    Medium = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    /// `high`, `medium` or `low`, any case, surrounding whitespace ignored.
    pub fn parse(value: &[u8]) -> Option<Priority> {
        let value = value.trim_ascii();
        Priority::ALL
            .into_iter()
            .find(|p| value.eq_ignore_ascii_case(p.name().as_bytes()))
    }

    pub fn name(self) -> &'static str {
        ["high", "medium", "low"][self as usize]
    }
}

/// A request's weight, from its headers alone (the body is not read before admission).
pub fn request_cost(content_length: Option<&[u8]>, content_encoding: Option<&[u8]>) -> f64 {
    let size = declared_length(content_length).map_or(UNKNOWN_BYTES, |length| length as f64);
    let compressed = content_encoding.is_some_and(|e| {
        let e = e.trim_ascii();
        !e.is_empty() && !e.eq_ignore_ascii_case(b"identity")
    });
    1.0 + size * if compressed { COMPRESSED_FACTOR } else { 1.0 } / COST_BYTES
}

#[derive(Clone, Debug)]
pub struct LimitConfig {
    pub initial: f64,
    pub minimum: f64,
    pub maximum: f64,
    pub tolerance: f64,
    pub smoothing: f64,
    /// Part of the limit each priority may fill (high, medium, low).
    pub shares: [f64; 3],
    /// Loop time of one refusal, as a multiple of the part measured in the worker.
    pub refusal_weight: f64,
    /// Bulk bodies low priority may have in flight (medium twice as many); 0: no bulk lane.
    pub bulk_bodies: f64,
    /// High priority's time over its baseline at which the bulk lane narrows to one body (module doc); 0: never.
    pub bulk_narrow_at: f64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            initial: 1024.0,
            minimum: 1024.0,
            maximum: 4096.0,
            tolerance: 2.0,
            smoothing: 0.3,
            shares: [1.0, 0.8, 0.5],
            refusal_weight: 2.0,
            bulk_bodies: 2.0,
            bulk_narrow_at: 2.0,
        }
    }
}

/// An admitted request's place in the limit, handed back when it is answered.
#[derive(Clone, Copy, Debug)]
pub struct Permit {
    pub priority: Priority,
    pub cost: f64,
    /// Whether it holds a place in the bulk lane.
    pub bulk: bool,
    pub started: f64,
    /// The refusal clock when it was admitted.
    refusals_at: f64,
}

/// Why a request does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRoom {
    /// Over its priority's part of the limit.
    Limit,
    /// A bulk body over its priority's places in the bulk lane.
    Bulk,
}

/// A `Content-Length` value's bytes: None when it is absent or not one decimal number (several lines of it arrive
/// comma-joined, and are not one).
pub fn declared_length(content_length: Option<&[u8]>) -> Option<u64> {
    content_length
        .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
}

/// Whether a request of `cost` (`request_cost`) is bulk.
pub fn is_bulk(cost: f64) -> bool {
    cost >= 1.0 + BULK_BODY_BYTES as f64 / COST_BYTES
}

/// The bulk lane's width, driven by high priority's own time (module doc).
#[derive(Clone, Debug)]
pub struct BulkLane {
    narrow_at: f64,
    /// High priority's last small requests' seconds (a ring), how many were seen, and whether any since the
    /// last window.
    samples: [f64; LANE_SAMPLES],
    seen: usize,
    fresh: bool,
    /// High priority's time: the median of `samples` (0: fewer than `LANE_SAMPLES` seen).
    pub recent: f64,
    /// `recent`'s baseline (0: none seen).
    pub base: f64,
    /// While narrow, until when.
    narrow_until: Option<f64>,
    hold: f64,
    widened_at: f64,
    /// Times it narrowed, and seconds it was narrow, so far.
    pub narrowings: u64,
    pub narrow_seconds: f64,
    last_update: f64,
}

impl BulkLane {
    pub fn new(narrow_at: f64, now: f64) -> BulkLane {
        BulkLane {
            narrow_at,
            samples: [0.0; LANE_SAMPLES],
            seen: 0,
            fresh: false,
            recent: 0.0,
            base: 0.0,
            narrow_until: None,
            hold: LANE_HOLD_S,
            widened_at: f64::NEG_INFINITY,
            narrowings: 0,
            narrow_seconds: 0.0,
            last_update: now,
        }
    }

    /// Whether the lane is one body wide now.
    pub fn narrowed(&self) -> bool {
        self.narrow_until.is_some()
    }

    /// High priority's time against its baseline (0: not judged yet).
    pub fn slowdown(&self) -> f64 {
        if self.base > 0.0 { self.recent / self.base } else { 0.0 }
    }

    /// A high-priority request that is not bulk was answered `seconds` after its admission.
    fn observe_high(&mut self, seconds: f64) {
        self.samples[self.seen % LANE_SAMPLES] = seconds;
        self.seen += 1;
        self.fresh = true;
    }

    /// A window ended at `now`.
    fn update(&mut self, now: f64) {
        if self.narrowed() {
            self.narrow_seconds += now - self.last_update;
        }
        self.last_update = now;
        // Judged from a full set of samples only: the median of two says little.
        if std::mem::take(&mut self.fresh) && self.seen >= LANE_SAMPLES {
            let mut last = self.samples;
            last.sort_unstable_by(f64::total_cmp);
            self.recent = last[LANE_SAMPLES / 2];
        }
        if self.recent > 0.0 {
            let weight = if self.recent < self.base {
                LANE_BASE_FALL
            } else {
                LANE_BASE_RISE
            };
            self.base = if self.base > 0.0 {
                self.base + (self.recent - self.base) * weight
            } else {
                self.recent
            };
        }
        let suffering = self.narrow_at > 0.0 && self.base > 0.0 && self.recent > self.narrow_at * self.base;
        match self.narrow_until {
            None if suffering => {
                // Soon after it widened: the flood is still there, hold longer. Long after: a new episode.
                self.hold = if now - self.widened_at < self.hold {
                    (2.0 * self.hold).min(LANE_HOLD_MAX_S)
                } else {
                    LANE_HOLD_S
                };
                self.narrow_until = Some(now + self.hold);
                self.narrowings += 1;
            }
            Some(until) if now >= until => {
                if suffering {
                    self.narrow_until = Some(now + self.hold);
                } else {
                    self.narrow_until = None;
                    self.widened_at = now;
                }
            }
            _ => {}
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Sums {
    seconds: f64,
    requests: f64,
    cost: f64,
}

pub struct AdaptiveLimit {
    config: LimitConfig,
    pub limit: f64,
    pub in_flight: f64,
    pub in_flight_by: [f64; 3],
    /// Bulk bodies in flight, by priority.
    pub bulk_in_flight_by: [f64; 3],
    pub bulk_lane: BulkLane,
    /// Per size class, the long-run mean seconds of an admitted request (0: none seen).
    base: [f64; CLASSES],
    /// The last window's time against the base, averaged by cost over the classes.
    pub slowdown: f64,
    /// Cost completed per second (smoothed), for Retry-After.
    pub drain_rate: f64,
    /// Loop seconds spent on refusals so far (estimated).
    pub refusal_clock: f64,
    /// Loop seconds one refusal takes (smoothed; 0 until measured).
    pub refusal_cost: f64,
    window_start: f64,
    window: [Sums; CLASSES],
    window_peak: f64,
    window_refusal_min: f64,
    rng: u64,
}

impl AdaptiveLimit {
    pub fn new(config: LimitConfig, now: f64, seed: u64) -> AdaptiveLimit {
        AdaptiveLimit {
            bulk_lane: BulkLane::new(config.bulk_narrow_at, now),
            limit: config.initial.clamp(config.minimum, config.maximum.max(config.minimum)),
            config,
            in_flight: 0.0,
            in_flight_by: [0.0; 3],
            bulk_in_flight_by: [0.0; 3],
            base: [0.0; CLASSES],
            slowdown: 1.0,
            drain_rate: 0.0,
            refusal_clock: 0.0,
            refusal_cost: 0.0,
            window_start: now,
            window: [Sums::default(); CLASSES],
            window_peak: 0.0,
            window_refusal_min: f64::INFINITY,
            rng: seed | 1,
        }
    }

    /// The part of the limit `priority` may fill.
    pub fn capacity(&self, priority: Priority) -> f64 {
        self.limit * self.config.shares[priority as usize]
    }

    /// The work in flight a request of `priority` is measured against (its own and higher priorities').
    pub fn counted(&self, priority: Priority) -> f64 {
        match priority {
            Priority::High => self.in_flight_by[0],
            Priority::Medium => self.in_flight_by[0] + self.in_flight_by[1],
            Priority::Low => self.in_flight,
        }
    }

    /// The bulk bodies in flight a bulk body of `priority` is measured against, and how many it may find there
    /// (see the module's doc).
    pub fn bulk_counted(&self, priority: Priority) -> (f64, f64) {
        let by = &self.bulk_in_flight_by;
        let lane = self.bulk_places();
        match priority {
            Priority::High => (by[0], f64::INFINITY),
            Priority::Medium => (by[0] + by[1], 2.0 * lane),
            Priority::Low => (by[0] + by[1] + by[2], lane),
        }
    }

    /// Large bodies of low priority the bulk lane lets in flight now (medium twice as many).
    pub fn bulk_places(&self) -> f64 {
        let wide = self.config.bulk_bodies;
        if self.bulk_lane.narrowed() { wide.min(1.0) } else { wide }
    }

    /// Whether a request of `cost` counts in the bulk lane (there is one, and it is bulk).
    fn in_bulk_lane(&self, cost: f64) -> bool {
        self.config.bulk_bodies > 0.0 && is_bulk(cost)
    }

    /// Whether a request of `cost` at `priority` fits (what `try_acquire` checks, without taking anything);
    /// `bulk_lane`: whether the bulk lane holds it (`Admission` turns it on while a higher priority is arriving).
    pub fn has_room(&self, priority: Priority, cost: f64, bulk_lane: bool) -> Result<(), NoRoom> {
        if bulk_lane && self.in_bulk_lane(cost) {
            let (counted, places) = self.bulk_counted(priority);
            if counted > 0.0 && counted + 1.0 > places {
                return Err(NoRoom::Bulk);
            }
        }
        let counted = self.counted(priority);
        if counted <= 0.0 || counted + cost <= self.capacity(priority) {
            Ok(())
        } else {
            Err(NoRoom::Limit)
        }
    }

    /// Admits a request of `cost` at `priority`, or says why it is shed (`bulk_lane`: see `has_room`). A bulk body
    /// is counted in the lane whether or not the lane holds it.
    pub fn try_acquire(&mut self, priority: Priority, cost: f64, now: f64, bulk_lane: bool) -> Result<Permit, NoRoom> {
        self.has_room(priority, cost, bulk_lane)?;
        let bulk = self.in_bulk_lane(cost);
        self.in_flight += cost;
        self.in_flight_by[priority as usize] += cost;
        if bulk {
            self.bulk_in_flight_by[priority as usize] += 1.0;
        }
        self.window_peak = self.window_peak.max(self.in_flight);
        Ok(Permit {
            priority,
            cost,
            bulk,
            started: now,
            refusals_at: self.refusal_clock,
        })
    }

    /// Gives a permit back without counting its time (the request was refused after all, e.g. by its rate).
    pub fn cancel(&mut self, permit: Permit) {
        self.in_flight = (self.in_flight - permit.cost).max(0.0);
        let by = &mut self.in_flight_by[permit.priority as usize];
        *by = (*by - permit.cost).max(0.0);
        if permit.bulk {
            let bulk = &mut self.bulk_in_flight_by[permit.priority as usize];
            *bulk = (*bulk - 1.0).max(0.0);
        }
    }

    /// A refusal was decided (counted on the refusal clock at the cost measured so far).
    pub fn refused(&mut self) {
        self.refusal_clock += self.refusal_cost * self.config.refusal_weight;
    }

    /// A refusal was answered `seconds` after it was decided: the worker's part of its cost.
    pub fn refusal_answered(&mut self, seconds: f64, now: f64) {
        self.window_refusal_min = self.window_refusal_min.min(seconds.max(0.0));
        self.tick(now);
    }

    /// An admitted request was answered at `now`.
    pub fn release(&mut self, permit: Permit, now: f64) {
        self.cancel(permit);
        let wall = (now - permit.started).max(0.0);
        let refusals = self.refusal_clock - permit.refusals_at;
        let own = (wall - refusals).max(wall * OWN_SHARE);
        if permit.priority == Priority::High && !is_bulk(permit.cost) {
            self.bulk_lane.observe_high(wall);
        }
        let class = (permit.cost.max(1.0).log2() as usize).min(CLASSES - 1);
        let sums = &mut self.window[class];
        sums.seconds += own;
        sums.requests += 1.0;
        sums.cost += permit.cost;
        self.tick(now);
    }

    fn tick(&mut self, now: f64) {
        let elapsed = now - self.window_start;
        if elapsed >= WINDOW_S {
            self.bulk_lane.update(now);
            self.update(elapsed);
            self.window_start = now;
        }
    }

    fn update(&mut self, elapsed: f64) {
        let window = std::mem::replace(&mut self.window, [Sums::default(); CLASSES]);
        let peak = std::mem::replace(&mut self.window_peak, self.in_flight);
        let refusal_min = std::mem::replace(&mut self.window_refusal_min, f64::INFINITY);
        if refusal_min.is_finite() {
            self.refusal_cost = if self.refusal_cost == 0.0 {
                refusal_min
            } else {
                0.7 * self.refusal_cost + 0.3 * refusal_min
            };
        }
        let cost: f64 = window.iter().map(|s| s.cost).sum();
        let rate = cost / elapsed;
        self.drain_rate = if self.drain_rate == 0.0 {
            rate
        } else {
            0.7 * self.drain_rate + 0.3 * rate
        };
        if cost <= 0.0 {
            return;
        }
        let mut weighted = 0.0;
        for (class, sums) in window.iter().enumerate().filter(|(_, s)| s.requests > 0.0) {
            let mean = sums.seconds / sums.requests;
            let base = if self.base[class] > 0.0 { self.base[class] } else { mean };
            weighted += sums.cost * if base > 0.0 { mean / base } else { 1.0 };
            // Compared first, then learnt: a faster window is the new normal at once, a slower one only slowly.
            self.base[class] = if mean < base {
                mean
            } else {
                base * (1.0 - BASE_WEIGHT) + mean * BASE_WEIGHT
            };
        }
        self.slowdown = weighted / cost;
        let gradient = (self.config.tolerance / self.slowdown).clamp(0.5, 1.0);
        if gradient >= 1.0 && peak < self.limit / 2.0 {
            return; // not pressed and not used: no reason to grow
        }
        let target = self.limit * gradient + self.limit.sqrt();
        let limit = self.limit * (1.0 - self.config.smoothing) + target * self.config.smoothing;
        self.limit = limit.clamp(self.config.minimum, self.config.maximum.max(self.config.minimum));
    }

    /// Uniform in [0, 1): jitter.
    pub(crate) fn uniform(&mut self) -> f64 {
        // xorshift64*: jitter only, not security.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whole seconds until the work in flight drains at the measured rate (at least 1), jittered up to twice that,
    /// 1..=30.
    pub fn retry_after(&mut self) -> u32 {
        let drain = if self.drain_rate > 0.0 {
            self.in_flight / self.drain_rate
        } else {
            1.0
        };
        let jittered = drain.max(1.0) * (1.0 + self.uniform());
        jittered.round().clamp(1.0, 30.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(limit: f64) -> AdaptiveLimit {
        let config = LimitConfig {
            initial: limit,
            minimum: limit,
            maximum: limit,
            ..LimitConfig::default()
        };
        AdaptiveLimit::new(config, 0.0, 7)
    }

    #[test]
    fn cost_follows_the_body_size() {
        assert!(request_cost(Some(b"200"), None) < 1.1);
        assert!(request_cost(Some(b"400000"), None) > 20.0);
        assert_eq!(
            request_cost(Some(b"100000"), Some(b"zstd")),
            request_cost(Some(b"400000"), None)
        );
        assert_eq!(
            request_cost(Some(b"100000"), Some(b" Identity")),
            request_cost(Some(b"100000"), None)
        );
        assert_eq!(request_cost(None, None), request_cost(Some(b"16384"), None));
        assert_eq!(request_cost(Some(b"-5"), None), request_cost(None, None));
    }

    #[test]
    fn priorities_parse_in_any_case() {
        assert_eq!(Priority::parse(b" HIGH "), Some(Priority::High));
        assert_eq!(Priority::parse(b"low"), Some(Priority::Low));
        assert_eq!(Priority::parse(b"urgent"), None);
    }

    #[test]
    fn low_fills_only_its_share_and_never_takes_room_from_high() {
        let mut limit = fixed(10.0);
        assert!((0..5).all(|_| limit.try_acquire(Priority::Low, 1.0, 0.0, true).is_ok()));
        assert!(
            limit.try_acquire(Priority::Low, 1.0, 0.0, true).is_err(),
            "low stops at half the limit"
        );
        assert!(limit.try_acquire(Priority::Medium, 1.0, 0.0, true).is_ok());
        assert!(limit.try_acquire(Priority::High, 1.0, 0.0, true).is_ok());
        let high = (0..20)
            .filter(|_| limit.try_acquire(Priority::High, 1.0, 0.0, true).is_ok())
            .count();
        assert_eq!(high, 9, "high has the whole limit to itself");
        let mut empty = fixed(10.0);
        let big = empty.try_acquire(Priority::Low, 50.0, 0.0, true);
        assert!(big.is_ok(), "a request larger than its share gets into an empty worker");
        assert!(empty.try_acquire(Priority::Low, 1.0, 0.0, true).is_err());
        assert!(
            empty.try_acquire(Priority::High, 1.0, 0.0, true).is_ok(),
            "and does not block high"
        );
        empty.cancel(big.unwrap());
        assert_eq!(empty.in_flight, 1.0);
    }

    #[test]
    fn the_bulk_lane_holds_low_to_its_places_counting_every_priority_and_never_holds_high() {
        let bulk = request_cost(Some(b"300000"), None);
        assert!(is_bulk(bulk) && !is_bulk(request_cost(Some(b"60000"), None)));
        assert!(is_bulk(request_cost(Some(b"20000"), Some(b"gzip"))));
        let mut limit = fixed(4096.0);
        let first = limit.try_acquire(Priority::Low, bulk, 0.0, true).unwrap();
        assert!(limit.try_acquire(Priority::Low, bulk, 0.0, true).is_ok());
        assert_eq!(
            limit.try_acquire(Priority::Low, bulk, 0.0, true).unwrap_err(),
            NoRoom::Bulk,
            "low has 2 places"
        );
        let unheld = limit.try_acquire(Priority::Low, bulk, 0.0, false).unwrap();
        assert_eq!(
            limit.bulk_counted(Priority::Low).0,
            3.0,
            "the lane off, it fits, and is counted"
        );
        limit.cancel(unheld);
        assert!(
            limit.try_acquire(Priority::Low, 1.0, 0.0, true).is_ok(),
            "a small low request is not held by the bulk lane"
        );
        let medium: Vec<Permit> = (0..4)
            .filter_map(|_| limit.try_acquire(Priority::Medium, bulk, 0.0, true).ok())
            .collect();
        assert_eq!(medium.len(), 4, "medium counts medium and high, against 4 places");
        assert_eq!(
            limit.try_acquire(Priority::Medium, bulk, 0.0, true).unwrap_err(),
            NoRoom::Bulk
        );
        assert!(
            (0..10).all(|_| limit.try_acquire(Priority::High, bulk, 0.0, true).is_ok()),
            "high is held by the limit alone"
        );
        assert_eq!(limit.bulk_counted(Priority::Low), (16.0, 2.0));
        limit.cancel(first);
        assert_eq!(limit.bulk_counted(Priority::Low).0, 15.0);
        assert_eq!(
            limit.try_acquire(Priority::Low, bulk, 0.0, true).unwrap_err(),
            NoRoom::Bulk,
            "low counts the bulk bodies of every priority"
        );
        let mut lone = fixed(4096.0);
        for permit in medium {
            lone.cancel(permit); // permits of another limit: never below zero
        }
        assert!(
            lone.try_acquire(Priority::Low, bulk, 0.0, true).is_ok(),
            "one always fits"
        );
        let mut off = AdaptiveLimit::new(
            LimitConfig {
                bulk_bodies: 0.0,
                ..LimitConfig::default()
            },
            0.0,
            7,
        );
        assert!((0..5).all(|_| off.try_acquire(Priority::Low, bulk, 0.0, true).is_ok()));
    }

    /// One window: `requests` high-priority requests of cost 1, each `seconds` long, all in flight at once.
    fn window(limit: &mut AdaptiveLimit, now: &mut f64, seconds: f64, requests: usize, refusals: usize) {
        let permits: Vec<Permit> = (0..requests)
            .filter_map(|_| limit.try_acquire(Priority::High, 1.0, *now, true).ok())
            .collect();
        for _ in 0..refusals {
            limit.refused();
        }
        *now += seconds.max(WINDOW_S * 1.01);
        for permit in permits {
            let mut permit = permit;
            permit.started = *now - seconds;
            limit.release(permit, *now);
        }
    }

    #[test]
    fn the_bulk_lane_narrows_while_high_suffers_and_holds_longer_when_it_suffers_again_soon_after() {
        let mut limit = fixed(4096.0);
        let mut now = 0.0;
        let places = |limit: &AdaptiveLimit| limit.bulk_counted(Priority::Low).1;
        // Windows of WINDOW_S * 1.01 with 2 high readings each: `seconds` of them.
        let run = |limit: &mut AdaptiveLimit, now: &mut f64, high_ms: f64, seconds: f64| {
            let until = *now + seconds;
            while *now < until {
                window(limit, now, high_ms / 1000.0, 2, 0);
            }
        };
        run(&mut limit, &mut now, 3.0, 10.0);
        assert_eq!(places(&limit), 2.0, "high at its baseline: the lane is wide");
        for _ in 0..30 {
            window(&mut limit, &mut now, 0.003, 2, 0);
            window(&mut limit, &mut now, 0.040, 1, 0);
        }
        assert_eq!(
            places(&limit),
            2.0,
            "one in three ten times slower: a tail, not a flood"
        );
        run(&mut limit, &mut now, 5.0, 10.0);
        assert_eq!(places(&limit), 2.0, "not past twice the baseline: still wide");
        run(&mut limit, &mut now, 12.0, 0.3);
        assert_eq!(places(&limit), 1.0, "high four times slower: one body at a time");
        assert!(
            limit.bulk_lane.base < 0.004,
            "the flood is not the baseline: {}",
            limit.bulk_lane.base
        );
        run(&mut limit, &mut now, 4.0, LANE_HOLD_S - 1.0);
        assert_eq!(places(&limit), 1.0, "high better, but the hold is not over");
        run(&mut limit, &mut now, 4.0, 1.5);
        assert_eq!(places(&limit), 2.0, "the hold over and high well: wide again");
        let widened = now;
        run(&mut limit, &mut now, 12.0, 0.3);
        assert_eq!(places(&limit), 1.0, "high suffers again");
        let left = 2.0 * LANE_HOLD_S - (now - widened) - 0.5;
        run(&mut limit, &mut now, 4.0, left);
        assert_eq!(places(&limit), 1.0, "soon after it widened: the hold doubled");
        run(&mut limit, &mut now, 4.0, 2.0 * LANE_HOLD_S + 1.0);
        assert_eq!(places(&limit), 2.0);
        run(&mut limit, &mut now, 3.0, 4.0 * LANE_HOLD_S);
        run(&mut limit, &mut now, 12.0, 0.3);
        run(&mut limit, &mut now, 3.0, LANE_HOLD_S + 1.0);
        assert_eq!(places(&limit), 2.0, "long after: a new episode, the first hold again");
        let mut never = AdaptiveLimit::new(
            LimitConfig {
                bulk_narrow_at: 0.0,
                ..LimitConfig::default()
            },
            0.0,
            7,
        );
        let mut now = 0.0;
        run(&mut never, &mut now, 3.0, 2.0);
        run(&mut never, &mut now, 30.0, 2.0);
        assert_eq!(places(&never), 2.0, "bulk_narrow_at 0: the lane keeps its width");
    }

    #[test]
    fn the_limit_shrinks_when_requests_slow_down_and_grows_when_used() {
        let config = LimitConfig {
            initial: 64.0,
            minimum: 4.0,
            maximum: 1000.0,
            ..LimitConfig::default()
        };
        let mut limit = AdaptiveLimit::new(config, 0.0, 7);
        let mut now = 0.0;
        window(&mut limit, &mut now, 0.002, 60, 0); // the best seen: 2 ms
        let grown = limit.limit;
        assert!(grown > 64.0, "used and not slowed down: it grows");
        for _ in 0..10 {
            window(&mut limit, &mut now, 0.020, 60, 0); // ten times slower
        }
        assert!(
            limit.limit < grown / 2.0,
            "slowed down: it shrinks: {grown} -> {} ({})",
            limit.limit,
            limit.slowdown
        );
        assert!(limit.slowdown > 2.0);
        assert!((1..=30).contains(&limit.retry_after()));
    }

    #[test]
    fn time_spent_on_refusals_does_not_shrink_the_limit() {
        let config = LimitConfig {
            initial: 64.0,
            minimum: 4.0,
            maximum: 1000.0,
            ..LimitConfig::default()
        };
        let (mut counted, mut excluded) = (
            AdaptiveLimit::new(config.clone(), 0.0, 7),
            AdaptiveLimit::new(config, 0.0, 7),
        );
        let (mut now_a, mut now_b) = (0.0, 0.0);
        for limit in [&mut counted, &mut excluded] {
            // Refusals measured: 50 µs of loop time each (the worker's part; weight 2 makes it 100 µs).
            limit.refusal_answered(0.000_050, 0.0);
            limit.refusal_answered(0.000_400, WINDOW_S); // a refusal that waited is not its cost
        }
        assert!((excluded.refusal_cost - 0.000_050).abs() < 1e-9);
        window(&mut counted, &mut now_a, 0.002, 60, 0);
        window(&mut excluded, &mut now_b, 0.002, 60, 0);
        for _ in 0..10 {
            // Admitted requests now take 20 ms of wall time, 18 ms of it waiting behind 180 refusals.
            window(&mut counted, &mut now_a, 0.020, 60, 0);
            window(&mut excluded, &mut now_b, 0.020, 60, 180);
        }
        assert!(counted.limit < 64.0, "slowed down by what it could not see: it shrinks");
        assert!(
            excluded.slowdown < 2.0,
            "the refusals' time is not the admitted requests': {}",
            excluded.slowdown
        );
        assert!(excluded.limit >= 64.0, "and the limit holds: {}", excluded.limit);
    }

    #[test]
    fn retry_after_follows_the_drain_rate_with_jitter() {
        let mut limit = fixed(10_000.0);
        let mut now = 0.0;
        for _ in 0..5 {
            window(&mut limit, &mut now, 0.1, 100, 0); // 1,000 cost units per second
        }
        let _held: Vec<Permit> = (0..3000)
            .map(|_| limit.try_acquire(Priority::High, 1.0, now, true).unwrap())
            .collect();
        let seen: Vec<u32> = (0..200).map(|_| limit.retry_after()).collect();
        assert!(seen.iter().all(|s| (3..=12).contains(s)), "{seen:?}");
        assert!(seen.iter().min() != seen.iter().max(), "jittered");
    }
}
