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
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::batch::{RecordBatch, RecordRef};

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
    pub appended_records: u64,
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
    /// Segments rolled but not yet fsynced.
    unsynced: Vec<File>,
    /// Frames appended but not yet written: `commit` writes them from its own thread, so an append is a copy.
    pending: Vec<u8>,
    pending_records: u64,
}

struct Durability {
    durable_seq: u64,
    committing: bool,
    fsyncs: u64,
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

/// The segment log. Shared between threads: appends serialize on one lock, commits and reads do not block them.
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    writer: Mutex<Writer>,
    durability: Mutex<Durability>,
    durable_changed: Condvar,
    recovery: Recovery,
    read_only: bool,
    commit_lock: Mutex<()>,
    failed: std::sync::atomic::AtomicBool,
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

/// Decodes a frame payload into `batch`; `None` if it is not a well-formed record.
fn decode_payload(payload: &[u8], batch: &mut RecordBatch) -> Option<()> {
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
    batch.push(&RecordRef::from_parts(
        topic,
        key,
        value,
        headers,
        *event_id,
        i64::from_le_bytes(*timestamp),
    ));
    Some(())
}

/// Reads complete, CRC-valid frames from `data` (a segment's bytes after the magic) into `batch`, up to the
/// limits. Returns the number of records and bytes consumed; stops at the first incomplete or corrupt frame.
fn scan_frames(data: &[u8], mut batch: Option<&mut RecordBatch>, max_records: u64, max_bytes: usize) -> (u64, usize) {
    let mut pos = 0usize;
    let mut records = 0u64;
    while records < max_records && pos < max_bytes {
        let Some(header) = data.get(pos..pos + FRAME_HEADER) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            break;
        }
        let Some(payload) = data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        if let Some(batch) = batch.as_deref_mut()
            && decode_payload(payload, batch).is_none()
        {
            break;
        }
        pos += FRAME_HEADER + len;
        records += 1;
    }
    (records, pos)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering from any crash: a torn or corrupt tail is
    /// truncated, every complete record before it is kept.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Spool, SpoolError> {
        Spool::open_with(dir.as_ref(), options, false)
    }

    /// Opens a spool another process may be writing, to read it (`tidegate tail`, `spool stats`): nothing is
    /// created, truncated or removed, and appends fail. Only the last segment is scanned.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        Spool::open_with(dir.as_ref(), SpoolOptions::default(), true)
    }

    fn open_with(dir: &Path, options: SpoolOptions, read_only: bool) -> Result<Spool, SpoolError> {
        let dir = dir.to_path_buf();
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
            if read_only && !is_last {
                let bytes = fs::metadata(&path)?.len();
                segments.push(Segment {
                    base_seq: base,
                    records: bases[i + 1] - base,
                    bytes,
                    path,
                    created,
                });
                continue;
            }
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let body = data.strip_prefix(MAGIC.as_slice()).unwrap_or(&[]);
            let (records, valid) = scan_frames(body, None, u64::MAX, usize::MAX);
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
        let acked_seq = read_checkpoint(&dir)?;
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
            OpenOptions::new().append(true).open(&last)?
        };
        recovery.segments = segments.len();
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        Ok(Spool {
            dir,
            options,
            writer: Mutex::new(Writer {
                segments,
                file,
                next_seq,
                total_bytes,
                appended_records: 0,
                unsynced: Vec::new(),
                pending: Vec::new(),
                pending_records: 0,
            }),
            durability: Mutex::new(Durability {
                durable_seq: next_seq,
                committing: false,
                fsyncs: 0,
                acked_seq,
            }),
            durable_changed: Condvar::new(),
            recovery,
            read_only,
            commit_lock: Mutex::new(()),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends every record of `batch` (written, not yet durable). Returns the sequence number after the last
    /// record: the batch is durable once [`Spool::durable_seq`] reaches it.
    pub fn append(&self, batch: &RecordBatch) -> Result<u64, SpoolError> {
        if self.read_only {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            )));
        }
        let size: u64 = batch.iter().map(|r| frame_len(&r) as u64).sum();
        let count = batch.len() as u64;
        let mut writer = lock(&self.writer);
        if writer.total_bytes + size > self.options.quota_bytes {
            drop(writer);
            self.cleanup()?;
            writer = lock(&self.writer);
            if writer.total_bytes + size > self.options.quota_bytes {
                return Err(SpoolError::Full {
                    quota_bytes: self.options.quota_bytes,
                    used_bytes: writer.total_bytes,
                });
            }
        }
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SpoolError::Io(io::Error::other(
                "an earlier spool write failed; reopen the spool",
            )));
        }
        // Frames are encoded straight into the pending buffer: one copy of each record per append.
        writer.pending.reserve(size as usize);
        for record in batch.iter() {
            encode_frame(&mut writer.pending, &record);
        }
        writer.pending_records += count;
        writer.next_seq += count;
        writer.total_bytes += size;
        writer.appended_records += count;
        Ok(writer.next_seq)
    }

    /// Makes everything appended so far durable (one fsync, plus one per segment rolled since the last commit).
    /// Returns the durable sequence number.
    pub fn commit(&self) -> Result<u64, SpoolError> {
        // Commits write the pending frames in sequence order, so only one runs at a time.
        let _one_at_a_time = lock(&self.commit_lock);
        let (target, file, rolled, pending) = {
            let mut writer = lock(&self.writer);
            let pending = std::mem::take(&mut writer.pending);
            let count = std::mem::take(&mut writer.pending_records);
            if !pending.is_empty() {
                let current_bytes = writer.segments.last().map_or(0, |s| s.bytes);
                if current_bytes > MAGIC.len() as u64
                    && current_bytes + pending.len() as u64 > self.options.segment_bytes
                {
                    let segment = new_segment(&self.dir, writer.next_seq - count)?;
                    let file = OpenOptions::new().append(true).open(&segment.path)?;
                    let previous = std::mem::replace(&mut writer.file, file);
                    writer.unsynced.push(previous);
                    writer.total_bytes += segment.bytes;
                    writer.segments.push(segment);
                }
                // Accounted before the write: readers bounded by `durable_seq` never look past what is synced,
                // and others stop at a frame still being written.
                if let Some(segment) = writer.segments.last_mut() {
                    segment.records += count;
                    segment.bytes += pending.len() as u64;
                }
            }
            (
                writer.next_seq,
                writer.file.try_clone()?,
                std::mem::take(&mut writer.unsynced),
                pending,
            )
        };
        if let Err(e) = (&file).write_all(&pending) {
            // The records were never acknowledged; refuse further appends rather than leave a gap in sequence.
            self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(e.into());
        }
        let mut fsyncs = 0;
        for file in rolled.iter().chain(std::iter::once(&file)) {
            file.sync_data()?;
            fsyncs += 1;
        }
        if !rolled.is_empty() {
            sync_dir(&self.dir)?;
        }
        let mut durability = lock(&self.durability);
        durability.fsyncs += fsyncs;
        durability.durable_seq = durability.durable_seq.max(target);
        self.durable_changed.notify_all();
        Ok(durability.durable_seq)
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
    pub fn append_durable(&self, batch: &RecordBatch, window: Duration) -> Result<u64, SpoolError> {
        let end = self.append(batch)?;
        self.wait_durable(end, window)?;
        Ok(end)
    }

    pub fn durable_seq(&self) -> u64 {
        lock(&self.durability).durable_seq
    }

    /// Records that the broker acknowledged everything below `seq`; persisted atomically.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        if self.read_only {
            return Err(SpoolError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "spool opened read-only",
            )));
        }
        let mut durability = lock(&self.durability);
        if seq <= durability.acked_seq {
            return Ok(());
        }
        write_checkpoint(&self.dir, seq)?;
        durability.acked_seq = seq;
        Ok(())
    }

    pub fn acked_seq(&self) -> u64 {
        lock(&self.durability).acked_seq
    }

    /// Deletes segments that are fully acknowledged and either past retention or needed for space
    /// (the spool more than half full). Never deletes the segment being written. Returns segments removed.
    pub fn cleanup(&self) -> Result<usize, SpoolError> {
        if self.read_only {
            return Ok(0);
        }
        let acked = self.acked_seq();
        let now = SystemTime::now();
        let mut writer = lock(&self.writer);
        let pressed = writer.total_bytes * 2 > self.options.quota_bytes;
        let mut removed = 0;
        while writer.segments.len() > 1 {
            let oldest = &writer.segments[0];
            let expired = now.duration_since(oldest.created).unwrap_or_default() >= self.options.retention;
            if oldest.end_seq() > acked || !(expired || pressed) {
                break;
            }
            fs::remove_file(&oldest.path)?;
            writer.total_bytes -= oldest.bytes;
            writer.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// A cursor at `seq`, or at the first record still on disk if `seq` was deleted already.
    pub fn cursor_at(&self, seq: u64) -> Cursor {
        let writer = lock(&self.writer);
        let seq = seq.max(writer.segments.first().map_or(0, |s| s.base_seq));
        let segment_base = writer
            .segments
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

    /// Reads up to `max_records` records (and roughly `max_bytes`) from `cursor`, only below `limit_seq`
    /// (pass [`Spool::durable_seq`] to read only durable records). Returns the records and the next cursor.
    pub fn read(
        &self,
        cursor: Cursor,
        max_records: u64,
        max_bytes: usize,
        limit_seq: u64,
    ) -> Result<(RecordBatch, Cursor), SpoolError> {
        let mut batch = RecordBatch::new();
        let mut cursor = cursor;
        let segments: Vec<Segment> = lock(&self.writer).segments.clone();
        if segments
            .first()
            .is_some_and(|first| cursor.segment_base < first.base_seq)
        {
            // The segment was deleted under the reader: continue from the oldest one left.
            cursor = Cursor {
                seq: segments[0].base_seq,
                segment_base: segments[0].base_seq,
                offset: UNRESOLVED,
            };
        }
        for segment in &segments {
            let room = max_records
                .saturating_sub(batch.len() as u64)
                .min(limit_seq.saturating_sub(cursor.seq));
            if room == 0 || batch.payload_bytes() >= max_bytes {
                break;
            }
            if segment.end_seq() <= cursor.seq && segment.base_seq != cursor.segment_base {
                continue;
            }
            if segment.base_seq > cursor.segment_base {
                cursor = Cursor {
                    seq: segment.base_seq,
                    segment_base: segment.base_seq,
                    offset: MAGIC.len() as u64,
                };
            }
            let mut file = File::open(&segment.path)?;
            if cursor.offset == UNRESOLVED {
                let mut data = Vec::new();
                file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
                (&mut file)
                    .take(segment.bytes.saturating_sub(MAGIC.len() as u64))
                    .read_to_end(&mut data)?;
                let (_, consumed) = scan_frames(&data, None, cursor.seq - segment.base_seq, usize::MAX);
                cursor.offset = MAGIC.len() as u64 + consumed as u64;
            }
            let before = batch.len() as u64;
            let byte_room = max_bytes.saturating_sub(batch.payload_bytes());
            let remaining = segment.bytes.saturating_sub(cursor.offset);
            // Read about what the byte budget allows (frames add a little to the payload), not the whole segment;
            // widen the window only when a single frame does not fit in it.
            let budget = (byte_room as u64)
                .saturating_add(byte_room as u64 / 4)
                .saturating_add(64 << 10);
            let mut window = remaining.min(budget);
            let consumed = loop {
                file.seek(SeekFrom::Start(cursor.offset))?;
                let mut data = Vec::new();
                (&mut file).take(window).read_to_end(&mut data)?;
                let (records, consumed) = scan_frames(&data, Some(&mut batch), room, byte_room);
                if records > 0 || window >= remaining {
                    break consumed;
                }
                window = remaining.min(window.saturating_mul(2));
            };
            cursor.offset += consumed as u64;
            cursor.seq += batch.len() as u64 - before;
        }
        Ok((batch, cursor))
    }

    pub fn stats(&self) -> SpoolStats {
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
            appended_records: writer.appended_records,
            recovery: self.recovery.clone(),
        }
    }

    /// Event ids of records received at or after `since_ms`, oldest first (to rebuild the dedup window).
    pub fn event_ids_since(&self, since_ms: i64) -> Result<Vec<([u8; 16], i64)>, SpoolError> {
        let mut ids = Vec::new();
        let mut cursor = self.cursor_at(0);
        let limit = lock(&self.writer).next_seq;
        loop {
            let (batch, next) = self.read(cursor, 65_536, 64 << 20, limit)?;
            if batch.is_empty() {
                break;
            }
            ids.extend(
                batch
                    .iter()
                    .filter(|r| r.timestamp_ms >= since_ms)
                    .map(|r| (r.event_id, r.timestamp_ms)),
            );
            cursor = next;
        }
        Ok(ids)
    }
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

fn read_checkpoint(dir: &Path) -> Result<u64, SpoolError> {
    match fs::read_to_string(dir.join("acked")) {
        Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
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
