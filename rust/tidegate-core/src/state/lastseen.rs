//! Devices' last-seen state, shared by a host's workers and surviving restarts, and the silence detector that
//! reads it: a device not heard from for [`SILENCE_FACTOR`] times its expected interval is *silent*; one
//! `device_silence` alert is raised for it, and one `device_recovered` alert once it speaks again.
//!
//! # The table
//!
//! A [`crate::state::table::Table`] like the dedup window's (flock per call, CRC per slot, torn writes read as empty
//! slots), whose slots carry 12 extra words (128 bytes a slot): the device's last-seen time (the slot's `word`),
//! its learned interval and sample count, the open silence episode and its flags, and the device id itself (up to
//! [`MAX_DEVICE_BYTES`]), so the table can be listed. The request path pays one lock and one slot write per device
//! of an accepted request ([`LastSeenTable::seen`]). A device unheard for `forget_after_ms` is forgotten (its slot
//! is free); past the capacity the device unheard for longest is.
//!
//! # Learning the interval
//!
//! An exponentially weighted mean (weight 1/4) of inter-arrival times. Arrivals closer than `min_interval_ms` to
//! the previous one are a burst (retries, a batch split over requests) and teach nothing; a sample is capped at
//! four times the current mean, so one outage does not inflate it; the gap that ends a silence episode is an
//! outage and teaches nothing. A configured interval (per device id or id prefix) wins over the learned one;
//! with fewer than [`MIN_SAMPLES`] samples, the interval is at least `default_interval_ms`.
//!
//! # Exactly one alert, across workers, crashes and restarts
//!
//! One detector at a time (the caller holds a lock) calls [`LastSeenTable::detect`], which records the decision
//! in the slot before anything is sent (the episode: the last-seen time the silence started from), then returns
//! the alerts due. The caller makes their records durable and then calls [`LastSeenTable::confirm`], which marks
//! them sent. A detector that dies in between leaves the slot saying what is still due, and the next detector
//! raises it again, with the same event id ([`Alert::event_id`] depends on the device, the kind and the episode
//! only), which the dedup window then drops if the first copy was durable. A device that speaks while an episode
//! is open only sets a flag; the detector raises the recovery. Since the state is in the shared table, a restart
//! or another worker never raises an alert twice, and nothing is forgotten.

use std::io;
use std::path::Path;

use crate::canonical::id::Id;
use crate::canonical::records::{Records, encode_header, hex};
use crate::state::table::{Slot, Table, to_word};

/// A device is silent once unheard for this many times its expected interval.
pub const SILENCE_FACTOR: i64 = 3;
/// Learned samples below which a device's interval is at least the default one.
pub const MIN_SAMPLES: u32 = 3;
/// The longest device id the table holds (the telemetry contract's limit); longer ones are not tracked.
pub const MAX_DEVICE_BYTES: usize = 64;
/// The schema header of alert records.
pub const ALERT_SCHEMA: &str = "device-alert/v1";

const KIND_LAST_SEEN: u64 = 3;
const EXTRA_WORDS: usize = 12;
// Extra words of a slot.
/// Learned interval in ms (low 32 bits) and samples learned from (high 32 bits).
const X_INTERVAL: usize = 0;
/// The last-seen time the open silence episode started from; 0 when none is open.
const X_EPISODE: usize = 1;
const X_FLAGS: usize = 2;
/// Eight words: the device id, zero-padded (its length is the slot's `aux`).
const X_NAME: usize = 4;
/// The episode's `device_silence` record is durable.
const SENT: u64 = 1;
/// The device spoke since the episode started: a `device_recovered` is due.
const SPOKE: u64 = 2;
/// Slots read under one hold of the lock by a scan, so requests never wait for a whole table.
const SCAN_CHUNK: usize = 1024;

/// How a device's expected interval is found.
#[derive(Clone, Debug)]
pub struct SilenceRules {
    /// The interval of a device with too little history (fewer than [`MIN_SAMPLES`] samples): a floor then.
    pub default_interval_ms: i64,
    /// The floor of learned intervals; arrivals closer than this are bursts.
    pub min_interval_ms: i64,
    /// Configured intervals by device id prefix (a whole id is its own longest prefix); the longest match wins.
    intervals: Vec<(String, i64)>,
    /// A device unheard for this long is forgotten.
    pub forget_after_ms: i64,
}

