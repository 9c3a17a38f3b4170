//! Durability tracking: write sequence numbers, the durable watermark, waiting for it (blocking
//! or async) and the group-commit flusher thread.
//!
//! Every write a store commits gets the next write sequence number `seq` (assigned under the
//! store's commit lock, so sequence order is commit order). A flush that starts after write
//! `seq` was committed makes every write `≤ seq` durable; the tracker then publishes the new
//! watermark and wakes every waiter it covers. One flush therefore releases all the requests
//! whose writes it covers (group commit).

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::error::{FlushFailure, StoreError};
use crate::feed::FeedCursor;

/// When an update's write must reach stable storage before the update returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every update flushes (fsync) on its own before returning. Simple and slow: one flush per
    /// request; a baseline for measurements.
    PerRequest,
    /// Updates wait for a shared flush run by a dedicated flusher thread; one flush releases
    /// every update written before it started. The flusher starts a flush as soon as someone
    /// waits and no flush is running; with a non-zero `max_delay` it first lingers up to that
    /// long so more writes join the batch (this bounds the added latency).
    GroupCommit {
        /// The longest the flusher lingers before flushing (zero: flush at once).
        max_delay: Duration,
    },
    /// Never flush explicitly; updates return as soon as they are written. Only for tests and
    /// benchmarks: a crash loses recent updates.
    None,
}

impl Default for Durability {
    /// Group commit without lingering: with concurrent requests, writes that arrive while one
    /// flush runs are covered by the next, so batches form without adding latency.
    fn default() -> Self {
        Self::GroupCommit {
            max_delay: Duration::ZERO,
        }
    }
}

/// The published durability state (what waiters look at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Watermark {
    /// Every write with a sequence number up to this one is durable.
    pub(crate) durable_seq: u64,
    /// Every feed entry with a cursor up to this one is durable.
    pub(crate) durable_cursor: FeedCursor,
    /// Writes up to this sequence number were covered by a failed flush and are not confirmed.
    pub(crate) failed_seq: u64,
    /// The store shut down: waits beyond `durable_seq` will never succeed.
    pub(crate) closed: bool,
}

#[derive(Debug, Default)]
struct TrackerState {
    mark: Watermark,
    /// The highest sequence number somebody is waiting for.
    requested: u64,
    last_failure: Option<FlushFailure>,
    shutdown: bool,
}

/// Shared between a store, its flusher thread and every outstanding [`DurabilityTicket`].
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
    /// Waiters blocked in [`DurabilityTicket::wait`].
    waiters: Condvar,
    /// The flusher thread waiting for work.
    flusher: Condvar,
    /// Async waiters and feed subscribers.
    published: watch::Sender<Watermark>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the plain counters half-updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tracker {
    /// A tracker whose watermark starts at `cursor` (the durable feed after reopening).
    pub(crate) fn new(cursor: FeedCursor) -> Arc<Self> {
        let mark = Watermark {
            durable_cursor: cursor,
            ..Watermark::default()
        };
        Arc::new(Self {
            state: Mutex::new(TrackerState {
                mark,
                ..TrackerState::default()
            }),
            waiters: Condvar::new(),
            flusher: Condvar::new(),
            published: watch::Sender::new(mark),
        })
    }

    pub(crate) fn current(&self) -> Watermark {
        lock(&self.state).mark
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Watermark> {
        self.published.subscribe()
    }

    /// Records that every write up to `seq` and every feed entry up to `cursor` is durable.
    pub(crate) fn advance(&self, seq: u64, cursor: FeedCursor) {
        let mut state = lock(&self.state);
        let mark = &mut state.mark;
        let changed = seq > mark.durable_seq || cursor > mark.durable_cursor;
        mark.durable_seq = mark.durable_seq.max(seq);
        mark.durable_cursor = mark.durable_cursor.max(cursor);
        let mark = *mark;
        drop(state);
        if changed {
            self.published.send_replace(mark);
            self.waiters.notify_all();
        }
    }

    /// Records that a flush meant to cover writes up to `seq` failed.
    pub(crate) fn fail(&self, seq: u64, failure: FlushFailure) {
        let mut state = lock(&self.state);
        state.mark.failed_seq = state.mark.failed_seq.max(seq);
        state.last_failure = Some(failure);
        let mark = state.mark;
        drop(state);
        self.published.send_replace(mark);
        self.waiters.notify_all();
    }

    /// Marks the tracker closed: nothing more will become durable.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.mark.closed = true;
        state.shutdown = true;
        let mark = state.mark;
        drop(state);
        self.published.send_replace(mark);
        self.waiters.notify_all();
        self.flusher.notify_all();
    }

    fn outcome(&self, state: &TrackerState, seq: u64) -> Option<Result<(), StoreError>> {
        let mark = state.mark;
        if mark.durable_seq >= seq {
            Some(Ok(()))
        } else if mark.failed_seq >= seq {
            let failure = state.last_failure.as_ref().map_or_else(
                || StoreError::Closed { seq },
                |failure| StoreError::flush_failed(seq, failure),
            );
            Some(Err(failure))
        } else if mark.closed {
            Some(Err(StoreError::Closed { seq }))
        } else {
            None
        }
    }

    /// Asks the flusher for a flush covering `seq` (no-op if one is already requested).
    fn request(&self, state: &mut TrackerState, seq: u64) {
        if seq > state.requested {
            state.requested = seq;
            self.flusher.notify_one();
        }
    }

    fn wait_blocking(&self, seq: u64) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        self.request(&mut state, seq);
        loop {
            if let Some(outcome) = self.outcome(&state, seq) {
                return outcome;
            }
            state = self
                .waiters
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    async fn wait_async(&self, seq: u64) -> Result<(), StoreError> {
        let mut receiver = self.published.subscribe();
        {
            let mut state = lock(&self.state);
            if let Some(outcome) = self.outcome(&state, seq) {
                return outcome;
            }
            self.request(&mut state, seq);
        }
        // The sender lives as long as `self`, which this future borrows: `wait_for` only fails
        // if the sender is dropped, and then the store is gone.
        let _ = receiver
            .wait_for(|mark| mark.durable_seq >= seq || mark.failed_seq >= seq || mark.closed)
            .await;
        let state = lock(&self.state);
        self.outcome(&state, seq)
            .unwrap_or(Err(StoreError::Closed { seq }))
    }
}

/// What the flusher needs from a store: a way to snapshot how far writes have gone, a flush,
/// and a hook to run once a flush is durable.
pub(crate) trait FlushTarget: Send + Sync + 'static {
    /// The highest committed write sequence number and feed cursor, read under the commit lock.
    fn committed(&self) -> (u64, FeedCursor);
    /// Makes every committed write durable.
    fn flush(&self) -> Result<(), FlushFailure>;
    /// Runs after writes up to `seq` are durable (feed clean-up).
    fn after_durable(&self, seq: u64);
}

