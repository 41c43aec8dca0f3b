//! [`Gateway::accept`]: one body, from its bytes to its rendered answer and the sequence to await.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;

use crate::canonical::id::{Id, IdSet};
use crate::canonical::records::{Records, encode_header};
use crate::contract::Issue;
use crate::contract::quarantine::{self, Destination, Item, stage};
use crate::contract::validator::{Outcome, Request};
use crate::decode::PayloadError;
use crate::spool::SpoolError;
use crate::state::dedup;
use crate::state::table::RateTable;
use crate::state::table::{Claimed, duplicates as duplicates_of};

use super::answer::{self, ArchiveKeys, FieldError, Problem, int, key, write_str};
use super::{Counters, DurableEnds, Gateway, LANES, Pending, Persisted, Repeats, Route, RouteKind, lock};

/// What every quarantined item costs on top of its bytes: a flood of empty items is bounded too.
pub const ITEM_OVERHEAD: usize = 256;
/// The quarantine budget charged when no device is known.
pub const UNATTRIBUTED: &str = "-";
/// The answer's header giving how many refused items were quarantined.
pub const QUARANTINED_HEADER: &str = "X-Tidegate-Quarantined";

/// Where a body came from, as its records and quarantined items say.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// `http`, `mqtt`: each record's `source` header and archive partition.
    pub name: &'a str,
    /// Added to each quarantined item (MQTT's `mqtt-topic`).
    pub headers: &'a [(String, Vec<u8>)],
    /// A malformed body will be tried another way (MQTT's JSON that may be NDJSON): not quarantined yet.
    pub undecodable_retried: bool,
}

/// One body to take, admitted: its route, bytes and the request's headers that matter.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    /// Index into [`Gateway::routes`].
    pub route: usize,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    /// The authenticated device (HTTP's key, MQTT's topic), which every telemetry record must name.
    pub device_id: Option<&'a str>,
    /// A telemetry record that leaves `device_id` out is `device_id`'s (MQTT, whose topic names the device).
    pub device_from_source: bool,
    pub priority: &'a str,
    /// Validate and answer, write nothing.
    pub dry_run: bool,
    pub source: Source<'a>,
    pub received_ms: i64,
    /// Now, for the device budgets (µs since the epoch).
    pub now_us: i64,
}

/// The rendered answer, and what the caller needs besides.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Every header but `X-Durability` (the caller's, once it awaited durability).
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
    /// How far each lane's spool must be durable before sending (None: send now).
    pub durable_ends: Option<DurableEnds>,
    /// How far each lane's spool must be acknowledged by the broker for `X-Ack: kafka`: what it wrote, and for a
    /// repeat everything appended before it in every lane of this worker, where what it repeats is when it is
    /// this worker's.
    pub delivered_ends: Option<DurableEnds>,
    /// It repeats records already durable, which may be in another spool of the host (another worker's, or one
    /// an earlier process left): `X-Ack: kafka` must also see every other spool delivered as far as it is
    /// durable (the record was durable, and that spool's published durable sequence past it, before its claim
    /// said so).
    pub repeats_durable: bool,
    /// Each lane's failed commits when the answer was registered to wait (see [`Gateway::failed_since`]).
    pub failures_before: [u64; LANES],
    /// The append hit the spool's quota.
    pub spool_full: bool,
    /// A refusal's problem type (`malformed`, `invalid`...).
    pub slug: Option<Cow<'static, str>>,
    /// Records written, awaiting durability.
    pub records: usize,
    /// Records in the body.
    pub total: usize,
    /// Issues of rejected records (the body names them; they are quarantined).
    pub rejected: usize,
    pub device_id: Option<String>,
    pub event_id: Option<Id>,
}

