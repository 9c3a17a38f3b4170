//! An example paid API: a paid JSON route, a metered SSE route and a free route, gated by the
//! engine's [`PaymentLayer`], plus an admin listener with channel introspection.
//!
//! ```text
//! cargo run -p sluice-engine --example provider -- \
//!     --rpc-url http://127.0.0.1:8545 --chain-id 31337 --escrow 0x… --token 0x… \
//!     --recipient 0x… --store ./provider-store --secret "$(openssl rand -hex 32)" \
//!     --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:8081 --admin-token "$(openssl rand -hex 24)"
//! ```
//!
//! Routes: `GET /paid` (one unit), `GET /stream?tokens=N[&delay_ms=D]` (one unit per token, a
//! token every D ms, vouchers POSTed to the same URL while the stream runs), `GET /free`. Admin (bearer token):
//! `GET /channels/{id}`, `POST /channels/{id}/refresh` (re-read the escrow now; the settlement
//! daemon calls it) and the settlement feed `GET /feed` (token ≥ 32 characters); public:
//! `GET /openapi.json`. Prints `LISTENING http://ADDR` (then `ADMIN http://ADDR`) on stdout
//! once bound; stops gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use axum::extract::Query;
use axum::http::Method;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use futures_util::{StreamExt, stream};
use sluice_engine::chain::{RpcChain, RpcChainConfig, RpcUrl};
use sluice_engine::http::admin_router;
use sluice_engine::http::feed::{FeedAuth, feed_router};
use sluice_engine::http::openapi::{OpenApiDoc, openapi_router};
use sluice_engine::http::{Payment, PaymentLayer, PaymentOptions, SseMeter};
use sluice_engine::protocol::{ChallengeSecret, Timestamp};
use sluice_engine::store::{ChannelStore, Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, RoutePrice};

type ProviderEngine = Engine<SledStore, RpcChain>;

/// Flags (each also read from the environment variable named in its help).
#[derive(Parser, Debug)]
#[command(
    name = "provider",
    about = "Sluice example provider: a paid API on MPP sessions"
)]
struct Args {
    /// Public listen address (port 0 picks a free port).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// JSON-RPC endpoint of the chain.
    #[arg(long, env = "SLUICE_RPC_URL")]
    rpc_url: RpcUrl,
    /// Chain id.
    #[arg(long, env = "SLUICE_CHAIN_ID")]
    chain_id: u64,
    /// Escrow contract.
    #[arg(long, env = "SLUICE_ESCROW")]
    escrow: Address,
    /// Token every channel must hold.
    #[arg(long, env = "SLUICE_TOKEN")]
    token: Address,
    /// Payee every channel must pay.
    #[arg(long, env = "SLUICE_RECIPIENT")]
    recipient: Address,
    /// Directory of the channel store (sled).
    #[arg(long, env = "SLUICE_STORE")]
    store: PathBuf,
    /// Challenge-binding secret, at least 32 bytes.
    #[arg(long, env = "SLUICE_SECRET", hide_env_values = true)]
    secret: String,
    /// Price of one unit (a `/paid` request, a streamed token), in token base units.
    #[arg(long, env = "SLUICE_PRICE", default_value_t = 1_000)]
    price: u128,
    /// Smallest voucher increase accepted (must not exceed the price for mppx clients).
    #[arg(long, env = "SLUICE_MIN_VOUCHER_DELTA")]
    min_voucher_delta: Option<u128>,
    /// Deposit suggested to new payers.
    #[arg(long, env = "SLUICE_SUGGESTED_DEPOSIT")]
    suggested_deposit: Option<u128>,
    /// Realm written into challenges.
    #[arg(long, env = "SLUICE_REALM", default_value = "localhost")]
    realm: String,
    /// How long a paused stream waits for a voucher, in milliseconds.
    #[arg(long, env = "SLUICE_STREAM_WAIT_MS", default_value_t = 60_000)]
    stream_wait_ms: u64,
    /// Units a metered stream charges per durable store update (1: every token durably before
    /// it is sent; K > 1: up to K tokens reserved at once, the unused rest given back when the
    /// stream ends; a crash can leave up to K − 1 unserved units charged).
    #[arg(long, env = "SLUICE_SSE_CHARGE_BATCH", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    sse_charge_batch: u64,
    /// Suggest the latest opened channel to requests without a credential (single-payer demos
    /// and the mppx interop test only).
    #[arg(long, env = "SLUICE_SUGGEST_LATEST_CHANNEL")]
    suggest_latest_channel: bool,
    /// Admin listen address (channel introspection, settlement feed).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin listener.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    tokens: Option<u32>,
    /// Milliseconds between tokens (a slow token source; at most [`MAX_DELAY_MS`]).
    delay_ms: Option<u64>,
}

/// The longest pause between two tokens `?delay_ms=` may ask for.
const MAX_DELAY_MS: u64 = 1_000;

/// The most tokens one stream serves.
const MAX_TOKENS: u32 = 100_000;
/// How often expired idempotency outcomes are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

