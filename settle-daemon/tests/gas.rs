//! PERFORMANCE.md P4 from real daemon batches: gas per channel of the daemon's own
//! `settleBatch` transactions at batch sizes 1, 10 and 100 (anvil, the example provider and
//! the daemon binary as processes; gas from the mined receipts). Ignored in `make test`; run:
//!
//! ```text
//! cargo test -p sluice-settle-daemon --test gas -- --ignored --nocapture
//! ```

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use alloy::primitives::B256;
use support::world::{DaemonSettings, World, eventually, metric, open_channels};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints the P4 table"]
async fn gas_per_channel_of_daemon_batches() {
    println!("| batch size | channels | settleBatch txs | gas per tx (mean) | gas per channel |");
    println!("|---:|---:|---:|---:|---:|");
    for (batch, channels) in [(1usize, 10usize), (10, 100), (100, 200)] {
        let world = World::start().await;
        let vouchers = open_channels(&world, channels, batch as u64).await;
        let config = world.daemon_config(
            &world.rpc_url(),
            &DaemonSettings {
                batch_size: batch,
                ..DaemonSettings::default()
            },
        );
        let mut daemon = world.start_daemon(&config);
        eventually("all settled", Duration::from_secs(120), || async {
            world.settled_events().await.len() == channels
        })
        .await;
        let events = world.settled_events().await;
        let txs: BTreeSet<B256> = events.iter().map(|(tx, _, _)| *tx).collect();
        assert_eq!(txs.len(), channels.div_ceil(batch));
        for (channel, amount) in &vouchers {
            assert_eq!(world.channel(*channel).await.settled, *amount);
        }
        let mut gas = 0u64;
        for tx in &txs {
            gas += world.gas_used(*tx).await;
        }
        let text = daemon.metrics().await;
        assert_eq!(
            metric(&text, "sluice_daemon_gas_used_total"),
            Some(u128::from(gas))
        );
        println!(
            "| {batch} | {channels} | {} | {} | {} |",
            txs.len(),
            gas / txs.len() as u64,
            gas / channels as u64
        );
        assert!(daemon.terminate().success());
    }
}
