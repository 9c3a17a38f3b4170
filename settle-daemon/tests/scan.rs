//! `chain::scan` against anvil: a first start far behind the head reads its backlog over
//! several calls, each bounded, each storing what it read; the result is the same as one
//! unbounded scan.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use alloy::primitives::B256;
use sluice_settle_daemon::chain::{RetryPolicy, Rpc, scan};
use sluice_settle_daemon::state::DaemonState;
use support::world::{CHAIN_ID, GRACE, PRICE, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_in_bounded_steps_that_add_up_to_one_scan() {
    let world = World::start().await;
    let mut payer = world.payer(1, 100_000).await;
    let channel = payer
        .open(&world, 100_000, B256::repeat_byte(0x71), PRICE)
        .await;
    // A backlog: 40 more blocks, then a close request near the head.
    world.rpc("anvil_mine", serde_json::json!([40])).await;
    assert!(world.send_raw(payer.request_close(channel)).await);
    let head = world.chain_head().await;

    let rpc = Rpc::connect(
        &world.rpc_url(),
        CHAIN_ID,
        world.escrow,
        Duration::from_secs(10),
        RetryPolicy::default(),
    )
    .await
    .expect("connects");
    let payee = world.payee.address();
    let open = |name: &str| {
        Mutex::new(DaemonState::open(&world.dir.path().join(name)).expect("state opens"))
    };

    // Bounded: 3 requests of 4 blocks per call.
    let stepped = open("stepped");
    let mut calls = 0;
    let mut previous = 0;
    loop {
        let report = scan(&rpc, &stepped, payee, 0, 1, 4, GRACE, 3)
            .await
            .expect("scans");
        calls += 1;
        let stored = stepped.lock().unwrap().last_block().expect("last block");
        assert_eq!(report.last_block, stored, "each call stores what it read");
        assert!(
            report.last_block - previous <= 12,
            "at most 3 × 4 blocks per call"
        );
        previous = report.last_block;
        if report.caught_up {
            break;
        }
        assert!(report.last_block < head);
        assert!(calls < 100, "never caught up");
    }
    assert_eq!(previous, head);
    assert_eq!(calls, head.div_ceil(12));

    // Unbounded (one call) reads the same facts.
    let whole = open("whole");
    let report = scan(&rpc, &whole, payee, 0, 1, 4, GRACE, u64::MAX)
        .await
        .expect("scans");
    assert!(report.caught_up);
    assert_eq!(report.last_block, head);
    let facts = |state: &Mutex<DaemonState>| {
        state
            .lock()
            .unwrap()
            .chain_facts(&channel)
            .expect("reads")
            .expect("the channel was seen")
    };
    let stepped_facts = facts(&stepped);
    assert_eq!(stepped_facts, facts(&whole));
    assert_eq!(stepped_facts.deposit, 100_000);
    assert_ne!(
        stepped_facts.close_requested_at, 0,
        "the request near the head was read"
    );
}
