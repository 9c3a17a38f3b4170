//! A real anvil chain with a [`TestToken`] and a [`SluiceEscrow`] deployed, and [`Payer`]s that
//! build payer-signed raw transactions (`approve`, `open`, `topUp`, `requestClose`) the way a
//! client would hand them to the engine.

use std::time::Duration;

use alloy::{
    consensus::{SignableTransaction, TxEip1559, TxEnvelope},
    eips::eip2718::Encodable2718,
    network::EthereumWallet,
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, B256, Bytes, TxKind, U256, keccak256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{SolCall, SolValue},
};
use sluice_contracts::{
    EscrowConfig, SluiceEscrow, TestToken, anvil_binary, deploy_escrow, deploy_test_token,
};
use sluice_engine::chain::{RpcChainConfig, RpcUrl};

/// Anvil's chain id (its default; set explicitly so tests can rely on it).
pub const CHAIN_ID: u64 = 31_337;

/// Gas limit of every payer transaction. Fixed, so that a transaction that will revert is still
/// signed and mined (an estimate would refuse it), and an `open` signed before its `approve` is
/// mined needs no estimate.
pub const PAYER_GAS_LIMIT: u64 = 400_000;

/// 10 gwei: above anvil's base fee for any test's length.
const MAX_FEE_PER_GAS: u128 = 10_000_000_000;
const MAX_PRIORITY_FEE_PER_GAS: u128 = 1_000_000_000;

/// A running anvil with the escrow and a 6-decimals test token, both deployed by account #0.
/// Anvil is killed when this is dropped.
pub struct TestChain {
    anvil: AnvilInstance,
    deployer: DynProvider,
    /// The escrow address.
    pub escrow: Address,
    /// The test token address (anyone may mint).
    pub token: Address,
}

impl TestChain {
    /// Spawns anvil (the pinned binary, see `sluice_contracts::anvil_binary`) and deploys.
    pub async fn start() -> Self {
        let path = anvil_binary().unwrap_or_else(|e| panic!("{e}"));
        let anvil = Anvil::new()
            .path(path)
            .chain_id(CHAIN_ID)
            .try_spawn()
            .expect("anvil starts");
        let deployer = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer_of(&anvil, 0)))
            .connect_http(anvil.endpoint_url())
            .erased();
        let token = deploy_test_token(deployer.clone(), "Test USD", "TUSD", 6)
            .await
            .expect("token deploys");
        let escrow = deploy_escrow(deployer.clone(), &EscrowConfig::default())
            .await
            .expect("escrow deploys");
        Self {
            escrow: *escrow.address(),
            token: *token.address(),
            anvil,
            deployer,
        }
    }

    /// The node's JSON-RPC endpoint.
    pub fn rpc_url(&self) -> RpcUrl {
        self.anvil.endpoint_url()
    }

    /// The node's `host:port`, for proxies.
    pub fn rpc_addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.anvil.port())
            .parse()
            .expect("socket address")
    }

    /// A client configuration for this chain, tuned for tests: short receipt polls and backoff.
    pub fn config(&self) -> RpcChainConfig {
        self.config_for(self.rpc_url())
    }

    /// [`Self::config`] pointed at another endpoint (a proxy in front of this chain).
    pub fn config_for(&self, rpc_url: RpcUrl) -> RpcChainConfig {
        let mut config = RpcChainConfig::new(rpc_url, self.escrow, CHAIN_ID);
        config.request_timeout = Duration::from_secs(5);
        config.receipt_timeout = Duration::from_secs(10);
        config.receipt_poll_interval = Duration::from_millis(20);
        config.initial_backoff = Duration::from_millis(5);
        config.max_backoff = Duration::from_millis(50);
        config
    }

    /// Anvil's prefunded account `index` (10,000 ETH each; #0 deployed the contracts).
    pub fn account(&self, index: usize) -> PrivateKeySigner {
        signer_of(&self.anvil, index)
    }

    /// Mints `amount` test tokens to `to` (sent by the deployer) and waits for the receipt.
    pub async fn mint(&self, to: Address, amount: u128) {
        let receipt = TestToken::new(self.token, &self.deployer)
            .mint(to, U256::from(amount))
            .send()
            .await
            .expect("mint accepted")
            .get_receipt()
            .await
            .expect("mint receipt");
        assert!(receipt.status(), "mint succeeded");
    }

    /// The token balance of `owner`.
    pub async fn balance(&self, owner: Address) -> u128 {
        TestToken::new(self.token, &self.deployer)
            .balanceOf(owner)
            .call()
            .await
            .expect("balanceOf")
            .to::<u128>()
    }

    /// Account `index` as a payer holding `tokens` freshly minted test tokens, its nonce read
    /// from the chain.
    pub async fn payer(&self, index: usize, tokens: u128) -> Payer {
        let signer = self.account(index);
        if tokens > 0 {
            self.mint(signer.address(), tokens).await;
        }
        let nonce = self
            .deployer
            .get_transaction_count(signer.address())
            .pending()
            .await
            .expect("nonce");
        Payer {
            signer,
            nonce,
            chain_id: CHAIN_ID,
            escrow: self.escrow,
            token: self.token,
        }
    }

    /// The v1 channel id of a channel this payer would open (the escrow's formula).
    pub fn channel_id(
        &self,
        payer: Address,
        payee: Address,
        salt: B256,
        authorized_signer: Address,
    ) -> B256 {
        keccak256(
            (
                payer,
                payee,
                self.token,
                salt,
                authorized_signer,
                self.escrow,
                U256::from(CHAIN_ID),
            )
                .abi_encode(),
        )
    }
}

