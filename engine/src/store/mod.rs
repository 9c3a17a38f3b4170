//! Durable per-channel state: the [`ChannelStore`] trait, its sled implementation
//! ([`SledStore`]) and an in-memory one ([`MemoryStore`]).
//!
//! Every change goes through [`ChannelStore::apply`] (or its shorthands [`ChannelStore::update`]
//! and [`ChannelStore::update_pending`]): the store reads the channel's current record, hands it
//! to a **pure** closure, and atomically writes what the closure decided, together with an
//! optional auxiliary entry (idempotency outcomes) and the channel's feed entry. Updates of one
//! channel are linearizable; the closure may run more than once and must not have side effects.
//! The update returns only once its write is durable under the store's [`Durability`] mode.

mod durable;
mod error;
mod memory;
mod record;
mod sled_store;

#[cfg(test)]
mod conformance;

pub(crate) use durable::Watermark;
pub use durable::{Durability, DurabilityTicket};
pub use error::{BackendErrorKind, StoreError};
pub use memory::MemoryStore;
pub use record::{
    ChannelId, ChannelRecord, ChannelStatus, RECORD_LEN, RECORD_VERSION, RecordError, SIGNATURE_LEN,
};
pub use sled_store::{SledOptions, SledStore};

use crate::feed::{FeedCursor, FeedPage, FeedSubscription};

/// The longest auxiliary key accepted, in bytes.
pub const MAX_AUX_KEY_LEN: usize = 256;
/// The longest auxiliary value accepted, in bytes.
pub const MAX_AUX_VALUE_LEN: usize = 64 * 1024;

/// A small keyed value written atomically with a channel update, such as the recorded outcome
/// of a request carrying an `Idempotency-Key`. Kept until pruned after `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuxEntry {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Unix milliseconds after which [`ChannelStore::prune_aux`] may remove the entry.
    pub expires_at_ms: u64,
}

/// What an update closure sees: the channel's current record and, if the update names an
/// auxiliary key, that key's current entry.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    /// The stored record, `None` for a channel the store has never seen.
    pub record: Option<&'a ChannelRecord>,
    /// The entry under the update's auxiliary key, if a key was given and an entry exists.
    pub aux: Option<&'a AuxEntry>,
}

/// What an update closure decided: an optional new record, an optional auxiliary entry to write
/// in the same atomic step, and a value handed back to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Change<T> {
    record: Option<ChannelRecord>,
    aux: Option<(Vec<u8>, AuxEntry)>,
    value: T,
    lowers_spent: bool,
}

impl<T> Change<T> {
    /// Write nothing; return `value`.
    pub const fn keep(value: T) -> Self {
        Self {
            record: None,
            aux: None,
            value,
            lowers_spent: false,
        }
    }

    /// Replace the channel's record with `record`; return `value`.
    pub const fn write(record: ChannelRecord, value: T) -> Self {
        Self {
            record: Some(record),
            aux: None,
            value,
            lowers_spent: false,
        }
    }

    /// Replace the channel's record with `record`, which may lower `spent` (and `units`):
    /// charged units given back unserved, such as the unused part of a metered stream's
    /// reservation. Every other guard still applies, and `spent` may not fall below the
    /// stored `settled` amount ([`StoreError::SpentBelowSettled`]).
    pub const fn release(record: ChannelRecord, value: T) -> Self {
        Self {
            record: Some(record),
            aux: None,
            value,
            lowers_spent: true,
        }
    }

    /// Also store `entry` under auxiliary `key`, atomically with the rest of the change.
    /// Auxiliary keys are written once: if `key` already has an entry the update fails with
    /// [`StoreError::AuxKeyExists`] (read the key through [`ChannelStore::apply`] to replay it).
    pub fn with_aux(mut self, key: impl Into<Vec<u8>>, entry: AuxEntry) -> Self {
        self.aux = Some((key.into(), entry));
        self
    }

    /// Whether this change writes anything.
    pub const fn writes(&self) -> bool {
        self.record.is_some() || self.aux.is_some()
    }
}

