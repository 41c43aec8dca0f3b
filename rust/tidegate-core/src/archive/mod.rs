//! The archive's columns of a batch of spooled records: what the archive writer (Python, in the delivery process)
//! turns into Parquet, read in one pass without a Python object per field.

use crate::canonical::records::{RecordBatch, hex};
use crate::canonical::write_string;
use crate::decode::Limits;
use crate::decode::value::Value;

/// Strings laid out as Arrow lays out a `large_string` column: every string's bytes one after another, and the
/// offset where each starts and the last ends (so `offsets.len()` is one more than the strings).
#[derive(Debug, Clone, PartialEq)]
pub struct StringColumn {
    pub offsets: Vec<i64>,
    pub data: Vec<u8>,
}

impl Default for StringColumn {
    fn default() -> Self {
        StringColumn {
            offsets: vec![0],
            data: Vec::new(),
        }
    }
}

impl StringColumn {
    /// Appends `bytes` as one string, lossy UTF-8 (invalid sequences become U+FFFD).
    pub fn push(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.data.extend_from_slice(text.as_bytes()),
            Err(_) => self.data.extend_from_slice(String::from_utf8_lossy(bytes).as_bytes()),
        }
        self.offsets.push(self.data.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string at `index`.
    pub fn get(&self, index: usize) -> &str {
        let (start, end) = (self.offsets[index] as usize, self.offsets[index + 1] as usize);
        std::str::from_utf8(&self.data[start..end]).unwrap_or_default()
    }
}

/// Marks a record without an integer `ingest_lag_ms` in [`ArchiveColumns::lags_ms`].
pub const NO_LAG: i64 = i64::MIN;

/// One column per field, one entry per record of the topic that is not a dead-letter copy.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ArchiveColumns {
    /// The Kafka key (the device or entity); empty for a record without one.
    pub keys: StringColumn,
    /// Reception time, Unix milliseconds.
    pub timestamps_ms: Vec<i64>,
    pub event_ids: StringColumn,
    /// The `source` header (`http`, `mqtt`), or `unknown`.
    pub sources: StringColumn,
    /// The `schema` header (`telemetry/v1`), or empty.
    pub schemas: StringColumn,
    /// Every header as a JSON object of strings (values lossy UTF-8).
    pub headers_json: StringColumn,
    /// The value (canonical JSON).
    pub values: StringColumn,
    /// The value's top-level `ingest_lag_ms`, or [`NO_LAG`] without an integer one.
    pub lags_ms: Vec<i64>,
    /// BLAKE3 of the value, lower-case hex.
    pub payload_blake3: StringColumn,
}

/// The archive columns of `batch`'s records on `topic`, dead-letter copies left out.
pub fn archive_columns(batch: &RecordBatch, topic: &str) -> ArchiveColumns {
    let mut columns = ArchiveColumns::default();
    let limits = Limits::default();
    let mut headers_json = Vec::with_capacity(256);
    for record in batch.iter().filter(|r| r.topic == topic && !r.is_dead_letter_copy()) {
        let (mut source, mut schema): (&[u8], &[u8]) = (b"unknown", b"");
        headers_json.clear();
        headers_json.push(b'{');
        for (index, (name, raw)) in record.headers().enumerate() {
            match name {
                "source" => source = raw,
                "schema" => schema = raw,
                _ => {}
            }
            if index > 0 {
                headers_json.push(b',');
            }
            write_string(&mut headers_json, name);
            headers_json.push(b':');
            write_string(&mut headers_json, &String::from_utf8_lossy(raw));
        }
        headers_json.push(b'}');
        let lag = std::str::from_utf8(record.value)
            .ok()
            .and_then(|text| crate::decode::json::parse_one(text, &limits).ok())
            .and_then(|document| match document.get("ingest_lag_ms") {
                Some(Value::Number(n, _)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Some(*n as i64),
                Some(Value::Integer(n)) => i64::try_from(n.get()).ok(),
                _ => None,
            });
        columns.keys.push(record.key.unwrap_or_default());
        columns.timestamps_ms.push(record.timestamp_ms);
        columns.event_ids.push(hex(&record.event_id).as_bytes());
        columns.sources.push(source);
        columns.schemas.push(schema);
        columns.headers_json.push(&headers_json);
        columns.values.push(record.value);
        columns.lags_ms.push(lag.unwrap_or(NO_LAG));
        columns
            .payload_blake3
            .push(blake3::hash(record.value).to_hex().as_bytes());
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::records::{RecordRef, encode_header};

    #[test]
    fn columns_of_a_topic_without_dead_letter_copies() {
        let mut headers = Vec::new();
        encode_header(&mut headers, "event_id", b"ab");
        encode_header(&mut headers, "schema", b"event/v1");
        encode_header(&mut headers, "source", b"mqtt");
        let mut dlq = headers.clone();
        encode_header(&mut dlq, "dlq-reason", b"semantic-range");
        let value = br#"{"a":{"ingest_lag_ms":1},"ingest_lag_ms":-42,"q":"\""}"#;
        let mut batch = RecordBatch::new();
        for (topic, headers) in [("t", &headers), ("t", &dlq), ("other", &headers)] {
            batch.push(&RecordRef::from_parts(
                topic,
                Some(b"k1"),
                value,
                headers,
                [0xab; 16],
                99,
            ));
        }
        let columns = archive_columns(&batch, "t");
        assert_eq!(columns.keys.len(), 1);
        assert_eq!(columns.keys.get(0), "k1");
        assert_eq!(columns.timestamps_ms, [99]);
        assert_eq!(columns.event_ids.get(0), "ab".repeat(16));
        assert_eq!((columns.sources.get(0), columns.schemas.get(0)), ("mqtt", "event/v1"));
        assert_eq!(
            columns.headers_json.get(0),
            r#"{"event_id":"ab","schema":"event/v1","source":"mqtt"}"#
        );
        assert_eq!(columns.lags_ms, [-42], "the top-level member, not a nested one");
        assert_eq!(columns.payload_blake3.get(0), blake3::hash(value).to_hex().as_str());
        assert_eq!(columns.values.offsets, [0, value.len() as i64]);
    }
}
