//! [`PayerConfig`]: what a payer client needs to know and the limits it keeps.

use std::time::Duration;

use alloy_primitives::{Address, B256};

/// When and by how much the client raises a channel's deposit on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopUpPolicy {
    /// Top up when the deposit left after the next voucher would be below this (base units).
    pub below: u128,
    /// How much each top-up adds (base units; must be > 0).
    pub amount: u128,
}

/// Configuration of a [`PayerClient`](super::PayerClient).
///
/// Amounts are token base units. The escrow, token and chain are **pinned**: the client only
/// answers challenges that name exactly these (as mppx's `escrowContract` pin), so a server
/// cannot make it sign for another contract, token or chain.
#[derive(Clone, PartialEq, Eq)]
pub struct PayerConfig {
    /// JSON-RPC endpoint of the chain (`http://`).
    pub rpc_url: String,
    /// The chain id (EIP-712 domain, transaction chain id, `source` DID).
    pub chain_id: u64,
    /// The escrow contract channels are opened on.
    pub escrow: Address,
    /// The ERC-20 token deposits are made in.
    pub token: Address,
    /// The payer's private key: pays gas for `approve`, signs the `open` and `topUp`
    /// transactions, and signs vouchers unless [`Self::voucher_signer`] is set.
    pub payer_key: B256,
    /// A delegated voucher signer (the channel's `authorizedSigner`); `None`: the payer signs.
    pub voucher_signer: Option<B256>,
    /// Deposit of each new channel.
    pub deposit: u128,
    /// How much a new voucher authorizes beyond what is owed (0 = exactly what is owed). The
    /// server may accept the whole voucher, and on a v1 escrow the payee can claim it all.
    pub sign_ahead: u128,
    /// Automatic top-ups; `None`: a voucher that does not fit the deposit fails.
    pub top_up: Option<TopUpPolicy>,
    /// Hard cap on the cumulative amount signed on any one channel.
    pub cap_per_channel: Option<u128>,
    /// Hard cap on the sum of the cumulative amounts signed on all channels of this client.
    pub cap_total: Option<u128>,
    /// Upper bound of one HTTP exchange with a provider (not applied to a stream's body).
    pub http_timeout: Duration,
    /// The longest a stream may stay silent (between two chunks) before the client gives up.
    pub stream_idle_timeout: Duration,
    /// How many times one request is re-sent after a refusal the client can fix (a fresh
    /// challenge, a voucher overtaken by a concurrent one, a balance to raise).
    pub max_payment_retries: u32,
}

impl std::fmt::Debug for PayerConfig {
    // Keys are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayerConfig")
            .field("rpc_url", &self.rpc_url)
            .field("chain_id", &self.chain_id)
            .field("escrow", &self.escrow)
            .field("token", &self.token)
            .field(
                "voucher_signer",
                &self.voucher_signer.map(|_| "<delegated>"),
            )
            .field("deposit", &self.deposit)
            .field("sign_ahead", &self.sign_ahead)
            .field("top_up", &self.top_up)
            .field("cap_per_channel", &self.cap_per_channel)
            .field("cap_total", &self.cap_total)
            .field("http_timeout", &self.http_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("max_payment_retries", &self.max_payment_retries)
            .finish_non_exhaustive()
    }
}

/// Default deposit of a new channel (base units).
pub const DEFAULT_DEPOSIT: u128 = 1_000_000;
/// Default bound of one HTTP exchange.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of a stream's silence.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default number of re-sends after a fixable refusal.
pub const DEFAULT_MAX_PAYMENT_RETRIES: u32 = 8;

impl PayerConfig {
    /// A configuration with [`DEFAULT_DEPOSIT`], no signing ahead, no top-ups, no caps, the
    /// payer signing its own vouchers.
    pub fn new(
        rpc_url: impl Into<String>,
        chain_id: u64,
        escrow: Address,
        token: Address,
        payer_key: B256,
    ) -> Self {
        Self {
            rpc_url: rpc_url.into(),
            chain_id,
            escrow,
            token,
            payer_key,
            voucher_signer: None,
            deposit: DEFAULT_DEPOSIT,
            sign_ahead: 0,
            top_up: None,
            cap_per_channel: None,
            cap_total: None,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            max_payment_retries: DEFAULT_MAX_PAYMENT_RETRIES,
        }
    }
}