/// The result of an applied update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed<T> {
    /// The channel's record after the update (the stored one when nothing was written).
    pub record: Option<ChannelRecord>,
    /// The closure's value.
    pub value: T,
    /// Whether the update wrote anything.
    pub written: bool,
}

/// An applied update whose durability has not been confirmed yet. Release its result only
/// after [`Pending::wait`] or [`Pending::durable`] returns.
#[derive(Debug)]
#[must_use = "an update is not durable until it is waited on"]
pub struct Pending<T> {
    committed: Committed<T>,
    ticket: DurabilityTicket,
}

impl<T> Pending<T> {
    /// An applied update and the ticket for its durability.
    pub const fn new(committed: Committed<T>, ticket: DurabilityTicket) -> Self {
        Self { committed, ticket }
    }

    /// The applied update, durability still pending: read it to plan, never release it before
    /// [`Pending::wait`] or [`Pending::durable`] returns.
    pub const fn committed(&self) -> &Committed<T> {
        &self.committed
    }

    /// The write sequence number to wait for, if the update still has to wait.
    pub fn seq(&self) -> Option<u64> {
        self.ticket.seq()
    }

    /// Blocks until the update is durable, then returns it.
    pub fn wait(self) -> Result<Committed<T>, StoreError> {
        self.ticket.wait()?;
        Ok(self.committed)
    }

    /// Waits (without blocking the async runtime) until the update is durable, then returns it.
    pub async fn durable(self) -> Result<Committed<T>, StoreError> {
        self.ticket.wait_async().await?;
        Ok(self.committed)
    }
}

