//! Quarantine: the raw bytes of rejected records, with the reason and stage of their rejection, made into
//! dead-letter records.
//!
//! Spans are found again only when a body had rejections (a second, structural pass over bytes the decoder
//! already accepted), so the decoders' hot path is untouched: a JSON array's element, an NDJSON line, a CBOR
//! array's item, a batch's `readings[i]`, or the whole (decoded) body for one record. A span that cannot be
//! found quarantines the whole body once, with every reason.

use std::ops::Range;

use crate::canonical::records::{RecordRef, Records, encode_header, hex};
use crate::contract::Issue;
use crate::decode::Format;
use crate::decode::Limits;
use crate::decode::{cbor, json};
use crate::deliver::kafka;

/// Domain separation for quarantine ids (the dedup id of a quarantined item, header `dlq-id`).
pub const QUARANTINE_ID_DOMAIN: &str = "tidegate:quarantine-id:v1\n";

/// Longest `dlq-reason` header kept; a longer reason is cut at a character boundary and ends with `…`.
pub const MAX_REASON_BYTES: usize = 8192;

/// Why a record was rejected, by the step that refused it.
pub mod stage {
    /// The body or the record could not be decoded (malformed, unsupported format or encoding, too large).
    pub const DECODE: &str = "decode";
    /// The record was decoded but breaks the contract.
    pub const CONTRACT: &str = "contract";
    /// The record names a device other than the one authenticated.
    pub const AUTH: &str = "auth";
}

/// One rejected item: the bytes as received (after content decoding for a record of a body; the body as sent
/// for a whole-body failure), why, and which record of the body it was (`None`: the whole body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub index: Option<usize>,
    pub raw: Vec<u8>,
    pub stage: String,
    pub reason: String,
    /// The media type of `raw`: a record's format (`application/json` for a JSON or NDJSON record), or the
    /// request's content type for a whole body.
    pub content_type: String,
}

/// The reasons of one record's issues, as the client's problem+json gives them: `path: message`, `; `-joined.
fn reasons<'i>(issues: impl Iterator<Item = &'i Issue>) -> String {
    let mut reason = String::new();
    for issue in issues {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&issue.path);
        reason.push_str(": ");
        reason.push_str(&issue.message);
    }
    reason
}

/// The quarantine items of a validated body: one per rejected record, in input order. `decode_failed` lists the
/// records the decoder could not decode (an NDJSON line that is not JSON); the others failed the contract.
/// `batch` says the records are the `readings` of one batch object.
pub fn items(
    body: &[u8],
    format: Format,
    content_type: &str,
    batch: bool,
    rejected: &[Issue],
    decode_failed: &[usize],
    limits: &Limits,
) -> Vec<Item> {
    if rejected.is_empty() {
        return Vec::new();
    }
    let record_type = match format {
        Format::Cbor => "application/cbor",
        Format::Json | Format::Ndjson => "application/json",
    };
    let whole = |issues: &[Issue]| Item {
        index: None,
        raw: body.to_vec(),
        stage: stage::CONTRACT.into(),
        reason: reasons(issues.iter()),
        content_type: content_type.into(),
    };
    // A batch whose envelope is refused refuses every reading: the body is the one item.
    if rejected.iter().any(|issue| issue.index.is_none()) {
        return vec![whole(rejected)];
    }
    let Some(spans) = record_spans(body, format, batch, limits) else {
        return vec![whole(rejected)];
    };
    let mut items: Vec<Item> = Vec::new();
    for issue in rejected {
        let Some(index) = issue.index else { continue };
        if let Some(last) = items.last_mut().filter(|item| item.index == Some(index)) {
            last.reason.push_str("; ");
            last.reason.push_str(&reasons(std::iter::once(issue)));
            continue;
        }
        let Some(span) = spans.get(index) else {
            return vec![whole(rejected)];
        };
        items.push(Item {
            index: Some(index),
            raw: body[span.clone()].to_vec(),
            stage: if decode_failed.contains(&index) {
                stage::DECODE
            } else {
                stage::CONTRACT
            }
            .into(),
            reason: reasons(std::iter::once(issue)),
            content_type: record_type.into(),
        });
    }
    items
}

/// The byte span of each record of a body the decoder accepted, indexed as the decoder indexes them; `None` when
/// they cannot be told apart.
pub fn record_spans(body: &[u8], format: Format, batch: bool, limits: &Limits) -> Option<Vec<Range<usize>>> {
    match format {
        Format::Ndjson if !batch => Some(ndjson_spans(body)),
        Format::Ndjson => None,
        Format::Cbor => cbor::record_spans(body, batch, limits),
        Format::Json => {
            let mut scanner = Scanner { data: body, pos: 0 };
            scanner.skip_ws();
            let spans = if batch {
                scanner.readings_spans()?
            } else if scanner.peek() == Some(b'[') {
                scanner.pos += 1;
                scanner.array_spans()?
            } else {
                let start = scanner.pos;
                scanner.skip_value()?;
                std::iter::once(start..scanner.pos).collect()
            };
            Some(spans)
        }
    }
}

