//! The paying agents: each one is a [`PayerClient`] with its own random key that opens one
//! channel to the provider, makes plain paid requests and pay-per-token SSE streams, and (for
//! some agents) runs on a small deposit so that it tops up on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use sluice_engine::client::{ClientError, PayerClient, PayerConfig, TopUpPolicy};

use crate::chain::CHAIN_ID;
use crate::error::DemoError;

/// What every agent does.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Plain paid requests per agent.
    pub(crate) requests: u64,
    /// SSE streams per agent.
    pub(crate) streams: u64,
    /// Tokens per stream.
    pub(crate) tokens: u64,
    /// Every `topup_every`-th agent gets a small deposit and a top-up policy (0: none).
    pub(crate) topup_every: usize,
    /// Price of one unit.
    pub(crate) price: u128,
}

impl Workload {
    /// Units (requests + streamed tokens) one agent pays for.
    pub(crate) fn units(&self) -> u64 {
        self.requests + self.streams * self.tokens
    }

    /// Whether agent `index` runs on a small deposit and tops up.
    pub(crate) fn tops_up(&self, index: usize) -> bool {
        self.topup_every > 0 && index % self.topup_every == self.topup_every - 1
    }

    /// The deposit agent `index` opens its channel with.
    pub(crate) fn deposit(&self, index: usize) -> u128 {
        let need = self.price * u128::from(self.units());
        if self.tops_up(index) {
            // A third of what it will spend, but room for at least one stream's worth of
            // vouchers between top-ups.
            (need / 3).max(self.price * u128::from(self.tokens.max(10)))
        } else {
            need * 2
        }
    }

    /// Tokens minted to agent `index`: enough for the deposit and every top-up it can need.
    pub(crate) fn grant(&self, index: usize) -> u128 {
        self.deposit(index) + self.price * u128::from(self.units()) * 2
    }
}

/// Counters the progress line reads while the agents run.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Paid requests answered 2xx.
    pub(crate) requests: AtomicU64,
    /// Requests or streams that failed.
    pub(crate) failures: AtomicU64,
    /// SSE data events received.
    pub(crate) tokens: AtomicU64,
}

/// One agent: its key and client.
#[derive(Clone)]
pub(crate) struct Agent {
    /// Index, for messages.
    pub(crate) index: usize,
    /// The payer's address.
    pub(crate) address: Address,
    /// Tokens minted to it.
    pub(crate) grant: u128,
    /// Whether it runs on a small deposit.
    pub(crate) tops_up: bool,
    /// The payer client.
    pub(crate) client: PayerClient,
}

impl Agent {
    /// A new agent with a random key; the client is configured for `workload` but has not
    /// touched the chain yet.
    pub(crate) fn new(
        index: usize,
        workload: &Workload,
        rpc_url: &str,
        escrow: Address,
        token: Address,
    ) -> Result<Self, DemoError> {
        let key = PrivateKeySigner::random();
        let address = key.address();
        let mut config =
            PayerConfig::new(rpc_url.to_owned(), CHAIN_ID, escrow, token, key.to_bytes());
        config.deposit = workload.deposit(index);
        config.sign_ahead = 0;
        let tops_up = workload.tops_up(index);
        if tops_up {
            config.top_up = Some(TopUpPolicy {
                below: config.deposit / 2,
                amount: config.deposit,
            });
        }
        // A cap nobody should reach: an honest agent never spends more than its workload.
        config.cap_per_channel = Some(workload.price * u128::from(workload.units()));
        let client = PayerClient::new(config).map_err(|e| DemoError::Agent {
            agent: index,
            what: "configuring the client",
            detail: e.to_string(),
        })?;
        Ok(Self {
            index,
            address,
            grant: workload.grant(index),
            tops_up,
            client,
        })
    }
}

/// What one agent did, from its own point of view.
#[derive(Debug, Clone, Default)]
pub(crate) struct AgentReport {
    /// Agent index.
    pub(crate) index: usize,
    /// Paid requests answered 2xx.
    pub(crate) requests_ok: u64,
    /// Latency of each successful paid request (the first one includes opening the channel).
    pub(crate) latencies: Vec<Duration>,
    /// Streams that ended normally.
    pub(crate) streams_ok: u64,
    /// SSE data events (tokens) received.
    pub(crate) tokens: u64,
    /// Vouchers posted during streams.
    pub(crate) stream_vouchers: u64,
    /// Failed operations, described.
    pub(crate) errors: Vec<String>,
    /// Whether one request beyond the cap was refused by the client with `CapExceeded`
    /// (`None`: not tried).
    pub(crate) cap_refused: Option<bool>,
}

impl AgentReport {
    /// Units the agent received and should have been charged for.
    pub(crate) fn units(&self) -> u64 {
        self.requests_ok + self.tokens
    }
}

/// Runs one agent's workload: `requests` paid requests with the streams spread among them,
/// then one request beyond its spending cap, which the client must refuse.
pub(crate) async fn run_agent(
    agent: Agent,
    base: String,
    workload: Workload,
    progress: Arc<Progress>,
) -> AgentReport {
    let mut report = AgentReport {
        index: agent.index,
        ..AgentReport::default()
    };
    let paid = format!("{base}/paid");
    let stream = format!("{base}/stream?tokens={}", workload.tokens);
    // Stream j starts after request ((j + 1) * requests / (streams + 1)).
    let stream_after: Vec<u64> = (0..workload.streams)
        .map(|j| (j + 1) * workload.requests / (workload.streams + 1))
        .collect();
    let mut next_stream = 0;
    for i in 0..=workload.requests {
        while next_stream < stream_after.len() && stream_after[next_stream] == i {
            next_stream += 1;
            let tokens = &progress.tokens;
            let result = agent
                .client
                .stream(&stream, |_data| {
                    tokens.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            match result {
                Ok(summary) => {
                    report.streams_ok += 1;
                    report.tokens += summary.data_events;
                    report.stream_vouchers += summary.vouchers_posted;
                }
                Err(error) => {
                    progress.failures.fetch_add(1, Ordering::Relaxed);
                    report.errors.push(format!("stream: {error}"));
                }
            }
        }
        if i == workload.requests {
            break;
        }
        let started = Instant::now();
        match agent.client.get(&paid).await {
            Ok(response) if response.status.is_success() => {
                report.latencies.push(started.elapsed());
                report.requests_ok += 1;
                progress.requests.fetch_add(1, Ordering::Relaxed);
            }
            Ok(response) => {
                progress.failures.fetch_add(1, Ordering::Relaxed);
                report
                    .errors
                    .push(format!("GET /paid: status {}", response.status));
            }
            Err(error) => {
                progress.failures.fetch_add(1, Ordering::Relaxed);
                report.errors.push(format!("GET /paid: {error}"));
            }
        }
    }
    // The cap is exactly the workload's price: one more request must be refused before
    // anything is signed.
    if report.errors.is_empty() {
        let refused = matches!(
            agent.client.get(&paid).await,
            Err(ClientError::CapExceeded { .. })
        );
        report.cap_refused = Some(refused);
    }
    report
}

/// The channel agent's client opened, if any.
pub(crate) fn channel_of(agent: &Agent) -> Option<B256> {
    agent
        .client
        .channels()
        .first()
        .map(|snapshot| B256::from(snapshot.id))
}