/// A durable store of channel records, auxiliary entries and the settlement feed.
///
/// # Contract (checked by the conformance suite for every implementation)
/// - **Linearizable per channel**: concurrent updates of one channel behave as if run one after
///   another; each closure sees the effect of every update ordered before it. So one voucher is
///   never accepted twice.
/// - **Pure, retryable closures**: a closure may run more than once for one call; only the
///   result of its last run counts. A closure error aborts the update with no state change.
/// - **Atomic**: the record, the auxiliary entry and the feed entry of one update are all
///   written or none is (for sled: after a crash, once the store is reopened).
/// - **Maintained fields**: the store sets [`ChannelRecord::revision`] (one more per write) and
///   [`ChannelRecord::feed_cursor`]; values a closure puts there are ignored.
/// - **Write-once auxiliary keys**: an update writing an existing key fails and changes nothing.
/// - **Guarded**: a written record must keep `spent ≤ accepted_cumulative ≤ deposit`, must not
///   lower `accepted_cumulative` or `spent`, and must not swap the signature of an unchanged
///   accepted amount; otherwise the update fails with a typed error and writes nothing. The one
///   exception is a [`Change::release`], which may lower `spent`, never below the stored
///   `settled` amount.
/// - **Durable before return**: [`ChannelStore::update`] returns after the write is durable; an
///   update that wrote nothing still waits until the state it observed is durable, so an
///   idempotent retry is never acknowledged ahead of the original write.
///
/// The closure runs while the store serializes writers, so it must be cheap: check signatures
/// before calling `update`, decide inside it.
pub trait ChannelStore: Send + Sync {
    /// Applies an update to `channel`: reads its record (and the entry under `aux_key`, if
    /// given), runs `f`, and atomically writes what `f` returned. Returns before durability; the
    /// result must not be released until [`Pending::wait`] or [`Pending::durable`] returns.
    fn apply<T, E, F>(
        &self,
        channel: &ChannelId,
        aux_key: Option<&[u8]>,
        f: F,
    ) -> Result<Pending<T>, E>
    where
        F: Fn(Current<'_>) -> Result<Change<T>, E>,
        E: From<StoreError>;

    /// Applies an update that needs no auxiliary entry read, durability still pending.
    fn update_pending<T, E, F>(&self, channel: &ChannelId, f: F) -> Result<Pending<T>, E>
    where
        F: Fn(Option<&ChannelRecord>) -> Result<Change<T>, E>,
        E: From<StoreError>,
    {
        self.apply(channel, None, |current| f(current.record))
    }

    /// Applies an update and blocks until it is durable. Async callers use
    /// [`ChannelStore::update_pending`] and [`Pending::durable`] instead.
    fn update<T, E, F>(&self, channel: &ChannelId, f: F) -> Result<Committed<T>, E>
    where
        F: Fn(Option<&ChannelRecord>) -> Result<Change<T>, E>,
        E: From<StoreError>,
    {
        Ok(self.update_pending(channel, f)?.wait()?)
    }

    /// The latest written record of `channel` (possibly not yet durable).
    fn get(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, StoreError>;

    /// Up to `limit` records in channel-id order, starting after `after` (or at the first).
    /// Used at startup to load or check every channel page by page.
    fn scan(
        &self,
        after: Option<&ChannelId>,
        limit: usize,
    ) -> Result<Vec<ChannelRecord>, StoreError>;

    /// The number of channels stored. O(channels) for sled.
    fn len(&self) -> Result<usize, StoreError>;

    /// Whether no channel is stored.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.scan(None, 1)?.is_empty())
    }

    /// The auxiliary entry under `key` (expired entries stay visible until pruned).
    fn get_aux(&self, key: &[u8]) -> Result<Option<AuxEntry>, StoreError>;

    /// Removes auxiliary entries whose `expires_at_ms` is before `expired_before_ms`; returns
    /// how many were removed.
    fn prune_aux(&self, expired_before_ms: u64) -> Result<usize, StoreError>;

    /// Up to `limit` durable feed entries with cursors after `after`, in cursor order.
    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError>;

    /// A handle that wakes when durable feed entries appear.
    fn subscribe_feed(&self) -> FeedSubscription;

    /// Blocks until everything written so far is durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// The space the store takes on disk, in bytes (0 for in-memory stores).
    fn approximate_size_on_disk(&self) -> Result<u64, StoreError>;
}

/// Checks a record an update wants to write against the stored one.
pub(crate) fn check_write(
    channel: &ChannelId,
    old: Option<&ChannelRecord>,
    new: &ChannelRecord,
    lowers_spent: bool,
) -> Result<(), StoreError> {
    if new.channel_id != *channel {
        return Err(StoreError::ChannelMismatch {
            key: *channel,
            record: new.channel_id,
        });
    }
    new.check_invariants()
        .map_err(|source| StoreError::InvalidRecord {
            channel: *channel,
            source,
        })?;
    if let Some(old) = old {
        if new.accepted_cumulative < old.accepted_cumulative {
            return Err(StoreError::AcceptedDecreased {
                channel: *channel,
                stored: old.accepted_cumulative,
                proposed: new.accepted_cumulative,
            });
        }
        if lowers_spent && new.spent < old.spent {
            if new.spent < old.settled {
                return Err(StoreError::SpentBelowSettled {
                    channel: *channel,
                    settled: old.settled,
                    proposed: new.spent,
                });
            }
        } else if new.spent < old.spent {
            return Err(StoreError::SpentDecreased {
                channel: *channel,
                stored: old.spent,
                proposed: new.spent,
            });
        }
        if new.accepted_cumulative == old.accepted_cumulative
            && new.accepted_signature != old.accepted_signature
        {
            return Err(StoreError::SignatureReplaced {
                channel: *channel,
                accepted: old.accepted_cumulative,
            });
        }
    }
    Ok(())
}

/// Checks the size limits of an auxiliary write.
pub(crate) fn check_aux(key: &[u8], entry: &AuxEntry) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_AUX_KEY_LEN {
        return Err(StoreError::AuxKeyLength {
            len: key.len(),
            max: MAX_AUX_KEY_LEN,
        });
    }
    if entry.value.len() > MAX_AUX_VALUE_LEN {
        return Err(StoreError::AuxValueTooLong {
            len: entry.value.len(),
            max: MAX_AUX_VALUE_LEN,
        });
    }
    Ok(())
}

/// Checks the key an update reads.
pub(crate) fn check_aux_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_AUX_KEY_LEN {
        return Err(StoreError::AuxKeyLength {
            len: key.len(),
            max: MAX_AUX_KEY_LEN,
        });
    }
    Ok(())
}
