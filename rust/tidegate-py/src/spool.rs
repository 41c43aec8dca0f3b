use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tidegate_core::canonical::id::Id;
use tidegate_core::canonical::records::hex;
use tidegate_core::spool::group_commit::GroupCommitter;
use tidegate_core::spool::{COMMIT_SECONDS_BOUNDS, Cursor, Spool as CoreSpool, SpoolError, SpoolOptions};
use tidegate_core::state::dedup;
use tidegate_core::state::table::{self, RateTable as CoreRateTable, SharedWindow};

use crate::Records;
use crate::errors;

pub(crate) fn spool_error(error: SpoolError) -> PyErr {
    Python::attach(|py| errors::to_py(py, error))
}

#[pyclass(frozen, module = "tidegate._native")]
pub struct Spool {
    pub(crate) inner: Arc<CoreSpool>,
    /// The reader's last position, so sequential reads do not rescan a segment.
    cursor: Mutex<Option<Cursor>>,
}

impl Spool {
    /// `read` without the GIL's part, also for `read_kafka_range` (reading and encoding in one native call).
    pub(crate) fn read_records(
        &self,
        seq: u64,
        max_records: u64,
        max_bytes: usize,
        durable_only: bool,
    ) -> Result<(tidegate_core::Records, u64), SpoolError> {
        let cached = *self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cursor = cached
            .filter(|c| c.seq == seq)
            .unwrap_or_else(|| self.inner.cursor_at(seq));
        let limit = if durable_only {
            self.inner.durable_seq()
        } else {
            u64::MAX
        };
        let (records, next) = self.inner.read(cursor, max_records, max_bytes, limit)?;
        *self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(next);
        Ok((records, next.seq))
    }
}

/// The core's options from the Python arguments (`retention_seconds` in seconds).
fn spool_options(segment_bytes: u64, quota_bytes: u64, retention_seconds: f64) -> SpoolOptions {
    SpoolOptions {
        segment_bytes,
        quota_bytes,
        retention: Duration::from_secs_f64(retention_seconds),
    }
}