impl Answer {
    fn problem(problem: &Problem, durable_ends: Option<DurableEnds>) -> Answer {
        let body = problem.body();
        let mut headers = problem.headers.clone();
        headers.push(("content-type", b"application/problem+json".to_vec()));
        headers.push(("content-length", body.len().to_string().into_bytes()));
        Answer {
            status: problem.status,
            headers,
            body,
            durable_ends,
            delivered_ends: durable_ends,
            repeats_durable: false,
            failures_before: [0; LANES],
            spool_full: false,
            slug: Some(problem.slug.clone()),
            records: 0,
            total: 0,
            rejected: 0,
            device_id: None,
            event_id: None,
        }
    }
}

/// The problem of a body that could not be taken apart.
pub fn payload_problem(error: &PayloadError) -> Problem {
    let detail = error.to_string();
    match error {
        PayloadError::InvalidHeader { header, .. } => {
            Problem::new(400, "invalid-header", detail.clone()).with_error(format!("header:{header}"), detail)
        }
        PayloadError::TooLarge { .. } => Problem::new(413, "too-large", detail),
        PayloadError::UnsupportedFormat(_) | PayloadError::UnsupportedEncoding(_) => {
            Problem::new(415, "unsupported-media-type", detail)
        }
        PayloadError::Malformed { .. } => Problem::new(400, "malformed", detail),
    }
}

/// The detail of a `spool-full` or `spool-error` answer to a body the spool refused, and of admission's `spool-full`
/// refusal of the requests after it (one problem, one text).
pub const SPOOL_REFUSED_DETAIL: &str = "the local spool cannot take more data right now";

fn spool_problem(error: &SpoolError) -> Problem {
    let slug = if matches!(error, SpoolError::Full { .. }) {
        "spool-full"
    } else {
        "spool-error"
    };
    let mut problem = Problem::new(503, slug, SPOOL_REFUSED_DETAIL);
    problem.headers.push(("Retry-After", b"5".to_vec()));
    problem
}

/// A body refused as a whole: the problem, and what of it is quarantined.
struct Refusal {
    problem: Problem,
    items: Vec<Item>,
    rejected_records: usize,
}

/// The request's context for quarantine records.
#[derive(Clone, Copy)]
pub struct Whole<'a> {
    pub body: &'a [u8],
    pub route: Option<usize>,
    pub device_id: Option<&'a str>,
    pub priority: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub source: Source<'a>,
    pub received_ms: i64,
    pub now_us: i64,
}

impl<'a> Body<'a> {
    fn whole(&self) -> Whole<'a> {
        Whole {
            body: self.body,
            route: Some(self.route),
            device_id: self.device_id,
            priority: Some(self.priority),
            content_encoding: self.content_encoding,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            source: self.source,
            received_ms: self.received_ms,
            now_us: self.now_us,
        }
    }
}

/// The one item of a body refused as a whole: the body as it was sent (still content-encoded).
pub fn whole_body(body: &[u8], problem: &Problem, stage: &str, content_type: &str) -> Item {
    Item {
        index: None,
        raw: body.to_vec(),
        stage: stage.into(),
        reason: problem.reason(),
        content_type: content_type.into(),
    }
}

fn record_ids(records: &Records) -> Vec<Id> {
    records.iter().map(|r| r.event_id).collect()
}

impl Gateway {
    fn charge_decoded(&self, device_id: Option<&str>, now_us: i64, size: usize) -> io::Result<()> {
        match device_id {
            Some(device) => self
                .tables
                .decoded_bytes
                .charge(&RateTable::device_id(device), now_us, size as f64),
            None => Ok(()),
        }
    }