/// NDJSON: each line not all white space is a record, as [`crate::decode::for_each_record`] counts them.
fn ndjson_spans(body: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = json::find_byte(body, b'\n', start);
        if !body[start..end].iter().all(u8::is_ascii_whitespace) {
            spans.push(start..end);
        }
        start = end + 1;
    }
    spans
}

/// A structural pass over JSON the decoder accepted: finds where values start and end, decoding nothing but
/// object keys.
struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Past the closing quote of the string starting at `pos`.
    fn skip_string(&mut self) -> Option<()> {
        self.pos += 1;
        loop {
            match self.data.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(());
                }
                b'\\' => self.pos += 2,
                _ => self.pos += 1,
            }
        }
    }

    /// Past the value starting at `pos` (containers without recursion).
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            self.skip_ws();
            match self.peek()? {
                b'"' => self.skip_string()?,
                b'[' | b'{' => {
                    depth += 1;
                    self.pos += 1;
                }
                b']' | b'}' => {
                    depth = depth.checked_sub(1)?;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => self.pos += 1,
                _ => {
                    while self
                        .peek()
                        .is_some_and(|b| !matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                    {
                        self.pos += 1;
                    }
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }

    /// The spans of an array's items, `pos` just past its `[`; ends past its `]`.
    fn array_spans(&mut self) -> Option<Vec<Range<usize>>> {
        let mut spans = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(spans);
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            self.skip_value()?;
            spans.push(start..self.pos);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(spans);
                }
                _ => return None,
            }
        }
    }

    /// The spans of the items of the top-level object's `readings` array.
    fn readings_spans(&mut self) -> Option<Vec<Range<usize>>> {
        if self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.pos;
            self.skip_string()?;
            let key_text = std::str::from_utf8(&self.data[key_start..self.pos]).ok()?;
            let key = json::parse_one(key_text, &Limits::default()).ok()?;
            self.skip_ws();
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            self.skip_ws();
            if key.as_str() == Some("readings") && self.peek()? == b'[' {
                self.pos += 1;
                return self.array_spans();
            }
            self.skip_value()?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                _ => return None,
            }
        }
    }
}

/// Where quarantined items go and what every one of them carries.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    pub topic: &'a str,
    /// The device the items are charged to (the authenticated one): their Kafka key.
    pub key: Option<&'a [u8]>,
    /// Headers of every item ([`encode_header`] form): source, device, schema, priority, trace context...
    pub headers: &'a [u8],
    /// The BLAKE3 digest of the body the items came from ([`body_digest`]), part of each item's id.
    pub body_digest: [u8; 32],
    pub timestamp_ms: i64,
    /// The largest record, measured as Kafka measures it ([`kafka::record_batch_size`]): a longer item is cut to
    /// fit, its header `dlq-truncated` giving its whole length.
    pub max_record_bytes: usize,
}

/// The digest of a body, for [`Destination::body_digest`].
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    *blake3::hash(body).as_bytes()
}

/// The quarantine id of an item: equal for the same item of the same body refused for the same reason from the
/// same device, so a client's retry or an MQTT redelivery is a duplicate rather than a second copy, while the same
/// bad record in another body is kept again.
pub fn quarantine_id(item: &Item, key: Option<&[u8]>, body_digest: &[u8; 32]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(QUARANTINE_ID_DOMAIN.as_bytes());
    hasher.update(body_digest);
    hasher.update(item.index.map_or(u64::MAX, |i| i as u64).to_le_bytes().as_slice());
    hasher.update(key.unwrap_or_default());
    hasher.update(b"\n");
    hasher.update(item.stage.as_bytes());
    hasher.update(b"\n");
    hasher.update(item.reason.as_bytes());
    hasher.update(b"\n");
    hasher.update(&item.raw);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    id
}

/// Appends the dead-letter record of `item`: value its raw bytes, headers `dlq-reason`, `dlq-stage`, `dlq-id`,
/// `content-type`, `dlq-index` for a record of a body, then the destination's.
pub fn push(records: &mut Records, destination: &Destination<'_>, item: &Item) {
    let id = quarantine_id(item, destination.key, &destination.body_digest);
    let mut reason = item.reason.as_str();
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES - '…'.len_utf8();
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut headers = Vec::with_capacity(256 + reason.len() + destination.headers.len());
    encode_header(
        &mut headers,
        "dlq-reason",
        if reason.len() < item.reason.len() {
            format!("{reason}…")
        } else {
            item.reason.clone()
        }
        .as_bytes(),
    );
    encode_header(&mut headers, "dlq-stage", item.stage.as_bytes());
    encode_header(&mut headers, "dlq-id", hex(&id).as_bytes());
    encode_header(&mut headers, "content-type", item.content_type.as_bytes());
    if let Some(index) = item.index {
        encode_header(&mut headers, "dlq-index", index.to_string().as_bytes());
    }
    headers.extend_from_slice(destination.headers);
    let record = |value: &'_ [u8], headers: &'_ [u8]| -> usize {
        kafka::record_batch_size(&dead_letter(destination, id, value, headers))
    };
    if record(&item.raw, &headers) <= destination.max_record_bytes {
        records.push(&dead_letter(destination, id, &item.raw, &headers));
        return;
    }
    encode_header(&mut headers, "dlq-truncated", item.raw.len().to_string().as_bytes());
    // The value shrinks by what is over; its length's varint can only shrink with it.
    let over = record(&item.raw, &headers) - destination.max_record_bytes;
    let keep = item.raw.len().saturating_sub(over);
    records.push(&dead_letter(destination, id, &item.raw[..keep], &headers));
}

