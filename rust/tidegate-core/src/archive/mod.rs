//! The archive's files of a range of spooled records, built natively in one pass: which partition each record
//! goes to, and each partition's columns laid out as Arrow lays them out (rows sorted by event id), ready to be
//! wrapped by pyarrow without a copy and without a Python object per record or per field.
//!
//! The partition of a record is the arithmetic of `tidegate.archive.partition_dir` (the one the ingest edge uses
//! for the `archive_key` in its answer): `raw/source=<source>/event_type=<event type>/event_date=<UTC date of
//! the reception time less ingest_lag_ms>/ingest_date=<UTC date of reception>/hour=<UTC hour of reception>`.
//! Parts are made per (source, schema, event day, ingest hour) and ordered by directory, then by their first event
//! id, so a range read again makes the same parts with the same rows (the writer's resume relies on it).

use crate::canonical::records::{RecordRef, Records};
use crate::canonical::write_string;
use crate::decode::time::civil_from_days;

pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;

/// A column of strings as Arrow's `string` type: `offsets.len()` is one more than the strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Strings {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
}

impl Strings {
    fn with_capacity(rows: usize, bytes: usize) -> Strings {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Strings {
            offsets,
            data: Vec::with_capacity(bytes),
        }
    }

    /// Ends the string written to `data` since the last one.
    fn end(&mut self) {
        self.offsets.push(self.data.len() as i32);
    }

    /// Appends `bytes` as one string, lossy UTF-8 (invalid sequences become U+FFFD).
    fn push(&mut self, bytes: &[u8]) {
        push_lossy(&mut self.data, bytes);
        self.end();
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

/// Arrow's validity bitmap (bit `i` of byte `i / 8`, least significant first: 1 when row `i` holds a value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validity {
    pub bits: Vec<u8>,
    pub nulls: usize,
}

impl Validity {
    fn push(&mut self, valid: bool, row: usize) {
        if row.is_multiple_of(8) {
            self.bits.push(0);
        }
        if valid {
            self.bits[row / 8] |= 1 << (row % 8);
        } else {
            self.nulls += 1;
        }
    }

    /// The bitmap, or `None` when every row holds a value (Arrow's form of "no nulls").
    pub fn bitmap(&self) -> Option<&[u8]> {
        (self.nulls > 0).then_some(&self.bits[..])
    }
}

/// One archive file's rows: its partition directory and its columns, in chunks of at most the row count asked
/// for (one Parquet row group each; smaller buffers, which the allocator reuses from one file to the next).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivePart {
    pub directory: String,
    pub rows: usize,
    pub chunks: Vec<Columns>,
}

/// Some consecutive rows of an archive file, one column per field of the archive's schema, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub rows: usize,
    /// 32 lower-case hex digits.
    pub event_ids: Strings,
    /// The Kafka key (device or entity); null for a record without one (or an empty one).
    pub entity_ids: Strings,
    pub entity_valid: Validity,
    /// Unix milliseconds: the reception time less the lag (the reception time without a lag).
    pub event_ms: Vec<i64>,
    pub ingest_ms: Vec<i64>,
    /// The value's top-level integer `ingest_lag_ms`; null without one.
    pub lags_ms: Vec<i64>,
    pub lag_valid: Validity,
    /// `ACCEPTED`, or `DUPLICATE` for a record of the duplicates topic.
    pub statuses: Strings,
    /// `<directory>/event_id=<event id>`.
    pub archive_keys: Strings,
    /// BLAKE3 of the value, lower-case hex.
    pub payload_blake3: Strings,
    pub topics: Strings,
    /// Every header as a JSON object of strings (values lossy UTF-8).
    pub headers: Strings,
    /// The value as spooled (canonical JSON).
    pub values: Strings,
}

/// A column would not fit Arrow's `string` type (2 GiB per column): the range is too large for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartTooLarge;

impl std::fmt::Display for PartTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an archive file's column would exceed 2 GiB: archive fewer records per file")
    }
}

impl std::error::Error for PartTooLarge {}

/// A record's place in the archive, found in the first pass.
struct Row {
    /// The event id as a big-endian integer (ordered as its bytes and its hex are), then where the record is
    /// (`read << 32 | index`): the sort key, compared as two integers.
    event_id: u128,
    place: u64,
    lag: Option<i64>,
}

