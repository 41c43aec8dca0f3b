//! The spool: an append-only segment log on local disk that makes accepted records durable before they are
//! acknowledged, and that the forwarder drains to Kafka in order.
//!
//! Layout under the spool directory: `<first sequence, 20 digits>.seg` segment files and an `acked` checkpoint.
//! A segment starts with [`MAGIC`]; each record is a frame `u32 length, u32 CRC32C(payload), payload`, with the
//! payload encoding one [`RecordRef`]. Appends only write; durability comes from [`Spool::commit`], which many
//! appends share (group commit). Recovery truncates a torn tail and keeps every complete record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub mod group_commit;

use crate::canonical::records::{RecordRef, Records};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TGSPOOL1";
const FRAME_HEADER: usize = 8;
/// A frame longer than this is corruption, not data (records are limited far below it).
const MAX_FRAME: usize = 64 << 20;

/// Why a spool operation failed.
#[derive(Debug)]
pub enum SpoolError {
    /// The disk quota would be exceeded; the caller should shed load (HTTP 503) rather than lose data.
    Full {
        quota_bytes: u64,
        used_bytes: u64,
    },
    Io(io::Error),
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Full {
                quota_bytes,
                used_bytes,
            } => {
                write!(f, "spool full: {used_bytes} of {quota_bytes} bytes used")
            }
            SpoolError::Io(e) => write!(f, "spool I/O error: {e}"),
        }
    }
}

impl std::error::Error for SpoolError {}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        SpoolError::Io(e)
    }
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Roll to a new segment once the current one reaches this size.
    pub segment_bytes: u64,
    /// Disk quota over all segments.
    pub quota_bytes: u64,
    /// Acknowledged segments are kept this long (for `tail` and dedup rebuilds) unless space is needed.
    pub retention: Duration,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 64 << 20,
            quota_bytes: 1 << 30,
            retention: Duration::from_secs(3600),
        }
    }
}

/// What recovery found when the spool was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from torn tails (a partial frame, or a frame whose CRC does not match).
    pub truncated_bytes: u64,
    /// Why the `acked` checkpoint could not be read, if it could not: delivery then restarts from the oldest record
    /// still on disk (at least once), never from sequence 0.
    pub checkpoint_error: Option<String>,
}

/// Upper bounds of the commit-time histogram's buckets, in seconds (then +Inf).
pub const COMMIT_SECONDS_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How long the commits that made records durable took, from the start of their write to the end of their fsync
/// (a new segment's creation included): what a request acknowledged from the spool waits for besides the commit
/// window, and what grows with the bytes a commit carries (a flood's large bodies) and with a slow disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitTimes {
    /// Per bucket of [`COMMIT_SECONDS_BOUNDS`], then +Inf.
    pub counts: [u64; COMMIT_SECONDS_BOUNDS.len() + 1],
    pub sum_nanos: u64,
}

