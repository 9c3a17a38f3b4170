//! Transactions: one nonce manager, EIP-1559 signing with the payee's key, record-before-send,
//! confirmations, replacement of stuck transactions, dropped and competing transactions, and
//! receipt parsing.
//!
//! A transaction's life ([`Sender::submit`] then [`Sender::drive`]):
//! 1. the nonce comes from the manager (the account's `pending` count when unknown);
//! 2. it is signed and **recorded** in the state with its nonce, hash, channels, fees and raw
//!    bytes ([`DaemonState::record_tx`]) before anything is broadcast;
//! 3. it is broadcast (retried on transport errors; a rejection for a hash the node knows is a
//!    success);
//! 4. it is polled until one of its attempts has a receipt with `confirmations` confirmations;
//!    meanwhile, if the node no longer knows any attempt (dropped from the pool) the latest is
//!    broadcast again byte for byte; if it is not mined after `replace_after`, a replacement with
//!    the same nonce and fees bumped by at least 12.5% is recorded, then broadcast; if the
//!    account's mined nonce passes it with no receipt of ours, another transaction took the
//!    nonce ([`TxEnd::NonceTaken`]: the caller re-reads the chain and re-plans).
//!
//! A restarted daemon drives every recorded transaction the same way before planning anything
//! new, so a transaction is never forgotten and a nonce never reused for a second payment; the
//! escrow's cumulative amounts make a repeated settlement pay nothing anyway.

use std::time::Duration;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::primitives::{Address, B256, Bytes, TxKind as CallKind, U256};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use sluice_contracts::SluiceEscrow;
use sluice_engine::chain::{ChainError, ChainErrorKind};
use tokio::sync::watch;

use crate::chain::{Fees, Rpc, lock};
use crate::config::SigningKey;
use crate::policy::ChannelId;
use crate::state::{DaemonState, StateError, TxAttempt, TxKind, TxRecord};

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The node failed (after retries).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxEnd {
    /// Mined with enough confirmations.
    Mined(MinedTx),
    /// Another transaction of the account took the nonce; ours will never be mined.
    NonceTaken,
    /// The node refused the transaction and does not know it (e.g. no funds for gas).
    Rejected(String),
    /// Shutdown was requested while waiting; the transaction stays recorded.
    Interrupted,
}

/// A mined transaction's receipt, as the daemon needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MinedTx {
    /// The hash that was mined.
    pub hash: B256,
    /// Its block.
    pub block: u64,
    /// Status 1.
    pub success: bool,
    /// Gas used.
    pub gas_used: u64,
    /// Wei per gas paid.
    pub effective_gas_price: u128,
    /// `Settled` events: channel and new settled amount.
    pub settled: Vec<(ChannelId, u128)>,
    /// `SettleSkipped` events: channel, amount, reason code (the escrow's `SkipReason`).
    pub skipped: Vec<(ChannelId, u128, u8)>,
    /// `ChannelClosed` events: channel and total paid to the payee.
    pub closed: Vec<(ChannelId, u128)>,
}

/// The escrow's `SkipReason` codes.
pub mod skip_reason {
    /// `ChannelNotFound`.
    pub const CHANNEL_NOT_FOUND: u8 = 0;
    /// `ChannelFinalized`.
    pub const CHANNEL_FINALIZED: u8 = 1;
    /// `AmountExceedsDeposit`.
    pub const AMOUNT_EXCEEDS_DEPOSIT: u8 = 2;
    /// `AmountNotIncreasing`.
    pub const AMOUNT_NOT_INCREASING: u8 = 3;
    /// `MalformedSignature`.
    pub const MALFORMED_SIGNATURE: u8 = 4;
    /// `InvalidSignature`.
    pub const INVALID_SIGNATURE: u8 = 5;
}

