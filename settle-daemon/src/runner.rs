//! The running service: the feed follower, the planning loop, the engine notifications and
//! the `/metrics` + `/health` server.
//!
//! One round (every `service.tick`, or at once when the feed delivered entries):
//! 1. drive any recorded transaction to its end (after a restart: reconciliation);
//! 2. scan escrow events up to the confirmed head ([`crate::chain::scan`]);
//! 3. build a [`ChannelView`] per channel the feed named (engine facts, chain facts, the
//!    daemon's in-flight amounts), [`policy::plan`], and execute the actions one transaction
//!    at a time: re-read the channels with `getChannelsBatch` (the chain is the truth), build
//!    the `settleBatch` items or the `close` call, sign, record, broadcast, wait;
//! 4. apply each receipt (`Settled`, `SettleSkipped`, `ChannelClosed`) to the state, and
//!    tell the engine (`POST /channels/{id}/refresh`) about channels that are finalized or
//!    have a close request on chain.
//!
//! Each feed (one per engine node, over HTTP or in-process, see [`crate::source`]) is followed
//! concurrently by its own task that stores each page atomically (vouchers, engine facts, that
//! feed's cursor) and wakes the loop; a failing node stalls only its own feed. Notifications go
//! to the node(s) whose feed delivered the channel.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, Bytes};
use alloy::sol_types::SolCall;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_contracts::{ISluiceEscrow, SluiceEscrow, settle_item};
use tokio::sync::{Notify, watch};