    /// Takes one admitted body: see the module's documentation. Errors only when a shared table cannot be
    /// locked (I/O).
    pub fn accept(&self, req: &Body<'_>) -> io::Result<Answer> {
        let route = &self.routes[req.route];
        let content_type = req.content_type.unwrap_or("application/json");
        let request = Request {
            body: req.body,
            content_type,
            content_encoding: req.content_encoding,
            received_at_ms: req.received_ms,
            priority: Some(req.priority),
            source: Some(req.source.name),
            traceparent: req.traceparent,
            tracestate: req.tracestate,
            idempotency_key: req.idempotency_key,
            device_id: if req.device_from_source { req.device_id } else { None },
        };
        let mut outcome = match route.validator.validate(&request) {
            Ok(outcome) => outcome,
            Err(error) => {
                let identity = req
                    .content_encoding
                    .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
                let charged = if identity {
                    req.body.len()
                } else {
                    self.settings.max_body_bytes
                };
                self.charge_decoded(req.device_id, req.now_us, charged)?;
                let problem = payload_problem(&error);
                // A bad header is refused before any record is looked at: nothing there to investigate.
                let items = if matches!(error, PayloadError::InvalidHeader { .. })
                    || (req.source.undecodable_retried && problem.slug == "malformed")
                {
                    Vec::new()
                } else {
                    vec![whole_body(req.body, &problem, stage::DECODE, content_type)]
                };
                let refusal = Refusal {
                    problem,
                    items,
                    rejected_records: 0,
                };
                return self.refuse(&req.whole(), refusal, req.dry_run);
            }
        };
        self.charge_decoded(req.device_id, req.now_us, outcome.decoded_bytes)?;
        let devices: Vec<String> = match route.kind {
            RouteKind::Batch => outcome.envelope.iter().map(|(device, _)| device.clone()).collect(),
            RouteKind::Telemetry => {
                let mut keys: Vec<String> = Vec::new();
                for record in outcome.records.iter() {
                    if let Some(key) = record.key.and_then(|k| std::str::from_utf8(k).ok())
                        && !keys.iter().any(|k| k == key)
                    {
                        keys.push(key.to_string());
                    }
                }
                keys
            }
            RouteKind::Event => Vec::new(),
        };
        if let Some(device_id) = req.device_id
            && route.kind != RouteKind::Event
            && let Some(foreign) = devices.iter().find(|owner| *owner != device_id)
        {
            let problem = Problem::new(
                403,
                "wrong-device",
                format!("the key belongs to {device_id}, not {foreign}"),
            )
            .with_error("$.device_id", format!("must be {device_id}"));
            let items = vec![whole_body(req.body, &problem, stage::AUTH, content_type)];
            let refusal = Refusal {
                problem,
                items,
                rejected_records: 0,
            };
            return self.refuse(&req.whole(), refusal, req.dry_run);
        }
        if outcome.accepted == 0 {
            let mut problem = Problem::new(400, "invalid", format!("no record of {} is valid", outcome.total));
            problem.errors = outcome
                .rejected
                .iter()
                .map(|issue| FieldError {
                    path: issue.path.clone(),
                    message: issue.message.clone(),
                    index: issue.index,
                })
                .collect();
            let refusal = Refusal {
                problem,
                items: std::mem::take(&mut outcome.quarantine),
                rejected_records: outcome.total,
            };
            return self.refuse(&req.whole(), refusal, req.dry_run);
        }
        let mut records = std::mem::take(&mut outcome.records);
        let mut quarantined = Records::new();
        if !req.dry_run && !outcome.quarantine.is_empty() {
            // Kept with the accepted records: durable with them, before the answer.
            quarantined = self.quarantine_records(&outcome.quarantine, &req.whole())?;
            records.extend(&quarantined);
        }
        self.claim_and_answer(req, route, outcome, records, quarantined, devices)
    }

