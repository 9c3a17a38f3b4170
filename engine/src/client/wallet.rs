//! The payer's chain side: nonces, fees, and the `approve` / `open` / `topUp` transactions,
//! signed locally (EIP-1559) with the voucher crate's k256 signer.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{Ethereum, TransactionBuilder};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use alloy::transports::http::{Http, reqwest};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use sluice_contracts::SluiceEscrow;
use sluice_voucher::{SigningKey, sign_digest};

use super::ClientError;
use crate::chain::{ChainClient, ChainError, ChainErrorKind, RpcChain, classify_rpc_error};

alloy::sol! {
    /// The ERC-20 functions the payer calls itself.
    interface IErc20Payer {
        function approve(address spender, uint256 amount) external returns (bool);
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// Extra gas over the node's estimate (percent): the open's state may move between estimate and
/// inclusion (another channel's open changes nothing it reads, but the margin is cheap).
const GAS_MARGIN_PERCENT: u64 = 25;

/// The payer's chain access: its own provider for nonces, fees and estimates, and the engine's
/// [`RpcChain`] for the broadcast of its `approve` (wait for the receipt, idempotent retries).
pub(crate) struct Wallet {
    provider: RootProvider<Ethereum>,
    pub(crate) chain: RpcChain,
    key: SigningKey,
    pub(crate) address: Address,
    chain_id: u64,
    escrow: Address,
    token: Address,
}

impl Wallet {
    pub(crate) async fn connect(
        rpc_url: &str,
        chain_id: u64,
        escrow: Address,
        token: Address,
        key: SigningKey,
        address: Address,
    ) -> Result<Self, ClientError> {
        let url: reqwest::Url = rpc_url.parse().map_err(|e| ClientError::InvalidConfig {
            field: "rpc_url",
            reason: format!("{e}"),
        })?;
        let chain = RpcChain::connect(crate::chain::RpcChainConfig::new(
            url.clone(),
            escrow,
            chain_id,
        ))
        .await?;
        let transport = Http::with_client(reqwest::Client::new(), url);
        let is_local = transport.guess_local();
        let provider = RootProvider::new(RpcClient::new(transport, is_local));
        Ok(Self {
            provider,
            chain,
            key,
            address,
            chain_id,
            escrow,
            token,
        })
    }

    async fn nonce(&self) -> Result<u64, ClientError> {
        self.provider
            .get_transaction_count(self.address)
            .pending()
            .await
            .map_err(|e| ClientError::Chain(classify_rpc_error("eth_getTransactionCount", e)))
    }

    /// Signs a call of `to` with `input` at `nonce`. The gas limit is the node's estimate plus
    /// a margin (an `open` is estimated after its `approve` is mined, so a call that would
    /// revert is refused here, before anything is sent to the provider).
    async fn sign_call(
        &self,
        nonce: u64,
        to: Address,
        input: Vec<u8>,
    ) -> Result<Bytes, ClientError> {
        let request = TransactionRequest::default()
            .with_from(self.address)
            .with_to(to)
            .with_input(input.clone());
        let gas = self
            .provider
            .estimate_gas(request)
            .await
            .map_err(|e| ClientError::Chain(classify_rpc_error("eth_estimateGas", e)))?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(|e| ClientError::Chain(classify_rpc_error("eth_feeHistory", e)))?;
        let tx = TxEip1559 {
            chain_id: self.chain_id,
            nonce,
            gas_limit: with_margin(gas),
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(to),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.into(),
        };
        let signature = sign_digest(&tx.signature_hash(), &self.key).to_bytes65();
        let signature = Signature::from_raw_array(&signature).map_err(|e| {
            ClientError::Chain(ChainError::new(
                ChainErrorKind::InvalidTransaction,
                "sign",
                e.to_string(),
            ))
        })?;
        Ok(TxEnvelope::from(tx.into_signed(signature))
            .encoded_2718()
            .into())
    }

    /// Sends `token.approve(escrow, amount)` itself and waits until it is mined, after checking
    /// that the payer holds `amount` (so a deposit it cannot fund costs no transaction).
    pub(crate) async fn approve(&self, amount: u128) -> Result<(), ClientError> {
        let call = IErc20Payer::balanceOfCall {
            owner: self.address,
        };
        let request = TransactionRequest::default()
            .with_to(self.token)
            .with_input(call.abi_encode());
        let output = self
            .provider
            .call(request)
            .await
            .map_err(|e| ClientError::Chain(classify_rpc_error("balanceOf", e)))?;
        let balance = IErc20Payer::balanceOfCall::abi_decode_returns(&output).map_err(|e| {
            ClientError::Chain(ChainError::new(
                ChainErrorKind::Decode,
                "balanceOf",
                e.to_string(),
            ))
        })?;
        if balance < U256::from(amount) {
            return Err(ClientError::InsufficientFunds {
                token: self.token,
                balance: balance.saturating_to(),
                required: amount,
            });
        }
        let nonce = self.nonce().await?;
        let call = IErc20Payer::approveCall {
            spender: self.escrow,
            amount: U256::from(amount),
        };
        let raw = self.sign_call(nonce, self.token, call.abi_encode()).await?;
        let outcome = self.chain.submit_raw(raw).await?;
        if !outcome.success {
            return Err(ClientError::TxReverted {
                action: "approve",
                tx_hash: outcome.tx_hash,
            });
        }
        Ok(())
    }

    /// The signed `escrow.open(payee, token, deposit, salt, authorizedSigner)` at the next
    /// nonce (the server broadcasts it), and the channel id it opens.
    pub(crate) async fn open_tx(
        &self,
        payee: Address,
        deposit: u128,
        salt: B256,
        authorized_signer: Address,
    ) -> Result<(Bytes, B256), ClientError> {
        let channel_id = sluice_voucher::channel_id_v1(
            self.address,
            payee,
            self.token,
            salt,
            authorized_signer,
            self.escrow,
            self.chain_id,
        );
        let call = SluiceEscrow::openCall {
            payee,
            token: self.token,
            deposit,
            salt,
            authorizedSigner: authorized_signer,
        };
        let nonce = self.nonce().await?;
        let raw = self
            .sign_call(nonce, self.escrow, call.abi_encode())
            .await?;
        Ok((raw, *channel_id.as_b256()))
    }

    /// The signed `escrow.topUp(channelId, additional)` at the next nonce.
    pub(crate) async fn top_up_tx(
        &self,
        channel: B256,
        additional: u128,
    ) -> Result<Bytes, ClientError> {
        let call = SluiceEscrow::topUpCall {
            channelId: channel,
            additionalDeposit: U256::from(additional),
        };
        let nonce = self.nonce().await?;
        self.sign_call(nonce, self.escrow, call.abi_encode()).await
    }
}

/// The gas limit for a node's estimate: the estimate plus [`GAS_MARGIN_PERCENT`], saturating
/// (an estimate near `u64::MAX` from a faulty node must not overflow).
fn with_margin(gas: u64) -> u64 {
    let limit = u128::from(gas) * u128::from(100 + GAS_MARGIN_PERCENT) / 100;
    u64::try_from(limit).unwrap_or(u64::MAX)
}

static SALT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh channel salt. It must be unique (a reused salt names an existing channel id), not
/// secret: it mixes the payer, the clock, a process-wide counter and four OS-seeded hasher
/// keys (std's `RandomState`) through keccak-256.
pub(crate) fn random_salt(payer: Address) -> B256 {
    let mut material = Vec::with_capacity(20 + 16 + 8 + 4 + 32);
    material.extend_from_slice(payer.as_slice());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    material.extend_from_slice(&nanos.to_be_bytes());
    material.extend_from_slice(&SALT_COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    material.extend_from_slice(&std::process::id().to_be_bytes());
    for _ in 0..4 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        material.extend_from_slice(&hasher.finish().to_be_bytes());
    }
    keccak256(material)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gas_margin_saturates_on_an_absurd_estimate() {
        assert_eq!(with_margin(100_000), 125_000);
        assert_eq!(with_margin(0), 0);
        // `gas * 25` overflowed (a panic in debug builds) for estimates above u64::MAX / 25.
        assert_eq!(with_margin(u64::MAX / 10), 2_305_843_009_213_693_951);
        assert_eq!(with_margin(u64::MAX), u64::MAX);
    }
}
