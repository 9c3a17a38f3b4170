//! The settlement feed: the latest accepted voucher of every channel, in cursor order.
//!
//! Whenever an update changes a channel's accepted voucher (amount or signature), or moves the
//! channel into `Closing` or `Closed`, the store gives the channel a new, higher [`FeedCursor`]
//! in the same atomic write as the record and drops its previous entry, so the feed holds one
//! entry per channel (its size grows with channels, not vouchers). The settlement daemon reads
//! it with [`ChannelStore::read_feed`](crate::store::ChannelStore::read_feed), remembers the
//! returned `next` cursor, and waits for more with a [`FeedSubscription`] instead of polling.
//!
//! Guarantees:
//! - Only durable entries are visible: a reader never sees a voucher that a crash could take
//!   back, and cursors it has seen are never handed out again after a restart.
//! - Nothing acknowledged is skipped: entries appear in commit order, so reading from the last
//!   `next` cursor finds every voucher accepted since.
//! - Delivery is at least once: a channel may appear again (at a higher cursor) when it changes,
//!   and briefly at both its old and new cursor; readers keep the highest amount per channel.

use std::fmt;

use alloy_primitives::{Address, B256};

use crate::store::{ChannelId, ChannelRecord, ChannelStatus, SIGNATURE_LEN, StoreError, Watermark};

/// A position in the feed. Cursors only grow; `FeedCursor::ZERO` is before the first entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedCursor(u64);

impl FeedCursor {
    /// The cursor before every entry: read from here to get the whole feed.
    pub const ZERO: Self = Self(0);

    /// Wraps a raw cursor value.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw cursor value (what a reader persists).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The cursor after this one.
    pub(crate) const fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The big-endian key of this cursor in an ordered key-value store.
    pub(crate) const fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Parses a big-endian cursor key.
    pub(crate) fn from_key(key: &[u8]) -> Result<Self, StoreError> {
        let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::CorruptEntry {
            what: "feed key",
            len: key.len(),
        })?;
        Ok(Self(u64::from_be_bytes(bytes)))
    }
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The latest voucher of one channel, with the facts the settlement daemon acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    /// This entry's position in the feed.
    pub cursor: FeedCursor,
    /// The channel.
    pub channel_id: ChannelId,
    /// The highest accepted voucher amount.
    pub cumulative_amount: u128,
    /// Its signature (`r ‖ s ‖ v`), all zero if the channel has no voucher yet.
    pub signature: [u8; SIGNATURE_LEN],
    /// The channel status when the entry was written.
    pub status: ChannelStatus,
    /// Chain fact: the payer.
    pub payer: Address,
    /// Chain fact: the payee.
    pub payee: Address,
    /// Chain fact: the token.
    pub token: Address,
    /// Chain fact: the authorized voucher signer (zero means the payer signs).
    pub authorized_signer: Address,
    /// Chain fact: the deposit as last seen.
    pub deposit: u128,
    /// Chain fact: the settled amount as last seen.
    pub settled: u128,
    /// Chain fact: unix seconds of a pending close request, 0 when none.
    pub close_requested_at: u64,
}

impl FeedEntry {
    /// The entry a store writes for `record` at `cursor`.
    pub const fn from_record(cursor: FeedCursor, record: &ChannelRecord) -> Self {
        Self {
            cursor,
            channel_id: record.channel_id,
            cumulative_amount: record.accepted_cumulative,
            signature: record.accepted_signature,
            status: record.status,
            payer: record.payer,
            payee: record.payee,
            token: record.token,
            authorized_signer: record.authorized_signer,
            deposit: record.deposit,
            settled: record.settled,
            close_requested_at: record.close_requested_at,
        }
    }
}

/// One page of the feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedPage {
    /// Entries in ascending cursor order.
    pub entries: Vec<FeedEntry>,
    /// Where to continue reading. Never lower than the cursor the page was read after.
    pub next: FeedCursor,
}

/// Whether a record change publishes the channel to the feed: its accepted voucher changed, or
/// it entered `Closing` or `Closed`.
pub(crate) fn publishes(old: Option<&ChannelRecord>, new: &ChannelRecord) -> bool {
    let (amount, signature, status) = old
        .map_or((0, [0; SIGNATURE_LEN], ChannelStatus::Opening), |old| {
            (old.accepted_cumulative, old.accepted_signature, old.status)
        });
    new.accepted_cumulative != amount
        || new.accepted_signature != signature
        || (new.status != status
            && matches!(new.status, ChannelStatus::Closing | ChannelStatus::Closed))
}

/// Wakes a feed reader when durable entries past a cursor exist. Obtained from
/// [`ChannelStore::subscribe_feed`](crate::store::ChannelStore::subscribe_feed).
#[derive(Debug)]
pub struct FeedSubscription {
    receiver: Option<tokio::sync::watch::Receiver<Watermark>>,
    latest: FeedCursor,
}

impl FeedSubscription {
    pub(crate) fn new(receiver: tokio::sync::watch::Receiver<Watermark>) -> Self {
        let latest = receiver.borrow().durable_cursor;
        Self {
            receiver: Some(receiver),
            latest,
        }
    }

    /// The highest durable cursor seen so far.
    pub fn latest(&self) -> FeedCursor {
        self.receiver
            .as_ref()
            .map_or(self.latest, |receiver| receiver.borrow().durable_cursor)
    }