    fn claim_and_answer(
        &self,
        req: &Body<'_>,
        route: &Route,
        outcome: Outcome,
        mut records: Records,
        quarantined: Records,
        devices: Vec<String>,
    ) -> io::Result<Answer> {
        let dedup = &self.tables.dedup;
        let settings = &self.settings;
        let received = req.received_ms;
        let archive = settings.archive && !req.dry_run;
        let mut occurrences = Records::new();
        // Scopes name the kind of key first and the device last (device ids hold no ':'): no two devices, and no
        // header key and batch_id, can share one. Without auth the devices named in the body own the key.
        let mut keys: Vec<Id> = Vec::new();
        if let Some(idempotency_key) = req.idempotency_key.filter(|k| !k.is_empty()) {
            let joined = devices.join(",");
            let owner = req
                .device_id
                .or(outcome.envelope.as_ref().map(|(device, _)| device.as_str()))
                .or(Some(joined.as_str()).filter(|j| !j.is_empty()))
                .unwrap_or("-");
            keys.push(dedup::key_id(
                &format!("header:{}:{owner}", route.name),
                idempotency_key,
            ));
        }
        if route.kind == RouteKind::Batch
            && let Some((device, batch_id)) = &outcome.envelope
        {
            keys.push(dedup::key_id(&format!("batch_id:{device}"), batch_id));
        }
        let mut whole_duplicate = false;
        let mut duplicates: IdSet<Id> = IdSet::default();
        // What it repeats: a claim not durable yet, it waits for (and fails with).
        let mut repeats = Repeats::default();
        // From the first claim to the append (or the claims' release): see `Gateway::claiming`.
        let _claiming = (!req.dry_run).then(|| lock(&self.claiming));
        if req.dry_run {
            for id in &keys {
                whole_duplicate |= dedup.contains(id, received)?;
            }
            for id in outcome.event_ids.iter().flatten() {
                if dedup.contains(id, received)? {
                    duplicates.insert(*id);
                }
            }
        } else {
            let mut claimed = Vec::new();
            for id in &keys {
                let found = dedup.claim(&[*id], received, settings.key_ttl_ms)?[0];
                if found == Claimed::New {
                    claimed.push(*id);
                } else {
                    whole_duplicate = true;
                    repeats.add(&[found]);
                }
            }
            if whole_duplicate {
                dedup.release(&claimed)?;
                if archive {
                    occurrences = records.moved_to(&settings.duplicates_topic);
                }
                // Nothing to write: the answer waits for what it repeats to be durable.
                records = Records::new();
                keys.clear();
            } else {
                let mut ids = record_ids(&records);
                ids.sort_unstable();
                ids.dedup();
                let found = dedup.claim(&ids, received, settings.dedup_ttl_ms)?;
                repeats.add(&found);
                let seen: Vec<Id> = duplicates_of(&ids, &found).collect();
                let target = archive.then_some((&mut occurrences, settings.duplicates_topic.as_str()));
                records.move_duplicates(|id| seen.binary_search(id).is_ok(), target);
                duplicates.extend(seen);
            }
        }
        if whole_duplicate {
            duplicates.extend(outcome.event_ids.iter().flatten().copied());
        }
        let mut counts = Counters::default();
        let mut answer = self.render(req, route, &outcome, &records, &duplicates, &mut counts);
        if !quarantined.is_empty() {
            if !whole_duplicate {
                count_quarantined(&quarantined, &duplicates, &mut counts);
            }
            answer.headers.insert(
                answer.headers.len() - 2,
                ("x-tidegate-quarantined", quarantined.len().to_string().into_bytes()),
            );
        }
        if req.dry_run {
            self.count(&counts);
            return Ok(answer);
        }
        let mut claims = record_ids(&records);
        claims.extend(&keys);
        let count = records.len();
        let waiting = Pending {
            ends: [0; LANES],
            ids: claims,
            // Heard (a repeat too: the device is alive).
            devices,
            received_ms: received,
            counts,
        };
        let written = if occurrences.is_empty() {
            records
        } else {
            // Both or neither: a request answered 503 records no occurrence.
            let mut written = records;
            written.extend(&occurrences);
            written
        };
        let ids = waiting.ids.clone();
        match self.persist(&written, waiting, Some(req.priority), repeats) {
            Ok(persisted) => {
                answer.durable_ends = Some(persisted.durable_ends);
                answer.delivered_ends = Some(persisted.delivered_ends);
                answer.repeats_durable = repeats.durable;
                answer.failures_before = persisted.failures_before;
                answer.records = count;
                Ok(answer)
            }
            Err(error) => {
                dedup.release(&ids)?;
                let mut failed = Answer::problem(&spool_problem(&error), None);
                failed.spool_full = matches!(error, SpoolError::Full { .. });
                Ok(failed)
            }
        }
    }

