//! The local chain: anvil as a child process, the token and the escrow deployed from anvil's
//! first account, funded agents, and the reads the reconciliation needs (balances, channel
//! records, escrow events, receipts).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, Log};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use sluice_contracts::{
    EscrowConfig, ISluiceEscrow, SluiceEscrow, TestToken, anvil_binary, deploy_escrow,
    deploy_test_token,
};

use crate::error::DemoError;
use crate::procs::{self, ChildGuard, Spawn};

/// Anvil's chain id.
pub(crate) const CHAIN_ID: u64 = 31_337;

/// Anvil's first development account (from its default mnemonic): it deploys and mints.
const DEPLOYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Native balance given to every agent and to the payee for gas (100 ETH).
const GAS_MONEY: u128 = 100_000_000_000_000_000_000;

/// The token's decimals (a USD-like token).
pub(crate) const TOKEN_DECIMALS: u8 = 6;

/// A running anvil with the escrow and the token deployed.
pub(crate) struct LocalChain {
    /// Stops anvil on drop.
    _anvil: ChildGuard,
    /// JSON-RPC endpoint.
    pub(crate) rpc_url: String,
    /// Sends as the deployer (mints).
    deployer: DynProvider,
    /// The escrow.
    pub(crate) escrow: Address,
    /// The test token.
    pub(crate) token: Address,
    /// The escrow's close grace period in seconds.
    pub(crate) grace_period: u64,
}

/// One escrow event the reconciliation uses, decoded.
#[derive(Debug, Clone)]
pub(crate) enum EscrowEvent {
    /// `ChannelOpened`.
    Opened {
        /// Channel.
        channel: B256,
        /// Payer.
        payer: Address,
        /// Initial deposit.
        deposit: u128,
    },
    /// `TopUp`.
    TopUp {
        /// Channel.
        channel: B256,
        /// Added deposit.
        amount: u128,
    },
    /// `Settled`.
    Settled {
        /// Channel.
        channel: B256,
        /// Paid to the payee by this settlement.
        delta: u128,
        /// The channel's settled amount after it.
        new_settled: u128,
    },
    /// `ChannelClosed`.
    Closed {
        /// Channel.
        channel: B256,
        /// Total paid to the payee over the channel's life.
        to_payee: u128,
        /// Refunded to the payer.
        to_payer: u128,
    },
    /// `SettleSkipped` (a batch item the escrow refused).
    Skipped,
    /// Any other escrow event (close requests, expiries).
    Other,
}

/// An escrow event with the transaction that emitted it.
#[derive(Debug, Clone)]
pub(crate) struct EventAt {
    /// The transaction.
    pub(crate) tx: B256,
    /// The event.
    pub(crate) event: EscrowEvent,
}

/// A mined transaction's sender and gas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxCost {
    /// Sender.
    pub(crate) from: Address,
    /// Gas used.
    pub(crate) gas_used: u64,
}

impl LocalChain {
    /// Starts anvil (interval mining every `block_time` seconds plus automine, so a
    /// transaction is mined at once and confirmations still accumulate) and deploys.
    pub(crate) async fn start(
        run_dir: &Path,
        block_time: u64,
        grace_period: u64,
    ) -> Result<Self, DemoError> {
        let path = anvil_binary().map_err(|e| DemoError::MissingBinary {
            name: "anvil",
            path: match &e {
                sluice_contracts::ContractsError::AnvilMissing { path } => path.clone(),
                _ => "anvil".into(),
            },
            hint: "run `make tools` at the repository root (or set SLUICE_ANVIL)",
        })?;
        let mut command = Command::new(&path);
        command
            .args(["--port", "0", "--chain-id", &CHAIN_ID.to_string()])
            .args(["--block-time", &block_time.to_string(), "--mixed-mining"])
            .args(["--accounts", "1"]);
        let (anvil, found) = procs::spawn(Spawn {
            name: "anvil",
            command,
            run_dir,
            ready: &["Listening on"],
            timeout: Duration::from_secs(30),
        })
        .await?;
        let rpc_url = format!("http://{}", found[0]);
        let deployer_key: B256 = DEPLOYER_KEY
            .parse()
            .map_err(|e| DemoError::chain("deployer key", e))?;
        let deployer_signer = PrivateKeySigner::from_bytes(&deployer_key)
            .map_err(|e| DemoError::chain("deployer key", e))?;
        let url = rpc_url
            .parse()
            .map_err(|e| DemoError::chain("rpc url", e))?;
        let deployer = ProviderBuilder::new()
            .wallet(EthereumWallet::from(deployer_signer))
            .connect_http(url)
            .erased();
        let token = deploy_test_token(deployer.clone(), "Demo USD", "DUSD", TOKEN_DECIMALS)
            .await
            .map_err(|e| DemoError::chain("deploying the token", e))?;
        let config = EscrowConfig {
            close_grace_period: grace_period,
            ..EscrowConfig::default()
        };
        let escrow = deploy_escrow(deployer.clone(), &config)
            .await
            .map_err(|e| DemoError::chain("deploying the escrow", e))?;
        Ok(Self {
            escrow: *escrow.address(),
            token: *token.address(),
            _anvil: anvil,
            rpc_url,
            deployer,
            grace_period,
        })
    }

