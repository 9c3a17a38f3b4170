//! A provider that embeds both the engine and the daemon: an [`Engine`] over sled serving the
//! paid API in this process, and [`run_embedded`] following it through an [`EmbeddedFeed`]
//! (no feed endpoint, no admin listener) on anvil. Payers pay over HTTP; the daemon settles,
//! closes, and tells the engine by calling `Engine::refresh_channel`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use axum::Router;
use axum::routing::get;
use sluice_engine::chain::{RpcChain, RpcChainConfig};
use sluice_engine::http::{Payment, PaymentLayer};
use sluice_engine::protocol::ChallengeSecret;
use sluice_engine::store::{ChannelStatus, ChannelStore, Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, RoutePrice};
use sluice_settle_daemon::config::Config;
use sluice_settle_daemon::runner::run_embedded;
use sluice_settle_daemon::source::{EmbeddedFeed, SettlementFeed};
use support::world::{CHAIN_ID, DaemonSettings, PRICE, World, eventually, metric};

async fn paid(payment: Payment) -> String {
    payment.channel_id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_daemon_settles_and_closes_with_no_http_feed() {
    const DEPOSIT: u128 = 100_000;
    let mut world = World::start_chain_only().await;

    // The provider's engine, in this process, with its own sled store.
    let store = SledStore::open(world.dir.path().join("engine-store"), Durability::default())
        .expect("engine store");
    let chain = RpcChain::connect(RpcChainConfig::new(
        world.rpc_url().parse().expect("rpc url"),
        world.escrow,
        CHAIN_ID,
    ))
    .await
    .expect("chain");
    let engine = Arc::new(
        Engine::new(
            EngineConfig::new(
                "daemon.test",
                ChallengeSecret::new("embedded-daemon-test-secret-0123456789abcdef")
                    .expect("secret"),
                CHAIN_ID,
                world.escrow,
                world.payee.address(),
                world.token,
            ),
            store,
            chain,
        )
        .expect("engine"),
    );
    let route = engine
        .route(RoutePrice::new(PRICE, "request"))
        .expect("route");
    let app = Router::new()
        .route("/paid", get(paid).post(paid))
        .route_layer(PaymentLayer::new(Arc::clone(&engine), route));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    world.api = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The daemon, in the same process: its key and chain from a settle.toml that names no
    // HTTP feed, its own database apart from the engine's store, the engine as its feed.
    let path = world.daemon_config_feeds(&world.rpc_url(), &DaemonSettings::default(), &[]);
    let config = Config::load_embedded(&path).expect("embedded config");
    assert!(config.http_feeds().is_empty());
    assert_ne!(config.state.path, world.dir.path().join("engine-store"));
    let feed: Arc<dyn SettlementFeed> = Arc::new(
        EmbeddedFeed::new("local", Arc::clone(&engine), 500, Duration::from_secs(5)).expect("feed"),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (ready, address) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(run_embedded(config, vec![feed], stopped, move |addr| {
        let _ = ready.send(addr);
    }));
    let metrics_url = format!("http://{}/metrics", address.await.expect("ready"));

    let mut alice = world.payer(1, 3 * DEPOSIT).await;
    let mut channels = Vec::new();
    for i in 0..3u8 {
        let channel = alice
            .open(&world, DEPOSIT, B256::repeat_byte(0x40 + i), PRICE)
            .await;
        let amount = PRICE + 1_000 * u128::from(i + 1);
        alice.voucher(&world, channel, amount).await;
        channels.push((channel, amount));
    }
    for (channel, amount) in &channels {
        eventually(
            "settled by the embedded daemon",
            Duration::from_secs(30),
            || async { world.channel(*channel).await.settled == *amount },
        )
        .await;
    }

    // A cooperative close: the daemon closes on chain and tells the engine directly.
    let (closing, owed) = channels[1];
    alice.close(&world, closing, owed + 250).await;
    eventually("the close on chain", Duration::from_secs(30), || async {
        world.channel(closing).await.finalized
    })
    .await;
    eventually(
        "the engine learns the close",
        Duration::from_secs(10),
        || async {
            engine
                .store()
                .get(&closing)
                .expect("store")
                .is_some_and(|record| record.status == ChannelStatus::Closed)
        },
    )
    .await;
    assert_eq!(alice.try_voucher(&world, closing, owed + 500).await, 410);
    let paid: u128 = channels.iter().map(|(_, a)| a).sum::<u128>() + 250;
    assert_eq!(world.balance(world.payee.address()).await, paid);

    let text = reqwest::get(&metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&text, "sluice_daemon_feed_cursor{feed=\"local\"}").unwrap() > 0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"close\"}"),
        Some(1)
    );
    stop.send(true).expect("daemon running");
    daemon.await.expect("task").expect("clean stop");
    server.abort();
}
