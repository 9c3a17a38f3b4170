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

use alloy_primitives::{Address, B256, Bytes};
use serde::{Deserialize, Serialize};

use crate::policy::{ChannelId, EngineStatus, SIGNATURE_LEN, Voucher};

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
    /// A transaction record could not be encoded.
    #[error("encoding the transaction record of nonce {nonce}: {reason}")]
    Encode {
        /// The record's nonce.
        nonce: u64,
        /// The encoder's message.
        reason: String,
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

/// How long [`DaemonState::open`] waits for a directory lock that is still held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The on-disk format this code reads and writes.
pub const FORMAT: u8 = 1;

const KEY_FORMAT: &[u8] = b"m/format";
/// The single feed cursor of databases written before the daemon followed several feeds; see
/// [`DaemonState::adopt_legacy_cursor`].
const KEY_CURSOR: &[u8] = b"m/feed_cursor";
/// Per-feed cursors: this prefix and the feed's name.
const KEY_CURSOR_OF: &[u8] = b"m/feed_cursor/";
/// Which feeds delivered a channel: `o`, the channel id, the feed's name (empty value).
const PREFIX_ORIGIN: u8 = b'o';
const KEY_BLOCK: &[u8] = b"m/last_block";
const PREFIX_VOUCHER: u8 = b'v';
const PREFIX_SUBMISSION: u8 = b's';
const PREFIX_CHAIN: u8 = b'c';
const PREFIX_ENGINE: u8 = b'e';
const PREFIX_REFUSED: u8 = b'k';
const PREFIX_TX: u8 = b'x';
const CHAIN_LEN: usize = 1 + 1 + 80 + 32 + 16 + 16 + 8;
const ENGINE_LEN: usize = 1 + 1 + 80 + 16 + 16 + 8 + 8;
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
    /// Opens (or creates) the database at `path`. If its directory lock is still held, waits
    /// up to 2 s: sled 0.34 releases it only after background work that outlives the last
    /// handle, so a reopen right after a close in the same process (an embedding provider
    /// restarting the daemon, a test) would otherwise fail for a moment. Another process
    /// holding the database still gets the error after the wait.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::open(path) {
                Ok(db) => break db,
                // sled 0.34 reports a held lock as an `Other` I/O error named only by this
                // message prefix (the engine's store classifies it the same way).
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    // sled offers no event for the lock's release.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
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

    /// The single, unnamed feed cursor (0: from the start): the layout of databases written
    /// before the daemon followed several feeds, still used by [`DaemonState::apply_feed_page`]
    /// and [`DaemonState::apply_feed_entries`]. The service keeps one cursor per feed
    /// ([`DaemonState::feed_cursor_of`]) and hands this one to its first feed on start
    /// ([`DaemonState::adopt_legacy_cursor`]).
    pub fn feed_cursor(&self) -> Result<u64, StateError> {
        self.read_u64(KEY_CURSOR, "feed cursor")
    }

    /// Where to resume the feed named `feed` (0: from the start).
    pub fn feed_cursor_of(&self, feed: &str) -> Result<u64, StateError> {
        self.read_u64(&cursor_key(feed), "feed cursor")
    }

    /// Hands the single cursor of an older database to the feed named `feed`, in one atomic
    /// write: the named cursor becomes the higher of the two and the single one is removed.
    /// Returns the cursor adopted, `None` when there was none (a new database, or done before).
    pub fn adopt_legacy_cursor(&mut self, feed: &str) -> Result<Option<u64>, StateError> {
        if self.tree.get(KEY_CURSOR)?.is_none() {
            return Ok(None);
        }
        let legacy = self.feed_cursor()?;
        let cursor = legacy.max(self.feed_cursor_of(feed)?);
        let mut batch = sled::Batch::default();
        batch.insert(cursor_key(feed), &cursor.to_be_bytes());
        batch.remove(KEY_CURSOR);
        self.tree.apply_batch(batch)?;
        self.flush()?;
        Ok(Some(legacy))
    }

    /// The names of the feeds that delivered `channel` (the engine nodes that know it), in
    /// name order.
    pub fn channel_feeds(&self, channel: &ChannelId) -> Result<Vec<String>, StateError> {
        self.tree
            .scan_prefix(key(PREFIX_ORIGIN, channel))
            .map(|item| {
                let (k, _) = item?;
                String::from_utf8(k[33..].to_vec()).map_err(|_| corrupt("feed origin", &k, k.len()))
            })
            .collect()
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

/// What the escrow's events (and batch reads) say about one of the payee's channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainFacts {
    /// The payer (zero until `ChannelOpened` or a read was seen).
    pub payer: Address,
    /// The payee.
    pub payee: Address,
    /// The token.
    pub token: Address,
    /// The authorized signer (zero: the payer signs).
    pub authorized_signer: Address,
    /// The salt, from `ChannelOpened` only (a `settleBatch` item needs it).
    pub salt: Option<B256>,
    /// The deposit.
    pub deposit: u128,
    /// The settled amount.
    pub settled: u128,
    /// Unix seconds of a pending close request, 0 when none.
    pub close_requested_at: u64,
    /// Finalized (closed or withdrawn): nothing can move any more.
    pub finalized: bool,
}

/// What the engine's feed last said about a channel (besides the voucher, kept separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineFacts {
    /// The engine's status.
    pub status: EngineStatus,
    /// The payer, as the engine cached it.
    pub payer: Address,
    /// The payee.
    pub payee: Address,
    /// The token.
    pub token: Address,
    /// The authorized signer.
    pub authorized_signer: Address,
    /// The deposit the engine last saw.
    pub deposit: u128,
    /// The settled amount the engine last saw.
    pub settled: u128,
    /// The close request the engine last saw (0: none).
    pub close_requested_at: u64,
    /// Unix seconds since which the daemon holds an unsettled voucher for the channel (0:
    /// none). Set when a voucher arrives, cleared when a settlement of it is confirmed.
    pub first_unsettled_at: u64,
}

