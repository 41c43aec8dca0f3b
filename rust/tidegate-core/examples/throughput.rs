//! Quick throughput check of `Validator::validate` on benchmark-like telemetry, without Python.
//!
//! `cargo run --release -p tidegate-core --example throughput [BODY_FILE [CONTENT_TYPE]]`
//! (by default, 1000 generated readings as NDJSON and as a JSON array).
//! Set `THROUGHPUT_ITERATIONS` to run a fixed number of validations instead of three seconds' worth.

use std::time::{Duration, Instant};

use tidegate_core::{Contract, Request, Validator, ValidatorOptions};

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
    measure(&validator, "ndjson", ndjson.as_bytes(), "application/x-ndjson");
    measure(&validator, "json-array", array.as_bytes(), "application/json");
}
