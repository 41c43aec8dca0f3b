//! The forwarder's encoder: a range of records as finished runs, each one Kafka record batch (`KafkaRange`), read
//! from the spool and encoded in one native call (`read_kafka_range`) or encoded from a `Records` (`kafka_range`).

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tidegate_core::deliver::kafka::{self, Compression, EncodeOptions, EncodedRange};

use crate::spool::{Spool, spool_error};
use crate::{RecordTuple, Records, record_tuple};

/// `(topic, partition, Kafka record batch bytes, record count, start, end)`: one run, its records at positions
/// `start..end` of the range.
type EncodedRun = (String, u32, Py<PyBytes>, usize, usize, usize);

/// `(Kafka record batch bytes, record count, start, end)`: one part of a split run.
type SplitRun<'py> = (Bound<'py, PyBytes>, usize, usize, usize);

/// The records of one range and their runs; see `_native.pyi`.
#[pyclass(frozen, module = "tidegate._native")]
pub struct KafkaRange {
    records: Py<Records>,
    options: EncodeOptions,
    partitions: Vec<(String, u32)>,
    order: Vec<usize>,
    runs: Vec<EncodedRun>,
    oversize: Vec<(String, usize)>,
    missing_topics: Vec<String>,
}

/// The keyword arguments shared by every way of making a `KafkaRange`.
pub fn encode_options(
    compression: Option<&str>,
    max_batch_bytes: usize,
    max_record_bytes: usize,
    round_robin_start: u32,
) -> PyResult<EncodeOptions> {
    let compression = match compression {
        None => Compression::None,
        Some(name) => Compression::from_name(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "compression must be None, 'none', 'gzip', 'snappy', 'lz4' or 'zstd', not {name:?}"
            ))
        })?,
    };
    Ok(EncodeOptions {
        compression,
        max_batch_bytes,
        max_record_bytes,
        round_robin_start,
    })
}

pub fn partition_counts(partitions: &Bound<'_, PyDict>) -> PyResult<Vec<(String, u32)>> {
    partitions
        .iter()
        .map(|(topic, count)| Ok((topic.extract()?, count.extract()?)))
        .collect()
}

fn encode(records: &tidegate_core::Records, partitions: &[(String, u32)], options: &EncodeOptions) -> EncodedRange {
    kafka::encode_range(
        records,
        |topic| partitions.iter().find(|(t, _)| t == topic).map(|(_, count)| *count),
        options,
    )
}

impl KafkaRange {
    /// Wraps an encoding of `records` (the finished runs become Python bytes here, once).
    pub fn new(
        py: Python<'_>,
        records: Py<Records>,
        partitions: Vec<(String, u32)>,
        options: EncodeOptions,
        encoded: EncodedRange,
    ) -> KafkaRange {
        let EncodedRange {
            order,
            runs,
            oversize,
            missing_topics,
        } = encoded;
        let borrowed = records.borrow(py);
        let oversize = oversize
            .into_iter()
            .map(|position| {
                let topic = borrowed
                    .0
                    .get(order[position])
                    .map_or_else(String::new, |r| r.topic.to_string());
                (topic, position)
            })
            .collect();
        drop(borrowed);
        let runs = runs
            .into_iter()
            .map(|b| {
                let count = b.records();
                (
                    b.topic,
                    b.partition,
                    PyBytes::new(py, &b.bytes).unbind(),
                    count,
                    b.start,
                    b.end,
                )
            })
            .collect();
        KafkaRange {
            records,
            options,
            partitions,
            order,
            runs,
            oversize,
            missing_topics,
        }
    }

    /// Encodes `records` (the GIL released while encoding).
    pub fn encode(
        py: Python<'_>,
        records: Py<Records>,
        partitions: Vec<(String, u32)>,
        options: EncodeOptions,
    ) -> KafkaRange {
        let encoded = {
            let records = records.borrow(py);
            let records = &records.0;
            py.detach(|| encode(records, &partitions, &options))
        };
        KafkaRange::new(py, records, partitions, options, encoded)
    }
}

#[pymethods]
impl KafkaRange {
    fn __len__(&self, py: Python<'_>) -> usize {
        self.records.borrow(py).0.len()
    }

