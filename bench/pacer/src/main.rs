//! The overload ramp's load generator (`python -m bench`, part `overload`).
//!
//! Each priority gets its own keep-alive HTTP/1.1 connections, each paced to one request every interval, as
//! `bench/wrk/common.lua` paces wrk's (a connection whose answers are slower than its interval falls behind; more
//! than a second behind, it resumes from now rather than bursting). Every connection is polled by this one thread:
//! wrk can only pace a connection per thread, and at twice the gateway's capacity its hundreds of threads took
//! 1.2 of the machine's two cores from the server it measured.
//!
//! ```text
//! tidegate-pacer --url http://127.0.0.1:8000/api/v1/ingest --devices devices.json --seconds 5 --nonce 12
//!     --priority high:1074:108 --priority medium:6446:256 --priority low:3223:256 [--honour-retry-after]
//! ```
//!
//! `--priority NAME:RATE:CONNECTIONS` offers RATE requests/s over CONNECTIONS connections with `X-Priority: NAME`.
//! The body is the mixed fleet's single reading (`bench/wrk/fleet.lua`), from a random device of `--devices` (a JSON
//! list of `[device_id, key, second_key?]`; a device with two keys is mid rotation and uses both). With
//! `--honour-retry-after`, a connection answered 429/503 waits the `Retry-After` before its next request.
//!
//! With `--warmup W`, the load runs W seconds before the `--seconds` measured: its connections open and the server
//! meets the load's onset then, and what was sent in those W seconds is counted apart (`warmup`).
//!
//! Prints one JSON object: per priority the status counts, their rates over the run, and per status a latency
//! histogram in the buckets of `bench/wrk/common.lua` (bucket b holds latencies around 1.02^b microseconds), so the
//! harness reads it as it reads wrk's; the same for the warm-up under `warmup`.