struct Group<'b> {
    source: &'b [u8],
    schema: &'b [u8],
    event_day: i64,
    ingest_hour: i64,
    rows: Vec<Row>,
}

/// The archive parts of the records of `reads` (consecutive reads of one spool range): those of every topic but
/// `skip_topics`, dead-letter copies left out, records of `duplicates_topic` as `DUPLICATE` occurrences; each
/// part's columns in chunks of at most `chunk_rows` rows. Empty when no record is archived.
pub fn archive_parts(
    reads: &[&Records],
    skip_topics: &[&str],
    duplicates_topic: &str,
    chunk_rows: usize,
) -> Result<Vec<ArchivePart>, PartTooLarge> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut last = 0usize;
    let mut topics: Vec<&str> = Vec::new();
    for records in reads {
        for topic in records.topics() {
            if !topics.contains(&topic.as_str()) && !skip_topics.contains(&topic.as_str()) {
                topics.push(topic);
            }
        }
    }
    // Topic by topic (in their order of first appearance), each in arrival order.
    for (topic, (read_index, records)) in topics
        .iter()
        .flat_map(|topic| reads.iter().enumerate().map(move |b| (*topic, b)))
    {
        for (index, record) in records.iter().enumerate() {
            if record.topic != topic {
                continue;
            }
            let (mut source, mut schema): (&[u8], &[u8]) = (b"unknown", b"");
            let mut dead_letter = false;
            for (name, value) in raw_headers(record.raw_headers()) {
                match name {
                    b"source" => source = value,
                    b"schema" => schema = value,
                    b"dlq-reason" => dead_letter = true,
                    _ => {}
                }
            }
            if dead_letter {
                continue;
            }
            let lag = ingest_lag_ms(record.value);
            let event_ms = lag.map_or(record.timestamp_ms, |lag| record.timestamp_ms.saturating_sub(lag));
            let (event_day, ingest_hour) = (event_ms.div_euclid(DAY_MS), record.timestamp_ms.div_euclid(HOUR_MS));
            let same = |g: &Group<'_>| {
                g.event_day == event_day && g.ingest_hour == ingest_hour && g.source == source && g.schema == schema
            };
            if groups.get(last).is_none_or(|g| !same(g)) {
                last = match groups.iter().position(same) {
                    Some(found) => found,
                    None => {
                        groups.push(Group {
                            source,
                            schema,
                            event_day,
                            ingest_hour,
                            rows: Vec::new(),
                        });
                        groups.len() - 1
                    }
                };
            }
            groups[last].rows.push(Row {
                event_id: u128::from_be_bytes(record.event_id),
                place: (read_index as u64) << 32 | index as u64,
                lag,
            });
        }
    }
    let mut keyed: Vec<(String, Group<'_>)> = groups
        .into_iter()
        .map(|mut group| {
            // By event id, then place in the reads (an accepted record and a duplicate occurrence of it can share a
            // partition): a total order, so the sort need not be stable.
            group.rows.sort_unstable_by_key(|row| (row.event_id, row.place));
            (directory(&group), group)
        })
        .collect();
    keyed.sort_by(|(a, ga), (b, gb)| a.cmp(b).then(ga.rows[0].event_id.cmp(&gb.rows[0].event_id)));
    keyed
        .into_iter()
        .map(|(directory, group)| {
            let chunks = group
                .rows
                .chunks(chunk_rows.max(1))
                .map(|rows| build(reads, &directory, rows, duplicates_topic))
                .collect::<Result<_, _>>()?;
            Ok(ArchivePart {
                directory,
                rows: group.rows.len(),
                chunks,
            })
        })
        .collect()
}

/// `tidegate.archive.partition_dir` of a group.
fn directory(group: &Group<'_>) -> String {
    let source = String::from_utf8_lossy(group.source);
    let schema = String::from_utf8_lossy(group.schema);
    let event_type = match schema.split('/').next() {
        Some(kind) if !kind.is_empty() => kind,
        _ => "unknown",
    };
    let hour = group.ingest_hour.rem_euclid(24);
    format!(
        "raw/source={source}/event_type={event_type}/event_date={}/ingest_date={}/hour={hour:02}",
        date(group.event_day),
        date((group.ingest_hour * HOUR_MS).div_euclid(DAY_MS)),
    )
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), the year unpadded as C's `strftime("%Y")` writes it.
pub fn date(day: i64) -> String {
    let (year, month, day) = civil_from_days(day);
    format!("{year}-{month:02}-{day:02}")
}

