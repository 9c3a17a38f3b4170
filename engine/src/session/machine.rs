//! The per-channel transitions: pure functions from the stored record (and chain facts, and
//! `now`) to the next record or a [`SessionError`].
//!
//! They are what the engine's store-update closures call, so each is deterministic in its
//! arguments and can run any number of times; none checks a signature (the caller verifies
//! before it calls them, see [`precheck_voucher`] and [`precheck_close`]).

use alloy_primitives::Address;
use sluice_voucher::{
    AcceptancePolicy, ChannelView, Decision, RejectReason, VoucherSignature, decide,
    expected_signer,
};

use super::{DecodedOpen, DecodedTopUp, SessionError, merge_chain_facts};
use crate::chain::OnChainChannel;
use crate::store::{ChannelId, ChannelRecord, ChannelStatus, SIGNATURE_LEN};

/// A voucher as a credential carries it: the amount and the signature in its canonical
/// 65-byte `r ‖ s ‖ v` form (what the store keeps and the escrow accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoucherClaim {
    /// `cumulativeAmount`.
    pub cumulative_amount: u128,
    /// The signature, `r ‖ s ‖ v` with v = 27/28.
    pub signature: [u8; SIGNATURE_LEN],
}

impl VoucherClaim {
    /// A claim from an amount and a parsed signature (64-byte compact signatures are stored in
    /// their 65-byte form).
    pub fn new(cumulative_amount: u128, signature: &VoucherSignature) -> Self {
        Self {
            cumulative_amount,
            signature: signature.to_bytes65(),
        }
    }
}

/// What an action did with the voucher it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VoucherOutcome {
    /// The voucher raised the accepted amount by `delta`.
    Accepted {
        /// New accepted amount minus the previous one.
        delta: u128,
    },
    /// The engine already holds this amount (or, for open and close, a higher one): nothing
    /// about the voucher changed.
    Retry,
}

/// The result of a transition: the record after the action and whether it must be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transition {
    /// The channel's record after the action.
    pub record: ChannelRecord,
    /// Whether `record` differs from the stored record (and must be written).
    pub write: bool,
    /// What happened to the action's voucher, for actions that carry one.
    pub voucher: Option<VoucherOutcome>,
}

impl Transition {
    fn new(
        stored: Option<&ChannelRecord>,
        record: ChannelRecord,
        voucher: Option<VoucherOutcome>,
    ) -> Self {
        Self {
            write: stored != Some(&record),
            record,
            voucher,
        }
    }
}

/// Whether a voucher's signature must be checked before its transition is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureCheck {
    /// The voucher repeats the stored one byte for byte: no ECDSA is needed.
    Skip,
    /// Verify the signature against this address (the channel's `authorizedSigner` if non-zero,
    /// else its payer; both from chain facts, never from the credential).
    Verify {
        /// The expected signer.
        signer: Address,
    },
}

fn view(record: &ChannelRecord) -> ChannelView {
    ChannelView {
        deposit: record.deposit,
        settled: record.settled,
        accepted_cumulative: record.accepted_cumulative,
        closing: record.close_requested_at != 0,
        finalized: record.finalized,
    }
}

fn finalized(record: &ChannelRecord) -> SessionError {
    SessionError::ChannelFinalized {
        channel: record.channel_id,
        status: record.status,
        finalized: record.finalized,
    }
}

/// Whether a channel takes actions: open in the engine (not `Opening`, `Closing` or `Closed`),
/// not finalized on chain, and, unless `allow_close_request`, without a pending close request.
/// The transitions run this themselves; the facade also runs it before broadcasting a top-up.
pub fn require_open(record: &ChannelRecord, allow_close_request: bool) -> Result<(), SessionError> {
    if record.finalized
        || matches!(
            record.status,
            ChannelStatus::Closing | ChannelStatus::Closed
        )
    {
        return Err(finalized(record));
    }
    if record.status == ChannelStatus::Opening {
        return Err(SessionError::ChannelNotOpen {
            channel: record.channel_id,
            status: record.status,
        });
    }
    if !allow_close_request && record.close_requested_at != 0 {
        return Err(SessionError::ChannelClosing {
            channel: record.channel_id,
            close_requested_at: record.close_requested_at,
        });
    }
    Ok(())
}

fn existing(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
) -> Result<ChannelRecord, SessionError> {
    current
        .copied()
        .ok_or(SessionError::ChannelNotFound { channel: *channel })
}

fn with_chain(
    record: ChannelRecord,
    chain: Option<(&OnChainChannel, u64)>,
) -> Result<ChannelRecord, SessionError> {
    match chain {
        Some((facts, read_at_ms)) => merge_chain_facts(&record, facts, read_at_ms),
        None => Ok(record),
    }
}