#[pymethods]
impl Spool {
    #[new]
    #[pyo3(signature = (path, *, segment_bytes = 67_108_864, quota_bytes = 1_073_741_824, retention_seconds = 3600.0))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        segment_bytes: u64,
        quota_bytes: u64,
        retention_seconds: f64,
    ) -> PyResult<Spool> {
        let options = spool_options(segment_bytes, quota_bytes, retention_seconds);
        let inner = py.detach(|| CoreSpool::open(&path, options)).map_err(spool_error)?;
        Ok(Spool {
            inner: Arc::new(inner),
            cursor: Mutex::new(None),
        })
    }

    /// Opens a spool another process may be writing, only to read it.
    #[staticmethod]
    fn open_read_only(py: Python<'_>, path: PathBuf) -> PyResult<Spool> {
        let inner = py.detach(|| CoreSpool::open_read_only(&path)).map_err(spool_error)?;
        Ok(Spool {
            inner: Arc::new(inner),
            cursor: Mutex::new(None),
        })
    }

    /// Opens the spool a worker process writes, to deliver it (see the core's `Spool::open_for_delivery`).
    #[staticmethod]
    fn open_for_delivery(py: Python<'_>, path: PathBuf) -> PyResult<Spool> {
        let inner = py.detach(|| CoreSpool::open_for_delivery(&path)).map_err(spool_error)?;
        Ok(Spool {
            inner: Arc::new(inner),
            cursor: Mutex::new(None),
        })
    }

    /// What the delivery process last saw the broker acknowledge (every record below it).
    #[getter]
    fn delivered_seq(&self) -> u64 {
        self.inner.delivered_seq()
    }

    /// `(durable, delivered)` as published in the spool directory `path` by its writer and the delivery process,
    /// read without opening the spool (another worker's, say).
    #[staticmethod]
    fn published_progress(py: Python<'_>, path: PathBuf) -> (u64, u64) {
        py.detach(|| tidegate_core::spool::published_progress(&path))
    }

    /// The delivery process's checkpoint in the spool directory `path`, read without opening the spool.
    #[staticmethod]
    fn read_acked(py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        py.detach(|| tidegate_core::spool::read_checkpoint(&path))
            .map_err(spool_error)
    }

    /// `cleanup_below` for a spool no process writes, from its files alone (see the core's `cleanup_unwritten`).
    #[staticmethod]
    #[pyo3(signature = (path, horizon, *, quota_bytes, retention_seconds))]
    fn cleanup_unwritten(
        py: Python<'_>,
        path: PathBuf,
        horizon: u64,
        quota_bytes: u64,
        retention_seconds: f64,
    ) -> PyResult<usize> {
        let options = spool_options(SpoolOptions::default().segment_bytes, quota_bytes, retention_seconds);
        py.detach(|| tidegate_core::spool::cleanup_unwritten(&path, horizon, &options))
            .map_err(spool_error)
    }

    fn publish_delivered(&self, seq: u64) -> PyResult<()> {
        self.inner.publish_delivered(seq).map_err(spool_error)
    }

    fn refresh_acked(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.refresh_acked()).map_err(spool_error)
    }

    fn append(&self, py: Python<'_>, records: PyRef<'_, Records>) -> PyResult<u64> {
        let records = &records.0;
        py.detach(|| self.inner.append(records)).map_err(spool_error)
    }

    fn commit(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.commit()).map_err(spool_error)
    }

    /// Starts a committer thread for this spool (see `GroupCommit`).
    #[pyo3(signature = (window_ms = 1.0))]
    fn group_commit(&self, window_ms: f64) -> PyResult<GroupCommit> {
        let window = Duration::from_secs_f64(window_ms.max(0.0) / 1000.0);
        let committer = GroupCommitter::start(Arc::clone(&self.inner), window).map_err(errors::io_error)?;
        Ok(GroupCommit(committer))
    }

    #[pyo3(signature = (records, window_ms = 2.0))]
    fn append_durable(&self, py: Python<'_>, records: PyRef<'_, Records>, window_ms: f64) -> PyResult<u64> {
        let records = &records.0;
        let window = Duration::from_secs_f64(window_ms / 1000.0);
        py.detach(|| self.inner.append_durable(records, window))
            .map_err(spool_error)
    }

    fn ack(&self, py: Python<'_>, seq: u64) -> PyResult<()> {
        py.detach(|| self.inner.ack(seq)).map_err(spool_error)
    }

    /// Whether the last write or fsync failed and no new segment could be started since.
    #[getter]
    fn failing(&self) -> bool {
        self.inner.is_failing()
    }

    /// Why the delivery checkpoint could not be read when the spool was opened (delivery then restarted from the
    /// oldest record on disk), or None.
    #[getter]
    fn checkpoint_error(&self) -> Option<String> {
        self.inner.stats().recovery.checkpoint_error
    }

    /// After a failure, tries to start a new segment now; returns whether the spool can write.
    fn recover(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.recover())
    }

    /// Makes the next `count` writes fail as on a full disk (fault injection, see the core).
    fn inject_write_failures(&self, count: u32) {
        self.inner.inject_write_failures(count);
    }

    /// Makes every commit's fsync start `delay_ms` late, as on a disk that stalls, until 0 (fault injection, see
    /// the core).
    fn inject_commit_delay(&self, delay_ms: u64) {
        self.inner.inject_commit_delay(delay_ms);
    }

    #[pyo3(signature = (horizon = None))]
    fn cleanup(&self, py: Python<'_>, horizon: Option<u64>) -> PyResult<usize> {
        py.detach(|| match horizon {
            Some(horizon) => self.inner.cleanup_below(horizon),
            None => self.inner.cleanup(),
        })
        .map_err(spool_error)
    }

    #[pyo3(signature = (seq, max_records = 10_000, max_bytes = 4_194_304, durable_only = true))]
    fn read(
        &self,
        py: Python<'_>,
        seq: u64,
        max_records: u64,
        max_bytes: usize,
        durable_only: bool,
    ) -> PyResult<(Records, u64)> {
        let (records, next) = py
            .detach(|| self.read_records(seq, max_records, max_bytes, durable_only))
            .map_err(spool_error)?;
        Ok((Records(records), next))
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    #[getter]
    fn durable_seq(&self) -> u64 {
        self.inner.durable_seq()
    }

    #[getter]
    fn acked_seq(&self) -> u64 {
        self.inner.acked_seq()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let out = PyDict::new(py);
        out.set_item("segments", stats.segments)?;
        out.set_item("bytes", stats.bytes)?;
        out.set_item("quota_bytes", stats.quota_bytes)?;
        out.set_item("next_seq", stats.next_seq)?;
        out.set_item("durable_seq", stats.durable_seq)?;
        out.set_item("acked_seq", stats.acked_seq)?;
        out.set_item("lag_records", stats.next_seq - stats.acked_seq.min(stats.next_seq))?;
        out.set_item("fsyncs", stats.fsyncs)?;
        out.set_item("appended_records", stats.appended_records)?;
        out.set_item("unreadable_records", stats.unreadable_records)?;
        out.set_item("failed_commits", stats.failed_commits)?;
        out.set_item("removed_segments", stats.removed_segments)?;
        out.set_item("recovered_records", stats.recovery.records)?;
        out.set_item("truncated_bytes", stats.recovery.truncated_bytes)?;
        Ok(out)
    }

    /// The commits' times as a histogram: (bucket upper bounds in seconds, count per bucket then +Inf, sum of
    /// seconds).
    fn commit_times(&self) -> (Vec<f64>, Vec<u64>, f64) {
        let times = self.inner.stats().commit_times;
        (
            COMMIT_SECONDS_BOUNDS.to_vec(),
            times.counts.to_vec(),
            times.sum_nanos as f64 / 1e9,
        )
    }
}

