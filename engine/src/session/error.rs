//! The one error type of the session state machine and its RFC 9457 classification.

use alloy_primitives::{Address, B256, U256};
use sluice_voucher::{RejectReason, VoucherError};

use crate::protocol::ProblemKind;
use crate::store::{ChannelId, ChannelStatus};

/// A chain fact of a channel that must agree between two sources (the open transaction, the
/// escrow's `getChannel`, the stored record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainField {
    /// `payer`.
    Payer,
    /// `payee`.
    Payee,
    /// `token`.
    Token,
    /// `authorizedSigner`.
    AuthorizedSigner,
}

impl ChainField {
    /// The field's name as the escrow ABI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Payer => "payer",
            Self::Payee => "payee",
            Self::Token => "token",
            Self::AuthorizedSigner => "authorizedSigner",
        }
    }
}

impl std::fmt::Display for ChainField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the session state machine refuses an action.
///
/// Every refusal leaves the channel's stored record unchanged. Each variant names the values
/// that caused it; [`SessionError::problem_kind`] gives the RFC 9457 problem type mppx answers
/// with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The `transaction` bytes are not a valid EIP-2718 transaction envelope.
    #[error("transaction ({len} bytes) does not decode: {reason}")]
    TxMalformed {
        /// Length of the offered bytes.
        len: usize,
        /// The decoder's complaint.
        reason: String,
    },
    /// The transaction type is not one the engine accepts (legacy, EIP-2930, EIP-1559).
    #[error("transaction type {tx_type} is not accepted (legacy, 1 or 2 only)")]
    TxTypeUnsupported {
        /// The EIP-2718 type byte.
        tx_type: u8,
    },
    /// The transaction is signed for another chain (or, legacy without EIP-155, for none).
    #[error("transaction is for chain {got:?}, expected chain {expected}")]
    TxWrongChain {
        /// The engine's chain id.
        expected: u64,
        /// The transaction's chain id (`None`: a pre-EIP-155 legacy transaction).
        got: Option<u64>,
    },
    /// The transaction does not call the engine's escrow (`None`: it creates a contract).
    #[error("transaction calls {got:?}, expected the escrow {expected}")]
    TxWrongTarget {
        /// The engine's escrow.
        expected: Address,
        /// The transaction's `to`.
        got: Option<Address>,
    },
    /// The calldata does not call the expected escrow function.
    #[error("transaction calldata selector {selector:?} is not `{expected}`")]
    TxWrongFunction {
        /// The escrow function the action needs (`open` or `topUp`).
        expected: &'static str,
        /// The first four calldata bytes, if there are four.
        selector: Option<[u8; 4]>,
    },
    /// The calldata has the right selector but its arguments do not decode strictly.
    #[error("transaction calldata for `{function}` does not decode: {reason}")]
    TxCalldata {
        /// The escrow function.
        function: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The transaction's signature is malformed or no sender can be recovered from it.
    #[error("transaction signature is invalid: {source}")]
    TxSignature {
        /// Why the signature was refused.
        #[source]
        source: VoucherError,
    },
    /// The open transaction pays another payee than the route's recipient.
    #[error("open transaction names payee {got}, the route's recipient is {expected}")]
    PayeeMismatch {
        /// The route's recipient.
        expected: Address,
        /// The payee in the calldata.
        got: Address,
    },
    /// The open transaction deposits another token than the route's currency.
    #[error("open transaction deposits token {got}, the route's currency is {expected}")]
    TokenMismatch {
        /// The route's currency.
        expected: Address,
        /// The token in the calldata.
        got: Address,
    },
    /// The credential's `channelId` is not the id the open transaction creates.
    #[error("credential names channel {claimed}, the open transaction creates {computed}")]
    ChannelIdMismatch {
        /// The payload's `channelId`.
        claimed: ChannelId,
        /// `channel_id_v1` of the transaction's sender and arguments.
        computed: ChannelId,
    },
    /// The top-up transaction adds to another channel than the credential names.
    #[error("credential names channel {claimed}, the topUp transaction funds {in_tx}")]
    TopUpChannelMismatch {
        /// The payload's `channelId`.
        claimed: ChannelId,
        /// The channel id in the calldata.
        in_tx: B256,
    },
    /// The top-up transaction adds another amount than the credential's `additionalDeposit`.
    #[error("credential adds {claimed}, the topUp transaction adds {in_tx}")]
    TopUpAmountMismatch {
        /// The payload's `additionalDeposit`.
        claimed: u128,
        /// The amount in the calldata.
        in_tx: U256,
    },
    /// The top-up transaction is not sent by the channel's payer (the escrow would revert).
    #[error("channel {channel}: topUp is sent by {sender}, the payer is {payer}")]
    TopUpNotFromPayer {
        /// The channel.
        channel: ChannelId,
        /// The channel's payer.
        payer: Address,
        /// The transaction's sender.
        sender: Address,
    },
    /// The channel is unknown (to the store, or, after a read, to the escrow).
    #[error("channel {channel} not found")]
    ChannelNotFound {
        /// The channel.
        channel: ChannelId,
    },
    /// The channel exists but is not open yet (status `Opening`).
    #[error("channel {channel} is {status:?}, not open")]
    ChannelNotOpen {
        /// The channel.
        channel: ChannelId,
        /// Its status.
        status: ChannelStatus,
    },
    /// The channel is finalized on chain, or the engine accepted its close voucher.
    #[error("channel {channel} is closed or closing ({status:?}, finalized: {finalized})")]
    ChannelFinalized {
        /// The channel.
        channel: ChannelId,
        /// Its status in the engine.
        status: ChannelStatus,
        /// Whether the escrow reports it finalized.
        finalized: bool,
    },
    /// The payer requested a close on chain; no new vouchers are taken (mppx: 410).
    #[error("channel {channel} has a pending close request (at {close_requested_at})")]
    ChannelClosing {
        /// The channel.
        channel: ChannelId,
        /// Unix seconds of the request.
        close_requested_at: u64,
    },
    /// The escrow's view of a channel disagrees with the open transaction or the stored record.
    #[error("channel {channel}: {field} is {on_chain} on chain, expected {expected}")]
    ChainFactsMismatch {
        /// The channel.
        channel: ChannelId,
        /// Which fact differs.
        field: ChainField,
        /// What the transaction or the stored record says.
        expected: Address,
        /// What the escrow says.
        on_chain: Address,
    },
    /// After a top-up, the escrow's deposit is not at least the previous deposit plus the
    /// top-up.
    #[error(
        "channel {channel}: deposit is {after} after adding {additional} to {before}, it did not grow"
    )]
    DepositDidNotGrow {
        /// The channel.
        channel: ChannelId,
        /// The deposit the engine knew before broadcasting.
        before: u128,
        /// The deposit the escrow reports after the transaction.
        after: u128,
        /// The amount the transaction adds.
        additional: u128,
    },
    /// The acceptance rule refuses the voucher's amount.
    #[error("channel {channel}: voucher refused: {reason}")]
    Rejected {
        /// The channel.
        channel: ChannelId,
        /// The rule that refused it.
        reason: RejectReason,
    },
    /// A close voucher below what was spent or settled.
    #[error("channel {channel}: close voucher {got} is below the required {required}")]
    CloseBelowRequired {
        /// The channel.
        channel: ChannelId,
        /// The close voucher's amount.
        got: u128,
        /// `max(spent, settled)`.
        required: u128,
    },
    /// The accepted vouchers do not cover the charge.
    #[error("channel {channel}: insufficient balance: requested {required}, available {available}")]
    InsufficientBalance {
        /// The channel.
        channel: ChannelId,
        /// The cost of the charge.
        required: u128,
        /// `accepted − spent` before the charge.
        available: u128,
        /// The cumulative amount a voucher must reach to cover the charge (`spent + required`).
        required_cumulative: u128,
    },
    /// `amount × units` (or the unit count) does not fit the counters.
    #[error("channel {channel}: charging {units} units of {amount} overflows")]
    ChargeOverflow {
        /// The channel.
        channel: ChannelId,
        /// Price per unit.
        amount: u128,
        /// Units requested.
        units: u64,
    },
    /// A release would give back more than the channel has spent (an engine bug: a meter
    /// releases only what it charged).
    #[error("channel {channel}: releasing {released} exceeds the spent amount {spent}")]
    ReleaseExceedsSpent {
        /// The channel.
        channel: ChannelId,
        /// The amount the release would give back (`units × amount`).
        released: u128,
        /// The spent amount before the release.
        spent: u128,
    },
}