use std::collections::{BTreeMap, BinaryHeap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use tidegate_core::decode::time::write_millis;

const LOG_STEP: f64 = 1.02;
const KINDS: [&str; 5] = ["temperature", "humidity", "pressure", "vibration_rms", "co2_ppm"];
/// A connection more than this far behind its pace resumes from now instead of sending what it missed at once.
const MAX_BEHIND: Duration = Duration::from_secs(1);

struct Options {
    host: String,
    addr: SocketAddr,
    path: String,
    devices: Vec<Vec<String>>,
    seconds: f64,
    warmup: f64,
    nonce: u64,
    priorities: Vec<(String, f64, usize)>,
    honour_retry_after: bool,
    timeout: Duration,
}

fn usage(problem: &str) -> String {
    format!(
        "{problem}\nusage: tidegate-pacer --url http://HOST:PORT/PATH --devices FILE.json --seconds S --nonce N \
         --priority NAME:RATE:CONNECTIONS [--priority ...] [--honour-retry-after] [--timeout S] [--warmup S]"
    )
}

// Eight flags, all required but three: a parser by hand is shorter than a dependency's setup.
fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut devices_path, mut seconds, mut nonce) = (None, None, None, 0_u64);
    let (mut priorities, mut honour_retry_after, mut timeout, mut warmup) = (Vec::new(), false, 10.0_f64, 0.0_f64);
    while let Some(flag) = args.next() {
        if flag == "--honour-retry-after" {
            honour_retry_after = true;
            continue;
        }
        let value = args.next().ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| usage(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--url" => url = Some(value),
            "--devices" => devices_path = Some(value),
            "--seconds" => seconds = Some(number(&value)?),
            "--nonce" => nonce = number(&value)? as u64,
            "--timeout" => timeout = number(&value)?,
            "--warmup" => warmup = number(&value)?.max(0.0),
            "--priority" => {
                let parts: Vec<&str> = value.split(':').collect();
                let [name, rate, connections] = parts[..] else {
                    return Err(usage(&format!("--priority NAME:RATE:CONNECTIONS, not {value}")));
                };
                let connections = connections
                    .parse::<usize>()
                    .map_err(|_| usage(&format!("connections: {connections}")))?;
                priorities.push((name.to_owned(), number(rate)?, connections.max(1)));
            }
            _ => return Err(usage(&format!("unknown flag {flag}"))),
        }
    }
    let url = url.ok_or_else(|| usage("--url is required"))?;
    let rest = url.strip_prefix("http://").ok_or_else(|| usage("only http:// URLs"))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let devices_path = devices_path.ok_or_else(|| usage("--devices is required"))?;
    let text = std::fs::read_to_string(&devices_path).map_err(|e| format!("{devices_path}: {e}"))?;
    let devices: Vec<Vec<String>> = serde_json::from_str(&text).map_err(|e| format!("{devices_path}: {e}"))?;
    if devices.is_empty() || devices.iter().any(|d| d.len() < 2) {
        return Err(format!("{devices_path}: a list of [device_id, key, second_key?]"));
    }
    if priorities.is_empty() {
        return Err(usage("at least one --priority"));
    }
    Ok(Options {
        host: host.to_owned(),
        addr,
        path,
        devices,
        seconds: seconds.ok_or_else(|| usage("--seconds is required"))?,
        warmup,
        nonce,
        priorities,
        honour_retry_after,
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// What one priority saw.
#[derive(Default)]
struct Tally {
    status_counts: BTreeMap<u16, u64>,
    hist: BTreeMap<u16, BTreeMap<i64, u64>>,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeouts: u64,
}

impl Tally {
    fn record(&mut self, status: u16, latency: Duration) {
        *self.status_counts.entry(status).or_default() += 1;
        let micros = latency.as_secs_f64() * 1e6;
        let bucket = (micros.max(1.0).ln() / LOG_STEP.ln()).floor() as i64;
        *self.hist.entry(status).or_default().entry(bucket).or_default() += 1;
    }

    fn percentile_us(&self, pct: f64) -> f64 {
        let mut merged: BTreeMap<i64, u64> = BTreeMap::new();
        for buckets in self.hist.values() {
            for (bucket, count) in buckets {
                *merged.entry(*bucket).or_default() += count;
            }
        }
        let total: u64 = merged.values().sum();
        let rank = pct / 100.0 * total as f64;
        let mut seen = 0;
        for (bucket, count) in &merged {
            seen += count;
            if seen as f64 >= rank {
                return LOG_STEP.powf(*bucket as f64 + 0.5);
            }
        }
        f64::NAN
    }

    fn to_json(&self, seconds: f64) -> Value {
        let requests: u64 = self.status_counts.values().sum();
        let non_2xx: u64 = self
            .status_counts
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, c)| c)
            .sum();
        let counts: BTreeMap<String, u64> = self.status_counts.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        let rates: BTreeMap<String, f64> = self
            .status_counts
            .iter()
            .map(|(s, c)| (s.to_string(), *c as f64 / seconds))
            .collect();
        let hist: BTreeMap<String, BTreeMap<String, u64>> = self
            .hist
            .iter()
            .map(|(s, buckets)| {
                (
                    s.to_string(),
                    buckets.iter().map(|(b, c)| (b.to_string(), *c)).collect(),
                )
            })
            .collect();
        let p: BTreeMap<&str, f64> = [("50", 50.0), ("90", 90.0), ("99", 99.0), ("99.9", 99.9)]
            .map(|(k, v)| (k, self.percentile_us(v)))
            .into();
        json!({
            "requests": requests,
            "duration_us": seconds * 1e6,
            "errors": {
                "connect": self.connect_errors, "read": self.read_errors, "write": self.write_errors,
                "timeout": self.timeouts, "status": non_2xx,
            },
            "latency_us": {"p": p},
            "hist_log_step": LOG_STEP,
            "status_counts": counts,
            "status_rates": rates,
            "hist": hist,
        })
    }
}

enum State {
    /// Waiting for its next turn (in the schedule).
    Idle,
    /// A request is out: the answer so far, and when the request was written.
    Waiting { answer: Vec<u8>, sent_at: Instant },
}

struct Connection {
    priority: usize,
    stream: Option<TcpStream>,
    interval: Duration,
    next_at: Instant,
    backoff_until: Option<Instant>,
    state: State,
    counter: u64,
}

/// A request sent, answered, or failed: what happened to a connection's current exchange.
enum Outcome {
    Pending,
    Answered {
        status: u16,
        retry_after: Option<f64>,
        close: bool,
    },
    Failed,
}

/// Parses an answer read so far: complete once its headers and `Content-Length` bytes of body are in.
fn parse_answer(answer: &[u8]) -> Result<Outcome, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let header_len = match response.parse(answer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Outcome::Pending),
        Err(_) => return Err(()),
    };
    let (mut length, mut retry_after, mut close) = (0_usize, None, false);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| ())?;
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse().ok();
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(()); // the gateway answers with a length; a chunked answer is not one of its
        }
    }
    if answer.len() < header_len + length {
        return Ok(Outcome::Pending);
    }
    Ok(Outcome::Answered {
        status: response.code.ok_or(())?,
        retry_after,
        close,
    })
}

struct Pacer {
    options: Options,
    poll: Poll,
    connections: Vec<Connection>,
    /// Per priority, what was sent in the warm-up ([`WARMUP`]) and after it ([`MEASURED`]).
    tallies: [Vec<Tally>; 2],
    /// The end of the warm-up: a request sent from then on is measured.
    measured_from: Instant,
    /// (Reverse(next_at), connection index) of the idle connections.
    schedule: BinaryHeap<(std::cmp::Reverse<Instant>, usize)>,
}

