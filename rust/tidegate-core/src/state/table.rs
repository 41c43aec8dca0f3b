//! State shared by the workers of a host: memory-mapped tables under the data dir, one file each, that every
//! worker process maps and that survive restarts. Three tables use them: the dedup window ([`SharedWindow`]: event
//! ids and idempotency keys), the per-device token buckets ([`RateTable`]) and the devices' last-seen state
//! ([`crate::state::lastseen::LastSeenTable`], whose slots carry extra words).
//!
//! # Why this shape
//!
//! - **Mutual exclusion**: an `flock` on the table file, held for all of one request's lookups (two
//!   syscalls per request), plus a mutex for the threads of one process (an `flock` is per open file, so the
//!   threads sharing one would not exclude each other). The kernel drops the lock of a process that dies, so a
//!   SIGKILLed worker never wedges the others. A lock-free table would need multi-word atomic updates of a slot;
//!   a request's claims are a handful of cache lines, far cheaper than the request around them.
//! - **Open addressing, no tombstones**: an id lives in one of the [`PROBE`] slots from its home slot, and every
//!   lookup reads all of them, so emptying a slot (release, expiry, a failed check) never hides another id. When
//!   all of them are live, the one closest to expiry is evicted: the table is bounded, like the window before it.
//! - **Torn writes are empty slots**: a slot is four 64-bit words, `id` (two), `word` (an expiry, or a bucket's
//!   refill time) and `aux | check << 32` (a table may put extra words between `word` and the last one), where
//!   `check` is a CRC32C of the slot's other bytes with its low bit set
//!   (so an all-zero slot, as a new file holds, never passes). A write first zeroes the check word, then writes
//!   the id and `word`, then the new check word; a slot that fails its check counts as empty. A worker killed
//!   mid-write, or a page torn on disk, therefore loses what the slot held (a later retry is delivered again, with
//!   the same event id) but can never make a slot match an id it was not written for: never a false duplicate.
//! - **Shared memory is only touched through atomics** (relaxed, inside the lock), which is what Rust allows for
//!   memory other processes write too.
//! - **No msync per request**: the page cache outlives any worker, which is what a crash of a worker needs.
//!   After an OS crash the file may have lost recent updates; that too only forgets ids (never invents them), and
//!   the header (with its owner counter, below) is flushed at every open.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use memmap2::{MmapOptions, MmapRaw};

use crate::canonical::id::Id;

/// Bytes of one slot without extra words: a 128-bit id, a 64-bit word, a 32-bit aux value and a 32-bit check.
pub const SLOT_BYTES: usize = 32;
const SLOT_WORDS: usize = SLOT_BYTES / 8;
/// The most extra words a table's slots may carry (between `word` and the check word).
pub(crate) const MAX_EXTRA_WORDS: usize = 12;
/// Slots an id may occupy from its home slot (1 KiB, 16 cache lines: read in full by every lookup).
pub const PROBE: usize = 32;
/// Slots per id of capacity, as numerator / denominator: a load factor of 0.75 at full capacity, so about
/// 43 bytes per id ([`SharedWindow::bytes_per_id`]).
const SLOTS_PER_ID: (usize, usize) = (4, 3);
const HEADER_WORDS: usize = 8;
const HEADER_BYTES: usize = HEADER_WORDS * 8;
const MAGIC: u64 = u64::from_le_bytes(*b"tgtable\0");
const VERSION: u64 = 1;
// Header words.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOTS: usize = 2;
const H_KIND: usize = 3;
const H_CREATED_MS: usize = 4;
const H_CHECK: usize = 5;
/// Not covered by the header check: it changes at every open (an aligned 8-byte store, never torn).
const H_NEXT_OWNER: usize = 6;

/// The `aux` of a dedup slot whose record is durable; any other value names the owner of a pending claim.
const COMMITTED: u32 = 0;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One decoded, valid slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) id: Id,
    pub(crate) word: u64,
    /// The table's extra words (the first `extra_words` of them; the rest stay zero).
    pub(crate) extra: [u64; MAX_EXTRA_WORDS],
    pub(crate) aux: u32,
}

impl Slot {
    pub(crate) fn new(id: Id, word: u64, aux: u32) -> Slot {
        Slot {
            id,
            word,
            extra: [0; MAX_EXTRA_WORDS],
            aux,
        }
    }

    /// CRC32C over the id, `word`, the first `extra_words` extra words and `aux` (for a slot without extra words,
    /// the 28 bytes before the check), low bit set.
    fn check(&self, extra_words: usize) -> u32 {
        let mut bytes = [0u8; 28 + MAX_EXTRA_WORDS * 8];
        bytes[..16].copy_from_slice(&self.id);
        bytes[16..24].copy_from_slice(&self.word.to_le_bytes());
        let mut end = 24;
        for word in &self.extra[..extra_words] {
            bytes[end..end + 8].copy_from_slice(&word.to_le_bytes());
            end += 8;
        }
        bytes[end..end + 4].copy_from_slice(&self.aux.to_le_bytes());
        crc32c::crc32c(&bytes[..end + 4]) | 1
    }
}

