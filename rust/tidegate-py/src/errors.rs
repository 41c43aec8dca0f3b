//! The one place where the core's `Error` becomes a Python exception.
//!
//! Every tidegate exception derives from `TidegateError`; each also keeps the built-in base that callers already
//! catch (`PayloadError` and `SchemaError` are `ValueError`s, `SpoolFull` an `OSError`). PyO3's
//! `create_exception!` takes a single base, so the classes are made once by calling `type(name, bases, ns)`.
//! I/O errors are raised as `OSError(errno, strerror)`, which Python turns into the errno's own subclass
//! (`FileNotFoundError`, `PermissionError`...; ENOSPC stays `OSError` with `errno` set).

use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use tidegate_core::{Error, PayloadError as CorePayloadError};

struct Classes {
    tidegate: Py<PyType>,
    payload: Py<PyType>,
    malformed: Py<PyType>,
    too_large: Py<PyType>,
    unsupported: Py<PyType>,
    invalid_header: Py<PyType>,
    schema: Py<PyType>,
    spool_full: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn new_class(py: Python<'_>, name: &str, bases: Vec<Bound<'_, PyType>>, doc: &str) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("__module__", "tidegate")?;
    let class = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, namespace))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

fn build(py: Python<'_>) -> PyResult<Classes> {
    let exception = py.get_type::<PyException>();
    let tidegate = new_class(py, "TidegateError", vec![exception], "Every error tidegate raises.")?;
    let base = |py| tidegate.bind(py).clone();
    let payload = new_class(
        py,
        "PayloadError",
        vec![base(py), py.get_type::<PyValueError>()],
        "The whole body could not be taken apart into records.",
    )?;
    let sub = |name: &str, doc: &str| new_class(py, name, vec![payload.bind(py).clone()], doc);
    Ok(Classes {
        malformed: sub("MalformedPayload", "The body is not parseable in its declared format.")?,
        too_large: sub("PayloadTooLarge", "The body exceeds a size or count limit.")?,
        unsupported: sub("UnsupportedFormat", "The content type or encoding is not supported.")?,
        invalid_header: sub(
            "InvalidHeader",
            "A request header copied into records or the dedup window is malformed or too long; `header` names it.",
        )?,
        schema: new_class(
            py,
            "SchemaError",
            vec![base(py), py.get_type::<PyValueError>()],
            "A JSON Schema could not be compiled into a contract.",
        )?,
        spool_full: new_class(
            py,
            "SpoolFull",
            vec![base(py), py.get_type::<PyOSError>()],
            "The spool's disk quota is reached; shed load rather than lose data.",
        )?,
        payload,
        tidegate,
    })
}

fn classes(py: Python<'_>) -> PyResult<&'static Classes> {
    CLASSES.get_or_try_init(py, || build(py))
}

fn raise(py: Python<'_>, class: impl FnOnce(&Classes) -> &Py<PyType>, message: String) -> PyErr {
    match classes(py) {
        Ok(classes) => PyErr::from_type(class(classes).bind(py).clone(), message),
        Err(failed) => failed,
    }
}

/// `OSError(errno, strerror)`: Python picks the errno's subclass. An error without an errno keeps PyO3's mapping
/// by kind.
pub fn io_error(error: std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, error.to_string())),
        None => PyErr::from(error),
    }
}

/// The core's error as the Python exception documented in `_native.pyi`.
pub fn to_py(py: Python<'_>, error: impl Into<Error>) -> PyErr {
    let error = error.into();
    let message = error.to_string();
    match error {
        Error::Payload(CorePayloadError::InvalidHeader { header, .. }) => {
            let err = raise(py, |c| &c.invalid_header, message);
            if let Err(failed) = err.value(py).setattr("header", header) {
                return failed;
            }
            err
        }
        Error::Payload(CorePayloadError::Malformed { .. }) => raise(py, |c| &c.malformed, message),
        Error::Payload(CorePayloadError::TooLarge { .. }) => raise(py, |c| &c.too_large, message),
        Error::Payload(CorePayloadError::UnsupportedFormat(_) | CorePayloadError::UnsupportedEncoding(_)) => {
            raise(py, |c| &c.unsupported, message)
        }
        Error::Schema(_) => raise(py, |c| &c.schema, message),
        Error::SpoolFull { .. } => raise(py, |c| &c.spool_full, message),
        Error::Io(error) => io_error(error),
    }
}

/// A schema that is not a contract for a reason found in the binding (not UTF-8, say).
pub fn schema_error(py: Python<'_>, message: &str) -> PyErr {
    raise(py, |c| &c.schema, message.to_owned())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let classes = classes(py)?;
    for (name, class) in [
        ("TidegateError", &classes.tidegate),
        ("PayloadError", &classes.payload),
        ("MalformedPayload", &classes.malformed),
        ("PayloadTooLarge", &classes.too_large),
        ("UnsupportedFormat", &classes.unsupported),
        ("InvalidHeader", &classes.invalid_header),
        ("SchemaError", &classes.schema),
        ("SpoolFull", &classes.spool_full),
    ] {
        module.add(name, class.bind(py))?;
    }
    Ok(())
}