/// The group-commit flusher thread of a store.
#[derive(Debug)]
pub(crate) struct Flusher {
    tracker: Arc<Tracker>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn spawn(
        tracker: Arc<Tracker>,
        target: Arc<dyn FlushTarget>,
        max_delay: Duration,
    ) -> std::io::Result<Self> {
        let thread_tracker = Arc::clone(&tracker);
        let thread = std::thread::Builder::new()
            .name("sluice-store-flusher".into())
            .spawn(move || flusher_loop(&thread_tracker, target.as_ref(), max_delay))?;
        Ok(Self {
            tracker,
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.tracker.state);
            state.shutdown = true;
        }
        self.tracker.flusher.notify_all();
        if let Some(thread) = self.thread.take() {
            // The loop never panics on its own; if it did, the waiters are released below.
            let _ = thread.join();
        }
        self.tracker.close();
    }
}

fn flusher_loop(tracker: &Tracker, target: &dyn FlushTarget, max_delay: Duration) {
    loop {
        let mut state = lock(&tracker.state);
        while state.requested <= state.mark.durable_seq.max(state.mark.failed_seq)
            && !state.shutdown
        {
            state = tracker
                .flusher
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let shutdown = state.shutdown;
        if !shutdown && !max_delay.is_zero() {
            // Linger so writes in flight join this flush; bounded by `max_delay`.
            let deadline = Instant::now() + max_delay;
            loop {
                let now = Instant::now();
                if now >= deadline || state.shutdown {
                    break;
                }
                state = tracker
                    .flusher
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        drop(state);

        // A final flush on shutdown makes everything written so far durable.
        let (seq, cursor) = target.committed();
        let already = tracker.current().durable_seq;
        if seq > already {
            match target.flush() {
                Ok(()) => {
                    // Retire replaced feed entries before waking anyone.
                    target.after_durable(seq);
                    tracker.advance(seq, cursor);
                }
                Err(failure) => tracker.fail(seq, failure),
            }
        } else {
            tracker.advance(seq, cursor);
        }
        if shutdown {
            return;
        }
    }
}

/// A claim on the durability of one update, returned inside [`Pending`](super::Pending).
///
/// Waiting is cheap when the write is already durable (a watermark comparison).
#[derive(Debug)]
#[must_use = "an update is not durable until its ticket is waited on"]
pub struct DurabilityTicket {
    wait: Option<(u64, Arc<Tracker>)>,
}

impl DurabilityTicket {
    /// A ticket for a write that is already durable (or needs no durability).
    pub const fn ready() -> Self {
        Self { wait: None }
    }

    pub(crate) const fn group(seq: u64, tracker: Arc<Tracker>) -> Self {
        Self {
            wait: Some((seq, tracker)),
        }
    }

    /// The write sequence number this ticket waits for, if it waits at all.
    pub fn seq(&self) -> Option<u64> {
        self.wait.as_ref().map(|(seq, _)| *seq)
    }

    /// Blocks the calling thread until the write is durable.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.wait {
            None => Ok(()),
            Some((seq, tracker)) => tracker.wait_blocking(seq),
        }
    }

    /// Waits without blocking the async runtime until the write is durable.
    pub async fn wait_async(self) -> Result<(), StoreError> {
        match self.wait {
            None => Ok(()),
            Some((seq, tracker)) => tracker.wait_async(seq).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::store::BackendErrorKind;

    /// A flush target whose writes and flush outcomes the test controls.
    #[derive(Default)]
    struct Target {
        committed: AtomicU64,
        flushes: AtomicU64,
        fail_next: AtomicBool,
    }

    impl FlushTarget for Target {
        fn committed(&self) -> (u64, FeedCursor) {
            let seq = self.committed.load(Ordering::SeqCst);
            (seq, FeedCursor::new(seq))
        }
        fn flush(&self) -> Result<(), FlushFailure> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.fail_next.swap(false, Ordering::SeqCst) {
                return Err(FlushFailure {
                    kind: BackendErrorKind::Io(std::io::ErrorKind::Other),
                    message: "disk on fire".into(),
                });
            }
            Ok(())
        }
        fn after_durable(&self, _seq: u64) {}
    }

    fn setup() -> (Arc<Tracker>, Arc<Target>, Flusher) {
        let tracker = Tracker::new(FeedCursor::ZERO);
        let target = Arc::new(Target::default());
        let dyn_target: Arc<dyn FlushTarget> = target.clone();
        let flusher = Flusher::spawn(Arc::clone(&tracker), dyn_target, Duration::ZERO)
            .expect("spawn flusher");
        (tracker, target, flusher)
    }

    #[test]
    fn one_flush_releases_every_write_it_covers() {
        let (tracker, target, _flusher) = setup();
        target.committed.store(64, Ordering::SeqCst);
        // Wait for the last write first: its flush covers all earlier ones.
        DurabilityTicket::group(64, Arc::clone(&tracker))
            .wait()
            .expect("durable");
        let flushes = target.flushes.load(Ordering::SeqCst);
        for seq in 1..=64 {
            DurabilityTicket::group(seq, Arc::clone(&tracker))
                .wait()
                .expect("durable");
        }
        assert_eq!(
            target.flushes.load(Ordering::SeqCst),
            flushes,
            "covered writes need no flush"
        );
        assert_eq!(tracker.current().durable_seq, 64);
        assert_eq!(tracker.current().durable_cursor, FeedCursor::new(64));
    }

    #[test]
    fn a_failed_flush_fails_its_waiters_and_later_flushes_recover() {
        let (tracker, target, _flusher) = setup();
        target.committed.store(3, Ordering::SeqCst);
        target.fail_next.store(true, Ordering::SeqCst);
        let error = DurabilityTicket::group(3, Arc::clone(&tracker))
            .wait()
            .unwrap_err();
        assert!(
            matches!(error, StoreError::FlushFailed { seq: 3, .. }),
            "{error}"
        );
        target.committed.store(4, Ordering::SeqCst);
        DurabilityTicket::group(4, Arc::clone(&tracker))
            .wait()
            .expect("next flush succeeds");
    }

    #[test]
    fn async_waiters_are_released_by_the_flusher() {
        let (tracker, target, _flusher) = setup();
        target.committed.store(10, Ordering::SeqCst);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for seq in [10, 2, 7] {
                DurabilityTicket::group(seq, Arc::clone(&tracker))
                    .wait_async()
                    .await
                    .expect("ok");
            }
        });
        assert!(tracker.current().durable_seq >= 10);
    }

    #[test]
    fn shutdown_flushes_then_fails_later_waits() {
        let (tracker, target, flusher) = setup();
        target.committed.store(5, Ordering::SeqCst);
        drop(flusher);
        DurabilityTicket::group(5, Arc::clone(&tracker))
            .wait()
            .expect("final flush covered it");
        let error = DurabilityTicket::group(6, tracker).wait().unwrap_err();
        assert!(matches!(error, StoreError::Closed { seq: 6 }), "{error}");
    }
}
