//! The devices' last-seen table and its silence alerts (see the core's `lastseen`): types and GIL release only.

use std::path::PathBuf;

use pyo3::prelude::*;
use tidegate_core::canonical::records::hex;
use tidegate_core::state::lastseen::{self, Alert, LastSeenTable, SilenceRules, Snapshot};

use crate::Records;

fn seconds_to_ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// Devices' last-seen state shared by a host's workers (see the core's `lastseen::LastSeenTable`).
#[pyclass(frozen, module = "tidegate._native")]
pub struct DeviceTable(pub(crate) std::sync::Arc<LastSeenTable>);

#[pymethods]
impl DeviceTable {
    #[new]
    #[pyo3(signature = (
        path = None, *, capacity = 100_000, default_interval_seconds = 60.0, min_interval_seconds = 1.0,
        intervals = Vec::new(), forget_after_seconds = 604_800.0,
    ))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        capacity: usize,
        default_interval_seconds: f64,
        min_interval_seconds: f64,
        intervals: Vec<(String, f64)>,
        forget_after_seconds: f64,
    ) -> PyResult<DeviceTable> {
        let rules = SilenceRules::new(
            seconds_to_ms(default_interval_seconds),
            seconds_to_ms(min_interval_seconds),
            intervals
                .into_iter()
                .map(|(prefix, seconds)| (prefix, seconds_to_ms(seconds)))
                .collect(),
            seconds_to_ms(forget_after_seconds),
        );
        Ok(DeviceTable(std::sync::Arc::new(
            py.detach(|| LastSeenTable::open(path.as_deref(), capacity, rules))?,
        )))
    }

    /// Records that `devices` were heard at `now_ms`.
    fn seen(&self, py: Python<'_>, devices: Vec<String>, now_ms: i64) -> PyResult<()> {
        Ok(py.detach(|| self.0.seen(&devices, now_ms))?)
    }

    /// `(last_seen_ms, interval_ms, samples, alerted)` of one device, or None.
    fn state(&self, device: &str, now_ms: i64) -> PyResult<Option<(i64, i64, u32, bool)>> {
        Ok(self
            .0
            .state(device, now_ms)?
            .map(|s| (s.last_seen_ms, s.interval_ms, s.samples, s.alerted)))
    }

    /// The silent devices at `now_ms` (reads the whole table, without the GIL).
    fn snapshot(&self, py: Python<'_>, now_ms: i64) -> PyResult<DeviceSnapshot> {
        Ok(DeviceSnapshot(py.detach(|| self.0.snapshot(now_ms))?))
    }

    /// The detector's scan (without the GIL): the alerts due at `now_ms` (about `max_alerts` at most), their
    /// records for `topic`.
    #[pyo3(signature = (now_ms, since_ms, topic, *, max_alerts = 10_000))]
    fn detect(
        &self,
        py: Python<'_>,
        now_ms: i64,
        since_ms: i64,
        topic: &str,
        max_alerts: usize,
    ) -> PyResult<DeviceAlerts> {
        let alerts = py.detach(|| self.0.detect(now_ms, since_ms, max_alerts))?;
        let records = Py::new(py, Records(lastseen::alert_records(&alerts, topic)))?;
        Ok(DeviceAlerts { alerts, records })
    }

    /// Marks the alerts sent, once their records are durable.
    fn confirm(&self, py: Python<'_>, alerts: &DeviceAlerts) -> PyResult<()> {
        Ok(py.detach(|| self.0.confirm(&alerts.alerts))?)
    }

    #[getter]
    fn silence_factor(&self) -> i64 {
        lastseen::SILENCE_FACTOR
    }
}

/// `(device_id, last_seen_ms, interval_ms, alerted)`.
type SilentDevice = (String, i64, i64, bool);

/// The silent devices at one instant, sorted by device id.
#[pyclass(frozen, module = "tidegate._native")]
pub struct DeviceSnapshot(Snapshot);

#[pymethods]
impl DeviceSnapshot {
    #[getter]
    fn taken_ms(&self) -> i64 {
        self.0.taken_ms
    }

    /// Devices the table holds.
    #[getter]
    fn tracked(&self) -> usize {
        self.0.tracked
    }

    #[getter]
    fn silent(&self) -> usize {
        self.0.silent.len()
    }

    /// Up to `limit` silent devices after the cursor `after`, as `(device_id, last_seen_ms, interval_ms,
    /// alerted)`, and the next page's cursor (None on the last page).
    #[pyo3(signature = (after = None, limit = 100))]
    fn page(&self, after: Option<&str>, limit: usize) -> (Vec<SilentDevice>, Option<String>) {
        let (page, next) = self.0.page(after, limit);
        (
            page.iter()
                .map(|d| (d.device.clone(), d.last_seen_ms, d.interval_ms, d.alerted))
                .collect(),
            next.map(str::to_string),
        )
    }
}

/// Alerts due, from `DeviceTable.detect`: their records, and what to confirm once those are durable.
#[pyclass(frozen, module = "tidegate._native")]
pub struct DeviceAlerts {
    alerts: Vec<Alert>,
    records: Py<Records>,
}

#[pymethods]
impl DeviceAlerts {
    fn __len__(&self) -> usize {
        self.alerts.len()
    }

    /// The alert records (a `Records` of the alerts topic).
    #[getter]
    fn records(&self, py: Python<'_>) -> Py<Records> {
        self.records.clone_ref(py)
    }

    /// `(kind, device_id, last_seen_ms, interval_ms, event_id)` per alert.
    #[getter]
    fn alerts(&self) -> Vec<(&'static str, String, i64, i64, String)> {
        self.alerts
            .iter()
            .map(|a| {
                (
                    a.kind.name(),
                    a.device.clone(),
                    a.last_seen_ms,
                    a.interval_ms,
                    hex(&a.event_id()),
                )
            })
            .collect()
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<DeviceTable>()?;
    module.add_class::<DeviceSnapshot>()?;
    module.add_class::<DeviceAlerts>()?;
    Ok(())
}