impl SilenceRules {
    pub fn new(
        default_interval_ms: i64,
        min_interval_ms: i64,
        mut intervals: Vec<(String, i64)>,
        forget_after_ms: i64,
    ) -> SilenceRules {
        intervals.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        SilenceRules {
            default_interval_ms: default_interval_ms.max(1),
            min_interval_ms: min_interval_ms.max(1),
            intervals,
            forget_after_ms: forget_after_ms.max(1),
        }
    }

    /// The interval configured for `device` (longest matching prefix), if any.
    pub fn configured_ms(&self, device: &str) -> Option<i64> {
        self.intervals
            .iter()
            .find(|(prefix, _)| device.starts_with(prefix.as_str()))
            .map(|&(_, interval)| interval.max(1))
    }

    /// The expected interval of `device` with the given learned interval and samples.
    pub fn interval_ms(&self, device: &str, learned_ms: i64, samples: u32) -> i64 {
        match self.configured_ms(device) {
            Some(configured) => configured,
            None if samples >= MIN_SAMPLES => learned_ms.max(self.min_interval_ms),
            None => learned_ms.max(self.default_interval_ms),
        }
    }
}

/// One device as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    pub device: String,
    pub last_seen_ms: i64,
    /// The expected interval ([`SilenceRules::interval_ms`]).
    pub interval_ms: i64,
    pub learned_ms: i64,
    pub samples: u32,
    /// A `device_silence` alert was raised and no `device_recovered` yet.
    pub alerted: bool,
}

impl DeviceState {
    /// How long the device may stay unheard before it is silent.
    pub fn threshold_ms(&self) -> i64 {
        self.interval_ms.saturating_mul(SILENCE_FACTOR)
    }

    /// The one rule for the list, the gauge and the detector.
    pub fn silent_at(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) >= self.threshold_ms()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    Silence,
    Recovered,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Silence => "device_silence",
            AlertKind::Recovered => "device_recovered",
        }
    }
}

/// An alert due, from [`LastSeenTable::detect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub device: String,
    /// The last-seen time the silence started from.
    pub episode_ms: i64,
    /// The device's last-seen time when the alert was decided (for a recovery: when it spoke again).
    pub last_seen_ms: i64,
    pub interval_ms: i64,
    pub detected_ms: i64,
}

const ALERT_DOMAIN: &str = "tidegate:device-alert:v1\n";

impl Alert {
    /// Depends on the kind, the device and the episode only: raising an alert again yields the same id.
    pub fn event_id(&self) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(ALERT_DOMAIN.as_bytes());
        hasher.update(self.kind.name().as_bytes());
        hasher.update(b"\n");
        hasher.update(self.device.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.episode_ms.to_string().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        id
    }

    /// The record's value: canonical JSON (sorted keys), times in RFC 3339, durations in seconds.
    pub fn value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"{\"alert\":\"");
        out.extend_from_slice(self.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"detected_at\":");
        write_time(&mut out, self.detected_ms);
        out.extend_from_slice(b",\"device_id\":");
        crate::canonical::write_string(&mut out, &self.device);
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(hex(&self.event_id()).as_bytes());
        out.extend_from_slice(b"\",\"expected_interval_s\":");
        write_seconds(&mut out, self.interval_ms);
        out.extend_from_slice(b",\"last_seen\":");
        write_time(&mut out, self.last_seen_ms);
        match self.kind {
            AlertKind::Silence => {
                out.extend_from_slice(b",\"silent_for_s\":");
                write_seconds(&mut out, self.detected_ms - self.last_seen_ms);
            }
            AlertKind::Recovered => {
                out.extend_from_slice(b",\"silent_for_s\":");
                write_seconds(&mut out, self.last_seen_ms - self.episode_ms);
                out.extend_from_slice(b",\"silent_since\":");
                write_time(&mut out, self.episode_ms);
            }
        }
        out.extend_from_slice(b",\"threshold_s\":");
        write_seconds(&mut out, self.interval_ms.saturating_mul(SILENCE_FACTOR));
        out.push(b'}');
        out
    }

    /// Appends the alert's record to `records` for `topic`: key the device id, the value above, headers `event_id`,
    /// `content-type` and `schema`.
    pub fn push_record(&self, records: &mut Records, topic: &str) {
        let event_id = self.event_id();
        records.push_with(
            topic,
            Some(self.device.as_bytes()),
            event_id,
            self.detected_ms,
            |out| out.extend_from_slice(&self.value()),
            |out| {
                encode_header(out, "event_id", hex(&event_id).as_bytes());
                encode_header(out, "content-type", b"application/json");
                encode_header(out, "schema", ALERT_SCHEMA.as_bytes());
            },
        );
    }
}

