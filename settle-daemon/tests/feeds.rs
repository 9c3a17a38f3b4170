//! One daemon, two engine nodes: two example-provider processes (two stores, the same payee and
//! escrow) and the daemon binary following both feeds (`[[feeds]]`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use alloy::primitives::B256;
use support::world::{DaemonSettings, PRICE, PaidApi, Payer, World, eventually, metric};

const DEPOSIT: u128 = 1_000_000;

/// Opens `count` channels for `payer` on `node`, each with one voucher above the first
/// request's price; returns (channel, voucher).
async fn open_on(
    node: &impl PaidApi,
    payer: &mut Payer,
    count: usize,
    seed: u8,
) -> Vec<(B256, u128)> {
    let mut out = Vec::new();
    for i in 0..count {
        let mut salt = [seed; 32];
        salt[31] = i as u8;
        let channel = payer.open(node, DEPOSIT, B256::from(salt), PRICE).await;
        let amount = PRICE + 1 + 97 * (i as u128 + 1) + u128::from(seed);
        payer.voucher(node, channel, amount).await;
        out.push((channel, amount));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_settle_through_one_daemon_and_one_failing_node_stops_nothing_else() {
    const PER_NODE: usize = 10;
    const N: usize = 5;
    let world = World::start().await; // node a: the world's provider
    let mut b = world.start_node("b");
    let mut alice = world.payer(1, DEPOSIT * PER_NODE as u128).await;
    let mut bob = world.payer(2, DEPOSIT * PER_NODE as u128).await;
    let on_a = open_on(&world, &mut alice, PER_NODE, 0xa0).await;
    let on_b = open_on(&b, &mut bob, PER_NODE, 0xb0).await;
    // Each node knows only its own channels.
    assert_eq!(
        b.engine_channel(on_a[0].0).await["acceptedCumulative"],
        serde_json::Value::Null
    );
    assert_eq!(
        b.engine_channel(on_b[0].0).await["acceptedCumulative"],
        on_b[0].1.to_string()
    );

    let settings = DaemonSettings {
        batch_size: N,
        ..DaemonSettings::default()
    };
    let feeds = [("a", world.admin.as_str()), ("b", b.admin.as_str())];
    let config = world.daemon_config_feeds(&world.rpc_url(), &settings, &feeds);
    let mut daemon = world.start_daemon(&config);
    let all: Vec<(B256, u128)> = on_a.iter().chain(&on_b).copied().collect();
    eventually(
        "every channel of both nodes settled",
        Duration::from_secs(40),
        || async {
            let settled = world.settled_events().await;
            settled
                .iter()
                .map(|(_, c, _)| *c)
                .collect::<BTreeSet<_>>()
                .len()
                == all.len()
        },
    )
    .await;
    for (channel, amount) in &all {
        assert_eq!(world.channel(*channel).await.settled, *amount, "{channel}");
    }
    let events = world.settled_events().await;
    assert_eq!(events.len(), all.len(), "each channel settled once");
    let txs: BTreeSet<B256> = events.iter().map(|(tx, _, _)| *tx).collect();
    // Each node's channels are a multiple of N, so however the two feeds' pages interleave
    // with the planning rounds, the batches are full: ⌈2·10/5⌉ = 4.
    assert_eq!(txs.len(), all.len().div_ceil(N));
    let total: u128 = all.iter().map(|(_, a)| a).sum();
    assert_eq!(world.balance(world.payee.address()).await, total);
    eventually("both feeds pulled", Duration::from_secs(10), || async {
        daemon.health().await.0 == 200
    })
    .await;
    let text = daemon.metrics().await;
    assert!(
        metric(&text, "sluice_daemon_feed_cursor{feed=\"a\"}").unwrap() > 0,
        "{text}"
    );
    assert!(
        metric(&text, "sluice_daemon_feed_cursor{feed=\"b\"}").unwrap() > 0,
        "{text}"
    );

    // A cooperative close on node b: the daemon closes on chain and tells node b (the node
    // whose feed delivered the channel), not node a.
    let (closing, owed) = on_b[3];
    let final_amount = owed + 500;
    bob.close(&b, closing, final_amount).await;
    eventually("the close on chain", Duration::from_secs(30), || async {
        world.channel(closing).await.finalized
    })
    .await;
    assert_eq!(world.balance(world.payee.address()).await, total + 500);
    eventually(
        "node b learns the close",
        Duration::from_secs(10),
        || async { b.engine_channel(closing).await["status"] == "closed" },
    )
    .await;
    let told: Vec<String> = world
        .daemon_logs()
        .lines()
        .filter(|l| l.contains("engine told") && l.contains(&closing.to_string()))
        .map(str::to_owned)
        .collect();
    assert!(told.iter().any(|l| l.contains("feed=b")), "{told:?}");
    assert!(!told.iter().any(|l| l.contains("feed=a")), "{told:?}");
    assert_eq!(bob.try_voucher(&b, closing, final_amount + 1).await, 410);

    // Node b dies: /health names it; node a's channels still settle.
    let text = daemon.metrics().await;
    let cursor_b = metric(&text, "sluice_daemon_feed_cursor{feed=\"b\"}").unwrap();
    b.kill();
    eventually("health names node b", Duration::from_secs(20), || async {
        let (status, body) = daemon.health().await;
        status == 503 && body.contains("feed b:") && !body.contains("feed a:")
    })
    .await;
    let (raised, before) = on_a[2];
    let raised_to = before + 4_321;
    alice.voucher(&world, raised, raised_to).await;
    eventually(
        "node a's raise settles while b is down",
        Duration::from_secs(30),
        || async { world.channel(raised).await.settled == raised_to },
    )
    .await;
    let text = daemon.metrics().await;
    assert!(metric(&text, "sluice_daemon_feed_errors_total{feed=\"b\"}").unwrap() > 0);
    assert_eq!(
        metric(&text, "sluice_daemon_feed_errors_total{feed=\"a\"}"),
        Some(0)
    );
    eventually(
        "a's cursor past the raise",
        Duration::from_secs(10),
        || async { metric(&daemon.metrics().await, "sluice_daemon_channels_pending") == Some(0) },
    )
    .await;
    let cursor_a = metric(
        &daemon.metrics().await,
        "sluice_daemon_feed_cursor{feed=\"a\"}",
    )
    .unwrap();
    assert!(daemon.terminate().success());
    let settled_before = world.settled_events().await.len();
    let paid_before = world.balance(world.payee.address()).await;

    // Node b comes back on new ports with its store; the daemon restarts on its database with
    // b's new URL under the same name: each feed resumes at its own cursor, nothing is paid
    // twice.
    let b = world.start_node("b");
    let feeds = [("a", world.admin.as_str()), ("b", b.admin.as_str())];
    let config = world.daemon_config_feeds(&world.rpc_url(), &settings, &feeds);
    let mut again = world.start_daemon(&config);
    eventually(
        "restarted daemon healthy",
        Duration::from_secs(20),
        || async { again.health().await.0 == 200 },
    )
    .await;
    let text = again.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_feed_cursor{feed=\"a\"}"),
        Some(cursor_a),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_daemon_feed_cursor{feed=\"b\"}"),
        Some(cursor_b),
        "{text}"
    );
    assert_eq!(metric(&text, "sluice_daemon_channels_pending"), Some(0));
    // A voucher raised on node b after the restart settles through its resumed feed.
    let (later, was) = on_b[0];
    bob.voucher(&b, later, was + 999).await;
    eventually(
        "node b's raise settles after the restart",
        Duration::from_secs(30),
        || async { world.channel(later).await.settled == was + 999 },
    )
    .await;
    assert_eq!(world.settled_events().await.len(), settled_before + 1);
    assert_eq!(
        world.balance(world.payee.address()).await,
        paid_before + 999
    );
    assert!(again.terminate().success());
}
