//! Faults, with the daemon binary, anvil and the example provider as real processes; the
//! daemon's RPC goes through a proxy that drops, delays or fails 30% of the calls the whole
//! time. Phases: settle under the flaky RPC; SIGKILL while a batch is in the pool, then mine
//! and restart; SIGKILL, drop the transaction from the pool, restart (the recorded bytes are
//! broadcast again); a transaction dropped while the daemon runs; a competing transaction
//! from the payee's own key taking the daemon's nonce; a stuck transaction replaced with
//! higher fees. After every phase the on-chain settled amount of every channel equals the
//! engine's latest voucher and the payee holds exactly their sum: never paid twice, never a
//! voucher lost.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use support::flaky_proxy::{Fault, FlakyProxy};
use support::world::{DaemonSettings, PRICE, Payer, Rng, World, eventually, metric};

const DEPOSIT: u128 = 10_000_000;
const CHANNELS_PER_PAYER: usize = 5;

struct Book {
    payers: Vec<Payer>,
    /// channel → (payer index, latest voucher; for a finalized channel what the payee got)
    channels: BTreeMap<B256, (usize, u128)>,
    /// Channels the payer finalized (the escrow reads them as zeros with `finalized`).
    finalized: std::collections::BTreeSet<B256>,
}

impl Book {
    async fn open(world: &World, payers: usize) -> Self {
        let mut book = Self {
            payers: Vec::new(),
            channels: BTreeMap::new(),
            finalized: Default::default(),
        };
        for p in 0..payers {
            let mut payer = world
                .payer(1 + p, DEPOSIT * CHANNELS_PER_PAYER as u128)
                .await;
            for i in 0..CHANNELS_PER_PAYER {
                let salt = B256::from(alloy::primitives::U256::from(1_000 + p * 100 + i));
                let channel = payer.open(world, DEPOSIT, salt, PRICE).await;
                book.channels.insert(channel, (p, PRICE));
            }
            book.payers.push(payer);
        }
        book
    }

    /// Raises the voucher of `count` channels chosen by `rng`.
    async fn pay(&mut self, world: &World, rng: &mut Rng, count: usize) {
        let ids: Vec<B256> = self.channels.keys().copied().collect();
        for _ in 0..count {
            let id = ids[rng.below(ids.len() as u64) as usize];
            let (p, amount) = self.channels[&id];
            let next = amount + 1 + u128::from(rng.below(50_000));
            self.payers[p].voucher(world, id, next).await;
            self.channels.insert(id, (p, next));
        }
    }

    /// Raises the voucher of `id`.
    async fn pay_one(&mut self, world: &World, rng: &mut Rng, id: B256) {
        let (p, amount) = self.channels[&id];
        let next = amount + 1 + u128::from(rng.below(50_000));
        self.payers[p].voucher(world, id, next).await;
        self.channels.insert(id, (p, next));
    }

    async fn all_settled(&self, world: &World) -> bool {
        for (id, (_, amount)) in &self.channels {
            let on_chain = world.channel(*id).await;
            let done = if self.finalized.contains(id) {
                on_chain.finalized
            } else {
                on_chain.settled == *amount
            };
            if !done {
                return false;
            }
        }
        true
    }

    async fn assert_exact(&self, world: &World, phase: &str) {
        for (id, (_, amount)) in &self.channels {
            let on_chain = world.channel(*id).await;
            if self.finalized.contains(id) {
                assert!(on_chain.finalized, "{phase}: {id}");
            } else {
                assert_eq!(on_chain.settled, *amount, "{phase}: {id}");
            }
        }
        let total: u128 = self.channels.values().map(|(_, a)| a).sum();
        assert_eq!(
            world.balance(world.payee.address()).await,
            total,
            "{phase}: the payee holds exactly the vouchers"
        );
    }
}