impl SessionError {
    /// The RFC 9457 problem type a server answers with (mppx's classification: 410 for a
    /// channel that is gone or closing, 402 for everything the payer can fix).
    pub const fn problem_kind(&self) -> ProblemKind {
        match self {
            Self::ChannelNotFound { .. } | Self::ChannelNotOpen { .. } => {
                ProblemKind::ChannelNotFound
            }
            Self::ChannelFinalized { .. } | Self::ChannelClosing { .. } => {
                ProblemKind::ChannelFinalized
            }
            Self::Rejected { reason, .. } => match reason {
                RejectReason::ChannelFinalized | RejectReason::ChannelClosing => {
                    ProblemKind::ChannelFinalized
                }
                RejectReason::ExceedsDeposit { .. } => ProblemKind::AmountExceedsDeposit,
                RejectReason::DeltaTooSmall { .. } => ProblemKind::DeltaTooSmall,
                RejectReason::AmountNotIncreasing { .. } | RejectReason::NotAboveSettled { .. } => {
                    ProblemKind::VerificationFailed
                }
            },
            Self::InsufficientBalance { .. } | Self::ChargeOverflow { .. } => {
                ProblemKind::InsufficientBalance
            }
            Self::TxMalformed { .. }
            | Self::TxTypeUnsupported { .. }
            | Self::TxWrongChain { .. }
            | Self::TxWrongTarget { .. }
            | Self::TxWrongFunction { .. }
            | Self::TxCalldata { .. }
            | Self::TxSignature { .. }
            | Self::PayeeMismatch { .. }
            | Self::TokenMismatch { .. }
            | Self::ChannelIdMismatch { .. }
            | Self::TopUpChannelMismatch { .. }
            | Self::TopUpAmountMismatch { .. }
            | Self::TopUpNotFromPayer { .. }
            | Self::ChainFactsMismatch { .. }
            | Self::DepositDidNotGrow { .. }
            | Self::CloseBelowRequired { .. } => ProblemKind::VerificationFailed,
            Self::ReleaseExceedsSpent { .. } => ProblemKind::InternalPaymentError,
        }
    }
}