    #[getter]
    fn records(&self, py: Python<'_>) -> Py<Records> {
        self.records.clone_ref(py)
    }

    #[getter]
    fn runs(&self, py: Python<'_>) -> Vec<EncodedRun> {
        self.runs
            .iter()
            .map(|(topic, partition, data, count, start, end)| {
                (topic.clone(), *partition, data.clone_ref(py), *count, *start, *end)
            })
            .collect()
    }

    #[getter]
    fn oversize(&self) -> Vec<(String, usize)> {
        self.oversize.clone()
    }

    #[getter]
    fn missing_topics(&self) -> Vec<String> {
        self.missing_topics.clone()
    }

    #[getter]
    fn partitions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (topic, count) in &self.partitions {
            out.set_item(topic, count)?;
        }
        Ok(out)
    }

    #[getter]
    fn compression(&self) -> &'static str {
        self.options.compression.name()
    }

    /// The record at `position` of the range's order.
    fn record<'py>(&self, py: Python<'py>, position: usize) -> PyResult<RecordTuple<'py>> {
        let records = self.records.borrow(py);
        self.order
            .get(position)
            .and_then(|&index| records.0.get(index))
            .map(|record| record_tuple(py, &record))
            .ok_or_else(|| PyIndexError::new_err(format!("no record at position {position}")))
    }

    /// The same records encoded again with other partition counts (same codec, limits and round robin).
    fn encode_again(&self, py: Python<'_>, partitions: &Bound<'_, PyDict>) -> PyResult<KafkaRange> {
        let partitions = partition_counts(partitions)?;
        Ok(KafkaRange::encode(
            py,
            self.records.clone_ref(py),
            partitions,
            self.options,
        ))
    }

    /// The records at positions `start..end` (one run the broker refused as too large) encoded again by
    /// the same encoder as runs of at most half their size: `(bytes, record count, start, end)` per run.
    fn split<'py>(&self, py: Python<'py>, start: usize, end: usize) -> PyResult<Vec<SplitRun<'py>>> {
        if start >= end || end > self.order.len() {
            return Err(PyIndexError::new_err(format!(
                "{start}..{end} is not a range of the {} positions",
                self.order.len()
            )));
        }
        let records = self.records.borrow(py);
        let (records, order, compression) = (&records.0, &self.order, self.options.compression);
        let parts = py.detach(|| kafka::split_run(records, order, start, end, compression));
        Ok(parts
            .into_iter()
            .map(|(start, end, bytes)| (PyBytes::new(py, &bytes), end - start, start, end))
            .collect())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "KafkaRange(records={}, runs={}, oversize={}, compression={:?})",
            self.__len__(py),
            self.runs.len(),
            self.oversize.len(),
            self.compression()
        )
    }
}

/// Reads durable records from `seq` (as `Spool.read` does) and encodes them as runs (Kafka record batches), in one
/// native call without the GIL. Returns the range and the sequence number to read next.
#[pyfunction]
#[pyo3(signature = (spool, seq, partitions, *, max_records = 10_000, max_bytes = 4_194_304, compression = None, max_batch_bytes = 1_048_576, max_record_bytes = 1_048_576, round_robin_start = 0))]
pub fn read_kafka_range(
    py: Python<'_>,
    spool: &Spool,
    seq: u64,
    partitions: &Bound<'_, PyDict>,
    max_records: u64,
    max_bytes: usize,
    compression: Option<&str>,
    max_batch_bytes: usize,
    max_record_bytes: usize,
    round_robin_start: u32,
) -> PyResult<(KafkaRange, u64)> {
    let options = encode_options(compression, max_batch_bytes, max_record_bytes, round_robin_start)?;
    let partitions = partition_counts(partitions)?;
    let (records, encoded, next) = py
        .detach(|| {
            let (records, next) = spool.read_records(seq, max_records, max_bytes, true)?;
            let encoded = encode(&records, &partitions, &options);
            Ok((records, encoded, next))
        })
        .map_err(spool_error)?;
    let records = Py::new(py, Records(records))?;
    Ok((KafkaRange::new(py, records, partitions, options, encoded), next))
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<KafkaRange>()?;
    module.add_function(wrap_pyfunction!(read_kafka_range, module)?)
}