fn signer_of(anvil: &AnvilInstance, index: usize) -> PrivateKeySigner {
    let key = anvil.nth_key(index).expect("anvil has this account");
    PrivateKeySigner::from_slice(&key.to_bytes()).expect("anvil key")
}

/// A payer that signs EIP-1559 transactions locally with consecutive nonces. Submit them in
/// the order they were built.
pub struct Payer {
    /// The payer's key.
    pub signer: PrivateKeySigner,
    nonce: u64,
    chain_id: u64,
    escrow: Address,
    token: Address,
}

impl Payer {
    /// The payer's address (`msg.sender` of its transactions).
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The nonce the next transaction will use.
    pub fn next_nonce(&self) -> u64 {
        self.nonce
    }

    /// Signs a call of `to` with `input` at the next nonce and returns the EIP-2718 bytes
    /// (what `eth_sendRawTransaction` takes).
    pub fn sign_call(&mut self, to: Address, input: Vec<u8>) -> Bytes {
        let raw = self.sign_call_at(self.nonce, self.chain_id, to, input);
        self.nonce += 1;
        raw
    }

    /// Signs a call with an explicit nonce and chain id, leaving the nonce counter alone (for
    /// conflicting or foreign-chain transactions).
    pub fn sign_call_at(&self, nonce: u64, chain_id: u64, to: Address, input: Vec<u8>) -> Bytes {
        let tx = TxEip1559 {
            chain_id,
            nonce,
            gas_limit: PAYER_GAS_LIMIT,
            max_fee_per_gas: MAX_FEE_PER_GAS,
            max_priority_fee_per_gas: MAX_PRIORITY_FEE_PER_GAS,
            to: TxKind::Call(to),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.into(),
        };
        let signature = self
            .signer
            .sign_hash_sync(&tx.signature_hash())
            .expect("local signing");
        TxEnvelope::from(tx.into_signed(signature))
            .encoded_2718()
            .into()
    }

    /// `token.approve(escrow, amount)`.
    pub fn approve(&mut self, amount: u128) -> Bytes {
        let call = TestToken::approveCall {
            spender: self.escrow,
            amount: U256::from(amount),
        };
        self.sign_call(self.token, call.abi_encode())
    }

    /// `escrow.open(payee, token, deposit, salt, authorizedSigner)`; returns the raw
    /// transaction and the channel id it opens.
    pub fn open(
        &mut self,
        payee: Address,
        deposit: u128,
        salt: B256,
        authorized_signer: Address,
    ) -> (Bytes, B256) {
        let channel_id = keccak256(
            (
                self.address(),
                payee,
                self.token,
                salt,
                authorized_signer,
                self.escrow,
                U256::from(self.chain_id),
            )
                .abi_encode(),
        );
        let call = SluiceEscrow::openCall {
            payee,
            token: self.token,
            deposit,
            salt,
            authorizedSigner: authorized_signer,
        };
        (self.sign_call(self.escrow, call.abi_encode()), channel_id)
    }

    /// `escrow.topUp(channelId, additionalDeposit)`.
    pub fn top_up(&mut self, channel_id: B256, additional: u128) -> Bytes {
        let call = SluiceEscrow::topUpCall {
            channelId: channel_id,
            additionalDeposit: U256::from(additional),
        };
        self.sign_call(self.escrow, call.abi_encode())
    }

    /// `escrow.requestClose(channelId)`.
    pub fn request_close(&mut self, channel_id: B256) -> Bytes {
        let call = SluiceEscrow::requestCloseCall {
            channelId: channel_id,
        };
        self.sign_call(self.escrow, call.abi_encode())
    }
}