/// Which transaction a [`TxRecord`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxKind {
    /// `settleBatch`.
    SettleBatch,
    /// `close`.
    Close,
}

/// One broadcast of a transaction (the first one, or a replacement with higher fees).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxAttempt {
    /// The transaction hash.
    pub hash: B256,
    /// `maxFeePerGas`, wei.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`, wei.
    pub max_priority_fee_per_gas: u128,
    /// The signed EIP-2718 bytes, so a restarted daemon can broadcast exactly the same.
    pub raw: Bytes,
    /// Unix seconds when it was (last) broadcast.
    pub sent_at: u64,
}

/// A transaction the daemon signed, recorded **before** its first broadcast: its nonce, what
/// it carries and every attempt (any of them may be the one mined).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    /// The account nonce.
    pub nonce: u64,
    /// `settleBatch` or `close`.
    pub kind: TxKind,
    /// The channels and the voucher amount each carries, in calldata order.
    pub channels: Vec<(ChannelId, u128)>,
    /// The gas limit.
    pub gas_limit: u64,
    /// Broadcasts, oldest first; never empty once recorded.
    pub attempts: Vec<TxAttempt>,
}

impl DaemonState {
    /// The chain facts stored for `channel`.
    pub fn chain_facts(&self, channel: &ChannelId) -> Result<Option<ChainFacts>, StateError> {
        let key = key(PREFIX_CHAIN, channel);
        self.tree
            .get(key)?
            .map(|v| decode_chain(&v).ok_or_else(|| corrupt("chain facts", &key, v.len())))
            .transpose()
    }

    /// The engine facts stored for `channel`.
    pub fn engine_facts(&self, channel: &ChannelId) -> Result<Option<EngineFacts>, StateError> {
        let key = key(PREFIX_ENGINE, channel);
        self.tree
            .get(key)?
            .map(|v| decode_engine(&v).ok_or_else(|| corrupt("engine facts", &key, v.len())))
            .transpose()
    }