fn parse_id(text: &str) -> PyResult<Id> {
    let bad = || PyValueError::new_err(format!("not a 32-digit hex event id: {text:?}"));
    if text.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(id)
}

fn seconds_to_ms(seconds: f64) -> i64 {
    (seconds * 1000.0) as i64
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The dedup window shared by a host's workers (see the core's `state::table::SharedWindow`).
#[pyclass(frozen, module = "tidegate._native")]
pub struct DedupWindow {
    pub(crate) inner: Arc<SharedWindow>,
    pub(crate) ttl_ms: i64,
    pub(crate) key_ttl_ms: i64,
}

#[pymethods]
impl DedupWindow {
    #[new]
    #[pyo3(signature = (path = None, *, capacity = 1_000_000, ttl_seconds = 3600.0, key_ttl_seconds = 86400.0))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        capacity: usize,
        ttl_seconds: f64,
        key_ttl_seconds: f64,
    ) -> PyResult<DedupWindow> {
        let inner = py.detach(|| SharedWindow::open(path.as_deref(), capacity))?;
        Ok(DedupWindow {
            inner: Arc::new(inner),
            ttl_ms: seconds_to_ms(ttl_seconds),
            key_ttl_ms: seconds_to_ms(key_ttl_seconds),
        })
    }

    /// Claims the event ids of `records` at `now_ms`; removes records whose id was seen already (with their
    /// dead-letter copies) and repeats within them, and returns the ids seen before these records. With
    /// `duplicates`, each removed record (not its dead-letter copy) is added to `duplicates` on `duplicates_topic`.
    #[pyo3(signature = (records, now_ms, *, duplicates = None, duplicates_topic = "tidegate-duplicates"))]
    fn claim_records(
        &self,
        py: Python<'_>,
        mut records: PyRefMut<'_, Records>,
        now_ms: i64,
        duplicates: Option<PyRefMut<'_, Records>>,
        duplicates_topic: &str,
    ) -> PyResult<Vec<String>> {
        let records = &mut records.0;
        let mut moved = duplicates;
        let target = moved.as_mut().map(|b| (&mut b.0, duplicates_topic));
        let duplicates = py.detach(|| -> std::io::Result<Vec<Id>> {
            let mut ids: Vec<Id> = records.iter().map(|r| r.event_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let found = self.inner.claim(&ids, now_ms, self.ttl_ms)?;
            let duplicates: Vec<Id> = table::duplicates(&ids, &found).collect();
            // `duplicates` is sorted (a subset of sorted `ids`).
            records.move_duplicates(|id| duplicates.binary_search(id).is_ok(), target);
            Ok(duplicates)
        })?;
        Ok(duplicates.iter().map(|id| hex(id)).collect())
    }

    /// Releases the ids of `records` (they could not be made durable), so retries are not duplicates.
    fn release_records(&self, records: PyRef<'_, Records>) -> PyResult<()> {
        let ids: Vec<Id> = records.0.iter().map(|r| r.event_id).collect();
        Ok(self.inner.release(&ids)?)
    }

    /// Marks the claims of `records` and of the idempotency keys `(scope, key)` durable: from now on they are
    /// duplicates for every worker of the host.
    fn commit(&self, py: Python<'_>, records: PyRef<'_, Records>, keys: Vec<(String, String)>) -> PyResult<()> {
        let records = &records.0;
        py.detach(|| {
            let mut ids: Vec<Id> = records.iter().map(|r| r.event_id).collect();
            ids.extend(keys.iter().map(|(scope, key)| dedup::key_id(scope, key)));
            self.inner.commit(&ids)
        })?;
        Ok(())
    }

    /// Claims an idempotency key within `scope`; `False` when it was seen within the window.
    fn claim_key(&self, scope: &str, key: &str, now_ms: i64) -> PyResult<bool> {
        Ok(self
            .inner
            .claim(&[dedup::key_id(scope, key)], now_ms, self.key_ttl_ms)?[0]
            .is_new())
    }

    /// Whether an idempotency key was claimed within the window (without claiming it).
    fn contains_key(&self, scope: &str, key: &str, now_ms: i64) -> PyResult<bool> {
        Ok(self.inner.contains(&dedup::key_id(scope, key), now_ms)?)
    }

    fn release_key(&self, scope: &str, key: &str) -> PyResult<()> {
        Ok(self.inner.release(&[dedup::key_id(scope, key)])?)
    }

    fn contains(&self, event_id: &str, now_ms: i64) -> PyResult<bool> {
        Ok(self.inner.contains(&parse_id(event_id)?, now_ms)?)
    }

    /// Adds a spool's records received since `since_ms` that the table cannot hold (those from before the table
    /// was started: it was missing or damaged), and the spool's last `tail` records whatever the table's age
    /// (a writer killed between a commit and marking its claims durable left them pending, owned by nobody);
    /// records on `occurrences_topic` (duplicate occurrences) are not loaded: one may be durable while the record
    /// it repeats is not, so the caller must name it (no default). Returns how many ids were read.
    #[pyo3(signature = (spool, now_ms, since_ms, *, occurrences_topic, tail = 0))]
    fn load_spool(
        &self,
        py: Python<'_>,
        spool: &Spool,
        now_ms: i64,
        since_ms: i64,
        occurrences_topic: &str,
        tail: u64,
    ) -> PyResult<usize> {
        let created_ms = self.inner.table().created_ms();
        py.detach(|| {
            let mut ids: Vec<(Id, i64)> = spool
                .inner
                .last_event_ids(tail, occurrences_topic)
                .map_err(spool_error)?;
            if created_ms > since_ms {
                let older = spool
                    .inner
                    .event_ids_since(since_ms, occurrences_topic)
                    .map_err(spool_error)?;
                ids.extend(older.into_iter().filter(|&(_, at)| at < created_ms));
            }
            self.inner.load(ids.iter().copied(), now_ms, self.ttl_ms)?;
            Ok(ids.len())
        })
    }

    /// The table's bytes per id it holds at capacity.
    #[getter]
    fn bytes_per_id(&self) -> f64 {
        self.inner.bytes_per_id()
    }

    /// Ids live now (reads the whole table).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.inner.len(wall_clock_ms()))?)
    }
}