fn write_time(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    crate::decode::time::write_millis(out, ms);
    out.push(b'"');
}

fn write_seconds(out: &mut Vec<u8>, ms: i64) {
    let seconds = ms.max(0) as f64 / 1000.0;
    out.extend_from_slice(seconds.to_string().as_bytes());
}

/// The silent devices at one instant, sorted by device id, for the list endpoint and the gauge.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub taken_ms: i64,
    /// Devices the table holds.
    pub tracked: usize,
    pub silent: Vec<DeviceState>,
}

impl Snapshot {
    /// Up to `limit` silent devices whose id sorts after `after`, and the cursor of the next page (the last id
    /// returned) when more follow.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (&[DeviceState], Option<&str>) {
        let start = after.map_or(0, |after| self.silent.partition_point(|d| d.device.as_str() <= after));
        let end = start.saturating_add(limit).min(self.silent.len());
        let page = &self.silent[start..end];
        let next = if end < self.silent.len() {
            page.last().map(|d| d.device.as_str())
        } else {
            None
        };
        (page, next)
    }
}

/// The devices' last-seen state shared by a host's workers (see the module).
pub struct LastSeenTable {
    table: Table,
    rules: SilenceRules,
}

fn decode_name(slot: &Slot) -> Option<String> {
    let mut bytes = [0u8; MAX_DEVICE_BYTES];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(&slot.extra[X_NAME..]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let len = (slot.aux as usize).min(MAX_DEVICE_BYTES);
    String::from_utf8(bytes[..len].to_vec()).ok()
}

fn encode_name(slot: &mut Slot, device: &str) {
    let mut bytes = [0u8; MAX_DEVICE_BYTES];
    bytes[..device.len()].copy_from_slice(device.as_bytes());
    for (word, chunk) in slot.extra[X_NAME..].iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
    }
    slot.aux = device.len() as u32;
}

fn learned(slot: &Slot) -> (i64, u32) {
    let word = slot.extra[X_INTERVAL];
    (i64::from(word as u32), (word >> 32) as u32)
}

fn set_learned(slot: &mut Slot, learned_ms: i64, samples: u32) {
    let learned_ms = learned_ms.clamp(0, i64::from(u32::MAX)) as u64;
    slot.extra[X_INTERVAL] = learned_ms | u64::from(samples) << 32;
}

impl LastSeenTable {
    /// Opens the table shared through the file at `path` (`None`: one in this process's memory) for up to
    /// `capacity` devices.
    pub fn open(path: Option<&Path>, capacity: usize, rules: SilenceRules) -> io::Result<LastSeenTable> {
        let table = match path {
            Some(path) => Table::open_with(path, capacity, KIND_LAST_SEEN, EXTRA_WORDS)?,
            None => Table::in_memory_with(capacity, KIND_LAST_SEEN, EXTRA_WORDS)?,
        };
        Ok(LastSeenTable { table, rules })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn rules(&self) -> &SilenceRules {
        &self.rules
    }

    /// The id of a device's slot.
    pub fn device_id(device: &str) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"tidegate:device-last-seen:v1\n");
        hasher.update(device.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        id
    }

    /// Slots whose device was heard after this are live.
    fn live_after(&self, now_ms: i64) -> u64 {
        to_word(now_ms.saturating_sub(self.rules.forget_after_ms))
    }

    fn state_of(&self, slot: &Slot) -> Option<DeviceState> {
        let device = decode_name(slot)?;
        let (learned_ms, samples) = learned(slot);
        let episode = slot.extra[X_EPISODE];
        Some(DeviceState {
            interval_ms: self.rules.interval_ms(&device, learned_ms, samples),
            device,
            last_seen_ms: slot.word as i64,
            learned_ms,
            samples,
            alerted: episode != 0 && slot.extra[X_FLAGS] & SENT != 0,
        })
    }