async fn paid(payment: Payment) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "answer": "paid content",
        "channelId": payment.channel_id.to_string(),
        "unitsCharged": payment.units_charged,
    }))
}

async fn stream_tokens(meter: SseMeter, Query(query): Query<StreamQuery>) -> Response {
    let tokens = query.tokens.unwrap_or(10).min(MAX_TOKENS);
    let delay = Duration::from_millis(query.delay_ms.unwrap_or(0).min(MAX_DELAY_MS));
    let content = stream::iter(0..tokens).then(move |i| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        format!("token {i}")
    });
    meter.stream(content)
}

fn app(engine: &Arc<ProviderEngine>, args: &Args) -> Result<Router, String> {
    let price = |unit: &str, route_id: &str| RoutePrice {
        amount: args.price,
        unit_type: unit.into(),
        description: None,
        suggested_deposit: args.suggested_deposit,
        min_voucher_delta: args.min_voucher_delta,
        route_id: Some(route_id.into()),
    };
    let paid_route = engine
        .route(price("request", "paid"))
        .map_err(|e| e.to_string())?;
    let stream_route = engine
        .route(price("llm_token", "stream"))
        .map_err(|e| e.to_string())?;
    // The discovery document lists exactly the routes (and prices) the layers above charge.
    let doc = OpenApiDoc::new("Sluice example provider", env!("CARGO_PKG_VERSION"))
        .paid(
            Method::GET,
            "/paid",
            &paid_route,
            "A paid JSON answer (one unit per request)",
        )
        .and_then(|doc| {
            doc.paid(
                Method::GET,
                "/stream",
                &stream_route,
                "A paid server-sent event stream (one unit per token)",
            )
        })
        .and_then(|doc| doc.free(Method::GET, "/free", "Free content"))
        .map_err(|e| e.to_string())?;
    let options = PaymentOptions {
        suggest_latest_channel: args.suggest_latest_channel,
        ..PaymentOptions::default()
    };
    let stream_options = PaymentOptions {
        units_per_request: 0,
        stream_voucher_wait: Duration::from_millis(args.stream_wait_ms),
        stream_charge_batch: args.sse_charge_batch,
        ..options.clone()
    };
    let paid = Router::new()
        .route("/paid", get(paid).post(paid))
        .route_layer(PaymentLayer::with_options(
            Arc::clone(engine),
            paid_route,
            options,
        ));
    let streamed = Router::new()
        .route("/stream", get(stream_tokens).post(stream_tokens))
        .route_layer(PaymentLayer::with_options(
            Arc::clone(engine),
            stream_route,
            stream_options,
        ));
    Ok(Router::new()
        .merge(paid)
        .merge(streamed)
        .merge(openapi_router(&doc))
        .route("/free", get(|| async { "free content" })))
}

fn admin_app(engine: Arc<ProviderEngine>, token: &str) -> Result<Router, String> {
    // The settlement feed and the admin routes (channel introspection, forced chain refresh for
    // the settlement daemon), behind one bearer token; only ever on the admin listener.
    let auth = FeedAuth::new(token).map_err(|e| format!("--admin-token: {e}"))?;
    Ok(admin_router(Arc::clone(&engine), auth.clone()).merge(feed_router(engine, auth)))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn run(args: Args) -> Result<(), String> {
    let secret = ChallengeSecret::new(&args.secret).map_err(|e| format!("--secret: {e}"))?;
    let store = SledStore::open(&args.store, Durability::default())
        .map_err(|e| format!("--store {}: {e}", args.store.display()))?;
    let chain = RpcChain::connect(RpcChainConfig::new(
        args.rpc_url.clone(),
        args.escrow,
        args.chain_id,
    ))
    .await
    .map_err(|e| format!("--rpc-url: {e}"))?;
    let config = EngineConfig::new(
        args.realm.clone(),
        secret,
        args.chain_id,
        args.escrow,
        args.recipient,
        args.token,
    );
    let engine = Arc::new(Engine::new(config, store, chain).map_err(|e| e.to_string())?);
    engine.rebuild_payer_index().map_err(|e| e.to_string())?;
    let app = app(&engine, &args)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("LISTENING http://{addr}");
    let admin = match (args.admin_listen, &args.admin_token) {
        (Some(listen), Some(token)) => {
            let admin = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("--admin-listen {listen}: {e}"))?;
            let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
            println!("ADMIN http://{admin_addr}");
            Some((admin, admin_app(Arc::clone(&engine), token)?))
        }
        (Some(_), None) => return Err("--admin-listen needs --admin-token".into()),
        _ => None,
    };

    let pruner = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                let now = Timestamp::from_system_time(std::time::SystemTime::now());
                if let Some(now) = now
                    && let Err(error) = engine.prune_idempotency(now)
                {
                    eprintln!("pruning idempotency outcomes failed: {error}");
                }
            }
        })
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin_task = admin.map(|(listener, app)| {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.changed().await;
                })
                .await
        })
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let _ = stop.send(true);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    pruner.abort();
    engine.store().sync().map_err(|e| e.to_string())?;
    served.map_err(|e| e.to_string())?;
    eprintln!("provider stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("provider: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
