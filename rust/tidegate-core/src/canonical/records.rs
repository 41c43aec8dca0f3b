//! Records ready for delivery, packed in one arena: no allocation per field, none per record beyond the arena.

/// A reference to one record of a [`Records`] arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'b> {
    pub topic: &'b str,
    pub key: Option<&'b [u8]>,
    pub value: &'b [u8],
    /// The record's headers, encoded; iterate with [`RecordRef::headers`].
    headers: &'b [u8],
    pub event_id: [u8; 16],
    pub timestamp_ms: i64,
}

impl<'b> RecordRef<'b> {
    /// A record from its parts; `headers` in [`encode_header`] form.
    pub fn from_parts(
        topic: &'b str,
        key: Option<&'b [u8]>,
        value: &'b [u8],
        headers: &'b [u8],
        event_id: [u8; 16],
        timestamp_ms: i64,
    ) -> RecordRef<'b> {
        RecordRef {
            topic,
            key,
            value,
            headers,
            event_id,
            timestamp_ms,
        }
    }

    /// Iterates the headers as `(name, value)` pairs, in the order they were added.
    pub fn headers(&self) -> HeaderIter<'b> {
        HeaderIter { rest: self.headers }
    }

    /// The encoded headers (the form [`Records::push`] takes).
    pub fn raw_headers(&self) -> &'b [u8] {
        self.headers
    }

    /// The event id as 32 lower-case hex digits.
    pub fn event_id_hex(&self) -> String {
        hex(&self.event_id)
    }

    /// Whether this is the dead-letter copy of a flagged record (it carries a `dlq-reason` header).
    pub fn is_dead_letter_copy(&self) -> bool {
        self.headers().any(|(name, _)| name == "dlq-reason")
    }
}

/// Iterator over encoded headers.
pub struct HeaderIter<'b> {
    rest: &'b [u8],
}

impl<'b> Iterator for HeaderIter<'b> {
    type Item = (&'b str, &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (name_len, rest) = self.rest.split_first_chunk::<2>()?;
        let name_len = usize::from(u16::from_le_bytes(*name_len));
        let (name, rest) = rest.split_at_checked(name_len)?;
        let (value_len, rest) = rest.split_first_chunk::<4>()?;
        let (value, rest) = rest.split_at_checked(u32::from_le_bytes(*value_len) as usize)?;
        self.rest = rest;
        Some((std::str::from_utf8(name).ok()?, value))
    }
}

/// Appends one header in the encoding [`HeaderIter`] reads: `u16` name length, name, `u32` value length, value.
pub fn encode_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    topic: u16,
    key: Option<(u32, u32)>,
    value: (u32, u32),
    headers: (u32, u32),
    event_id: [u8; 16],
    timestamp_ms: i64,
}

/// The record arena: accepted records grouped by topic, in arrival order, each with its Kafka key, value and headers.
#[derive(Debug, Clone, Default)]
pub struct Records {
    arena: Vec<u8>,
    slots: Vec<Slot>,
    topics: Vec<String>,
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of keys, values and headers held.
    pub fn payload_bytes(&self) -> usize {
        self.arena.len()
    }