    /// Every channel the feed named, in id order.
    pub fn engine_channels(&self) -> Result<Vec<(ChannelId, EngineFacts)>, StateError> {
        self.tree
            .scan_prefix([PREFIX_ENGINE])
            .map(|item| {
                let (k, v) = item?;
                let channel = channel_of(&k)?;
                let facts =
                    decode_engine(&v).ok_or_else(|| corrupt("engine facts", &k, v.len()))?;
                Ok((channel, facts))
            })
            .collect()
    }

    /// Stores a feed page (vouchers that grow, each channel's engine facts) and moves the
    /// single cursor ([`DaemonState::feed_cursor`]) to `next`, in one atomic batch. `now` (unix
    /// seconds) starts a channel's unsettled age when its voucher is above what is known
    /// settled.
    pub fn apply_feed_entries(
        &mut self,
        entries: &[sluice_engine::http::feed::FeedEntryDto],
        next: u64,
        now: u64,
    ) -> Result<(), StateError> {
        self.apply_entries(KEY_CURSOR, None, entries, next, now)
    }

    /// Stores a page of the feed named `feed` and moves that feed's cursor to `next`, in one
    /// atomic batch, like [`DaemonState::apply_feed_entries`]; it also records that `feed`
    /// delivered each channel ([`DaemonState::channel_feeds`]). A channel another feed
    /// delivered too keeps the most conservative engine facts: the higher voucher (vouchers
    /// only grow), `closing`/`closed` over `open`, the higher deposit, settled amount and
    /// close request.
    pub fn apply_feed_entries_from(
        &mut self,
        feed: &str,
        entries: &[sluice_engine::http::feed::FeedEntryDto],
        next: u64,
        now: u64,
    ) -> Result<(), StateError> {
        self.apply_entries(&cursor_key(feed), Some(feed), entries, next, now)
    }