const WARMUP: usize = 0;
const MEASURED: usize = 1;

impl Pacer {
    /// The phase a request sent (or an error met) at `at` is counted in.
    fn phase(measured_from: Instant, at: Instant) -> usize {
        if at >= measured_from { MEASURED } else { WARMUP }
    }

    fn connect(&mut self, index: usize) -> bool {
        let connection = &mut self.connections[index];
        if let Some(mut old) = connection.stream.take() {
            let _ = self.poll.registry().deregister(&mut old);
        }
        // Loopback connects at once: a blocking connect keeps the loop simple.
        let stream = std::net::TcpStream::connect_timeout(&self.options.addr, self.options.timeout)
            .and_then(|s| s.set_nodelay(true).and(s.set_nonblocking(true)).map(|()| s));
        match stream {
            Ok(stream) => {
                let mut stream = TcpStream::from_std(stream);
                if self
                    .poll
                    .registry()
                    .register(&mut stream, Token(index), Interest::READABLE)
                    .is_err()
                {
                    let phase = Self::phase(self.measured_from, Instant::now());
                    self.tallies[phase][connection.priority].connect_errors += 1;
                    return false;
                }
                connection.stream = Some(stream);
                true
            }
            Err(_) => {
                let phase = Self::phase(self.measured_from, Instant::now());
                self.tallies[phase][connection.priority].connect_errors += 1;
                false
            }
        }
    }

    fn request(&mut self, index: usize) -> Vec<u8> {
        let options = &self.options;
        let connection = &mut self.connections[index];
        connection.counter += 1;
        let device = &options.devices[fastrand::usize(..options.devices.len())];
        let key = if device.len() > 2 && fastrand::bool() {
            &device[2]
        } else {
            &device[1]
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let unique = ((options.nonce * 1000) + index as u64) * 1_000_000 + connection.counter;
        let mut timestamp = Vec::with_capacity(24);
        write_millis(&mut timestamp, now_ms - fastrand::i64(0..=600_000));
        let timestamp = String::from_utf8_lossy(&timestamp);
        let body = format!(
            r#"{{"device_id":"{}","timestamp":"{}","metrics":{{"{}":{:.2},"seq":{}}},"metadata":{{"battery_level":{}}}}}"#,
            device[0],
            timestamp,
            KINDS[fastrand::usize(..KINDS.len())],
            fastrand::f64() * 100.0,
            unique,
            fastrand::u8(0..=100),
        );
        let priority = &options.priorities[connection.priority].0;
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Device-Token: {key}\r\n\
             X-Priority: {priority}\r\nContent-Length: {}\r\n\r\n{body}",
            options.path,
            options.host,
            body.len()
        )
        .into_bytes()
    }

    /// Sends a connection's next request (a fresh connection first if it has none).
    fn send(&mut self, index: usize, now: Instant) {
        if self.connections[index].stream.is_none() && !self.connect(index) {
            self.reschedule(index, now, None);
            return;
        }
        let request = self.request(index);
        let connection = &mut self.connections[index];
        let Some(stream) = connection.stream.as_mut() else {
            return;
        };
        // A request is a few hundred bytes: the socket's buffer takes it whole or the connection is broken.
        match stream.write(&request) {
            Ok(n) if n == request.len() => {
                connection.state = State::Waiting {
                    answer: Vec::with_capacity(512),
                    sent_at: now,
                };
            }
            _ => {
                self.tallies[Self::phase(self.measured_from, now)][connection.priority].write_errors += 1;
                connection.stream = None;
                self.reschedule(index, now, None);
            }
        }
    }

    /// The connection's next turn: its pace, no sooner than a Retry-After it honours, never more than a second
    /// behind.
    fn reschedule(&mut self, index: usize, now: Instant, retry_after: Option<f64>) {
        let honour = self.options.honour_retry_after;
        let connection = &mut self.connections[index];
        connection.state = State::Idle;
        connection.next_at += connection.interval;
        if let (true, Some(seconds)) = (honour, retry_after) {
            connection.backoff_until = Some(now + Duration::from_secs_f64(seconds.max(0.0)));
        }
        if let Some(until) = connection.backoff_until
            && connection.next_at < until
        {
            connection.next_at = until;
        }
        if now.saturating_duration_since(connection.next_at) > MAX_BEHIND {
            connection.next_at = now;
        }
        self.schedule.push((std::cmp::Reverse(connection.next_at), index));
    }

