//! The archive writer's native part: a range of spooled records as the columns of its archive files, handed to
//! pyarrow as buffers it wraps without a copy.

use std::ffi::{c_int, c_void};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::{IntoPyObjectExt, ffi};
use tidegate_core as core;

use crate::Records;

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

fn validity(py: Python<'_>, v: &core::archive::Validity) -> PyResult<Py<PyAny>> {
    match v.bitmap() {
        Some(bits) => buffer(py, Storage::Bytes(bits.to_vec())),
        None => Ok(py.None()),
    }
}

type Column = Vec<Py<PyAny>>;
type Part = (String, usize, Vec<(usize, Vec<Column>)>);

/// Arrow's buffers of one chunk's columns, in the archive schema's order.
fn columns(py: Python<'_>, c: core::archive::Columns) -> PyResult<Vec<Column>> {
    let none = || py.None();
    let strings = |s: core::archive::Strings, valid: Py<PyAny>| -> PyResult<Column> {
        Ok(vec![
            valid,
            buffer(py, Storage::I32(s.offsets))?,
            buffer(py, Storage::Bytes(s.data))?,
        ])
    };
    let integers =
        |v: Vec<i64>, valid: Py<PyAny>| -> PyResult<Column> { Ok(vec![valid, buffer(py, Storage::I64(v))?]) };
    let entity_valid = validity(py, &c.entity_valid)?;
    let lag_valid = validity(py, &c.lag_valid)?;
    Ok(vec![
        strings(c.event_ids, none())?,
        strings(c.entity_ids, entity_valid)?,
        integers(c.event_ms, none())?,
        integers(c.ingest_ms, none())?,
        integers(c.lags_ms, lag_valid)?,
        strings(c.statuses, none())?,
        strings(c.archive_keys, none())?,
        strings(c.payload_blake3, none())?,
        strings(c.topics, none())?,
        strings(c.headers, none())?,
        strings(c.values, none())?,
    ])
}

/// The archive files of the records of `reads` (see `tidegate-core`'s `archive_parts`): per file, its partition
/// directory, its row count and its chunks of at most `chunk_rows` rows, each with its row count and, per column
/// of the archive's schema, Arrow's buffers of it (`[validity, offsets, data]` for a string, `[validity, data]`
/// for an integer; validity None without nulls).
#[pyfunction]
pub fn archive_parts(
    py: Python<'_>,
    reads: Vec<PyRef<'_, Records>>,
    skip_topics: Vec<String>,
    duplicates_topic: &str,
    chunk_rows: usize,
) -> PyResult<Vec<Part>> {
    let skip: Vec<&str> = skip_topics.iter().map(String::as_str).collect();
    let inner: Vec<&core::Records> = reads.iter().map(|b| &b.0).collect();
    let parts = py
        .detach(|| core::archive::archive_parts(&inner, &skip, duplicates_topic, chunk_rows))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    parts
        .into_iter()
        .map(|part| {
            let chunks = part
                .chunks
                .into_iter()
                .map(|chunk| Ok((chunk.rows, columns(py, chunk)?)))
                .collect::<PyResult<_>>()?;
            Ok((part.directory, part.rows, chunks))
        })
        .collect()
}

/// Lets the process's allocator keep what it frees for its next allocations, rather than give it back to the
/// system and take it again as fresh (zeroed, faulted-in) pages: blocks below 32 MiB come from the heap, and the
/// heap is trimmed only past 256 MiB free at its top. The archive writer's buffers (a range read in chunks, its
/// columns a row group at a time) all fit, and are made and freed file after file. Returns whether the allocator
/// took the settings (glibc only).
#[pyfunction]
pub fn retain_freed_memory() -> bool {
    core::archive::retain_freed_memory()
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ArrowBuffer>()?;
    module.add_function(wrap_pyfunction!(archive_parts, module)?)?;
    module.add_function(wrap_pyfunction!(retain_freed_memory, module)?)
}