    /// The dead-letter records of `items` within the device's quarantine budget (the others are counted dropped).
    fn quarantine_records(&self, items: &[Item], whole: &Whole<'_>) -> io::Result<Records> {
        let settings = &self.settings;
        let mut records = Records::new();
        if !settings.quarantine || items.is_empty() {
            return Ok(records);
        }
        let limit = settings.max_record_bytes;
        let costs: Vec<f64> = items
            .iter()
            .map(|item| (item.raw.len().min(limit) + ITEM_OVERHEAD) as f64)
            .collect();
        let budget = RateTable::device_id(whole.device_id.unwrap_or(UNATTRIBUTED));
        let granted = self.tables.quarantine_budget.take_each(&budget, &costs, whole.now_us)?;
        let kept: Vec<&Item> = items
            .iter()
            .zip(&granted)
            .filter(|(_, ok)| **ok)
            .map(|(item, _)| item)
            .collect();
        let dropped = items.len() - kept.len();
        if dropped > 0 {
            lock(&self.counters).quarantine_dropped += dropped as u64;
        }
        let mut headers = Vec::with_capacity(128);
        encode_header(&mut headers, "dlq-source", whole.source.name.as_bytes());
        if let Some(device) = whole.device_id {
            encode_header(&mut headers, "device_id", device.as_bytes());
        }
        if let Some(route) = whole.route.map(|r| &self.routes[r]) {
            encode_header(&mut headers, "schema", route.validator.contract().name.as_bytes());
        }
        // A whole body is kept as it was sent: its encoding travels with it.
        if kept.iter().any(|item| item.index.is_none())
            && let Some(encoding) = whole.content_encoding.filter(|e| !e.is_empty())
        {
            encode_header(&mut headers, "content-encoding", encoding.as_bytes());
        }
        for (name, value) in [
            ("priority", whole.priority),
            ("traceparent", whole.traceparent),
            ("tracestate", whole.tracestate),
        ] {
            if let Some(value) = value {
                encode_header(&mut headers, name, value.as_bytes());
            }
        }
        for (name, value) in whole.source.headers {
            encode_header(&mut headers, name, value);
        }
        let destination = Destination {
            topic: &settings.dead_letter_topic,
            key: whole.device_id.map(str::as_bytes),
            headers: &headers,
            body_digest: quarantine::body_digest(whole.body),
            timestamp_ms: whole.received_ms,
            max_record_bytes: settings.max_record_bytes,
        };
        for item in kept {
            quarantine::push(&mut records, &destination, item);
        }
        Ok(records)
    }

    /// A body refused as a whole: its rejected records counted, what it leaves behind quarantined (not in a dry
    /// run), and the problem, to send once the quarantine records are durable.
    fn refuse(&self, whole: &Whole<'_>, refusal: Refusal, dry_run: bool) -> io::Result<Answer> {
        let Refusal {
            problem,
            items,
            rejected_records,
        } = refusal;
        if rejected_records > 0 {
            let mut counts = Counters::default();
            counts.count(2, whole.priority.unwrap_or("low"), rejected_records);
            self.count(&counts);
        }
        if items.is_empty() || dry_run {
            return Ok(Answer::problem(&problem, None));
        }
        Ok(self
            .quarantine_problem(whole, problem.clone(), &items)?
            .unwrap_or_else(|| Answer::problem(&problem, None)))
    }

