//! Group commit on a thread of its own, for an event loop that must never block on an fsync.
//!
//! Requests ask for durability with [`GroupCommitter::request`] (a flag and a condition variable: no thread is
//! started, no task scheduled). The committer thread waits the commit window, so that the requests of that window
//! share one fsync, commits the spool, and signals the loop through a pipe whose read end the loop watches: the
//! loop wakes once per commit, however many requests it covers, and reads the outcome with
//! [`GroupCommitter::take`]. One byte is in the pipe at most: a commit finishing while the loop has not read the
//! previous signal only updates the outcome.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::spool::{Spool, SpoolError};

/// What the loop learns when it wakes: how far the spool is durable, and the commits that failed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    pub durable_seq: u64,
    /// Commits done (failed ones included).
    pub commits: u64,
    /// Commits whose write or fsync failed; a caller compares it with the count it saw before.
    pub failures: u64,
    /// The latest failure: its errno (if the OS gave one) and message.
    pub last_error: Option<(Option<i32>, String)>,
}

#[derive(Default)]
struct State {
    requested: bool,
    stopping: bool,
    /// A byte is in the pipe and the loop has not taken it yet.
    signalled: bool,
    outcome: CommitOutcome,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    signal: Mutex<PipeWriter>,
    /// `State::signalled`, readable without the lock ([`GroupCommitter::has_news`]).
    news: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make durability unreachable: the state stays consistent between statements.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct GroupCommitter {
    shared: Arc<Shared>,
    signal_read: Mutex<PipeReader>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommitter {
    /// Starts the committer thread for `spool`; `window` is how long it waits after the first request of a commit.
    pub fn start(spool: Arc<Spool>, window: Duration) -> io::Result<GroupCommitter> {
        let (signal_read, signal_write) = io::pipe()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                outcome: CommitOutcome {
                    durable_seq: spool.durable_seq(),
                    ..CommitOutcome::default()
                },
                ..State::default()
            }),
            wake: Condvar::new(),
            signal: Mutex::new(signal_write),
            news: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tidegate-commit".into())
            .spawn(move || run(&thread_shared, &spool, window))?;
        Ok(GroupCommitter {
            shared,
            signal_read: Mutex::new(signal_read),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for a commit of everything appended so far. Cheap; never blocks on I/O.
    pub fn request(&self) {
        let mut state = lock(&self.shared.state);
        if !state.requested {
            state.requested = true;
            self.shared.wake.notify_one();
        }
    }

    /// The descriptor the event loop watches for readability.
    pub fn signal_fd(&self) -> RawFd {
        lock(&self.signal_read).as_raw_fd()
    }

    /// Takes the signal (if any) and returns the outcome so far. Call it when `signal_fd` is readable.
    pub fn take(&self) -> io::Result<CommitOutcome> {
        let mut state = lock(&self.shared.state);
        if state.signalled {
            // The byte was written before `signalled` was set, under this lock: this read cannot block.
            lock(&self.signal_read).read_exact(&mut [0u8; 1])?;
            state.signalled = false;
            self.shared.news.store(false, Ordering::Release);
        }
        Ok(state.outcome.clone())
    }

    /// Whether a commit finished that [`GroupCommitter::take`] has not taken: what `signal_fd` says, without a
    /// system call (an event loop may look between its callbacks, rather than at its next wait for I/O).
    pub fn has_news(&self) -> bool {
        self.shared.news.load(Ordering::Acquire)
    }

    /// Stops the thread after the commit in progress, if any. What is appended and not committed stays for the
    /// caller's last `Spool::commit`.
    pub fn stop(&self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            // The thread never panics by design; if it did, there is nothing left to stop.
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, spool: &Spool, window: Duration) {
    loop {
        {
            let mut state = lock(&shared.state);
            while !state.requested && !state.stopping {
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopping {
                return;
            }
        }
        if !window.is_zero() {
            std::thread::sleep(window);
        }
        // Requests made from here on ask for the next commit: this one may not cover their appends.
        lock(&shared.state).requested = false;
        let result = spool.commit();
        let mut state = lock(&shared.state);
        state.outcome.commits += 1;
        match result {
            Ok(durable) => state.outcome.durable_seq = durable,
            Err(error) => {
                state.outcome.failures += 1;
                let errno = match &error {
                    SpoolError::Io(io) => io.raw_os_error(),
                    SpoolError::Full { .. } => None,
                };
                state.outcome.last_error = Some((errno, error.to_string()));
            }
        }
        if !state.signalled {
            // The pipe holds one byte at most, so this never blocks; it fails only once the read end is gone.
            if lock(&shared.signal).write_all(&[1]).is_ok() {
                state.signalled = true;
                shared.news.store(true, Ordering::Release);
            }
        }
    }
}
