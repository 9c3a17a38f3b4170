//! The acceptance rule: whether a voucher's amount may raise a channel's accepted total.

use crate::Amount;
use core::fmt;

/// What the acceptance rule needs to know about a channel.
///
/// `deposit`, `settled`, `closing` and `finalized` come from the escrow (the chain is their
/// authority); `accepted_cumulative` is the highest voucher amount the server has accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChannelView {
    /// Tokens locked in the escrow for this channel.
    pub deposit: Amount,
    /// Amount already paid out to the payee on chain.
    pub settled: Amount,
    /// Highest cumulative amount accepted so far (0 before the first voucher).
    pub accepted_cumulative: Amount,
    /// The payer has requested a close on chain (`closeRequestedAt != 0`).
    pub closing: bool,
    /// The channel is closed on chain; no voucher can ever be redeemed.
    pub finalized: bool,
}

/// Server policy for new vouchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AcceptancePolicy {
    /// Smallest increase over the accepted amount a new voucher must carry
    /// (`methodDetails.minVoucherDelta`; 0 accepts any increase).
    pub min_voucher_delta: Amount,
}

/// Why a voucher amount is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The channel is closed on chain.
    ChannelFinalized,
    /// The payer requested a close on chain; no new vouchers are taken.
    ChannelClosing,
    /// The voucher promises more than the channel holds.
    ExceedsDeposit {
        /// The channel's deposit.
        deposit: Amount,
        /// The voucher's cumulative amount.
        got: Amount,
    },
    /// The voucher is below an amount already accepted.
    AmountNotIncreasing {
        /// The accepted cumulative amount.
        accepted: Amount,
        /// The voucher's cumulative amount.
        got: Amount,
    },
    /// The voucher is above the accepted amount but not above what was already settled on
    /// chain, so it is worth nothing.
    NotAboveSettled {
        /// The amount settled on chain.
        settled: Amount,
        /// The voucher's cumulative amount.
        got: Amount,
    },
    /// The increase is below the policy's minimum.
    DeltaTooSmall {
        /// The policy's minimum increase.
        min: Amount,
        /// The voucher's increase over the accepted amount.
        delta: Amount,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ChannelFinalized => f.write_str("channel is finalized"),
            Self::ChannelClosing => f.write_str("channel has a pending close request"),
            Self::ExceedsDeposit { deposit, got } => {
                write!(f, "voucher amount {got} exceeds deposit {deposit}")
            }
            Self::AmountNotIncreasing { accepted, got } => {
                write!(
                    f,
                    "voucher amount {got} is below the accepted amount {accepted}"
                )
            }
            Self::NotAboveSettled { settled, got } => {
                write!(
                    f,
                    "voucher amount {got} is not above the settled amount {settled}"
                )
            }
            Self::DeltaTooSmall { min, delta } => {
                write!(f, "voucher increase {delta} is below the minimum {min}")
            }
        }
    }
}

impl std::error::Error for RejectReason {}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum Decision {
    /// The amount may become the new accepted amount; `delta` is the increase.
    Accept {
        /// New amount minus the accepted amount (always > 0).
        delta: Amount,
    },
    /// The amount equals the accepted amount: a retry of a voucher already taken. Change
    /// nothing and answer as before.
    IdempotentRetry,
    /// The amount is refused.
    Reject(RejectReason),
}

/// The acceptance rule for a voucher of `cumulative_amount` on a channel in state `view`.
///
/// Pure and cheap, so it runs **before** any signature check: a voucher that would be refused
/// costs no ECDSA. The converse does not hold: the caller must verify the signature (see
/// [`verify`](crate::verify)) before applying an [`Decision::Accept`], and on an
/// [`Decision::IdempotentRetry`] it may skip the check only when the signature bytes also equal
/// the stored ones (an equal amount with other bytes must still be verified).
///
/// The rules, in order: a finalized or closing channel takes nothing; the amount must not
/// exceed the deposit; it must not be below the accepted amount; equal is a retry; above the
/// accepted amount it must also be above the settled amount, and the increase must reach
/// `policy.min_voucher_delta`.
///
/// Hence an `Accept` always satisfies `accepted < amount ≤ deposit`: accepting can never make
/// the accepted amount decrease or exceed the deposit.
pub fn decide(
    view: &ChannelView,
    cumulative_amount: Amount,
    policy: &AcceptancePolicy,
) -> Decision {
    let got = cumulative_amount;
    let reject = Decision::Reject;
    if view.finalized {
        return reject(RejectReason::ChannelFinalized);
    }
    if view.closing {
        return reject(RejectReason::ChannelClosing);
    }
    if got > view.deposit {
        return reject(RejectReason::ExceedsDeposit {
            deposit: view.deposit,
            got,
        });
    }
    let accepted = view.accepted_cumulative;
    if got < accepted {
        return reject(RejectReason::AmountNotIncreasing { accepted, got });
    }
    if got == accepted {
        return Decision::IdempotentRetry;
    }
    if got <= view.settled {
        return reject(RejectReason::NotAboveSettled {
            settled: view.settled,
            got,
        });
    }
    let delta = got - accepted;
    if delta < policy.min_voucher_delta {
        return reject(RejectReason::DeltaTooSmall {
            min: policy.min_voucher_delta,
            delta,
        });
    }
    Decision::Accept { delta }
}
