//! Merging the escrow's view of a channel into the stored record (the chain-facts cache).
//!
//! When to re-read is [`crate::chain::needs_refresh`]'s call. How a read is folded in differs
//! from [`crate::chain::apply_chain_facts`] on purpose: that one refuses a read that lowers the
//! deposit or the settled amount, and turns a close request into `Closing`; inside the engine two
//! requests may read the chain and then update the store in either order (a voucher's TTL
//! refresh racing a top-up), so a stale read must merge harmlessly rather than fail the request,
//! and `Closing` must keep meaning "the engine took a close voucher" (a top-up cancels a close
//! request on chain, and the channel goes on).

use super::{ChainField, SessionError};
use crate::chain::OnChainChannel;
use crate::store::{ChannelRecord, ChannelStatus};

/// The record with the escrow's facts about the channel, read at `read_at_ms`, merged in.
/// The transitions call it with the facts the facade read.
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
pub fn merge_chain_facts(
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