/// Per-device token buckets shared by a host's workers (see the core's `state::table::RateTable`).
#[pyclass(frozen, module = "tidegate._native")]
pub struct RateTable(pub(crate) Arc<CoreRateTable>);

#[pymethods]
impl RateTable {
    #[new]
    #[pyo3(signature = (path = None, *, rate, burst, capacity = 1_000_000))]
    fn new(py: Python<'_>, path: Option<PathBuf>, rate: f64, burst: f64, capacity: usize) -> PyResult<RateTable> {
        Ok(RateTable(Arc::new(py.detach(|| {
            CoreRateTable::open(path.as_deref(), capacity, rate, burst)
        })?)))
    }

    /// Takes one token of the device's bucket at `now_us` (µs since the epoch); returns 0 when granted, else the
    /// seconds until one is available.
    fn take(&self, device_id: &str, now_us: i64) -> PyResult<f64> {
        Ok(self.0.take(&CoreRateTable::device_id(device_id), now_us)?)
    }

    fn wait(&self, device_id: &str, now_us: i64) -> PyResult<f64> {
        Ok(self.0.wait(&CoreRateTable::device_id(device_id), now_us)?)
    }

    fn charge(&self, device_id: &str, now_us: i64, cost: f64) -> PyResult<()> {
        Ok(self.0.charge(&CoreRateTable::device_id(device_id), now_us, cost)?)
    }