    /// A cheap handle for reads while other tasks use the chain.
    pub(crate) fn reader(&self) -> ChainReader {
        ChainReader {
            provider: self.deployer.clone(),
            escrow: self.escrow,
        }
    }

    /// Gives `who` native currency for gas (`anvil_setBalance`).
    pub(crate) async fn fund_gas(&self, who: Address) -> Result<(), DemoError> {
        self.deployer
            .raw_request::<_, serde_json::Value>(
                "anvil_setBalance".into(),
                (who, U256::from(GAS_MONEY)),
            )
            .await
            .map_err(|e| DemoError::chain("anvil_setBalance", e))?;
        Ok(())
    }

    /// Mints `amount` tokens to each recipient: all transactions are sent first, then every
    /// receipt is awaited.
    pub(crate) async fn mint_all(&self, grants: &[(Address, u128)]) -> Result<(), DemoError> {
        let token = TestToken::new(self.token, &self.deployer);
        let mut pending = Vec::with_capacity(grants.len());
        for (to, amount) in grants {
            let sent = token
                .mint(*to, U256::from(*amount))
                .send()
                .await
                .map_err(|e| DemoError::chain("mint", e))?;
            pending.push(sent);
        }
        for sent in pending {
            let receipt = sent
                .get_receipt()
                .await
                .map_err(|e| DemoError::chain("mint receipt", e))?;
            if !receipt.status() {
                return Err(DemoError::chain(
                    "mint",
                    format!("transaction {} reverted", receipt.transaction_hash),
                ));
            }
        }
        Ok(())
    }

    /// The token balance of `owner`.
    pub(crate) async fn balance(&self, owner: Address) -> Result<u128, DemoError> {
        let balance = TestToken::new(self.token, &self.deployer)
            .balanceOf(owner)
            .call()
            .await
            .map_err(|e| DemoError::chain("balanceOf", e))?;
        u128::try_from(balance).map_err(|e| DemoError::chain("balanceOf", e))
    }

    /// The escrow's records of `ids`, in order (`getChannelsBatch`, in chunks).
    pub(crate) async fn channels(
        &self,
        ids: &[B256],
    ) -> Result<Vec<ISluiceEscrow::Channel>, DemoError> {
        let escrow = SluiceEscrow::new(self.escrow, &self.deployer);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let records = escrow
                .getChannelsBatch(chunk.to_vec())
                .call()
                .await
                .map_err(|e| DemoError::chain("getChannelsBatch", e))?;
            out.extend(records);
        }
        Ok(out)
    }

    /// Every escrow event so far, in chain order.
    pub(crate) async fn events(&self) -> Result<Vec<EventAt>, DemoError> {
        let filter = Filter::new().address(self.escrow).from_block(0u64);
        let logs = self
            .deployer
            .get_logs(&filter)
            .await
            .map_err(|e| DemoError::chain("eth_getLogs", e))?;
        logs.iter().map(decode).collect()
    }

    /// Sender and gas used of each transaction.
    pub(crate) async fn costs(
        &self,
        txs: impl IntoIterator<Item = B256>,
    ) -> Result<BTreeMap<B256, TxCost>, DemoError> {
        let mut out = BTreeMap::new();
        for tx in txs {
            let receipt = self
                .deployer
                .get_transaction_receipt(tx)
                .await
                .map_err(|e| DemoError::chain("eth_getTransactionReceipt", e))?
                .ok_or_else(|| {
                    DemoError::chain("eth_getTransactionReceipt", format!("{tx}: no receipt"))
                })?;
            out.insert(
                tx,
                TxCost {
                    from: receipt.from,
                    gas_used: receipt.gas_used,
                },
            );
        }
        Ok(out)
    }
}