    /// Records that `devices` were heard at `now_ms` (an accepted request): one lock, one slot write each.
    pub fn seen<S: AsRef<str>>(&self, devices: &[S], now_ms: i64) -> io::Result<()> {
        let locked = self.table.lock()?;
        let live_after = self.live_after(now_ms);
        let now = to_word(now_ms);
        for device in devices {
            let device = device.as_ref();
            if device.is_empty() || device.len() > MAX_DEVICE_BYTES {
                continue;
            }
            let id = LastSeenTable::device_id(device);
            let probe = locked.probe(&id, live_after);
            let Some((index, mut slot)) = probe.found else {
                let mut slot = Slot::new(id, now, 0);
                encode_name(&mut slot, device);
                locked.insert(&probe, slot);
                continue;
            };
            let gap = now_ms.saturating_sub(slot.word as i64);
            if slot.extra[X_EPISODE] != 0 {
                // The gap was an outage: it teaches nothing, and the detector raises the recovery.
                slot.extra[X_FLAGS] |= SPOKE;
            } else if gap >= self.rules.min_interval_ms {
                let (learned_ms, samples) = learned(&slot);
                let sample = if samples == 0 {
                    gap
                } else {
                    gap.min(learned_ms.saturating_mul(4))
                };
                let updated = if samples == 0 {
                    sample
                } else {
                    learned_ms + (sample - learned_ms) / 4
                };
                set_learned(&mut slot, updated, samples.saturating_add(1));
            }
            slot.word = slot.word.max(now);
            locked.write(index, slot);
        }
        Ok(())
    }

    /// One device's state, if the table holds it.
    pub fn state(&self, device: &str, now_ms: i64) -> io::Result<Option<DeviceState>> {
        let locked = self.table.lock()?;
        let probe = locked.probe(&LastSeenTable::device_id(device), self.live_after(now_ms));
        Ok(probe.found.and_then(|(_, slot)| self.state_of(&slot)))
    }

    /// Visits every live slot, a chunk of slots per hold of the lock; `visit` may rewrite the slot.
    fn scan(&self, now_ms: i64, mut visit: impl FnMut(&mut Slot, DeviceState) -> bool) -> io::Result<()> {
        let live_after = self.live_after(now_ms);
        let slots = self.table.slot_count();
        let mut start = 0;
        while start < slots {
            let end = (start + SCAN_CHUNK).min(slots);
            let locked = self.table.lock()?;
            for index in start..end {
                let Some(mut slot) = locked.read(index) else {
                    continue;
                };
                if slot.word <= live_after {
                    continue;
                }
                if let Some(state) = self.state_of(&slot)
                    && visit(&mut slot, state)
                {
                    locked.write(index, slot);
                }
            }
            start = end;
        }
        Ok(())
    }

