//! Kafka wire pieces built natively: the Java client's murmur2 partitioner and v2 record batches
//! (uncompressed, no producer id), so the forwarder hands finished bytes to the Kafka client.

use crate::batch::{RecordBatch, RecordRef};

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

/// Bytes one record takes inside a v2 batch at `offset_delta` with `timestamp_delta`.
fn record_size(record: &RecordRef<'_>, offset_delta: i64, timestamp_delta: i64) -> usize {
    let body = record_body_len(record, offset_delta, timestamp_delta);
    varint_len(body as i64) + body
}

/// Bytes `record` takes as a v2 record batch of its own, batch header included: what a broker compares with its
/// `message.max.bytes`. The validator refuses records above its `max_record_bytes` by this measure, and the
/// forwarder skips records by the same measure (`partition_batches`' `max_record_bytes` is this minus the
/// batch header).
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

/// Encodes records as one v2 record batch (magic 2, no compression, no producer id, CRC32C).
pub fn encode_record_batch(records: &[RecordRef<'_>]) -> Vec<u8> {
    let first_ts = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let mut out = Vec::with_capacity(BATCH_HEADER + records.iter().map(|r| r.value.len() + 128).sum::<usize>());
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset: set by the broker
    out.extend_from_slice(&0i32.to_be_bytes()); // batch length: patched below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&0u32.to_be_bytes()); // CRC: patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, create time
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
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// One encoded batch for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBatch {
    pub partition: u32,
    pub bytes: Vec<u8>,
    pub records: usize,
}

/// The records of `topic` in `batch`, partitioned like the default partitioner (keyed: murmur2; unkeyed: round
/// robin from `round_robin_start`) and packed into v2 batches of at most `max_batch_bytes` each (a single record
/// larger than that gets a batch of its own). Records larger than `max_record_bytes` are left out and their
/// indexes in `batch` returned. Per partition, record order is kept.
pub fn partition_batches(
    batch: &RecordBatch,
    topic: &str,
    partitions: u32,
    max_batch_bytes: usize,
    max_record_bytes: usize,
    round_robin_start: u32,
) -> (Vec<PartitionBatch>, Vec<usize>) {
    let partitions = partitions.max(1);
    let mut per_partition: Vec<Vec<RecordRef<'_>>> = vec![Vec::new(); partitions as usize];
    let mut oversize = Vec::new();
    let mut round_robin = round_robin_start;
    for (index, record) in batch.iter().enumerate().filter(|(_, r)| r.topic == topic) {
        if record_size(&record, 0, 0) > max_record_bytes {
            oversize.push(index);
            continue;
        }
        let partition = match record.key {
            Some(key) => partition_for_key(key, partitions),
            None => {
                round_robin = round_robin.wrapping_add(1);
                round_robin.wrapping_sub(1) % partitions
            }
        };
        per_partition[partition as usize].push(record);
    }
    let mut out = Vec::new();
    for (partition, records) in per_partition.iter().enumerate() {
        let mut start = 0;
        while start < records.len() {
            let first_ts = records[start].timestamp_ms;
            let mut size = BATCH_HEADER;
            let mut end = start;
            while end < records.len() {
                let next = record_size(
                    &records[end],
                    (end - start) as i64,
                    records[end].timestamp_ms - first_ts,
                );
                if end > start && size + next > max_batch_bytes {
                    break;
                }
                size += next;
                end += 1;
            }
            out.push(PartitionBatch {
                partition: partition as u32,
                bytes: encode_record_batch(&records[start..end]),
                records: end - start,
            });
            start = end;
        }
    }
    (out, oversize)
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
        crate::batch::encode_header(&mut headers, "event_id", &[b'e'; 32]);
        crate::batch::encode_header(&mut headers, "traceparent", &[b't'; 200]);
        for (key, value_len) in [(None, 0), (Some(&b"dev-1"[..]), 100), (Some(&b"k"[..]), 70_000)] {
            let value = vec![b'v'; value_len];
            let record = RecordRef::from_parts("t", key, &value, &headers, [0; 16], 1_774_606_531_000);
            assert_eq!(record_batch_size(&record), encode_record_batch(&[record]).len());
        }
    }
}