    /// Quarantines `items` of a refused body (`whole`) durably; the problem's answer, with `X-Tidegate-Quarantined`,
    /// to send once they are durable (None when nothing was kept). A spool that cannot take them is the 503 any
    /// write would get: the client's retry is quarantined then.
    fn quarantine_problem(
        &self,
        whole: &Whole<'_>,
        mut problem: Problem,
        items: &[Item],
    ) -> io::Result<Option<Answer>> {
        let mut records = self.quarantine_records(items, whole)?;
        if records.is_empty() {
            return Ok(None);
        }
        let kept = records.len();
        let mut ids = record_ids(&records);
        ids.sort_unstable();
        ids.dedup();
        // From the claim to the append (or the claims' release): see `Gateway::claiming`.
        let _claiming = lock(&self.claiming);
        let found = self
            .tables
            .dedup
            .claim(&ids, whole.received_ms, self.settings.dedup_ttl_ms)?;
        let repeats = Repeats::of(&found);
        let seen: IdSet<Id> = duplicates_of(&ids, &found).collect();
        let mut counts = Counters::default();
        count_quarantined(&records, &seen, &mut counts);
        records.remove_duplicates(|id| seen.contains(id));
        let claims = record_ids(&records);
        let waiting = Pending {
            ends: [0; LANES],
            ids: claims.clone(),
            devices: Vec::new(),
            received_ms: whole.received_ms,
            counts,
        };
        match self.persist(&records, waiting, whole.priority, repeats) {
            Ok(Persisted {
                durable_ends: ends,
                failures_before,
                ..
            }) => {
                problem
                    .headers
                    .push((QUARANTINED_HEADER, kept.to_string().into_bytes()));
                let mut answer = Answer::problem(&problem, Some(ends));
                answer.failures_before = failures_before;
                Ok(Some(answer))
            }
            Err(error) => {
                self.tables.dedup.release(&claims)?;
                let mut failed = Answer::problem(&spool_problem(&error), None);
                failed.spool_full = matches!(error, SpoolError::Full { .. });
                Ok(Some(failed))
            }
        }
    }

    /// Quarantines one item refused before any route took it (MQTT's topic that names no route or no device):
    /// the answer carries the sequence to await (None when nothing was kept), or is a 503 when the spool cannot
    /// take it.
    pub fn quarantine(&self, whole: &Whole<'_>, problem: Problem, item: Item) -> io::Result<Answer> {
        self.refuse(
            whole,
            Refusal {
                problem,
                items: vec![item],
                rejected_records: 0,
            },
            false,
        )
    }