    /// The silent devices at `now_ms` (reads the whole table, off the request path).
    pub fn snapshot(&self, now_ms: i64) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot {
            taken_ms: now_ms,
            ..Snapshot::default()
        };
        self.scan(now_ms, |_, state| {
            snapshot.tracked += 1;
            if state.silent_at(now_ms) {
                snapshot.silent.push(state);
            }
            false
        })?;
        snapshot.silent.sort_unstable_by(|a, b| a.device.cmp(&b.device));
        Ok(snapshot)
    }

    /// The detector's scan (one detector at a time): opens an episode for each device silent at `now_ms` that
    /// has none, and returns every alert due, silences before recoveries. `since_ms` is when the detector
    /// started: a device is not alerted for a silence that began while nothing was listening (a device unheard
    /// while the service was down), only once it stays silent for its threshold after that. At most about
    /// `max_alerts` are returned (a whole fleet falling silent at once is raised over several scans): the devices
    /// beyond them are left as they are, for the next scan.
    pub fn detect(&self, now_ms: i64, since_ms: i64, max_alerts: usize) -> io::Result<Vec<Alert>> {
        let mut alerts = Vec::new();
        self.scan(now_ms, |slot, state| {
            if alerts.len() >= max_alerts {
                return false;
            }
            let alert = |kind, episode_ms| Alert {
                kind,
                device: state.device.clone(),
                episode_ms,
                last_seen_ms: if kind == AlertKind::Silence {
                    episode_ms
                } else {
                    state.last_seen_ms
                },
                interval_ms: state.interval_ms,
                detected_ms: now_ms,
            };
            let episode = slot.extra[X_EPISODE] as i64;
            if episode == 0 {
                let silent_from = state.last_seen_ms.max(since_ms);
                if now_ms.saturating_sub(silent_from) < state.threshold_ms() {
                    return false;
                }
                slot.extra[X_EPISODE] = state.last_seen_ms as u64;
                slot.extra[X_FLAGS] = 0;
                alerts.push(alert(AlertKind::Silence, state.last_seen_ms));
                return true;
            }
            let flags = slot.extra[X_FLAGS];
            if flags & SENT == 0 {
                alerts.push(alert(AlertKind::Silence, episode));
            }
            if flags & SPOKE != 0 {
                alerts.push(alert(AlertKind::Recovered, episode));
            }
            false
        })?;
        Ok(alerts)
    }

    /// Marks `alerts` (from [`LastSeenTable::detect`]) sent, once their records are durable: a silence stays
    /// open until its recovery is sent, which closes the episode.
    pub fn confirm(&self, alerts: &[Alert]) -> io::Result<()> {
        let locked = self.table.lock()?;
        for alert in alerts {
            let probe = locked.probe(&LastSeenTable::device_id(&alert.device), 0);
            let Some((index, mut slot)) = probe.found else {
                continue;
            };
            if slot.extra[X_EPISODE] != alert.episode_ms as u64 {
                continue;
            }
            match alert.kind {
                AlertKind::Silence => slot.extra[X_FLAGS] |= SENT,
                AlertKind::Recovered => {
                    slot.extra[X_EPISODE] = 0;
                    slot.extra[X_FLAGS] = 0;
                }
            }
            locked.write(index, slot);
        }
        Ok(())
    }
}

