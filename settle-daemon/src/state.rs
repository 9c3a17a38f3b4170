//! The daemon's own durable state, in its own sled database (never the engine's).
//!
//! What it keeps, and why:
//! - the **feed cursor**: where to resume `GET /feed`;
//! - the **last processed block**: where to resume escrow event scanning;
//! - the **latest voucher per channel** the feed delivered, so a voucher is never lost once the
//!   cursor has moved past it ([`DaemonState::apply_feed_page`] writes the vouchers and the
//!   cursor in one atomic batch);
//! - per channel, the **transaction submitted** for it (kind, tx hash, nonce, amount), written
//!   *before* the transaction is broadcast, so a restarted daemon finds it and waits for or
//!   replaces it instead of paying twice.
//!
//! Every write is flushed before the call returns. Cursors and block numbers only move forward
//! and stored vouchers only grow; an attempt to go back is a typed error and changes nothing.
//! All keys live in one tree so that one `apply_batch` is atomic.
//!
//! One writer: mutating methods take `&mut self`, and sled locks the directory against a
//! second process.

use std::path::Path;

use alloy_primitives::B256;

use crate::policy::{ChannelId, SIGNATURE_LEN, Voucher};

/// Why reading or writing the daemon's state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled failed (I/O, or the directory is held by another process).
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    /// The database was written by a newer or foreign format.
    #[error("state database format {found} is not the supported format {supported}")]
    Format {
        /// The format found.
        found: u8,
        /// [`FORMAT`].
        supported: u8,
    },
    /// A stored value has the wrong length or version.
    #[error("corrupt {what} entry for key {key}: {len} bytes")]
    Corrupt {
        /// Which kind of entry.
        what: &'static str,
        /// The key, hex.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// The feed cursor would move backwards.
    #[error("feed cursor {proposed} is behind the stored cursor {stored}")]
    CursorRegression {
        /// The stored cursor.
        stored: u64,
        /// The cursor proposed.
        proposed: u64,
    },
    /// The last processed block would move backwards.
    #[error("block {proposed} is behind the last processed block {stored}")]
    BlockRegression {
        /// The stored block.
        stored: u64,
        /// The block proposed.
        proposed: u64,
    },
    /// A submission would carry less than the one already recorded for the channel.
    #[error("submission of {proposed} for channel {channel} is below the recorded {recorded}")]
    SubmissionRegression {
        /// The channel.
        channel: ChannelId,
        /// The amount already recorded.
        recorded: u128,
        /// The amount proposed.
        proposed: u128,
    },
}

/// The on-disk format this code reads and writes.
pub const FORMAT: u8 = 1;

const KEY_FORMAT: &[u8] = b"m/format";
const KEY_CURSOR: &[u8] = b"m/feed_cursor";
const KEY_BLOCK: &[u8] = b"m/last_block";
const PREFIX_VOUCHER: u8 = b'v';
const PREFIX_SUBMISSION: u8 = b's';
const VOUCHER_LEN: usize = 1 + 16 + SIGNATURE_LEN;
const SUBMISSION_LEN: usize = 1 + 1 + 32 + 8 + 16 + 8;

/// Which transaction was sent for a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmissionKind {
    /// An item of a `settleBatch`.
    Settle,
    /// A `close`.
    Close,
}

/// A transaction the daemon submitted (or is about to broadcast) for a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission {
    /// `settleBatch` item or `close`.
    pub kind: SubmissionKind,
    /// The transaction hash (a replacement records its new hash under the same nonce).
    pub tx_hash: B256,
    /// The account nonce the transaction uses.
    pub nonce: u64,
    /// The voucher amount it carries.
    pub amount: u128,
    /// Unix seconds of the (latest) broadcast.
    pub submitted_at: u64,
}

/// The daemon's database.
#[derive(Debug)]
pub struct DaemonState {
    db: sled::Db,
    tree: sled::Tree,
}

impl DaemonState {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = sled::open(path)?;
        let tree = db.open_tree("daemon")?;
        match tree.get(KEY_FORMAT)? {
            None => {
                tree.insert(KEY_FORMAT, &[FORMAT])?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == [FORMAT] => {}
            Some(v) => {
                return Err(StateError::Format {
                    found: v.first().copied().unwrap_or(0),
                    supported: FORMAT,
                });
            }
        }
        Ok(Self { db, tree })
    }

    /// Where to resume the feed (0: from the start).
    pub fn feed_cursor(&self) -> Result<u64, StateError> {
        self.read_u64(KEY_CURSOR, "feed cursor")
    }

    /// The last escrow block fully processed (0: none).
    pub fn last_block(&self) -> Result<u64, StateError> {
        self.read_u64(KEY_BLOCK, "last block")
    }

    /// Records that every event up to `block` is processed. Never moves back.
    pub fn set_last_block(&mut self, block: u64) -> Result<(), StateError> {
        let stored = self.last_block()?;
        if block < stored {
            return Err(StateError::BlockRegression {
                stored,
                proposed: block,
            });
        }
        self.tree.insert(KEY_BLOCK, &block.to_be_bytes())?;
        self.flush()
    }

