//! The in-memory [`ChannelStore`]: the same contract as the sled store, without durability.
//! For tests, benchmarks and embedders that persist elsewhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use super::{
    AuxEntry, Change, ChannelId, ChannelRecord, ChannelStore, Committed, Current, DurabilityTicket,
    Pending, StoreError, check_aux, check_aux_key, check_write, durable::Tracker,
};
use crate::feed::{self, FeedCursor, FeedPage, FeedSubscription, StoredVoucher};

#[derive(Debug, Default)]
struct State {
    channels: BTreeMap<ChannelId, ChannelRecord>,
    feed: BTreeMap<FeedCursor, StoredVoucher>,
    last_cursor: FeedCursor,
    aux: BTreeMap<Vec<u8>, AuxEntry>,
    /// `(expires_at_ms, key)` of every auxiliary entry, for pruning in expiry order.
    aux_expiry: BTreeSet<(u64, Vec<u8>)>,
    seq: u64,
}

/// A [`ChannelStore`] kept in a map behind one lock. Every update is "durable" as soon as it is
/// applied, and lost when the store is dropped.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    tracker: Arc<Tracker>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            tracker: Tracker::new(FeedCursor::ZERO),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates mutate the maps only after every check passed, so a panic cannot leave a
        // half-applied update behind the poisoned lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ChannelStore for MemoryStore {
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
        let mut state = self.lock();
        let old = state.channels.get(channel).copied();
        let aux = aux_key.and_then(|key| state.aux.get(key));
        let Change {
            record,
            aux: aux_write,
            value,
            lowers_spent,
        } = f(Current {
            record: old.as_ref(),
            aux,
        })?;

        if let Some(new) = &record {
            check_write(channel, old.as_ref(), new, lowers_spent)?;
        }
        if let Some((key, entry)) = &aux_write {
            check_aux(key, entry)?;
            if state.aux.contains_key(key) {
                return Err(E::from(StoreError::AuxKeyExists { key: key.clone() }));
            }
        }
        let written = record.is_some() || aux_write.is_some();

        let mut stored = old;
        if let Some(mut new) = record {
            new.revision = old.map_or(0, |old| old.revision) + 1;
            new.feed_cursor = old.map_or(0, |old| old.feed_cursor);
            if feed::publishes(old.as_ref(), &new) {
                let cursor = state.last_cursor.next();
                state.last_cursor = cursor;
                if new.feed_cursor != 0 {
                    state.feed.remove(&FeedCursor::new(new.feed_cursor));
                }
                new.feed_cursor = cursor.get();
                state.feed.insert(cursor, StoredVoucher::of(&new));
            }
            state.channels.insert(*channel, new);
            stored = Some(new);
        }
        if let Some((key, entry)) = aux_write {
            state.aux_expiry.insert((entry.expires_at_ms, key.clone()));
            state.aux.insert(key, entry);
        }
        if written {
            state.seq += 1;
        }
        let (seq, cursor) = (state.seq, state.last_cursor);
        drop(state);
        self.tracker.advance(seq, cursor);
        Ok(Pending::new(
            Committed {
                record: stored,
                value,
                written,
            },
            DurabilityTicket::ready(),
        ))
    }

    fn get(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        Ok(self.lock().channels.get(channel).copied())
    }

    fn scan(
        &self,
        after: Option<&ChannelId>,
        limit: usize,
    ) -> Result<Vec<ChannelRecord>, StoreError> {
        let state = self.lock();
        let records = match after {
            None => state.channels.values().take(limit).copied().collect(),
            Some(after) => state
                .channels
                .range((
                    std::ops::Bound::Excluded(*after),
                    std::ops::Bound::Unbounded,
                ))
                .take(limit)
                .map(|(_, record)| *record)
                .collect(),
        };
        Ok(records)
    }

    fn len(&self) -> Result<usize, StoreError> {
        Ok(self.lock().channels.len())
    }

    fn get_aux(&self, key: &[u8]) -> Result<Option<AuxEntry>, StoreError> {
        Ok(self.lock().aux.get(key).cloned())
    }

    fn prune_aux(&self, expired_before_ms: u64) -> Result<usize, StoreError> {
        let mut state = self.lock();
        let expired: Vec<(u64, Vec<u8>)> = state
            .aux_expiry
            .range(..(expired_before_ms, Vec::new()))
            .cloned()
            .collect();
        for item in &expired {
            state.aux_expiry.remove(item);
            state.aux.remove(&item.1);
        }
        Ok(expired.len())
    }

    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError> {
        let state = self.lock();
        let mut entries = Vec::new();
        for (cursor, voucher) in state.feed.range(after.next()..).take(limit) {
            let record =
                state
                    .channels
                    .get(&voucher.channel_id)
                    .ok_or(StoreError::CorruptEntry {
                        what: "feed entry without channel record",
                        len: 0,
                    })?;
            entries.push(voucher.entry(*cursor, record));
        }
        let next = if entries.len() < limit {
            after.max(state.last_cursor)
        } else {
            entries.last().map_or(after, |entry| entry.cursor)
        };
        Ok(FeedPage { entries, next })
    }

    fn subscribe_feed(&self) -> FeedSubscription {
        FeedSubscription::new(self.tracker.subscribe())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn approximate_size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