impl CommitTimes {
    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.counts[COMMIT_SECONDS_BOUNDS.partition_point(|bound| *bound < seconds)] += 1;
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Counters for metrics and `spool stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub segments: usize,
    pub bytes: u64,
    pub quota_bytes: u64,
    /// Sequence number the next record will get.
    pub next_seq: u64,
    /// Every record below this sequence is fsynced.
    pub durable_seq: u64,
    /// Every record below this sequence was acknowledged by the broker.
    pub acked_seq: u64,
    pub fsyncs: u64,
    /// The successful commits' times (a failed one is counted in `failed_commits`).
    pub commit_times: CommitTimes,
    pub appended_records: u64,
    /// Records a reader stepped over because their frames are torn or corrupt in a segment that is no longer
    /// written: what a failed write left behind (never acknowledged), or damage on disk.
    pub unreadable_records: u64,
    /// Commits whose write or fsync failed (their records were not acknowledged).
    pub failed_commits: u64,
    /// Segments deleted by [`Spool::cleanup`] since the spool was opened.
    pub removed_segments: u64,
    /// True from a failed write or fsync until a new segment could be started.
    pub failing: bool,
    pub recovery: Recovery,
}

#[derive(Debug, Clone)]
struct Segment {
    base_seq: u64,
    records: u64,
    bytes: u64,
    path: PathBuf,
    created: SystemTime,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.base_seq + self.records
    }
}

struct Writer {
    segments: Vec<Segment>,
    file: File,
    next_seq: u64,
    total_bytes: u64,
    appended_records: u64,
    /// The current segment's file saw a failed write or fsync: its state on disk is unknown, so it is never
    /// written or fsynced again (an fsync retried after a failure can succeed without the data being there).
    /// The next commit starts a new segment; the failed records' sequence numbers are never reused.
    poisoned: bool,
    /// Frames appended but not yet written: `commit` writes them from its own thread, so an append is a copy.
    pending: Vec<u8>,
    pending_records: u64,
}

struct Durability {
    durable_seq: u64,
    committing: bool,
    fsyncs: u64,
    commit_times: CommitTimes,
    acked_seq: u64,
}

/// Marks a cursor whose byte offset is not known yet: the first read finds it by scanning the segment.
const UNRESOLVED: u64 = 0;

/// A position in the spool for readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Sequence number of the next record to read.
    pub seq: u64,
    segment_base: u64,
    offset: u64,
}

impl Cursor {
    fn start_of(segment: &Segment) -> Cursor {
        Cursor {
            seq: segment.base_seq,
            segment_base: segment.base_seq,
            offset: MAGIC.len() as u64,
        }
    }
}

/// The segment log. Shared between threads: appends serialize on one lock, commits and reads do not block them.
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    writer: Mutex<Writer>,
    durability: Mutex<Durability>,
    durable_changed: Condvar,
    recovery: Recovery,
    role: Role,
    /// `progress`: two u64 slots shared with the other process of the spool through the page cache (written with
    /// `pwrite`, never fsynced: only live processes read them). Slot 0: the writer's durable sequence (the delivery
    /// process never reads past it, so a checkpoint never covers records a power loss could take back). Slot 1:
    /// what the delivery process saw the broker acknowledge (`X-Ack: kafka` waiters in the writer watch it).
    progress: Option<File>,
    /// Serializes commits (they write pending frames in sequence order). The request path never takes it.
    commit_lock: Mutex<()>,
    /// Serializes checkpoint writes, so the durability lock is never held across their fsyncs and rename.
    checkpoint_lock: Mutex<()>,
    /// Mirrors `Writer::poisoned` for cheap reads (readiness).
    failing: AtomicBool,
    failed_commits: AtomicU64,
    removed_segments: AtomicU64,
    unreadable_records: AtomicU64,
    /// Fault injection for tests without root (no small filesystem to fill): the next N commits write half
    /// their frames and fail as a full disk does.
    injected_write_failures: AtomicU32,
    /// Fault injection: every commit's fsync starts this many milliseconds late, as on a disk that stalls (a
    /// virtual disk's flush took 50-300 ms at times on the development machine; bench/JOURNAL.md).
    injected_commit_delay_ms: AtomicU64,
}

/// Who opened the spool, which decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The one process that appends (a worker): recovers, writes, commits, cleans up.
    Writer,
    /// `tail` and `spool stats`: reads a snapshot, changes nothing.
    ReadOnly,
    /// The delivery process: reads what the writer made durable as it goes (segments listed afresh on each read),
    /// and writes only the checkpoint and the delivered sequence.
    Delivery,
}

const PROGRESS_FILE: &str = "progress";
const DURABLE_SLOT: u64 = 0;
const DELIVERED_SLOT: u64 = 1;

fn open_progress(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(PROGRESS_FILE))?;
    if file.metadata()?.len() < 16 {
        file.set_len(16)?;
    }
    Ok(file)
}

fn read_slot(file: &File, slot: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; 8];
    match file.read_exact_at(&mut bytes, slot * 8) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

/// What the writer of the spool in `dir` and its delivery published, as any other process reads it: every record
/// below the first sequence is durable, every one below the second acknowledged by the broker. Zeros for a spool
/// that published nothing (nothing is known delivered).
pub fn published_progress(dir: &Path) -> (u64, u64) {
    File::open(dir.join(PROGRESS_FILE)).map_or((0, 0), |file| {
        (read_slot(&file, DURABLE_SLOT), read_slot(&file, DELIVERED_SLOT))
    })
}

/// Deletes from the spool in `dir`, which no process writes (the caller holds the lock of its worker
/// directory), the segments [`Spool::cleanup_below`] would delete, judged from its files alone: opening it
/// would recover it, reading every segment. Returns how many went.
pub fn cleanup_unwritten(dir: &Path, horizon: u64, options: &SpoolOptions) -> Result<usize, SpoolError> {
    let segments = list_segments(dir, 0)?;
    let total_bytes = segments.iter().map(|s| s.bytes).sum();
    let doomed = &segments[..expendable(&segments, total_bytes, horizon, options)];
    remove_segments(doomed, || ())?;
    Ok(doomed.len())
}

/// How many of `segments` (oldest first) cleanup deletes: each wholly below `horizon`, and past retention or the
/// spool past half its quota (its `total_bytes`); never the last, the one written.
fn expendable(segments: &[Segment], total_bytes: u64, horizon: u64, options: &SpoolOptions) -> usize {
    let now = SystemTime::now();
    let pressed = total_bytes * 2 > options.quota_bytes;
    segments[..segments.len().saturating_sub(1)]
        .iter()
        .take_while(|segment| {
            let expired = now.duration_since(segment.created).unwrap_or_default() >= options.retention;
            segment.end_seq() <= horizon && (expired || pressed)
        })
        .count()
}

/// Deletes the files of `segments` (one already gone counts as deleted), calling `removed` for each.
fn remove_segments(segments: &[Segment], mut removed: impl FnMut()) -> Result<(), SpoolError> {
    for segment in segments {
        match fs::remove_file(&segment.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => removed(),
        }
    }
    Ok(())
}

fn write_slot(file: &File, slot: u64, value: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(&value.to_le_bytes(), slot * 8)
}

/// The segments in `dir` as another process sees them: every one but the last holds the sequences up to the
/// next one's base; the last holds those below `durable_seq`.
fn list_segments(dir: &Path, durable_seq: u64) -> Result<Vec<Segment>, SpoolError> {
    let mut bases: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut segments = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let Ok(metadata) = fs::metadata(&path) else {
            continue; // deleted since the listing (acknowledged)
        };
        let end = bases.get(i + 1).copied().unwrap_or(durable_seq.max(base));
        segments.push(Segment {
            base_seq: base,
            records: end - base,
            bytes: metadata.len(),
            path,
            created: metadata.modified().unwrap_or_else(|_| SystemTime::now()),
        });
    }
    Ok(segments)
}

/// Why [`scan_frames`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanStop {
    /// `max_records` or `max_bytes` reached.
    Limit,
    /// The data ended exactly after a frame.
    Exhausted,
    /// The data ended inside a frame (being written, torn, or cut off by the read window).
    Incomplete,
    /// A frame with an impossible length, a CRC mismatch, or a payload that is not a record.
    Corrupt,
}

fn segment_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.seg"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes [`encode_frame`] writes for `record`.
pub fn frame_len(record: &RecordRef<'_>) -> usize {
    FRAME_HEADER
        + 1
        + 8
        + 16
        + 2
        + record.topic.len()
        + 4
        + record.key.map_or(0, <[u8]>::len)
        + 4
        + record.value.len()
        + 4
        + record.raw_headers().len()
}

/// Appends the frame of one record: length, CRC32C, payload.
pub fn encode_frame(out: &mut Vec<u8>, record: &RecordRef<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.push(1);
    out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&record.event_id);
    out.extend_from_slice(&(record.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(record.topic.as_bytes());
    match record.key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    out.extend_from_slice(record.value);
    let headers = record.raw_headers();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    out.extend_from_slice(headers);
    debug_assert_eq!(out.len() - start, frame_len(record));
    let payload_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a frame payload into `records`; `None` if it is not a well-formed record.
fn decode_payload(payload: &[u8], records: &mut Records) -> Option<()> {
    let (&version, rest) = payload.split_first()?;
    if version != 1 {
        return None;
    }
    let (timestamp, rest) = rest.split_first_chunk::<8>()?;
    let (event_id, rest) = rest.split_first_chunk::<16>()?;
    let (topic_len, rest) = rest.split_first_chunk::<2>()?;
    let (topic, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*topic_len)))?;
    let (key_len, rest) = rest.split_first_chunk::<4>()?;
    let (key, rest) = match u32::from_le_bytes(*key_len) {
        u32::MAX => (None, rest),
        n => {
            let (key, rest) = rest.split_at_checked(n as usize)?;
            (Some(key), rest)
        }
    };
    let (value_len, rest) = rest.split_first_chunk::<4>()?;
    let (value, rest) = rest.split_at_checked(u32::from_le_bytes(*value_len) as usize)?;
    let (headers_len, rest) = rest.split_first_chunk::<4>()?;
    let (headers, rest) = rest.split_at_checked(u32::from_le_bytes(*headers_len) as usize)?;
    if !rest.is_empty() {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    records.push(&RecordRef::from_parts(
        topic,
        key,
        value,
        headers,
        *event_id,
        i64::from_le_bytes(*timestamp),
    ));
    Some(())
}

/// Reads complete, CRC-valid frames from `data` (a segment's bytes from a frame boundary) into `sink`, up to the
/// limits (`max_bytes` counts frame bytes; at least one frame is read when one is there). Returns the number of
/// records, the bytes consumed and why it stopped.
fn scan_frames(
    data: &[u8],
    mut sink: Option<&mut Records>,
    max_records: u64,
    max_bytes: usize,
) -> (u64, usize, ScanStop) {
    let mut pos = 0usize;
    let mut records = 0u64;
    loop {
        if records >= max_records || pos >= max_bytes {
            return (records, pos, ScanStop::Limit);
        }
        if pos == data.len() {
            return (records, pos, ScanStop::Exhausted);
        }
        let Some(header) = data.get(pos..pos + FRAME_HEADER) else {
            return (records, pos, ScanStop::Incomplete);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            return (records, pos, ScanStop::Corrupt);
        }
        let Some(payload) = data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
            return (records, pos, ScanStop::Incomplete);
        };
        if crc32c::crc32c(payload) != crc {
            return (records, pos, ScanStop::Corrupt);
        }
        if let Some(sink) = sink.as_deref_mut()
            && decode_payload(payload, sink).is_none()
        {
            return (records, pos, ScanStop::Corrupt);
        }
        pos += FRAME_HEADER + len;
        records += 1;
    }
}

/// A window of a segment file, to scan: mapped (the page cache's pages, neither copied nor zeroed: reading a
/// large window this way costs a fraction of a `read` into a fresh buffer), or read when it is small or the
/// mapping fails. The mapped range lies within the file as it was listed: segments only grow while they are
/// read, and a deleted segment stays readable through its mapping. The one exception: a writer's restart
/// truncates torn frames (never durable) at a segment's end. The scan never reaches them in the segment being
/// written (it stops at the durable sequence); it does reach the leftovers of a failed write at the end of an
/// older segment, and should the writer restart and truncate them in that very moment, touching them would
/// end the delivery process (SIGBUS): it is restarted and goes on from its cursors, nothing is lost.
enum SegmentWindow {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl SegmentWindow {
    /// Below this, a `read` costs less than setting up and tearing down a mapping.
    const MAP_AT_LEAST: u64 = 1 << 20;

    fn read(file: &mut File, offset: u64, span: u64) -> io::Result<SegmentWindow> {
        if span >= Self::MAP_AT_LEAST {
            // SAFETY: see the type's doc: the mapped bytes stay in the file while the window is scanned, and
            // nothing in this process writes through or to them.
            let mapped = unsafe {
                memmap2::MmapOptions::new()
                    .offset(offset)
                    .len(span as usize)
                    .map(&*file)
            };
            if let Ok(map) = mapped {
                return Ok(SegmentWindow::Mapped(map));
            }
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(span as usize);
        file.take(span).read_to_end(&mut data)?;
        Ok(SegmentWindow::Read(data))
    }
}

impl std::ops::Deref for SegmentWindow {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SegmentWindow::Mapped(map) => map,
            SegmentWindow::Read(data) => data,
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering from any crash: a torn or corrupt tail is
    /// truncated, every complete record before it is kept.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Spool, SpoolError> {
        Spool::open_with(dir.as_ref(), options, Role::Writer)
    }

    /// Opens a spool another process may be writing, to read it (`tidegate tail`, `spool stats`): nothing is
    /// created, truncated or removed, and appends fail. Only the last segment is scanned.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        Spool::open_with(dir.as_ref(), SpoolOptions::default(), Role::ReadOnly)
    }

    /// Opens the spool a worker process writes, to deliver it: [`Spool::read`] follows the writer (new segments,
    /// deleted ones) up to what it made durable; [`Spool::ack`] writes the checkpoint the writer's cleanup obeys,
    /// and [`Spool::publish_delivered`] tells the writer what the broker acknowledged. Nothing else is written.
    pub fn open_for_delivery(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        Spool::open_with(dir.as_ref(), SpoolOptions::default(), Role::Delivery)
    }

    fn open_with(dir: &Path, options: SpoolOptions, role: Role) -> Result<Spool, SpoolError> {
        let dir = dir.to_path_buf();
        let read_only = role != Role::Writer;
        if !read_only {
            fs::create_dir_all(&dir)?;
        }
        let mut bases: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            let is_last = i + 1 == bases.len();
            let created = fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            if read_only && (!is_last || role == Role::Delivery) {
                let bytes = match fs::metadata(&path) {
                    Ok(metadata) => metadata.len(),
                    // Deleted by the writer's cleanup since the listing (acknowledged): not there to read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                segments.push(Segment {
                    base_seq: base,
                    records: bases.get(i + 1).map_or(0, |next| next - base),
                    bytes,
                    path,
                    created,
                });
                continue;
            }
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let body = data.strip_prefix(MAGIC.as_slice()).unwrap_or(&[]);
            let (records, valid, _) = scan_frames(body, None, u64::MAX, usize::MAX);
            let keep = if data.starts_with(MAGIC) {
                MAGIC.len() + valid
            } else {
                0
            };
            if keep < data.len() && !read_only {
                recovery.truncated_bytes += (data.len() - keep) as u64;
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(keep as u64)?;
                file.sync_all()?;
            }
            if keep == 0 && !is_last && !read_only {
                fs::remove_file(&path)?;
                continue;
            }
            recovery.records += records;
            segments.push(Segment {
                base_seq: base,
                records,
                bytes: keep as u64,
                path,
                created,
            });
        }
        let oldest_on_disk = segments.first().map_or(0, |s| s.base_seq);
        let acked_seq = match read_checkpoint(&dir) {
            Ok(seq) => seq,
            Err(error) => {
                // Segments are deleted only once acknowledged, so the oldest one on disk bounds what was
                // delivered: redeliver from there (duplicates carry their event_id), never from 0.
                recovery.checkpoint_error = Some(error.to_string());
                oldest_on_disk
            }
        };
        let next_seq = segments.last().map_or(acked_seq, Segment::end_seq);
        let file = if read_only {
            match segments.last() {
                Some(last) => File::open(&last.path)?,
                None => File::open(&dir)?,
            }
        } else {
            if segments.last().is_none_or(|s| s.bytes == 0) {
                if let Some(empty) = segments.pop() {
                    fs::remove_file(&empty.path)?;
                }
                segments.push(new_segment(&dir, next_seq)?);
            }
            let last = segments.last().map(|s| s.path.clone()).unwrap_or_default();
            let file = OpenOptions::new().append(true).open(&last)?;
            // A crash between a commit's write and its fsync leaves records readable but perhaps not on disk:
            // they become durable here, before the delivery process is told they are.
            file.sync_data()?;
            file
        };
        recovery.segments = segments.len();
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let progress = match role {
            Role::Writer => {
                let progress = open_progress(&dir)?;
                write_slot(&progress, DURABLE_SLOT, next_seq)?;
                Some(progress)
            }
            Role::Delivery => Some(open_progress(&dir)?),
            Role::ReadOnly => None,
        };
        Ok(Spool {
            dir,
            options,
            writer: Mutex::new(Writer {
                segments,
                file,
                next_seq,
                total_bytes,
                appended_records: 0,
                poisoned: false,
                pending: Vec::new(),
                pending_records: 0,
            }),
            durability: Mutex::new(Durability {
                durable_seq: next_seq,
                committing: false,
                fsyncs: 0,
                commit_times: CommitTimes::default(),
                acked_seq,
            }),
            durable_changed: Condvar::new(),
            recovery,
            role,
            progress,
            commit_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            failing: AtomicBool::new(false),
            failed_commits: AtomicU64::new(0),
            removed_segments: AtomicU64::new(0),
            unreadable_records: AtomicU64::new(0),
            injected_write_failures: AtomicU32::new(0),
            injected_commit_delay_ms: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends every record of `records` (written, not yet durable). Returns the sequence number after the last
    /// record: the records are durable once [`Spool::durable_seq`] reaches it. Never blocks on I/O: no write, fsync
    /// or file removal happens here (quota pressure is relieved by [`Spool::cleanup`], run off the request path).
    pub fn append(&self, records: &Records) -> Result<u64, SpoolError> {
        if self.role != Role::Writer {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            )));
        }
        let size: u64 = records.iter().map(|r| frame_len(&r) as u64).sum();
        let count = records.len() as u64;
        let mut writer = lock(&self.writer);
        if writer.total_bytes + size > self.options.quota_bytes {
            return Err(SpoolError::Full {
                quota_bytes: self.options.quota_bytes,
                used_bytes: writer.total_bytes,
            });
        }
        // Frames are encoded straight into the pending buffer: one copy of each record per append.
        writer.pending.reserve(size as usize);
        for record in records.iter() {
            encode_frame(&mut writer.pending, &record);
        }
        writer.pending_records += count;
        writer.next_seq += count;
        writer.total_bytes += size;
        writer.appended_records += count;
        Ok(writer.next_seq)
    }

    /// Makes everything appended so far durable (one fsync; a new segment when the current one is full or
    /// failed). Returns the durable sequence number. On an error, none of the records this commit covered is
    /// durable: they are never acknowledged, their sequence numbers are never reused, and the next commit starts
    /// a new segment ([`Spool::is_failing`] until one could be started).
    pub fn commit(&self) -> Result<u64, SpoolError> {
        // Commits write the pending frames in sequence order, so only one runs at a time.
        let _one_at_a_time = lock(&self.commit_lock);
        let (pending, count, first_seq, roll) = {
            let mut writer = lock(&self.writer);
            let pending = std::mem::take(&mut writer.pending);
            let count = std::mem::take(&mut writer.pending_records);
            let current_bytes = writer.segments.last().map_or(0, |s| s.bytes);
            let full =
                current_bytes > MAGIC.len() as u64 && current_bytes + pending.len() as u64 > self.options.segment_bytes;
            (pending, count, writer.next_seq - count, writer.poisoned || full)
        };
        if pending.is_empty() {
            return Ok(self.durable_seq());
        }
        let started = Instant::now();
        let outcome = (|| {
            if roll {
                self.roll(first_seq)?;
            }
            let file = lock(&self.writer).file.try_clone()?;
            self.write_frames(&file, &pending)?;
            let delay_ms = self.injected_commit_delay_ms.load(Ordering::Relaxed);
            if delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(delay_ms));
            }
            file.sync_data()?;
            Ok::<(), SpoolError>(())
        })();
        let took = started.elapsed();
        let mut writer = lock(&self.writer);
        let rolled_ok = !writer.poisoned || !roll;
        if let Some(segment) = writer.segments.last_mut() {
            // The failed records' sequence numbers stay taken by the segment they were meant for: readers step
            // over their torn frames once a newer segment exists, and nothing after them is renumbered.
            segment.records += count;
            if rolled_ok {
                segment.bytes += pending.len() as u64;
            }
        }
        if let Err(error) = outcome {
            writer.poisoned = true;
            drop(writer);
            self.failing.store(true, Ordering::Relaxed);
            self.failed_commits.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        drop(writer);
        let mut durability = lock(&self.durability);
        durability.fsyncs += 1;
        durability.commit_times.observe(took);
        let durable = durability.durable_seq.max(first_seq + count);
        if let Some(progress) = &self.progress {
            // Published before this process counts it durable: whatever it then marks durable (a dedup claim
            // another worker may find) is covered by what other processes read here (`X-Ack: kafka` of a repeat).
            // Page cache only: a pwrite, no fsync. If it fails the delivery process lags until the next commit.
            let _ = write_slot(progress, DURABLE_SLOT, durable);
        }
        durability.durable_seq = durable;
        self.durable_changed.notify_all();
        drop(durability);
        Ok(durable)
    }

    /// Starts a new segment at `base_seq` (the first record not yet written) and makes it the one written. The
    /// file is created and fsynced without holding the writer lock, so appends never wait for that I/O.
    fn roll(&self, base_seq: u64) -> Result<(), SpoolError> {
        if self.take_injected_failure() {
            return Err(injected_failure());
        }
        let (segment, file) = match new_segment(&self.dir, base_seq)
            .and_then(|s| Ok((OpenOptions::new().append(true).open(&s.path)?, s)))
        {
            Ok((file, segment)) => (segment, file),
            Err(error) => {
                // A half-made segment (the disk filled while creating it) must not linger as an empty one.
                let _ = fs::remove_file(segment_path(&self.dir, base_seq));
                return Err(error);
            }
        };
        let mut writer = lock(&self.writer);
        writer.file = file;
        writer.total_bytes += segment.bytes;
        writer.segments.push(segment);
        writer.poisoned = false;
        drop(writer);
        self.failing.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn write_frames(&self, mut file: &File, frames: &[u8]) -> Result<(), SpoolError> {
        if self.take_injected_failure() {
            file.write_all(&frames[..frames.len() / 2])?;
            return Err(injected_failure());
        }
        file.write_all(frames)?;
        Ok(())
    }

    fn take_injected_failure(&self) -> bool {
        self.injected_write_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether the last write or fsync failed and no new segment could be started since: the service is not
    /// ready and sheds writes while this holds. [`Spool::recover`] (or the next commit) clears it.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// After a failure, tries to start a new segment now (the disk may have room again), so that a service that
    /// sheds all writes while failing can find out it may take them again. Returns whether the spool can write.
    pub fn recover(&self) -> bool {
        if !self.is_failing() {
            return true;
        }
        let _one_at_a_time = lock(&self.commit_lock);
        let base_seq = {
            let writer = lock(&self.writer);
            if !writer.poisoned {
                return true;
            }
            writer.next_seq - writer.pending_records
        };
        self.roll(base_seq).is_ok()
    }

    /// Makes the next `count` writes fail as on a full disk: a commit's write stops halfway, starting a new segment
    /// fails (fault injection for the tests and the chaos suite where no small filesystem can be mounted).
    pub fn inject_write_failures(&self, count: u32) {
        self.injected_write_failures.store(count, Ordering::Relaxed);
    }

    /// Makes every commit's fsync start `delay_ms` late, as on a disk that stalls, until set to 0 (fault
    /// injection for the chaos suite: no slow device can be made without device-mapper, which the test machines'
    /// kernels may lack). The frames are written first, so a process killed meanwhile leaves them on disk unsynced.
    pub fn inject_commit_delay(&self, delay_ms: u64) {
        self.injected_commit_delay_ms.store(delay_ms, Ordering::Relaxed);
    }

    /// Blocks until every record below `seq` is durable, sharing fsyncs with concurrent callers: the first
    /// waiter waits `window` for company, commits once, and releases everyone that commit covered.
    pub fn wait_durable(&self, seq: u64, window: Duration) -> Result<(), SpoolError> {
        let mut durability = lock(&self.durability);
        loop {
            if durability.durable_seq >= seq {
                return Ok(());
            }
            if durability.committing {
                durability = self
                    .durable_changed
                    .wait(durability)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            durability.committing = true;
            drop(durability);
            std::thread::sleep(window);
            let result = self.commit();
            durability = lock(&self.durability);
            durability.committing = false;
            self.durable_changed.notify_all();
            result?;
        }
    }

    /// Appends and waits for durability with group commit.
    pub fn append_durable(&self, records: &Records, window: Duration) -> Result<u64, SpoolError> {
        let end = self.append(records)?;
        self.wait_durable(end, window)?;
        Ok(end)
    }

    /// The sequence the next appended record gets (everything appended so far is below it).
    pub fn next_seq(&self) -> u64 {
        lock(&self.writer).next_seq
    }

    /// Every record below this sequence is durable (for the delivery role: what the writer published).
    pub fn durable_seq(&self) -> u64 {
        match (&self.progress, self.role) {
            (Some(progress), Role::Delivery) => read_slot(progress, DURABLE_SLOT),
            _ => lock(&self.durability).durable_seq,
        }
    }

    /// What the delivery process last saw the broker acknowledge (every record below it), as it published it.
    pub fn delivered_seq(&self) -> u64 {
        self.progress
            .as_ref()
            .map_or(0, |progress| read_slot(progress, DELIVERED_SLOT))
    }

    /// Tells the writer that the broker acknowledged every record below `seq` (before the checkpoint is persisted:
    /// `X-Ack: kafka` answers need not wait for it). Never moves backwards.
    pub fn publish_delivered(&self, seq: u64) -> Result<(), SpoolError> {
        if let Some(progress) = &self.progress
            && seq > read_slot(progress, DELIVERED_SLOT)
        {
            write_slot(progress, DELIVERED_SLOT, seq)?;
        }
        Ok(())
    }

    /// Reads the checkpoint the delivery process wrote, so that cleanup may delete what it acknowledged. Never
    /// moves backwards; an unreadable checkpoint keeps the last good one (and is returned as the error).
    pub fn refresh_acked(&self) -> Result<u64, SpoolError> {
        let seq = read_checkpoint(&self.dir)?;
        let mut durability = lock(&self.durability);
        durability.acked_seq = durability.acked_seq.max(seq);
        Ok(durability.acked_seq)
    }

    /// Records that the broker acknowledged everything below `seq`; persisted atomically (a temporary file, its
    /// fsync, a rename and the directory's fsync), with no lock held that appends or readers take. On an error
    /// the previous checkpoint stays in force; the caller reports it and tries again later.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        if self.role == Role::ReadOnly {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            )));
        }
        let _one_at_a_time = lock(&self.checkpoint_lock);
        if seq <= self.acked_seq() {
            return Ok(());
        }
        write_checkpoint(&self.dir, seq)?;
        let mut durability = lock(&self.durability);
        durability.acked_seq = durability.acked_seq.max(seq);
        Ok(())
    }

    pub fn acked_seq(&self) -> u64 {
        lock(&self.durability).acked_seq
    }

    /// Deletes segments that are fully acknowledged and either past retention or needed for space
    /// (the spool more than half full). Never deletes the segment being written. Returns segments removed.
    /// Files are removed after the writer lock is released.
    pub fn cleanup(&self) -> Result<usize, SpoolError> {
        self.cleanup_below(self.acked_seq())
    }

    /// [`Spool::cleanup`] with another horizon than the broker's checkpoint: only segments whose every record is
    /// below `horizon` may go (the caller passes the least of what each reader of the spool has passed: Kafka
    /// delivery, the archive).
    pub fn cleanup_below(&self, horizon: u64) -> Result<usize, SpoolError> {
        if self.role != Role::Writer {
            return Ok(0);
        }
        let doomed: Vec<Segment> = {
            let mut writer = lock(&self.writer);
            let expendable = expendable(&writer.segments, writer.total_bytes, horizon, &self.options);
            let doomed: Vec<Segment> = writer.segments.drain(..expendable).collect();
            writer.total_bytes -= doomed.iter().map(|s| s.bytes).sum::<u64>();
            doomed
        };
        remove_segments(&doomed, || {
            self.removed_segments.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(doomed.len())
    }

    /// A cursor at `seq`, or at the first record still on disk if `seq` was deleted already.
    pub fn cursor_at(&self, seq: u64) -> Cursor {
        let segments = self.segments().unwrap_or_default();
        let seq = seq.max(segments.first().map_or(0, |s| s.base_seq));
        let segment_base = segments
            .iter()
            .rev()
            .find(|s| s.base_seq <= seq)
            .map_or(seq, |s| s.base_seq);
        Cursor {
            seq,
            segment_base,
            offset: UNRESOLVED,
        }
    }

    /// Reads up to `max_records` records (and about `max_bytes` of frames, at least one record) from `cursor`,
    /// only below `limit_seq` (pass [`Spool::durable_seq`] to read only durable records). Returns the records and
    /// the next cursor. Reads every record in order: a range ends mid-segment and the next one goes on from there.
    /// Torn or corrupt frames in a segment that is no longer written (a failed write's leftovers, never
    /// acknowledged, or damage) are stepped over and counted in `unreadable_records`.
    pub fn read(
        &self,
        cursor: Cursor,
        max_records: u64,
        max_bytes: usize,
        limit_seq: u64,
    ) -> Result<(Records, Cursor), SpoolError> {
        let mut records = Records::new();
        let mut cursor = cursor;
        let segments = self.segments()?;
        let Some(mut index) = segments
            .iter()
            .position(|s| s.base_seq == cursor.segment_base)
            .or_else(|| segments.iter().position(|s| s.base_seq > cursor.segment_base))
        else {
            return Ok((records, cursor));
        };
        if segments[index].base_seq != cursor.segment_base {
            // The cursor's segment was deleted under the reader: go on from the oldest one after it.
            cursor = Cursor::start_of(&segments[index]);
        }
        let mut used_bytes = 0usize;
        loop {
            let segment = &segments[index];
            let room = max_records
                .saturating_sub(records.len() as u64)
                .min(limit_seq.saturating_sub(cursor.seq));
            if room == 0 || used_bytes >= max_bytes {
                break;
            }
            if cursor.seq < segment.end_seq() {
                let (consumed, stop) =
                    self.read_segment(segment, &mut cursor, &mut records, room, max_bytes - used_bytes)?;
                used_bytes += consumed;
                if stop == ScanStop::Limit {
                    continue;
                }
            }
            if index + 1 == segments.len() {
                break; // the segment being written: what is missing at its end is still being written
            }
            if cursor.seq < segment.end_seq() {
                // Not the segment being written, yet records are missing at its end: frames a failed write left
                // torn (those records were never acknowledged), or damage. Step over them, counted.
                self.unreadable_records
                    .fetch_add(segment.end_seq() - cursor.seq, Ordering::Relaxed);
            }
            index += 1;
            cursor = Cursor::start_of(&segments[index]);
        }
        Ok((records, cursor))
    }

    /// The segments as they are now: the writer's own list, or, for the delivery role, listed afresh.
    fn segments(&self) -> Result<Vec<Segment>, SpoolError> {
        if self.role == Role::Delivery {
            list_segments(&self.dir, self.durable_seq())
        } else {
            Ok(lock(&self.writer).segments.clone())
        }
    }

    /// Reads frames of one segment from `cursor` (advanced past them) until a limit or the end of what is there.
    /// Returns the frame bytes consumed and why it stopped (`Limit`, or the end of the readable frames).
    fn read_segment(
        &self,
        segment: &Segment,
        cursor: &mut Cursor,
        records: &mut Records,
        max_records: u64,
        max_bytes: usize,
    ) -> Result<(usize, ScanStop), SpoolError> {
        let mut file = match File::open(&segment.path) {
            Ok(file) => file,
            // Deleted under the reader once acknowledged: nothing left to read in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, ScanStop::Exhausted)),
            Err(e) => return Err(e.into()),
        };
        if cursor.offset == UNRESOLVED && cursor.seq == segment.base_seq {
            cursor.offset = MAGIC.len() as u64;
        } else if cursor.offset == UNRESOLVED {
            let start = MAGIC.len() as u64;
            let data = SegmentWindow::read(&mut file, start, segment.bytes.saturating_sub(start))?;
            let (_, consumed, _) = scan_frames(&data, None, cursor.seq - segment.base_seq, usize::MAX);
            cursor.offset = start + consumed as u64;
        }
        let before = records.len() as u64;
        let mut consumed_total = 0usize;
        // Read about what the byte budget allows (at most 16 MiB at a time), not the whole segment; widen the
        // window only when a single frame does not fit in it.
        let mut window = (max_bytes as u64).saturating_add(64 << 10).min(16 << 20);
        let stop = loop {
            let remaining = segment.bytes.saturating_sub(cursor.offset);
            if remaining == 0 {
                break ScanStop::Exhausted;
            }
            let room = max_records - (records.len() as u64 - before);
            let byte_room = max_bytes.saturating_sub(consumed_total);
            let span = remaining.min(window);
            let data = SegmentWindow::read(&mut file, cursor.offset, span)?;
            let got = records.len() as u64;
            let (read, consumed, stop) = scan_frames(&data, Some(records), room, byte_room);
            debug_assert_eq!(records.len() as u64 - got, read);
            cursor.offset += consumed as u64;
            cursor.seq += read;
            consumed_total += consumed;
            let window_cut = (data.len() as u64) < remaining;
            match stop {
                ScanStop::Limit | ScanStop::Corrupt => break stop,
                ScanStop::Exhausted | ScanStop::Incomplete if window_cut && (data.len() as u64) == span => {
                    if read == 0 {
                        window = window.saturating_mul(2);
                    }
                }
                _ => break stop,
            }
        };
        Ok((consumed_total, stop))
    }

    pub fn stats(&self) -> SpoolStats {
        if self.role == Role::Delivery {
            // What the writer made durable, as it is now on disk.
            let durable_seq = self.durable_seq();
            let segments = list_segments(&self.dir, durable_seq).unwrap_or_default();
            let durability = lock(&self.durability);
            return SpoolStats {
                segments: segments.len(),
                bytes: segments.iter().map(|s| s.bytes).sum(),
                quota_bytes: self.options.quota_bytes,
                next_seq: durable_seq,
                durable_seq,
                acked_seq: durability.acked_seq,
                unreadable_records: self.unreadable_records.load(Ordering::Relaxed),
                recovery: self.recovery.clone(),
                ..SpoolStats::default()
            };
        }
        let writer = lock(&self.writer);
        let durability = lock(&self.durability);
        SpoolStats {
            segments: writer.segments.len(),
            bytes: writer.total_bytes,
            quota_bytes: self.options.quota_bytes,
            next_seq: writer.next_seq,
            durable_seq: durability.durable_seq,
            acked_seq: durability.acked_seq,
            fsyncs: durability.fsyncs,
            commit_times: durability.commit_times.clone(),
            appended_records: writer.appended_records,
            unreadable_records: self.unreadable_records.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            removed_segments: self.removed_segments.load(Ordering::Relaxed),
            failing: self.is_failing(),
            recovery: self.recovery.clone(),
        }
    }

    /// Event ids of records received at or after `since_ms`, oldest first (to rebuild the dedup window), but
    /// those of records on `occurrences_topic` (see [`Spool::last_event_ids`]).
    pub fn event_ids_since(&self, since_ms: i64, occurrences_topic: &str) -> Result<Vec<([u8; 16], i64)>, SpoolError> {
        self.event_ids(0, since_ms, occurrences_topic)
    }

    /// Event ids (with reception times) of the last `count` records written, oldest first: those a writer killed
    /// between a commit and marking its records' dedup claims durable left durable but unclaimed. Records on
    /// `occurrences_topic` (the archive's duplicate occurrences) are left out: one says a record was seen, not that
    /// it is durable, and the record it repeats may have been waiting for another spool's commit when the writer
    /// was killed (a worker's high-priority spool commits on its own); taken as a duplicate, a retry of it was
    /// answered `duplicate` and never written.
    pub fn last_event_ids(&self, count: u64, occurrences_topic: &str) -> Result<Vec<([u8; 16], i64)>, SpoolError> {
        let end = lock(&self.writer).next_seq;
        self.event_ids(end.saturating_sub(count), i64::MIN, occurrences_topic)
    }

    fn event_ids(
        &self,
        from_seq: u64,
        since_ms: i64,
        occurrences_topic: &str,
    ) -> Result<Vec<([u8; 16], i64)>, SpoolError> {
        let mut ids = Vec::new();
        let mut cursor = self.cursor_at(from_seq);
        let limit = lock(&self.writer).next_seq;
        loop {
            let (records, next) = self.read(cursor, 65_536, 64 << 20, limit)?;
            if records.is_empty() {
                break;
            }
            ids.extend(
                records
                    .iter()
                    .filter(|r| r.timestamp_ms >= since_ms && r.topic != occurrences_topic)
                    .map(|r| (r.event_id, r.timestamp_ms)),
            );
            cursor = next;
        }
        Ok(ids)
    }
}

fn injected_failure() -> SpoolError {
    SpoolError::Io(io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (injected)",
    ))
}

fn new_segment(dir: &Path, base_seq: u64) -> Result<Segment, SpoolError> {
    let path = segment_path(dir, base_seq);
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(Segment {
        base_seq,
        records: 0,
        bytes: MAGIC.len() as u64,
        path,
        created: SystemTime::now(),
    })
}

/// The checkpoint the delivery process wrote in the spool directory `dir` (every record below it acknowledged by
/// the broker), read without opening the spool: 0 when there is none yet, an error when it cannot be read or parsed.
pub fn read_checkpoint(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join("acked");
    match fs::read(&path) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| {
                SpoolError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt checkpoint {}: {:?}",
                        path.display(),
                        String::from_utf8_lossy(&bytes)
                    ),
                ))
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn write_checkpoint(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    let tmp = dir.join("acked.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(seq.to_string().as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join("acked"))?;
    sync_dir(dir)?;
    Ok(())
}