/// Makes `claim` the accepted voucher. When the engine holds no voucher yet, whatever the
/// escrow already settled counts as spent: it paid for service the engine never saw (mppx sets
/// `spent = max(spent, settled)` at open for the same reason).
fn take_voucher(record: &mut ChannelRecord, claim: &VoucherClaim) -> VoucherOutcome {
    let delta = claim.cumulative_amount - record.accepted_cumulative;
    if record.accepted_cumulative == 0 {
        record.spent = record
            .spent
            .max(record.settled.min(claim.cumulative_amount));
    }
    record.accepted_cumulative = claim.cumulative_amount;
    record.accepted_signature = claim.signature;
    VoucherOutcome::Accepted { delta }
}

fn rejected(record: &ChannelRecord, reason: RejectReason) -> SessionError {
    SessionError::Rejected {
        channel: record.channel_id,
        reason,
    }
}

/// What an `open` action needs besides the stored record.
#[derive(Debug, Clone, Copy)]
pub struct OpenInput<'a> {
    /// The checked open transaction (see [`decode_open_tx`](super::decode_open_tx)).
    pub open: &'a DecodedOpen,
    /// The escrow's view of the channel, read after the transaction was mined.
    pub chain: &'a OnChainChannel,
    /// When `chain` was read (unix ms).
    pub chain_read_at_ms: u64,
    /// The initial voucher; its signature was verified against
    /// [`DecodedOpen::expected_signer`].
    pub voucher: VoucherClaim,
    /// Unix ms.
    pub now_ms: u64,
}

/// `open`: the escrow's channel must exist, be alive, have no pending close request and have
/// the parties the open transaction named; then the initial voucher is taken.
///
/// A repeated open (a client retrying) refreshes the chain facts and keeps the higher of the
/// stored and the offered voucher, as mppx does; only a voucher above the stored one is judged
/// by the acceptance rule (without the minimum delta). A zero initial voucher is held as "no
/// voucher yet".
pub fn on_open(
    current: Option<&ChannelRecord>,
    input: &OpenInput<'_>,
) -> Result<Transition, SessionError> {
    let open = input.open;
    let base = match current {
        Some(stored) => {
            if stored.finalized
                || matches!(
                    stored.status,
                    ChannelStatus::Closing | ChannelStatus::Closed
                )
            {
                return Err(finalized(stored));
            }
            *stored
        }
        None => {
            let mut fresh = ChannelRecord::new(open.channel_id);
            fresh.payer = open.payer;
            fresh.payee = open.payee;
            fresh.token = open.token;
            fresh.authorized_signer = open.authorized_signer;
            fresh
        }
    };
    if input.chain.finalized {
        return Err(SessionError::ChannelFinalized {
            channel: open.channel_id,
            status: base.status,
            finalized: true,
        });
    }
    // The parties come from the transaction; the escrow must agree (merge_chain_facts refuses
    // any difference), and must know the channel at all.
    let mut next = merge_chain_facts(&base, input.chain, input.chain_read_at_ms)?;
    if next.close_requested_at != 0 {
        return Err(SessionError::ChannelClosing {
            channel: open.channel_id,
            close_requested_at: next.close_requested_at,
        });
    }
    next.status = ChannelStatus::Open;
    let claim = &input.voucher;
    let outcome = if claim.cumulative_amount <= next.accepted_cumulative {
        VoucherOutcome::Retry
    } else {
        let policy = AcceptancePolicy {
            min_voucher_delta: 0,
        };
        match decide(&view(&next), claim.cumulative_amount, &policy) {
            Decision::Accept { .. } => take_voucher(&mut next, claim),
            Decision::IdempotentRetry => VoucherOutcome::Retry,
            Decision::Reject(reason) => return Err(rejected(&next, reason)),
        }
    };
    if current != Some(&next) {
        next.updated_at_ms = input.now_ms;
    }
    Ok(Transition::new(current, next, Some(outcome)))
}

/// `voucher`: the acceptance rule (PROTOCOL.md §3.5) on the stored record, after merging
/// freshly read chain facts if the caller has them (`chain`: the facts and when they were
/// read).
///
/// Refused: an unknown channel (410), a channel closing or closed in the engine or finalized
/// on chain or with a pending close request (410), and every [`RejectReason`]. An amount equal
/// to the accepted one is a [`VoucherOutcome::Retry`] that changes nothing (the stored signature
/// is kept).
pub fn on_voucher(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    claim: &VoucherClaim,
    policy: &AcceptancePolicy,
    chain: Option<(&OnChainChannel, u64)>,
    now_ms: u64,
) -> Result<Transition, SessionError> {
    let stored = existing(current, channel)?;
    let mut next = with_chain(stored, chain)?;
    require_open(&next, false)?;
    let outcome = match decide(&view(&next), claim.cumulative_amount, policy) {
        Decision::Accept { .. } => {
            let outcome = take_voucher(&mut next, claim);
            next.updated_at_ms = now_ms;
            outcome
        }
        Decision::IdempotentRetry => VoucherOutcome::Retry,
        Decision::Reject(reason) => return Err(rejected(&next, reason)),
    };
    Ok(Transition::new(current, next, Some(outcome)))
}