fn id_words(id: &Id) -> (u64, u64) {
    let (low, high) = id.split_at(8);
    (
        u64::from_le_bytes(low.try_into().unwrap_or_default()),
        u64::from_le_bytes(high.try_into().unwrap_or_default()),
    )
}

/// A fixed-size table of slots in a shared mapping (a file, or anonymous memory for a table of one process).
pub struct Table {
    map: MmapRaw,
    file: Option<File>,
    guard: Mutex<()>,
    /// Home slots; the table holds `homes + PROBE - 1` slots, so a probe never wraps.
    homes: usize,
    /// Words between `word` and the check word of each slot.
    extra_words: usize,
    owner: u32,
    created_ms: i64,
    fresh: bool,
}

/// The table, locked against every other thread and process: the only way to read or write slots.
pub struct Locked<'a> {
    table: &'a Table,
    _guard: MutexGuard<'a, ()>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(file) = &self.table.file {
            // Closing the file or the process's death would release it too; an error here leaves nothing held.
            let _ = unlock_file(file);
        }
    }
}

impl Table {
    fn slots_for(capacity: usize) -> (usize, usize) {
        let homes = (capacity.max(1) * SLOTS_PER_ID.0).div_ceil(SLOTS_PER_ID.1);
        (homes, homes + PROBE - 1)
    }

    fn byte_len(slots: usize, extra_words: usize) -> usize {
        HEADER_BYTES + slots * (SLOT_BYTES + extra_words * 8)
    }

    /// A table in anonymous memory, for one process (tests, and a gateway without a data dir).
    pub fn in_memory(capacity: usize, kind: u64) -> io::Result<Table> {
        Table::in_memory_with(capacity, kind, 0)
    }

    /// [`Table::in_memory`] with `extra_words` (at most [`MAX_EXTRA_WORDS`]) in each slot.
    pub(crate) fn in_memory_with(capacity: usize, kind: u64, extra_words: usize) -> io::Result<Table> {
        let extra_words = extra_words.min(MAX_EXTRA_WORDS);
        let (homes, slots) = Table::slots_for(capacity);
        let map = MmapRaw::from(MmapOptions::new().len(Table::byte_len(slots, extra_words)).map_anon()?);
        let mut table = Table {
            map,
            file: None,
            guard: Mutex::new(()),
            homes,
            extra_words,
            owner: 1,
            created_ms: now_ms(),
            fresh: true,
        };
        table.write_header(slots as u64, kind, table.created_ms);
        table.owner = table.take_owner();
        Ok(table)
    }

    /// Opens (or creates) the table file at `path`, shared with every process that opens it. A file that is not
    /// such a table, was made for another capacity or fails its header check is started anew, empty
    /// ([`Table::is_fresh`]).
    pub fn open(path: &Path, capacity: usize, kind: u64) -> io::Result<Table> {
        Table::open_with(path, capacity, kind, 0)
    }