    fn apply_entries(
        &mut self,
        cursor_key: &[u8],
        feed: Option<&str>,
        entries: &[sluice_engine::http::feed::FeedEntryDto],
        next: u64,
        now: u64,
    ) -> Result<(), StateError> {
        let stored = self.read_u64(cursor_key, "feed cursor")?;
        if next < stored {
            return Err(StateError::CursorRegression {
                stored,
                proposed: next,
            });
        }
        let mut batch = sled::Batch::default();
        let mut vouchers: std::collections::BTreeMap<ChannelId, u128> = Default::default();
        let mut engine: std::collections::BTreeMap<ChannelId, EngineFacts> = Default::default();
        for entry in entries {
            let channel = entry.channel_id;
            let current = match vouchers.get(&channel) {
                Some(amount) => Some(*amount),
                None => self.voucher(&channel)?.map(|v| v.amount),
            };
            let voucher_amount = match entry.signature {
                Some(signature) if current.is_none_or(|a| a < entry.cumulative_amount) => {
                    let voucher = Voucher {
                        amount: entry.cumulative_amount,
                        signature,
                    };
                    batch.insert(
                        &key(PREFIX_VOUCHER, &channel)[..],
                        &encode_voucher(&voucher)[..],
                    );
                    vouchers.insert(channel, voucher.amount);
                    voucher.amount
                }
                _ => current.unwrap_or(0),
            };
            let previous = match engine.get(&channel) {
                Some(facts) => Some(*facts),
                None => self.engine_facts(&channel)?,
            };
            let chain_settled = self.chain_facts(&channel)?.map_or(0, |c| c.settled);
            let settled = entry.settled.max(chain_settled);
            let first_unsettled_at = match previous.map_or(0, |p| p.first_unsettled_at) {
                0 if voucher_amount > settled => now,
                since => since,
            };
            let mut facts = EngineFacts {
                status: match entry.status {
                    sluice_engine::store::ChannelStatus::Opening => EngineStatus::Opening,
                    sluice_engine::store::ChannelStatus::Open => EngineStatus::Open,
                    sluice_engine::store::ChannelStatus::Closing => EngineStatus::Closing,
                    sluice_engine::store::ChannelStatus::Closed => EngineStatus::Closed,
                },
                payer: entry.payer,
                payee: entry.payee,
                token: entry.token,
                authorized_signer: entry.authorized_signer,
                deposit: entry.deposit,
                settled: entry.settled,
                close_requested_at: entry.close_requested_at,
                first_unsettled_at,
            };
            if let Some(feed) = feed {
                let others = self
                    .channel_feeds(&channel)?
                    .into_iter()
                    .any(|other| other != feed);
                if let (true, Some(previous)) = (others, previous) {
                    facts = merge_engine_facts(&previous, &facts);
                }
                batch.insert(origin_key(&channel, feed), &[]);
            }
            batch.insert(
                &key(PREFIX_ENGINE, &channel)[..],
                &encode_engine(&facts)[..],
            );
            engine.insert(channel, facts);
        }
        batch.insert(cursor_key, &next.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// Stores chain facts folded from escrow events (or batch reads) and, if given, moves the
    /// last processed block, in one atomic batch.
    pub fn apply_chain_facts(
        &mut self,
        facts: &[(ChannelId, ChainFacts)],
        last_block: Option<u64>,
    ) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        if let Some(block) = last_block {
            let stored = self.last_block()?;
            if block < stored {
                return Err(StateError::BlockRegression {
                    stored,
                    proposed: block,
                });
            }
            batch.insert(KEY_BLOCK, &block.to_be_bytes());
        }
        for (channel, f) in facts {
            batch.insert(&key(PREFIX_CHAIN, channel)[..], &encode_chain(f)[..]);
        }
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// Restarts the unsettled age of `channel` after a settlement of `settled` confirmed at
    /// `now`: cleared when the stored voucher is covered, otherwise (a higher voucher arrived
    /// while the settlement was in flight) the remaining tail is unsettled since `now`, so the
    /// age threshold still settles it instead of leaving it to the close.
    pub fn settlement_confirmed(
        &mut self,
        channel: &ChannelId,
        settled: u128,
        now: u64,
    ) -> Result<(), StateError> {
        if let Some(mut facts) = self.engine_facts(channel)? {
            let voucher = self.voucher(channel)?.map_or(0, |v| v.amount);
            facts.first_unsettled_at = if voucher > settled { now.max(1) } else { 0 };
            self.tree
                .insert(key(PREFIX_ENGINE, channel), &encode_engine(&facts)[..])?;
            self.flush()?;
        }
        Ok(())
    }

    /// Records that the escrow refused `channel`'s voucher of `amount` for a reason a retry
    /// cannot fix (bad signature): it is not submitted again until a higher voucher arrives.
    pub fn record_refused(&mut self, channel: &ChannelId, amount: u128) -> Result<(), StateError> {
        self.tree
            .insert(key(PREFIX_REFUSED, channel), &amount.to_be_bytes())?;
        self.flush()
    }

    /// The highest voucher amount the escrow refused for `channel`, if any.
    pub fn refused(&self, channel: &ChannelId) -> Result<Option<u128>, StateError> {
        let key = key(PREFIX_REFUSED, channel);
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) => <[u8; 16]>::try_from(v.as_ref())
                .map(|b| Some(u128::from_be_bytes(b)))
                .map_err(|_| corrupt("refused", &key, v.len())),
        }
    }