/// Charging: `units × amount` moves from available (`accepted − spent`) to spent.
///
/// Refused on an unknown, not-yet-open, closing, closed or finalized channel, and with
/// [`SessionError::InsufficientBalance`] (naming the cost, what is available, and the
/// cumulative amount a voucher must reach) when the accepted vouchers do not cover it. A
/// pending close request on chain does not stop charges: what is accepted stays claimable
/// during the grace period. Zero units change nothing.
pub fn charge(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    amount: u128,
    units: u64,
    now_ms: u64,
) -> Result<Transition, SessionError> {
    let stored = existing(current, channel)?;
    require_open(&stored, true)?;
    if units == 0 {
        return Ok(Transition::new(current, stored, None));
    }
    let overflow = SessionError::ChargeOverflow {
        channel: *channel,
        amount,
        units,
    };
    let cost = amount
        .checked_mul(u128::from(units))
        .ok_or(overflow.clone())?;
    let available = stored.available();
    if cost > available {
        return Err(SessionError::InsufficientBalance {
            channel: *channel,
            required: cost,
            available,
            required_cumulative: stored.spent.saturating_add(cost),
        });
    }
    let mut next = stored;
    next.units = stored.units.checked_add(units).ok_or(overflow)?;
    next.spent = stored.spent + cost;
    next.updated_at_ms = now_ms;
    Ok(Transition::new(current, next, None))
}

/// The most units of `amount` (at most `max_units`) the channel's accepted vouchers still
/// cover: `min(max_units, (accepted − spent) / amount)`. A zero `amount` covers `max_units`.
pub fn units_covered(record: &ChannelRecord, amount: u128, max_units: u64) -> u64 {
    match record.available().checked_div(amount) {
        Some(covered) => u64::try_from(covered).map_or(max_units, |c| c.min(max_units)),
        None => max_units,
    }
}

/// Releasing: `units × amount` charged but never served goes back from spent to available
/// (the unused part of a metered stream's reservation). `spent` never falls below `settled`
/// (what the escrow paid stays spent); the unit count falls by `units`. Allowed in any status,
/// since it only gives the payer back what it was not served. Refused with
/// [`SessionError::ReleaseExceedsSpent`] if the amount is above what was spent. Zero units
/// change nothing.
pub fn release(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    amount: u128,
    units: u64,
    now_ms: u64,
) -> Result<Transition, SessionError> {
    let stored = existing(current, channel)?;
    if units == 0 {
        return Ok(Transition::new(current, stored, None));
    }
    let released = amount
        .checked_mul(u128::from(units))
        .ok_or(SessionError::ChargeOverflow {
            channel: *channel,
            amount,
            units,
        })?;
    if released > stored.spent {
        return Err(SessionError::ReleaseExceedsSpent {
            channel: *channel,
            released,
            spent: stored.spent,
        });
    }
    let mut next = stored;
    next.spent = (stored.spent - released).max(stored.settled);
    next.units = stored.units.saturating_sub(units);
    next.updated_at_ms = now_ms;
    Ok(Transition::new(current, next, None))
}

/// Checks that a top-up transaction comes from the channel's payer (the escrow reverts
/// otherwise), so a foreign transaction is refused before it is broadcast.
pub fn check_top_up_sender(
    record: &ChannelRecord,
    top_up: &DecodedTopUp,
) -> Result<(), SessionError> {
    if top_up.sender == record.payer {
        Ok(())
    } else {
        Err(SessionError::TopUpNotFromPayer {
            channel: record.channel_id,
            payer: record.payer,
            sender: top_up.sender,
        })
    }
}

/// What a `topUp` action needs besides the stored record.
#[derive(Debug, Clone, Copy)]
pub struct TopUpInput<'a> {
    /// The checked top-up transaction.
    pub top_up: &'a DecodedTopUp,
    /// The escrow's view of the channel, read after the transaction was mined.
    pub chain: &'a OnChainChannel,
    /// When `chain` was read (unix ms).
    pub chain_read_at_ms: u64,
    /// The deposit the engine knew before it broadcast the transaction.
    pub deposit_before: u128,
    /// Unix ms.
    pub now_ms: u64,
}

