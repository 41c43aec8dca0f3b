use std::sync::Arc;

use super::*;
use crate::contract::Contract;
use crate::contract::validator::ValidatorOptions;
use crate::spool::SpoolOptions;
use crate::state::lastseen::SilenceRules;

const NOW_MS: i64 = 1_774_606_531_000;

/// A gateway with the directory of its spools, removed when the test drops it (after the gateway: fields drop in
/// order), even if the test panics.
struct TestGateway {
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestGateway {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

fn gateway(name: &str, archive: bool) -> TestGateway {
    gateway_with(name, archive, SpoolOptions::default())
}

fn gateway_with(name: &str, archive: bool, spool_options: SpoolOptions) -> TestGateway {
    gateway_with_lanes(name, archive, spool_options, None)
}

/// With `high_options`, a high-priority spool of its own (its lane).
fn gateway_with_lanes(
    name: &str,
    archive: bool,
    spool_options: SpoolOptions,
    high_options: Option<SpoolOptions>,
) -> TestGateway {
    let dir = crate::test_dir(&format!("gateway-{name}"));
    let options = ValidatorOptions {
        quarantine: true,
        ..ValidatorOptions::default()
    };
    let route = |name: &str, kind, contract| Route {
        name: name.into(),
        kind,
        validator: Validator::new(contract, options.clone()),
    };
    let routes = vec![
        route("ingest", RouteKind::Telemetry, Contract::telemetry()),
        route("batch", RouteKind::Batch, Contract::batch()),
        route("events", RouteKind::Event, Contract::event()),
    ];
    let settings = Settings {
        archive,
        duplicates_topic: "tidegate-duplicates".into(),
        quarantine: true,
        dead_letter_topic: "ingest-dlq".into(),
        max_record_bytes: 1_000_000,
        max_body_bytes: 8 << 20,
        dedup_ttl_ms: 3_600_000,
        key_ttl_ms: 86_400_000,
    };
    let tables = Tables {
        dedup: Arc::new(SharedWindow::open(None, 1024).unwrap()),
        decoded_bytes: Arc::new(RateTable::open(None, 1024, 0.0, 0.0).unwrap()),
        quarantine_budget: Arc::new(RateTable::open(None, 1024, 0.0, 0.0).unwrap()),
        devices: Arc::new(
            LastSeenTable::open(None, 1024, SilenceRules::new(60_000, 1_000, Vec::new(), 86_400_000)).unwrap(),
        ),
    };
    let spool = Arc::new(Spool::open(dir.path().join("main"), spool_options).unwrap());
    let high = high_options.map(|options| Arc::new(Spool::open(dir.path().join("high"), options).unwrap()));
    TestGateway {
        gateway: Gateway::new(routes, settings, tables, spool, high),
        _dir: dir,
    }
}

fn body<'a>(route: usize, bytes: &'a [u8], device: Option<&'a str>) -> Body<'a> {
    Body {
        route,
        body: bytes,
        content_type: None,
        content_encoding: None,
        traceparent: None,
        tracestate: None,
        idempotency_key: None,
        device_id: device,
        device_from_source: false,
        priority: "high",
        dry_run: false,
        source: Source {
            name: "http",
            headers: &[],
            undecodable_retried: false,
        },
        received_ms: NOW_MS,
        now_us: NOW_MS * 1000,
    }
}

const READING: &[u8] =
    br#"{"device_id":"dev-1","timestamp":"2026-03-27T10:15:30.000Z","metrics":{"temperature":23.5}}"#;

fn text(answer: &Answer) -> &str {
    std::str::from_utf8(&answer.body).unwrap()
}

/// Commits the spool and settles, as the group commit does.
fn commit(gateway: &Gateway) {
    commit_lane(gateway, Lane::Main);
}

fn commit_lane(gateway: &Gateway, lane: Lane) {
    let durable = gateway.lane_spool(lane).unwrap().commit().unwrap();
    gateway.settle(lane, durable, false).unwrap();
}

#[test]
fn a_reading_is_answered_once_durable_and_its_repeat_is_a_duplicate() {
    let gateway = gateway("reading", false);
    let first = gateway.accept(&body(0, READING, Some("dev-1"))).unwrap();
    assert_eq!(first.status, 202);
    assert!(
        text(&first).starts_with(r#"{"status":"accepted","event_id":""#),
        "{}",
        text(&first)
    );
    assert!(
        text(&first).ends_with(r#","ingest_lag_ms":1000,"warnings":[]}"#),
        "{}",
        text(&first)
    );
    assert_eq!(first.durable_ends, Some([1, 0]));
    assert_eq!(gateway.counters().records[0][0], 0, "counted once durable");
    commit(&gateway);
    assert_eq!(gateway.counters().records[0][0], 1);
    let again = gateway.accept(&body(0, READING, Some("dev-1"))).unwrap();
    assert!(text(&again).starts_with(r#"{"status":"duplicate""#), "{}", text(&again));
    assert_eq!(
        again.durable_ends,
        Some([0, 0]),
        "repeats a durable record: nothing to wait for"
    );
    assert_eq!(gateway.waiting(), 0, "settled at once");
    assert_eq!(gateway.counters().records[1][0], 1);
}

#[test]
fn a_failed_commit_releases_the_claims() {
    let gateway = gateway("failed", false);
    let first = gateway.accept(&body(0, READING, Some("dev-1"))).unwrap();
    assert_eq!(first.durable_ends, Some([1, 0]));
    gateway.settle(Lane::Main, 0, true).unwrap();
    assert_eq!(gateway.waiting(), 0);
    let retry = gateway.accept(&body(0, READING, Some("dev-1"))).unwrap();
    assert!(text(&retry).starts_with(r#"{"status":"accepted""#), "{}", text(&retry));
    assert_eq!(
        gateway.counters().records,
        [[0; 3]; 4],
        "nothing counted before durability"
    );
}

#[test]
fn a_reading_for_another_device_is_refused_and_quarantined() {
    let gateway = gateway("wrong-device", false);
    let answer = gateway.accept(&body(0, READING, Some("dev-2"))).unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(
        text(&answer),
        r#"{"type":"urn:tidegate:problem:wrong-device","title":"Forbidden","status":403,"detail":"the key belongs to dev-2, not dev-1","errors":[{"path":"$.device_id","message":"must be dev-2"}]}"#
    );
    assert!(answer.headers.contains(&(QUARANTINED_HEADER_NAME, b"1".to_vec())));
    assert_eq!(answer.durable_ends, Some([1, 0]));
    commit(&gateway);
    assert_eq!(gateway.counters().quarantined[2], 1);
    let (records, _) = gateway
        .spool()
        .read(gateway.spool().cursor_at(0), 10, 1 << 20, u64::MAX)
        .unwrap();
    let record = records.get(0).unwrap();
    assert_eq!(record.value, READING);
    assert!(
        record
            .headers()
            .any(|(name, value)| name == "dlq-stage" && value == b"auth")
    );
}

const QUARANTINED_HEADER_NAME: &str = accept::QUARANTINED_HEADER;

/// A batch of d1 that repeats `reading("d1", 1)` and adds a new reading.
const REPEATING_BATCH: &[u8] = br#"{"device_id":"d1","batch_id":"b","readings":[{"timestamp":"2026-03-27T10:15:30.000Z","metrics":{"t":1}},{"timestamp":"2026-03-27T10:15:31.000Z","metrics":{"t":2}}]}"#;

#[test]
fn undecodable_and_invalid_bodies() {
    let gateway = gateway("undecodable", false);
    let answer = gateway.accept(&body(0, b"{", None)).unwrap();
    assert_eq!((answer.status, answer.slug.as_deref()), (400, Some("malformed")));
    let answer = gateway.accept(&body(0, br#"{"device_id":"d"}"#, None)).unwrap();
    assert_eq!((answer.status, answer.slug.as_deref()), (400, Some("invalid")));
    assert!(text(&answer).contains(r#""detail":"no record of 1 is valid","errors":[{"path":"#));
    assert_eq!(
        gateway.counters().records[2][0],
        1,
        "rejected records are counted at once"
    );
}

#[test]
fn idempotency_scopes_do_not_collide_across_devices() {
    let gateway = gateway("scopes", false);
    let batch = br#"{"device_id":"ingest","batch_id":"K1","readings":[{"timestamp":"2026-03-27T10:15:30.000Z","metrics":{"t":1}}]}"#;
    let first = gateway.accept(&body(1, batch, None)).unwrap();
    assert_eq!(first.status, 202, "{}", text(&first));
    commit(&gateway);
    let reading = br#"{"device_id":"batch","timestamp":"2026-03-27T10:15:30.000Z","metrics":{"t":2}}"#;
    let mut second = body(0, reading, None);
    second.idempotency_key = Some("K1");
    let answer = gateway.accept(&second).unwrap();
    assert!(
        text(&answer).starts_with(r#"{"status":"accepted""#),
        "{}",
        text(&answer)
    );
    commit(&gateway);
    // The same batch_id again is a duplicate, whatever its readings; with the archive off nothing is written.
    let other = br#"{"device_id":"ingest","batch_id":"K1","readings":[{"timestamp":"2026-03-27T10:15:31.000Z","metrics":{"t":3}}]}"#;
    let answer = gateway.accept(&body(1, other, None)).unwrap();
    assert!(
        text(&answer).starts_with(r#"{"status":"duplicate","batch_id":"K1""#),
        "{}",
        text(&answer)
    );
    assert_eq!(answer.records, 0);
}

#[test]
fn a_batch_answers_its_duplicates_with_archive_keys_and_spools_their_occurrences() {
    let gateway = gateway("archive", true);
    let batch = br#"{"device_id":"d","batch_id":"b1","readings":[{"timestamp":"2026-03-27T10:15:30.000Z","metrics":{"t":1}},{"timestamp":"2026-03-27T10:15:30.000Z","metrics":{"t":1}},{"metrics":{}}]}"#;
    let answer = gateway.accept(&body(1, batch, Some("d"))).unwrap();
    let document = text(&answer);
    assert!(
        document.starts_with(r#"{"status":"accepted","batch_id":"b1","device_id":"d","readings_count":3,"accepted":1,"duplicates":1,"rejected":1,"results":[{"index":1,"status":"duplicate","event_id":""#),
        "{document}"
    );
    assert!(document.contains(r#""archive_key":"raw/source=http/event_type=telemetry/event_date=2026-03-27/ingest_date=2026-03-27/hour=10/event_id="#), "{document}");
    assert!(
        document.contains(r#"{"index":2,"status":"rejected","event_id":null,"reason":[{"path":"#),
        "{document}"
    );
    assert!(
        answer
            .headers
            .iter()
            .any(|(name, value)| *name == "x-tidegate-quarantined" && value == b"1")
    );
    commit(&gateway);
    let (records, _) = gateway
        .spool()
        .read(gateway.spool().cursor_at(0), 10, 1 << 20, u64::MAX)
        .unwrap();
    let topics: Vec<&str> = records.iter().map(|r| r.topic).collect();
    assert_eq!(topics, ["telemetry-raw", "ingest-dlq", "tidegate-duplicates"]);
}

#[test]
fn a_dry_run_writes_nothing_and_counts_apart() {
    let gateway = gateway("dry", false);
    let mut request = body(
        2,
        br#"[{"source":"s","event_type":"e","entity_id":"x","event_time":"2026-03-27T10:15:30.000Z","payload":{}}]"#,
        None,
    );
    request.dry_run = true;
    let answer = gateway.accept(&request).unwrap();
    assert_eq!(answer.durable_ends, None);
    let document = text(&answer);
    assert!(
        document.starts_with(
            r#"{"accepted":1,"duplicates":0,"rejected":0,"results":[{"index":0,"status":"ACCEPTED","event_id":""#
        ),
        "{document}"
    );
    assert!(
        document.ends_with(r#""ingest_lag_ms":1000}],"dry_run":true}"#),
        "{document}"
    );
    assert_eq!(gateway.counters().records[3][0], 1);
    assert_eq!(gateway.spool().next_seq(), 0);
}

#[test]
fn a_repeat_is_not_acknowledged_while_another_thread_claims_what_it_repeats_and_fails_to_append_it() {
    // The edge takes large bodies on a thread of their own while the loop takes small ones: both `accept` at once.
    // A spool whose quota no append fits: every append fails and releases its claims, so nothing is ever stored,
    // and a repeat of a record that body claimed must not be answered 202 (it would be acknowledged, never kept).
    let options = SpoolOptions {
        quota_bytes: 1,
        ..SpoolOptions::default()
    };
    let gateway = Arc::new(gateway_with("race", false, options));
    let event = |i: usize| {
        format!(
            r#"{{"source":"s","event_type":"t","entity_id":"e-{i}","event_time":"2026-03-27T10:15:30.000Z","payload":{{}}}}"#
        )
    };
    let big = format!("[{}]", (0..9000).map(event).collect::<Vec<_>>().join(",")).into_bytes();
    let small = event(8999).into_bytes();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taker = {
        let (gateway, done) = (gateway.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..40 {
                let answer = gateway.accept(&body(2, &big, None)).unwrap();
                assert_eq!(answer.status, 503, "{}", text(&answer));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut tries = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let answer = gateway.accept(&body(2, &small, None)).unwrap();
        assert_ne!(answer.status, 202, "acknowledged, never stored: {}", text(&answer));
        tries += 1;
    }
    taker.join().unwrap();
    assert!(tries > 0);
}

fn reading(device: &str, temperature: u32) -> Vec<u8> {
    format!(r#"{{"device_id":"{device}","timestamp":"2026-03-27T10:15:30.000Z","metrics":{{"t":{temperature}}}}}"#)
        .into_bytes()
}

fn at<'a>(priority: &'static str, request: Body<'a>) -> Body<'a> {
    Body { priority, ..request }
}

fn lanes(name: &str) -> TestGateway {
    gateway_with_lanes(name, false, SpoolOptions::default(), Some(SpoolOptions::default()))
}

#[test]
fn high_priority_waits_for_its_own_lane_only() {
    let gateway = lanes("lanes");
    let low = gateway.accept(&at("low", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(low.durable_ends, Some([1, 0]));
    let high = gateway.accept(&at("high", body(0, &reading("d2", 2), None))).unwrap();
    assert_eq!(
        high.durable_ends,
        Some([0, 1]),
        "not behind the low reading appended before it"
    );
    assert_eq!(gateway.waiting(), 2);
    commit_lane(&gateway, Lane::High);
    assert_eq!(
        gateway.waiting(),
        1,
        "the high reading is done; the low one waits for the main spool"
    );
    assert_eq!(gateway.counters().records[0], [1, 0, 0]);
    // A failed main commit fails the low reading only: nothing waits for the high lane any more.
    gateway.settle(Lane::Main, 0, true).unwrap();
    assert_eq!(gateway.waiting(), 0);
    let appended = |lane| gateway.lane_spool(lane).unwrap().next_seq();
    assert_eq!(
        (appended(Lane::Main), appended(Lane::High)),
        (1, 1),
        "one record in each spool"
    );
}

#[test]
fn a_repeat_waits_for_the_lane_of_what_it_repeats_and_fails_with_it() {
    let gateway = lanes("repeat");
    let original = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(original.durable_ends, Some([0, 1]));
    // The same reading at low priority: a duplicate (nothing to write), answered once the high lane has it.
    let repeat = gateway.accept(&at("low", body(0, &reading("d1", 1), None))).unwrap();
    assert!(
        text(&repeat).starts_with(r#"{"status":"duplicate""#),
        "{}",
        text(&repeat)
    );
    assert_eq!(repeat.durable_ends, Some([0, 1]));
    // A batch repeating it with a new reading: written to the main spool, and waits for the high lane too.
    let mixed = gateway.accept(&at("low", body(1, REPEATING_BATCH, None))).unwrap();
    assert_eq!(mixed.durable_ends, Some([1, 1]), "{}", text(&mixed));
    // The high lane's commit fails: every request that waited for it fails, and their claims are released.
    gateway.settle(Lane::High, 0, true).unwrap();
    assert_eq!(gateway.waiting(), 0);
    let retry = gateway.accept(&at("low", body(0, &reading("d1", 1), None))).unwrap();
    assert!(text(&retry).starts_with(r#"{"status":"accepted""#), "{}", text(&retry));
}

#[test]
fn a_repeat_of_durable_records_waits_for_no_lane() {
    // A retry of a reading already durable waits for nothing: not for a main-spool commit in progress (under a
    // flood of low-priority bodies, one carrying megabytes) that holds nothing it repeats.
    let gateway = lanes("repeat-durable");
    let original = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(original.durable_ends, Some([0, 1]));
    assert!(!original.repeats_durable);
    let early = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(
        early.durable_ends,
        Some([0, 1]),
        "not durable yet: waits for its original"
    );
    assert!(!early.repeats_durable, "what it repeats is this worker's, pending");
    commit_lane(&gateway, Lane::High);
    let flood = gateway.accept(&at("low", body(0, &reading("d2", 2), None))).unwrap();
    assert_eq!(flood.durable_ends, Some([1, 0]));
    let retry = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert!(text(&retry).starts_with(r#"{"status":"duplicate""#), "{}", text(&retry));
    assert_eq!(retry.durable_ends, Some([0, 0]), "durable already: nothing to wait for");
    assert_eq!(
        retry.delivered_ends,
        Some([1, 1]),
        "X-Ack: kafka still waits for the broker to have everything appended before it, what it repeats among it"
    );
    assert!(
        retry.repeats_durable,
        "what it repeats may be in another worker's spool: X-Ack: kafka looks there too"
    );
    assert!(!gateway.failed_since(&retry));
    // The main spool's commit fails: the retry, which did not wait for it, was rightly answered.
    gateway.settle(Lane::Main, 0, true).unwrap();
    let again = gateway.accept(&at("low", body(0, &reading("d1", 1), None))).unwrap();
    assert!(text(&again).starts_with(r#"{"status":"duplicate""#), "{}", text(&again));
}

#[test]
fn high_priority_goes_to_the_main_spool_when_its_own_is_full() {
    let tiny = SpoolOptions {
        quota_bytes: 1,
        ..SpoolOptions::default()
    };
    let gateway = gateway_with_lanes("overflow", false, SpoolOptions::default(), Some(tiny));
    let high = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(high.status, 202, "{}", text(&high));
    assert_eq!(high.durable_ends, Some([1, 0]));
    assert!(!high.spool_full);
    commit(&gateway);
    assert_eq!(gateway.counters().records[0], [1, 0, 0]);
}

#[test]
fn a_failure_of_a_spool_an_answer_waits_for_is_known_after_a_later_commit_succeeds() {
    // The edge registers its wait with a lane's committer only when it awaits that lane: a repeat waiting for both
    // lanes, awaiting the main one first, is not told of a failed high-priority commit. A later successful commit
    // makes the high spool durable past the failed sequence; `failed_since` says the answer must not be a 202.
    let gateway = lanes("failed-since");
    let original = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    let repeat = gateway.accept(&at("low", body(1, REPEATING_BATCH, None))).unwrap();
    assert_eq!(repeat.durable_ends, Some([1, 1]));
    commit_lane(&gateway, Lane::Main);
    assert!(!gateway.failed_since(&repeat));
    gateway.settle(Lane::High, 0, true).unwrap();
    let later = gateway.accept(&at("high", body(0, &reading("d2", 3), None))).unwrap();
    commit_lane(&gateway, Lane::High);
    assert!(
        gateway.lane_spool(Lane::High).unwrap().durable_seq() >= 1,
        "durable past the failed sequence"
    );
    assert!(gateway.failed_since(&original));
    assert!(gateway.failed_since(&repeat), "what it repeats was never made durable");
    assert!(!gateway.failed_since(&later), "registered after the failure");
    // A failure of a lane an answer does not wait for is not its own.
    let low = gateway.accept(&at("low", body(0, &reading("d3", 4), None))).unwrap();
    gateway.settle(Lane::High, 0, true).unwrap();
    assert!(!gateway.failed_since(&low));
}

#[test]
fn a_duplicate_occurrence_durable_in_one_spool_does_not_say_the_record_it_repeats_is() {
    // A reading waits for the main spool's commit; its racing copy, at high priority, is a duplicate whose
    // occurrence (archive on) goes to the high spool and commits first. The worker is killed before the main
    // commit: the reading was never durable (nor acknowledged). Rebuilding the dedup window from the spools'
    // tails must not take the occurrence for the record, or the client's retry is answered `duplicate` and lost.
    let gateway = gateway_with_lanes(
        "occurrence",
        true,
        SpoolOptions::default(),
        Some(SpoolOptions::default()),
    );
    let original = gateway.accept(&at("low", body(0, &reading("d1", 1), None))).unwrap();
    assert_eq!(original.durable_ends, Some([1, 0]));
    let copy = gateway.accept(&at("high", body(0, &reading("d1", 1), None))).unwrap();
    assert!(text(&copy).starts_with(r#"{"status":"duplicate""#), "{}", text(&copy));
    assert_eq!(
        copy.durable_ends,
        Some([1, 1]),
        "its occurrence in the high spool; waits for the main one too"
    );
    let high = gateway.lane_spool(Lane::High).unwrap();
    high.commit().unwrap();
    let occurrences = high.last_event_ids(100, "tidegate-duplicates").unwrap();
    assert!(
        occurrences.is_empty(),
        "the occurrence is not a record: {occurrences:?}"
    );
    assert_eq!(high.last_event_ids(100, "").unwrap().len(), 1, "it is in the spool");
}