fn build(reads: &[&Records], directory: &str, rows: &[Row], duplicates_topic: &str) -> Result<Columns, PartTooLarge> {
    let n = rows.len();
    let records: Vec<RecordRef<'_>> = rows
        .iter()
        .filter_map(|row| reads[(row.place >> 32) as usize].get(row.place as u32 as usize))
        .collect();
    let value_bytes: usize = records.iter().map(|r| r.value.len()).sum();
    let header_bytes: usize = records.iter().map(|r| r.raw_headers().len()).sum();
    let mut part = Columns {
        rows: n,
        event_ids: Strings::with_capacity(n, 32 * n),
        entity_ids: Strings::with_capacity(n, 16 * n),
        entity_valid: Validity::default(),
        event_ms: Vec::with_capacity(n),
        ingest_ms: Vec::with_capacity(n),
        lags_ms: Vec::with_capacity(n),
        lag_valid: Validity::default(),
        statuses: Strings::with_capacity(n, 9 * n),
        archive_keys: Strings::with_capacity(n, (directory.len() + 42) * n),
        payload_blake3: Strings::with_capacity(n, 64 * n),
        topics: Strings::with_capacity(n, 16 * n),
        headers: Strings::with_capacity(n, header_bytes + 8 * n),
        values: Strings::with_capacity(n, value_bytes),
    };
    let key_prefix = format!("{directory}/event_id=");
    for (row, (record, place)) in records.iter().zip(rows).enumerate() {
        let mut id = [0u8; 32];
        hex_into(&record.event_id, &mut id);
        part.event_ids.data.extend_from_slice(&id);
        part.event_ids.end();
        let key = record.key.unwrap_or_default();
        part.entity_ids.push(key);
        part.entity_valid.push(!key.is_empty(), row);
        let lag = place.lag;
        part.ingest_ms.push(record.timestamp_ms);
        part.event_ms
            .push(lag.map_or(record.timestamp_ms, |lag| record.timestamp_ms.saturating_sub(lag)));
        part.lags_ms.push(lag.unwrap_or(0));
        part.lag_valid.push(lag.is_some(), row);
        part.statuses
            .data
            .extend_from_slice(if record.topic == duplicates_topic {
                b"DUPLICATE"
            } else {
                b"ACCEPTED"
            });
        part.statuses.end();
        part.archive_keys.data.extend_from_slice(key_prefix.as_bytes());
        part.archive_keys.data.extend_from_slice(&id);
        part.archive_keys.end();
        part.payload_blake3
            .data
            .extend_from_slice(blake3::hash(record.value).to_hex().as_bytes());
        part.payload_blake3.end();
        part.topics.data.extend_from_slice(record.topic.as_bytes());
        part.topics.end();
        headers_json(&mut part.headers.data, record);
        part.headers.end();
        part.values.push(record.value);
    }
    let columns = [
        &part.event_ids,
        &part.entity_ids,
        &part.statuses,
        &part.archive_keys,
        &part.payload_blake3,
        &part.topics,
        &part.headers,
        &part.values,
    ];
    // An offset past i32::MAX wrapped negative: the column does not fit.
    if columns.iter().any(|c| c.data.len() > i32::MAX as usize) {
        return Err(PartTooLarge);
    }
    Ok(part)
}

/// Makes glibc's allocator keep freed memory for reuse: blocks below 32 MiB (its largest threshold) from the heap
/// instead of their own mappings, and the heap trimmed only past 256 MiB free at its top. Building archive files
/// frees and makes again the same buffers file after file; without this, each is a fresh mapping whose pages the
/// kernel zeroes and faults in (a fifth of the writer's time). Returns whether the allocator took the settings.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's thresholds; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