/// Waits until the payee has a transaction in the pool; returns it.
async fn pending_tx(world: &World, payee: Address) -> (u64, B256, u128) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = world.pool_of(payee).await.into_iter().next() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a daemon transaction in the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mines blocks until every channel is settled exactly.
async fn mine_until_settled(world: &World, book: &Book, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        world.mine().await;
        book.all_settled(world).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_state_is_exact_through_rpc_faults_kills_drops_and_competing_nonces() {
    let world = World::start().await;
    let proxy = FlakyProxy::start(world.rpc_addr(), |n| match n % 10 {
        2 => Fault::Drop,
        5 => Fault::Delay(300),
        8 if (n / 10) % 2 == 0 => Fault::ServerError,
        8 => Fault::Truncate,
        _ => Fault::Pass,
    })
    .await;
    let payee = world.payee.address();
    let mut rng = Rng::new(42);
    let mut book = Book::open(&world, 6).await;
    book.pay(&world, &mut rng, 20).await;
    let settings = DaemonSettings {
        batch_size: 10,
        ..DaemonSettings::default()
    };
    let config = world.daemon_config(&proxy.url(), &settings);

    // 1. Flaky RPC: everything settles, exactly.
    let mut daemon = world.start_daemon(&config);
    eventually(
        "settled through the flaky RPC",
        Duration::from_secs(60),
        || async { book.all_settled(&world).await },
    )
    .await;
    book.assert_exact(&world, "flaky").await;
    assert!(proxy.count(Fault::Drop) > 0 && proxy.count(Fault::ServerError) > 0);
    assert!(proxy.count(Fault::Delay(300)) > 0 && proxy.count(Fault::Truncate) > 0);

    // 2. SIGKILL while a batch waits in the pool; it is mined while the daemon is down; the
    //    restarted daemon finds its receipt and pays nothing twice.
    world.automine(false).await;
    book.pay(&world, &mut rng, 8).await;
    let (_, first, _) = pending_tx(&world, payee).await;
    daemon.kill();
    world.mine().await;
    let mut daemon = world.start_daemon(&config);
    mine_until_settled(&world, &book, "settled after kill + restart").await;
    book.assert_exact(&world, "kill").await;
    assert!(
        world.gas_used(first).await > 0,
        "the batch in the pool at the kill was the one mined"
    );

    // 3. SIGKILL, then the transaction is dropped from the pool: the restarted daemon
    //    broadcasts the recorded bytes again (same hash).
    book.pay(&world, &mut rng, 5).await;
    let (_, dropped, _) = pending_tx(&world, payee).await;
    daemon.kill();
    world
        .rpc("anvil_dropTransaction", serde_json::json!([dropped]))
        .await;
    assert!(world.pool_of(payee).await.is_empty());
    let mut daemon = world.start_daemon(&config);
    let (_, again, _) = pending_tx(&world, payee).await;
    assert_eq!(again, dropped, "the same signed bytes, broadcast again");
    mine_until_settled(&world, &book, "settled after drop + restart").await;
    book.assert_exact(&world, "drop+restart").await;

    // 4. Dropped while the daemon runs: it notices and broadcasts it again.
    book.pay(&world, &mut rng, 5).await;
    let (_, dropped, _) = pending_tx(&world, payee).await;
    world
        .rpc("anvil_dropTransaction", serde_json::json!([dropped]))
        .await;
    let (_, again, _) = pending_tx(&world, payee).await;
    assert_eq!(again, dropped);
    mine_until_settled(&world, &book, "settled after a drop").await;
    book.assert_exact(&world, "drop").await;

    // 5. A competing nonce user: another process sends from the payee key with the daemon's
    //    pending nonce and higher fees; the daemon's transaction is replaced in the pool and
    //    never mined. The daemon notices, re-reads the chain and settles with the next nonce.
    book.pay(&world, &mut rng, 5).await;
    let (nonce, ours, _) = pending_tx(&world, payee).await;
    let competing = world.payee_self_transfer(nonce);
    world
        .rpc("eth_sendRawTransaction", serde_json::json!([competing]))
        .await;
    world.mine().await;
    assert!(
        !world.chain_receipt_exists(ours).await,
        "the daemon's transaction lost its nonce"
    );
    mine_until_settled(&world, &book, "settled after a competing nonce").await;
    book.assert_exact(&world, "competing nonce").await;
    eventually(
        "sluice_daemon_transactions_total{outcome=\"nonce_taken\"} counted",
        Duration::from_secs(20),
        || async {
            let text = daemon.metrics().await;
            metric(
                &text,
                "sluice_daemon_transactions_total{outcome=\"nonce_taken\"}",
            ) >= Some(1)
        },
    )
    .await;
    assert!(daemon.terminate().success());

    // 6. A stuck transaction is replaced (same nonce, fees bumped ≥ 12.5%).
    let quick = world.daemon_config(
        &proxy.url(),
        &DaemonSettings {
            replace_after_secs: 1,
            ..settings
        },
    );
    let mut daemon = world.start_daemon(&quick);
    book.pay(&world, &mut rng, 5).await;
    let (nonce, stuck, fee) = pending_tx(&world, payee).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new_fee = loop {
        let replaced = world
            .pool_of(payee)
            .await
            .into_iter()
            .find(|(n, hash, _)| *n == nonce && *hash != stuck);
        if let Some((_, _, fee)) = replaced {
            break fee;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a replacement"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(new_fee * 8 >= fee * 9, "fee {fee} bumped to {new_fee}");
    mine_until_settled(&world, &book, "settled after a replacement").await;
    book.assert_exact(&world, "replacement").await;
    eventually(
        "sluice_daemon_transactions_total{outcome=\"replaced\"} counted",
        Duration::from_secs(20),
        || async {
            let text = daemon.metrics().await;
            metric(
                &text,
                "sluice_daemon_transactions_total{outcome=\"replaced\"}",
            ) >= Some(1)
        },
    )
    .await;

    // 7. A batch item the escrow skips: while the daemon is down with a batch recorded, the
    //    batch is dropped from the pool and one of its channels is finalized by its payer
    //    (requestClose, the grace period, withdraw: the watchtower was away too long). The
    //    restarted daemon broadcasts the recorded batch again; the escrow skips that item
    //    (`SettleSkipped`), settles the rest; the daemon drops the item and the money is exact.
    let lost = *book.channels.keys().next().expect("a channel");
    let settled_before = world.channel(lost).await.settled;
    book.pay_one(&world, &mut rng, lost).await;
    let (_, batch, _) = pending_tx(&world, payee).await;
    daemon.kill();
    world
        .rpc("anvil_dropTransaction", serde_json::json!([batch]))
        .await;
    let payer_index = book.channels[&lost].0;
    let request = book.payers[payer_index].request_close(lost);
    world
        .rpc("eth_sendRawTransaction", serde_json::json!([request]))
        .await;
    world.mine().await;
    world
        .rpc(
            "evm_increaseTime",
            serde_json::json!([support::world::GRACE + 1]),
        )
        .await;
    let withdraw = book.payers[payer_index].withdraw(lost);
    world
        .rpc("eth_sendRawTransaction", serde_json::json!([withdraw]))
        .await;
    world.mine().await;
    assert!(world.channel(lost).await.finalized, "the payer withdrew");
    // The payee keeps what was settled before; the lost increment went back to the payer.
    book.channels.get_mut(&lost).expect("channel").1 = settled_before;
    book.finalized.insert(lost);
    let mut daemon = world.start_daemon(&config);
    let (_, again, _) = pending_tx(&world, payee).await;
    assert_eq!(again, batch, "the recorded batch, broadcast again");
    mine_until_settled(&world, &book, "settled after a skipped item").await;
    book.assert_exact(&world, "skipped item").await;
    eventually(
        "sluice_daemon_errors_total{kind=\"skipped_item\"} counted",
        Duration::from_secs(20),
        || async {
            let text = daemon.metrics().await;
            metric(&text, "sluice_daemon_errors_total{kind=\"skipped_item\"}") >= Some(1)
        },
    )
    .await;
    assert!(daemon.terminate().success());
    world.automine(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_pays_twice_and_never_loses_a_voucher() {
    let world = World::start().await;
    let mut rng = Rng::new(9);
    let mut book = Book::open(&world, 8).await;
    book.pay(&world, &mut rng, 40).await;
    // Small batches: many transactions, so kills land between and inside them.
    let config = world.daemon_config(
        &world.rpc_url(),
        &DaemonSettings {
            batch_size: 2,
            ..DaemonSettings::default()
        },
    );
    for round in 0..6 {
        let mut daemon = world.start_daemon(&config);
        // Kill after a random number of further settlements (read from the chain), with new
        // vouchers arriving meanwhile.
        let seen = world.settled_events().await.len();
        let more = 1 + rng.below(4) as usize;
        book.pay(&world, &mut rng, 3).await;
        eventually(
            "some settlements before the kill",
            Duration::from_secs(60),
            || async { world.settled_events().await.len() >= seen + more },
        )
        .await;
        daemon.kill();
        // Whatever happened, the escrow never paid above a voucher the engine holds.
        for (id, (_, amount)) in &book.channels {
            assert!(world.channel(*id).await.settled <= *amount, "round {round}");
        }
    }
    let mut daemon = world.start_daemon(&config);
    eventually(
        "everything settled after the kills",
        Duration::from_secs(90),
        || async { book.all_settled(&world).await },
    )
    .await;
    book.assert_exact(&world, "random kills").await;
    // Nothing was sent twice: the escrow never had to skip an already-settled voucher.
    let skipped = world
        .chain
        .get_logs(
            &alloy::rpc::types::Filter::new()
                .address(world.escrow)
                .from_block(0)
                .event_signature(
                    <sluice_contracts::SluiceEscrow::SettleSkipped as alloy::sol_types::SolEvent>::SIGNATURE_HASH,
                ),
        )
        .await
        .expect("logs");
    assert!(skipped.is_empty(), "{} items skipped", skipped.len());
    assert!(daemon.terminate().success());
    let logs = world.daemon_logs();
    eprintln!(
        "random kills: {} recorded transactions reconciled after a kill",
        logs.matches("reconciling a recorded transaction").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_applied_after_failed_attempts_is_counted_once() {
    // The batch is mined, but the re-read that applies its receipt (`getChannelsBatch`, an
    // `eth_call`) fails for a while: the record stays and later rounds drive and apply it
    // again. The metrics count the transaction once, when its facts are stored.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const DEPOSIT: u128 = 100_000;
    let world = World::start().await;
    let mut payer = world.payer(1, 2 * DEPOSIT).await;
    let mut vouchers = Vec::new();
    for (i, amount) in [(0x81u8, 11_000u128), (0x82, 12_000)] {
        let channel = payer
            .open(&world, DEPOSIT, B256::repeat_byte(i), PRICE)
            .await;
        payer.voucher(&world, channel, amount).await;
        vouchers.push((channel, amount));
    }
    let failing = Arc::new(AtomicBool::new(false));
    let proxy = FlakyProxy::start_inspecting(world.rpc_addr(), {
        let failing = Arc::clone(&failing);
        move |_, request| {
            let call = String::from_utf8_lossy(request).contains("\"eth_call\"");
            if call && failing.load(Ordering::SeqCst) {
                Fault::ServerError
            } else {
                Fault::Pass
            }
        }
    })
    .await;
    world.automine(false).await;
    let config = world.daemon_config(&proxy.url(), &DaemonSettings::default());
    let daemon = world.start_daemon(&config);
    let payee = world.payee.address();
    let (_, batch, _) = pending_tx(&world, payee).await;
    failing.store(true, Ordering::SeqCst);
    world.mine().await;
    eventually(
        "two applications failed",
        Duration::from_secs(60),
        || async {
            let text = daemon.metrics().await;
            metric(&text, "sluice_daemon_errors_total{kind=\"rpc\"}").unwrap_or(0)
                + metric(&text, "sluice_daemon_errors_total{kind=\"tx\"}").unwrap_or(0)
                >= 2
        },
    )
    .await;
    failing.store(false, Ordering::SeqCst);
    world.automine(true).await;
    eventually("the receipt applied", Duration::from_secs(30), || async {
        metric(&daemon.metrics().await, "sluice_daemon_channels_pending") == Some(0)
    })
    .await;
    for (channel, amount) in &vouchers {
        assert_eq!(world.channel(*channel).await.settled, *amount);
    }
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, "sluice_daemon_batches_total{kind=\"settle_batch\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_daemon_transactions_total{outcome=\"mined\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_daemon_gas_used_total"),
        Some(u128::from(world.gas_used(batch).await)),
        "{text}"
    );
    assert!(proxy.count(Fault::ServerError) > 0);
}
