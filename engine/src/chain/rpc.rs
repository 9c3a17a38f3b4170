//! [`ChainClient`] over Ethereum JSON-RPC (alloy's HTTP provider).

use std::{future::Future, time::Duration};

use alloy::{
    network::Ethereum,
    providers::{Provider, RootProvider},
    rpc::{client::RpcClient, types::TransactionReceipt},
    transports::{
        RpcError, TransportError, TransportErrorKind,
        http::{Http, reqwest},
    },
};
use alloy_primitives::{Address, B256, Bytes};
use sluice_contracts::{ISluiceEscrow, SluiceEscrow};
use tokio::time::Instant;

use super::{ChainClient, ChainError, ChainErrorKind, OnChainChannel, RawTransaction, TxOutcome};

/// The URL type of [`RpcChainConfig::rpc_url`] (the `url` crate's, as reqwest re-exports it).
pub type RpcUrl = reqwest::Url;

/// How an [`RpcChain`] reaches the node and how patient it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcChainConfig {
    /// The node's JSON-RPC endpoint (`http://`; `https://` needs the `rpc-tls` feature).
    pub rpc_url: RpcUrl,
    /// The escrow contract every read goes to.
    pub escrow: Address,
    /// The chain the escrow lives on; [`RpcChain::connect`] refuses a node that reports another.
    pub chain_id: u64,
    /// Upper bound for one HTTP request (connect, send, read the answer).
    pub request_timeout: Duration,
    /// How long [`ChainClient::submit_raw`] waits for a receipt before reporting
    /// [`ChainErrorKind::Timeout`].
    pub receipt_timeout: Duration,
    /// How often a receipt is polled while waiting (no subscriptions: plain HTTP everywhere).
    pub receipt_poll_interval: Duration,
    /// How many times a call that failed with a retryable error is repeated (0 = no retry).
    pub max_retries: u32,
    /// The pause before the first retry; it doubles per retry up to [`Self::max_backoff`].
    pub initial_backoff: Duration,
    /// The longest pause between retries.
    pub max_backoff: Duration,
    /// Channel ids per `getChannelsBatch` call; larger requests are split (an `eth_call` has a
    /// gas cap, and each channel costs a few cold storage reads).
    pub batch_size: usize,
}

impl RpcChainConfig {
    /// A configuration with the defaults: 10 s per request, 60 s for a receipt polled every
    /// 200 ms, 3 retries starting at 100 ms and capped at 2 s, 256 channels per batch read.
    pub fn new(rpc_url: RpcUrl, escrow: Address, chain_id: u64) -> Self {
        Self {
            rpc_url,
            escrow,
            chain_id,
            request_timeout: Duration::from_secs(10),
            receipt_timeout: Duration::from_secs(60),
            receipt_poll_interval: Duration::from_millis(200),
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            batch_size: 256,
        }
    }
}

/// The engine's chain client: escrow reads through the `sluice-contracts` bindings and
/// broadcasts of payer-signed transactions, over JSON-RPC. It holds no key.
///
/// Reads are retried on retryable errors ([`ChainError::is_retryable`]) with exponential
/// backoff. Broadcasts are idempotent: the transaction hash is computed from the raw bytes, so
/// a repeated or already-mined transaction is recognised by asking the node for that hash,
/// never by reading the node's error message.
#[derive(Clone, Debug)]
pub struct RpcChain {
    provider: RootProvider<Ethereum>,
    config: RpcChainConfig,
}

