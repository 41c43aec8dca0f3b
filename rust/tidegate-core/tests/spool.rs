//! The spool: round trips, torn-tail recovery, group commit, quota, acknowledgement and cleanup.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tidegate_core::canonical::records::encode_header;
use tidegate_core::spool::{Spool, SpoolError, SpoolOptions};
use tidegate_core::{RecordRef, Records};

/// A spool's directory, removed when the test drops it (even if the test panics).
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tidegate-spool-{name}-"))
        .tempdir()
        .unwrap()
}

fn records_of(n: usize, tag: &str) -> Records {
    records_padded(n, tag, 250)
}

fn records_padded(n: usize, tag: &str, pad: usize) -> Records {
    let mut records = Records::new();
    let mut headers = Vec::new();
    encode_header(&mut headers, "event_id", b"x");
    for i in 0..n {
        let value = format!("{{\"tag\":\"{tag}\",\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(pad));
        let key = format!("dev-{}", i % 7);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let topic = if i % 2 == 0 { "telemetry-raw" } else { "events-raw" };
        records.push(&RecordRef::from_parts(
            topic,
            Some(key.as_bytes()),
            value.as_bytes(),
            &headers,
            id,
            1000 + i as i64,
        ));
    }
    records
}

fn read_all(spool: &Spool) -> Records {
    let (records, _) = spool.read(spool.cursor_at(0), u64::MAX, usize::MAX, u64::MAX).unwrap();
    records
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = temp_dir("roundtrip");
    let options = SpoolOptions {
        segment_bytes: 4096,
        ..SpoolOptions::default()
    };
    let written = records_of(100, "a");
    {
        let spool = Spool::open(&dir, options.clone()).unwrap();
        for chunk in 0..10 {
            let mut part = Records::new();
            for record in written.iter().skip(chunk * 10).take(10) {
                part.push(&record);
            }
            spool.append(&part).unwrap();
            spool.commit().unwrap();
        }
        assert_eq!(spool.commit().unwrap(), 100);
        assert!(spool.stats().segments > 5, "rolled segments");
    }
    let spool = Spool::open(&dir, options).unwrap();
    assert_eq!(spool.stats().recovery.records, 100);
    let read = read_all(&spool);
    assert_eq!(read.len(), 100);
    for (a, b) in read.iter().zip(written.iter()) {
        assert_eq!(a, b);
    }
    // Reading in small steps with cursors gives the same sequence.
    let mut cursor = spool.cursor_at(0);
    let mut seen = 0;
    loop {
        let (part, next) = spool.read(cursor, 7, usize::MAX, u64::MAX).unwrap();
        if part.is_empty() {
            break;
        }
        for record in part.iter() {
            assert_eq!(record, written.get(seen).unwrap());
            seen += 1;
        }
        cursor = next;
    }
    assert_eq!(seen, 100);
    let (from_middle, _) = spool.read(spool.cursor_at(42), 3, usize::MAX, u64::MAX).unwrap();
    assert_eq!(from_middle.get(0).unwrap(), written.get(42).unwrap());
}

#[test]
fn torn_tail_is_truncated_at_every_offset_of_the_last_record() {
    let dir = temp_dir("torn");
    let written = records_of(5, "t");
    let segment = {
        let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
        spool.append(&written).unwrap();
        spool.commit().unwrap();
        fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap()
    };
    let full = fs::read(&segment).unwrap();
    let mut four = Records::new();
    for record in written.iter().take(4) {
        four.push(&record);
    }
    let four_len = {
        let mut frames = Vec::new();
        for record in four.iter() {
            tidegate_core::spool::encode_frame(&mut frames, &record);
        }
        tidegate_core::spool::MAGIC.len() + frames.len()
    };
    for cut in four_len..full.len() {
        fs::write(&segment, &full[..cut]).unwrap();
        let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
        let stats = spool.stats();
        assert_eq!(stats.recovery.records, 4, "cut at {cut}");
        assert_eq!(stats.recovery.truncated_bytes, (cut - four_len) as u64);
        assert_eq!(read_all(&spool).len(), 4);
        // New appends after recovery are readable after the kept records.
        spool.append(&records_of(1, "after")).unwrap();
        spool.commit().unwrap();
        assert_eq!(read_all(&spool).len(), 5);
        drop(spool);
        fs::write(&segment, &full[..cut]).unwrap();
    }
    // A flipped bit in the last record is corruption: dropped, the rest kept.
    let mut flipped = full.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    fs::write(&segment, &flipped).unwrap();
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(spool.stats().recovery.records, 4);
}

#[test]
fn group_commit_shares_fsyncs_and_releases_waiters_after_sync() {
    let dir = temp_dir("group");
    let spool = Arc::new(Spool::open(&dir, SpoolOptions::default()).unwrap());
    let writers = 64;
    let handles: Vec<_> = (0..writers)
        .map(|i| {
            let spool = Arc::clone(&spool);
            std::thread::spawn(move || {
                let end = spool
                    .append_durable(&records_of(1, &format!("w{i}")), Duration::from_millis(3))
                    .unwrap();
                assert!(spool.durable_seq() >= end, "released only once its records are synced");
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.durable_seq, writers);
    assert!(
        stats.fsyncs < writers / 4,
        "{} fsyncs for {writers} appends",
        stats.fsyncs
    );
}

#[test]
fn every_successful_commit_is_timed_and_a_failed_one_is_not() {
    let dir = temp_dir("commit-times");
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(spool.stats().commit_times.counts.iter().sum::<u64>(), 0);
    for i in 0..3 {
        spool.append(&records_of(10, &format!("c{i}"))).unwrap();
        spool.commit().unwrap();
    }
    // Nothing appended: no write, no fsync, nothing timed.
    spool.commit().unwrap();
    spool.append(&records_of(1, "fails")).unwrap();
    spool.inject_write_failures(1);
    assert!(spool.commit().is_err());
    let stats = spool.stats();
    assert_eq!((stats.fsyncs, stats.failed_commits), (3, 1));
    assert_eq!(stats.commit_times.counts.iter().sum::<u64>(), 3);
    assert!(stats.commit_times.sum_nanos > 0);
}

#[test]
fn quota_refuses_instead_of_losing_and_acked_segments_free_space() {
    let dir = temp_dir("quota");
    let options = SpoolOptions {
        segment_bytes: 8 * 1024,
        quota_bytes: 32 * 1024,
        retention: Duration::from_secs(3600),
    };
    let spool = Spool::open(&dir, options).unwrap();
    let mut appended = 0u64;
    loop {
        match spool.append(&records_of(10, "q")) {
            Ok(end) => {
                // Commits come every few milliseconds in service, so segments roll as the spool fills.
                spool.commit().unwrap();
                appended = end;
            }
            Err(SpoolError::Full { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    spool.commit().unwrap();
    assert_eq!(
        read_all(&spool).len() as u64,
        appended,
        "nothing written was lost or corrupted"
    );
    spool.ack(appended).unwrap();
    // The service runs cleanup off the request path (appends never remove files).
    assert!(spool.cleanup().unwrap() > 0);
    assert!(
        spool.append(&records_of(10, "q")).is_ok(),
        "acked segments are reclaimed under pressure"
    );
    assert!(spool.stats().segments < 5);
    drop(spool);
    let reopened = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(reopened.acked_seq(), appended, "the checkpoint survives a restart");
}

#[test]
fn appends_after_a_failed_partial_write_stay_readable() {
    let dir = temp_dir("partial");
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    spool.append(&records_of(3, "ok")).unwrap();
    spool.commit().unwrap();
    drop(spool);
    // Simulate garbage from a crash mid-write.
    let segment = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    std::io::Write::write_all(&mut file, &[200, 0, 0, 0, 1, 2]).unwrap();
    drop(file);
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    spool.append(&records_of(2, "more")).unwrap();
    spool.commit().unwrap();
    drop(spool);
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(read_all(&spool).len(), 5);
}

#[test]
fn appends_are_written_by_commit_and_lost_only_if_never_committed() {
    let dir = temp_dir("pending");
    let spool = Spool::open(&dir, SpoolOptions::default()).unwrap();
    spool.append(&records_of(4, "committed")).unwrap();
    spool.commit().unwrap();
    spool.append(&records_of(3, "never committed")).unwrap();
    assert_eq!(spool.stats().next_seq, 7);
    drop(spool);
    let reopened = Spool::open(&dir, SpoolOptions::default()).unwrap();
    assert_eq!(
        read_all(&reopened).len(),
        4,
        "only what a commit covered was ever acknowledged"
    );
    assert_eq!(reopened.stats().next_seq, 4);
}

#[test]
fn read_only_open_never_modifies_and_sees_new_records() {
    let dir = temp_dir("readonly");
    let options = SpoolOptions {
        segment_bytes: 2048,
        ..SpoolOptions::default()
    };
    let writer = Spool::open(&dir, options).unwrap();
    writer.append(&records_of(20, "a")).unwrap();
    writer.commit().unwrap();
    let segment = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    // A torn frame being written by the live writer must not be cut by a reader.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    std::io::Write::write_all(&mut file, &[50, 0, 0, 0]).unwrap();
    let before = fs::metadata(&segment).unwrap().len();
    let reader = Spool::open_read_only(&dir).unwrap();
    assert_eq!(fs::metadata(&segment).unwrap().len(), before);
    assert_eq!(read_all(&reader).len(), 20);
    assert!(reader.append(&records_of(1, "x")).is_err());
}

/// Reads the whole spool in ranges of at most `max_bytes`, as the forwarder does; returns each record as
/// `tag:i` (what `records_of` put in its value), in read order.
fn read_in_ranges(spool: &Spool, max_bytes: usize) -> Vec<String> {
    let mut cursor = spool.cursor_at(0);
    let mut tags = Vec::new();
    loop {
        let (records, next) = spool.read(cursor, 10_000, max_bytes, spool.durable_seq()).unwrap();
        if records.is_empty() {
            break;
        }
        assert!(
            next.seq - cursor.seq >= records.len() as u64,
            "the cursor moves past what was read"
        );
        tags.extend(records.iter().map(|r| {
            let value = std::str::from_utf8(r.value).unwrap();
            let tag = value.split('"').nth(3).unwrap();
            let i = value.split("\"i\":").nth(1).unwrap().split(',').next().unwrap();
            format!("{tag}:{i}")
        }));
        cursor = next;
    }
    tags
}

fn tagged(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}:{i}")).collect()
}

#[test]
fn a_byte_budget_that_ends_mid_segment_never_skips_the_rest_of_it() {
    let dir = temp_dir("budget");
    let options = SpoolOptions {
        segment_bytes: 16 * 1024,
        ..SpoolOptions::default()
    };
    let spool = Spool::open(&dir, options).unwrap();
    let mut expected = Vec::new();
    for n in 0..30 {
        spool.append(&records_of(10, &format!("b{n}"))).unwrap();
        spool.commit().unwrap();
        expected.extend(tagged(&format!("b{n}"), 10));
    }
    assert!(spool.stats().segments >= 5, "the backlog spans several segments");
    for max_bytes in [1, 700, 5_000, 20_000, usize::MAX] {
        let records = read_in_ranges(&spool, max_bytes);
        assert_eq!(records, expected, "every record once, in order (max_bytes {max_bytes})");
    }
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_the_oldest_record_on_disk_and_says_so() {
    let dir = temp_dir("checkpoint");
    let options = SpoolOptions {
        segment_bytes: 4 * 1024,
        retention: Duration::ZERO,
        ..SpoolOptions::default()
    };
    let spool = Spool::open(&dir, options.clone()).unwrap();
    for _ in 0..10 {
        spool.append(&records_of(10, "c")).unwrap();
        spool.commit().unwrap();
    }
    spool.ack(60).unwrap();
    assert!(spool.cleanup().unwrap() > 0);
    let oldest_on_disk = spool.cursor_at(0).seq;
    assert!(oldest_on_disk > 0 && oldest_on_disk <= 60);
    drop(spool);
    fs::write(dir.path().join("acked"), b"6\x00garbage").unwrap();
    let reopened = Spool::open(&dir, options.clone()).unwrap();
    assert_eq!(
        reopened.acked_seq(),
        oldest_on_disk,
        "never a reset to 0: redeliver only what is on disk"
    );
    assert!(
        reopened.stats().recovery.checkpoint_error.is_some(),
        "the corruption is reported"
    );
    drop(reopened);
}

#[test]
fn a_failed_write_is_never_acknowledged_and_the_spool_recovers_without_reusing_sequences() {
    let dir = temp_dir("failed-write");
    let options = SpoolOptions {
        segment_bytes: 64 * 1024,
        ..SpoolOptions::default()
    };
    let spool = Spool::open(&dir, options.clone()).unwrap();
    spool.append(&records_of(5, "before")).unwrap();
    assert_eq!(spool.commit().unwrap(), 5);
    // The next commit's write stops halfway with ENOSPC (what a full disk does), then space is back.
    spool.inject_write_failures(1);
    let failed_end = spool.append(&records_of(5, "failed")).unwrap();
    assert!(spool.commit().is_err());
    assert_eq!(spool.durable_seq(), 5, "the failed records are not durable");
    assert!(spool.is_failing(), "the spool says it cannot write");
    let end = spool.append(&records_of(5, "after")).unwrap();
    assert_eq!(end, failed_end + 5, "sequence numbers are never reused");
    assert_eq!(
        spool.commit().unwrap(),
        end,
        "the next commit writes to a fresh segment"
    );
    assert!(!spool.is_failing(), "recovered by itself");
    let expected: Vec<String> = tagged("before", 5).into_iter().chain(tagged("after", 5)).collect();
    // Frames the failed write completed may be read (never acknowledged: the client's retry carries the same
    // event_id); the torn one and those after it are stepped over and counted.
    let records = read_in_ranges(&spool, 1_000);
    let (unacknowledged, acknowledged): (Vec<String>, Vec<String>) =
        records.into_iter().partition(|r| r.starts_with("failed:"));
    assert_eq!(acknowledged, expected, "everything acknowledged is read, in order");
    assert_eq!(unacknowledged, tagged("failed", unacknowledged.len()));
    assert_eq!(
        unacknowledged.len() as u64 + spool.stats().unreadable_records,
        5,
        "the rest is counted as unreadable"
    );
    drop(spool);
    let reopened = Spool::open(&dir, options).unwrap();
    let after_restart: Vec<String> = read_in_ranges(&reopened, usize::MAX)
        .into_iter()
        .filter(|r| !r.starts_with("failed:"))
        .collect();
    assert_eq!(after_restart, expected, "and after a restart");
    assert_eq!(reopened.stats().next_seq, end);
}

#[test]
fn a_delivery_process_reads_large_segments_whole_through_mapped_windows() {
    // Segments of 64 MiB holding ~40 MiB: read in windows of at most 16 MiB, mapped rather than copied; every
    // durable record once and in order, whatever the byte budget, and none of those not yet durable.
    let dir = temp_dir("mapped");
    let writer = Spool::open(&dir, SpoolOptions::default()).unwrap();
    let delivery = Spool::open_for_delivery(&dir).unwrap();
    let mut expected = Vec::new();
    for n in 0..10 {
        writer.append(&records_padded(1000, &format!("m{n}"), 4000)).unwrap();
        writer.commit().unwrap();
        expected.extend(tagged(&format!("m{n}"), 1000));
    }
    writer.append(&records_padded(1000, "not-yet-durable", 4000)).unwrap();
    assert_eq!(writer.stats().segments, 1, "one large segment");
    for max_bytes in [1, 100_000, 3 << 20, 17 << 20, usize::MAX] {
        let records = read_in_ranges(&delivery, max_bytes);
        assert_eq!(records.len(), expected.len(), "max_bytes {max_bytes}");
        assert!(
            records == expected,
            "every durable record once, in order (max_bytes {max_bytes})"
        );
    }
    // From a sequence number alone (a restarted reader): its place in the segment is found by scanning up to it.
    let (records, next) = delivery
        .read(delivery.cursor_at(4321), 2, usize::MAX, delivery.durable_seq())
        .unwrap();
    let values: Vec<&[u8]> = records.iter().map(|r| r.value).collect();
    assert!(values[0].starts_with(br#"{"tag":"m4","i":321,"#) && values[1].starts_with(br#"{"tag":"m4","i":322,"#));
    assert_eq!(next.seq, 4323);
}

#[test]
fn a_delivery_process_follows_the_writer_up_to_what_is_durable() {
    let dir = temp_dir("delivery");
    let options = SpoolOptions {
        segment_bytes: 8 * 1024,
        retention: Duration::ZERO,
        ..SpoolOptions::default()
    };
    let writer = Spool::open(&dir, options).unwrap();
    let delivery = Spool::open_for_delivery(&dir).unwrap();
    let mut expected = Vec::new();
    for n in 0..6 {
        writer.append(&records_of(10, &format!("d{n}"))).unwrap();
        writer.commit().unwrap();
        expected.extend(tagged(&format!("d{n}"), 10));
    }
    writer.append(&records_of(10, "not-yet-durable")).unwrap();
    assert!(
        writer.stats().segments >= 3,
        "the writer rolled segments after the reader opened"
    );
    assert_eq!(delivery.durable_seq(), 60);
    assert_eq!(
        read_in_ranges(&delivery, 3_000),
        expected,
        "every durable record, nothing beyond"
    );
    // The broker acknowledged 40: the writer sees it at once, and deletes segments once the checkpoint says so.
    delivery.publish_delivered(40).unwrap();
    assert_eq!(writer.delivered_seq(), 40);
    delivery.ack(40).unwrap();
    assert_eq!(writer.refresh_acked().unwrap(), 40);
    assert!(writer.cleanup().unwrap() > 0);
    writer.commit().unwrap();
    let (rest, _) = delivery
        .read(delivery.cursor_at(40), u64::MAX, usize::MAX, delivery.durable_seq())
        .unwrap();
    assert_eq!(
        rest.len(),
        30,
        "after the writer's cleanup the reader goes on from its checkpoint"
    );
    assert!(
        delivery.append(&records_of(1, "x")).is_err(),
        "the delivery process never appends"
    );
}

/// Waits (with a generous guard) until the committer's signal descriptor is readable, as the event loop would.
fn wait_for_signal(committer: &tidegate_core::spool::group_commit::GroupCommitter) {
    let mut poll = libc_pollfd(committer.signal_fd());
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
    assert_eq!(ready, 1, "the committer never signalled");
}

fn libc_pollfd(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

#[test]
fn the_group_committer_makes_appends_durable_and_signals_once_per_commit() {
    use tidegate_core::spool::group_commit::GroupCommitter;
    let dir = temp_dir("group-commit");
    let spool = Arc::new(Spool::open(&dir, SpoolOptions::default()).unwrap());
    let committer = GroupCommitter::start(Arc::clone(&spool), Duration::from_millis(1)).unwrap();
    let end = spool.append(&records_of(10, "a")).unwrap();
    spool.append(&records_of(5, "b")).unwrap();
    committer.request();
    committer.request(); // a second request before the commit asks for nothing more
    assert!(!committer.has_news() || spool.durable_seq() > 0);
    wait_for_signal(&committer);
    assert!(committer.has_news(), "what the descriptor says, without a system call");
    let outcome = committer.take().unwrap();
    assert!(!committer.has_news(), "taken");
    assert!(outcome.durable_seq >= end);
    assert_eq!(outcome.failures, 0);
    assert_eq!(spool.durable_seq(), 15);
    // The signal was taken: nothing more to read until the next commit.
    let mut poll = libc_pollfd(committer.signal_fd());
    // SAFETY: as above; a zero timeout.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 0);
    committer.stop();
    assert_eq!(read_all(&spool).len(), 15);
}

#[test]
fn the_group_committer_reports_a_failed_commit_and_the_next_one_succeeds() {
    use tidegate_core::spool::group_commit::GroupCommitter;
    let dir = temp_dir("group-commit-failure");
    let spool = Arc::new(Spool::open(&dir, SpoolOptions::default()).unwrap());
    let committer = GroupCommitter::start(Arc::clone(&spool), Duration::ZERO).unwrap();
    spool.inject_write_failures(1);
    spool.append(&records_of(3, "lost")).unwrap();
    committer.request();
    wait_for_signal(&committer);
    let failed = committer.take().unwrap();
    assert_eq!(failed.failures, 1);
    assert!(failed.last_error.is_some());
    assert_eq!(failed.durable_seq, 0, "nothing of the failed commit is durable");
    let end = spool.append(&records_of(2, "kept")).unwrap();
    committer.request();
    wait_for_signal(&committer);
    let next = committer.take().unwrap();
    assert_eq!(next.failures, 1);
    assert_eq!(next.durable_seq, end);
}

#[test]
fn a_spool_no_one_writes_is_cleaned_from_its_files_as_its_writer_would() {
    // Two spools written alike; one cleaned by its writer, the other closed and cleaned from its files alone.
    let options = SpoolOptions {
        segment_bytes: 4096,
        retention: Duration::ZERO,
        ..SpoolOptions::default()
    };
    let (open_dir, left_dir) = (temp_dir("cleanup-open"), temp_dir("cleanup-left"));
    let (open, left) = (
        Spool::open(&open_dir, options.clone()).unwrap(),
        Spool::open(&left_dir, options.clone()).unwrap(),
    );
    let mut ends = Vec::new();
    for i in 0..20 {
        let records = records_of(10, &format!("c{i}"));
        open.append(&records).unwrap();
        open.commit().unwrap();
        left.append(&records).unwrap();
        ends.push(left.commit().unwrap());
    }
    let horizon = ends[12];
    drop(left);
    assert_eq!(
        tidegate_core::spool::read_checkpoint(left_dir.path()).unwrap(),
        0,
        "no checkpoint: 0"
    );
    let by_writer = open.cleanup_below(horizon).unwrap();
    let by_files = tidegate_core::spool::cleanup_unwritten(left_dir.path(), horizon, &options).unwrap();
    assert!(by_writer > 0);
    assert_eq!(by_files, by_writer, "the same rule, the same segments");
    let remaining = |dir: &Path| {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
            .count()
    };
    assert_eq!(remaining(left_dir.path()), remaining(open_dir.path()));
    let reopened = Spool::open(&left_dir, options).unwrap();
    assert!(
        read_all(&reopened).len() as u64 >= 200 - horizon,
        "what is past the horizon stays readable"
    );
}