    /// Takes `costs[i]` tokens for each item in turn, in one lock; returns which were granted (an item that does
    /// not fit is refused and the next one tried).
    fn take_each(&self, device_id: &str, costs: Vec<f64>, now_us: i64) -> PyResult<Vec<bool>> {
        Ok(self.0.take_each(&CoreRateTable::device_id(device_id), &costs, now_us)?)
    }
}

/// Group commit on a native thread: `request()` asks for a commit, the thread fsyncs after its window and makes
/// `fileno()` readable once per commit; `take()` then returns `(durable_seq, commits, failures, errno, error)`.
#[pyclass(frozen, module = "tidegate._native")]
pub struct GroupCommit(GroupCommitter);

/// `(durable_seq, commits, failures, errno, error)`.
type CommitOutcomeTuple = (u64, u64, u64, Option<i32>, Option<String>);

#[pymethods]
impl GroupCommit {
    fn request(&self) {
        self.0.request();
    }

    fn fileno(&self) -> i32 {
        self.0.signal_fd()
    }

    /// Whether a commit finished that `take` has not taken (what `fileno` being readable says, without a system
    /// call).
    fn has_news(&self) -> bool {
        self.0.has_news()
    }

    fn take(&self) -> PyResult<CommitOutcomeTuple> {
        let outcome = self.0.take().map_err(errors::io_error)?;
        let (errno, message) = match outcome.last_error {
            Some((errno, message)) => (errno, Some(message)),
            None => (None, None),
        };
        Ok((outcome.durable_seq, outcome.commits, outcome.failures, errno, message))
    }

    /// Stops the thread after the commit in progress (the GIL is released while it finishes).
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.0.stop());
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Spool>()?;
    module.add_class::<GroupCommit>()?;
    module.add_class::<DedupWindow>()?;
    module.add_class::<RateTable>()?;
    Ok(())
}