impl RpcChain {
    /// Connects to `config.rpc_url` and checks that the node serves `config.chain_id`
    /// ([`ChainErrorKind::WrongChain`] otherwise) and that the escrow address holds code
    /// ([`ChainErrorKind::EscrowMissing`] otherwise). Both checks are retried like reads.
    pub async fn connect(config: RpcChainConfig) -> Result<Self, ChainError> {
        if config.rpc_url.scheme() == "https" && !cfg!(feature = "rpc-tls") {
            return Err(ChainError::new(
                ChainErrorKind::Rejected,
                "connect",
                format!(
                    "{} needs TLS: build sluice-engine with the `rpc-tls` feature",
                    config.rpc_url
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| ChainError::new(ChainErrorKind::Rejected, "connect", e.to_string()))?;
        let transport = Http::with_client(http, config.rpc_url.clone());
        let is_local = transport.guess_local();
        let provider = RootProvider::new(RpcClient::new(transport, is_local));
        let chain = Self { provider, config };

        let actual = chain
            .with_retries("eth_chainId", || async {
                chain
                    .provider
                    .get_chain_id()
                    .await
                    .map_err(|e| classify("eth_chainId", e))
            })
            .await?;
        if actual != chain.config.chain_id {
            return Err(ChainError::new(
                ChainErrorKind::WrongChain {
                    expected: chain.config.chain_id,
                    actual,
                },
                "eth_chainId",
                format!(
                    "configured chain {} but the node at {} serves chain {actual}",
                    chain.config.chain_id, chain.config.rpc_url
                ),
            ));
        }
        let escrow = chain.config.escrow;
        let code = chain
            .with_retries("eth_getCode", || async {
                chain
                    .provider
                    .get_code_at(escrow)
                    .await
                    .map_err(|e| classify("eth_getCode", e))
            })
            .await?;
        if code.is_empty() {
            return Err(ChainError::new(
                ChainErrorKind::EscrowMissing { escrow },
                "eth_getCode",
                format!(
                    "no contract at escrow {escrow} on chain {}",
                    chain.config.chain_id
                ),
            ));
        }
        Ok(chain)
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &RpcChainConfig {
        &self.config
    }

    /// Runs `attempt` until it succeeds, fails with a non-retryable error, or has been retried
    /// `max_retries` times; the last error is returned with the attempt count in its message.
    async fn with_retries<T, F, Fut>(
        &self,
        operation: &'static str,
        mut attempt: F,
    ) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        let mut backoff = self.config.initial_backoff;
        let mut retries = 0;
        loop {
            match attempt().await {
                Err(error) if error.is_retryable() && retries < self.config.max_retries => {
                    retries += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
                }
                Err(mut error) if retries > 0 => {
                    error.message = format!(
                        "{} (after {} attempts of {operation})",
                        error.message,
                        retries + 1
                    );
                    return Err(error);
                }
                other => return other,
            }
        }
    }

    fn escrow_contract(&self) -> SluiceEscrow::SluiceEscrowInstance<&RootProvider<Ethereum>> {
        SluiceEscrow::new(self.config.escrow, &self.provider)
    }

    async fn read_batch(&self, ids: &[B256]) -> Result<Vec<OnChainChannel>, ChainError> {
        const OPERATION: &str = "getChannelsBatch";
        let ids = ids.to_vec();
        let channels = self
            .with_retries(OPERATION, || async {
                self.escrow_contract()
                    .getChannelsBatch(ids.clone())
                    .call()
                    .await
                    .map_err(|e| classify_contract(OPERATION, e))
            })
            .await?;
        if channels.len() != ids.len() {
            return Err(ChainError::new(
                ChainErrorKind::Decode,
                OPERATION,
                format!("asked for {} channels, got {}", ids.len(), channels.len()),
            ));
        }
        Ok(channels.iter().map(on_chain_channel).collect())
    }

    /// `eth_sendRawTransaction`, retried on transport errors. A rejection is not final if the
    /// node already knows a transaction with this very hash (sent before, or mined): the
    /// broadcast has then happened, whatever the error said ("already known", "nonce too low").
    async fn broadcast(&self, tx: &RawTransaction, raw: &Bytes) -> Result<(), ChainError> {
        const OPERATION: &str = "eth_sendRawTransaction";
        let sent = self
            .with_retries(OPERATION, || async {
                self.provider
                    .client()
                    .request::<_, B256>(OPERATION, (raw.clone(),))
                    .await
                    .map_err(|e| classify(OPERATION, e))
            })
            .await;
        match sent {
            Ok(hash) if hash == tx.hash => Ok(()),
            Ok(hash) => Err(ChainError::new(
                ChainErrorKind::Decode,
                OPERATION,
                format!(
                    "node reported hash {hash} for a transaction that hashes to {}",
                    tx.hash
                ),
            )),
            Err(error) if error.kind == ChainErrorKind::Rejected => {
                if self.is_known(tx.hash).await? {
                    Ok(())
                } else {
                    Err(error)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Whether the node has a transaction with this hash, pending or mined.
    async fn is_known(&self, hash: B256) -> Result<bool, ChainError> {
        const OPERATION: &str = "eth_getTransactionByHash";
        // Only presence matters: decode into a raw JSON value so an exotic transaction shape
        // cannot turn "known" into a decode error.
        let found = self
            .with_retries(OPERATION, || async {
                self.provider
                    .client()
                    .request::<_, Option<serde_json::Value>>(OPERATION, (hash,))
                    .await
                    .map_err(|e| classify(OPERATION, e))
            })
            .await?;
        Ok(found.is_some_and(|tx| !tx.is_null()))
    }

    /// Polls for the receipt of `hash` until `receipt_timeout`. Retryable errors while polling
    /// are absorbed by the next poll; the deadline bounds them.
    async fn await_receipt(&self, hash: B256) -> Result<TxOutcome, ChainError> {
        const OPERATION: &str = "eth_getTransactionReceipt";
        let deadline = Instant::now() + self.config.receipt_timeout;
        let mut last_error = None;
        loop {
            match self.provider.get_transaction_receipt(hash).await {
                Ok(Some(receipt)) => return outcome(hash, &receipt),
                Ok(None) => {}
                Err(error) => {
                    let error = classify(OPERATION, error);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let cause = last_error
                    .map(|e| format!("; last error: {}", e.message))
                    .unwrap_or_default();
                return Err(ChainError::new(
                    ChainErrorKind::Timeout,
                    OPERATION,
                    format!(
                        "transaction {hash} not mined within {:?}{cause}",
                        self.config.receipt_timeout
                    ),
                ));
            }
            tokio::time::sleep(self.config.receipt_poll_interval.min(deadline - now)).await;
        }
    }
}

impl ChainClient for RpcChain {
    fn chain_id(&self) -> u64 {
        self.config.chain_id
    }

    fn escrow(&self) -> Address {
        self.config.escrow
    }

    async fn channel(&self, id: B256) -> Result<OnChainChannel, ChainError> {
        const OPERATION: &str = "getChannel";
        let channel = self
            .with_retries(OPERATION, || async {
                self.escrow_contract()
                    .getChannel(id)
                    .call()
                    .await
                    .map_err(|e| classify_contract(OPERATION, e))
            })
            .await?;
        Ok(on_chain_channel(&channel))
    }

    async fn channels(&self, ids: &[B256]) -> Result<Vec<OnChainChannel>, ChainError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.config.batch_size.max(1)) {
            out.extend(self.read_batch(chunk).await?);
        }
        Ok(out)
    }

    async fn submit_raw(&self, raw: Bytes) -> Result<TxOutcome, ChainError> {
        let tx = RawTransaction::decode(&raw)?;
        if let Some(chain_id) = tx.chain_id
            && chain_id != self.config.chain_id
        {
            return Err(ChainError::new(
                ChainErrorKind::InvalidTransaction,
                "eth_sendRawTransaction",
                format!(
                    "transaction {} is signed for chain {chain_id}, not {}",
                    tx.hash, self.config.chain_id
                ),
            ));
        }
        self.broadcast(&tx, &raw).await?;
        self.await_receipt(tx.hash).await
    }
}

fn on_chain_channel(channel: &ISluiceEscrow::Channel) -> OnChainChannel {
    OnChainChannel {
        finalized: channel.finalized,
        close_requested_at: channel.closeRequestedAt,
        payer: channel.payer,
        payee: channel.payee,
        token: channel.token,
        authorized_signer: channel.authorizedSigner,
        deposit: channel.deposit,
        settled: channel.settled,
    }
}

fn outcome(hash: B256, receipt: &TransactionReceipt) -> Result<TxOutcome, ChainError> {
    const OPERATION: &str = "eth_getTransactionReceipt";
    if receipt.transaction_hash != hash {
        return Err(ChainError::new(
            ChainErrorKind::Decode,
            OPERATION,
            format!(
                "asked for the receipt of {hash}, got {}",
                receipt.transaction_hash
            ),
        ));
    }
    let block_number = receipt.block_number.ok_or_else(|| {
        ChainError::new(
            ChainErrorKind::Decode,
            OPERATION,
            format!("receipt of {hash} has no block number"),
        )
    })?;
    Ok(TxOutcome {
        tx_hash: hash,
        block_number,
        success: receipt.status(),
    })
}

/// Classifies an alloy transport error the way [`RpcChain`] does (the table at [`classify`]'s
/// definition: rate limits, 408/429/5xx and broken links are retryable `Transport`, other
/// JSON-RPC errors `Rejected`, undecodable answers `Decode`). For other chain clients (the
/// settlement daemon) that must retry exactly what the engine retries.
pub fn classify_rpc_error(operation: &'static str, error: TransportError) -> ChainError {
    classify(operation, error)
}

/// [`classify_rpc_error`] for an error from a contract binding call (an answer that does not
/// decode as the ABI says is `Decode`).
pub fn classify_contract_error(
    operation: &'static str,
    error: alloy::contract::Error,
) -> ChainError {
    classify_contract(operation, error)
}

/// JSON-RPC error codes that mean "slow down", not "no": 429 as some providers put the HTTP
/// status in the code, -32005 (EIP-1474 "limit exceeded").
const RATE_LIMIT_CODES: [i64; 2] = [429, -32005];

/// Classifies a transport-level error by its structure:
///
/// | alloy error | kind |
/// |---|---|
/// | JSON-RPC error object, rate-limit code | `Transport` |
/// | JSON-RPC error object, any other code | `Rejected` |
/// | HTTP 408, 429 or 5xx without a JSON-RPC body | `Transport` |
/// | other HTTP status | `Rejected` |
/// | connection refused/reset/closed, timeout, truncated body | `Transport` |
/// | request could not be built (bad URL scheme, ...) | `Rejected` |
/// | answer is not the expected JSON (or `null`) | `Decode` |
pub(crate) fn classify(operation: &'static str, error: TransportError) -> ChainError {
    let kind = match &error {
        RpcError::ErrorResp(payload) if RATE_LIMIT_CODES.contains(&payload.code) => {
            ChainErrorKind::Transport
        }
        RpcError::ErrorResp(_) => ChainErrorKind::Rejected,
        RpcError::Transport(transport) => classify_transport(transport),
        RpcError::NullResp | RpcError::DeserError { .. } | RpcError::SerError(_) => {
            ChainErrorKind::Decode
        }
        RpcError::UnsupportedFeature(_) | RpcError::LocalUsageError(_) => ChainErrorKind::Rejected,
    };
    let message = match &error {
        RpcError::ErrorResp(payload) => match payload.as_revert_data() {
            Some(data) => format!(
                "JSON-RPC error {}: {} (revert data {data})",
                payload.code, payload.message
            ),
            None => format!("JSON-RPC error {}: {}", payload.code, payload.message),
        },
        other => other.to_string(),
    };
    ChainError::new(kind, operation, message)
}

fn classify_transport(transport: &TransportErrorKind) -> ChainErrorKind {
    match transport {
        TransportErrorKind::HttpError(http)
        | TransportErrorKind::HttpErrorWithRetryAfter { error: http, .. } => {
            if http.status == 408 || http.status == 429 || (500..600).contains(&http.status) {
                ChainErrorKind::Transport
            } else {
                ChainErrorKind::Rejected
            }
        }
        TransportErrorKind::Custom(source) => match source.downcast_ref::<reqwest::Error>() {
            Some(e) if e.is_builder() => ChainErrorKind::Rejected,
            _ => ChainErrorKind::Transport,
        },
        TransportErrorKind::NonRetryable(_) => ChainErrorKind::Rejected,
        // Missing batch responses, a gone backend, and whatever alloy adds later: the link,
        // not the request, failed.
        _ => ChainErrorKind::Transport,
    }
}

/// Classifies an error from a binding call: transport errors as [`classify`]; an answer that
/// does not decode as the ABI says (including empty data: no contract) is `Decode`.
fn classify_contract(operation: &'static str, error: alloy::contract::Error) -> ChainError {
    match error {
        alloy::contract::Error::TransportError(error) => classify(operation, error),
        alloy::contract::Error::AbiError(_) | alloy::contract::Error::ZeroData(..) => {
            ChainError::new(ChainErrorKind::Decode, operation, error.to_string())
        }
        other => ChainError::new(ChainErrorKind::Rejected, operation, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::rpc::json_rpc::ErrorPayload;
    use std::borrow::Cow;

    fn rpc_error(code: i64, message: &'static str) -> TransportError {
        RpcError::ErrorResp(ErrorPayload {
            code,
            message: Cow::Borrowed(message),
            data: None,
        })
    }

    fn kind(error: TransportError) -> ChainErrorKind {
        classify("test", error).kind
    }

    #[test]
    fn json_rpc_errors_are_rejections_unless_rate_limited() {
        assert_eq!(
            kind(rpc_error(-32000, "nonce too low")),
            ChainErrorKind::Rejected
        );
        assert_eq!(
            kind(rpc_error(-32602, "invalid params")),
            ChainErrorKind::Rejected
        );
        assert_eq!(
            kind(rpc_error(3, "execution reverted")),
            ChainErrorKind::Rejected
        );
        assert_eq!(
            kind(rpc_error(-32005, "limit exceeded")),
            ChainErrorKind::Transport
        );
        assert_eq!(
            kind(rpc_error(429, "too many requests")),
            ChainErrorKind::Transport
        );
        // The code decides, not the words.
        assert_eq!(
            kind(rpc_error(-32000, "rate limit, try again")),
            ChainErrorKind::Rejected
        );
    }

    #[test]
    fn http_statuses_split_into_transient_and_final() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                kind(TransportErrorKind::http_error(status, "busy".into())),
                ChainErrorKind::Transport,
                "{status}"
            );
        }
        for status in [400, 401, 403, 404] {
            assert_eq!(
                kind(TransportErrorKind::http_error(status, "no".into())),
                ChainErrorKind::Rejected,
                "{status}"
            );
        }
        assert_eq!(
            kind(TransportErrorKind::http_error_with_retry_after(
                503,
                String::new(),
                Some(Duration::from_secs(1))
            )),
            ChainErrorKind::Transport
        );
    }

    #[test]
    fn link_failures_are_transport_and_garbage_is_decode() {
        assert_eq!(
            kind(TransportErrorKind::custom_str("connection reset")),
            ChainErrorKind::Transport
        );
        assert_eq!(
            kind(TransportErrorKind::backend_gone()),
            ChainErrorKind::Transport
        );
        assert_eq!(
            kind(TransportErrorKind::non_retryable_str("bad request")),
            ChainErrorKind::Rejected
        );
        assert_eq!(kind(RpcError::NullResp), ChainErrorKind::Decode);
        let deser = serde_json::from_str::<u64>("<html>").expect_err("not json");
        assert_eq!(
            kind(TransportError::deser_err(deser, "<html>")),
            ChainErrorKind::Decode
        );
    }

    #[test]
    fn messages_name_the_code_and_the_operation() {
        let error = classify("eth_call", rpc_error(-32000, "nonce too low"));
        assert_eq!(error.operation, "eth_call");
        assert_eq!(error.message, "JSON-RPC error -32000: nonce too low");
        assert!(!error.is_retryable());
        assert!(classify("eth_call", rpc_error(-32005, "slow down")).is_retryable());
    }
}