    fn readable(&mut self, index: usize, now: Instant) {
        let connection = &mut self.connections[index];
        let (Some(stream), State::Waiting { answer, sent_at }) = (connection.stream.as_mut(), &mut connection.state)
        else {
            return;
        };
        let mut chunk = [0_u8; 4096];
        let mut closed = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let outcome = parse_answer(answer).unwrap_or(Outcome::Failed);
        let sent_at = *sent_at;
        let priority = connection.priority;
        let phase = Self::phase(self.measured_from, sent_at);
        match outcome {
            Outcome::Answered {
                status,
                retry_after,
                close,
            } => {
                self.tallies[phase][priority].record(status, now - sent_at);
                if close || closed {
                    connection.stream = None;
                }
                self.reschedule(index, now, retry_after);
            }
            Outcome::Pending if !closed => {}
            Outcome::Pending | Outcome::Failed => {
                self.tallies[phase][priority].read_errors += 1;
                connection.stream = None;
                self.reschedule(index, now, None);
            }
        }
    }

    fn time_out(&mut self, now: Instant) {
        for index in 0..self.connections.len() {
            let connection = &mut self.connections[index];
            if let State::Waiting { sent_at, .. } = connection.state
                && now - sent_at > self.options.timeout
            {
                self.tallies[Self::phase(self.measured_from, sent_at)][connection.priority].timeouts += 1;
                connection.stream = None;
                self.reschedule(index, now, None);
            }
        }
    }

    fn run(mut self) -> Result<Value, String> {
        let start = Instant::now();
        self.measured_from = start + Duration::from_secs_f64(self.options.warmup);
        let end = self.measured_from + Duration::from_secs_f64(self.options.seconds);
        for index in 0..self.connections.len() {
            // The connections' first requests are spread over one interval, as wrk's paced script spreads them.
            let connection = &mut self.connections[index];
            connection.next_at = start + connection.interval.mul_f64(fastrand::f64());
            self.schedule.push((std::cmp::Reverse(connection.next_at), index));
            self.connect(index);
        }
        let mut events = Events::with_capacity(1024);
        let mut last_timeout_scan = start;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            while let Some(&(std::cmp::Reverse(at), index)) = self.schedule.peek() {
                if at > now {
                    break;
                }
                self.schedule.pop();
                self.send(index, now);
            }
            if now - last_timeout_scan > Duration::from_millis(100) {
                self.time_out(now);
                last_timeout_scan = now;
            }
            let next = self
                .schedule
                .peek()
                .map_or(end, |(std::cmp::Reverse(at), _)| (*at).min(end));
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let now = Instant::now();
            for event in &events {
                self.readable(event.token().0, now);
            }
        }
        let seconds = self.measured_from.elapsed().as_secs_f64();
        let warmup = (self.measured_from - start).as_secs_f64();
        let [warmed, measured] = &self.tallies;
        let priorities: BTreeMap<&str, Value> = self
            .options
            .priorities
            .iter()
            .zip(measured.iter().zip(warmed))
            .map(|((name, _, _), (tally, warm))| {
                let mut figures = tally.to_json(seconds);
                figures["warmup"] = warm.to_json(warmup);
                (name.as_str(), figures)
            })
            .collect();
        Ok(json!({ "tool": "tidegate-pacer", "seconds": seconds, "priorities": priorities }))
    }
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(2);
        }
    };
    let poll = match Poll::new() {
        Ok(poll) => poll,
        Err(e) => {
            eprintln!("poll: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = Instant::now();
    let mut connections = Vec::new();
    for (priority, (_, rate, count)) in options.priorities.iter().enumerate() {
        let per_connection = rate / *count as f64;
        let interval = if per_connection > 0.0 {
            Duration::from_secs_f64(1.0 / per_connection)
        } else {
            Duration::MAX
        };
        for _ in 0..*count {
            connections.push(Connection {
                priority,
                stream: None,
                interval,
                next_at: now,
                backoff_until: None,
                state: State::Idle,
                counter: 0,
            });
        }
    }
    let tallies = [0, 1].map(|_| options.priorities.iter().map(|_| Tally::default()).collect());
    let pacer = Pacer {
        options,
        poll,
        connections,
        tallies,
        measured_from: now,
        schedule: BinaryHeap::new(),
    };
    match pacer.run() {
        Ok(result) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("{problem}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_with_its_whole_body() {
        let head = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 4\r\n\r\n";
        assert!(matches!(parse_answer(head), Ok(Outcome::Pending)));
        let whole = [&head[..], b"{}{}"].concat();
        assert!(matches!(
            parse_answer(&whole),
            Ok(Outcome::Answered { status: 503, retry_after: Some(s), close: false }) if s == 2.0
        ));
        assert!(parse_answer(b"nonsense\r\n\r\n").is_err());
    }
}