/// Settlement so far, from the escrow's `Settled` events.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SettledSoFar {
    /// Paid to the payee by `settle`/`settleBatch`.
    pub(crate) amount: u128,
    /// Distinct transactions that settled.
    pub(crate) txs: u64,
}

/// Reads the chain for the progress line.
#[derive(Clone)]
pub(crate) struct ChainReader {
    provider: DynProvider,
    escrow: Address,
}

impl ChainReader {
    /// Sums the `Settled` events so far.
    pub(crate) async fn settled_so_far(&self) -> Result<SettledSoFar, DemoError> {
        let filter = Filter::new()
            .address(self.escrow)
            .event_signature(SluiceEscrow::Settled::SIGNATURE_HASH)
            .from_block(0u64);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| DemoError::chain("eth_getLogs", e))?;
        let mut out = SettledSoFar::default();
        let mut txs = std::collections::BTreeSet::new();
        for log in &logs {
            if let EventAt {
                tx,
                event: EscrowEvent::Settled { delta, .. },
            } = decode(log)?
            {
                out.amount += delta;
                txs.insert(tx);
            }
        }
        out.txs = txs.len() as u64;
        Ok(out)
    }
}

fn amount(value: U256, what: &str) -> Result<u128, DemoError> {
    u128::try_from(value).map_err(|e| DemoError::chain(format!("{what} amount"), e))
}

fn decode(log: &Log) -> Result<EventAt, DemoError> {
    let tx = log
        .transaction_hash
        .ok_or_else(|| DemoError::chain("eth_getLogs", "a log without its transaction hash"))?;
    let bad = |e: alloy::sol_types::Error| DemoError::chain("decoding an escrow event", e);
    let event = match log.topic0() {
        Some(&SluiceEscrow::ChannelOpened::SIGNATURE_HASH) => {
            let e = log
                .log_decode::<SluiceEscrow::ChannelOpened>()
                .map_err(bad)?;
            let e = e.data();
            EscrowEvent::Opened {
                channel: e.channelId,
                payer: e.payer,
                deposit: amount(e.deposit, "ChannelOpened")?,
            }
        }
        Some(&SluiceEscrow::TopUp::SIGNATURE_HASH) => {
            let e = log.log_decode::<SluiceEscrow::TopUp>().map_err(bad)?;
            let e = e.data();
            EscrowEvent::TopUp {
                channel: e.channelId,
                amount: amount(e.additionalDeposit, "TopUp")?,
            }
        }
        Some(&SluiceEscrow::Settled::SIGNATURE_HASH) => {
            let e = log.log_decode::<SluiceEscrow::Settled>().map_err(bad)?;
            let e = e.data();
            EscrowEvent::Settled {
                channel: e.channelId,
                delta: amount(e.deltaPaid, "Settled")?,
                new_settled: amount(e.newSettled, "Settled")?,
            }
        }
        Some(&SluiceEscrow::ChannelClosed::SIGNATURE_HASH) => {
            let e = log
                .log_decode::<SluiceEscrow::ChannelClosed>()
                .map_err(bad)?;
            let e = e.data();
            EscrowEvent::Closed {
                channel: e.channelId,
                to_payee: amount(e.settledToPayee, "ChannelClosed")?,
                to_payer: amount(e.refundedToPayer, "ChannelClosed")?,
            }
        }
        Some(&SluiceEscrow::SettleSkipped::SIGNATURE_HASH) => EscrowEvent::Skipped,
        _ => EscrowEvent::Other,
    };
    Ok(EventAt { tx, event })
}
