//! The daemon's side of the chain: a JSON-RPC client with the engine's retry classification,
//! and escrow event scanning folded into per-channel [`ChainFacts`].
//!
//! Scanning reads `eth_getLogs` for the escrow's events **whose payee is the daemon's
//! account** (the payee is the third indexed topic of every channel event) in ranges of at most
//! `chain.log_range` blocks, from the block after the last processed one up to
//! `head − confirmations + 1` (the newest block with `confirmations` confirmations), so a reorg
//! shallower than `confirmations` never reaches the state. The facts of each range are stored
//! in the same atomic write as the new last block ([`DaemonState::apply_chain_facts`]).
//!
//! Folding is monotonic where the escrow is: deposit and settled take the larger value,
//! finalization is sticky, and a close request is set and cleared in event order.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::time::Duration;

use alloy::network::Ethereum;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, Log, TransactionReceipt, TransactionRequest};
use alloy::sol_types::SolEvent;
use alloy::transports::TransportError;
use alloy::transports::http::Http;
use sluice_contracts::SluiceEscrow;
use sluice_engine::chain::{
    ChainError, ChainErrorKind, OnChainChannel, classify_contract_error, classify_rpc_error,
};

use crate::policy::ChannelId;
use crate::state::{ChainFacts, DaemonState, StateError};

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainScanError {
    /// The node failed (after retries).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Retry policy of [`Rpc`]: retryable errors are repeated with exponential backoff.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// EIP-1559 fees for a transaction, wei per gas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fees {
    /// `maxFeePerGas`.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: u128,
    /// What a transaction pays per gas now (base fee + tip): the policy's gas price.
    pub gas_price: u128,
    /// The timestamp of the latest block the fees were read from (chain time, unix seconds).
    pub block_timestamp: u64,
}

/// A JSON-RPC client of one node and one escrow.
#[derive(Clone, Debug)]
pub struct Rpc {
    provider: RootProvider<Ethereum>,
    escrow: Address,
    retry: RetryPolicy,
    /// Parts of the endpoint URL that may hold a credential (password, path, query:
    /// where hosted nodes put their API keys), removed from every error message.
    secrets: Vec<String>,
}

