//! Chain access: what the engine reads from the escrow and the payer-signed transactions it
//! broadcasts.
//!
//! The engine never holds the payee's key: the only transactions it sends are the ones a payer
//! signed (`open`, `topUp`). The escrow is the authority for every [`OnChainChannel`] fact; the
//! engine caches them in the store and refreshes them on open/topUp, on a TTL, and when the
//! settlement daemon reports events.
//!
//! [`ChainClient`] is the seam between the engine facade and the network, so the facade can be
//! driven against a real anvil chain in tests and against a fault-injecting proxy.
//!
//! - [`RpcChain`] implements it over JSON-RPC (alloy, HTTP), with bounded retries for reads and
//!   idempotent broadcasts.
//! - [`RawTransaction`] decodes a payer-signed transaction (hash, signer, target, calldata)
//!   without touching the network, so the facade can check an `open`/`topUp` before broadcasting.
//! - [`needs_refresh`] and [`apply_chain_facts`] are the pure cache policy for the chain facts the
//!   store keeps in each [`ChannelRecord`](crate::store::ChannelRecord).

mod cache;
mod raw_tx;
mod rpc;

use std::future::Future;

use alloy_primitives::{Address, B256, Bytes};

pub use cache::{ChainFactsError, DEFAULT_CHAIN_FACTS_TTL, apply_chain_facts, needs_refresh};
pub use raw_tx::RawTransaction;
pub use rpc::{RpcChain, RpcChainConfig, RpcUrl, classify_contract_error, classify_rpc_error};

/// A channel as the escrow's `getChannel` returns it (same fields, same order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnChainChannel {
    /// The channel was closed (cooperatively or by `withdraw`); it can never move funds again.
    pub finalized: bool,
    /// Unix seconds of a pending `requestClose`, 0 when none is pending.
    pub close_requested_at: u64,
    /// Funds the channel; zero address means the channel does not exist.
    pub payer: Address,
    /// Receives settled amounts.
    pub payee: Address,
    /// The ERC-20 token.
    pub token: Address,
    /// Voucher signer when non-zero, else the payer signs.
    pub authorized_signer: Address,
    /// Total deposited, in token base units.
    pub deposit: u128,
    /// Total already paid to the payee, in token base units.
    pub settled: u128,
}

impl OnChainChannel {
    /// Whether the escrow has a record for this id (a finalized id keeps a tombstone).
    pub fn exists(&self) -> bool {
        self.payer != Address::ZERO || self.finalized
    }
}

/// The outcome of a transaction the engine broadcast and waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxOutcome {
    /// Hash of the mined transaction.
    pub tx_hash: B256,
    /// Block it was mined in.
    pub block_number: u64,
    /// Whether it succeeded (status 1). A reverted transaction is reported, not an error.
    pub success: bool,
}

/// Why a chain call failed, for callers that branch on retryability (never on strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainErrorKind {
    /// Connection refused, reset, timed out, or a 5xx/429 from the RPC: try again.
    Transport,
    /// The RPC answered with an error for this request (bad params, nonce too low, ...).
    Rejected,
    /// The answer could not be decoded (wrong ABI, garbage).
    Decode,
    /// The transaction was not mined within the configured wait.
    Timeout,
    /// The raw transaction bytes are not a valid signed transaction (or are signed for another
    /// chain).
    InvalidTransaction,
    /// The node serves another chain than the one configured (checked at connect).
    WrongChain {
        /// The configured chain id.
        expected: u64,
        /// The node's `eth_chainId`.
        actual: u64,
    },
    /// No contract code at the configured escrow address (checked at connect).
    EscrowMissing {
        /// The configured escrow address.
        escrow: Address,
    },
}

/// An error from the chain client.
#[derive(Debug, thiserror::Error)]
#[error("chain {kind:?} error during {operation}: {message}")]
pub struct ChainError {
    /// Classification used by retry loops.
    pub kind: ChainErrorKind,
    /// What the engine was doing (`getChannel`, `sendRawTransaction`, ...).
    pub operation: &'static str,
    /// The underlying error, rendered for logs.
    pub message: String,
}

impl ChainError {
    /// An error of `kind` raised during `operation`.
    pub fn new(kind: ChainErrorKind, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            message: message.into(),
        }
    }

    /// Whether the same call may succeed if repeated.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ChainErrorKind::Transport | ChainErrorKind::Timeout
        )
    }
}

/// What the engine needs from the chain.
pub trait ChainClient: Send + Sync + 'static {
    /// The chain id the client is connected to.
    fn chain_id(&self) -> u64;

    /// The escrow contract address.
    fn escrow(&self) -> Address;

    /// Reads one channel (`getChannel`).
    fn channel(&self, id: B256) -> impl Future<Output = Result<OnChainChannel, ChainError>> + Send;

    /// Reads many channels in one call (`getChannelsBatch`), in the order given.
    fn channels(
        &self,
        ids: &[B256],
    ) -> impl Future<Output = Result<Vec<OnChainChannel>, ChainError>> + Send;

    /// Broadcasts a payer-signed raw transaction and waits for its receipt.
    /// Broadcasting a transaction that is already known is not an error: the receipt is awaited.
    fn submit_raw(&self, raw: Bytes) -> impl Future<Output = Result<TxOutcome, ChainError>> + Send;
}