use crate::chain::{self, ChainScanError, RetryPolicy, Rpc, fold_read, lock};
use crate::config::{Config, ConfigError};
use crate::feed_client::FeedClientError;
use crate::metrics::Metrics;
use crate::policy::{self, Action, ChannelId, ChannelView, EngineStatus, Market, PolicyConfig};
use crate::source::{FeedSetupError, HttpFeed, SettlementFeed};
use crate::state::{ChainFacts, DaemonState, StateError, TxKind, TxRecord};
use crate::tx::{MinedTx, Sender, SenderConfig, TxEnd, TxError, skip_reason};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or secrets.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// The chain.
    #[error(transparent)]
    Chain(#[from] sluice_engine::chain::ChainError),
    /// Sending a transaction.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// The feed client.
    #[error(transparent)]
    Feed(#[from] FeedClientError),
    /// Setting up the feeds (a URL not ending in `/feed`, two feeds with one name, none).
    #[error(transparent)]
    FeedSetup(#[from] FeedSetupError),
    /// Scanning.
    #[error(transparent)]
    Scan(#[from] ChainScanError),
    /// `policy.close_grace_period_secs` is not the escrow's: watchtower deadlines of close
    /// requests read from the escrow (request time + grace period) would be wrong, and a
    /// deadline computed later than the escrow's misses the close.
    #[error(
        "policy.close_grace_period_secs is {configured} s but the escrow's CLOSE_GRACE_PERIOD is {escrow} s"
    )]
    GracePeriodMismatch {
        /// The configured value.
        configured: u64,
        /// The escrow's.
        escrow: u64,
    },
    /// The metrics listener could not be bound.
    #[error("cannot listen on {addr}: {kind}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error kind.
        kind: std::io::ErrorKind,
    },
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `eth_getLogs` requests per round at most: a first start far behind the head (a small
/// `chain.start_block`) catches up over several rounds, each planning with what it has read
/// (the re-read before each transaction is the truth), instead of one round that plans and
/// sends nothing, watchtower closes included, until the whole backlog is read.
const MAX_SCAN_RANGES_PER_ROUND: u64 = 64;

/// The daemon's state while running.
struct Daemon {
    config: Config,
    policy: PolicyConfig,
    state: Arc<Mutex<DaemonState>>,
    sender: Sender,
    metrics: Arc<Metrics>,
    /// Every feed, in configuration order; notifications go to the ones that delivered the
    /// channel.
    feeds: Vec<Arc<dyn SettlementFeed>>,
    /// Notifications sent this process: (channel, kind, value, feed index).
    notified: HashSet<(ChannelId, u8, u64, usize)>,
    /// Wakes the planning loop (the feed followers, and a scan that has more to read).
    wake: Arc<Notify>,
}

/// The HTTP feeds `config` names (`[feed]` or `[[feeds]]`), tokens loaded.
pub fn http_feeds(config: &Config) -> Result<Vec<Arc<dyn SettlementFeed>>, DaemonError> {
    let mut feeds: Vec<Arc<dyn SettlementFeed>> = Vec::new();
    for (name, feed) in config.http_feeds() {
        let token = feed.token.load_token()?;
        feeds.push(Arc::new(HttpFeed::new(&name, &feed, token)?));
    }
    Ok(feeds)
}

/// Runs the daemon until `shutdown` turns true, following the HTTP feeds `config` names.
/// `ready` gets the metrics address once the listener is bound (the binary prints
/// `READY <addr>`).
pub async fn run(
    config: Config,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    let feeds = http_feeds(&config)?;
    run_feeds(config, feeds, shutdown, ready).await
}

/// Runs the daemon inside a provider that embeds the engine: follows `feeds` (typically
/// [`crate::source::EmbeddedFeed`]s over the provider's `Arc<Engine>`) and any HTTP feeds
/// `config` names (load it with [`Config::load_embedded`], which allows none). The key, the
/// chain and the daemon's own database (a directory apart from the engine's store) still come
/// from `config`. Returns when `shutdown` turns true.
pub async fn run_embedded(
    config: Config,
    feeds: Vec<Arc<dyn SettlementFeed>>,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    let mut all = http_feeds(&config)?;
    all.extend(feeds);
    run_feeds(config, all, shutdown, ready).await
}

async fn run_feeds(
    config: Config,
    feeds: Vec<Arc<dyn SettlementFeed>>,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), DaemonError> {
    let Some(first) = feeds.first() else {
        return Err(FeedSetupError::NoFeeds.into());
    };
    for (i, feed) in feeds.iter().enumerate() {
        if feeds[..i].iter().any(|f| f.name() == feed.name()) {
            return Err(FeedSetupError::DuplicateName {
                name: feed.name().to_owned(),
            }
            .into());
        }
    }
    let key = config.key.load_key()?;
    let mut opened = DaemonState::open(&config.state.path)?;
    if let Some(cursor) = opened.adopt_legacy_cursor(first.name())? {
        tracing::info!(
            feed = first.name(),
            cursor,
            "the database's single feed cursor now belongs to the first feed"
        );
    }
    let state = Arc::new(Mutex::new(opened));
    let rpc = Rpc::connect(
        &config.chain.rpc_url,
        config.chain.chain_id,
        config.chain.escrow,
        Duration::from_millis(config.chain.request_timeout_ms),
        RetryPolicy::default(),
    )
    .await?;
    let policy = config.policy_config();
    let escrow_grace = rpc.close_grace_period().await?;
    if escrow_grace != policy.close_grace_period_secs {
        return Err(DaemonError::GracePeriodMismatch {
            configured: policy.close_grace_period_secs,
            escrow: escrow_grace,
        });
    }
    let sender = Sender::new(
        rpc,
        &key,
        config.chain.chain_id,
        SenderConfig {
            confirmations: config.chain.confirmations,
            poll: Duration::from_millis(config.chain.poll_ms),
            replace_after: Duration::from_secs(config.chain.replace_after_secs),
            max_gas: policy.max_gas_per_batch,
            max_gas_price: policy.max_gas_price,
        },
    )?;
    tracing::info!(
        payee = %sender.address(),
        escrow = %config.chain.escrow,
        feeds = ?feeds.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "settlement daemon starting"
    );
    let metrics = Arc::new(Metrics::default());
    for feed in &feeds {
        metrics.register_feed(feed.name());
    }

    let listener = tokio::net::TcpListener::bind(config.service.listen)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: config.service.listen,
            kind: e.kind(),
        })?;
    let addr = listener.local_addr().map_err(|e| DaemonError::Listen {
        addr: config.service.listen,
        kind: e.kind(),
    })?;
    let tick = config.service.tick();
    let longest_wait = feeds.iter().map(|f| f.max_wait()).max().unwrap_or_default();
    let stale_after = tick * 3 + longest_wait + Duration::from_secs(15);
    let server = {
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/health", get(serve_health))
            .with_state((Arc::clone(&metrics), stale_after));
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    ready(addr);

    let wake = Arc::new(Notify::new());
    // One follower per feed: a node that fails only stalls its own feed.
    let followers: Vec<_> = feeds
        .iter()
        .map(|feed| {
            tokio::spawn(follow_feed(
                Arc::clone(feed),
                Arc::clone(&state),
                Arc::clone(&metrics),
                Arc::clone(&wake),
                shutdown.clone(),
            ))
        })
        .collect();

    let mut daemon = Daemon {
        policy,
        state: Arc::clone(&state),
        sender,
        metrics,
        feeds,
        notified: HashSet::new(),
        wake: Arc::clone(&wake),
        config,
    };
    let mut shutdown = shutdown;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        daemon.round(&mut shutdown).await;
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!("shutting down: planning stopped");
    for follower in followers {
        let _ = follower.await;
    }
    let _ = server.await;
    drop(daemon);
    // Every state write was flushed when it returned; dropping the last handle closes sled.
    drop(state);
    tracing::info!("settlement daemon stopped");
    Ok(())
}

/// The `close` arguments for a channel whose latest voucher is `voucher`, given the escrow's
/// facts read just before: the voucher when it is above the settled amount and within the
/// deposit; no voucher (amount 0) when nothing above the settled amount is held. `None` when
/// the voucher is above the settled amount **and** above the deposit read (a top-up the
/// engine saw that this read does not show yet, or a lagging node): a close then would
/// finalize the channel paying only the settled amount and refund the voucher's value to the
/// payer, so the close waits for a read that shows the deposit.
fn close_args(
    voucher: Option<crate::policy::Voucher>,
    facts: &ChainFacts,
) -> Option<(u128, Bytes)> {
    match voucher {
        Some(v) if v.amount > facts.settled => {
            (v.amount <= facts.deposit).then(|| (v.amount, Bytes::copy_from_slice(&v.signature)))
        }
        _ => Some((0, Bytes::new())),
    }
}

/// Whether a planned close still holds once the escrow was re-read: the engine marked the
/// channel closing (a cooperative close, or a close request it saw: its closing status
/// sticks), or the escrow still shows a close request. A watchtower close planned from a
/// request that a top-up has cancelled since (the re-read shows it; the scan, `confirmations`
/// behind the head, saw the request's block but not yet the cancel's) would finalize a
/// channel the payer is still using.
fn close_still_wanted(facts: &ChainFacts, engine: Option<EngineStatus>) -> bool {
    facts.close_requested_at != 0 || engine == Some(EngineStatus::Closing)
}

async fn serve_metrics(State((metrics, _)): State<(Arc<Metrics>, Duration)>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}

async fn serve_health(State((metrics, stale)): State<(Arc<Metrics>, Duration)>) -> Response {
    match metrics.unhealthy(stale) {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"ok"}"#.to_owned(),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"status": "unhealthy", "reason": reason}).to_string(),
        )
            .into_response(),
    }
}

