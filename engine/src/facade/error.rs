//! The facade's one error type and its RFC 9457 classification.

use alloy_primitives::B256;
use sluice_voucher::VoucherError;

use super::Authorized;
use crate::chain::{ChainError, ChainErrorKind};
use crate::protocol::{ProblemKind, ProtocolError};
use crate::session::SessionError;
use crate::store::{ChannelId, StoreError};

/// Everything [`Engine`](super::Engine) can fail with.
///
/// Refusals of a credential (`Protocol`, `Signature`, `Session`, `TxReverted`) never change
/// stored state; `ChargeRefused` reports a valid credential (stored) whose charge was refused. [`EngineError::problem_kind`] is the one classification the HTTP layer renders
/// (mppx's statuses: 402 for what the payer can fix, 410 for a channel that is gone or closing,
/// 400 for a bad request, 500 for the server's own failures).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The credential header, its challenge or its payload is refused (malformed, not issued
    /// here, for another realm or route, expired).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A voucher signature is malformed (length, v, zero or out-of-range scalars, high s) or not
    /// made by the channel's signer.
    #[error("channel {channel}: voucher signature refused: {source}")]
    Signature {
        /// The channel the voucher is for.
        channel: ChannelId,
        /// Why it was refused.
        #[source]
        source: VoucherError,
    },
    /// The session state machine refuses the action (see [`SessionError`]).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The credential was valid and is stored (its voucher accepted, its channel opened), but
    /// the charge that came with it was refused, usually for an insufficient balance.
    #[error("credential accepted, charge refused: {source}")]
    ChargeRefused {
        /// What the credential did (its record is the stored, durable one).
        authorized: Box<Authorized>,
        /// Why the charge was refused.
        #[source]
        source: SessionError,
    },
    /// A payer's `open` or `topUp` transaction was mined but reverted.
    #[error("{action} transaction {tx_hash} reverted on chain")]
    TxReverted {
        /// `open` or `topUp`.
        action: &'static str,
        /// The transaction.
        tx_hash: B256,
    },
    /// The channel store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain client failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The store shut down while a caller waited for a channel to change.
    #[error("the channel store shut down")]
    StoreShutDown,
    /// An `Idempotency-Key` header value is not a valid key.
    #[error("invalid Idempotency-Key ({len} bytes): {reason}")]
    InvalidIdempotencyKey {
        /// Its length in bytes.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `Idempotency-Key` already recorded an outcome for a different request on this
    /// channel.
    #[error("channel {channel}: Idempotency-Key {key:?} was used for a different request")]
    IdempotencyKeyReused {
        /// The channel.
        channel: ChannelId,
        /// The key.
        key: String,
    },
    /// A recorded idempotency outcome could not be read back.
    #[error("channel {channel}: a recorded idempotency outcome is corrupt")]
    CorruptIdempotencyRecord {
        /// The channel.
        channel: ChannelId,
    },
    /// The engine's configuration (or a route's) is invalid.
    #[error("invalid engine configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl EngineError {
    /// The RFC 9457 problem type the HTTP layer answers with.
    pub fn problem_kind(&self) -> ProblemKind {
        match self {
            Self::Protocol(error) => error.problem_kind(),
            Self::Signature { .. } => ProblemKind::InvalidSignature,
            Self::Session(error) | Self::ChargeRefused { source: error, .. } => {
                error.problem_kind()
            }
            Self::TxReverted { .. } => ProblemKind::VerificationFailed,
            // The node refused the payer's transaction (nonce, funds, ...): the payer's to fix.
            Self::Chain(error)
                if matches!(
                    error.kind,
                    ChainErrorKind::Rejected | ChainErrorKind::InvalidTransaction
                ) =>
            {
                ProblemKind::VerificationFailed
            }
            Self::InvalidIdempotencyKey { .. } | Self::IdempotencyKeyReused { .. } => {
                ProblemKind::BadRequest
            }
            Self::Chain(_)
            | Self::Store(_)
            | Self::StoreShutDown
            | Self::InvalidConfig { .. }
            | Self::CorruptIdempotencyRecord { .. } => ProblemKind::InternalPaymentError,
        }
    }

    /// Whether repeating the same request may succeed (a transient store or chain failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_retryable(),
            Self::Chain(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// For an insufficient balance: the cost that was asked and what was available.
    pub fn insufficient_balance(&self) -> Option<(u128, u128)> {
        match self {
            Self::Session(SessionError::InsufficientBalance {
                required,
                available,
                ..
            })
            | Self::ChargeRefused {
                source:
                    SessionError::InsufficientBalance {
                        required,
                        available,
                        ..
                    },
                ..
            } => Some((*required, *available)),
            _ => None,
        }
    }
}
