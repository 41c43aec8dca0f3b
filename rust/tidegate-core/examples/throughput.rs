//! Quick throughput check of `Validator::validate` on benchmark-like telemetry, without Python.
//!
//! `cargo run --release -p tidegate-core --example throughput [BODY_FILE [CONTENT_TYPE]]`
//! (by default, 1000 generated readings as NDJSON, as a JSON array and as a CBOR array).
//! Set `THROUGHPUT_ITERATIONS` to run a fixed number of validations instead of three seconds' worth, and
//! `THROUGHPUT_FORMAT` (`ndjson`, `json-array` or `cbor`) to measure one format only.
//!
//! Instructions per record, under callgrind: the difference between two runs of different iteration counts,
//! divided by the extra records, leaves out the set-up (generating the bodies, compiling the contract):
//!
//! ```text
//! cargo build --profile profiling -p tidegate-core --example throughput
//! for n in 5 25; do THROUGHPUT_FORMAT=ndjson THROUGHPUT_ITERATIONS=$n valgrind --tool=callgrind \
//!     --callgrind-out-file=cg.$n target/profiling/examples/throughput; done
//! # (Ir of cg.25 - Ir of cg.5) / 20,000
//! ```

use std::time::{Duration, Instant};

use tidegate_core::decode::value::Value;
use tidegate_core::{Contract, Limits, Request, Validator, ValidatorOptions};

const NOW_MS: i64 = 1_774_606_530_123;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn reading(rng: &mut Rng) -> String {
    let sites = [
        "factory-floor",
        "warehouse_b",
        "cold-store",
        "roof",
        "lab2",
        "dock_east",
    ];
    let firmware = ["2.1.0", "2.1.1", "2.2.0-rc1", "1.9.7"];
    let site = sites[rng.below(6) as usize];
    let device = rng.below(64) + 1;
    let millis = NOW_MS - rng.below(6 * 24 * 3600 * 1000) as i64;
    let (secs, ms) = (millis / 1000, millis % 1000);
    let (day, sod) = (secs / 86_400 - 20_539, secs % 86_400); // days after 2026-03-27 (negative: before)
    let timestamp = format!(
        "2026-03-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        27 + day,
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    let mut metrics = format!(
        r#""temperature":{}.{},"humidity":{}.{},"pressure":{}.{:02}"#,
        12 + rng.below(26),
        rng.below(10),
        25 + rng.below(60),
        rng.below(10),
        985 + rng.below(50),
        rng.below(100)
    );
    if rng.below(10) < 3 {
        metrics.push_str(&format!(r#","co2_ppm":{}"#, 380 + rng.below(1120)));
    }
    if rng.below(10) < 2 {
        metrics.push_str(&format!(r#","vibration_rms":{}.{:03}"#, rng.below(4), rng.below(1000)));
    }
    let metadata = format!(
        r#","metadata":{{"firmware_version":"{}","battery_level":{},"signal_strength":-{}}}"#,
        firmware[rng.below(4) as usize],
        rng.below(101),
        40 + rng.below(70)
    );
    format!(
        r#"{{"device_id":"sensor-{site}-{device:03}","timestamp":"{timestamp}","metrics":{{{metrics}}}{metadata}}}"#
    )
}

/// Appends a CBOR head: major type and argument, in the shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    match n {
        0..24 => out.push(major | n as u8),
        24..0x100 => out.extend_from_slice(&[major | 24, n as u8]),
        0x100..0x1_0000 => {
            out.push(major | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..0x1_0000_0000 => {
            out.push(major | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Appends the CBOR of a decoded JSON value as a client library writes it: integers as integers, other
/// numbers as 64-bit floats.
fn cbor(out: &mut Vec<u8>, value: &Value<'_>) {
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Number(n, _) if n.fract() == 0.0 && n.abs() < 1e15 => {
            if *n < 0.0 {
                cbor_head(out, 1, (-n - 1.0) as u64);
            } else {
                cbor_head(out, 0, *n as u64);
            }
        }
        Value::Number(n, _) => {
            out.push(0xfb);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::String(s) => {
            cbor_head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            cbor_head(out, 4, items.len() as u64);
            items.iter().for_each(|item| cbor(out, item));
        }
        Value::Object(fields) => {
            cbor_head(out, 5, fields.len() as u64);
            for (key, value) in fields {
                cbor_head(out, 3, key.len() as u64);
                out.extend_from_slice(key.as_bytes());
                cbor(out, value);
            }
        }
        Value::Integer(_) | Value::Invalid(_) => unreachable!("the generated readings hold neither"),
    }
}

fn measure(validator: &Validator, name: &str, body: &[u8], content_type: &str) {
    let request = Request {
        body,
        content_type,
        content_encoding: None,
        received_at_ms: NOW_MS,
        priority: None,
        source: None,
        traceparent: None,
        tracestate: None,
        idempotency_key: None,
        device_id: None,
    };
    let first = validator.validate(&request).expect("the body decodes");
    assert_eq!(first.accepted, first.total, "{:?}", first.rejected.first());
    let records = first.total;
    // THROUGHPUT_ITERATIONS=n runs exactly n validations (for instruction counts under callgrind).
    let iterations: Option<usize> = std::env::var("THROUGHPUT_ITERATIONS").ok().and_then(|n| n.parse().ok());
    let mut times = Vec::new();
    let started = Instant::now();
    while match iterations {
        Some(n) => times.len() < n,
        None => started.elapsed() < Duration::from_secs(3),
    } {
        let t = Instant::now();
        let outcome = validator.validate(&request).expect("the body decodes");
        times.push(t.elapsed());
        std::hint::black_box(outcome);
    }
    times.sort_unstable();
    let median = times[times.len() / 2].as_secs_f64();
    let best = times[0].as_secs_f64();
    println!(
        "{name:>10}: {records} records, median {:.3} ms, {:.0} records/s, {:.0} MB/s (best {:.0} records/s)",
        median * 1e3,
        records as f64 / median,
        body.len() as f64 / median / 1e6,
        records as f64 / best
    );
}

fn main() {
    let validator = Validator::new(Contract::telemetry(), ValidatorOptions::default());
    let mut args = std::env::args().skip(1);
    if let Some(path) = args.next() {
        let body = std::fs::read(&path).expect("a readable body file");
        let content_type = args.next().unwrap_or_else(|| "application/x-ndjson".into());
        measure(&validator, &path, &body, &content_type);
        return;
    }
    let mut rng = Rng(0x7469_6465_6761_7465);
    let records: Vec<String> = (0..1000).map(|_| reading(&mut rng)).collect();
    let ndjson: String = records.iter().map(|r| format!("{r}\n")).collect();
    let array = format!("[{}]", records.join(","));
    let mut cbor_array = Vec::new();
    cbor_head(&mut cbor_array, 4, records.len() as u64);
    for record in &records {
        let value = tidegate_core::decode::json::parse_one(record, &Limits::default()).expect("a generated reading");
        cbor(&mut cbor_array, &value);
    }
    let only = std::env::var("THROUGHPUT_FORMAT").ok();
    let formats: [(&str, &[u8], &str); 3] = [
        ("ndjson", ndjson.as_bytes(), "application/x-ndjson"),
        ("json-array", array.as_bytes(), "application/json"),
        ("cbor", &cbor_array, "application/cbor"),
    ];
    for (name, body, content_type) in formats {
        if only.as_deref().is_none_or(|f| f == name) {
            measure(&validator, name, body, content_type);
        }
    }
}