    /// Waits until the feed holds a durable entry beyond `cursor` and returns the highest
    /// durable cursor, or `None` once the store has shut down.
    pub async fn wait_beyond(&mut self, cursor: FeedCursor) -> Option<FeedCursor> {
        let receiver = self.receiver.as_mut()?;
        let mark = receiver
            .wait_for(|mark| mark.durable_cursor > cursor || mark.closed)
            .await
            .map(|mark| *mark);
        let Ok(mark) = mark else {
            self.receiver = None;
            return None;
        };
        self.latest = mark.durable_cursor;
        (mark.durable_cursor > cursor).then_some(mark.durable_cursor)
    }
}

/// Layout of a stored feed value: `version (1) ‖ channel id (32) ‖ cumulative amount (16, BE) ‖
/// signature (65) ‖ status (1)`. The chain facts of an entry come from the channel record when
/// the feed is read.
pub(crate) const FEED_VALUE_LEN: usize = 115;
const FEED_VALUE_VERSION: u8 = 1;

/// The voucher part of a feed entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredVoucher {
    pub(crate) channel_id: ChannelId,
    pub(crate) cumulative_amount: u128,
    pub(crate) signature: [u8; SIGNATURE_LEN],
    pub(crate) status: ChannelStatus,
}

impl StoredVoucher {
    pub(crate) const fn of(record: &ChannelRecord) -> Self {
        Self {
            channel_id: record.channel_id,
            cumulative_amount: record.accepted_cumulative,
            signature: record.accepted_signature,
            status: record.status,
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; FEED_VALUE_LEN] {
        let mut out = [0u8; FEED_VALUE_LEN];
        out[0] = FEED_VALUE_VERSION;
        out[1..33].copy_from_slice(self.channel_id.as_slice());
        out[33..49].copy_from_slice(&self.cumulative_amount.to_be_bytes());
        out[49..114].copy_from_slice(&self.signature);
        out[114] = self.status.to_byte();
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::CorruptEntry {
            what: "feed value",
            len: bytes.len(),
        };
        let bytes: &[u8; FEED_VALUE_LEN] = bytes.try_into().map_err(|_| corrupt())?;
        if bytes[0] != FEED_VALUE_VERSION {
            return Err(corrupt());
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[1..33]);
        let mut amount = [0u8; 16];
        amount.copy_from_slice(&bytes[33..49]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[49..114]);
        Ok(Self {
            channel_id: B256::from(id),
            cumulative_amount: u128::from_be_bytes(amount),
            signature,
            status: ChannelStatus::from_byte(bytes[114]).map_err(|_| corrupt())?,
        })
    }

    /// The full entry: this voucher plus the chain facts of the current record.
    pub(crate) const fn entry(self, cursor: FeedCursor, record: &ChannelRecord) -> FeedEntry {
        FeedEntry {
            cursor,
            channel_id: self.channel_id,
            cumulative_amount: self.cumulative_amount,
            signature: self.signature,
            status: self.status,
            payer: record.payer,
            payee: record.payee,
            token: record.token,
            authorized_signer: record.authorized_signer,
            deposit: record.deposit,
            settled: record.settled,
            close_requested_at: record.close_requested_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ChannelRecord {
        let mut record = ChannelRecord::new(B256::repeat_byte(9));
        record.deposit = 100;
        record.accepted_cumulative = 40;
        record.accepted_signature = [3; SIGNATURE_LEN];
        record.status = ChannelStatus::Open;
        record
    }

    #[test]
    fn stored_voucher_round_trips_and_rejects_bad_bytes() {
        let voucher = StoredVoucher::of(&record());
        let bytes = voucher.to_bytes();
        assert_eq!(StoredVoucher::from_bytes(&bytes).expect("decodes"), voucher);
        assert!(StoredVoucher::from_bytes(&bytes[..114]).is_err());
        let mut bad = bytes;
        bad[0] = 2;
        assert!(StoredVoucher::from_bytes(&bad).is_err());
        let mut bad = bytes;
        bad[114] = 9;
        assert!(StoredVoucher::from_bytes(&bad).is_err());
    }

    #[test]
    fn publishes_on_voucher_change_or_closing() {
        let old = record();
        assert!(publishes(None, &old), "a new channel with a voucher");
        assert!(
            !publishes(None, &ChannelRecord::new(old.channel_id)),
            "an empty new channel"
        );
        let mut same = old;
        same.spent = 10;
        same.deposit = 200;
        same.status = ChannelStatus::Open;
        assert!(
            !publishes(Some(&old), &same),
            "charges and chain facts do not publish"
        );
        let mut raised = old;
        raised.accepted_cumulative = 41;
        assert!(publishes(Some(&old), &raised));
        let mut closing = old;
        closing.status = ChannelStatus::Closing;
        assert!(publishes(Some(&old), &closing));
        let mut reopened = closing;
        reopened.status = ChannelStatus::Open;
        assert!(!publishes(Some(&closing), &reopened));
    }

    #[test]
    fn cursor_keys_sort_like_cursors() {
        let keys: Vec<[u8; 8]> = [1u64, 255, 256, 70_000]
            .map(|c| FeedCursor::new(c).to_key())
            .to_vec();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(
            FeedCursor::from_key(&keys[2]).expect("8 bytes"),
            FeedCursor::new(256)
        );
        assert!(FeedCursor::from_key(&[1, 2, 3]).is_err());
    }
}
