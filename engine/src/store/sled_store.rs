//! The sled 0.34 [`ChannelStore`].
//!
//! Trees: `channels` (channel id → 284-byte record), `feed` (big-endian cursor → voucher),
//! `aux` (key → expiry ‖ value), `aux_expiry` (expiry ‖ key → empty, for pruning) and `meta`
//! (the format marker). One update is one sled transaction over the first four trees, run under
//! the store's commit lock, so the record, the auxiliary entry and the feed entry of an update
//! are recovered together or not at all.

use std::{
    collections::VecDeque,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use sled::{
    Transactional, Tree,
    transaction::{ConflictableTransactionError, TransactionError},
};

use super::{
    AuxEntry, Change, ChannelId, ChannelRecord, ChannelStore, Committed, Current, Durability,
    DurabilityTicket, Pending, StoreError, check_aux, check_aux_key, check_write,
    durable::{FlushTarget, Flusher, Tracker},
    error::{FlushFailure, backend_kind},
};
use crate::feed::{self, FeedCursor, FeedPage, FeedSubscription, StoredVoucher};

/// The format marker stored in the `meta` tree.
const FORMAT: &str = "sluice-channel-store/1";
const FORMAT_KEY: &[u8] = b"format";
/// How many expired auxiliary entries one pruning transaction removes.
const PRUNE_BATCH: usize = 512;

/// How to open a [`SledStore`].
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// The database directory.
    pub path: PathBuf,
    /// When updates become durable.
    pub durability: Durability,
    /// sled's page cache size in bytes (`None`: sled's default, 1 GiB).
    pub cache_capacity: Option<u64>,
}

impl SledOptions {
    /// Options for the database at `path` with the default durability (group commit).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            cache_capacity: None,
        }
    }

    /// Sets the durability mode.
    #[must_use]
    pub const fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets sled's page cache size in bytes.
    #[must_use]
    pub const fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }
}

/// What the commit lock protects: the write sequence, the feed cursor, and the feed entries
/// that newer entries replaced but that must stay until the replacement is durable.
#[derive(Debug, Default)]
struct CommitLog {
    seq: u64,
    cursor: FeedCursor,
    superseded: VecDeque<(u64, FeedCursor)>,
}

#[derive(Debug)]
struct Shared {
    db: sled::Db,
    channels: Tree,
    feed: Tree,
    aux: Tree,
    aux_expiry: Tree,
    commit: Mutex<CommitLog>,
}

/// A [`ChannelStore`] on a sled 0.34 database. See the crate README (`## store`) for the
/// on-disk layout, the durability modes and the guarantees.
///
/// sled allows one open database per directory: opening the same path again (in this process
/// or another) fails until this store is dropped.
#[derive(Debug)]
pub struct SledStore {
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    durability: Durability,
    flusher: Option<Flusher>,
}

/// What one update transaction did.
struct Outcome<T> {
    value: T,
    record: Option<ChannelRecord>,
    written: bool,
    /// The new feed cursor and the one it replaced (zero if none).
    published: Option<(FeedCursor, FeedCursor)>,
}

