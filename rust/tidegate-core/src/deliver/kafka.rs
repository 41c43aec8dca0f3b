//! Kafka wire pieces built natively: the Java client's murmur2 partitioner and v2 record batches (no producer
//! id), compressed with any of Kafka's codecs, so the forwarder hands finished Kafka record batches to the Kafka
//! client. The forwarder's own grouping is a *run*: consecutive records of one partition sent as one Kafka record
//! batch.

use crate::canonical::records::{RecordRef, Records};

/// The Java client's (and aiokafka's) murmur2 hash, so tidegate picks the same partition for a key.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the default partitioner gives a keyed record.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.max(1)
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

const BATCH_HEADER: usize = 61;

/// Bytes one record takes inside a Kafka v2 record batch at `offset_delta` with `timestamp_delta`.
fn record_size(record: &RecordRef<'_>, offset_delta: i64, timestamp_delta: i64) -> usize {
    let body = record_body_len(record, offset_delta, timestamp_delta);
    varint_len(body as i64) + body
}

/// Bytes `record` takes as a Kafka v2 record batch of its own, its header included: what a broker compares with its
/// `message.max.bytes`. The validator refuses records above its `max_record_bytes` by this measure, and the
/// forwarder leaves out records by the same measure ([`EncodeOptions::max_record_bytes`]).
pub fn record_batch_size(record: &RecordRef<'_>) -> usize {
    BATCH_HEADER + record_size(record, 0, 0)
}

fn record_body_len(record: &RecordRef<'_>, offset_delta: i64, timestamp_delta: i64) -> usize {
    let key = record
        .key
        .map_or(varint_len(-1), |k| varint_len(k.len() as i64) + k.len());
    let value = varint_len(record.value.len() as i64) + record.value.len();
    let (header_count, header_bytes) = record.headers().fold((0usize, 0usize), |(count, bytes), (n, v)| {
        let header = varint_len(n.len() as i64) + n.len() + varint_len(v.len() as i64) + v.len();
        (count + 1, bytes + header)
    });
    1 + varint_len(timestamp_delta)
        + varint_len(offset_delta)
        + key
        + value
        + varint_len(header_count as i64)
        + header_bytes
}

fn write_record(out: &mut Vec<u8>, record: &RecordRef<'_>, offset_delta: i64, timestamp_delta: i64) {
    put_varint(out, record_body_len(record, offset_delta, timestamp_delta) as i64);
    out.push(0);
    put_varint(out, timestamp_delta);
    put_varint(out, offset_delta);
    match record.key {
        Some(key) => {
            put_varint(out, key.len() as i64);
            out.extend_from_slice(key);
        }
        None => put_varint(out, -1),
    }
    put_varint(out, record.value.len() as i64);
    out.extend_from_slice(record.value);
    let headers: Vec<(&str, &[u8])> = record.headers().collect();
    put_varint(out, headers.len() as i64);
    for (name, value) in headers {
        put_varint(out, name.len() as i64);
        out.extend_from_slice(name.as_bytes());
        put_varint(out, value.len() as i64);
        out.extend_from_slice(value);
    }
}

/// How a Kafka record batch's records are compressed: the codec in the low 3 bits of its attributes, each framed
/// as Kafka's Java client frames it (what brokers and every consumer decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    /// A gzip stream, level 6 (the Java client's default).
    Gzip,
    /// Snappy blocks of 32 KiB in the xerial framing (Java's `SnappyOutputStream`).
    Snappy,
    /// An LZ4 frame of independent 64 KiB blocks, no checksums (Kafka's `KafkaLZ4BlockOutputStream`, KIP-57).
    Lz4,
    /// A zstd frame, level 3 (the Java client's default).
    Zstd,
}

/// Snappy's xerial stream header: marker, "SNAPPY", NUL, version 1, minimum compatible version 1.
const XERIAL_HEADER: [u8; 16] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1];
const XERIAL_BLOCK: usize = 32 * 1024;

