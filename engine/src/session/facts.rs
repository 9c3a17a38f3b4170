//! Merging the escrow's view of a channel into the stored record (the chain-facts cache).

use std::time::Duration;

use super::{ChainField, SessionError};
use crate::chain::OnChainChannel;
use crate::store::{ChannelRecord, ChannelStatus};

/// Whether a record's cached chain facts are older than `ttl` at `now_ms` and should be read
/// again before a voucher is judged against them (mppx's `channelStateTtl`).
///
/// A finalized channel never changes again, so it never needs a refresh.
pub fn needs_refresh(record: &ChannelRecord, now_ms: u64, ttl: Duration) -> bool {
    if record.finalized {
        return false;
    }
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(record.chain_checked_at_ms) >= ttl_ms
}

/// The record with the escrow's facts about the channel, read at `read_at_ms`, merged in.
///
/// Merging is safe against stale and reordered reads (two requests may read the chain and
/// then update the store in either order):
/// - `deposit` and `settled` only grow on chain while a channel lives, so the larger value
///   wins; `finalized` is sticky and moves the record to [`ChannelStatus::Closed`];
/// - `closeRequestedAt` can be set and cleared (a top-up cancels a close request), so it is
///   taken only from a read at least as recent as the record's `chain_checked_at_ms`;
/// - the parties never change: a read that names another payer, payee, token or signer than
///   the record is refused ([`SessionError::ChainFactsMismatch`]), and so is a read that says
///   the channel does not exist ([`SessionError::ChannelNotFound`]).
///
/// A finalized channel's escrow record is deleted down to its tombstone, so a finalized read
/// keeps the parties, deposit and settled amount the record already holds.
pub fn apply_chain_facts(
    record: &ChannelRecord,
    chain: &OnChainChannel,
    read_at_ms: u64,
) -> Result<ChannelRecord, SessionError> {
    let channel = record.channel_id;
    let mut next = *record;
    next.chain_checked_at_ms = record.chain_checked_at_ms.max(read_at_ms);
    if chain.finalized || record.finalized {
        next.finalized = true;
        next.status = ChannelStatus::Closed;
        next.close_requested_at = 0;
        return Ok(next);
    }
    if !chain.exists() {
        return Err(SessionError::ChannelNotFound { channel });
    }
    if record.payer.is_zero() {
        next.payer = chain.payer;
        next.payee = chain.payee;
        next.token = chain.token;
        next.authorized_signer = chain.authorized_signer;
    } else {
        for (field, stored, on_chain) in [
            (ChainField::Payer, record.payer, chain.payer),
            (ChainField::Payee, record.payee, chain.payee),
            (ChainField::Token, record.token, chain.token),
            (
                ChainField::AuthorizedSigner,
                record.authorized_signer,
                chain.authorized_signer,
            ),
        ] {
            if stored != on_chain {
                return Err(SessionError::ChainFactsMismatch {
                    channel,
                    field,
                    expected: stored,
                    on_chain,
                });
            }
        }
    }
    next.deposit = record.deposit.max(chain.deposit);
    next.settled = record.settled.max(chain.settled);
    if read_at_ms >= record.chain_checked_at_ms {
        next.close_requested_at = chain.close_requested_at;
    }
    Ok(next)
}