/// The records of `alerts` for `topic`, in order.
pub fn alert_records(alerts: &[Alert], topic: &str) -> Records {
    let mut records = Records::new();
    for alert in alerts {
        alert.push_record(&mut records, topic);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;
    const T0: i64 = 1_800_000_000_000;

    fn rules() -> SilenceRules {
        SilenceRules::new(
            60 * SECOND,
            SECOND,
            vec![("fast-".into(), 300), ("fast-slow".into(), 10 * SECOND)],
            86_400 * SECOND,
        )
    }

    fn temp_path(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        crate::state::temp_table_path(&format!("lastseen-{name}"), "devices.tbl")
    }

    fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, &str)> {
        alerts.iter().map(|a| (a.kind, a.device.as_str())).collect()
    }

    #[test]
    fn learns_the_interval_ignoring_bursts_and_outages() {
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        let mut now = T0;
        table.seen(&["d"], now).unwrap();
        let state = table.state("d", now).unwrap().unwrap();
        assert_eq!(
            (state.samples, state.interval_ms),
            (0, 60 * SECOND),
            "no history: the default"
        );
        for _ in 0..10 {
            now += 10 * SECOND;
            // Each reading retried twice within a few ms: a burst, not an interval.
            table.seen(&["d"], now).unwrap();
            table.seen(&["d"], now + 5).unwrap();
            table.seen(&["d"], now + 20).unwrap();
        }
        let state = table.state("d", now).unwrap().unwrap();
        assert_eq!(state.samples, 10);
        assert!((9_900..=10_100).contains(&state.interval_ms), "{state:?}");
        assert_eq!(state.last_seen_ms, now + 20);
        // One long gap moves the mean by at most (4x - 1x) / 4.
        now += 3600 * SECOND;
        table.seen(&["d"], now).unwrap();
        let state = table.state("d", now).unwrap().unwrap();
        assert!(state.interval_ms <= 17_600, "{state:?}");
    }

    #[test]
    fn configured_intervals_win_longest_prefix_first() {
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        table.seen(&["fast-1", "fast-slow-1", "other"], T0).unwrap();
        let interval = |d: &str| table.state(d, T0).unwrap().unwrap().interval_ms;
        assert_eq!(interval("fast-1"), 300);
        assert_eq!(interval("fast-slow-1"), 10 * SECOND);
        assert_eq!(interval("other"), 60 * SECOND);
    }

    #[test]
    fn one_silence_and_one_recovery_per_episode() {
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        table.seen(&["fast-a", "fast-b"], T0).unwrap();
        assert!(
            table.detect(T0 + 899, T0, usize::MAX).unwrap().is_empty(),
            "not yet 3x 300 ms"
        );
        table.seen(&["fast-b"], T0 + 800).unwrap();
        let alerts = table.detect(T0 + 900, T0, usize::MAX).unwrap();
        assert_eq!(kinds(&alerts), [(AlertKind::Silence, "fast-a")]);
        assert_eq!(alerts[0].episode_ms, T0);
        // Not confirmed (the detector died before its record was durable): raised again, with the same id.
        let again = table.detect(T0 + 1000, T0, usize::MAX).unwrap();
        assert_eq!(
            again,
            [Alert {
                detected_ms: T0 + 1000,
                ..alerts[0].clone()
            }]
        );
        assert_eq!(again[0].event_id(), alerts[0].event_id());
        table.confirm(&again).unwrap();
        assert!(
            table
                .detect(T0 + 5000, T0, usize::MAX)
                .unwrap()
                .iter()
                .all(|a| a.device != "fast-a"),
            "sent once"
        );
        let snapshot = table.snapshot(T0 + 5000).unwrap();
        assert!(snapshot.silent.iter().any(|d| d.device == "fast-a" && d.alerted));
        table.seen(&["fast-a"], T0 + 6000).unwrap();
        table.seen(&["fast-a"], T0 + 6100).unwrap();
        let alerts = table.detect(T0 + 6200, T0, usize::MAX).unwrap();
        let recovered: Vec<_> = alerts.iter().filter(|a| a.device == "fast-a").collect();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].kind, AlertKind::Recovered);
        assert_eq!((recovered[0].episode_ms, recovered[0].last_seen_ms), (T0, T0 + 6100));
        assert_ne!(recovered[0].event_id(), alerts[0].event_id());
        table.confirm(&alerts).unwrap();
        assert!(
            table
                .detect(T0 + 6300, T0, usize::MAX)
                .unwrap()
                .iter()
                .all(|a| a.device != "fast-a")
        );
        let state = table.state("fast-a", T0 + 6300).unwrap().unwrap();
        assert!(!state.alerted);
        // The outage taught nothing: the next silence is a new episode with a new id.
        let next = table.detect(T0 + 6100 + 900, T0, usize::MAX).unwrap();
        let next: Vec<_> = next.iter().filter(|a| a.device == "fast-a").collect();
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].kind, next[0].episode_ms), (AlertKind::Silence, T0 + 6100));
    }

    #[test]
    fn speaking_before_the_silence_is_confirmed_still_pairs_the_alerts() {
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        table.seen(&["fast-a"], T0).unwrap();
        let silence = table.detect(T0 + 1000, T0, usize::MAX).unwrap();
        table.seen(&["fast-a"], T0 + 1100).unwrap();
        table.confirm(&silence).unwrap();
        let alerts = table.detect(T0 + 1200, T0, usize::MAX).unwrap();
        assert_eq!(kinds(&alerts), [(AlertKind::Recovered, "fast-a")]);
        // Died before confirming the silence, and the device spoke: both are due again, in order.
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        table.seen(&["fast-a"], T0).unwrap();
        table.detect(T0 + 1000, T0, usize::MAX).unwrap();
        table.seen(&["fast-a"], T0 + 1100).unwrap();
        let alerts = table.detect(T0 + 1200, T0, usize::MAX).unwrap();
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::Silence, "fast-a"), (AlertKind::Recovered, "fast-a")]
        );
    }

    #[test]
    fn no_alert_for_a_silence_older_than_the_detector() {
        let table = LastSeenTable::open(None, 100, rules()).unwrap();
        table.seen(&["fast-a"], T0).unwrap();
        let started = T0 + 60 * SECOND;
        assert!(table.detect(started + 899, started, usize::MAX).unwrap().is_empty());
        assert_eq!(table.detect(started + 900, started, usize::MAX).unwrap().len(), 1);
        assert_eq!(
            table.snapshot(started).unwrap().silent.len(),
            1,
            "the list shows the truth"
        );
    }

    #[test]
    fn survives_reopening_and_is_shared_by_every_mapping() {
        let (_dir, path) = temp_path("reopen");
        let a = LastSeenTable::open(Some(&path), 100, rules()).unwrap();
        let b = LastSeenTable::open(Some(&path), 100, rules()).unwrap();
        a.seen(&["fast-a"], T0).unwrap();
        b.seen(&["fast-a"], T0 + 400).unwrap();
        let alerts = b.detect(T0 + 1300, T0, usize::MAX).unwrap();
        b.confirm(&alerts).unwrap();
        assert!(
            a.detect(T0 + 1400, T0, usize::MAX).unwrap().is_empty(),
            "the other mapping knows it was sent"
        );
        drop((a, b));
        let again = LastSeenTable::open(Some(&path), 100, rules()).unwrap();
        assert!(!again.table().is_fresh());
        let state = again.state("fast-a", T0 + 2000).unwrap().unwrap();
        assert_eq!((state.last_seen_ms, state.alerted), (T0 + 400, true));
        assert!(
            again.detect(T0 + 2000, T0 + 2000, usize::MAX).unwrap().is_empty(),
            "no second alert after a restart"
        );
    }

    #[test]
    fn snapshot_pages_by_device_id() {
        let table = LastSeenTable::open(None, 1000, rules()).unwrap();
        let devices: Vec<String> = (0..25).map(|i| format!("fast-{i:02}")).collect();
        table.seen(&devices, T0).unwrap();
        table.seen(&["fast-active"], T0 + 5000).unwrap();
        let snapshot = table.snapshot(T0 + 5000).unwrap();
        assert_eq!((snapshot.tracked, snapshot.silent.len()), (26, 25));
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (page, next) = snapshot.page(cursor.as_deref(), 10);
            seen.extend(page.iter().map(|d| d.device.clone()));
            match next {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, devices);
        assert_eq!(snapshot.page(Some("fast-24"), 10), (&[][..], None));
    }

    #[test]
    fn a_fleet_falling_silent_at_once_is_raised_over_several_scans() {
        let table = LastSeenTable::open(None, 1000, rules()).unwrap();
        let devices: Vec<String> = (0..25).map(|i| format!("fast-{i:02}")).collect();
        table.seen(&devices, T0).unwrap();
        let mut raised = Vec::new();
        for scan in 1..=4 {
            let alerts = table.detect(T0 + 1000 + scan, T0, 10).unwrap();
            assert!(alerts.len() <= 10);
            table.confirm(&alerts).unwrap();
            raised.extend(alerts.into_iter().map(|a| a.device));
        }
        raised.sort();
        assert_eq!(raised, devices, "each once");
    }

    #[test]
    fn forgets_devices_unheard_for_too_long_and_skips_ids_it_cannot_hold() {
        let rules = SilenceRules::new(60 * SECOND, SECOND, vec![], 10 * SECOND);
        let table = LastSeenTable::open(None, 100, rules).unwrap();
        let long = "x".repeat(MAX_DEVICE_BYTES + 1);
        table.seen(&["old", long.as_str()], T0).unwrap();
        assert!(table.state("old", T0 + 9 * SECOND).unwrap().is_some());
        assert!(table.state(&long, T0).unwrap().is_none());
        assert_eq!(table.snapshot(T0 + 10 * SECOND).unwrap().tracked, 0);
        assert!(table.detect(T0 + 3600 * SECOND, T0, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn alert_records_are_canonical_json_keyed_by_device() {
        let alert = Alert {
            kind: AlertKind::Recovered,
            device: "dev-1".into(),
            episode_ms: T0,
            last_seen_ms: T0 + 2500,
            interval_ms: 300,
            detected_ms: T0 + 2600,
        };
        let records = alert_records(std::slice::from_ref(&alert), "device-alerts");
        let record = records.get(0).unwrap();
        assert_eq!((record.topic, record.key), ("device-alerts", Some(&b"dev-1"[..])));
        let value = std::str::from_utf8(record.value).unwrap();
        assert!(
            value.starts_with(r#"{"alert":"device_recovered","detected_at":"2027-01-15T08:00:02.600Z""#),
            "{value}"
        );
        assert!(
            value.contains(r#""silent_for_s":2.5,"silent_since":"2027-01-15T08:00:00.000Z","threshold_s":0.9}"#),
            "{value}"
        );
        let headers: Vec<_> = record.headers().map(|(name, _)| name).collect();
        assert_eq!(headers, ["event_id", "content-type", "schema"]);
        assert_eq!(record.event_id, alert.event_id());
    }
}