impl Compression {
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (Kafka's `compression.type` names).
    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec's bits in a Kafka record batch's attributes.
    pub fn attributes(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// `data` compressed with this codec, or None for `Compression::None` (and if an encoder fails: writing to
    /// memory does not, and an uncompressed Kafka record batch is as valid).
    pub fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        match self {
            Compression::None => None,
            Compression::Gzip => {
                let out = Vec::with_capacity(data.len() / 4 + 64);
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
                encoder.write_all(data).ok()?;
                encoder.finish().ok()
            }
            Compression::Snappy => {
                let mut encoder = snap::raw::Encoder::new();
                let blocks = data.len().div_ceil(XERIAL_BLOCK);
                let mut out = Vec::with_capacity(XERIAL_HEADER.len() + blocks * 4 + data.len() / 2);
                out.extend_from_slice(&XERIAL_HEADER);
                for block in data.chunks(XERIAL_BLOCK) {
                    let at = out.len();
                    out.resize(at + 4 + snap::raw::max_compress_len(block.len()), 0);
                    let written = encoder.compress(block, &mut out[at + 4..]).ok()?;
                    out[at..at + 4].copy_from_slice(&(written as i32).to_be_bytes());
                    out.truncate(at + 4 + written);
                }
                Some(out)
            }
            Compression::Lz4 => {
                use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
                let info = FrameInfo::new()
                    .block_size(BlockSize::Max64KB)
                    .block_mode(BlockMode::Independent)
                    .block_checksums(false)
                    .content_checksum(false);
                let mut encoder = FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2 + 64));
                encoder.write_all(data).ok()?;
                encoder.finish().ok()
            }
            Compression::Zstd => zstd::bulk::compress(data, 3).ok(),
        }
    }
}