    /// Stores a feed page's vouchers and moves the cursor to `next`, in one atomic batch.
    /// A voucher not above the stored one for its channel is ignored (vouchers only grow).
    pub fn apply_feed_page(
        &mut self,
        vouchers: &[(ChannelId, Voucher)],
        next: u64,
    ) -> Result<(), StateError> {
        let stored = self.feed_cursor()?;
        if next < stored {
            return Err(StateError::CursorRegression {
                stored,
                proposed: next,
            });
        }
        let mut batch = sled::Batch::default();
        let mut written: Vec<(ChannelId, u128)> = Vec::new();
        for (channel, voucher) in vouchers {
            let current = written
                .iter()
                .rev()
                .find(|(c, _)| c == channel)
                .map(|(_, amount)| *amount)
                .or(self.voucher(channel)?.map(|v| v.amount));
            if current.is_some_and(|amount| amount >= voucher.amount) {
                continue;
            }
            batch.insert(
                &key(PREFIX_VOUCHER, channel)[..],
                &encode_voucher(voucher)[..],
            );
            written.push((*channel, voucher.amount));
        }
        batch.insert(KEY_CURSOR, &next.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// The highest voucher stored for `channel`.
    pub fn voucher(&self, channel: &ChannelId) -> Result<Option<Voucher>, StateError> {
        let key = key(PREFIX_VOUCHER, channel);
        self.tree
            .get(key)?
            .map(|v| decode_voucher(&v).ok_or_else(|| corrupt("voucher", &key, v.len())))
            .transpose()
    }

    /// Records a submission for `channel` before it is broadcast (or its replacement). Refuses
    /// one carrying less than the submission already recorded.
    pub fn record_submission(
        &mut self,
        channel: &ChannelId,
        submission: Submission,
    ) -> Result<(), StateError> {
        if let Some(recorded) = self.submission(channel)?
            && submission.amount < recorded.amount
        {
            return Err(StateError::SubmissionRegression {
                channel: *channel,
                recorded: recorded.amount,
                proposed: submission.amount,
            });
        }
        self.tree.insert(
            key(PREFIX_SUBMISSION, channel),
            &encode_submission(&submission)[..],
        )?;
        self.flush()
    }

    /// The submission recorded for `channel`, if any.
    pub fn submission(&self, channel: &ChannelId) -> Result<Option<Submission>, StateError> {
        let key = key(PREFIX_SUBMISSION, channel);
        self.tree
            .get(key)?
            .map(|v| decode_submission(&v).ok_or_else(|| corrupt("submission", &key, v.len())))
            .transpose()
    }

    /// Forgets `channel`'s submission once it is final on chain (or dropped for good).
    pub fn clear_submission(&mut self, channel: &ChannelId) -> Result<(), StateError> {
        self.tree.remove(key(PREFIX_SUBMISSION, channel))?;
        self.flush()
    }

    /// Every recorded submission, by channel id: what a restarted daemon reconciles first.
    pub fn submissions(&self) -> Result<Vec<(ChannelId, Submission)>, StateError> {
        self.tree
            .scan_prefix([PREFIX_SUBMISSION])
            .map(|item| {
                let (k, v) = item?;
                let channel = (k.len() == 33)
                    .then(|| B256::from_slice(&k[1..]))
                    .ok_or_else(|| corrupt("submission key", &k, k.len()))?;
                let submission =
                    decode_submission(&v).ok_or_else(|| corrupt("submission", &k, v.len()))?;
                Ok((channel, submission))
            })
            .collect()
    }

    fn read_u64(&self, key: &[u8], what: &'static str) -> Result<u64, StateError> {
        match self.tree.get(key)? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(what, key, v.len())),
        }
    }

    fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }
}

fn key(prefix: u8, channel: &ChannelId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = prefix;
    key[1..].copy_from_slice(channel.as_slice());
    key
}

fn corrupt(what: &'static str, key: &[u8], len: usize) -> StateError {
    StateError::Corrupt {
        what,
        key: alloy_primitives::hex::encode(key),
        len,
    }
}

fn encode_voucher(voucher: &Voucher) -> [u8; VOUCHER_LEN] {
    let mut out = [0u8; VOUCHER_LEN];
    out[0] = FORMAT;
    out[1..17].copy_from_slice(&voucher.amount.to_be_bytes());
    out[17..].copy_from_slice(&voucher.signature);
    out
}

fn decode_voucher(bytes: &[u8]) -> Option<Voucher> {
    let bytes: &[u8; VOUCHER_LEN] = bytes.try_into().ok()?;
    if bytes[0] != FORMAT {
        return None;
    }
    Some(Voucher {
        amount: u128::from_be_bytes(bytes[1..17].try_into().ok()?),
        signature: bytes[17..].try_into().ok()?,
    })
}

fn encode_submission(s: &Submission) -> [u8; SUBMISSION_LEN] {
    let mut out = [0u8; SUBMISSION_LEN];
    out[0] = FORMAT;
    out[1] = match s.kind {
        SubmissionKind::Settle => 0,
        SubmissionKind::Close => 1,
    };
    out[2..34].copy_from_slice(s.tx_hash.as_slice());
    out[34..42].copy_from_slice(&s.nonce.to_be_bytes());
    out[42..58].copy_from_slice(&s.amount.to_be_bytes());
    out[58..66].copy_from_slice(&s.submitted_at.to_be_bytes());
    out
}

fn decode_submission(bytes: &[u8]) -> Option<Submission> {
    let bytes: &[u8; SUBMISSION_LEN] = bytes.try_into().ok()?;
    if bytes[0] != FORMAT {
        return None;
    }
    let kind = match bytes[1] {
        0 => SubmissionKind::Settle,
        1 => SubmissionKind::Close,
        _ => return None,
    };
    Some(Submission {
        kind,
        tx_hash: B256::from_slice(&bytes[2..34]),
        nonce: u64::from_be_bytes(bytes[34..42].try_into().ok()?),
        amount: u128::from_be_bytes(bytes[42..58].try_into().ok()?),
        submitted_at: u64::from_be_bytes(bytes[58..66].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests;