    /// [`Table::open`] with `extra_words` (at most [`MAX_EXTRA_WORDS`]) in each slot.
    pub(crate) fn open_with(path: &Path, capacity: usize, kind: u64, extra_words: usize) -> io::Result<Table> {
        let extra_words = extra_words.min(MAX_EXTRA_WORDS);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock_file(&file)?;
        let (homes, slots) = Table::slots_for(capacity);
        let len = Table::byte_len(slots, extra_words);
        let mut fresh = false;
        if file.metadata()?.len() != len as u64 {
            // Only a table made for another capacity (or not a table): no worker of this configuration maps it.
            file.set_len(0)?;
            file.set_len(len as u64)?;
            fresh = true;
        }
        // Every block reserved now: a page of a sparse file first written on a full disk would kill the
        // process with SIGBUS. A disk too full for the table fails here, where the caller can do without it.
        // SAFETY: posix_fallocate takes a file descriptor, which `file` keeps open for the duration of the call.
        let reserved = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if reserved != 0 {
            return Err(io::Error::from_raw_os_error(reserved));
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        let mut table = Table {
            map,
            file: None,
            guard: Mutex::new(()),
            homes,
            extra_words,
            owner: 0,
            created_ms: 0,
            fresh,
        };
        if !fresh && !table.header_valid(slots as u64, kind) {
            for word in table.words() {
                word.store(0, Ordering::Relaxed);
            }
            table.fresh = true;
        }
        if table.fresh {
            table.write_header(slots as u64, kind, now_ms());
        }
        table.created_ms = table.words()[H_CREATED_MS].load(Ordering::Relaxed) as i64;
        table.owner = table.take_owner();
        // The owner counter must never go back (an old owner's pending claims would pass for this one's).
        table.map.flush_range(0, HEADER_BYTES)?;
        unlock_file(&file)?;
        table.file = Some(file);
        Ok(table)
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page aligned, `len` bytes long and lives as long as `self`; AtomicU64 has the
        // size and alignment of u64 and allows mutation through a shared reference. Other processes write the
        // same words only with aligned 8-byte stores under the same lock.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().cast::<AtomicU64>(), self.map.len() / 8) }
    }

    fn header_check(words: &[u64]) -> u64 {
        let mut bytes = Vec::with_capacity(H_CHECK * 8);
        for word in &words[..H_CHECK] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        u64::from(crc32c::crc32c(&bytes))
    }

    fn header_valid(&self, slots: u64, kind: u64) -> bool {
        let words: Vec<u64> = self.words()[..HEADER_WORDS]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        words[H_MAGIC] == MAGIC
            && words[H_VERSION] == VERSION
            && words[H_SLOTS] == slots
            && words[H_KIND] == kind
            && words[H_CHECK] == Table::header_check(&words)
    }

    fn write_header(&mut self, slots: u64, kind: u64, created_ms: i64) {
        let mut words = [0u64; HEADER_WORDS];
        words[H_MAGIC] = MAGIC;
        words[H_VERSION] = VERSION;
        words[H_SLOTS] = slots;
        words[H_KIND] = kind;
        words[H_CREATED_MS] = created_ms as u64;
        words[H_CHECK] = Table::header_check(&words);
        words[H_NEXT_OWNER] = 1;
        for (target, word) in self.words().iter().zip(words) {
            target.store(word, Ordering::Relaxed);
        }
    }

    /// A number no other opening of this table had: the owner of this opening's pending dedup claims.
    fn take_owner(&self) -> u32 {
        let next = &self.words()[H_NEXT_OWNER];
        let owner = (next.load(Ordering::Relaxed) as u32).max(1);
        next.store(u64::from(owner.wrapping_add(1).max(1)), Ordering::Relaxed);
        owner
    }

    fn lock_guard(&self) -> MutexGuard<'_, ()> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the table against every other thread and process until the returned guard is dropped.
    pub fn lock(&self) -> io::Result<Locked<'_>> {
        let guard = self.lock_guard();
        if let Some(file) = &self.file {
            lock_file(file)?;
        }
        Ok(Locked {
            table: self,
            _guard: guard,
        })
    }

    /// Whether this opening started the table anew (created, resized or found damaged): it holds nothing older.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// When the table was started (ms since the epoch): it holds nothing claimed before.
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn slot_count(&self) -> usize {
        self.homes + PROBE - 1
    }

    /// The table's bytes (header included) per id it holds at capacity.
    pub fn bytes_per_id(&self, capacity: usize) -> f64 {
        self.map.len() as f64 / capacity.max(1) as f64
    }

    fn home(&self, id: &Id) -> usize {
        // Ids are BLAKE3 output: their first word is already uniform. Multiply-shift maps it onto the homes.
        ((u128::from(id_words(id).0) * self.homes as u128) >> 64) as usize
    }
}

/// `flock(LOCK_EX)`, waiting; the kernel releases it when the file is closed or the process dies. (std's
/// `File::lock` needs Rust 1.89; the workspace supports 1.85.)
fn lock_file(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_EX)
}

fn unlock_file(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_UN)
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock takes a file descriptor, which `file` keeps open for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Where an id is, or where it would go, within its probe window.
pub(crate) struct Probe {
    pub(crate) found: Option<(usize, Slot)>,
    /// The first empty (never written, failed its check, or expired) slot.
    free: Option<usize>,
    /// The live slot with the smallest `word`, evicted when nothing is free.
    oldest: usize,
}