/// Parses the escrow's events out of a receipt.
pub fn parse_receipt(receipt: &TransactionReceipt, escrow: Address) -> MinedTx {
    let mut mined = MinedTx {
        hash: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or(0),
        success: receipt.status(),
        gas_used: receipt.gas_used,
        effective_gas_price: receipt.effective_gas_price,
        ..MinedTx::default()
    };
    for log in receipt.inner.logs() {
        if log.address() != escrow {
            continue;
        }
        let data = &log.inner.data;
        let Some(topic) = data.topics().first() else {
            continue;
        };
        if *topic == SluiceEscrow::Settled::SIGNATURE_HASH
            && let Ok(e) = SluiceEscrow::Settled::decode_log_data(data)
        {
            mined.settled.push((
                e.channelId,
                u128::try_from(e.newSettled).unwrap_or(u128::MAX),
            ));
        } else if *topic == SluiceEscrow::SettleSkipped::SIGNATURE_HASH
            && let Ok(e) = SluiceEscrow::SettleSkipped::decode_log_data(data)
        {
            mined
                .skipped
                .push((e.channelId, e.cumulativeAmount, e.reason));
        } else if *topic == SluiceEscrow::ChannelClosed::SIGNATURE_HASH
            && let Ok(e) = SluiceEscrow::ChannelClosed::decode_log_data(data)
        {
            mined.closed.push((
                e.channelId,
                u128::try_from(e.settledToPayee).unwrap_or(u128::MAX),
            ));
        }
    }
    mined
}

/// Fees of a replacement: both at least 12.5% above the previous attempt's (rounded up), and
/// no lower than the market's now.
pub fn bumped(previous: &TxAttempt, market: Fees) -> (u128, u128) {
    let bump = |x: u128| x.saturating_add(x.div_ceil(8)).saturating_add(1);
    let tip = bump(previous.max_priority_fee_per_gas).max(market.max_priority_fee_per_gas);
    let max_fee = bump(previous.max_fee_per_gas)
        .max(market.max_fee_per_gas)
        .max(tip);
    (max_fee, tip)
}

/// The fees of a replacement of `previous` ([`bumped`]), or `None` when they would pass the
/// ceiling: the larger of `max_gas_price` (the operator's cap) and twice the market's max fee.
/// A transaction that stays unmined while its fees already cover the market (a halted chain,
/// a pool that does not relay it, a nonce gap from another user of the key) would otherwise
/// be re-priced 12.5% up every `replace_after` without end, and pay that tip once it is mined.
pub fn replacement_fees(
    previous: &TxAttempt,
    market: Fees,
    max_gas_price: u128,
) -> Option<(u128, u128)> {
    let (max_fee, tip) = bumped(previous, market);
    let ceiling = max_gas_price.max(market.max_fee_per_gas.saturating_mul(2));
    (max_fee <= ceiling).then_some((max_fee, tip))
}

/// Timing of [`Sender`].
#[derive(Clone, Copy, Debug)]
pub struct SenderConfig {
    /// Blocks a receipt needs (1: the block it is in).
    pub confirmations: u64,
    /// Receipt polling interval.
    pub poll: Duration,
    /// Replace a transaction not mined after this long.
    pub replace_after: Duration,
    /// Gas limit cap.
    pub max_gas: u64,
    /// The policy's gas price cap (wei per gas): replacements raise fees up to the larger of
    /// it and twice the market's max fee, no further ([`replacement_fees`]).
    pub max_gas_price: u128,
}

/// The payee's only transaction sender: it owns the account's nonce.
#[derive(Debug)]
pub struct Sender {
    rpc: Rpc,
    signer: PrivateKeySigner,
    chain_id: u64,
    config: SenderConfig,
    next_nonce: Option<u64>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Consecutive polls that must see the nonce taken (and no receipt of ours) before
/// [`TxEnd::NonceTaken`] is believed.
const NONCE_TAKEN_POLLS: u32 = 3;

/// What a wait step found.
enum Poll {
    Mined(MinedTx),
    Waiting,
}

impl Sender {
    /// A sender for the account of `key`.
    pub fn new(
        rpc: Rpc,
        key: &SigningKey,
        chain_id: u64,
        config: SenderConfig,
    ) -> Result<Self, TxError> {
        let signer = PrivateKeySigner::from_slice(&key.to_bytes())
            .map_err(|e| TxError::Sign(e.to_string()))?;
        Ok(Self {
            rpc,
            signer,
            chain_id,
            config,
            next_nonce: None,
        })
    }

    /// The payee's address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The chain client.
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    /// Forgets the cached nonce: the next transaction re-reads it from the chain.
    pub fn reset_nonce(&mut self) {
        self.next_nonce = None;
    }

