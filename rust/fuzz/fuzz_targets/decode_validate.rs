//! Decode + validate arbitrary bytes under every format, encoding and contract: never a panic, never a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidegate_core::{Contract, Limits, Request, Validator, ValidatorOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let contract = match selector % 4 {
        0 => Contract::telemetry(),
        1 => Contract::batch(),
        2 => Contract::event(),
        _ => match Contract::custom("fuzz/v1", r#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}}}}"#, "t", None, None, None) {
            Ok(contract) => contract,
            Err(_) => return,
        },
    };
    let content_type = ["application/json", "application/x-ndjson", "application/cbor"][usize::from(selector / 4 % 3)];
    let content_encoding = [None, Some("gzip"), Some("zstd")][usize::from(selector / 12 % 3)];
    let limits = Limits { max_body_bytes: 1 << 20, ..Limits::default() };
    let validator = Validator::new(contract, ValidatorOptions { limits, ..ValidatorOptions::default() });
    let request = Request { body, content_type, content_encoding, received_at_ms: 1_795_341_600_000, priority: None, source: None, traceparent: None, tracestate: None, idempotency_key: None, device_id: None };
    if let Ok(outcome) = validator.validate(&request) {
        assert_eq!(outcome.event_ids.len(), outcome.total);
        assert!(outcome.accepted <= outcome.total);
    }
});