fn dead_letter<'r>(destination: &Destination<'r>, id: [u8; 16], value: &'r [u8], headers: &'r [u8]) -> RecordRef<'r> {
    RecordRef::from_parts(
        destination.topic,
        destination.key,
        value,
        headers,
        id,
        destination.timestamp_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(index: usize, path: &str, message: &str) -> Issue {
        Issue {
            index: Some(index),
            path: path.into(),
            message: message.into(),
        }
    }

    fn spans_of(body: &str, format: Format, batch: bool) -> Vec<&str> {
        record_spans(body.as_bytes(), format, batch, &Limits::default())
            .unwrap()
            .into_iter()
            .map(|span| &body[span])
            .collect()
    }

    #[test]
    fn finds_each_record_of_a_json_array_and_a_lone_record() {
        let body = r#" [ {"a": "x,]}\"y"} , [1, {"b": [2]}], 3.5e1, "s" ,null ] "#;
        assert_eq!(
            spans_of(body, Format::Json, false),
            [r#"{"a": "x,]}\"y"}"#, r#"[1, {"b": [2]}]"#, "3.5e1", r#""s""#, "null"]
        );
        assert_eq!(spans_of(" {\"a\": 1}\n", Format::Json, false), ["{\"a\": 1}"]);
        assert_eq!(spans_of("[]", Format::Json, false), Vec::<&str>::new());
    }

    #[test]
    fn finds_each_ndjson_line_as_the_decoder_counts_them() {
        let body = "{\"a\":1}\n\n  \n{bad\n{\"c\":3}";
        assert_eq!(
            spans_of(body, Format::Ndjson, false),
            ["{\"a\":1}", "{bad", "{\"c\":3}"]
        );
    }

    #[test]
    fn finds_a_batchs_readings() {
        let body = r#"{"device_id": "d", "meta": {"readings": [9]}, "re\u0061dings": [{"t": 1}, {"t": "x"}], "z": 1}"#;
        assert_eq!(spans_of(body, Format::Json, true), [r#"{"t": 1}"#, r#"{"t": "x"}"#]);
    }

    #[test]
    fn items_carry_their_bytes_reasons_and_stage() {
        let body = b"{\"a\":1}\n{bad\n{\"c\":3}\n";
        let rejected = [
            issue(1, "$", "malformed JSON at column 1"),
            issue(2, "$.c", "must be a string"),
            issue(2, "$.d", "is required"),
        ];
        let items = items(
            body,
            Format::Ndjson,
            "application/x-ndjson",
            false,
            &rejected,
            &[1],
            &Limits::default(),
        );
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].index, &items[0].raw[..], &items[0].stage[..]),
            (Some(1), &b"{bad"[..], "decode")
        );
        assert_eq!(items[0].reason, "$: malformed JSON at column 1");
        assert_eq!((items[1].index, &items[1].raw[..]), (Some(2), &b"{\"c\":3}"[..]));
        assert_eq!(items[1].reason, "$.c: must be a string; $.d: is required");
        assert_eq!(
            (&items[1].stage[..], &items[1].content_type[..]),
            ("contract", "application/json")
        );
    }

    #[test]
    fn an_envelope_rejection_quarantines_the_whole_body() {
        let body = br#"{"device_id": "d", "readings": []}"#;
        let rejected = [Issue {
            index: None,
            path: "$.batch_id".into(),
            message: "is required".into(),
        }];
        let items = items(
            body,
            Format::Json,
            "application/json",
            true,
            &rejected,
            &[],
            &Limits::default(),
        );
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].index, &items[0].raw[..]), (None, &body[..]));
    }

    #[test]
    fn a_long_item_is_cut_to_fit_and_says_so() {
        let item = Item {
            index: None,
            raw: vec![b'x'; 5000],
            stage: stage::DECODE.into(),
            reason: "malformed".into(),
            content_type: "application/json".into(),
        };
        let destination = Destination {
            topic: "ingest-dlq",
            key: Some(b"dev-1"),
            headers: &[],
            body_digest: body_digest(&item.raw),
            timestamp_ms: 1,
            max_record_bytes: 1000,
        };
        let mut records = Records::new();
        push(&mut records, &destination, &item);
        let record = records.get(0).unwrap();
        assert!(kafka::record_batch_size(&record) <= 1000);
        assert!(record.value.len() > 700, "{}", record.value.len());
        let truncated = record.headers().find(|(name, _)| *name == "dlq-truncated").unwrap();
        assert_eq!(truncated.1, b"5000");
        // The same item again has the same id: a retry is a duplicate.
        let id = record.event_id;
        push(&mut records, &destination, &item);
        assert_eq!(records.get(1).unwrap().event_id, id);
    }
}