    fn sign(
        &self,
        nonce: u64,
        gas_limit: u64,
        max_fee: u128,
        tip: u128,
        input: &Bytes,
    ) -> Result<TxAttempt, TxError> {
        let tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit,
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: tip,
            to: CallKind::Call(self.rpc.escrow()),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.clone(),
        };
        let signature = self
            .signer
            .sign_hash_sync(&tx.signature_hash())
            .map_err(|e| TxError::Sign(e.to_string()))?;
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        Ok(TxAttempt {
            hash: *envelope.tx_hash(),
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: tip,
            raw: envelope.encoded_2718().into(),
            sent_at: unix_now(),
        })
    }

    /// Signs `input` (a call of the escrow) with the next nonce, records it, broadcasts it and
    /// returns the record (to [`Sender::drive`]), or how it ended at once: the estimate says
    /// the call reverts now (nothing recorded), or the node refused the broadcast while the
    /// nonce is still free (the record is removed again).
    pub async fn submit(
        &mut self,
        state: &std::sync::Mutex<DaemonState>,
        kind: TxKind,
        channels: Vec<(ChannelId, u128)>,
        input: Bytes,
    ) -> Result<Result<TxRecord, TxEnd>, TxError> {
        let nonce = match self.next_nonce {
            Some(nonce) => nonce,
            None => self.rpc.nonce(self.address(), true).await?,
        };
        let fees = self.rpc.fees().await?;
        let estimate = match self.rpc.estimate(self.address(), &input).await {
            Ok(gas) => gas,
            Err(e) if e.kind == ChainErrorKind::Rejected => {
                // The call would revert now (e.g. the channel was closed meanwhile).
                return Ok(Err(TxEnd::Rejected(e.message)));
            }
            Err(e) => return Err(e.into()),
        };
        let gas_limit = estimate
            .saturating_add(estimate / 4)
            .saturating_add(10_000)
            .min(self.config.max_gas.max(estimate));
        let attempt = self.sign(
            nonce,
            gas_limit,
            fees.max_fee_per_gas,
            fees.max_priority_fee_per_gas,
            &input,
        )?;
        let record = TxRecord {
            nonce,
            kind,
            channels,
            gas_limit,
            attempts: vec![attempt.clone()],
        };
        lock(state).record_tx(&record)?;
        self.next_nonce = Some(nonce + 1);
        tracing::info!(nonce, hash = %attempt.hash, ?kind, items = record.channels.len(), gas_limit, "broadcasting");
        match self.rpc.send_raw(attempt.hash, &attempt.raw).await {
            Ok(()) => Ok(Ok(record)),
            Err(e) if e.kind == ChainErrorKind::Rejected => {
                let mined = self.rpc.nonce(self.address(), false).await?;
                if mined > nonce {
                    // The nonce is used: by this transaction (an earlier try went through and
                    // its answer was lost) or by another one. The wait tells which.
                    return Ok(Ok(record));
                }
                // The node refused it, does not know it, and the nonce is free: it never
                // entered the pool, so the record goes (nothing of it can be mined).
                self.next_nonce = None;
                lock(state).finish_tx(&record, &[])?;
                Ok(Err(TxEnd::Rejected(e.message)))
            }
            // Not known to have reached the node: the wait below broadcasts it again.
            Err(e) => {
                tracing::warn!(nonce, error = %e, "broadcast failed; will retry while waiting");
                Ok(Ok(record))
            }
        }
    }

    async fn poll_once(&self, record: &TxRecord) -> Result<Poll, ChainError> {
        for attempt in record.attempts.iter().rev() {
            if let Some(receipt) = self.rpc.receipt(attempt.hash).await? {
                let block = receipt.block_number.unwrap_or(0);
                let head = self.rpc.head().await?;
                if head.saturating_add(1) >= block.saturating_add(self.config.confirmations) {
                    return Ok(Poll::Mined(parse_receipt(&receipt, self.rpc.escrow())));
                }
                return Ok(Poll::Waiting);
            }
        }
        Ok(Poll::Waiting)
    }

