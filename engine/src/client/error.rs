//! [`ClientError`]: everything a payer client reports, with the values involved.

use alloy_primitives::B256;

use crate::chain::ChainError;
use crate::protocol::{ProblemKind, ProtocolError};

/// Which spending cap a refused payment would have broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapScope {
    /// [`PayerConfig::cap_per_channel`](super::PayerConfig::cap_per_channel).
    Channel,
    /// [`PayerConfig::cap_total`](super::PayerConfig::cap_total).
    Client,
}

/// An HTTP exchange with a provider that failed below the payment protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {operation} {url}: {message}")]
pub struct HttpFailure {
    /// What the client was doing (`send`, `read body`, `read stream`, ...).
    pub operation: &'static str,
    /// The URL.
    pub url: String,
    /// The transport's message.
    pub message: String,
    /// Whether it timed out.
    pub timeout: bool,
}

/// Why a payer-client call failed. Nothing is signed or sent after a [`ClientError::CapExceeded`]
/// or a configuration error; the other variants say how far the call got.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The payment would raise the signed cumulative amount above a cap. Checked before
    /// anything is signed, approved or sent.
    #[error("spending cap exceeded ({scope:?}): cap {cap}, the payment would authorize {would_be}")]
    CapExceeded {
        /// Which cap.
        scope: CapScope,
        /// The cap.
        cap: u128,
        /// The cumulative amount (of the channel, or summed over the client's channels) the
        /// payment would have reached.
        would_be: u128,
    },
    /// The server refused with an RFC 9457 problem (after any retries the client could make).
    #[error("server problem {status} {problem_type}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem `type` URI (`https://paymentauth.org/problems/...`).
        problem_type: String,
        /// The problem `detail`.
        detail: String,
    },
    /// The HTTP exchange itself failed (connect, timeout, a broken body).
    #[error(transparent)]
    Http(#[from] HttpFailure),
    /// A chain read or broadcast failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A challenge, receipt or event the server sent does not parse.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The configuration is unusable.
    #[error("invalid payer configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The URL cannot be requested.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A 402 carried no challenge this client can pay (another method, intent, session
    /// protocol, or no `WWW-Authenticate` at all).
    #[error("402 from {url} offers no payable challenge (offered: {offered:?})")]
    NoUsableChallenge {
        /// The URL.
        url: String,
        /// `method/intent` of each challenge offered.
        offered: Vec<String>,
    },
    /// The challenge names another chain, escrow or token than the configured ones.
    #[error("challenge {field} is {got}, but this client pays only on {expected}")]
    UntrustedChallenge {
        /// The field (`chainId`, `escrowContract`, `currency`).
        field: &'static str,
        /// The configured value.
        expected: String,
        /// The challenge's value.
        got: String,
    },
    /// The challenge asks for a price of zero, which no voucher can pay for.
    #[error("challenge asks for a price of zero per unit")]
    ZeroPrice,
    /// A voucher of `required` does not fit the channel's deposit and no top-up policy allows
    /// raising it.
    #[error("channel {channel}: a voucher of {required} does not fit the deposit {deposit}")]
    DepositExhausted {
        /// The channel.
        channel: B256,
        /// Its deposit.
        deposit: u128,
        /// The cumulative amount needed.
        required: u128,
    },
    /// The payer holds less of the token than the deposit (or top-up) needs. Checked before
    /// the `approve` is sent.
    #[error("the payer holds {balance} of token {token}, the deposit needs {required}")]
    InsufficientFunds {
        /// The token.
        token: alloy_primitives::Address,
        /// The payer's balance.
        balance: u128,
        /// What the deposit or top-up needs.
        required: u128,
    },
    /// A transaction the client sent itself (`approve`) reverted.
    #[error("{action} transaction {tx_hash} reverted")]
    TxReverted {
        /// `approve`.
        action: &'static str,
        /// Its hash.
        tx_hash: B256,
    },
    /// The server asked for more than this client owes or has been told.
    #[error("channel {channel}: the server asks for {required}, but at most {owed} is owed")]
    Overcharge {
        /// The channel.
        channel: B256,
        /// The cumulative amount asked for.
        required: u128,
        /// What the client counts as owed (plus one unit).
        owed: u128,
    },
    /// A receipt contradicts what this client signed (`acceptedCumulative` above its highest
    /// voucher, or another channel than the one paid on).
    #[error("receipt for channel {channel} is inconsistent: {reason}")]
    InvalidReceipt {
        /// The channel paid on.
        channel: B256,
        /// What is wrong.
        reason: String,
    },
    /// No channel of this client is open for that origin.
    #[error("no open channel for {origin}")]
    NoChannel {
        /// `scheme://host:port`.
        origin: String,
    },
}

impl ClientError {
    /// The problem kind of a [`ClientError::Problem`] whose type is one of mppx's.
    pub fn problem_kind(&self) -> Option<ProblemKind> {
        match self {
            Self::Problem { problem_type, .. } => ProblemKind::ALL
                .into_iter()
                .find(|kind| kind.type_uri() == *problem_type),
            _ => None,
        }
    }

    /// Whether the same call may succeed if repeated later (transport failures, a 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http(_) => true,
            Self::Chain(error) => error.is_retryable(),
            Self::Problem { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
