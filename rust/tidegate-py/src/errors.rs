use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tidegate_core::{PayloadError as CorePayloadError, SchemaError as CoreSchemaError};

create_exception!(
    tidegate,
    PayloadError,
    PyValueError,
    "The whole body could not be taken apart into records."
);
create_exception!(
    tidegate,
    MalformedPayload,
    PayloadError,
    "The body is not parseable in its declared format."
);
create_exception!(
    tidegate,
    PayloadTooLarge,
    PayloadError,
    "The body exceeds a size or count limit."
);
create_exception!(
    tidegate,
    UnsupportedFormat,
    PayloadError,
    "The content type or encoding is not supported."
);
create_exception!(
    tidegate,
    InvalidHeader,
    PayloadError,
    "A request header copied into records or the dedup window is malformed or too long; `header` names it."
);
create_exception!(
    tidegate,
    SchemaError,
    PyValueError,
    "A JSON Schema could not be compiled into a contract."
);

pub fn payload_error(py: Python<'_>, error: &CorePayloadError) -> PyErr {
    let message = error.to_string();
    match error {
        CorePayloadError::InvalidHeader { header, .. } => {
            let err = InvalidHeader::new_err(message);
            if let Err(failed) = err.value(py).setattr("header", *header) {
                return failed;
            }
            err
        }
        CorePayloadError::Malformed { .. } => MalformedPayload::new_err(message),
        CorePayloadError::TooLarge { .. } => PayloadTooLarge::new_err(message),
        CorePayloadError::UnsupportedFormat(_) | CorePayloadError::UnsupportedEncoding(_) => {
            UnsupportedFormat::new_err(message)
        }
    }
}

pub fn schema_error(error: &CoreSchemaError) -> PyErr {
    SchemaError::new_err(error.to_string())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add("PayloadError", py.get_type::<PayloadError>())?;
    module.add("MalformedPayload", py.get_type::<MalformedPayload>())?;
    module.add("PayloadTooLarge", py.get_type::<PayloadTooLarge>())?;
    module.add("UnsupportedFormat", py.get_type::<UnsupportedFormat>())?;
    module.add("InvalidHeader", py.get_type::<InvalidHeader>())?;
    module.add("SchemaError", py.get_type::<SchemaError>())?;
    Ok(())
}
