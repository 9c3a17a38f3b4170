//! The daemon binary as a real process against anvil and the engine's example provider (also
//! a real process): many channels settled in ⌈channels/N⌉ batches with exact amounts, the
//! metrics and health endpoints, a graceful SIGTERM; cooperative close and the watchtower.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use alloy::primitives::B256;
use support::world::{DaemonSettings, GRACE, PRICE, World, eventually, metric, open_channels};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_channels_settle_in_ceil_n_batches_with_exact_amounts() {
    const CHANNELS: usize = 200;
    const N: usize = 50;
    let world = World::start().await;
    let vouchers = open_channels(&world, CHANNELS, 7).await;
    assert_eq!(vouchers.len(), CHANNELS);
    // The engine holds each channel's latest voucher.
    for (channel, amount) in vouchers.iter().take(5) {
        let record = world.engine_channel(*channel).await;
        assert_eq!(record["acceptedCumulative"], amount.to_string());
    }

    let config = world.daemon_config(
        &world.rpc_url(),
        &DaemonSettings {
            batch_size: N,
            ..DaemonSettings::default()
        },
    );
    let mut daemon = world.start_daemon(&config);
    eventually("every channel settled", Duration::from_secs(90), || async {
        let settled = world.settled_events().await;
        let channels: BTreeSet<B256> = settled.iter().map(|(_, c, _)| *c).collect();
        channels.len() == CHANNELS
    })
    .await;

    // Exact: the on-chain settled amount of every channel is the engine's latest voucher.
    for (channel, amount) in &vouchers {
        let on_chain = world.channel(*channel).await;
        assert_eq!(on_chain.settled, *amount, "channel {channel}");
        assert!(!on_chain.finalized);
        let engine = world.engine_channel(*channel).await;
        assert_eq!(engine["acceptedCumulative"], amount.to_string());
    }
    let total: u128 = vouchers.values().sum();
    assert_eq!(world.balance(world.payee.address()).await, total);

    // ⌈200/N⌉ settleBatch transactions, each one settling each channel once.
    let events = world.settled_events().await;
    assert_eq!(events.len(), CHANNELS, "each channel settled exactly once");
    let txs: BTreeSet<B256> = events.iter().map(|(tx, _, _)| *tx).collect();
    assert_eq!(txs.len(), CHANNELS.div_ceil(N));
    let mut gas = 0u128;
    for tx in &txs {
        gas += u128::from(world.gas_used(*tx).await);
    }

    // The metrics show what happened (values, not just names).
    eventually("metrics caught up", Duration::from_secs(10), || async {
        let text = daemon.metrics().await;
        metric(&text, "sluice_daemon_channels_pending") == Some(0)
    })
    .await;
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"settle_batch\"}"),
        Some(txs.len() as u128),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_daemon_transactions_total{outcome=\"mined\"}"),
        Some(txs.len() as u128)
    );
    assert_eq!(metric(&text, "sluice_daemon_gas_used_total"), Some(gas));
    assert_eq!(metric(&text, "sluice_daemon_unsettled_amount"), Some(0));
    let head: u64 = world.chain_head().await;
    assert!(metric(&text, "sluice_daemon_last_block").unwrap() <= u128::from(head));
    assert!(metric(&text, "sluice_daemon_last_block").unwrap() > 0);
    assert!(metric(&text, "sluice_daemon_chain_lag_blocks").is_some());
    assert_eq!(
        metric(&text, "sluice_daemon_errors_total{kind=\"skipped_item\"}"),
        None
    );
    let (status, body) = daemon.health().await;
    assert_eq!(status, 200, "{body}");

    // SIGTERM: a clean exit; the key and the token never reach the logs.
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let logs = world.daemon_logs();
    assert!(logs.contains("transaction confirmed"));
    let key_hex = alloy::primitives::hex::encode(world.payee.to_bytes());
    assert!(!logs.contains(&key_hex));
    assert!(!logs.contains(support::world::ADMIN_TOKEN));

    // A restart finds nothing to do: no second payment.
    let mut again = world.start_daemon(&config);
    eventually(
        "restarted daemon healthy",
        Duration::from_secs(20),
        || async { again.health().await.0 == 200 },
    )
    .await;
    let text = again.metrics().await;
    assert_eq!(metric(&text, "sluice_daemon_channels_pending"), Some(0));
    assert_eq!(world.settled_events().await.len(), CHANNELS);
    assert!(again.terminate().success());
    let _ = GRACE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_close_and_watchtower_close_pay_exactly_and_tell_the_engine() {
    const DEPOSIT: u128 = 100_000;
    let world = World::start().await;
    // Thresholds that never trigger: only closes move money in this test.
    let config = world.daemon_config(
        &world.rpc_url(),
        &DaemonSettings {
            min_unsettled_amount: 1_000_000_000_000,
            ..DaemonSettings::default()
        },
    );
    let mut daemon = world.start_daemon(&config);

    let mut alice = world.payer(1, DEPOSIT).await;
    let mut bob = world.payer(2, DEPOSIT).await;
    let coop = alice
        .open(&world, DEPOSIT, B256::repeat_byte(1), PRICE)
        .await;
    let watched = bob.open(&world, DEPOSIT, B256::repeat_byte(2), PRICE).await;
    alice.voucher(&world, coop, 12_345).await;
    bob.voucher(&world, watched, 23_456).await;
    let alice_before = world.balance(alice.address()).await;
    let bob_before = world.balance(bob.address()).await;

    // Cooperative close: the payer's close voucher makes the engine mark the channel closing;
    // the daemon closes it on chain: payee paid the voucher, payer refunded the rest.
    alice.close(&world, coop, 13_000).await;
    eventually(
        "cooperative close on chain",
        Duration::from_secs(30),
        || async { world.channel(coop).await.finalized },
    )
    .await;
    assert_eq!(world.balance(world.payee.address()).await, 13_000);
    assert_eq!(
        world.balance(alice.address()).await,
        alice_before + DEPOSIT - 13_000
    );
    eventually(
        "the engine learns the channel is closed",
        Duration::from_secs(10),
        || async { world.engine_channel(coop).await["status"] == "closed" },
    )
    .await;

    // Watchtower: the payer asks the escrow to close (it could withdraw after the grace
    // period, taking back what it owes); the daemon closes with the voucher first.
    assert!(world.send_raw(bob.request_close(watched)).await);
    eventually(
        "watchtower close on chain",
        Duration::from_secs(30),
        || async { world.channel(watched).await.finalized },
    )
    .await;
    assert_eq!(world.balance(world.payee.address()).await, 13_000 + 23_456);
    assert_eq!(
        world.balance(bob.address()).await,
        bob_before + DEPOSIT - 23_456
    );
    // After the grace period the payer's withdraw finds nothing left.
    world
        .rpc("evm_increaseTime", serde_json::json!([GRACE + 1]))
        .await;
    world.mine().await;
    assert!(
        !world.send_raw(bob.withdraw(watched)).await,
        "withdraw reverts"
    );
    assert_eq!(
        world.balance(bob.address()).await,
        bob_before + DEPOSIT - 23_456
    );
    assert_eq!(world.balance(world.escrow).await, 0);
    eventually(
        "the engine learns the watched channel closed",
        Duration::from_secs(10),
        || async { world.engine_channel(watched).await["status"] == "closed" },
    )
    .await;
    // The engine refuses vouchers on both now (410).
    assert_eq!(alice.try_voucher(&world, coop, 14_000).await, 410);
    assert_eq!(bob.try_voucher(&world, watched, 24_000).await, 410);
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"close\"}"),
        Some(2),
        "{text}"
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_with_a_reason_while_the_feed_refuses_the_token() {
    const WRONG: &str = "a-wrong-but-well-formed-feed-token-0123456789";
    let world = World::start().await;
    let config = world.daemon_config(&world.rpc_url(), &DaemonSettings::default());
    let mut daemon = world.start_daemon_with_env(
        &config,
        &[
            ("SLUICE_DAEMON_FEED_TOKEN__ENV", "SLUICE_TEST_WRONG_TOKEN"),
            ("SLUICE_TEST_WRONG_TOKEN", WRONG),
        ],
    );
    eventually("feed errors counted", Duration::from_secs(20), || async {
        metric(
            &daemon.metrics().await,
            "sluice_daemon_errors_total{kind=\"feed\"}",
        ) >= Some(1)
    })
    .await;
    let (status, body) = daemon.health().await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "unhealthy");
    assert!(
        body["reason"]
            .as_str()
            .expect("reason")
            .starts_with("feed default:"),
        "{body}"
    );
    assert!(daemon.terminate().success());
    assert!(!world.daemon_logs().contains(WRONG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_gate_both_events_and_receipts() {
    // Anvil mines a block per transaction and none otherwise, so the test decides when a block
    // gets its second confirmation.
    let world = World::start().await;
    let mut payer = world.payer(1, 4 * 100_000).await;
    let mut vouchers = Vec::new();
    for i in 0..4u8 {
        let channel = payer
            .open(&world, 100_000, B256::repeat_byte(0x40 + i), PRICE)
            .await;
        let amount = PRICE + 1_000 * u128::from(i + 1);
        payer.voucher(&world, channel, amount).await;
        vouchers.push((channel, amount));
    }
    let config = world.daemon_config(
        &world.rpc_url(),
        &DaemonSettings {
            confirmations: 2,
            ..DaemonSettings::default()
        },
    );
    let daemon = world.start_daemon(&config);
    // The newest open (in the head block) has one confirmation: its salt is not known yet, so
    // the first batch carries the other three.
    eventually("the first batch mined", Duration::from_secs(30), || async {
        world.settled_events().await.len() == 3
    })
    .await;
    let last = vouchers[3].0;
    assert_eq!(world.channel(last).await.settled, 0);
    // The batch's block is the head: one confirmation, so the daemon has not counted it.
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"settle_batch\"}"),
        None,
        "{text}"
    );
    // Each new block confirms what waited; the last channel follows in a second batch.
    eventually(
        "everything settled and confirmed",
        Duration::from_secs(30),
        || async {
            world.mine().await;
            let text = daemon.metrics().await;
            metric(&text, "sluice_daemon_batches_total{kind=\"settle_batch\"}") == Some(2)
        },
    )
    .await;
    for (channel, amount) in &vouchers {
        assert_eq!(world.channel(*channel).await.settled, *amount);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_request_cancelled_by_a_top_up_does_not_close_the_channel() {
    // With 2 confirmations the daemon scans the block of the payer's `requestClose` while the
    // `topUp` that cancels it (the next block) is still unconfirmed: it plans a watchtower
    // close. The re-read before sending shows no request any more and the engine never marked
    // the channel closing, so the payer keeps its channel.
    const DEPOSIT: u128 = 100_000;
    let world = World::start().await;
    let mut payer = world.payer(1, 2 * DEPOSIT).await;
    let channel = payer
        .open(&world, DEPOSIT, B256::repeat_byte(0x51), PRICE)
        .await;
    payer.voucher(&world, channel, 20_000).await;
    let config = world.daemon_config(
        &world.rpc_url(),
        &DaemonSettings {
            confirmations: 2,
            min_unsettled_amount: 1_000_000_000_000,
            ..DaemonSettings::default()
        },
    );
    let daemon = world.start_daemon(&config);
    eventually(
        "the daemon holds the voucher",
        Duration::from_secs(30),
        || async {
            metric(&daemon.metrics().await, "sluice_daemon_unsettled_amount") == Some(20_000)
        },
    )
    .await;
    assert!(world.send_raw(payer.request_close(channel)).await);
    let requested_in = world.chain_head().await;
    assert!(world.send_raw(payer.top_up(channel, DEPOSIT)).await);
    assert_eq!(world.channel(channel).await.closeRequestedAt, 0);
    // No block is mined until the daemon has scanned the request's block (the cancel's has one
    // confirmation only).
    eventually(
        "the daemon scanned the request",
        Duration::from_secs(30),
        || async {
            metric(&daemon.metrics().await, "sluice_daemon_last_block")
                >= Some(u128::from(requested_in))
        },
    )
    .await;
    // A round after the one that scanned the request's block has scanned the cancel's.
    eventually(
        "the daemon scanned the cancelling top-up",
        Duration::from_secs(30),
        || async {
            world.mine().await;
            metric(&daemon.metrics().await, "sluice_daemon_last_block")
                >= Some(u128::from(requested_in + 1))
        },
    )
    .await;
    let on_chain = world.channel(channel).await;
    assert!(
        !on_chain.finalized,
        "the daemon closed a channel the payer kept"
    );
    assert_eq!(on_chain.deposit, 2 * DEPOSIT);
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"close\"}"),
        None,
        "{text}"
    );
    // The session goes on: the engine takes a higher voucher.
    assert_eq!(payer.try_voucher(&world, channel, 30_000).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_reverted_once_is_settled_again_once_it_can_be() {
    // The batch passes its gas estimate and waits in the pool; before it is mined the token
    // starts refusing transfers (its code swapped for `revert(0, 0)`, as a paused token
    // would), so the batch reverts. The token comes back: the vouchers, which the escrow never
    // refused, are settled by a new batch.
    const DEPOSIT: u128 = 100_000;
    let world = World::start().await;
    let mut payer = world.payer(1, 2 * DEPOSIT).await;
    let mut vouchers = Vec::new();
    for (i, amount) in [(0x61u8, 11_000u128), (0x62, 12_000)] {
        let channel = payer
            .open(&world, DEPOSIT, B256::repeat_byte(i), PRICE)
            .await;
        payer.voucher(&world, channel, amount).await;
        vouchers.push((channel, amount));
    }
    world.automine(false).await;
    let config = world.daemon_config(&world.rpc_url(), &DaemonSettings::default());
    let daemon = world.start_daemon(&config);
    let payee = world.payee.address();
    eventually("the batch in the pool", Duration::from_secs(30), || async {
        !world.pool_of(payee).await.is_empty()
    })
    .await;
    let code = world
        .rpc("eth_getCode", serde_json::json!([world.token, "latest"]))
        .await;
    world
        .rpc(
            "anvil_setCode",
            serde_json::json!([world.token, "0x60006000fd"]),
        )
        .await;
    world.mine().await;
    eventually("the revert counted", Duration::from_secs(30), || async {
        metric(
            &daemon.metrics().await,
            "sluice_daemon_transactions_total{outcome=\"reverted\"}",
        ) == Some(1)
    })
    .await;
    for (channel, _) in &vouchers {
        assert_eq!(world.channel(*channel).await.settled, 0);
    }
    world
        .rpc("anvil_setCode", serde_json::json!([world.token, code]))
        .await;
    world.automine(true).await;
    eventually(
        "settled after the revert",
        Duration::from_secs(30),
        || async {
            let mut all = true;
            for (channel, amount) in &vouchers {
                all &= world.channel(*channel).await.settled == *amount;
            }
            all
        },
    )
    .await;
    assert_eq!(world.balance(payee).await, 11_000 + 12_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_or_the_wrong_chain_stops_the_daemon_before_ready() {
    let world = World::start().await;
    let config = world.daemon_config(&world.rpc_url(), &DaemonSettings::default());
    let run = |env: (&str, &str)| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice-settle-daemon"))
            .args(["run", "--config"])
            .arg(&config)
            .env("SLUICE_TEST_FEED_TOKEN", support::world::ADMIN_TOKEN)
            .env(env.0, env.1)
            .output()
            .expect("runs")
    };
    // A configuration error: exit 2, the field named, nothing on stdout.
    let bad = run(("SLUICE_DAEMON_POLICY_BATCH_SIZE", "0"));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("policy.batch_size"));
    assert!(bad.stdout.is_empty());
    // A node on another chain: exit 1 before READY.
    let wrong = run(("SLUICE_DAEMON_CHAIN_CHAIN_ID", "1"));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("WrongChain"));
    assert!(wrong.stdout.is_empty());
    // A grace period that is not the escrow's (deadlines read from the escrow would be
    // computed late): exit 1 before READY, both values named.
    let grace = run(("SLUICE_DAEMON_POLICY_CLOSE_GRACE_PERIOD_SECS", "900"));
    assert_eq!(grace.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&grace.stderr);
    assert!(
        stderr.contains("close_grace_period_secs is 900 s")
            && stderr.contains(&format!("CLOSE_GRACE_PERIOD is {GRACE} s")),
        "{stderr}"
    );
    assert!(grace.stdout.is_empty());
}