async fn follow_feed(
    feed: Arc<dyn SettlementFeed>,
    state: Arc<Mutex<DaemonState>>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = feed.name().to_owned();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let after = match lock(&state).feed_cursor_of(&name) {
            Ok(cursor) => cursor,
            Err(e) => {
                metrics.feed_failed(&name, e.to_string());
                tracing::error!(feed = %name, error = %e, "reading the feed cursor");
                return;
            }
        };
        let fetched = tokio::select! {
            r = feed.fetch(after) => r,
            _ = shutdown.changed() => return,
        };
        let result = fetched.and_then(|page| {
            let next = page.next.get();
            lock(&state).apply_feed_entries_from(&name, &page.entries, next, unix_now())?;
            Ok((next, page.entries.len()))
        });
        match result {
            Ok((next, entries)) => {
                backoff = Duration::from_millis(100);
                metrics.feed_ok(&name, next);
                if entries > 0 {
                    tracing::debug!(feed = %name, entries, next, "feed page stored");
                    wake.notify_one();
                }
            }
            Err(e) => {
                metrics.feed_failed(&name, e.to_string());
                tracing::warn!(feed = %name, error = %e, retryable = e.is_retryable(), "feed pull failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Daemon {
    async fn round(&mut self, shutdown: &mut watch::Receiver<bool>) {
        if let Err(e) = self.reconcile(shutdown).await {
            self.metrics.error("tx");
            tracing::warn!(error = %e, "reconciling recorded transactions");
            return;
        }
        if *shutdown.borrow() {
            return;
        }
        let chain = &self.config.chain;
        match chain::scan(
            self.sender.rpc(),
            &self.state,
            self.sender.address(),
            chain.start_block,
            chain.confirmations,
            chain.log_range,
            self.policy.close_grace_period_secs,
            MAX_SCAN_RANGES_PER_ROUND,
        )
        .await
        {
            Ok(report) => {
                self.metrics.scan_ok(report.head, report.last_block);
                if !report.caught_up {
                    // The next round follows at once and reads on.
                    self.wake.notify_one();
                }
                if report.events > 0 {
                    tracing::debug!(
                        events = report.events,
                        last_block = report.last_block,
                        "events scanned"
                    );
                }
            }
            Err(e) => {
                self.metrics.scan_failed(e.to_string());
                tracing::warn!(error = %e, "event scan failed");
            }
        }
        if let Err(e) = self.plan_and_execute(shutdown).await {
            self.metrics.error(match e {
                DaemonError::State(_) => "state",
                DaemonError::Chain(_) => "rpc",
                _ => "tx",
            });
            tracing::warn!(error = %e, "planning round failed");
        }
        self.notify_engine().await;
    }

    /// Drives every recorded transaction (after a restart, or one interrupted) to its end.
    async fn reconcile(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), DaemonError> {
        let txs = lock(&self.state).txs()?;
        for record in txs {
            tracing::info!(
                nonce = record.nonce,
                attempts = record.attempts.len(),
                "reconciling a recorded transaction"
            );
            // Broadcast the latest attempt again in case it never reached the node.
            self.drive(record, shutdown).await?;
            if *shutdown.borrow() {
                break;
            }
        }
        Ok(())
    }

    fn views(&self) -> Result<(Vec<ChannelView>, Vec<ChannelId>), StateError> {
        let state = lock(&self.state);
        let me = self.sender.address();
        let mut views = Vec::new();
        let mut notify = Vec::new();
        for (id, e) in state.engine_channels()? {
            if e.payee != me {
                continue;
            }
            let c = state.chain_facts(&id)?;
            let voucher = state.voucher(&id)?;
            let in_flight = state.submission(&id)?.map(|s| s.amount);
            let refused = state.refused(&id)?;
            let known = c.is_some_and(|c| !c.payer.is_zero() || c.finalized);
            let c = c.unwrap_or_default();
            if (c.finalized && e.status != EngineStatus::Closed)
                || (c.close_requested_at != 0 && e.close_requested_at == 0)
            {
                notify.push(id);
            }
            let close_requested_at = if known {
                c.close_requested_at
            } else {
                e.close_requested_at
            };
            views.push(ChannelView {
                id,
                payer: e.payer,
                payee: e.payee,
                token: e.token,
                salt: c.salt,
                authorized_signer: e.authorized_signer,
                voucher,
                settled: e.settled.max(c.settled),
                deposit: e.deposit.max(c.deposit),
                status: if c.finalized {
                    EngineStatus::Closed
                } else {
                    e.status
                },
                close_requested_at: (close_requested_at != 0).then_some(close_requested_at),
                first_unsettled_at: (e.first_unsettled_at != 0).then_some(e.first_unsettled_at),
                in_flight_amount: match (in_flight, refused) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
            });
        }
        Ok((views, notify))
    }

    async fn plan_and_execute(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let (views, _) = self.views()?;
        let pending: Vec<&ChannelView> = views
            .iter()
            .filter(|v| v.status != EngineStatus::Closed && v.unsettled() > 0)
            .collect();
        self.metrics.set_pending(
            pending.len() as u64,
            pending.iter().map(|v| v.unsettled()).sum(),
        );
        if views.is_empty() {
            return Ok(());
        }
        let fees = self.sender.rpc().fees().await?;
        let market = Market {
            now: unix_now(),
            gas_price: fees.gas_price,
            token_per_gas: self.config.policy.token_per_gas.0,
            chain_now: fees.block_timestamp,
        };
        let plan = policy::plan(&views, &self.policy, &market);
        if !plan.actions.is_empty() {
            tracing::info!(
                actions = plan.actions.len(),
                skipped = plan.skipped.len(),
                "plan"
            );
        }
        for action in &plan.actions {
            if *shutdown.borrow() {
                break;
            }
            self.execute(action, shutdown).await?;
        }
        Ok(())
    }

    /// Re-reads `ids` from the escrow and stores the facts; returns them.
    async fn reread(&self, ids: &[ChannelId]) -> Result<Vec<(ChannelId, ChainFacts)>, DaemonError> {
        let reads = self.sender.rpc().channels(ids).await?;
        let mut state = lock(&self.state);
        let mut facts = Vec::with_capacity(ids.len());
        for (id, read) in ids.iter().zip(&reads) {
            let mut f = state.chain_facts(id)?.unwrap_or_default();
            fold_read(&mut f, read);
            facts.push((*id, f));
        }
        state.apply_chain_facts(&facts, None)?;
        Ok(facts)
    }

    async fn execute(
        &mut self,
        action: &Action,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let ids: Vec<ChannelId> = match action {
            Action::SettleBatch(ids) => ids.clone(),
            Action::Close(id) => vec![*id],
        };
        // The chain is the truth: re-read before building.
        let facts = self.reread(&ids).await?;
        let (kind, channels, input) = {
            let mut state = lock(&self.state);
            let mut items = Vec::new();
            let mut channels = Vec::new();
            let mut close = None;
            for (id, f) in &facts {
                if f.finalized {
                    continue;
                }
                let voucher = state.voucher(id)?;
                let engine = state.engine_facts(id)?;
                match action {
                    Action::SettleBatch(_) => {
                        let (Some(v), Some(salt)) = (voucher, f.salt) else {
                            continue;
                        };
                        if v.amount <= f.settled || v.amount > f.deposit {
                            continue;
                        }
                        let payer = if f.payer.is_zero() {
                            engine.map_or(Address::ZERO, |e| e.payer)
                        } else {
                            f.payer
                        };
                        match settle_item(
                            payer,
                            f.token,
                            salt,
                            f.authorized_signer,
                            v.amount,
                            &v.signature,
                        ) {
                            Ok(item) => {
                                items.push(item);
                                channels.push((*id, v.amount));
                            }
                            Err(e) => {
                                tracing::warn!(channel = %id, error = %e, "voucher signature unusable");
                                state.record_refused(id, v.amount)?;
                            }
                        }
                    }
                    Action::Close(_) if !close_still_wanted(f, engine.map(|e| e.status)) => {
                        tracing::info!(
                            channel = %id,
                            "the close request was cancelled (a top-up) and the engine did not \
                             mark the channel closing: not closing"
                        );
                    }
                    Action::Close(_) => match close_args(voucher, f) {
                        Some((amount, signature)) => close = Some((*id, amount, signature)),
                        None => tracing::warn!(
                            channel = %id,
                            deposit = f.deposit,
                            "the voucher is above the deposit read from the chain; not closing \
                             (a close now would give it up), retried next round"
                        ),
                    },
                }
            }
            match (action, close) {
                (Action::Close(_), Some((id, amount, signature))) => (
                    TxKind::Close,
                    vec![(id, amount)],
                    SluiceEscrow::closeCall {
                        channelId: id,
                        cumulativeAmount: amount,
                        signature,
                    }
                    .abi_encode(),
                ),
                (Action::SettleBatch(_), _) if !items.is_empty() => {
                    let items: Vec<ISluiceEscrow::SettleItem> = items;
                    (
                        TxKind::SettleBatch,
                        channels,
                        SluiceEscrow::settleBatchCall { items }.abi_encode(),
                    )
                }
                _ => return Ok(()),
            }
        };
        let submitted = self
            .sender
            .submit(&self.state, kind, channels.clone(), input.into())
            .await?;
        match submitted {
            Ok(record) => self.drive(record, shutdown).await,
            Err(end) => {
                match &end {
                    TxEnd::NonceTaken => self.metrics.transaction("nonce_taken"),
                    TxEnd::Rejected(reason) => {
                        self.metrics.transaction("rejected");
                        self.metrics.error("tx");
                        tracing::warn!(reason, "transaction not sent");
                    }
                    _ => {}
                }
                let ids: Vec<ChannelId> = channels.iter().map(|(id, _)| *id).collect();
                self.reread(&ids).await?;
                Ok(())
            }
        }
    }

    async fn drive(
        &mut self,
        record: TxRecord,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let metrics = Arc::clone(&self.metrics);
        let end = self
            .sender
            .drive(&self.state, record.clone(), shutdown, |event| match event {
                "rpc" => metrics.error("rpc"),
                other => metrics.transaction(other),
            })
            .await?;
        let ids: Vec<ChannelId> = record.channels.iter().map(|(id, _)| *id).collect();
        match end {
            TxEnd::Mined(mined) => self.apply_mined(&record, &mined).await,
            TxEnd::NonceTaken | TxEnd::Rejected(_) => {
                self.metrics.transaction(if end == TxEnd::NonceTaken {
                    "nonce_taken"
                } else {
                    "rejected"
                });
                tracing::warn!(
                    nonce = record.nonce,
                    ?end,
                    "transaction will not be mined; re-planning"
                );
                let facts = self.reread(&ids).await?;
                lock(&self.state).finish_tx(&record, &facts)?;
                Ok(())
            }
            TxEnd::Interrupted => {
                tracing::info!(
                    nonce = record.nonce,
                    "shutdown while waiting; the transaction stays recorded"
                );
                Ok(())
            }
        }
    }

    async fn apply_mined(&mut self, record: &TxRecord, mined: &MinedTx) -> Result<(), DaemonError> {
        let kind = match record.kind {
            TxKind::SettleBatch => "settle_batch",
            TxKind::Close => "close",
        };
        tracing::info!(
            nonce = record.nonce,
            hash = %mined.hash,
            block = mined.block,
            success = mined.success,
            gas_used = mined.gas_used,
            settled = mined.settled.len(),
            skipped = mined.skipped.len(),
            closed = mined.closed.len(),
            "transaction confirmed"
        );
        let ids: Vec<ChannelId> = record.channels.iter().map(|(id, _)| *id).collect();
        // Settled and closed amounts come from the receipt; skipped or reverted items from a
        // fresh read (the chain is the truth).
        // Counted only once the receipt's facts are stored: a failure before that (the re-read
        // below) leaves the record, and the next round drives and applies it again.
        let mut facts = self.reread(&ids).await?;
        {
            let mut state = lock(&self.state);
            for (id, f) in &mut facts {
                if let Some((_, settled)) = mined.settled.iter().find(|(c, _)| c == id) {
                    f.settled = f.settled.max(*settled);
                }
                if let Some((_, settled)) = mined.closed.iter().find(|(c, _)| c == id) {
                    f.finalized = true;
                    f.close_requested_at = 0;
                    f.settled = f.settled.max(*settled);
                }
            }
            for (id, amount, reason) in &mined.skipped {
                tracing::warn!(channel = %id, amount, reason, "the escrow skipped an item");
                if matches!(
                    *reason,
                    skip_reason::MALFORMED_SIGNATURE | skip_reason::INVALID_SIGNATURE
                ) {
                    state.record_refused(id, *amount)?;
                }
            }
            // A reverted transaction refuses none of its vouchers: the escrow checked none of
            // them (a bad signature is a `SettleSkipped` item, or a `close` whose estimate
            // reverts and is never sent), and every transaction passed its gas estimate just
            // before, so a revert means the chain changed in between (a token refusing
            // transfers for a while, a gas estimate overtaken). The channels are re-planned
            // from the re-read facts and the next transaction is estimated again first.
            state.finish_tx(record, &facts)?;
            self.metrics.batch(kind, mined.gas_used);
            self.metrics
                .transaction(if mined.success { "mined" } else { "reverted" });
            for _ in &mined.skipped {
                self.metrics.error("skipped_item");
            }
            if !mined.success {
                self.metrics.error("tx");
            }
            for (id, settled) in &mined.settled {
                state.settlement_confirmed(id, *settled, unix_now())?;
            }
        }
        for (id, _) in &mined.closed {
            for i in self.refresh_targets(id) {
                let feed = &self.feeds[i];
                if feed.refresh(*id).await {
                    tracing::info!(channel = %id, feed = %feed.name(), finalized = true, "engine told");
                    self.notified.insert((*id, 1, 0, i));
                } else {
                    self.metrics.error("engine_refresh");
                }
            }
        }
        Ok(())
    }

    /// The feeds (by index) to tell about `channel`: the ones that delivered it; every feed
    /// when the state names none (a database written before feeds were remembered).
    fn refresh_targets(&self, channel: &ChannelId) -> Vec<usize> {
        let names = lock(&self.state).channel_feeds(channel).unwrap_or_default();
        let targets: Vec<usize> = (0..self.feeds.len())
            .filter(|&i| names.iter().any(|n| n == self.feeds[i].name()))
            .collect();
        if targets.is_empty() {
            (0..self.feeds.len()).collect()
        } else {
            targets
        }
    }

    async fn notify_engine(&mut self) {
        let Ok((_, notify)) = self.views() else {
            return;
        };
        let mut wanted = BTreeSet::new();
        for id in notify {
            let facts = lock(&self.state).chain_facts(&id).ok().flatten();
            let (kind, value) = match facts {
                Some(f) if f.finalized => (1, 0),
                Some(f) => (2, f.close_requested_at),
                None => continue,
            };
            for i in self.refresh_targets(&id) {
                let key = (id, kind, value, i);
                if !self.notified.contains(&key) {
                    wanted.insert(key);
                }
            }
        }
        for key in wanted {
            let feed = &self.feeds[key.3];
            if feed.refresh(key.0).await {
                tracing::info!(channel = %key.0, feed = %feed.name(), finalized = key.1 == 1, "engine told");
                self.notified.insert(key);
            } else {
                self.metrics.error("engine_refresh");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{SIGNATURE_LEN, Voucher};

    fn facts(deposit: u128, settled: u128) -> ChainFacts {
        ChainFacts {
            deposit,
            settled,
            ..ChainFacts::default()
        }
    }

    #[test]
    fn a_cancelled_close_request_is_not_closed_unless_the_engine_is_closing() {
        let requested = ChainFacts {
            close_requested_at: 1_000,
            ..facts(1_000, 0)
        };
        let cancelled = facts(2_000, 0);
        assert!(close_still_wanted(&requested, Some(EngineStatus::Open)));
        assert!(close_still_wanted(&cancelled, Some(EngineStatus::Closing)));
        assert!(!close_still_wanted(&cancelled, Some(EngineStatus::Open)));
        assert!(!close_still_wanted(&cancelled, None));
    }

    #[test]
    fn a_close_never_gives_up_a_voucher_above_the_deposit_read() {
        let voucher = Voucher {
            amount: 1_500,
            signature: [7; SIGNATURE_LEN],
        };
        // Within the deposit: closed with the voucher.
        assert_eq!(
            close_args(Some(voucher), &facts(2_000, 100)),
            Some((1_500, Bytes::copy_from_slice(&[7; SIGNATURE_LEN])))
        );
        // The read shows a deposit below the voucher (a top-up it does not show yet): closing
        // with amount 0 would finalize at 100 and refund the payer 1,400 it owes; no close.
        assert_eq!(close_args(Some(voucher), &facts(1_000, 100)), None);
        // Nothing above the settled amount: closed without a voucher.
        assert_eq!(
            close_args(Some(voucher), &facts(1_000, 1_500)),
            Some((0, Bytes::new()))
        );
        assert_eq!(close_args(None, &facts(1_000, 0)), Some((0, Bytes::new())));
    }
}