    /// Topics in order of first appearance.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    fn topic_index(&mut self, topic: &str) -> u16 {
        match self.topics.iter().position(|t| t == topic) {
            Some(i) => i as u16,
            None => {
                self.topics.push(topic.to_string());
                (self.topics.len() - 1) as u16
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        (start, self.arena.len() as u32)
    }

    /// Makes room for `records` more records holding about `bytes` more bytes in all.
    pub(crate) fn reserve(&mut self, records: usize, bytes: usize) {
        self.slots.reserve(records);
        self.arena.reserve(bytes);
    }

    /// Adds a record; `headers` is in [`encode_header`] form.
    pub fn push(&mut self, record: &RecordRef<'_>) {
        let topic = self.topic_index(record.topic);
        let key = record.key.map(|k| self.append(k));
        let value = self.append(record.value);
        let headers = self.append(record.headers);
        self.slots.push(Slot {
            topic,
            key,
            value,
            headers,
            event_id: record.event_id,
            timestamp_ms: record.timestamp_ms,
        });
    }

    /// Adds a record whose value is written straight into the arena by `write_value`, avoiding a copy.
    pub fn push_with(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        event_id: [u8; 16],
        timestamp_ms: i64,
        write_value: impl FnOnce(&mut Vec<u8>),
        write_headers: impl FnOnce(&mut Vec<u8>),
    ) {
        let topic = self.topic_index(topic);
        let key = key.map(|k| self.append(k));
        let value_start = self.arena.len() as u32;
        write_value(&mut self.arena);
        let value = (value_start, self.arena.len() as u32);
        let headers_start = self.arena.len() as u32;
        write_headers(&mut self.arena);
        let headers = (headers_start, self.arena.len() as u32);
        self.slots.push(Slot {
            topic,
            key,
            value,
            headers,
            event_id,
            timestamp_ms,
        });
    }

    /// The last record added.
    pub fn last(&self) -> Option<RecordRef<'_>> {
        self.get(self.slots.len().checked_sub(1)?)
    }

    /// Removes the last record (and its bytes, which are at the end of the arena), and its topic if no other
    /// record has it.
    pub fn pop(&mut self) {
        if let Some(slot) = self.slots.pop() {
            let start = slot.key.map_or(slot.value.0, |key| key.0);
            self.arena.truncate(start as usize);
            let topic = usize::from(slot.topic);
            if topic + 1 == self.topics.len() && !self.slots.iter().any(|s| s.topic == slot.topic) {
                self.topics.pop();
            }
        }
    }

    /// Appends a copy of record `index` sent to `topic`, with `extra_headers` (encoded) added.
    pub fn copy_to_topic(&mut self, index: usize, topic: &str, extra_headers: &[u8]) {
        let Some(record) = self.get(index) else { return };
        let (key, value) = (record.key.map(<[u8]>::to_vec), record.value.to_vec());
        let mut headers = record.headers.to_vec();
        headers.extend_from_slice(extra_headers);
        let (event_id, timestamp_ms) = (record.event_id, record.timestamp_ms);
        self.push(&RecordRef {
            topic,
            key: key.as_deref(),
            value: &value,
            headers: &headers,
            event_id,
            timestamp_ms,
        });
    }