impl SledStore {
    /// Opens (or creates) the store at `path` with the given durability.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(SledOptions::new(path.as_ref()).durability(durability))
    }

    /// Opens (or creates) a store.
    pub fn open_with(options: SledOptions) -> Result<Self, StoreError> {
        let mut config = sled::Config::new().path(&options.path);
        // With explicit durability every acknowledged write is flushed by us; sled's timer flush
        // (every 500 ms) would only add flushes. Without it, keep the timer so data still
        // reaches the disk eventually.
        if options.durability != Durability::None {
            config = config.flush_every_ms(None);
        }
        if let Some(bytes) = options.cache_capacity {
            config = config.cache_capacity(bytes);
        }
        let db = config.open()?;
        let meta = db.open_tree("meta")?;
        let channels = db.open_tree("channels")?;
        match meta.get(FORMAT_KEY)? {
            Some(found) if found.as_ref() == FORMAT.as_bytes() => {}
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: FORMAT,
                });
            }
            None if !channels.is_empty() => {
                return Err(StoreError::UnsupportedFormat {
                    found: "<none>".into(),
                    expected: FORMAT,
                });
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT.as_bytes())?;
                db.flush()?;
            }
        }
        let shared = Shared {
            feed: db.open_tree("feed")?,
            aux: db.open_tree("aux")?,
            aux_expiry: db.open_tree("aux_expiry")?,
            channels,
            db,
            commit: Mutex::new(CommitLog::default()),
        };
        let cursor = shared.recover_feed()?;
        shared.lock().cursor = cursor;
        let shared = Arc::new(shared);
        let tracker = Tracker::new(cursor);
        let flusher = match options.durability {
            Durability::GroupCommit { max_delay } => {
                let target: Arc<dyn FlushTarget> = shared.clone();
                let flusher =
                    Flusher::spawn(Arc::clone(&tracker), target, max_delay).map_err(|error| {
                        StoreError::Backend {
                            kind: super::BackendErrorKind::Io(error.kind()),
                            message: format!("cannot start the flusher thread: {error}"),
                        }
                    })?;
                Some(flusher)
            }
            Durability::PerRequest | Durability::None => None,
        };
        Ok(Self {
            shared,
            tracker,
            durability: options.durability,
            flusher,
        })
    }

    /// The durability mode this store was opened with.
    pub const fn durability(&self) -> Durability {
        self.durability
    }

    /// Flushes in the calling thread and publishes what the flush covered.
    fn flush_now(&self) -> Result<(), StoreError> {
        let (seq, cursor) = self.shared.committed();
        if let Err(failure) = self.shared.flush() {
            self.tracker.fail(seq, failure.clone());
            return Err(StoreError::flush_failed(seq, &failure));
        }
        // Retire replaced feed entries before publishing, so a woken reader no longer sees them.
        self.shared.after_durable(seq);
        self.tracker.advance(seq, cursor);
        Ok(())
    }

    /// The ticket for a write (or an observation) at `seq`, after the mode's own work.
    fn ticket(&self, seq: u64) -> Result<DurabilityTicket, StoreError> {
        if self.tracker.current().durable_seq >= seq {
            return Ok(DurabilityTicket::ready());
        }
        match self.durability {
            Durability::GroupCommit { .. } => {
                Ok(DurabilityTicket::group(seq, Arc::clone(&self.tracker)))
            }
            Durability::PerRequest => {
                self.flush_now()?;
                Ok(DurabilityTicket::ready())
            }
            Durability::None => {
                let (seq, cursor) = self.shared.committed();
                self.shared.after_durable(seq);
                self.tracker.advance(seq, cursor);
                Ok(DurabilityTicket::ready())
            }
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        match self.flusher.take() {
            // Dropping the flusher runs a final flush and closes the tracker.
            Some(flusher) => drop(flusher),
            None => {
                // sled 0.34 does not flush when closed. Acknowledged writes are durable already;
                // this covers writes nobody waited for (and everything in `Durability::None`).
                // A failure here has no caller to report to; the next open recovers what the
                // last successful flush covered.
                let _ = self.flush_now();
                self.tracker.close();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, CommitLog> {
        // The log is only changed after a transaction committed; a panic in a closure leaves it
        // untouched.
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops feed entries that a crash left behind (replaced by a newer entry of the same
    /// channel whose removal of the old one was not yet durable) and returns the last cursor.
    fn recover_feed(&self) -> Result<FeedCursor, StoreError> {
        let mut last = FeedCursor::ZERO;
        let mut stale = Vec::new();
        for item in &self.feed {
            let (key, value) = item?;
            // Corrupt entries stay where they are: reading them reports the corruption, and one
            // bad entry does not keep every other channel from opening.
            let Ok(cursor) = FeedCursor::from_key(&key) else {
                continue;
            };
            last = last.max(cursor);
            let Ok(voucher) = StoredVoucher::from_bytes(&value) else {
                continue;
            };
            match self.record(&voucher.channel_id) {
                Ok(Some(record)) if record.feed_cursor == cursor.get() => {}
                Ok(_) => stale.push(key),
                Err(_) => {}
            }
        }
        for key in stale {
            self.feed.remove(key)?;
        }
        Ok(last)
    }

    fn record(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        self.channels
            .get(channel.as_slice())?
            .map(|bytes| decode_record(channel, &bytes))
            .transpose()
    }
}

impl FlushTarget for Shared {
    fn committed(&self) -> (u64, FeedCursor) {
        let log = self.lock();
        (log.seq, log.cursor)
    }

    fn flush(&self) -> Result<(), FlushFailure> {
        self.db.flush().map(drop).map_err(|error| FlushFailure {
            kind: backend_kind(&error),
            message: error.to_string(),
        })
    }

    fn after_durable(&self, seq: u64) {
        let mut retired = Vec::new();
        {
            let mut log = self.lock();
            while log.superseded.front().is_some_and(|(at, _)| *at <= seq) {
                retired.extend(log.superseded.pop_front());
            }
        }
        let mut failed = Vec::new();
        for (at, cursor) in retired {
            if self.feed.remove(cursor.to_key()).is_err() {
                failed.push((at, cursor));
            }
        }
        // Keep what could not be removed for the next flush; a restart also cleans it up.
        let mut log = self.lock();
        for item in failed.into_iter().rev() {
            log.superseded.push_front(item);
        }
    }
}

fn decode_record(channel: &ChannelId, bytes: &[u8]) -> Result<ChannelRecord, StoreError> {
    let record = ChannelRecord::from_bytes(bytes).map_err(|source| StoreError::CorruptRecord {
        channel: *channel,
        source,
    })?;
    if record.channel_id != *channel {
        return Err(StoreError::ChannelMismatch {
            key: *channel,
            record: record.channel_id,
        });
    }
    Ok(record)
}

fn channel_from_key(key: &[u8]) -> Result<ChannelId, StoreError> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| StoreError::CorruptEntry {
        what: "channel key",
        len: key.len(),
    })?;
    Ok(ChannelId::from(bytes))
}

fn encode_aux(entry: &AuxEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entry.value.len());
    out.extend_from_slice(&entry.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&entry.value);
    out
}

fn decode_aux(bytes: &[u8]) -> Result<AuxEntry, StoreError> {
    let Some((expiry, value)) = bytes.split_first_chunk::<8>() else {
        return Err(StoreError::CorruptEntry {
            what: "aux value",
            len: bytes.len(),
        });
    };
    Ok(AuxEntry {
        value: value.to_vec(),
        expires_at_ms: u64::from_be_bytes(*expiry),
    })
}

fn expiry_key(expires_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Turns an error raised inside a transaction into an abort carrying the caller's error type.
fn abort<E: From<StoreError>>(error: StoreError) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(E::from(error))
}

impl ChannelStore for SledStore {
    fn apply<T, E, F>(
        &self,
        channel: &ChannelId,
        aux_key: Option<&[u8]>,
        f: F,
    ) -> Result<Pending<T>, E>
    where
        F: Fn(Current<'_>) -> Result<Change<T>, E>,
        E: From<StoreError>,
    {
        if let Some(key) = aux_key {
            check_aux_key(key)?;
        }
        let shared = &*self.shared;
        // The commit lock makes sequence numbers and feed cursors follow commit order (sled 0.34
        // also serializes transactions internally, so this costs no extra parallelism).
        let mut log = shared.lock();
        let next_cursor = log.cursor.next();
        let trees = (
            &shared.channels,
            &shared.feed,
            &shared.aux,
            &shared.aux_expiry,
        );
        let result = trees.transaction(|(channels, feed, aux, aux_expiry)| {
            let old = channels
                .get(channel.as_slice())?
                .map(|bytes| decode_record(channel, &bytes))
                .transpose()
                .map_err(abort)?;
            let current_aux = match aux_key {
                Some(key) => aux
                    .get(key)?
                    .map(|bytes| decode_aux(&bytes))
                    .transpose()
                    .map_err(abort)?,
                None => None,
            };
            let Change {
                record,
                aux: aux_write,
                value,
            } = f(Current {
                record: old.as_ref(),
                aux: current_aux.as_ref(),
            })
            .map_err(ConflictableTransactionError::Abort)?;

            let mut stored = old;
            let mut published = None;
            let written = record.is_some() || aux_write.is_some();
            if let Some(mut new) = record {
                check_write(channel, old.as_ref(), &new).map_err(abort)?;
                let previous = FeedCursor::new(old.map_or(0, |old| old.feed_cursor));
                new.feed_cursor = previous.get();
                if feed::publishes(old.as_ref(), &new) {
                    new.feed_cursor = next_cursor.get();
                    feed.insert(
                        &next_cursor.to_key(),
                        &StoredVoucher::of(&new).to_bytes()[..],
                    )?;
                    published = Some((next_cursor, previous));
                }
                channels.insert(channel.as_slice(), &new.to_bytes()[..])?;
                stored = Some(new);
            }
            if let Some((key, entry)) = &aux_write {
                check_aux(key, entry).map_err(abort)?;
                if let Some(previous) = aux.get(key.as_slice())? {
                    let previous = decode_aux(&previous).map_err(abort)?;
                    aux_expiry.remove(expiry_key(previous.expires_at_ms, key))?;
                }
                aux.insert(key.as_slice(), encode_aux(entry))?;
                aux_expiry.insert(expiry_key(entry.expires_at_ms, key), &[][..])?;
            }
            Ok(Outcome {
                value,
                record: stored,
                written,
                published,
            })
        });
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(E::from(StoreError::from(error))),
        };
        if outcome.written {
            log.seq += 1;
        }
        if let Some((cursor, previous)) = outcome.published {
            log.cursor = cursor;
            if previous != FeedCursor::ZERO {
                let seq = log.seq;
                log.superseded.push_back((seq, previous));
            }
        }
        let seq = log.seq;
        drop(log);
        let ticket = self.ticket(seq)?;
        let committed = Committed {
            record: outcome.record,
            value: outcome.value,
            written: outcome.written,
        };
        Ok(Pending::new(committed, ticket))
    }

    fn get(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        self.shared.record(channel)
    }

    fn scan(
        &self,
        after: Option<&ChannelId>,
        limit: usize,
    ) -> Result<Vec<ChannelRecord>, StoreError> {
        let range = match after {
            None => self.shared.channels.range::<&[u8], _>(..),
            Some(after) => self
                .shared
                .channels
                .range::<&[u8], _>((Bound::Excluded(after.as_slice()), Bound::Unbounded)),
        };
        range
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                decode_record(&channel_from_key(&key)?, &value)
            })
            .collect()
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.shared.channels.len())
    }

    fn get_aux(&self, key: &[u8]) -> Result<Option<AuxEntry>, StoreError> {
        self.shared
            .aux
            .get(key)?
            .map(|bytes| decode_aux(&bytes))
            .transpose()
    }

    fn prune_aux(&self, expired_before_ms: u64) -> Result<usize, StoreError> {
        let shared = &*self.shared;
        let bound = expired_before_ms.to_be_bytes();
        let mut removed = 0;
        loop {
            let batch: Vec<sled::IVec> = shared
                .aux_expiry
                .range::<&[u8], _>(..&bound[..])
                .keys()
                .take(PRUNE_BATCH)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                return Ok(removed);
            }
            // Under the commit lock so a concurrent update cannot rewrite a key mid-prune.
            let _log = shared.lock();
            let pruned = (&shared.aux, &shared.aux_expiry)
                .transaction(|(aux, aux_expiry)| {
                    let mut pruned = 0;
                    for index_key in &batch {
                        let Some((expiry, key)) = index_key.split_first_chunk::<8>() else {
                            return Err(abort(StoreError::CorruptEntry {
                                what: "aux expiry key",
                                len: index_key.len(),
                            }));
                        };
                        aux_expiry.remove(index_key)?;
                        let still_expiring = aux
                            .get(key)?
                            .map(|bytes| decode_aux(&bytes))
                            .transpose()
                            .map_err(abort)?
                            .is_some_and(|entry| {
                                entry.expires_at_ms == u64::from_be_bytes(*expiry)
                            });
                        if still_expiring {
                            aux.remove(key)?;
                            pruned += 1;
                        }
                    }
                    Ok(pruned)
                })
                .map_err(|error| match error {
                    TransactionError::Abort(error) => error,
                    TransactionError::Storage(error) => StoreError::from(error),
                })?;
            removed += pruned;
        }
    }

    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError> {
        let durable = self.tracker.current().durable_cursor;
        if after >= durable || limit == 0 {
            return Ok(FeedPage {
                entries: Vec::new(),
                next: after,
            });
        }
        let range = self
            .shared
            .feed
            .range(after.next().to_key()..=durable.to_key());
        let mut entries = Vec::new();
        for item in range.take(limit) {
            let (key, value) = item?;
            let cursor = FeedCursor::from_key(&key)?;
            let voucher = StoredVoucher::from_bytes(&value)?;
            let record =
                self.shared
                    .record(&voucher.channel_id)?
                    .ok_or(StoreError::CorruptEntry {
                        what: "feed entry without channel record",
                        len: value.len(),
                    })?;
            entries.push(voucher.entry(cursor, &record));
        }
        let next = if entries.len() < limit {
            durable
        } else {
            entries.last().map_or(after, |entry| entry.cursor)
        };
        Ok(FeedPage { entries, next })
    }

    fn subscribe_feed(&self) -> FeedSubscription {
        FeedSubscription::new(self.tracker.subscribe())
    }

    fn sync(&self) -> Result<(), StoreError> {
        match self.durability {
            Durability::GroupCommit { .. } => {
                let (seq, _) = self.shared.committed();
                DurabilityTicket::group(seq, Arc::clone(&self.tracker)).wait()
            }
            Durability::PerRequest | Durability::None => self.flush_now(),
        }
    }

    fn approximate_size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.shared.db.size_on_disk()?)
    }
}
