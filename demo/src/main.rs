#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod agents;
mod chain;
mod error;
mod procs;
mod reconcile;
mod services;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use clap::Parser;
use tokio::task::JoinSet;

use crate::agents::{Agent, AgentReport, Progress, Workload};
use crate::chain::LocalChain;
use crate::error::DemoError;
use crate::reconcile::{Balances, ChannelFacts, Inputs};
use crate::services::{AdminApi, Daemon, Provider, SettlePolicy};
use crate::summary::Summary;

/// Flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-demo",
    about = "A whole local Sluice session: chain, provider, settlement daemon, paying agents, reconciliation"
)]
pub(crate) struct Args {
    /// Concurrent paying agents (one channel each).
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Plain paid requests per agent.
    #[arg(long, default_value_t = 50)]
    requests: u64,
    /// Pay-per-token SSE streams per agent.
    #[arg(long, default_value_t = 2)]
    streams: u64,
    /// Tokens per stream.
    #[arg(long, default_value_t = 100)]
    tokens: u64,
    /// Every N-th agent runs on a small deposit and tops up (0: none).
    #[arg(long, default_value_t = 4)]
    topup_every: usize,
    /// Price of one unit (a request or a streamed token), in token base units (6 decimals).
    #[arg(long, default_value_t = 1_000)]
    price: u128,
    /// Channels per `settleBatch` transaction.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,
    /// The daemon settles a channel once this many units are unsettled...
    #[arg(long, default_value_t = 100)]
    settle_units: u128,
    /// ... or once a voucher has waited this long (so batches gather many channels).
    #[arg(long, default_value_t = 2)]
    settle_age_secs: u64,
    /// How long to let the daemon catch up before closing, in seconds.
    #[arg(long, default_value_t = 15)]
    settle_wait_secs: u64,
    /// Anvil's interval block time in seconds (transactions are also mined at once).
    #[arg(long, default_value_t = 1)]
    block_time: u64,
    /// The escrow's close grace period in seconds.
    #[arg(long, default_value_t = 120)]
    grace_period: u64,
    /// Deadline for the daemon to settle, close and finalize every channel, in seconds.
    #[arg(long, default_value_t = 90)]
    deadline_secs: u64,
    /// The example provider binary [default: examples/provider next to this binary].
    #[arg(long)]
    provider_bin: Option<PathBuf>,
    /// The settlement daemon binary [default: sluice-settle-daemon next to this binary].
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// Directory for this run's logs, stores and config [default: target/demo/<UTC time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

impl Args {
    fn validate(&self) -> Result<(), DemoError> {
        let positive = |flag: &'static str, v: u64| {
            if v == 0 {
                Err(DemoError::Flag {
                    flag,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("agents", self.agents as u64)?;
        positive("requests", self.requests)?;
        positive("batch-size", self.batch_size as u64)?;
        positive("block-time", self.block_time)?;
        positive("deadline-secs", self.deadline_secs)?;
        if self.price == 0 || self.price > 1_000_000_000 {
            return Err(DemoError::Flag {
                flag: "price",
                reason: "must be in 1..=1000000000".into(),
            });
        }
        if self.grace_period < 10 {
            return Err(DemoError::Flag {
                flag: "grace-period",
                reason: "must be at least 10 seconds".into(),
            });
        }
        if self.streams > 0 && self.tokens == 0 {
            return Err(DemoError::Flag {
                flag: "tokens",
                reason: "must be at least 1 when --streams is set".into(),
            });
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    tokio::select! {
        result = run(args) => match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("sluice-demo: {error}");
                ExitCode::from(2)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            // Dropping `run` drops the child guards: anvil, the provider and the daemon stop.
            eprintln!("sluice-demo: interrupted, stopping the child processes");
            ExitCode::from(130)
        }
    }
}

fn step(started: Instant, what: impl std::fmt::Display) {
    println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

/// The binary next to this one (`target/<profile>/…`).
fn sibling(relative: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_default()
        .join(relative)
}

fn default_run_dir() -> PathBuf {
    // target/<profile>/sluice-demo -> target/demo/<time>
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("demo").join(summary::utc_stamp())
}

/// Runs the whole demo; `Ok(true)` when every reconciliation check passed.
async fn run(args: Args) -> Result<bool, DemoError> {
    args.validate()?;
    let started = Instant::now();
    let run_dir = args.run_dir.clone().unwrap_or_else(default_run_dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| DemoError::io("creating", &run_dir, e))?;
    let provider_bin = args
        .provider_bin
        .clone()
        .unwrap_or_else(|| sibling("examples/provider"));
    let daemon_bin = args
        .daemon_bin
        .clone()
        .unwrap_or_else(|| sibling("sluice-settle-daemon"));
    println!(
        "sluice demo: {} agents x ({} requests + {} streams x {} tokens), price {} per unit; logs in {}",
        args.agents,
        args.requests,
        args.streams,
        args.tokens,
        args.price,
        run_dir.display()
    );

    let chain = LocalChain::start(&run_dir, args.block_time, args.grace_period).await?;
    step(
        started,
        format!(
            "anvil at {}; token {} and escrow {} deployed",
            chain.rpc_url, chain.token, chain.escrow
        ),
    );

    let payee_key = PrivateKeySigner::random();
    let payee = payee_key.address();
    chain.fund_gas(payee).await?;
    let workload = Workload {
        requests: args.requests,
        streams: args.streams,
        tokens: args.tokens,
        topup_every: args.topup_every,
        price: args.price,
    };
    let agents: Vec<Agent> = (0..args.agents)
        .map(|i| Agent::new(i, &workload, &chain.rpc_url, chain.escrow, chain.token))
        .collect::<Result<_, _>>()?;
    for agent in &agents {
        chain.fund_gas(agent.address).await?;
    }
    let grants: Vec<(Address, u128)> = agents.iter().map(|a| (a.address, a.grant)).collect();
    chain.mint_all(&grants).await?;
    let before = balances(&chain, payee, &agents).await?;
    step(
        started,
        format!(
            "{} agents funded ({} on small deposits that top up); payee {payee}",
            agents.len(),
            agents.iter().filter(|a| a.tops_up).count()
        ),
    );

    let admin_token = services::random_hex();
    let provider = services::start_provider(
        &provider_bin,
        &run_dir,
        &chain,
        payee,
        &admin_token,
        args.price,
    )
    .await?;
    step(
        started,
        format!(
            "provider listening on {} (admin {}), sled store in {}",
            provider.base,
            provider.admin,
            run_dir.join("provider-store").display()
        ),
    );
    let policy = SettlePolicy {
        min_unsettled: args.settle_units * args.price,
        max_age_secs: args.settle_age_secs,
        batch_size: args.batch_size,
        tick_secs: 1,
    };
    let daemon = services::start_daemon(
        &daemon_bin,
        &run_dir,
        &chain,
        &provider.admin,
        &admin_token,
        payee_key.to_bytes(),
        &policy,
    )
    .await?;
    step(
        started,
        format!(
            "settlement daemon ready (metrics {}): batches of up to {} channels, a channel is settled at {} units unsettled or after {}s",
            daemon.metrics_url, args.batch_size, args.settle_units, args.settle_age_secs
        ),
    );

    let http = reqwest::Client::new();
    let progress = Arc::new(Progress::default());
    let agents_started = Instant::now();
    let reporter = tokio::spawn(report_progress(
        started,
        Arc::clone(&progress),
        agents.clone(),
        workload.clone(),
        chain.reader(),
        http.clone(),
        daemon.metrics_url.clone(),
    ));
    let mut tasks = JoinSet::new();
    for agent in agents.iter().cloned() {
        tasks.spawn(agents::run_agent(
            agent,
            provider.base.clone(),
            workload.clone(),
            Arc::clone(&progress),
        ));
    }
    let mut reports: Vec<AgentReport> = Vec::with_capacity(agents.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(report) => reports.push(report),
            Err(e) => return Err(DemoError::AgentTask(e.to_string())),
        }
    }
    reports.sort_by_key(|r| r.index);
    let agents_elapsed = agents_started.elapsed();
    reporter.abort();
    step(
        started,
        format!(
            "agents done in {:.1}s: {} requests, {} SSE tokens, {} vouchers, {} opens, {} top-ups, {} failures; {} of {} agents refused a request beyond their cap",
            agents_elapsed.as_secs_f64(),
            progress.requests.load(Ordering::Relaxed),
            progress.tokens.load(Ordering::Relaxed),
            agents
                .iter()
                .map(|a| a.client.stats().vouchers_signed)
                .sum::<u64>(),
            agents.iter().map(|a| a.client.stats().opens).sum::<u64>(),
            agents.iter().map(|a| a.client.stats().top_ups).sum::<u64>(),
            progress.failures.load(Ordering::Relaxed),
            reports
                .iter()
                .filter(|r| r.cap_refused == Some(true))
                .count(),
            reports.len()
        ),
    );

    // Channel ids from each client.
    let channels: Vec<(usize, B256)> = agents
        .iter()
        .filter_map(|a| agents::channel_of(a).map(|id| (a.index, id)))
        .collect();
    let ids: Vec<B256> = channels.iter().map(|(_, id)| *id).collect();
    let deadline = Duration::from_secs(args.deadline_secs);

    // Let the daemon catch up: every accepted voucher settled on chain, in batches.
    let mut daemon = daemon;
    let admin = AdminApi {
        http: http.clone(),
        base: provider.admin.clone(),
        token: admin_token.clone(),
    };
    let unsettled_at_close = wait_settled(
        started,
        &chain,
        &admin,
        &mut daemon,
        &ids,
        Duration::from_secs(args.settle_wait_secs),
        Duration::from_secs(args.settle_age_secs + 2),
    )
    .await?;

    // Cooperative close of every channel; the daemon sends `close` for each.
    let mut closes = JoinSet::new();
    for agent in agents.iter().cloned() {
        let url = format!("{}/paid", provider.base);
        closes.spawn(async move {
            let result = agent.client.close(&url).await;
            (agent.index, result.map_err(|e| e.to_string()))
        });
    }
    let mut close_failures = Vec::new();
    while let Some(joined) = closes.join_next().await {
        if let Ok((index, Err(error))) = joined {
            close_failures.push(format!("agent {index}: close: {error}"));
        }
    }
    step(
        started,
        format!(
            "close requested for {} channels ({} failed); waiting for the daemon to close them on chain",
            agents.len() - close_failures.len(),
            close_failures.len()
        ),
    );
    wait_finalized(started, &chain, &mut daemon, &ids, deadline).await?;
    wait_engine_closed(&admin, &ids, Duration::from_secs(20)).await;
    step(started, "every channel finalized on chain; reconciling");

    // Sources: the chain (events, receipts, balances), the engine (admin API), the clients.
    let events = chain.events().await?;
    let costs = chain.costs(reconcile::settlement_txs(&events)).await?;
    let chain_channels = reconcile::fold_events(&events);
    let txs = reconcile::summarize_txs(&events, &costs, payee);
    let after = balances(&chain, payee, &agents).await?;
    let on_chain = chain.channels(&ids).await?;
    let mut facts = Vec::with_capacity(channels.len());
    for ((index, id), record) in channels.iter().zip(&on_chain) {
        let agent = &agents[*index];
        let report = &reports[*index];
        let engine = admin.channel(*id).await?;
        let client_signed = agent.client.channels().first().map_or(0, |s| s.signed);
        facts.push(ChannelFacts {
            agent: *index,
            channel: *id,
            payer: agent.address,
            client_units: report.units(),
            client_signed,
            engine,
            finalized_on_chain: record.finalized,
            cap_refused: report.cap_refused,
        });
    }
    let failures = progress.failures.load(Ordering::Relaxed) + close_failures.len() as u64;
    let metrics = settled_metrics(&http, &daemon.metrics_url, &txs).await;
    let daemon_counts = metrics.as_ref().map(services::Metrics::daemon_counts);
    let checks = reconcile::reconcile(&Inputs {
        channels: &facts,
        chain: &chain_channels,
        txs: &txs,
        before: &before,
        after: &after,
        price: args.price,
        agents: agents.len(),
        failures,
        daemon: daemon_counts,
    });
    let stats: Vec<_> = agents.iter().map(|a| a.client.stats()).collect();
    let errors: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| format!("agent {}: {e}", r.index))
        })
        .chain(close_failures)
        .collect();

    stop(provider, daemon);
    let summary = Summary {
        args: &args,
        run_dir: &run_dir,
        reports: &reports,
        stats: &stats,
        chain_channels: &chain_channels,
        txs: &txs,
        before: &before,
        after: &after,
        checks: &checks,
        metrics: metrics.as_ref(),
        errors: &errors,
        agents_elapsed,
        total_elapsed: started.elapsed(),
        channels: facts.len(),
        unsettled_at_close,
    };
    let pass = summary.print();
    Ok(pass)
}

/// Stops the provider and the daemon gracefully (SIGTERM; they flush their stores).
fn stop(mut provider: Provider, mut daemon: Daemon) {
    for guard in [&mut daemon.guard, &mut provider.guard] {
        if !guard.stop() {
            eprintln!(
                "{} did not stop on SIGTERM and was killed (log {})",
                guard.name(),
                guard.log().display()
            );
        }
    }
}

async fn balances(
    chain: &LocalChain,
    payee: Address,
    agents: &[Agent],
) -> Result<Balances, DemoError> {
    let mut payers = BTreeMap::new();
    for agent in agents {
        payers.insert(agent.address, chain.balance(agent.address).await?);
    }
    Ok(Balances {
        payee: chain.balance(payee).await?,
        escrow: chain.balance(chain.escrow).await?,
        payers,
    })
}

/// Prints one progress line a second while the agents run.
async fn report_progress(
    started: Instant,
    progress: Arc<Progress>,
    agents: Vec<Agent>,
    workload: Workload,
    chain: chain::ChainReader,
    http: reqwest::Client,
    metrics_url: String,
) {
    let total_requests = workload.requests * agents.len() as u64;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    loop {
        every.tick().await;
        let vouchers: u64 = agents
            .iter()
            .map(|a| a.client.stats().vouchers_signed)
            .sum();
        let settled = chain.settled_so_far().await.unwrap_or_default();
        let daemon = match services::scrape(&http, &metrics_url).await {
            Ok(m) => {
                let d = m.daemon_counts();
                format!(
                    "{} settle batches, {} channels pending ({} unsettled)",
                    d.settle_batches,
                    d.pending_channels,
                    summary::tokens(u128::from(d.unsettled))
                )
            }
            Err(_) => "metrics unavailable".into(),
        };
        step(
            started,
            format!(
                "requests {}/{}  SSE tokens {}  vouchers {}  failures {}  | chain: settled {} in {} txs | daemon: {}",
                progress.requests.load(Ordering::Relaxed),
                total_requests,
                progress.tokens.load(Ordering::Relaxed),
                vouchers,
                progress.failures.load(Ordering::Relaxed),
                summary::tokens(settled.amount),
                settled.txs,
                daemon
            ),
        );
    }
}

/// Waits until the chain's settled amount equals the engine's accepted voucher for every
/// channel (the daemon caught up), printing progress. Not an error when the daemon leaves a
/// tail below its thresholds unsettled (no progress for `idle`, or past `patience`): the
/// cooperative close pays it, and the reconciliation checks the final amounts either way.
/// Returns how many channels were still behind.
async fn wait_settled(
    started: Instant,
    chain: &LocalChain,
    admin: &AdminApi,
    daemon: &mut Daemon,
    ids: &[B256],
    patience: Duration,
    idle: Duration,
) -> Result<usize, DemoError> {
    let until = Instant::now() + patience;
    let mut last: Option<(usize, Instant)> = None;
    let mut settled_before: Option<(u128, Instant)> = None;
    loop {
        daemon_alive(daemon)?;
        let records = chain.channels(ids).await?;
        let mut behind = 0;
        for (id, record) in ids.iter().zip(&records) {
            let engine = admin.channel(*id).await?;
            if record.settled != engine.accepted {
                behind += 1;
            }
        }
        if behind == 0 {
            step(
                started,
                "daemon caught up: every accepted voucher is settled on chain",
            );
            return Ok(0);
        }
        let settled: u128 = records.iter().map(|r| r.settled).sum();
        let idle_for = match settled_before {
            Some((before, since)) if before == settled => since.elapsed(),
            _ => {
                settled_before = Some((settled, Instant::now()));
                Duration::ZERO
            }
        };
        if idle_for >= idle || Instant::now() >= until {
            step(
                started,
                format!(
                    "{behind} channels hold a tail of vouchers the daemon's policy leaves for \
                     later; their cooperative close pays it"
                ),
            );
            return Ok(behind);
        }
        let print = match last {
            None => true,
            Some((n, at)) => n != behind || at.elapsed() >= Duration::from_secs(5),
        };
        if print {
            step(
                started,
                format!("waiting for the daemon: {behind} channels with unsettled vouchers"),
            );
            last = Some((behind, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The daemon's metrics once its counters have caught up with the transactions on chain (it
/// may count the last receipts a moment after the chain shows them), or the last scrape after a
/// bounded wait; `None` when `/metrics` cannot be read at all.
async fn settled_metrics(
    http: &reqwest::Client,
    url: &str,
    txs: &reconcile::TxSummary,
) -> Option<services::Metrics> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    loop {
        if let Ok(m) = services::scrape(http, url).await {
            let d = m.daemon_counts();
            let agree = d.settle_batches == txs.settle_txs
                && d.closes == txs.close_txs
                && d.gas_used == txs.settle_gas + txs.close_gas;
            last = Some(m);
            if agree {
                return last;
            }
        }
        if Instant::now() >= until {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn daemon_alive(daemon: &mut Daemon) -> Result<(), DemoError> {
    if daemon.guard.is_running() {
        Ok(())
    } else {
        Err(DemoError::Exited {
            name: daemon.guard.name(),
            log: daemon.guard.log().to_owned(),
        })
    }
}

/// Waits until the escrow reports every channel finalized.
async fn wait_finalized(
    started: Instant,
    chain: &LocalChain,
    daemon: &mut Daemon,
    ids: &[B256],
    deadline: Duration,
) -> Result<(), DemoError> {
    let until = Instant::now() + deadline;
    let mut last: Option<(usize, Instant)> = None;
    loop {
        daemon_alive(daemon)?;
        let open = chain
            .channels(ids)
            .await?
            .iter()
            .filter(|c| !c.finalized)
            .count();
        if open == 0 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(DemoError::Timeout {
                what: format!("the daemon to close {open} channels on chain"),
                after: deadline,
            });
        }
        let print = match last {
            None => true,
            Some((n, at)) => n != open || at.elapsed() >= Duration::from_secs(5),
        };
        if print {
            step(
                started,
                format!("{open} channels not yet finalized on chain"),
            );
            last = Some((open, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Gives the engine a bounded time to learn (from the daemon) that every channel is closed.
/// Not an error when it does not: the reconciliation reports it as a failed check.
async fn wait_engine_closed(admin: &AdminApi, ids: &[B256], deadline: Duration) {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let mut all = true;
        for id in ids {
            match admin.channel(*id).await {
                Ok(c) if c.status == "closed" && c.finalized => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