    pub fn get(&self, index: usize) -> Option<RecordRef<'_>> {
        let slot = self.slots.get(index)?;
        let range = |(start, end): (u32, u32)| &self.arena[start as usize..end as usize];
        Some(RecordRef {
            topic: &self.topics[usize::from(slot.topic)],
            key: slot.key.map(range),
            value: range(slot.value),
            headers: range(slot.headers),
            event_id: slot.event_id,
            timestamp_ms: slot.timestamp_ms,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        (0..self.slots.len()).filter_map(|i| self.get(i))
    }

    /// Moves every record of `other` to the end of these records.
    pub fn extend(&mut self, other: &Records) {
        for record in other.iter() {
            self.push(&record);
        }
    }

    /// Removes the records whose event id `drop` says was seen before, and any later repeat of a (topic, event
    /// id) pair within these records. Returns how many records were removed; the arena is rebuilt only if any.
    pub fn remove_duplicates(&mut self, drop: impl Fn(&[u8; 16]) -> bool) -> usize {
        self.move_duplicates(drop, None)
    }

    /// [`Records::remove_duplicates`], and each removed record that is not a dead-letter copy is also added to
    /// `moved.0` on the topic `moved.1` (the archive records duplicate occurrences from there).
    pub fn move_duplicates(
        &mut self,
        drop: impl Fn(&[u8; 16]) -> bool,
        mut moved: Option<(&mut Records, &str)>,
    ) -> usize {
        let mut seen: crate::canonical::id::IdSet<(u16, [u8; 16])> = crate::canonical::id::IdSet::default();
        seen.reserve(self.slots.len());
        let keep: Vec<bool> = self
            .slots
            .iter()
            .map(|s| !drop(&s.event_id) && seen.insert((s.topic, s.event_id)))
            .collect();
        let removed = keep.iter().filter(|k| !**k).count();
        if removed > 0 {
            if let Some((target, topic)) = moved.as_mut() {
                for (index, _) in keep.iter().enumerate().filter(|(_, k)| !**k) {
                    if let Some(record) = self.get(index)
                        && !record.is_dead_letter_copy()
                    {
                        target.push(&RecordRef { topic, ..record });
                    }
                }
            }
            let mut flags = keep.into_iter();
            self.retain(|_| flags.next().unwrap_or(true));
        }
        removed
    }

    /// Every record of these records but its dead-letter copies, on `topic` (a request whose idempotency key was
    /// seen before: every record of it is a duplicate occurrence).
    pub fn moved_to(&self, topic: &str) -> Records {
        let mut moved = Records::new();
        for record in self.iter().filter(|r| !r.is_dead_letter_copy()) {
            moved.push(&RecordRef { topic, ..record });
        }
        moved
    }

    /// Keeps only the records for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&RecordRef<'_>) -> bool) {
        let mut kept = Records::new();
        for record in self.iter() {
            if keep(&record) {
                kept.push(&record);
            }
        }
        *self = kept;
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_and_headers() {
        let mut headers = Vec::new();
        encode_header(&mut headers, "event_id", b"abc");
        encode_header(&mut headers, "priority", b"high");
        let mut records = Records::new();
        records.push(&RecordRef {
            topic: "t1",
            key: Some(b"k"),
            value: b"v1",
            headers: &headers,
            event_id: [1; 16],
            timestamp_ms: 5,
        });
        records.push(&RecordRef {
            topic: "t2",
            key: None,
            value: b"v2",
            headers: &[],
            event_id: [2; 16],
            timestamp_ms: 6,
        });
        assert_eq!(records.len(), 2);
        assert_eq!(records.topics(), ["t1", "t2"]);
        let first = records.get(0).unwrap();
        assert_eq!(first.key, Some(&b"k"[..]));
        assert_eq!(
            first.headers().collect::<Vec<_>>(),
            [("event_id", &b"abc"[..]), ("priority", &b"high"[..])]
        );
        assert_eq!(records.get(1).unwrap().key, None);
        records.retain(|r| r.topic == "t2");
        assert_eq!(records.len(), 1);
        assert_eq!(records.get(0).unwrap().value, b"v2");
    }

    #[test]
    fn duplicates_move_to_their_topic_without_dead_letter_copies() {
        let mut dlq = Vec::new();
        encode_header(&mut dlq, "dlq-reason", b"semantic-range");
        let mut records = Records::new();
        for (topic, id, headers) in [("t", 1u8, &[][..]), ("dlq", 1, &dlq[..]), ("t", 2, &[]), ("t", 2, &[])] {
            records.push(&RecordRef {
                topic,
                key: Some(b"k"),
                value: &[id],
                headers,
                event_id: [id; 16],
                timestamp_ms: 7,
            });
        }
        let mut moved = Records::new();
        // Id 1 was seen before; the second id 2 repeats the first within these records.
        let removed = records.move_duplicates(|id| id == &[1; 16], Some((&mut moved, "dups")));
        assert_eq!(removed, 3);
        assert_eq!(records.len(), 1);
        assert_eq!(records.get(0).unwrap().event_id, [2; 16]);
        let kept: Vec<_> = moved.iter().map(|r| (r.topic, r.event_id[0], r.timestamp_ms)).collect();
        assert_eq!(kept, [("dups", 1, 7), ("dups", 2, 7)]);
        let all = records.moved_to("dups");
        assert_eq!(all.topics(), ["dups"]);
        assert_eq!(all.len(), 1);
    }
}