/// Encodes records as one Kafka v2 record batch (magic 2, no producer id, CRC-32C), its records compressed with
/// `compression` unless that makes them no smaller (then the Kafka record batch says "no compression", as it may).
/// The base timestamp is the first record's, as aiokafka's and the Java client's builders have it (a later record
/// may be older: its delta is negative), so that [`pack`]'s sizes, measured from the first record, are exact.
pub fn encode_record_batch(records: &[RecordRef<'_>], compression: Compression) -> Vec<u8> {
    let first_ts = records.first().map_or(0, |r| r.timestamp_ms);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let mut out = Vec::with_capacity(BATCH_HEADER + records.iter().map(|r| r.value.len() + 128).sum::<usize>());
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset: set by the broker
    out.extend_from_slice(&0i32.to_be_bytes()); // Kafka record batch length: set below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&0u32.to_be_bytes()); // CRC: set below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes (codec; create time): set below
    out.extend_from_slice(&(records.len() as i32 - 1).max(0).to_be_bytes()); // last offset delta
    out.extend_from_slice(&first_ts.to_be_bytes());
    out.extend_from_slice(&max_ts.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    for (i, record) in records.iter().enumerate() {
        write_record(&mut out, record, i as i64, record.timestamp_ms - first_ts);
    }
    let mut attributes = Compression::None.attributes();
    if let Some(packed) = compression.compress(&out[BATCH_HEADER..])
        && packed.len() < out.len() - BATCH_HEADER
    {
        out.truncate(BATCH_HEADER);
        out.extend_from_slice(&packed);
        attributes = compression.attributes();
    }
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// How a range of records becomes runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub compression: Compression,
    /// Upper bound of a run's size (a Kafka record batch's) before compression (a record larger than that gets a
    /// run of its own).
    pub max_batch_bytes: usize,
    /// A record whose Kafka record batch of its own ([`record_batch_size`]) is larger is left out (`EncodedRange::oversize`).
    pub max_record_bytes: usize,
    /// Where the round robin of unkeyed records starts (in every topic).
    pub round_robin_start: u32,
}

/// One run of an [`EncodedRange`], encoded as one Kafka record batch: the records at `order[start..end]`, all of
/// one topic and partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRun {
    pub topic: String,
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl EncodedRun {
    pub fn records(&self) -> usize {
        self.end - self.start
    }
}

/// A range of records as runs, see [`encode_range`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRange {
    /// Indexes into the range's `Records`: per topic (in order of first appearance) and partition, that
    /// partition's records in range order, then the oversize records. Runs and oversize records refer to
    /// positions in this list, so a run's records can be encoded again (`split_run`) or looked up.
    pub order: Vec<usize>,
    pub runs: Vec<EncodedRun>,
    /// Positions in `order` of the records larger than `max_record_bytes`, left out of every run.
    pub oversize: Vec<usize>,
    /// Topics of the range with no partition count given: their records are in no run (encode again).
    pub missing_topics: Vec<String>,
}

/// Partitions `arena` like the default partitioner (keyed: murmur2 of the key modulo the topic's partition count;
/// unkeyed: round robin) and packs each partition's records, in order, into runs (Kafka v2 record batches) of at most
/// `options.max_batch_bytes` before compression. `partitions` gives each topic's partition count.
pub fn encode_range(
    arena: &Records,
    partitions: impl Fn(&str) -> Option<u32>,
    options: &EncodeOptions,
) -> EncodedRange {
    let records: Vec<RecordRef<'_>> = arena.iter().collect();
    let mut encoded = EncodedRange::default();
    let mut oversize = Vec::new();
    for topic in arena.topics() {
        let Some(count) = partitions(topic).filter(|count| *count > 0) else {
            encoded.missing_topics.push(topic.clone());
            continue;
        };
        let mut per_partition: Vec<Vec<usize>> = vec![Vec::new(); count as usize];
        let mut round_robin = options.round_robin_start;
        for (index, record) in records.iter().enumerate().filter(|(_, r)| r.topic == topic) {
            if record_batch_size(record) > options.max_record_bytes {
                oversize.push(index);
                continue;
            }
            let partition = match record.key {
                Some(key) => partition_for_key(key, count),
                None => {
                    round_robin = round_robin.wrapping_add(1);
                    round_robin.wrapping_sub(1) % count
                }
            };
            per_partition[partition as usize].push(index);
        }
        for (partition, indexes) in per_partition.into_iter().enumerate() {
            let base = encoded.order.len();
            encoded.order.extend(indexes);
            let run = &encoded.order[base..];
            for (start, end, bytes) in pack(&records, run, options.max_batch_bytes, options.compression) {
                encoded.runs.push(EncodedRun {
                    topic: topic.clone(),
                    partition: partition as u32,
                    bytes,
                    start: base + start,
                    end: base + end,
                });
            }
        }
    }
    encoded.oversize = (encoded.order.len()..encoded.order.len() + oversize.len()).collect();
    encoded.order.extend(oversize);
    encoded
}

/// The records at `order[start..end]` of an [`EncodedRange`] of `arena` (one run the broker refused as
/// too large) encoded again as runs of at most half their size before compression: `(start, end, bytes)`
/// per run, positions in `order`. A single record cannot be split and comes back as it was.
pub fn split_run(
    arena: &Records,
    order: &[usize],
    start: usize,
    end: usize,
    compression: Compression,
) -> Vec<(usize, usize, Vec<u8>)> {
    let run = &order[start.min(end)..end.min(order.len())];
    let records: Vec<RecordRef<'_>> = run.iter().filter_map(|&index| arena.get(index)).collect();
    let size = BATCH_HEADER
        + records
            .iter()
            .enumerate()
            .map(|(i, r)| record_size(r, i as i64, r.timestamp_ms - records[0].timestamp_ms))
            .sum::<usize>();
    let positions: Vec<usize> = (0..records.len()).collect();
    pack(&records, &positions, (size / 2).max(1), compression)
        .into_iter()
        .map(|(s, e, bytes)| (start + s, start + e, bytes))
        .collect()
}

/// `run` (indexes into `records`, one partition's, in order) cut into runs of at most `max_batch_bytes` before
/// compression (a record larger than that alone in its run): `(start, end, bytes)` per run, positions in `run`.
fn pack(
    records: &[RecordRef<'_>],
    run: &[usize],
    max_batch_bytes: usize,
    compression: Compression,
) -> Vec<(usize, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut chunk: Vec<RecordRef<'_>> = Vec::new();
    let mut start = 0;
    while start < run.len() {
        let first_ts = records[run[start]].timestamp_ms;
        let mut size = BATCH_HEADER;
        let mut end = start;
        while end < run.len() {
            let record = &records[run[end]];
            let next = record_size(record, (end - start) as i64, record.timestamp_ms - first_ts);
            if end > start && size + next > max_batch_bytes {
                break;
            }
            size += next;
            end += 1;
        }
        chunk.clear();
        chunk.extend(run[start..end].iter().map(|&index| records[index]));
        out.push((start, end, encode_record_batch(&chunk, compression)));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from the Java client's Utils.murmur2 (also aiokafka's test vectors).
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert_eq!(murmur2(b""), 275_646_681);
    }

    #[test]
    fn record_batch_size_is_the_size_of_a_batch_of_one() {
        let mut headers = Vec::new();
        crate::canonical::records::encode_header(&mut headers, "event_id", &[b'e'; 32]);
        crate::canonical::records::encode_header(&mut headers, "traceparent", &[b't'; 200]);
        for (key, value_len) in [(None, 0), (Some(&b"dev-1"[..]), 100), (Some(&b"k"[..]), 70_000)] {
            let value = vec![b'v'; value_len];
            let record = RecordRef::from_parts("t", key, &value, &headers, [0; 16], 1_774_606_531_000);
            assert_eq!(
                record_batch_size(&record),
                encode_record_batch(&[record], Compression::None).len()
            );
        }
    }

    #[test]
    fn runs_stay_within_max_batch_bytes_when_timestamps_are_out_of_order() {
        // Devices sharing a partition are appended in arrival order, not in timestamp order: a run whose first record
        // is the newest has negative deltas, which must be sized as they are encoded.
        let mut headers = Vec::new();
        crate::canonical::records::encode_header(&mut headers, "event_id", &[b'e'; 32]);
        let value = vec![b'v'; 1_000];
        let mut arena = Records::new();
        for i in 0..3_000i64 {
            let timestamp = 1_774_606_531_000 + if i % 2 == 0 { 0 } else { 9_000_000 } - i;
            arena.push(&RecordRef::from_parts(
                "t",
                Some(b"k"),
                &value,
                &headers,
                [0; 16],
                timestamp,
            ));
        }
        let records: Vec<RecordRef<'_>> = arena.iter().collect();
        let run: Vec<usize> = (0..records.len()).collect();
        let max = 1 << 20;
        let packed = pack(&records, &run, max, Compression::None);
        assert!(packed.len() > 1);
        for (start, end, bytes) in &packed {
            let first = records[*start].timestamp_ms;
            let sized = BATCH_HEADER
                + (*start..*end)
                    .map(|i| record_size(&records[i], (i - start) as i64, records[i].timestamp_ms - first))
                    .sum::<usize>();
            assert_eq!(bytes.len(), sized, "the size pack measured is the size encoded");
            assert!(bytes.len() <= max, "{} bytes in a run of at most {max}", bytes.len());
        }
    }

    const CODECS: [Compression; 4] = [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// `count` telemetry-like records over two topics: keyed ones (12 devices), every fifth unkeyed.
    fn sample(count: usize) -> Records {
        let mut arena = Records::new();
        for i in 0..count {
            let key = format!("sensor-{:03}", i % 12);
            let value = format!(
                r#"{{"device_id":"{key}","metrics":{{"temperature":{}.5,"humidity":{}}},"site":"plant-7-line-3"}}"#,
                20 + i % 9,
                40 + i % 50
            );
            let mut headers = Vec::new();
            crate::canonical::records::encode_header(&mut headers, "event_id", format!("{i:032x}").as_bytes());
            let topic = if i % 7 == 3 { "events-raw" } else { "telemetry-raw" };
            let key = (i % 5 != 0).then_some(key.as_bytes());
            let record = RecordRef::from_parts(
                topic,
                key,
                value.as_bytes(),
                &headers,
                [0; 16],
                1_774_606_531_000 + i as i64,
            );
            arena.push(&record);
        }
        arena
    }

    /// The header fields of an encoded Kafka v2 record batch: (its length, attributes, record count), after checking its
    /// CRC-32C and magic.
    fn header(data: &[u8]) -> (usize, i16, usize) {
        assert_eq!(data[16], 2, "magic");
        let crc = u32::from_be_bytes(data[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&data[21..]), "CRC-32C from the attributes on");
        let length = i32::from_be_bytes(data[8..12].try_into().unwrap()) as usize;
        let attributes = i16::from_be_bytes(data[21..23].try_into().unwrap());
        let count = i32::from_be_bytes(data[57..61].try_into().unwrap()) as usize;
        (length, attributes, count)
    }

    /// Decompresses a records section with a decoder other than the encoder (xerial framing by hand).
    fn decompress(codec: Compression, data: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        match codec {
            Compression::None => out.extend_from_slice(data),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
            }
            Compression::Snappy => {
                assert_eq!(data[..16], XERIAL_HEADER);
                let mut rest = &data[16..];
                while !rest.is_empty() {
                    let length = i32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    let block = snap::raw::Decoder::new().decompress_vec(&rest[4..4 + length]).unwrap();
                    assert!(block.len() <= XERIAL_BLOCK);
                    out.extend(block);
                    rest = &rest[4 + length..];
                }
            }
            Compression::Lz4 => {
                // FLG: version 01, independent blocks, no block or content checksum, no content size.
                assert_eq!(data[..4], [0x04, 0x22, 0x4d, 0x18]);
                assert_eq!(data[4], 0b0110_0000);
                assert_eq!(data[5], 0x40, "BD: 64 KiB blocks");
                lz4_flex::frame::FrameDecoder::new(data).read_to_end(&mut out).unwrap();
            }
            Compression::Zstd => {
                ruzstd::decoding::StreamingDecoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn compressed_kafka_batches_decode_to_the_uncompressed_records() {
        let arena = sample(2000);
        let records: Vec<RecordRef<'_>> = arena.iter().collect();
        let plain = encode_record_batch(&records, Compression::None);
        assert_eq!(header(&plain), (plain.len() - 12, 0, records.len()));
        for codec in CODECS {
            let packed = encode_record_batch(&records, codec);
            let (length, attributes, count) = header(&packed);
            assert_eq!(
                (length, attributes, count),
                (packed.len() - 12, codec.attributes(), records.len())
            );
            assert!(packed.len() * 3 < plain.len(), "{codec:?} compresses repetitive JSON");
            assert_eq!(packed[..8], plain[..8], "{codec:?}: base offset");
            assert_eq!(packed[12..17], plain[12..17], "{codec:?}: leader epoch, magic");
            assert_eq!(
                packed[23..BATCH_HEADER],
                plain[23..BATCH_HEADER],
                "{codec:?}: the rest of the header"
            );
            assert_eq!(
                decompress(codec, &packed[BATCH_HEADER..]),
                plain[BATCH_HEADER..],
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_kafka_batch_compression_does_not_shrink_stays_uncompressed() {
        let mut headers = Vec::new();
        crate::canonical::records::encode_header(&mut headers, "a", b"b");
        let record = RecordRef::from_parts("t", None, b"x", &headers, [0; 16], 1);
        let plain = encode_record_batch(&[record], Compression::None);
        for codec in CODECS {
            assert_eq!(encode_record_batch(&[record], codec), plain, "{codec:?}");
        }
    }

    #[test]
    fn codec_names_are_kafkas() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
        assert_eq!(Compression::from_name("brotli"), None);
    }

    fn options(compression: Compression, max_batch_bytes: usize) -> EncodeOptions {
        EncodeOptions {
            compression,
            max_batch_bytes,
            max_record_bytes: 1 << 20,
            round_robin_start: 7,
        }
    }

    /// Every record of `arena` is in exactly one run or left out; per partition, in arena order; runs
    /// within the cap (before compression) unless they hold one record; partitions as the default partitioner.
    fn check_range(arena: &Records, encoded: &EncodedRange, counts: &[(&str, u32)], cap: usize) {
        let mut seen = vec![false; arena.len()];
        for &index in &encoded.order {
            assert!(!seen[index], "record {index} twice");
            seen[index] = true;
        }
        assert!(seen.iter().all(|s| *s), "every record is placed");
        let mut last_end = 0;
        for produce in &encoded.runs {
            assert!(
                produce.start < produce.end && produce.start == last_end,
                "runs tile the order"
            );
            last_end = produce.end;
            let indexes = &encoded.order[produce.start..produce.end];
            assert!(indexes.windows(2).all(|w| w[0] < w[1]), "record order kept");
            let records: Vec<RecordRef<'_>> = indexes.iter().map(|&i| arena.get(i).unwrap()).collect();
            let count = counts.iter().find(|(t, _)| *t == produce.topic).unwrap().1;
            for record in &records {
                assert_eq!(record.topic, produce.topic);
                if let Some(key) = record.key {
                    assert_eq!(partition_for_key(key, count), produce.partition);
                }
            }
            let plain = encode_record_batch(&records, Compression::None);
            assert!(records.len() == 1 || plain.len() <= cap, "{} > {cap}", plain.len());
            let (_, attributes, count) = header(&produce.bytes);
            assert_eq!(count, records.len());
            let codec = if attributes == 0 {
                Compression::None
            } else {
                options_codec(attributes)
            };
            assert_eq!(decompress(codec, &produce.bytes[BATCH_HEADER..]), plain[BATCH_HEADER..]);
        }
        assert_eq!(last_end, encoded.order.len() - encoded.oversize.len());
    }

    fn options_codec(attributes: i16) -> Compression {
        *CODECS.iter().find(|c| c.attributes() == attributes).unwrap()
    }

    #[test]
    fn a_range_is_partitioned_packed_and_compressed() {
        let arena = sample(3000);
        let counts = [("telemetry-raw", 4u32), ("events-raw", 3u32)];
        let lookup = |topic: &str| counts.iter().find(|(t, _)| *t == topic).map(|(_, c)| *c);
        for codec in [Compression::None, Compression::Zstd, Compression::Lz4] {
            for cap in [1 << 20, 4000, 1] {
                let encoded = encode_range(&arena, lookup, &options(codec, cap));
                assert!(encoded.oversize.is_empty() && encoded.missing_topics.is_empty());
                check_range(&arena, &encoded, &counts, cap);
                if cap == 1 {
                    assert!(encoded.runs.iter().all(|b| b.records() == 1));
                }
            }
        }
        // Unkeyed records go round robin from the start given, keyed ones by murmur2.
        let encoded = encode_range(&arena, lookup, &options(Compression::None, 1 << 20));
        let first_unkeyed = encoded
            .runs
            .iter()
            .find(|b| b.topic == "telemetry-raw" && encoded.order[b.start..b.end].contains(&0))
            .unwrap();
        assert_eq!(first_unkeyed.partition, 7 % 4);
    }

    #[test]
    fn oversize_records_and_topics_without_a_partition_count_are_left_out() {
        let arena = sample(200);
        let mut big = arena.clone();
        let value = vec![b'v'; 5000];
        big.push(&RecordRef::from_parts(
            "telemetry-raw",
            Some(b"k"),
            &value,
            &[],
            [0; 16],
            5,
        ));
        let mut opts = options(Compression::Gzip, 1 << 20);
        opts.max_record_bytes = record_batch_size(&big.get(200).unwrap()) - 1;
        let encoded = encode_range(&big, |t| (t == "telemetry-raw").then_some(2), &opts);
        assert_eq!(encoded.missing_topics, ["events-raw"]);
        assert_eq!(encoded.oversize.len(), 1);
        assert_eq!(encoded.order[encoded.oversize[0]], 200);
        let placed: usize = encoded.runs.iter().map(EncodedRun::records).sum();
        assert_eq!(placed, big.iter().filter(|r| r.topic == "telemetry-raw").count() - 1);
        opts.max_record_bytes += 1;
        assert!(
            encode_range(&big, |_| Some(2), &opts).oversize.is_empty(),
            "the limit is inclusive"
        );
    }

    #[test]
    fn a_refused_run_splits_into_halves_of_the_same_records() {
        let arena = sample(1000);
        let counts = [("telemetry-raw", 1u32), ("events-raw", 1u32)];
        let lookup = |topic: &str| counts.iter().find(|(t, _)| *t == topic).map(|(_, c)| *c);
        for codec in [Compression::None, Compression::Snappy] {
            let encoded = encode_range(&arena, lookup, &options(codec, 1 << 20));
            let whole = &encoded.runs[0];
            let size = encode_record_batch(
                &encoded.order[whole.start..whole.end]
                    .iter()
                    .map(|&i| arena.get(i).unwrap())
                    .collect::<Vec<_>>(),
                Compression::None,
            )
            .len();
            let halves = split_run(&arena, &encoded.order, whole.start, whole.end, codec);
            assert!(halves.len() >= 2);
            let mut at = whole.start;
            for (start, end, bytes) in &halves {
                assert_eq!(*start, at);
                at = *end;
                let records: Vec<RecordRef<'_>> = encoded.order[*start..*end]
                    .iter()
                    .map(|&i| arena.get(i).unwrap())
                    .collect();
                assert!(encode_record_batch(&records, Compression::None).len() <= size / 2);
                assert_eq!(*bytes, encode_record_batch(&records, codec), "the same encoder");
            }
            assert_eq!(at, whole.end);
            // One record cannot be split: it comes back as it was.
            let one = split_run(&arena, &encoded.order, whole.start, whole.start + 1, codec);
            assert_eq!(one.len(), 1);
            assert_eq!((one[0].0, one[0].1), (whole.start, whole.start + 1));
        }
    }
}