    /// The answer's headers and body (`X-Durability` excepted) for an accepted body, its counts into `counts`.
    fn render(
        &self,
        req: &Body<'_>,
        route: &Route,
        outcome: &Outcome,
        records: &Records,
        duplicates: &IdSet<Id>,
        counts: &mut Counters,
    ) -> Answer {
        for lag in outcome.ingest_lag_ms.iter().flatten() {
            counts.observe_lag(*lag);
        }
        counts.lag_observed = true;
        let priority = req.priority;
        let mut warnings_by_index: Vec<(usize, Vec<&str>)> = Vec::new();
        for warning in &outcome.warnings {
            if let Some(index) = warning.index {
                match warnings_by_index.iter_mut().find(|(i, _)| *i == index) {
                    Some((_, messages)) => messages.push(&warning.message),
                    None => warnings_by_index.push((index, vec![&warning.message])),
                }
            }
        }
        warnings_by_index.sort_by_key(|(index, _)| *index);
        let warnings_of = |index: usize| warnings_by_index.iter().find(|(i, _)| *i == index).map(|(_, m)| m);
        let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(4);
        if !outcome.warnings.is_empty() {
            headers.push(("x-tidegate-flagged", b"true".to_vec()));
        }
        let device_id = outcome.envelope.as_ref().map(|(device, _)| device.clone());
        let mut body = Vec::with_capacity(256);
        let first_id = outcome.event_ids.first().copied().flatten();
        let finish = |mut headers: Vec<(&'static str, Vec<u8>)>, body: Vec<u8>, event_id| {
            headers.push(("content-type", b"application/json".to_vec()));
            headers.push(("content-length", body.len().to_string().into_bytes()));
            Answer {
                status: 202,
                headers,
                body,
                durable_ends: None,
                delivered_ends: None,
                repeats_durable: false,
                failures_before: [0; LANES],
                spool_full: false,
                slug: None,
                records: 0,
                total: outcome.total,
                rejected: outcome.rejected.len(),
                device_id: device_id.clone(),
                event_id,
            }
        };
        let summary = |body: &mut Vec<u8>, status: &str, counts: [usize; 3], results: &dyn Fn(&mut Vec<u8>)| {
            body.push(b'{');
            key(body, "status");
            write_str(body, status);
            let (device, batch_id) = outcome
                .envelope
                .as_ref()
                .map_or((None, None), |(d, b)| (Some(d.as_str()), Some(b.as_str())));
            for (name, value) in [(",\"batch_id\":", batch_id), (",\"device_id\":", device)] {
                body.extend_from_slice(name.as_bytes());
                match value {
                    Some(value) => write_str(body, value),
                    None => body.extend_from_slice(b"null"),
                }
            }
            body.extend_from_slice(b",\"readings_count\":");
            int(body, outcome.total);
            for (name, value) in [",\"accepted\":", ",\"duplicates\":", ",\"rejected\":"]
                .iter()
                .zip(counts)
            {
                body.extend_from_slice(name.as_bytes());
                int(body, value);
            }
            body.extend_from_slice(b",\"results\":[");
            results(body);
            body.extend_from_slice(b"],\"warnings\":[");
            for (n, (index, messages)) in warnings_by_index.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(b"{\"index\":");
                int(body, index);
                body.extend_from_slice(b",\"messages\":");
                answer::strings(body, messages);
                body.push(b'}');
            }
            body.push(b']');
        };
        let topic = route.validator.topic();
        if route.kind == RouteKind::Batch
            && duplicates.is_empty()
            && outcome.rejected.is_empty()
            && !req.dry_run
            && records.iter().filter(|r| r.topic == topic).count() == outcome.accepted
        {
            // Every reading accepted and nothing dropped as a repeat: no per-reading results to build.
            counts.count(0, priority, outcome.accepted);
            summary(&mut body, "accepted", [outcome.accepted, 0, 0], &|_| {});
            body.push(b'}');
            return finish(headers, body, None);
        }
        let keys = (self.settings.archive && !req.dry_run)
            .then(|| ArchiveKeys::new(req.source.name, route.event_type(), req.received_ms));
        let mut rejected_by_index: HashMap<usize, Vec<&Issue>> = HashMap::new();
        for issue in &outcome.rejected {
            if let Some(index) = issue.index {
                rejected_by_index.entry(index).or_default().push(issue);
            }
        }
        // 0 accepted, 1 duplicate, 2 rejected.
        let mut seen: IdSet<Id> = IdSet::default();
        let statuses: Vec<usize> = outcome
            .event_ids
            .iter()
            .map(|id| match id {
                None => 2,
                Some(id) if duplicates.contains(id) || !seen.insert(*id) => 1,
                Some(_) => 0,
            })
            .collect();
        let mut tally = [0usize; 3];
        for status in &statuses {
            tally[*status] += 1;
        }
        for (outcome_index, n) in tally.iter().enumerate() {
            if *n > 0 {
                // A dry run's records are counted apart: nothing of them was written.
                let counted = if req.dry_run && outcome_index != 2 {
                    3
                } else {
                    outcome_index
                };
                counts.count(counted, priority, *n);
            }
        }
        const NAMES: [&str; 3] = ["accepted", "duplicate", "rejected"];
        const CAPITALS: [&str; 3] = ["ACCEPTED", "DUPLICATE", "REJECTED"];
        let archive_key = |body: &mut Vec<u8>, i: usize| {
            if let (Some(keys), Some(id)) = (&keys, outcome.event_ids[i]) {
                body.extend_from_slice(b",\"archive_key\":");
                keys.write(body, outcome.ingest_lag_ms[i], &id);
            }
        };
        if route.kind == RouteKind::Telemetry && !outcome.sequence {
            body.push(b'{');
            key(&mut body, "status");
            write_str(&mut body, NAMES[statuses[0]]);
            body.extend_from_slice(b",\"event_id\":");
            answer::opt_id(&mut body, outcome.event_ids[0].as_ref());
            body.extend_from_slice(b",\"ingest_lag_ms\":");
            answer::opt_int(&mut body, outcome.ingest_lag_ms[0]);
            body.extend_from_slice(b",\"warnings\":");
            answer::strings(&mut body, warnings_of(0).map_or(&[][..], |m| m.as_slice()));
            archive_key(&mut body, 0);
        } else if route.kind == RouteKind::Batch {
            let all_duplicate = statuses.iter().filter(|s| **s != 2).all(|s| *s == 1);
            let results = |body: &mut Vec<u8>| {
                let mut first = true;
                for (i, status) in statuses.iter().enumerate().filter(|(_, s)| **s != 0) {
                    if !first {
                        body.push(b',');
                    }
                    first = false;
                    body.extend_from_slice(b"{\"index\":");
                    int(body, i);
                    body.extend_from_slice(b",\"status\":");
                    write_str(body, NAMES[*status]);
                    body.extend_from_slice(b",\"event_id\":");
                    answer::opt_id(body, outcome.event_ids[i].as_ref());
                    if *status == 2 {
                        body.extend_from_slice(b",\"reason\":");
                        match rejected_by_index.get(&i) {
                            Some(list) => answer::issues(body, list, false),
                            None => body.extend_from_slice(b"null"),
                        }
                    } else {
                        archive_key(body, i);
                    }
                    body.push(b'}');
                }
            };
            summary(
                &mut body,
                if all_duplicate { "duplicate" } else { "accepted" },
                tally,
                &results,
            );
        } else {
            let names = if route.kind == RouteKind::Event {
                CAPITALS
            } else {
                NAMES
            };
            let item = |body: &mut Vec<u8>, i: usize, with_index: bool| {
                body.push(b'{');
                if with_index {
                    body.extend_from_slice(b"\"index\":");
                    int(body, i);
                    body.push(b',');
                }
                key(body, "status");
                write_str(body, names[statuses[i]]);
                body.extend_from_slice(b",\"event_id\":");
                answer::opt_id(body, outcome.event_ids[i].as_ref());
                body.extend_from_slice(b",\"ingest_lag_ms\":");
                answer::opt_int(body, outcome.ingest_lag_ms[i]);
                archive_key(body, i);
                if statuses[i] == 2 {
                    body.extend_from_slice(b",\"errors\":");
                    answer::issues(body, rejected_by_index.get(&i).map_or(&[][..], |l| l.as_slice()), false);
                }
                if let Some(messages) = warnings_of(i) {
                    body.extend_from_slice(b",\"warnings\":");
                    answer::strings(body, messages);
                }
            };
            if !outcome.sequence {
                item(&mut body, 0, false);
            } else {
                body.extend_from_slice(b"{\"accepted\":");
                int(&mut body, tally[0]);
                body.extend_from_slice(b",\"duplicates\":");
                int(&mut body, tally[1]);
                body.extend_from_slice(b",\"rejected\":");
                int(&mut body, tally[2]);
                body.extend_from_slice(b",\"results\":[");
                for i in 0..statuses.len() {
                    if i > 0 {
                        body.push(b',');
                    }
                    item(&mut body, i, true);
                    body.push(b'}');
                }
                body.push(b']');
            }
        }
        if req.dry_run {
            body.extend_from_slice(b",\"dry_run\":true");
        }
        body.push(b'}');
        finish(headers, body, first_id)
    }
}

/// Counts the quarantined records stored: a repeat of one already kept (same `dlq-id`, in `duplicates` or
/// earlier in `records`) is not.
fn count_quarantined(records: &Records, duplicates: &IdSet<Id>, counts: &mut Counters) {
    let mut seen: IdSet<Id> = IdSet::default();
    for record in records.iter() {
        if duplicates.contains(&record.event_id) || !seen.insert(record.event_id) {
            continue;
        }
        if let Some((_, stage)) = record.headers().find(|(name, _)| *name == "dlq-stage") {
            counts.quarantine(stage);
        }
    }
}