impl Locked<'_> {
    fn slot_words(&self, index: usize) -> &[AtomicU64] {
        let width = SLOT_WORDS + self.table.extra_words;
        let start = HEADER_WORDS + index * width;
        &self.table.words()[start..start + width]
    }

    pub(crate) fn read(&self, index: usize) -> Option<Slot> {
        let words = self.slot_words(index);
        let (tail_word, extra_words) = words[3..].split_last()?;
        let tail = tail_word.load(Ordering::Relaxed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&words[0].load(Ordering::Relaxed).to_le_bytes());
        id[8..].copy_from_slice(&words[1].load(Ordering::Relaxed).to_le_bytes());
        let mut slot = Slot::new(id, words[2].load(Ordering::Relaxed), tail as u32);
        for (target, word) in slot.extra.iter_mut().zip(extra_words) {
            *target = word.load(Ordering::Relaxed);
        }
        ((tail >> 32) as u32 == slot.check(self.table.extra_words)).then_some(slot)
    }

    pub(crate) fn write(&self, index: usize, slot: Slot) {
        let words = self.slot_words(index);
        let Some((tail, extra_words)) = words[3..].split_last() else {
            return;
        };
        let (low, high) = id_words(&slot.id);
        // The check word first goes to zero (never valid), and comes back last: any prefix of this write is an
        // empty slot.
        tail.store(0, Ordering::Relaxed);
        words[0].store(low, Ordering::Relaxed);
        words[1].store(high, Ordering::Relaxed);
        words[2].store(slot.word, Ordering::Relaxed);
        for (target, word) in extra_words.iter().zip(slot.extra) {
            target.store(word, Ordering::Relaxed);
        }
        let check = slot.check(self.table.extra_words);
        tail.store(u64::from(slot.aux) | u64::from(check) << 32, Ordering::Relaxed);
    }

    fn tail(&self, index: usize) -> &AtomicU64 {
        let words = self.slot_words(index);
        &words[words.len() - 1]
    }

    fn clear(&self, index: usize) {
        self.tail(index).store(0, Ordering::Relaxed);
    }

    /// Looks `id` up among the slots still live at `now` (a `word` above it); `now = 0` ignores expiry.
    ///
    /// A first pass compares raw words only: the id's two words (a match is then verified by its check), and the
    /// first slot visibly free (check word zero, or expired). Checksums of other slots are computed only when no
    /// slot is visibly free, to find torn slots (free) and the oldest live one (evicted): a new id costs 32 word
    /// compares, not 32 CRCs (the dedup table sits on every request's path).
    pub(crate) fn probe(&self, id: &Id, now: u64) -> Probe {
        let home = self.table.home(id);
        let (low, high) = id_words(id);
        let mut probe = Probe {
            found: None,
            free: None,
            oldest: home,
        };
        for index in home..home + PROBE {
            let words = self.slot_words(index);
            let tail = self.tail(index).load(Ordering::Relaxed);
            if tail != 0
                && words[0].load(Ordering::Relaxed) == low
                && words[1].load(Ordering::Relaxed) == high
                && let Some(slot) = self.read(index)
                && slot.word > now
                && slot.id == *id
            {
                probe.found = Some((index, slot));
                return probe;
            }
            if probe.free.is_none() && (tail == 0 || words[2].load(Ordering::Relaxed) <= now) {
                probe.free = Some(index);
            }
        }
        if probe.free.is_some() {
            return probe;
        }
        let mut oldest_word = u64::MAX;
        for index in home..home + PROBE {
            match self.read(index) {
                Some(slot) if slot.word > now => {
                    if slot.word < oldest_word {
                        oldest_word = slot.word;
                        probe.oldest = index;
                    }
                }
                _ => {
                    probe.free = Some(index);
                    return probe;
                }
            }
        }
        probe
    }

    /// Writes a new slot where `probe` found room, evicting the live slot closest to expiry if there is none.
    pub(crate) fn insert(&self, probe: &Probe, slot: Slot) {
        self.write(probe.free.unwrap_or(probe.oldest), slot);
    }

    fn live(&self, now: u64) -> usize {
        (0..self.table.slot_count())
            .filter(|&i| self.read(i).is_some_and(|slot| slot.word > now))
            .count()
    }
}

pub(crate) fn to_word(ms: i64) -> u64 {
    ms.max(1) as u64
}

/// The dedup window shared by a host's workers: event ids and idempotency keys seen within their ttl.
///
/// A claim is first *pending*, owned by this opening of the table, and becomes *committed* once its record is
/// durable ([`SharedWindow::commit`]). Only committed ids, and this opening's own pending ones, are duplicates:
/// another worker's pending claim may still fail (or that worker be killed before its fsync), so a claim that
/// meets one takes it over and the record is appended again. Two workers racing on one id may thus both spool it
/// (delivered twice, with the same event id), but nothing is ever answered `duplicate` on the strength of a
/// record that was not made durable. Pending claims of a dead worker are never anyone's own again (every opening
/// has a new owner number), so they are simply not duplicates, and they expire.
pub struct SharedWindow {
    table: Table,
    capacity: usize,
}

/// What [`SharedWindow::claim`] found for an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Not seen within its ttl (or only as another opening's pending claim, taken over): claimed now.
    New,
    /// A duplicate of a record already durable (committed, by any worker): nothing to wait for.
    Durable,
    /// A duplicate of this opening's own pending claim: its record is not durable yet, and an answer that
    /// repeats it must wait for it (and fail with it).
    Pending,
}

impl Claimed {
    pub fn is_new(self) -> bool {
        self == Claimed::New
    }
}

/// The ids of `ids` that [`SharedWindow::claim`] found to be duplicates (`found`, its answer for them), in order.
pub fn duplicates<'a>(ids: &'a [Id], found: &'a [Claimed]) -> impl Iterator<Item = Id> + 'a {
    ids.iter().zip(found).filter(|(_, c)| !c.is_new()).map(|(id, _)| *id)
}

/// Header kind of a dedup table.
const KIND_DEDUP: u64 = 1;
/// Header kind of a rate table.
const KIND_RATE: u64 = 2;