fn hex_into(bytes: &[u8; 16], out: &mut [u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
}

/// Appends `bytes`, lossy UTF-8.
fn push_lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    if simdutf8::basic::from_utf8(bytes).is_ok() {
        out.extend_from_slice(bytes);
    } else {
        out.extend_from_slice(String::from_utf8_lossy(bytes).as_bytes());
    }
}

/// A record's headers as `(name, value)` byte strings, in the encoding of `records::encode_header` (names are not
/// checked for UTF-8 here: they are compared, or written lossy).
fn raw_headers(mut rest: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let (name_len, tail) = rest.split_first_chunk::<2>()?;
        let (name, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*name_len)))?;
        let (value_len, tail) = tail.split_first_chunk::<4>()?;
        let (value, tail) = tail.split_at_checked(u32::from_le_bytes(*value_len) as usize)?;
        rest = tail;
        Some((name, value))
    })
}

/// Appends the record's headers as a JSON object of strings, in their order.
fn headers_json(out: &mut Vec<u8>, record: &RecordRef<'_>) {
    out.push(b'{');
    for (index, (name, value)) in raw_headers(record.raw_headers()).enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json_string(out, name);
        out.push(b':');
        json_string(out, value);
    }
    out.push(b'}');
}

/// Whether `bytes` are printable ASCII without `"` or `\\`: a JSON string's contents as they are. Eight bytes at a
/// time (a byte is flagged by the high bit of its lane: set, below 0x20, or equal to one of the two).
fn plain_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_lane = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut words = bytes.chunks_exact(8);
    let mut flagged = 0u64;
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        // Below 0x20: subtracting 0x20 borrows into the high bit of a lane whose own high bit is clear.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        flagged |=
            (w & HIGH) | control | zero_lane(w ^ (ONES * u64::from(b'"'))) | zero_lane(w ^ (ONES * u64::from(b'\\')));
    }
    flagged == 0
        && words
            .remainder()
            .iter()
            .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
}

/// Appends `bytes` (lossy UTF-8) as a JSON string: as it is between quotes when nothing in it needs escaping.
fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if plain_ascii(bytes) {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        write_string(out, &String::from_utf8_lossy(bytes));
    }
}

/// The integer value of the top-level member `ingest_lag_ms` of a JSON object (a number with no fraction, below
/// 9e15 in magnitude, counts), found by stepping over the other members without parsing them; `None` for anything
/// else (no such member, another type, not an object, not JSON).
pub fn ingest_lag_ms(value: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"ingest_lag_ms";
    let mut pos = skip_ws(value, 0);
    if value.get(pos) != Some(&b'{') {
        return None;
    }
    pos += 1;
    loop {
        pos = skip_ws(value, pos);
        if value.get(pos) != Some(&b'"') {
            return None; // `}` (no such member) or not JSON
        }
        let key_end = string_end(value, pos + 1)?;
        let key = &value[pos + 1..key_end];
        pos = skip_ws(value, key_end + 1);
        if value.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_ws(value, pos + 1);
        if key == KEY {
            return integer(value, pos);
        }
        pos = skip_ws(value, value_end(value, pos)?);
        match value.get(pos) {
            Some(b',') => pos += 1,
            _ => return None,
        }
    }
}

fn skip_ws(value: &[u8], mut pos: usize) -> usize {
    while matches!(value.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// The position of the quote closing the string whose contents start at `pos`.
fn string_end(value: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos += memchr::memchr2(b'"', b'\\', value.get(pos..)?)?;
        match value[pos] {
            b'"' => return Some(pos),
            _ => pos += 2, // an escape and the byte it escapes
        }
    }
}

/// The position just past the JSON value starting at `pos` (containers stepped over by depth, strings by quotes).
fn value_end(value: &[u8], mut pos: usize) -> Option<usize> {
    match value.get(pos)? {
        b'"' => Some(string_end(value, pos + 1)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match value.get(pos)? {
                    b'"' => pos = string_end(value, pos + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(pos + 1);
                        }
                    }
                    _ => {}
                }
                pos += 1;
            }
        }
        _ => {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            while !matches!(
                value.get(pos),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                pos += 1;
            }
            Some(pos)
        }
    }
}