    /// Records a transaction and, for each channel it carries, its [`Submission`], in one
    /// atomic batch: called before every broadcast (first or replacement).
    pub fn record_tx(&mut self, tx: &TxRecord) -> Result<(), StateError> {
        let attempt = tx.attempts.last().ok_or_else(|| StateError::Encode {
            nonce: tx.nonce,
            reason: "no attempt".into(),
        })?;
        let mut batch = sled::Batch::default();
        for (channel, amount) in &tx.channels {
            if let Some(recorded) = self.submission(channel)?
                && recorded.nonce != tx.nonce
                && recorded.amount > *amount
            {
                return Err(StateError::SubmissionRegression {
                    channel: *channel,
                    recorded: recorded.amount,
                    proposed: *amount,
                });
            }
            let submission = Submission {
                kind: match tx.kind {
                    TxKind::SettleBatch => SubmissionKind::Settle,
                    TxKind::Close => SubmissionKind::Close,
                },
                tx_hash: attempt.hash,
                nonce: tx.nonce,
                amount: *amount,
                submitted_at: attempt.sent_at,
            };
            batch.insert(
                &key(PREFIX_SUBMISSION, channel)[..],
                &encode_submission(&submission)[..],
            );
        }
        let mut value = vec![FORMAT];
        serde_json::to_writer(&mut value, tx).map_err(|e| StateError::Encode {
            nonce: tx.nonce,
            reason: e.to_string(),
        })?;
        batch.insert(&tx_key(tx.nonce)[..], value);
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// Every recorded transaction, by nonce.
    pub fn txs(&self) -> Result<Vec<TxRecord>, StateError> {
        self.tree
            .scan_prefix([PREFIX_TX])
            .map(|item| {
                let (k, v) = item?;
                decode_tx(&v).ok_or_else(|| corrupt("transaction", &k, v.len()))
            })
            .collect()
    }

    /// Forgets a finished transaction (mined and applied, or its nonce taken by another) and
    /// the submissions it holds, and stores `facts` learnt from its receipt, in one batch.
    pub fn finish_tx(
        &mut self,
        tx: &TxRecord,
        facts: &[(ChannelId, ChainFacts)],
    ) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for (channel, _) in &tx.channels {
            if self
                .submission(channel)?
                .is_some_and(|s| s.nonce == tx.nonce)
            {
                batch.remove(&key(PREFIX_SUBMISSION, channel)[..]);
            }
        }
        for (channel, f) in facts {
            batch.insert(&key(PREFIX_CHAIN, channel)[..], &encode_chain(f)[..]);
        }
        batch.remove(&tx_key(tx.nonce)[..]);
        self.tree.apply_batch(batch)?;
        self.flush()
    }
}

fn cursor_key(feed: &str) -> Vec<u8> {
    [KEY_CURSOR_OF, feed.as_bytes()].concat()
}

fn origin_key(channel: &ChannelId, feed: &str) -> Vec<u8> {
    [&key(PREFIX_ORIGIN, channel)[..], feed.as_bytes()].concat()
}

/// How far along a status is; a merge keeps the furthest (a node that saw a close wins).
const fn status_rank(status: EngineStatus) -> u8 {
    match status {
        EngineStatus::Opening => 0,
        EngineStatus::Open => 1,
        EngineStatus::Closing => 2,
        EngineStatus::Closed => 3,
    }
}

/// Two nodes' facts about one channel, merged conservatively: the furthest status, the higher
/// deposit, settled amount and close request; parties from `new`; the earlier unsettled age.
fn merge_engine_facts(previous: &EngineFacts, new: &EngineFacts) -> EngineFacts {
    let first_unsettled_at = match (previous.first_unsettled_at, new.first_unsettled_at) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    };
    EngineFacts {
        status: if status_rank(previous.status) > status_rank(new.status) {
            previous.status
        } else {
            new.status
        },
        deposit: previous.deposit.max(new.deposit),
        settled: previous.settled.max(new.settled),
        close_requested_at: previous.close_requested_at.max(new.close_requested_at),
        first_unsettled_at,
        ..*new
    }
}

fn tx_key(nonce: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = PREFIX_TX;
    key[1..].copy_from_slice(&nonce.to_be_bytes());
    key
}

fn decode_tx(bytes: &[u8]) -> Option<TxRecord> {
    let (format, body) = bytes.split_first()?;
    if *format != FORMAT {
        return None;
    }
    let tx: TxRecord = serde_json::from_slice(body).ok()?;
    (!tx.attempts.is_empty()).then_some(tx)
}

