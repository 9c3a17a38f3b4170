//! A provider that embeds both the engine and the settlement daemon in one process.
//!
//! ```text
//! SLUICE_RPC_URL=http://127.0.0.1:8545 SLUICE_SECRET=... \
//!     cargo run -p sluice-settle-daemon --example embedded -- settle.toml
//! ```
//!
//! `settle.toml` is the daemon's usual file with no `[feed]` (the engine is the feed); its
//! `[chain]` names the escrow and `[key]` the payee's key; `state.path` must differ from the
//! engine's store directory (`./engine-store` here).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sluice_engine::chain::{RpcChain, RpcChainConfig};
use sluice_engine::http::{Payment, PaymentLayer};
use sluice_engine::protocol::ChallengeSecret;
use sluice_engine::store::{Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, RoutePrice};
use sluice_settle_daemon::config::Config;
use sluice_settle_daemon::runner::run_embedded;
use sluice_settle_daemon::source::EmbeddedFeed;

async fn paid(payment: Payment) -> String {
    format!("paid through channel {}", payment.channel_id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "settle.toml".into());
    // Zero HTTP feeds allowed: the in-process engine is the feed.
    let config = Config::load_embedded(path.as_ref())?;
    let payee = config.key.load_key()?.address()?;
    let chain = RpcChain::connect(RpcChainConfig::new(
        std::env::var("SLUICE_RPC_URL")?.parse()?,
        config.chain.escrow,
        config.chain.chain_id,
    ))
    .await?;
    let token = std::env::var("SLUICE_TOKEN")?.parse()?;
    let engine = Arc::new(Engine::new(
        EngineConfig::new(
            "localhost",
            ChallengeSecret::new(std::env::var("SLUICE_SECRET")?)?,
            config.chain.chain_id,
            config.chain.escrow,
            payee,
            token,
        ),
        SledStore::open("engine-store", Durability::default())?,
        chain,
    )?);
    let route = engine.route(RoutePrice::new(1_000, "request"))?;
    let app = Router::new()
        .route("/paid", get(paid).post(paid))
        .route_layer(PaymentLayer::new(Arc::clone(&engine), route));

    // The daemon follows the engine's store directly: woken by each durable feed entry, and it
    // tells the engine about closes by calling `Engine::refresh_channel`.
    let feed = EmbeddedFeed::new("local", Arc::clone(&engine), 500, Duration::from_secs(10))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(run_embedded(
        config,
        vec![Arc::new(feed)],
        stopped,
        |addr| println!("daemon metrics on http://{addr}/metrics"),
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let _ = stop.send(true);
    daemon.await??;
    Ok(())
}
