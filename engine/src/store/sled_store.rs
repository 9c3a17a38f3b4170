//! The sled 0.34 [`ChannelStore`].
//!
//! Trees: `channels` (channel id → 292-byte record), `feed` (big-endian cursor → voucher),
//! `aux` (key → header ‖ value), `aux_expiry` (expiry ‖ key → empty, for pruning) and `meta`
//! (the format marker).
//!
//! # Why no sled transactions
//! sled 0.34 runs every transaction (and `apply_batch`) under a process-wide write lock, and
//! `flush` holds the read side of that lock for the whole fsync; each transaction also seals its
//! own log buffer, so a flush covering `n` transactions writes `n` buffers. Measured here: group
//! commit through transactions stalled near 10 k updates/s with flushes growing to ~1.6 ms.
//! So an update is a short sequence of plain single-key writes made under the store's commit
//! lock, in a fixed order with the channel record last. sled's log is recovered in order up to
//! the first torn entry, so after a crash an update is either complete or a prefix of its
//! writes without the record; [`SledStore::open`] removes such leftovers before anything else.
//! (Once any code in the process uses a sled transaction, flushes block writers again: do not
//! mix transactions into the same process.)

use std::{
    collections::VecDeque,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use sled::Tree;

use super::{
    AuxEntry, BackendErrorKind, Change, ChannelId, ChannelRecord, ChannelStore, Committed, Current,
    Durability, DurabilityTicket, Pending, StoreError, check_aux, check_aux_key, check_write,
    durable::{FlushTarget, Flusher, Tracker},
    error::{FlushFailure, backend_kind},
};
use crate::feed::{self, FeedCursor, FeedPage, FeedSubscription, StoredVoucher};

/// The format marker stored in the `meta` tree.
const FORMAT: &str = "sluice-channel-store/1";
const FORMAT_KEY: &[u8] = b"format";
/// How many expired auxiliary entries one pruning pass reads at a time.
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
    /// Set when a write failed half-way; updates are refused until the store is reopened.
    poisoned: OnceLock<BackendErrorKind>,
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

/// How long [`SledStore::open_with`] waits for a database directory lock that is still held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled, waiting (bounded by [`LOCK_WAIT`]) while its directory lock is still held.
///
/// sled 0.34 finishes background work after the last handle of a database is dropped and holds
/// the directory lock until then, so an open right after a close in the same process (a
/// restart) can fail with `WouldBlock` for a moment. sled offers no event to wait for, hence
/// the short polling here; another process really holding the database still gets the
/// `WouldBlock` error, after the bounded wait.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(error) => {
                let error = StoreError::from(error);
                let locked = matches!(
                    error,
                    StoreError::Backend {
                        kind: BackendErrorKind::Io(std::io::ErrorKind::WouldBlock),
                        ..
                    }
                );
                if !locked || std::time::Instant::now() >= deadline {
                    return Err(error);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store at `path` with the given durability. If the directory lock
    /// is still held (sled releasing it after a close in this process), waits up to 2 s.
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
        let db = open_waiting_for_lock(&config)?;
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
            poisoned: OnceLock::new(),
        };
        let cursor = shared.repair()?;
        shared.lock().cursor = cursor;
        let shared = Arc::new(shared);
        let tracker = Tracker::new(cursor);
        let flusher = match options.durability {
            Durability::GroupCommit { max_delay } => {
                let target: Arc<dyn FlushTarget> = shared.clone();
                let flusher =
                    Flusher::spawn(Arc::clone(&tracker), target, max_delay).map_err(|error| {
                        StoreError::Backend {
                            kind: BackendErrorKind::Io(error.kind()),
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
        // The log only changes after an update's writes succeeded; a panicking closure leaves
        // it untouched.
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes what a crash or an interrupted write left half-done, and returns the last feed
    /// cursor. Updates write their auxiliary entry, then their feed entry, then their record, and
    /// sled recovers its log in order, so the leftovers are: auxiliary entries whose record write
    /// was lost (their revision is above the record's), feed entries whose record write was lost
    /// or that a durable newer entry replaced (the record points elsewhere).
    fn repair(&self) -> Result<FeedCursor, StoreError> {
        let mut last = FeedCursor::ZERO;
        let mut stale_feed = Vec::new();
        for item in &self.feed {
            let (key, value) = item?;
            // Corrupt entries stay where they are: reading them reports the corruption, and one
            // bad entry does not keep every other channel from opening.
            let Ok(cursor) = FeedCursor::from_key(&key) else {
                continue;
            };
            let Ok(voucher) = StoredVoucher::from_bytes(&value) else {
                continue;
            };
            match self.record(&voucher.channel_id) {
                Ok(Some(record)) if record.feed_cursor == cursor.get() => last = last.max(cursor),
                Ok(_) => stale_feed.push(key),
                Err(_) => {}
            }
        }
        let mut orphan_aux = Vec::new();
        for item in &self.aux {
            let (key, value) = item?;
            let Ok(stored) = StoredAux::from_bytes(&value) else {
                continue;
            };
            if !self.aux_is_committed(&stored).unwrap_or(true) {
                orphan_aux.push((key, stored.entry.expires_at_ms));
            }
        }
        let repaired = !stale_feed.is_empty() || !orphan_aux.is_empty();
        for key in stale_feed {
            self.feed.remove(key)?;
        }
        for (key, expires_at_ms) in orphan_aux {
            self.aux.remove(&key)?;
            self.aux_expiry.remove(expiry_key(expires_at_ms, &key))?;
        }
        if repaired {
            self.db.flush()?;
        }
        Ok(last)
    }

    /// Whether the update that wrote `stored` also wrote its record.
    fn aux_is_committed(&self, stored: &StoredAux) -> Result<bool, StoreError> {
        if stored.revision == 0 {
            return Ok(true);
        }
        Ok(self
            .record(&stored.channel)?
            .is_some_and(|record| record.revision >= stored.revision))
    }

    /// The auxiliary entry under `key`, if its update committed.
    fn visible_aux(&self, key: &[u8]) -> Result<Option<AuxEntry>, StoreError> {
        let Some(bytes) = self.aux.get(key)? else {
            return Ok(None);
        };
        let stored = StoredAux::from_bytes(&bytes)?;
        Ok(self.aux_is_committed(&stored)?.then_some(stored.entry))
    }

    /// The writes of one update, in commit order (see `repair`).
    fn write_update(
        &self,
        channel: &ChannelId,
        record: Option<&ChannelRecord>,
        published: Option<(FeedCursor, FeedCursor)>,
        aux: Option<&(Vec<u8>, AuxEntry)>,
        revision: u64,
    ) -> Result<(), sled::Error> {
        if let Some((key, entry)) = aux {
            // The index first: an index key without an entry is harmless (pruning skips it), an
            // entry without an index key would never be pruned.
            self.aux_expiry
                .insert(expiry_key(entry.expires_at_ms, key), &[][..])?;
            self.aux.insert(
                key.as_slice(),
                StoredAux::to_bytes(channel, revision, entry),
            )?;
        }
        if let Some(record) = record {
            if let Some((cursor, _)) = published {
                self.feed
                    .insert(cursor.to_key(), &StoredVoucher::of(record).to_bytes()[..])?;
            }
            self.channels
                .insert(channel.as_slice(), &record.to_bytes()[..])?;
        }
        Ok(())
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

/// Layout of a stored auxiliary value: `version (1) ‖ channel id (32) ‖ record revision (8, BE)
/// ‖ expires_at_ms (8, BE) ‖ value`. The revision is that of the record written in the same
/// update (or the record's current revision for an auxiliary-only write, 0 without a record):
/// an entry whose channel record has a lower revision belongs to an update whose record write
/// was lost in a crash.
const AUX_VERSION: u8 = 1;
const AUX_HEADER_LEN: usize = 49;

struct StoredAux {
    channel: ChannelId,
    revision: u64,
    entry: AuxEntry,
}

impl StoredAux {
    fn to_bytes(channel: &ChannelId, revision: u64, entry: &AuxEntry) -> Vec<u8> {
        let mut out = Vec::with_capacity(AUX_HEADER_LEN + entry.value.len());
        out.push(AUX_VERSION);
        out.extend_from_slice(channel.as_slice());
        out.extend_from_slice(&revision.to_be_bytes());
        out.extend_from_slice(&entry.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&entry.value);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::CorruptEntry {
            what: "aux value",
            len: bytes.len(),
        };
        let Some((header, value)) = bytes.split_first_chunk::<AUX_HEADER_LEN>() else {
            return Err(corrupt());
        };
        if header[0] != AUX_VERSION {
            return Err(corrupt());
        }
        let mut channel = [0u8; 32];
        channel.copy_from_slice(&header[1..33]);
        let mut revision = [0u8; 8];
        revision.copy_from_slice(&header[33..41]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&header[41..49]);
        Ok(Self {
            channel: ChannelId::from(channel),
            revision: u64::from_be_bytes(revision),
            entry: AuxEntry {
                value: value.to_vec(),
                expires_at_ms: u64::from_be_bytes(expires),
            },
        })
    }
}

fn expiry_key(expires_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires_at_ms.to_be_bytes());
    out.extend_from_slice(key);
    out
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
        if let Some(kind) = shared.poisoned.get() {
            return Err(E::from(StoreError::Poisoned { kind: *kind }));
        }
        // The commit lock serializes updates: sequence numbers and feed cursors follow commit
        // order, and each closure sees every update ordered before it.
        let mut log = shared.lock();
        let old = shared.record(channel)?;
        let current_aux = match aux_key {
            Some(key) => shared.visible_aux(key)?,
            None => None,
        };
        let Change {
            record,
            aux: aux_write,
            value,
            lowers_spent,
        } = f(Current {
            record: old.as_ref(),
            aux: current_aux.as_ref(),
        })?;

        let old_revision = old.map_or(0, |old| old.revision);
        let mut new = None;
        let mut published = None;
        if let Some(mut next) = record {
            check_write(channel, old.as_ref(), &next, lowers_spent)?;
            let previous = FeedCursor::new(old.map_or(0, |old| old.feed_cursor));
            next.revision = old_revision + 1;
            next.feed_cursor = previous.get();
            if feed::publishes(old.as_ref(), &next) {
                let cursor = log.cursor.next();
                next.feed_cursor = cursor.get();
                published = Some((cursor, previous));
            }
            new = Some(next);
        }
        if let Some((key, entry)) = &aux_write {
            check_aux(key, entry)?;
            if shared.aux.contains_key(key).map_err(StoreError::from)? {
                return Err(E::from(StoreError::AuxKeyExists { key: key.clone() }));
            }
        }

        // Write order: auxiliary entry, feed entry, then the record. The record is the commit
        // point: sled recovers its log in order, so a recovered record implies its auxiliary and
        // feed entries were recovered too, and opening removes entries whose record write was
        // lost (see `Shared::repair`).
        let revision = new.map_or(old_revision, |new| new.revision);
        let written = shared.write_update(
            channel,
            new.as_ref(),
            published,
            aux_write.as_ref(),
            revision,
        );
        if let Err(error) = written {
            let kind = backend_kind(&error);
            // Some steps may have happened: refuse further writes until a reopen repairs them.
            let _ = shared.poisoned.set(kind);
            return Err(E::from(StoreError::from(error)));
        }
        let wrote = new.is_some() || aux_write.is_some();
        if wrote {
            log.seq += 1;
        }
        if let Some((cursor, previous)) = published {
            log.cursor = cursor;
            if previous != FeedCursor::ZERO {
                let seq = log.seq;
                log.superseded.push_back((seq, previous));
            }
        }
        let seq = log.seq;
        drop(log);
        let ticket = self.ticket(seq)?;
        Ok(Pending::new(
            Committed {
                record: new.or(old),
                value,
                written: wrote,
            },
            ticket,
        ))
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
        self.shared.visible_aux(key)
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
            // Under the commit lock so no update writes a key while it is being pruned.
            let _log = shared.lock();
            for index_key in &batch {
                let Some((expiry, key)) = index_key.split_first_chunk::<8>() else {
                    return Err(StoreError::CorruptEntry {
                        what: "aux expiry key",
                        len: index_key.len(),
                    });
                };
                let expires = shared
                    .aux
                    .get(key)?
                    .map(|bytes| StoredAux::from_bytes(&bytes).map(|aux| aux.entry.expires_at_ms))
                    .transpose()?;
                // The entry goes first: a crash in between leaves an index key without an entry,
                // which the next prune removes.
                if expires == Some(u64::from_be_bytes(*expiry)) {
                    shared.aux.remove(key)?;
                    removed += 1;
                }
                shared.aux_expiry.remove(index_key)?;
            }
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