fn channel_of(k: &[u8]) -> Result<ChannelId, StateError> {
    (k.len() == 33)
        .then(|| B256::from_slice(&k[1..]))
        .ok_or_else(|| corrupt("channel key", k, k.len()))
}

fn encode_chain(f: &ChainFacts) -> [u8; CHAIN_LEN] {
    let mut out = [0u8; CHAIN_LEN];
    out[0] = FORMAT;
    out[1] = u8::from(f.salt.is_some()) | u8::from(f.finalized) << 1;
    out[2..22].copy_from_slice(f.payer.as_slice());
    out[22..42].copy_from_slice(f.payee.as_slice());
    out[42..62].copy_from_slice(f.token.as_slice());
    out[62..82].copy_from_slice(f.authorized_signer.as_slice());
    out[82..114].copy_from_slice(f.salt.unwrap_or_default().as_slice());
    out[114..130].copy_from_slice(&f.deposit.to_be_bytes());
    out[130..146].copy_from_slice(&f.settled.to_be_bytes());
    out[146..154].copy_from_slice(&f.close_requested_at.to_be_bytes());
    out
}

fn decode_chain(bytes: &[u8]) -> Option<ChainFacts> {
    let b: &[u8; CHAIN_LEN] = bytes.try_into().ok()?;
    if b[0] != FORMAT || b[1] > 3 {
        return None;
    }
    Some(ChainFacts {
        payer: Address::from_slice(&b[2..22]),
        payee: Address::from_slice(&b[22..42]),
        token: Address::from_slice(&b[42..62]),
        authorized_signer: Address::from_slice(&b[62..82]),
        salt: (b[1] & 1 == 1).then(|| B256::from_slice(&b[82..114])),
        deposit: u128::from_be_bytes(b[114..130].try_into().ok()?),
        settled: u128::from_be_bytes(b[130..146].try_into().ok()?),
        close_requested_at: u64::from_be_bytes(b[146..154].try_into().ok()?),
        finalized: b[1] & 2 == 2,
    })
}

fn encode_engine(f: &EngineFacts) -> [u8; ENGINE_LEN] {
    let mut out = [0u8; ENGINE_LEN];
    out[0] = FORMAT;
    out[1] = match f.status {
        EngineStatus::Opening => 0,
        EngineStatus::Open => 1,
        EngineStatus::Closing => 2,
        EngineStatus::Closed => 3,
    };
    out[2..22].copy_from_slice(f.payer.as_slice());
    out[22..42].copy_from_slice(f.payee.as_slice());
    out[42..62].copy_from_slice(f.token.as_slice());
    out[62..82].copy_from_slice(f.authorized_signer.as_slice());
    out[82..98].copy_from_slice(&f.deposit.to_be_bytes());
    out[98..114].copy_from_slice(&f.settled.to_be_bytes());
    out[114..122].copy_from_slice(&f.close_requested_at.to_be_bytes());
    out[122..130].copy_from_slice(&f.first_unsettled_at.to_be_bytes());
    out
}

fn decode_engine(bytes: &[u8]) -> Option<EngineFacts> {
    let b: &[u8; ENGINE_LEN] = bytes.try_into().ok()?;
    if b[0] != FORMAT {
        return None;
    }
    Some(EngineFacts {
        status: match b[1] {
            0 => EngineStatus::Opening,
            1 => EngineStatus::Open,
            2 => EngineStatus::Closing,
            3 => EngineStatus::Closed,
            _ => return None,
        },
        payer: Address::from_slice(&b[2..22]),
        payee: Address::from_slice(&b[22..42]),
        token: Address::from_slice(&b[42..62]),
        authorized_signer: Address::from_slice(&b[62..82]),
        deposit: u128::from_be_bytes(b[82..98].try_into().ok()?),
        settled: u128::from_be_bytes(b[98..114].try_into().ok()?),
        close_requested_at: u64::from_be_bytes(b[114..122].try_into().ok()?),
        first_unsettled_at: u64::from_be_bytes(b[122..130].try_into().ok()?),
    })
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