/// The JSON number at `pos` as an integer: digits alone, or a number with no fraction below 9e15 in magnitude.
fn integer(value: &[u8], pos: usize) -> Option<i64> {
    let end = value_end(value, pos)?;
    let text = &value[pos..end];
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        let n = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        return Some(if digits.len() < text.len() { -n } else { n });
    }
    if !text
        .iter()
        .all(|&b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let n: f64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        return Some(n as i64);
    }
    // Digits alone beyond 18 of them: an i64 when they fit (beyond 9e15 as a float, still an integer).
    let integer = std::str::from_utf8(text).ok()?;
    integer.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::records::encode_header;

    #[test]
    fn the_top_level_lag_only() {
        assert_eq!(
            ingest_lag_ms(br#"{"a":{"ingest_lag_ms":1},"ingest_lag_ms":-42,"q":"\""}"#),
            Some(-42)
        );
        assert_eq!(ingest_lag_ms(br#"{"a":"\"ingest_lag_ms\":5","b":[1,{"x":"}"}]}"#), None);
        assert_eq!(ingest_lag_ms(br#" { "b" : [ ] , "ingest_lag_ms" : 7 } "#), Some(7));
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":12.0}"#), Some(12));
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":1e3}"#), Some(1000));
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":1.5}"#), None);
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":1e16}"#), None);
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":"5"}"#), None);
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":null}"#), None);
        assert_eq!(ingest_lag_ms(br#"{"ingest_lag_ms":99999999999999999999}"#), None);
        assert_eq!(ingest_lag_ms(br#"[{"ingest_lag_ms":1}]"#), None);
        assert_eq!(ingest_lag_ms(b"{\"a\":\"unterminated"), None);
        assert_eq!(ingest_lag_ms(b""), None);
        assert_eq!(ingest_lag_ms(b"{"), None);
    }

    #[test]
    fn plain_ascii_flags_what_json_escapes() {
        assert!(plain_ascii(b""));
        assert!(plain_ascii(b"application/json; charset=utf-8 ~!#$%&'()*+,-./"));
        for bad in [&b"\""[..], b"\\", b"\x1f", b"\x7f\x80", b"\xff", b"\n", b"\x00"] {
            for at in [0usize, 3, 8, 13] {
                let mut text = vec![b'a'; 16];
                text[at..at + bad.len()].copy_from_slice(bad);
                assert!(!plain_ascii(&text), "{bad:?} at {at}");
            }
        }
        assert!(plain_ascii(b"\x7f ok"), "DEL needs no escape");
    }

    #[test]
    fn dates_as_strftime_writes_them() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(20_818), "2026-12-31");
        assert_eq!(date(2_932_896), "9999-12-31");
        assert_eq!(date(-400_000), "874-11-02");
    }

    fn record(records: &mut Records, topic: &str, id: u8, source: &str, schema: &str, value: &[u8], ts: i64) {
        let mut headers = Vec::new();
        encode_header(&mut headers, "event_id", b"x");
        encode_header(&mut headers, "schema", schema.as_bytes());
        encode_header(&mut headers, "source", source.as_bytes());
        records.push(&RecordRef::from_parts(
            topic,
            Some(b"k1"),
            value,
            &headers,
            [id; 16],
            ts,
        ));
    }

    #[test]
    fn parts_by_partition_sorted_by_event_id() {
        let now = 1_796_169_599_999; // 2026-12-01T23:59:59.999Z
        let late = br#"{"ingest_lag_ms":86400000,"q":"\""}"#;
        let mut records = Records::new();
        record(&mut records, "events", 9, "http", "event/v1", b"{}", now);
        record(&mut records, "events", 3, "http", "event/v1", b"{}", now);
        record(&mut records, "events", 5, "http", "event/v1", late, now);
        record(&mut records, "skipped", 1, "http", "event/v1", b"{}", now);
        record(&mut records, "dups", 3, "http", "event/v1", b"{}", now + 1);
        let mut dlq = Vec::new();
        encode_header(&mut dlq, "dlq-reason", b"semantic-range");
        records.push(&RecordRef::from_parts("events", None, b"{}", &dlq, [7; 16], now));
        let parts = archive_parts(&[&records], &["skipped"], "dups", 16_384).unwrap();
        let dirs: Vec<&str> = parts.iter().map(|p| p.directory.as_str()).collect();
        assert_eq!(
            dirs,
            [
                "raw/source=http/event_type=event/event_date=2026-11-30/ingest_date=2026-12-01/hour=23",
                "raw/source=http/event_type=event/event_date=2026-12-01/ingest_date=2026-12-01/hour=23",
                "raw/source=http/event_type=event/event_date=2026-12-02/ingest_date=2026-12-02/hour=00",
            ]
        );
        assert_eq!(parts[1].rows, 2);
        let today = &parts[1].chunks[0];
        assert_eq!(today.event_ids.get(0), "03".repeat(16));
        assert_eq!(today.event_ids.get(1), "09".repeat(16));
        assert_eq!(today.statuses.get(0), "ACCEPTED");
        assert_eq!(parts[2].chunks[0].statuses.get(0), "DUPLICATE");
        assert_eq!(parts[2].chunks[0].topics.get(0), "dups");
        assert_eq!(
            today.archive_keys.get(0),
            format!("{}/event_id={}", dirs[1], "03".repeat(16))
        );
        assert_eq!(today.entity_ids.get(0), "k1");
        assert_eq!(today.entity_valid.bitmap(), None);
        assert_eq!(today.lag_valid.bitmap(), Some(&[0u8][..]), "no lag: null");
        assert_eq!(
            today.headers.get(0),
            r#"{"event_id":"x","schema":"event/v1","source":"http"}"#
        );
        let late_part = &parts[0].chunks[0];
        assert_eq!((late_part.lags_ms[0], late_part.lag_valid.bitmap()), (86_400_000, None));
        assert_eq!(late_part.event_ms[0], now - 86_400_000);
        assert_eq!(late_part.payload_blake3.get(0), blake3::hash(late).to_hex().as_str());
        assert_eq!(late_part.values.get(0).as_bytes(), late);
    }

    #[test]
    fn headers_that_need_escapes() {
        let mut headers = Vec::new();
        encode_header(&mut headers, "note", b"a\"b\xff");
        let mut records = Records::new();
        records.push(&RecordRef::from_parts("t", None, b"{}", &headers, [1; 16], 0));
        let parts = archive_parts(&[&records], &[], "dups", 16_384).unwrap();
        assert_eq!(parts[0].chunks[0].headers.get(0), "{\"note\":\"a\\\"b\u{fffd}\"}");
        assert_eq!(parts[0].chunks[0].entity_valid.bitmap(), Some(&[0u8][..]));
        assert!(
            parts[0]
                .directory
                .starts_with("raw/source=unknown/event_type=unknown/event_date=1970-01-01/")
        );
    }

    #[test]
    fn several_reads_make_the_same_parts_in_chunks() {
        let now = 1_796_169_599_999;
        let (mut one, mut first, mut second) = (Records::new(), Records::new(), Records::new());
        for id in [9u8, 3, 7, 1, 5, 8, 2] {
            let value = format!(r#"{{"ingest_lag_ms":{}}}"#, u64::from(id) * 1000);
            record(&mut one, "events", id, "mqtt", "event/v1", value.as_bytes(), now);
            let half = if id > 4 { &mut first } else { &mut second };
            record(half, "events", id, "mqtt", "event/v1", value.as_bytes(), now);
        }
        let whole = archive_parts(&[&one], &[], "dups", 3).unwrap();
        let split = archive_parts(&[&first, &second], &[], "dups", 3).unwrap();
        assert_eq!(whole, split);
        assert_eq!(whole.len(), 1);
        let sizes: Vec<usize> = whole[0].chunks.iter().map(|c| c.rows).collect();
        assert_eq!((whole[0].rows, sizes), (7, vec![3, 3, 1]));
        let ids: Vec<String> = whole[0]
            .chunks
            .iter()
            .flat_map(|c| (0..c.rows).map(|i| c.event_ids.get(i).to_string()))
            .collect();
        let wanted: Vec<String> = [1u8, 2, 3, 5, 7, 8, 9]
            .iter()
            .map(|id| format!("{id:02x}").repeat(16))
            .collect();
        assert_eq!(ids, wanted, "sorted by event id across chunks");
        assert_eq!(whole[0].chunks[2].lags_ms, [9000]);
    }
}