impl SharedWindow {
    /// Opens the window shared through the file at `path` (`None`: one in this process's memory).
    pub fn open(path: Option<&Path>, capacity: usize) -> io::Result<SharedWindow> {
        let table = match path {
            Some(path) => Table::open(path, capacity, KIND_DEDUP)?,
            None => Table::in_memory(capacity, KIND_DEDUP)?,
        };
        Ok(SharedWindow { table, capacity })
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn bytes_per_id(&self) -> f64 {
        self.table.bytes_per_id(self.capacity)
    }

    /// Claims each id at `now_ms` for `ttl_ms`. Returns, per id, whether it was claimed (new) or a duplicate,
    /// and of what; an id repeated within `ids` is new only the first time (then pending).
    pub fn claim(&self, ids: &[Id], now_ms: i64, ttl_ms: i64) -> io::Result<Vec<Claimed>> {
        let locked = self.table.lock()?;
        let now = to_word(now_ms);
        let pending = Slot::new([0; 16], to_word(now_ms.saturating_add(ttl_ms.max(1))), self.table.owner);
        Ok(ids
            .iter()
            .map(|id| {
                let probe = locked.probe(id, now);
                let mut slot = pending;
                slot.id = *id;
                match probe.found {
                    Some((_, seen)) if seen.aux == COMMITTED => Claimed::Durable,
                    Some((_, seen)) if seen.aux == self.table.owner => Claimed::Pending,
                    Some((index, _)) => {
                        locked.write(index, slot);
                        Claimed::New
                    }
                    None => {
                        locked.insert(&probe, slot);
                        Claimed::New
                    }
                }
            })
            .collect())
    }

    /// Marks claims whose records are now durable: from now on they are duplicates for every worker.
    pub fn commit(&self, ids: &[Id]) -> io::Result<()> {
        let locked = self.table.lock()?;
        for id in ids {
            match locked.probe(id, 0).found {
                Some((index, slot)) if slot.aux != COMMITTED => {
                    locked.write(index, Slot::new(slot.id, slot.word, COMMITTED))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Forgets this opening's pending claims whose records could not be made durable, so a retry is not a
    /// duplicate. Committed ids, and claims another worker took over, stay.
    pub fn release(&self, ids: &[Id]) -> io::Result<()> {
        let locked = self.table.lock()?;
        for id in ids {
            match locked.probe(id, 0).found {
                Some((index, slot)) if slot.aux == self.table.owner => locked.clear(index),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `id` would be a duplicate at `now_ms` (without claiming it).
    pub fn contains(&self, id: &Id, now_ms: i64) -> io::Result<bool> {
        let locked = self.table.lock()?;
        Ok(locked
            .probe(id, to_word(now_ms))
            .found
            .is_some_and(|(_, slot)| slot.aux == COMMITTED || slot.aux == self.table.owner))
    }

    /// Adds durable ids seen at the given times (rebuilding a fresh table from a spool), each for `ttl_ms`;
    /// ids already expired at `now_ms`, or already present, are skipped.
    pub fn load(&self, seen: impl IntoIterator<Item = (Id, i64)>, now_ms: i64, ttl_ms: i64) -> io::Result<()> {
        let locked = self.table.lock()?;
        let now = to_word(now_ms);
        for (id, at) in seen {
            let expires = to_word(at.saturating_add(ttl_ms));
            if expires <= now {
                continue;
            }
            let probe = locked.probe(&id, now);
            match probe.found {
                Some((index, slot)) if slot.aux != COMMITTED => {
                    locked.write(index, Slot::new(slot.id, slot.word, COMMITTED))
                }
                Some(_) => {}
                None => locked.insert(&probe, Slot::new(id, expires, COMMITTED)),
            }
        }
        Ok(())
    }

    /// Ids live at `now_ms` (reads the whole table).
    pub fn len(&self, now_ms: i64) -> io::Result<usize> {
        Ok(self.table.lock()?.live(to_word(now_ms)))
    }
}

/// Per-device token buckets shared by a host's workers, so a device's rate holds whichever worker it reaches.
///
/// A bucket is one number, the time at which it is full again (the generic cell rate algorithm): at `now` it
/// holds `burst - (full_at - now) * rate` tokens. A slot whose time has passed is a full bucket, free for reuse;
/// an evicted or torn one is a full bucket too (the device gets its burst again, never less than its due).
pub struct RateTable {
    table: Table,
    /// Microseconds per token.
    interval_us: f64,
    burst: f64,
}

impl RateTable {
    /// `rate` tokens per second up to `burst`, for up to `capacity` devices at once.
    pub fn open(path: Option<&Path>, capacity: usize, rate: f64, burst: f64) -> io::Result<RateTable> {
        let table = match path {
            Some(path) => Table::open(path, capacity, KIND_RATE)?,
            None => Table::in_memory(capacity, KIND_RATE)?,
        };
        Ok(RateTable {
            table,
            interval_us: if rate > 0.0 { 1e6 / rate } else { 0.0 },
            burst: burst.max(1.0),
        })
    }

    /// The id of a device's bucket.
    pub fn device_id(device: &str) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"tidegate:device-bucket:v1\n");
        hasher.update(device.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        id
    }

    /// Takes one token of `device`'s bucket at `now_us` (µs since the epoch); returns 0 when granted, else the
    /// seconds until one is available. A rate of 0 grants everything.
    pub fn take(&self, device: &Id, now_us: i64) -> io::Result<f64> {
        if self.interval_us <= 0.0 {
            return Ok(0.0);
        }
        let locked = self.table.lock()?;
        let now = to_word(now_us);
        let probe = locked.probe(device, now);
        // A clock stepped back must not lock a device out for longer than a full refill.
        let horizon = now.saturating_add((self.burst * self.interval_us) as u64);
        let full_at = probe.found.map_or(now, |(_, slot)| slot.word.min(horizon));
        let tokens = self.burst - (full_at - now) as f64 / self.interval_us;
        if tokens < 1.0 {
            return Ok((1.0 - tokens) * self.interval_us / 1e6);
        }
        let slot = Slot::new(*device, full_at + self.interval_us as u64, 0);
        match probe.found {
            Some((index, _)) => locked.write(index, slot),
            None => locked.insert(&probe, slot),
        }
        Ok(0.0)
    }

    /// Seconds until `device`'s bucket holds a positive balance (0: now). A bucket used with [`RateTable::charge`]
    /// is post-paid: a request is let in while the balance is positive, and charged what it cost afterwards.
    pub fn wait(&self, device: &Id, now_us: i64) -> io::Result<f64> {
        if self.interval_us <= 0.0 {
            return Ok(0.0);
        }
        let locked = self.table.lock()?;
        let now = to_word(now_us);
        let full_at = locked
            .probe(device, now)
            .found
            .map_or(now, |(_, slot)| slot.word.min(self.debt_horizon(now)));
        let tokens = self.burst - (full_at - now) as f64 / self.interval_us;
        Ok(if tokens > 0.0 {
            0.0
        } else {
            (1.0 - tokens) * self.interval_us / 1e6
        })
    }

    /// Takes `cost` tokens of `device`'s bucket, into debt if need be (at most one burst of it: a device is never
    /// locked out for longer than two bursts' refill).
    pub fn charge(&self, device: &Id, now_us: i64, cost: f64) -> io::Result<()> {
        if self.interval_us <= 0.0 || cost <= 0.0 {
            return Ok(());
        }
        let locked = self.table.lock()?;
        let now = to_word(now_us);
        let horizon = self.debt_horizon(now);
        let probe = locked.probe(device, now);
        let full_at = probe.found.map_or(now, |(_, slot)| slot.word.clamp(now, horizon));
        let slot = Slot::new(
            *device,
            full_at.saturating_add((cost * self.interval_us) as u64).min(horizon),
            0,
        );
        match probe.found {
            Some((index, _)) => locked.write(index, slot),
            None => locked.insert(&probe, slot),
        }
        Ok(())
    }

    /// The latest a post-paid bucket may be full again: one burst of debt below empty.
    fn debt_horizon(&self, now: u64) -> u64 {
        now.saturating_add((2.0 * self.burst * self.interval_us) as u64)
    }

    /// Takes `costs[i]` tokens of `device`'s bucket for each item in turn, at `now_us`, in one lock; returns
    /// which were granted. An item that does not fit is refused and the next is tried: a budget in bytes still
    /// admits a small item after a large one. A rate of 0 grants everything.
    pub fn take_each(&self, device: &Id, costs: &[f64], now_us: i64) -> io::Result<Vec<bool>> {
        if self.interval_us <= 0.0 {
            return Ok(vec![true; costs.len()]);
        }
        let locked = self.table.lock()?;
        let now = to_word(now_us);
        let probe = locked.probe(device, now);
        let horizon = now.saturating_add((self.burst * self.interval_us) as u64);
        let mut full_at = probe.found.map_or(now, |(_, slot)| slot.word.min(horizon));
        let granted: Vec<bool> = costs
            .iter()
            .map(|&cost| {
                let tokens = self.burst - (full_at.max(now) - now) as f64 / self.interval_us;
                let fits = cost <= tokens;
                if fits {
                    full_at = full_at.max(now) + (cost * self.interval_us) as u64;
                }
                fits
            })
            .collect();
        if granted.iter().any(|g| *g) {
            let slot = Slot::new(*device, full_at, 0);
            match probe.found {
                Some((index, _)) => locked.write(index, slot),
                None => locked.insert(&probe, slot),
            }
        }
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    const TTL: i64 = 1000;

    fn id(n: u64) -> Id {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&n.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        id
    }

    fn temp_path(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        crate::state::temp_table_path(&format!("shared-{name}"), "dedup.tbl")
    }

    #[test]
    fn claims_commits_releases_and_expires() {
        let window = SharedWindow::open(None, 100).unwrap();
        assert_eq!(
            window.claim(&[id(1), id(2), id(1)], 10, TTL).unwrap(),
            [Claimed::New, Claimed::New, Claimed::Pending]
        );
        assert_eq!(
            window.claim(&[id(2)], 20, TTL).unwrap(),
            [Claimed::Pending],
            "own pending claim is a duplicate, not durable yet"
        );
        window.release(&[id(2)]).unwrap();
        assert_eq!(
            window.claim(&[id(2)], 30, TTL).unwrap(),
            [Claimed::New],
            "released: a retry is new"
        );
        window.commit(&[id(1), id(2)]).unwrap();
        assert!(window.contains(&id(1), 1009).unwrap());
        assert_eq!(
            window.claim(&[id(1)], 40, TTL).unwrap(),
            [Claimed::Durable],
            "committed: a duplicate of a durable record"
        );
        window.release(&[id(1)]).unwrap();
        assert!(
            window.contains(&id(1), 1009).unwrap(),
            "a committed id is never released"
        );
        assert!(!window.contains(&id(1), 1010).unwrap(), "expired after the ttl");
        assert_eq!(window.claim(&[id(1)], 1010, TTL).unwrap(), [Claimed::New]);
        assert_eq!(window.len(1010).unwrap(), 2);
    }

    #[test]
    fn another_owners_pending_claim_is_taken_over_and_committed_ids_are_shared() {
        let (_dir, path) = temp_path("owners");
        let a = SharedWindow::open(Some(&path), 100).unwrap();
        let b = SharedWindow::open(Some(&path), 100).unwrap();
        assert_eq!(a.claim(&[id(1)], 10, TTL).unwrap(), [Claimed::New]);
        // A's record may never become durable: B appends it again rather than answer duplicate.
        assert!(!b.contains(&id(1), 11).unwrap());
        assert_eq!(b.claim(&[id(1)], 11, TTL).unwrap(), [Claimed::New]);
        a.release(&[id(1)]).unwrap();
        assert_eq!(a.claim(&[id(2)], 12, TTL).unwrap(), [Claimed::New]);
        a.commit(&[id(2)]).unwrap();
        assert_eq!(
            b.claim(&[id(2)], 13, TTL).unwrap(),
            [Claimed::Durable],
            "committed by A: a duplicate for B"
        );
        b.commit(&[id(1)]).unwrap();
        assert_eq!(
            a.claim(&[id(1)], 14, TTL).unwrap(),
            [Claimed::Durable],
            "B's release did not undo A's take-over"
        );
    }

    #[test]
    fn survives_reopening_and_a_dead_openings_pending_claims_are_not_duplicates() {
        let (_dir, path) = temp_path("reopen");
        let first = SharedWindow::open(Some(&path), 100).unwrap();
        assert!(first.table().is_fresh());
        first.claim(&[id(1), id(2)], 10, TTL).unwrap();
        first.commit(&[id(1)]).unwrap();
        drop(first); // killed before id 2's record was durable
        let again = SharedWindow::open(Some(&path), 100).unwrap();
        assert!(!again.table().is_fresh());
        assert_eq!(
            again.claim(&[id(1), id(2)], 20, TTL).unwrap(),
            [Claimed::Durable, Claimed::New]
        );
        let resized = SharedWindow::open(Some(&path), 200).unwrap();
        assert!(resized.table().is_fresh(), "another capacity starts anew");
        assert!(!resized.contains(&id(1), 20).unwrap());
    }

    #[test]
    fn bounded_by_capacity_evicting_the_oldest() {
        let window = SharedWindow::open(None, 1000).unwrap();
        let ids: Vec<Id> = (0..5000).map(id).collect();
        for (i, chunk) in ids.chunks(100).enumerate() {
            window.claim(chunk, 10 + i as i64, 1_000_000).unwrap();
        }
        let live = window.len(100).unwrap();
        assert!(live <= window.table().slot_count());
        assert!(window.contains(&ids[4999], 100).unwrap(), "the newest are kept");
        let old = ids[..100].iter().filter(|id| window.contains(id, 100).unwrap()).count();
        assert!(old < 100, "the oldest were evicted");
        assert!(window.bytes_per_id() <= 64.0, "{}", window.bytes_per_id());
    }

    #[test]
    fn a_torn_slot_is_empty_never_a_false_duplicate() {
        let (_dir, path) = temp_path("torn");
        let window = SharedWindow::open(Some(&path), 100).unwrap();
        window.claim(&[id(1)], 10, TTL).unwrap();
        window.commit(&[id(1)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let offset = bytes.windows(16).position(|w| w == id(1)).unwrap();
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        // A write that got as far as the id of another record (id 2) but not its check word.
        file.seek(SeekFrom::Start(offset as u64)).unwrap();
        file.write_all(&id(2)).unwrap();
        file.sync_all().unwrap();
        assert!(
            !window.contains(&id(2), 20).unwrap(),
            "the torn slot holds id 2's bytes, but not validly"
        );
        assert_eq!(window.claim(&[id(2)], 20, TTL).unwrap(), [Claimed::New]);
        assert_eq!(
            window.claim(&[id(1)], 20, TTL).unwrap(),
            [Claimed::New],
            "id 1 was lost with its slot"
        );
        // Garbage over the whole table: every slot counts as empty.
        let mut garbage = vec![0u8; bytes.len() - HEADER_BYTES];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for byte in &mut garbage {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        file.seek(SeekFrom::Start(HEADER_BYTES as u64)).unwrap();
        file.write_all(&garbage).unwrap();
        let fresh: Vec<Id> = (100..200).map(id).collect();
        assert!(window.claim(&fresh, 30, TTL).unwrap().iter().all(|c| c.is_new()));
        assert_eq!(window.len(30).unwrap(), 100);
        // A damaged header starts the table anew at the next open.
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(b"garbage!").unwrap();
        assert!(SharedWindow::open(Some(&path), 100).unwrap().table().is_fresh());
    }

    #[test]
    fn threads_with_their_own_mappings_exclude_each_other() {
        let (_dir, path) = temp_path("threads");
        SharedWindow::open(Some(&path), 10_000).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let window = SharedWindow::open(Some(&path), 10_000).unwrap();
                    for round in 0..50 {
                        // Each thread its own ids; all of them share probe windows with the others'.
                        let ids: Vec<Id> = (0..20).map(|i| id(t * 1_000_000 + round * 100 + i)).collect();
                        assert!(window.claim(&ids, 10, 1_000_000).unwrap().iter().all(|c| c.is_new()));
                        window.commit(&ids).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let window = SharedWindow::open(Some(&path), 10_000).unwrap();
        assert_eq!(window.len(10).unwrap(), 4 * 50 * 20, "no claim lost to a racing write");
        let all: Vec<Id> = (0..4u64)
            .flat_map(|t| (0..50).flat_map(move |r| (0..20).map(move |i| id(t * 1_000_000 + r * 100 + i))))
            .collect();
        assert!(
            window
                .claim(&all, 11, 1_000_000)
                .unwrap()
                .iter()
                .all(|&c| c == Claimed::Durable)
        );
    }

    #[test]
    fn rate_is_shared_by_every_mapping() {
        let (_dir, path) = temp_path("rate");
        let device = RateTable::device_id("sensor-1");
        let now = 1_000_000_000;
        // 10 tokens/s, burst 20, taken from 4 threads each with its own mapping at one instant: exactly 20 pass.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let table = RateTable::open(Some(&path), 100, 10.0, 20.0).unwrap();
                    (0..10).filter(|_| table.take(&device, now).unwrap() == 0.0).count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 20);
        let table = RateTable::open(Some(&path), 100, 10.0, 20.0).unwrap();
        let wait = table.take(&device, now).unwrap();
        assert!((wait - 0.1).abs() < 1e-6, "{wait}");
        assert_eq!(
            table.take(&device, now + 100_000).unwrap(),
            0.0,
            "one token after 100 ms"
        );
        assert!(table.take(&RateTable::device_id("sensor-2"), now).unwrap() == 0.0);
        assert_eq!(table.take(&device, now + 10_000_000).unwrap(), 0.0, "full again later");
        let unlimited = RateTable::open(None, 10, 0.0, 1.0).unwrap();
        assert!((0..100).all(|_| unlimited.take(&device, now).unwrap() == 0.0));
    }

    #[test]
    fn a_post_paid_budget_lets_in_while_positive_and_caps_the_debt() {
        // 1,000 bytes per second, 10,000 at once.
        let table = RateTable::open(None, 10, 1_000.0, 10_000.0).unwrap();
        let device = RateTable::device_id("bomber");
        let now = 1_000_000_000_000;
        assert_eq!(table.wait(&device, now).unwrap(), 0.0);
        table.charge(&device, now, 4_000.0).unwrap();
        assert_eq!(table.wait(&device, now).unwrap(), 0.0, "6,000 left");
        table.charge(&device, now, 1_000_000.0).unwrap();
        let wait = table.wait(&device, now).unwrap();
        // A million bytes of debt are capped at one burst below empty: 10 s to get back above zero, not 1,000 s.
        assert!((10.0..10.1).contains(&wait), "{wait}");
        assert!(table.wait(&device, now + 10_100_000).unwrap() == 0.0);
        assert_eq!(table.wait(&RateTable::device_id("neighbour"), now).unwrap(), 0.0);
    }

    #[test]
    fn a_budget_grants_the_items_that_fit() {
        // 1000 bytes/s up to 4000: 3000 and 900 fit, 500 does not (100 left), 100 does; then only what refilled.
        let table = RateTable::open(None, 10, 1000.0, 4000.0).unwrap();
        let device = RateTable::device_id("sensor-1");
        let now = 1_000_000_000;
        let granted = table.take_each(&device, &[3000.0, 900.0, 500.0, 100.0], now).unwrap();
        assert_eq!(granted, [true, true, false, true]);
        assert_eq!(table.take_each(&device, &[1.0], now).unwrap(), [false]);
        assert_eq!(
            table.take_each(&device, &[600.0, 500.0], now + 1_000_000).unwrap(),
            [true, false]
        );
        let unlimited = RateTable::open(None, 10, 0.0, 1.0).unwrap();
        assert_eq!(unlimited.take_each(&device, &[1e12], now).unwrap(), [true]);
    }
}
