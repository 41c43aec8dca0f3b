//! The archive writer's native part: a range of spooled records as the columns of its archive files, handed to
//! pyarrow as buffers it wraps without a copy.

use std::ffi::{c_int, c_void};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::{IntoPyObjectExt, ffi};
use tidegate_core as core;

use crate::RecordBatch;

/// Bytes owned by Rust, read through the buffer protocol (`pyarrow.py_buffer` wraps them without a copy). Typed
/// storage keeps integer columns aligned as Arrow wants them.
enum Storage {
    Bytes(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

#[pyclass(frozen, module = "tidegate._native")]
pub struct ArrowBuffer(Storage);

impl ArrowBuffer {
    fn bytes(&self) -> (*const u8, usize) {
        match &self.0 {
            Storage::Bytes(v) => (v.as_ptr(), v.len()),
            Storage::I32(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            Storage::I64(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
        }
    }
}

#[pymethods]
impl ArrowBuffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let (pointer, len) = slf.get().bytes();
        // SAFETY: the storage is never changed (the class is frozen) and lives as long as the object, which the
        // view holds a reference to (PyBuffer_FillInfo takes one); the view is read-only.
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                pointer as *mut c_void,
                len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.bytes().1
    }
}

fn buffer(py: Python<'_>, storage: Storage) -> PyResult<Py<PyAny>> {
    Py::new(py, ArrowBuffer(storage))?.into_py_any(py)
}

fn validity(py: Python<'_>, v: &core::archive_parts::Validity) -> PyResult<Py<PyAny>> {
    match v.bitmap() {
        Some(bits) => buffer(py, Storage::Bytes(bits.to_vec())),
        None => Ok(py.None()),
    }
}

type Part = (String, usize, Vec<Vec<Py<PyAny>>>);

/// The archive files of `batch` (see `tidegate-core`'s `archive_parts`): per file, its partition directory, its
/// row count and, per column of the archive's schema, Arrow's buffers of it (`[validity, offsets, data]` for a
/// string, `[validity, data]` for an integer; validity None without nulls).
#[pyfunction]
pub fn archive_parts(
    py: Python<'_>,
    batch: &RecordBatch,
    skip_topics: Vec<String>,
    duplicates_topic: &str,
) -> PyResult<Vec<Part>> {
    let skip: Vec<&str> = skip_topics.iter().map(String::as_str).collect();
    let parts = py
        .detach(|| core::archive_parts::archive_parts(&batch.0, &skip, duplicates_topic))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let none = || py.None();
    parts
        .into_iter()
        .map(|p| {
            let strings = |s: core::archive_parts::Strings, valid: Py<PyAny>| -> PyResult<Vec<Py<PyAny>>> {
                Ok(vec![
                    valid,
                    buffer(py, Storage::I32(s.offsets))?,
                    buffer(py, Storage::Bytes(s.data))?,
                ])
            };
            let integers = |v: Vec<i64>, valid: Py<PyAny>| -> PyResult<Vec<Py<PyAny>>> {
                Ok(vec![valid, buffer(py, Storage::I64(v))?])
            };
            let entity_valid = validity(py, &p.entity_valid)?;
            let lag_valid = validity(py, &p.lag_valid)?;
            let columns = vec![
                strings(p.event_ids, none())?,
                strings(p.entity_ids, entity_valid)?,
                integers(p.event_ms, none())?,
                integers(p.ingest_ms, none())?,
                integers(p.lags_ms, lag_valid)?,
                strings(p.statuses, none())?,
                strings(p.archive_keys, none())?,
                strings(p.payload_blake3, none())?,
                strings(p.topics, none())?,
                strings(p.headers, none())?,
                strings(p.values, none())?,
            ];
            Ok((p.directory, p.rows, columns))
        })
        .collect()
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ArrowBuffer>()?;
    module.add_function(wrap_pyfunction!(archive_parts, module)?)
}