/// The parts of `url` that may be a credential: a password, and a path or query beyond `/`
/// (`https://mainnet.example/v3/<api key>`), longest first.
fn url_secrets(url: &reqwest::Url) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path = format!("{path}?{query}");
        secrets.push(query.to_owned());
    }
    if path.len() > 1 {
        secrets.push(path);
    }
    if let Some(password) = url.password() {
        secrets.push(password.to_owned());
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

impl Rpc {
    /// A client of `url` for `escrow`; checks `eth_chainId` against `chain_id`
    /// ([`ChainErrorKind::WrongChain`] otherwise) and that the escrow has code
    /// ([`ChainErrorKind::EscrowMissing`] otherwise).
    pub async fn connect(
        url: &str,
        chain_id: u64,
        escrow: Address,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, ChainError> {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|_| ChainError::new(ChainErrorKind::Rejected, "connect", "bad RPC URL"))?;
        let secrets = url_secrets(&parsed);
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()
            .map_err(|e| ChainError::new(ChainErrorKind::Rejected, "connect", e.to_string()))?;
        let transport = Http::with_client(http, parsed);
        let is_local = transport.guess_local();
        let rpc = Self {
            provider: RootProvider::new(RpcClient::new(transport, is_local)),
            escrow,
            retry,
            secrets,
        };
        let actual = rpc
            .retry("eth_chainId", || rpc.provider.get_chain_id())
            .await?;
        if actual != chain_id {
            return Err(ChainError::new(
                ChainErrorKind::WrongChain {
                    expected: chain_id,
                    actual,
                },
                "eth_chainId",
                format!("configured chain {chain_id}, the node serves {actual}"),
            ));
        }
        let code = rpc
            .retry("eth_getCode", || {
                rpc.provider.get_code_at(escrow).into_future()
            })
            .await?;
        if code.is_empty() {
            return Err(ChainError::new(
                ChainErrorKind::EscrowMissing { escrow },
                "eth_getCode",
                format!("no contract at escrow {escrow} on chain {chain_id}"),
            ));
        }
        Ok(rpc)
    }

    /// `error` with the endpoint's credential parts replaced by `<redacted>` (transport errors
    /// quote the request URL; they reach the logs and the unauthenticated `/health`).
    fn redact(&self, mut error: ChainError) -> ChainError {
        for secret in &self.secrets {
            if error.message.contains(secret.as_str()) {
                error.message = error.message.replace(secret.as_str(), "<redacted>");
            }
        }
        error
    }

    /// The escrow address.
    pub fn escrow(&self) -> Address {
        self.escrow
    }

    async fn retry<T, F, Fut>(&self, operation: &'static str, mut f: F) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        self.retry_classified(operation, || {
            let fut = f();
            async move { fut.await.map_err(|e| classify_rpc_error(operation, e)) }
        })
        .await
    }

    async fn retry_classified<T, F, Fut>(
        &self,
        operation: &'static str,
        mut f: F,
    ) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        let mut backoff = self.retry.initial_backoff;
        let mut retries = 0;
        loop {
            match f().await.map_err(|e| self.redact(e)) {
                Err(e) if e.is_retryable() && retries < self.retry.max_retries => {
                    retries += 1;
                    tracing::debug!(operation, retries, error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(self.retry.max_backoff);
                }
                other => return other,
            }
        }
    }

    /// The latest block number.
    pub async fn head(&self) -> Result<u64, ChainError> {
        self.retry("eth_blockNumber", || self.provider.get_block_number())
            .await
    }

    /// The escrow's logs in `[from, to]` whose payee topic is `payee`.
    pub async fn logs(&self, from: u64, to: u64, payee: Address) -> Result<Vec<Log>, ChainError> {
        let filter = Filter::new()
            .address(self.escrow)
            .from_block(from)
            .to_block(to)
            .topic3(payee.into_word());
        self.retry("eth_getLogs", || self.provider.get_logs(&filter))
            .await
    }

    /// `getChannelsBatch(ids)`: the escrow's view of each channel, in order.
    pub async fn channels(&self, ids: &[ChannelId]) -> Result<Vec<OnChainChannel>, ChainError> {
        const OPERATION: &str = "getChannelsBatch";
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let chunk = chunk.to_vec();
            let read = self
                .retry_classified(OPERATION, || async {
                    SluiceEscrow::new(self.escrow, &self.provider)
                        .getChannelsBatch(chunk.clone())
                        .call()
                        .await
                        .map_err(|e| classify_contract_error(OPERATION, e))
                })
                .await?;
            if read.len() != chunk.len() {
                return Err(ChainError::new(
                    ChainErrorKind::Decode,
                    OPERATION,
                    format!("asked for {} channels, got {}", chunk.len(), read.len()),
                ));
            }
            out.extend(read.iter().map(|c| OnChainChannel {
                finalized: c.finalized,
                close_requested_at: c.closeRequestedAt,
                payer: c.payer,
                payee: c.payee,
                token: c.token,
                authorized_signer: c.authorizedSigner,
                deposit: c.deposit,
                settled: c.settled,
            }));
        }
        Ok(out)
    }

    /// The escrow's `CLOSE_GRACE_PERIOD` (seconds).
    pub async fn close_grace_period(&self) -> Result<u64, ChainError> {
        const OPERATION: &str = "CLOSE_GRACE_PERIOD";
        self.retry_classified(OPERATION, || async {
            SluiceEscrow::new(self.escrow, &self.provider)
                .CLOSE_GRACE_PERIOD()
                .call()
                .await
                .map_err(|e| classify_contract_error(OPERATION, e))
        })
        .await
    }

    /// The account's nonce: mined transactions only (`latest`) or with the pool's (`pending`).
    pub async fn nonce(&self, account: Address, pending: bool) -> Result<u64, ChainError> {
        self.retry("eth_getTransactionCount", || async {
            let call = self.provider.get_transaction_count(account);
            if pending {
                call.pending().await
            } else {
                call.latest().await
            }
        })
        .await
    }

    /// The receipt of `hash`, if mined.
    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        self.retry("eth_getTransactionReceipt", || {
            self.provider.get_transaction_receipt(hash)
        })
        .await
    }

    /// Whether the node knows `hash` (pending or mined).
    pub async fn is_known(&self, hash: B256) -> Result<bool, ChainError> {
        let found = self
            .retry("eth_getTransactionByHash", || {
                self.provider
                    .client()
                    .request::<_, Option<serde_json::Value>>("eth_getTransactionByHash", (hash,))
            })
            .await?;
        Ok(found.is_some_and(|v| !v.is_null()))
    }

    /// `eth_sendRawTransaction`, retried on transport errors. A rejection is ignored when the
    /// node knows this very hash (a repeat, or an answer lost after the node took it).
    pub async fn send_raw(&self, hash: B256, raw: &Bytes) -> Result<(), ChainError> {
        const OPERATION: &str = "eth_sendRawTransaction";
        let sent = self
            .retry(OPERATION, || {
                self.provider
                    .client()
                    .request::<_, B256>(OPERATION, (raw.clone(),))
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ChainErrorKind::Rejected => {
                if self.is_known(hash).await? {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Current EIP-1559 fees: tip from `eth_maxPriorityFeePerGas`, max fee twice the latest
    /// base fee plus the tip.
    pub async fn fees(&self) -> Result<Fees, ChainError> {
        let tip = self
            .retry("eth_maxPriorityFeePerGas", || {
                self.provider.get_max_priority_fee_per_gas()
            })
            .await?;
        let block = self
            .retry("eth_getBlockByNumber", || {
                self.provider
                    .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
                    .into_future()
            })
            .await?
            .ok_or_else(|| {
                ChainError::new(ChainErrorKind::Decode, "eth_getBlockByNumber", "no block")
            })?;
        let base = u128::from(block.header.base_fee_per_gas.unwrap_or(0));
        Ok(Fees {
            max_fee_per_gas: base.saturating_mul(2).saturating_add(tip),
            max_priority_fee_per_gas: tip,
            gas_price: base.saturating_add(tip),
            block_timestamp: block.header.timestamp,
        })
    }

    /// `eth_estimateGas` of a call from `from` to the escrow.
    pub async fn estimate(&self, from: Address, input: &Bytes) -> Result<u64, ChainError> {
        let request = TransactionRequest::default()
            .from(from)
            .to(self.escrow)
            .input(input.clone().into());
        self.retry("eth_estimateGas", || {
            self.provider.estimate_gas(request.clone()).into_future()
        })
        .await
    }
}

/// What a scan found worth telling the engine about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The chain head seen.
    pub head: u64,
    /// The last block processed after the scan.
    pub last_block: u64,
    /// Channels with a new close request.
    pub close_requested: Vec<ChannelId>,
    /// Channels finalized.
    pub finalized: Vec<ChannelId>,
    /// Logs folded.
    pub events: usize,
    /// Whether the scan reached the newest confirmed block (`false`: it stopped after its
    /// range budget, more blocks wait for the next call).
    pub caught_up: bool,
}

/// Which channel event a log is, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EscrowEvent {
    /// `ChannelOpened`.
    Opened {
        /// The channel.
        channel: ChannelId,
        /// Parties and salt.
        payer: Address,
        /// Payee.
        payee: Address,
        /// Token.
        token: Address,
        /// Signer.
        authorized_signer: Address,
        /// Salt.
        salt: B256,
        /// Deposit.
        deposit: u128,
    },
    /// `Settled`: the new settled amount.
    Settled {
        /// The channel.
        channel: ChannelId,
        /// `newSettled`.
        new_settled: u128,
    },
    /// `TopUp`: the new deposit.
    TopUp {
        /// The channel.
        channel: ChannelId,
        /// `newDeposit`.
        new_deposit: u128,
    },
    /// `CloseRequested`: the end of the grace period.
    CloseRequested {
        /// The channel.
        channel: ChannelId,
        /// `closeGraceEnd`, unix seconds.
        grace_end: u64,
    },
    /// `CloseRequestCancelled`.
    CloseRequestCancelled {
        /// The channel.
        channel: ChannelId,
    },
    /// `ChannelClosed`: the total paid to the payee.
    Closed {
        /// The channel.
        channel: ChannelId,
        /// `settledToPayee`.
        settled: u128,
    },
    /// `ChannelExpired` (the payer withdrew).
    Expired {
        /// The channel.
        channel: ChannelId,
    },
}

fn u128_of(value: U256) -> u128 {
    u128::try_from(value).unwrap_or(u128::MAX)
}

/// Decodes one of the escrow's channel events; `None` for any other log (or a malformed one).
pub fn decode_event(log: &alloy::primitives::Log) -> Option<EscrowEvent> {
    use SluiceEscrow::{
        ChannelClosed, ChannelExpired, ChannelOpened, CloseRequestCancelled, CloseRequested,
        Settled, TopUp,
    };
    let topic = *log.data.topics().first()?;
    let data = &log.data;
    Some(match topic {
        t if t == ChannelOpened::SIGNATURE_HASH => {
            let e = ChannelOpened::decode_log_data(data).ok()?;
            EscrowEvent::Opened {
                channel: e.channelId,
                payer: e.payer,
                payee: e.payee,
                token: e.token,
                authorized_signer: e.authorizedSigner,
                salt: e.salt,
                deposit: u128_of(e.deposit),
            }
        }
        t if t == Settled::SIGNATURE_HASH => {
            let e = Settled::decode_log_data(data).ok()?;
            EscrowEvent::Settled {
                channel: e.channelId,
                new_settled: u128_of(e.newSettled),
            }
        }
        t if t == TopUp::SIGNATURE_HASH => {
            let e = TopUp::decode_log_data(data).ok()?;
            EscrowEvent::TopUp {
                channel: e.channelId,
                new_deposit: u128_of(e.newDeposit),
            }
        }
        t if t == CloseRequested::SIGNATURE_HASH => {
            let e = CloseRequested::decode_log_data(data).ok()?;
            EscrowEvent::CloseRequested {
                channel: e.channelId,
                grace_end: u64::try_from(e.closeGraceEnd).unwrap_or(u64::MAX),
            }
        }
        t if t == CloseRequestCancelled::SIGNATURE_HASH => {
            let e = CloseRequestCancelled::decode_log_data(data).ok()?;
            EscrowEvent::CloseRequestCancelled {
                channel: e.channelId,
            }
        }
        t if t == ChannelClosed::SIGNATURE_HASH => {
            let e = ChannelClosed::decode_log_data(data).ok()?;
            EscrowEvent::Closed {
                channel: e.channelId,
                settled: u128_of(e.settledToPayee),
            }
        }
        t if t == ChannelExpired::SIGNATURE_HASH => {
            let e = ChannelExpired::decode_log_data(data).ok()?;
            EscrowEvent::Expired {
                channel: e.channelId,
            }
        }
        _ => return None,
    })
}

impl EscrowEvent {
    /// The channel the event is about.
    pub fn channel(&self) -> ChannelId {
        match self {
            Self::Opened { channel, .. }
            | Self::Settled { channel, .. }
            | Self::TopUp { channel, .. }
            | Self::CloseRequested { channel, .. }
            | Self::CloseRequestCancelled { channel }
            | Self::Closed { channel, .. }
            | Self::Expired { channel } => *channel,
        }
    }
}

/// Folds `event` into `facts` (pure). `grace_period` turns `closeGraceEnd` into the request
/// time.
pub fn fold_event(facts: &mut ChainFacts, event: &EscrowEvent, grace_period: u64) {
    match *event {
        EscrowEvent::Opened {
            payer,
            payee,
            token,
            authorized_signer,
            salt,
            deposit,
            ..
        } => {
            facts.payer = payer;
            facts.payee = payee;
            facts.token = token;
            facts.authorized_signer = authorized_signer;
            facts.salt = Some(salt);
            facts.deposit = facts.deposit.max(deposit);
        }
        EscrowEvent::Settled { new_settled, .. } => {
            facts.settled = facts.settled.max(new_settled);
        }
        EscrowEvent::TopUp { new_deposit, .. } => {
            facts.deposit = facts.deposit.max(new_deposit);
        }
        EscrowEvent::CloseRequested { grace_end, .. } => {
            if !facts.finalized {
                facts.close_requested_at = grace_end.saturating_sub(grace_period).max(1);
            }
        }
        EscrowEvent::CloseRequestCancelled { .. } => facts.close_requested_at = 0,
        EscrowEvent::Closed { settled, .. } => {
            facts.finalized = true;
            facts.close_requested_at = 0;
            facts.settled = facts.settled.max(settled);
        }
        EscrowEvent::Expired { .. } => {
            facts.finalized = true;
            facts.close_requested_at = 0;
        }
    }
}

/// Folds a batch read of the escrow into `facts` (deposit and settled only grow, finalization
/// is sticky; a finalized read keeps the amounts, the escrow zeroes them).
pub fn fold_read(facts: &mut ChainFacts, read: &OnChainChannel) {
    if read.finalized {
        facts.finalized = true;
        facts.close_requested_at = 0;
        return;
    }
    if !read.exists() {
        return;
    }
    if facts.payer.is_zero() {
        facts.payer = read.payer;
        facts.payee = read.payee;
        facts.token = read.token;
        facts.authorized_signer = read.authorized_signer;
    }
    facts.deposit = facts.deposit.max(read.deposit);
    facts.settled = facts.settled.max(read.settled);
    facts.close_requested_at = read.close_requested_at;
}

/// Folds one range's logs into the facts of the channels they touch (`stored` gives a
/// channel's facts before the range), **in chain order** (block number, then log index): a
/// node's answer is not trusted to be sorted, and the order matters (a `CloseRequested` folded
/// after the `CloseRequestCancelled` that followed it would leave a cancelled request standing,
/// and the watchtower would close a channel the payer kept).
pub fn fold_logs(
    logs: &[Log],
    grace_period: u64,
    mut stored: impl FnMut(&ChannelId) -> Result<ChainFacts, StateError>,
    report: &mut ScanReport,
) -> Result<BTreeMap<ChannelId, ChainFacts>, StateError> {
    let mut ordered: Vec<&Log> = logs.iter().collect();
    // Stable: logs without a position (never from a mined block) keep their relative order.
    ordered.sort_by_key(|log| {
        (
            log.block_number.unwrap_or(u64::MAX),
            log.log_index.unwrap_or(u64::MAX),
        )
    });
    let mut touched: BTreeMap<ChannelId, ChainFacts> = BTreeMap::new();
    for log in ordered {
        let Some(event) = decode_event(&log.inner) else {
            continue;
        };
        let channel = event.channel();
        let facts = match touched.get_mut(&channel) {
            Some(facts) => facts,
            None => {
                let before = stored(&channel)?;
                touched.entry(channel).or_insert(before)
            }
        };
        fold_event(facts, &event, grace_period);
        report.events += 1;
        match event {
            EscrowEvent::CloseRequested { .. } => report.close_requested.push(channel),
            EscrowEvent::Closed { .. } | EscrowEvent::Expired { .. } => {
                report.finalized.push(channel);
            }
            _ => {}
        }
    }
    Ok(touched)
}

/// Scans the escrow's events for `payee` from the state's last block up to the newest block
/// with `confirmations` confirmations, `range` blocks per request, storing facts and the last
/// block atomically per range; at most `max_ranges` requests per call (a first start far
/// behind the head catches up over several calls, [`ScanReport::caught_up`] tells when).
#[allow(clippy::too_many_arguments)]
pub async fn scan(
    rpc: &Rpc,
    state: &std::sync::Mutex<DaemonState>,
    payee: Address,
    start_block: u64,
    confirmations: u64,
    range: u64,
    grace_period: u64,
    max_ranges: u64,
) -> Result<ScanReport, ChainScanError> {
    let head = rpc.head().await?;
    let safe = head.saturating_sub(confirmations.saturating_sub(1));
    let mut report = ScanReport {
        head,
        ..ScanReport::default()
    };
    let mut last = lock(state).last_block()?;
    let mut from = if last == 0 && start_block > 0 {
        start_block
    } else {
        last + 1
    };
    let mut ranges = 0;
    while from <= safe && ranges < max_ranges {
        ranges += 1;
        let to = safe.min(from.saturating_add(range.max(1) - 1));
        let logs = rpc.logs(from, to, payee).await?;
        {
            let mut state = lock(state);
            let touched = fold_logs(
                &logs,
                grace_period,
                |channel| Ok(state.chain_facts(channel)?.unwrap_or_default()),
                &mut report,
            )?;
            let facts: Vec<_> = touched.into_iter().collect();
            state.apply_chain_facts(&facts, Some(to))?;
        }
        last = to;
        from = to + 1;
    }
    report.last_block = last;
    report.caught_up = from > safe;
    Ok(report)
}

/// Locks the state, recovering from a poisoned lock (the state's writes are atomic, so a
/// panic elsewhere cannot leave it half-written).
pub fn lock(state: &std::sync::Mutex<DaemonState>) -> std::sync::MutexGuard<'_, DaemonState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::Log as PrimitiveLog;

    fn log_of<E: SolEvent>(event: &E) -> PrimitiveLog {
        PrimitiveLog {
            address: Address::repeat_byte(0xee),
            data: event.encode_log_data(),
        }
    }

    #[test]
    fn events_decode_and_fold_in_order() {
        let channel = B256::repeat_byte(7);
        let payer = Address::repeat_byte(1);
        let payee = Address::repeat_byte(2);
        let events = [
            log_of(&SluiceEscrow::ChannelOpened {
                channelId: channel,
                payer,
                payee,
                token: Address::repeat_byte(3),
                authorizedSigner: Address::ZERO,
                salt: B256::repeat_byte(9),
                deposit: U256::from(1_000),
            }),
            log_of(&SluiceEscrow::Settled {
                channelId: channel,
                payer,
                payee,
                cumulativeAmount: U256::from(300),
                deltaPaid: U256::from(300),
                newSettled: U256::from(300),
            }),
            log_of(&SluiceEscrow::CloseRequested {
                channelId: channel,
                payer,
                payee,
                closeGraceEnd: U256::from(1_120),
            }),
            log_of(&SluiceEscrow::TopUp {
                channelId: channel,
                payer,
                payee,
                additionalDeposit: U256::from(500),
                newDeposit: U256::from(1_500),
            }),
        ];
        let mut facts = ChainFacts::default();
        for log in &events {
            let event = decode_event(log).expect("a channel event");
            assert_eq!(event.channel(), channel);
            fold_event(&mut facts, &event, 120);
        }
        assert_eq!(facts.payer, payer);
        assert_eq!(facts.salt, Some(B256::repeat_byte(9)));
        assert_eq!((facts.deposit, facts.settled), (1_500, 300));
        assert_eq!(facts.close_requested_at, 1_000);
        fold_event(
            &mut facts,
            &decode_event(&log_of(&SluiceEscrow::CloseRequestCancelled {
                channelId: channel,
                payer,
                payee,
            }))
            .unwrap(),
            120,
        );
        assert_eq!(facts.close_requested_at, 0);
        // An older Settled replayed (a rescan) never lowers the amount.
        fold_event(
            &mut facts,
            &EscrowEvent::Settled {
                channel,
                new_settled: 100,
            },
            120,
        );
        assert_eq!(facts.settled, 300);
        fold_event(
            &mut facts,
            &EscrowEvent::Closed {
                channel,
                settled: 800,
            },
            120,
        );
        assert!(facts.finalized);
        assert_eq!(facts.settled, 800);
        // A close request after finalization cannot revive anything.
        fold_event(
            &mut facts,
            &EscrowEvent::CloseRequested {
                channel,
                grace_end: 5_000,
            },
            120,
        );
        assert_eq!(facts.close_requested_at, 0);
        // Other logs are ignored.
        let other = log_of(&SluiceEscrow::SettleSkipped {
            channelId: channel,
            cumulativeAmount: 1,
            reason: 3,
        });
        assert_eq!(decode_event(&other), None);
    }

    #[test]
    fn a_range_is_folded_in_chain_order_whatever_order_the_node_answers_in() {
        let channel = B256::repeat_byte(7);
        let payer = Address::repeat_byte(1);
        let payee = Address::repeat_byte(2);
        let at = |event: PrimitiveLog, block: u64, index: u64| Log {
            inner: event,
            block_number: Some(block),
            log_index: Some(index),
            ..Log::default()
        };
        // Block 10: the payer requests a close; block 11: a top-up cancels it (the escrow emits
        // the cancel, then the top-up).
        let chain_order = vec![
            at(
                log_of(&SluiceEscrow::CloseRequested {
                    channelId: channel,
                    payer,
                    payee,
                    closeGraceEnd: U256::from(1_120),
                }),
                10,
                0,
            ),
            at(
                log_of(&SluiceEscrow::CloseRequestCancelled {
                    channelId: channel,
                    payer,
                    payee,
                }),
                11,
                3,
            ),
            at(
                log_of(&SluiceEscrow::TopUp {
                    channelId: channel,
                    payer,
                    payee,
                    additionalDeposit: U256::from(500),
                    newDeposit: U256::from(1_500),
                }),
                11,
                4,
            ),
        ];
        let stored = ChainFacts {
            deposit: 1_000,
            ..ChainFacts::default()
        };
        let mut reversed = chain_order.clone();
        reversed.reverse();
        for logs in [chain_order, reversed] {
            let mut report = ScanReport::default();
            let touched = fold_logs(&logs, 120, |_| Ok(stored), &mut report).expect("folds");
            let facts = touched[&channel];
            assert_eq!(facts.close_requested_at, 0, "the request was cancelled");
            assert_eq!(facts.deposit, 1_500);
            assert_eq!(report.events, 3);
            assert_eq!(report.close_requested, vec![channel]);
        }
    }

    #[tokio::test]
    async fn an_api_key_in_the_rpc_url_stays_out_of_error_messages() {
        let retry = RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        // Nothing listens on port 1: the transport error quotes the request URL.
        let error = Rpc::connect(
            "http://user:hunter2@127.0.0.1:1/v3/0123456789abcdef?apikey=s3cr3t",
            1,
            Address::repeat_byte(1),
            Duration::from_millis(500),
            retry,
        )
        .await
        .expect_err("nothing listens");
        assert_eq!(error.kind, ChainErrorKind::Transport);
        let shown = format!("{error} {error:?}");
        for secret in ["0123456789abcdef", "s3cr3t", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // The host stays, for the operator.
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }

    #[test]
    fn batch_reads_only_grow_amounts_and_finalization_sticks() {
        let mut facts = ChainFacts {
            deposit: 1_000,
            settled: 400,
            ..ChainFacts::default()
        };
        let read = OnChainChannel {
            payer: Address::repeat_byte(1),
            deposit: 900,
            settled: 300,
            close_requested_at: 50,
            ..OnChainChannel::default()
        };
        fold_read(&mut facts, &read);
        assert_eq!((facts.deposit, facts.settled), (1_000, 400));
        assert_eq!(facts.close_requested_at, 50);
        assert_eq!(facts.payer, Address::repeat_byte(1));
        fold_read(
            &mut facts,
            &OnChainChannel {
                finalized: true,
                ..OnChainChannel::default()
            },
        );
        assert!(facts.finalized);
        assert_eq!(facts.settled, 400, "the tombstone keeps the amounts");
        fold_read(&mut facts, &read);
        assert!(facts.finalized);
    }
}