    /// Waits for `record` to be mined and confirmed, re-broadcasting it if dropped, replacing
    /// it when stuck, and noticing a nonce taken by another transaction. Chain errors while
    /// waiting are logged and the wait goes on (the record stays); `shutdown` ends the wait
    /// with [`TxEnd::Interrupted`].
    pub async fn drive(
        &mut self,
        state: &std::sync::Mutex<DaemonState>,
        mut record: TxRecord,
        shutdown: &mut watch::Receiver<bool>,
        mut on_event: impl FnMut(&'static str),
    ) -> Result<TxEnd, TxError> {
        // A node may count a transaction in the account's nonce a moment before it serves
        // the receipt (anvil does): a nonce taken by another transaction must be seen on
        // several consecutive polls before it is believed.
        let mut taken_seen = 0u32;
        loop {
            match self.step(state, &mut record, &mut on_event).await {
                Ok(Some(TxEnd::NonceTaken)) if taken_seen < NONCE_TAKEN_POLLS => {
                    taken_seen += 1;
                }
                Ok(Some(end)) => {
                    if !matches!(end, TxEnd::Mined(_)) {
                        self.next_nonce = None;
                    }
                    return Ok(end);
                }
                Ok(None) => taken_seen = 0,
                Err(TxError::Chain(e)) => {
                    on_event("rpc");
                    tracing::warn!(nonce = record.nonce, error = %e, "waiting for the transaction");
                }
                Err(e) => return Err(e),
            }
            if *shutdown.borrow() {
                return Ok(TxEnd::Interrupted);
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.changed() => return Ok(TxEnd::Interrupted),
            }
        }
    }

    async fn step(
        &mut self,
        state: &std::sync::Mutex<DaemonState>,
        record: &mut TxRecord,
        on_event: &mut impl FnMut(&'static str),
    ) -> Result<Option<TxEnd>, TxError> {
        if let Poll::Mined(mined) = self.poll_once(record).await? {
            return Ok(Some(TxEnd::Mined(mined)));
        }
        let mined_nonce = self.rpc.nonce(self.address(), false).await?;
        if mined_nonce > record.nonce {
            // Ours may have been mined between the two reads: look once more.
            if let Poll::Mined(mined) = self.poll_once(record).await? {
                return Ok(Some(TxEnd::Mined(mined)));
            }
            let any_mined = {
                let mut found = false;
                for attempt in &record.attempts {
                    found |= self.rpc.receipt(attempt.hash).await?.is_some();
                }
                found
            };
            if !any_mined {
                return Ok(Some(TxEnd::NonceTaken));
            }
            return Ok(None);
        }
        let Some(last) = record.attempts.last().cloned() else {
            return Ok(Some(TxEnd::NonceTaken));
        };
        let mut known = false;
        for attempt in record.attempts.iter().rev() {
            if self.rpc.is_known(attempt.hash).await? {
                known = true;
                break;
            }
        }
        let stuck = unix_now().saturating_sub(last.sent_at) >= self.config.replace_after.as_secs();
        let replacement = if stuck {
            let market = self.rpc.fees().await?;
            let fees = replacement_fees(&last, market, self.config.max_gas_price);
            if fees.is_none() {
                tracing::debug!(
                    nonce = record.nonce,
                    hash = %last.hash,
                    max_fee = last.max_fee_per_gas,
                    "not mined, but its fees are at the ceiling: waiting, not re-pricing"
                );
            }
            fees
        } else {
            None
        };
        if let Some((max_fee, tip)) = replacement {
            let input = decode_input(&last.raw).ok_or_else(|| {
                TxError::Sign(format!(
                    "recorded transaction {} does not decode",
                    last.hash
                ))
            })?;
            let attempt = self.sign(record.nonce, record.gas_limit, max_fee, tip, &input)?;
            record.attempts.push(attempt.clone());
            lock(state).record_tx(record)?;
            on_event("replaced");
            tracing::info!(nonce = record.nonce, old = %last.hash, new = %attempt.hash, max_fee, tip, "replacing a stuck transaction");
            if let Err(e) = self.rpc.send_raw(attempt.hash, &attempt.raw).await {
                tracing::warn!(nonce = record.nonce, error = %e, "replacement refused");
            }
        } else if !known {
            on_event("rebroadcast");
            tracing::info!(nonce = record.nonce, hash = %last.hash, "transaction unknown to the node; broadcasting it again");
            if let Err(e) = self.rpc.send_raw(last.hash, &last.raw).await {
                tracing::warn!(nonce = record.nonce, error = %e, "re-broadcast refused");
            }
        }
        Ok(None)
    }
}

/// The calldata of a recorded EIP-1559 transaction.
fn decode_input(raw: &Bytes) -> Option<Bytes> {
    use alloy::consensus::Transaction;
    use alloy::eips::eip2718::Decodable2718;
    let envelope = TxEnvelope::decode_2718(&mut raw.as_ref()).ok()?;
    Some(envelope.input().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_bump_both_fees_by_at_least_an_eighth() {
        let previous = TxAttempt {
            hash: B256::ZERO,
            max_fee_per_gas: 1_000,
            max_priority_fee_per_gas: 100,
            raw: Bytes::new(),
            sent_at: 0,
        };
        let calm = Fees {
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
            gas_price: 5,
            block_timestamp: 0,
        };
        let (max_fee, tip) = bumped(&previous, calm);
        assert!(max_fee * 8 >= 1_000 * 9 && tip * 8 >= 100 * 9);
        // A busier market wins.
        let busy = Fees {
            max_fee_per_gas: 5_000,
            max_priority_fee_per_gas: 400,
            gas_price: 3_000,
            block_timestamp: 0,
        };
        assert_eq!(bumped(&previous, busy), (5_000, 400));
        // Tiny fees still move.
        let tiny = TxAttempt {
            max_fee_per_gas: 1,
            max_priority_fee_per_gas: 0,
            ..previous
        };
        let (max_fee, tip) = bumped(&tiny, calm);
        assert!(max_fee > 1 && tip > 0 && max_fee >= tip);
    }

    #[test]
    fn replacements_stop_at_the_ceiling_while_the_market_stands_still() {
        // A halted chain: the market does not move and the transaction is never mined. Every
        // replacement is a real bump, none passes the ceiling, and they stop.
        let market = Fees {
            max_fee_per_gas: 3_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            gas_price: 2_000_000_000,
            block_timestamp: 0,
        };
        let cap = 100_000_000_000;
        let mut last = TxAttempt {
            hash: B256::ZERO,
            max_fee_per_gas: market.max_fee_per_gas,
            max_priority_fee_per_gas: market.max_priority_fee_per_gas,
            raw: Bytes::new(),
            sent_at: 0,
        };
        let mut replacements = 0;
        while let Some((max_fee, tip)) = replacement_fees(&last, market, cap) {
            assert!(
                max_fee * 8 >= last.max_fee_per_gas * 9
                    && tip * 8 >= last.max_priority_fee_per_gas * 9
            );
            assert!(max_fee <= cap && tip <= max_fee);
            last.max_fee_per_gas = max_fee;
            last.max_priority_fee_per_gas = tip;
            replacements += 1;
            assert!(replacements < 100, "replacements never stop");
        }
        // 3 gwei → at most 100 gwei in 12.5% steps: about 30 replacements, then none.
        assert!((25..=35).contains(&replacements), "{replacements}");
        // A market above the cap (an urgent close goes out anyway) still gets replacements,
        // up to twice its max fee.
        let busy = Fees {
            max_fee_per_gas: 400_000_000_000,
            max_priority_fee_per_gas: 2_000_000_000,
            ..market
        };
        let (max_fee, _) = replacement_fees(&last, busy, cap).expect("follows the market");
        assert!(max_fee >= busy.max_fee_per_gas && max_fee <= 2 * busy.max_fee_per_gas);
    }

    #[test]
    fn recorded_bytes_give_back_their_calldata() {
        let key = SigningKey::parse(&"11".repeat(32)).unwrap();
        let signer = PrivateKeySigner::from_slice(&key.to_bytes()).unwrap();
        let input = Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]);
        let tx = TxEip1559 {
            chain_id: 1,
            nonce: 3,
            gas_limit: 50_000,
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
            to: CallKind::Call(Address::repeat_byte(5)),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.clone(),
        };
        let sig = signer.sign_hash_sync(&tx.signature_hash()).unwrap();
        let raw: Bytes = TxEnvelope::from(tx.into_signed(sig)).encoded_2718().into();
        assert_eq!(decode_input(&raw), Some(input));
        assert_eq!(decode_input(&Bytes::from_static(&[0x02, 0x01])), None);
    }
}