/// `topUp`: after the transaction was mined, the escrow's deposit must be at least the deposit
/// known before plus the top-up; the new facts (higher deposit, a cancelled close request) are
/// stored.
pub fn on_top_up(
    current: Option<&ChannelRecord>,
    input: &TopUpInput<'_>,
) -> Result<Transition, SessionError> {
    let top_up = input.top_up;
    let stored = existing(current, &top_up.channel_id)?;
    require_open(&stored, true)?;
    check_top_up_sender(&stored, top_up)?;
    let mut next = merge_chain_facts(&stored, input.chain, input.chain_read_at_ms)?;
    if next.finalized {
        return Err(finalized(&next));
    }
    let required = input
        .deposit_before
        .saturating_add(top_up.additional_deposit);
    if input.chain.deposit < required {
        return Err(SessionError::DepositDidNotGrow {
            channel: top_up.channel_id,
            before: input.deposit_before,
            after: input.chain.deposit,
            additional: top_up.additional_deposit,
        });
    }
    if next != stored {
        next.updated_at_ms = input.now_ms;
    }
    Ok(Transition::new(current, next, None))
}

/// `close`: the final voucher must be at least `max(spent, settled)` and at most the deposit;
/// the channel becomes [`ChannelStatus::Closing`] and takes no more vouchers or charges (the
/// settlement daemon closes it on chain with the highest voucher).
///
/// A close voucher above the accepted amount becomes the accepted voucher; one at or below it
/// leaves the stored (higher) voucher in place. A repeated close on a closing channel is a
/// retry if its amount is at most the accepted one, and refused otherwise. A pending close
/// request on chain does not stop a cooperative close.
pub fn on_close(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    claim: &VoucherClaim,
    chain: Option<(&OnChainChannel, u64)>,
    now_ms: u64,
) -> Result<Transition, SessionError> {
    let stored = existing(current, channel)?;
    let mut next = with_chain(stored, chain)?;
    if next.finalized || next.status == ChannelStatus::Closed {
        return Err(finalized(&next));
    }
    if next.status == ChannelStatus::Opening {
        return Err(SessionError::ChannelNotOpen {
            channel: *channel,
            status: next.status,
        });
    }
    let got = claim.cumulative_amount;
    let required = next.spent.max(next.settled);
    if got < required {
        return Err(SessionError::CloseBelowRequired {
            channel: *channel,
            got,
            required,
        });
    }
    if got > next.deposit {
        return Err(rejected(
            &next,
            RejectReason::ExceedsDeposit {
                deposit: next.deposit,
                got,
            },
        ));
    }
    if next.status == ChannelStatus::Closing {
        return if got <= next.accepted_cumulative {
            Ok(Transition::new(current, next, Some(VoucherOutcome::Retry)))
        } else {
            Err(finalized(&next))
        };
    }
    let outcome = if got > next.accepted_cumulative {
        take_voucher(&mut next, claim)
    } else {
        VoucherOutcome::Retry
    };
    next.status = ChannelStatus::Closing;
    next.updated_at_ms = now_ms;
    Ok(Transition::new(current, next, Some(outcome)))
}

fn signature_check(
    stored: &ChannelRecord,
    transition: &Transition,
    claim: &VoucherClaim,
) -> SignatureCheck {
    let same_bytes = stored.has_voucher()
        && stored.accepted_cumulative == claim.cumulative_amount
        && stored.accepted_signature == claim.signature;
    if transition.voucher == Some(VoucherOutcome::Retry) && same_bytes {
        SignatureCheck::Skip
    } else {
        SignatureCheck::Verify {
            signer: expected_signer(stored.payer, stored.authorized_signer),
        }
    }
}

/// The cheap checks a voucher goes through before any ECDSA: the channel's state and the
/// acceptance rule, run on the record as read (without a lock). A voucher these refuse costs no
/// signature check; one that repeats the stored voucher byte for byte needs none
/// ([`SignatureCheck::Skip`]); any other must be verified against the returned signer before
/// [`on_voucher`] applies it (which re-runs the rule on the fresh record).
pub fn precheck_voucher(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    claim: &VoucherClaim,
    policy: &AcceptancePolicy,
    chain: Option<(&OnChainChannel, u64)>,
) -> Result<SignatureCheck, SessionError> {
    let transition = on_voucher(current, channel, claim, policy, chain, 0)?;
    let stored = with_chain(existing(current, channel)?, chain)?;
    Ok(signature_check(&stored, &transition, claim))
}

/// [`precheck_voucher`] for a close voucher (see [`on_close`]).
pub fn precheck_close(
    current: Option<&ChannelRecord>,
    channel: &ChannelId,
    claim: &VoucherClaim,
    chain: Option<(&OnChainChannel, u64)>,
) -> Result<SignatureCheck, SessionError> {
    let transition = on_close(current, channel, claim, chain, 0)?;
    let stored = with_chain(existing(current, channel)?, chain)?;
    Ok(signature_check(&stored, &transition, claim))
}
