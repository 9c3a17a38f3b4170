//! `RpcChain` against a real anvil chain running the escrow: reads, payer-signed broadcasts,
//! idempotent re-broadcasts, reverts, invalid input, a wrong chain, and faults injected by a
//! flaky proxy between the client and the node.

mod support;

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, Bytes},
    providers::{Provider, ProviderBuilder},
};
use sluice_engine::{
    chain::{
        ChainClient, ChainErrorKind, DEFAULT_CHAIN_FACTS_TTL, OnChainChannel, RawTransaction,
        RpcChain, apply_chain_facts, needs_refresh,
    },
    store::{ChannelRecord, ChannelStatus},
};
use support::{
    anvil::{CHAIN_ID, TestChain},
    flaky_proxy::{Fault, FlakyProxy},
};

const DEPOSIT: u128 = 1_000_000;

async fn connect(chain: &TestChain) -> RpcChain {
    RpcChain::connect(chain.config())
        .await
        .expect("connects to anvil")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_the_chain_id_and_the_escrow() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;
    assert_eq!(client.chain_id(), CHAIN_ID);
    assert_eq!(client.escrow(), chain.escrow);

    let mut wrong_chain = chain.config();
    wrong_chain.chain_id = 1;
    let error = RpcChain::connect(wrong_chain)
        .await
        .expect_err("chain 1 is not anvil");
    assert_eq!(
        error.kind,
        ChainErrorKind::WrongChain {
            expected: 1,
            actual: CHAIN_ID
        }
    );
    assert!(!error.is_retryable());

    let mut no_escrow = chain.config();
    no_escrow.escrow = Address::repeat_byte(0xee);
    let error = RpcChain::connect(no_escrow)
        .await
        .expect_err("no code there");
    assert_eq!(
        error.kind,
        ChainErrorKind::EscrowMissing {
            escrow: Address::repeat_byte(0xee)
        }
    );

    // Nobody listens on the proxy's port once it is gone: a transport error, retryable.
    let gone = FlakyProxy::start(chain.rpc_addr(), |_| Fault::Pass).await;
    let mut unreachable = chain.config_for(gone.url().parse().expect("proxy url"));
    drop(gone);
    unreachable.max_retries = 1;
    let error = RpcChain::connect(unreachable)
        .await
        .expect_err("nothing listens");
    assert_eq!(error.kind, ChainErrorKind::Transport, "{error}");
    assert!(error.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_channel_reads_as_zeros() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;
    let missing = client
        .channel(B256::repeat_byte(0x42))
        .await
        .expect("getChannel");
    assert_eq!(missing, OnChainChannel::default());
    assert!(!missing.exists());
    let batch = client
        .channels(&[B256::repeat_byte(1), B256::repeat_byte(2)])
        .await
        .expect("getChannelsBatch");
    assert_eq!(batch, vec![OnChainChannel::default(); 2]);
    assert_eq!(client.channels(&[]).await.expect("empty batch"), vec![]);
}

/// The whole payer path through `submit_raw`, with the reads and the cache policy after each
/// step: approve, open, topUp, requestClose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_top_up_and_close_request_through_submit_raw() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;
    let payee = chain.account(1).address();
    let mut payer = chain.payer(2, 3 * DEPOSIT).await;

    let approve = client
        .submit_raw(payer.approve(3 * DEPOSIT))
        .await
        .expect("approve");
    assert!(approve.success);

    let salt = B256::repeat_byte(0x5a);
    let (open_tx, channel_id) = payer.open(payee, DEPOSIT, salt, Address::ZERO);
    assert_eq!(
        channel_id,
        chain.channel_id(payer.address(), payee, salt, Address::ZERO)
    );
    let decoded = RawTransaction::decode(&open_tx).expect("decodes");
    assert_eq!(decoded.signer, payer.address());
    assert_eq!(decoded.to, Some(chain.escrow));
    let opened = client.submit_raw(open_tx).await.expect("open");
    assert!(opened.success);
    assert_eq!(
        opened.tx_hash, decoded.hash,
        "hash computed from the raw bytes"
    );
    assert!(opened.block_number > approve.block_number);

    let on_chain = client.channel(channel_id).await.expect("getChannel");
    assert!(on_chain.exists());
    assert_eq!(
        on_chain,
        OnChainChannel {
            finalized: false,
            close_requested_at: 0,
            payer: payer.address(),
            payee,
            token: chain.token,
            authorized_signer: Address::ZERO,
            deposit: DEPOSIT,
            settled: 0,
        }
    );
    assert_eq!(chain.balance(chain.escrow).await, DEPOSIT);

    // The store record the facade would keep, refreshed from these facts.
    let mut record = ChannelRecord::new(channel_id);
    assert!(needs_refresh(&record, 1_000, DEFAULT_CHAIN_FACTS_TTL));
    record = apply_chain_facts(&record, &on_chain, 1_000).expect("facts apply");
    record.status = ChannelStatus::Open;
    record.accepted_cumulative = DEPOSIT;
    record.accepted_signature = [1; 65];
    assert!(!needs_refresh(&record, 5_999, DEFAULT_CHAIN_FACTS_TTL));

    let topped = client
        .submit_raw(payer.top_up(channel_id, DEPOSIT / 2))
        .await
        .expect("topUp");
    assert!(topped.success);
    let after_top_up = client.channel(channel_id).await.expect("getChannel");
    assert_eq!(after_top_up.deposit, DEPOSIT + DEPOSIT / 2);
    record = apply_chain_facts(&record, &after_top_up, 7_000).expect("facts apply");
    assert_eq!(record.deposit, DEPOSIT + DEPOSIT / 2);
    assert_eq!(
        record.accepted_cumulative, DEPOSIT,
        "engine facts untouched"
    );

    let close = client
        .submit_raw(payer.request_close(channel_id))
        .await
        .expect("requestClose");
    assert!(close.success);
    let closing = client.channel(channel_id).await.expect("getChannel");
    assert_ne!(closing.close_requested_at, 0);
    record = apply_chain_facts(&record, &closing, 13_000).expect("facts apply");
    assert_eq!(record.status, ChannelStatus::Closing);
    assert!(record.check_invariants().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_keep_the_order_across_chunks() {
    let chain = TestChain::start().await;
    let mut config = chain.config();
    config.batch_size = 2;
    let client = RpcChain::connect(config).await.expect("connects");
    let payee = chain.account(1).address();
    let mut payer = chain.payer(3, 10 * DEPOSIT).await;
    client
        .submit_raw(payer.approve(10 * DEPOSIT))
        .await
        .expect("approve");
    let mut ids = Vec::new();
    for i in 1..=3u8 {
        let (raw, id) = payer.open(
            payee,
            u128::from(i) * 1_000,
            B256::repeat_byte(i),
            Address::ZERO,
        );
        assert!(client.submit_raw(raw).await.expect("open").success);
        ids.push(id);
    }
    // Interleave a missing id; 5 ids in chunks of 2 make 3 calls.
    let asked = [ids[2], B256::repeat_byte(0xff), ids[0], ids[1], ids[2]];
    let read = client.channels(&asked).await.expect("getChannelsBatch");
    let deposits: Vec<u128> = read.iter().map(|c| c.deposit).collect();
    assert_eq!(deposits, vec![3_000, 0, 1_000, 2_000, 3_000]);
    assert!(!read[1].exists());
    for (id, batch) in asked.iter().zip(&read) {
        assert_eq!(
            client.channel(*id).await.expect("getChannel"),
            *batch,
            "batch and single reads agree"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitting_the_same_transaction_again_is_not_an_error() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;
    let mut payer = chain.payer(4, DEPOSIT).await;
    let approve = payer.approve(DEPOSIT);
    let first = client.submit_raw(approve.clone()).await.expect("first");
    let again = client
        .submit_raw(approve.clone())
        .await
        .expect("already mined");
    assert_eq!(first, again, "the same receipt");

    // Two racing submissions of a fresh transaction: both see the one receipt.
    let (open_tx, channel_id) = payer.open(
        chain.account(1).address(),
        DEPOSIT,
        B256::repeat_byte(7),
        Address::ZERO,
    );
    let (a, b) = tokio::join!(
        client.submit_raw(open_tx.clone()),
        client.submit_raw(open_tx)
    );
    let (a, b) = (a.expect("first racer"), b.expect("second racer"));
    assert_eq!(a, b);
    assert!(a.success);
    assert_eq!(
        client.channel(channel_id).await.expect("read").deposit,
        DEPOSIT,
        "opened once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_transaction_is_an_outcome_not_an_error() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;
    let payee = chain.account(1).address();
    let mut payer = chain.payer(5, DEPOSIT).await;

    // ZeroDeposit.
    let (zero, zero_id) = payer.open(payee, 0, B256::repeat_byte(1), Address::ZERO);
    let outcome = client.submit_raw(zero).await.expect("mined");
    assert!(!outcome.success);
    assert!(!client.channel(zero_id).await.expect("read").exists());

    // No approval: the token pull reverts, the channel is not created.
    let (unapproved, id) = payer.open(payee, DEPOSIT, B256::repeat_byte(2), Address::ZERO);
    let outcome = client.submit_raw(unapproved).await.expect("mined");
    assert!(!outcome.success);
    assert!(!client.channel(id).await.expect("read").exists());
    assert_eq!(
        chain.balance(payer.address()).await,
        DEPOSIT,
        "payer kept the tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_transactions_are_refused_and_not_retryable() {
    let chain = TestChain::start().await;
    let client = connect(&chain).await;

    for garbage in [
        Bytes::new(),
        Bytes::from_static(b"\x02garbage"),
        Bytes::from(vec![0xc0; 40]),
    ] {
        let error = client.submit_raw(garbage).await.expect_err("garbage");
        assert_eq!(error.kind, ChainErrorKind::InvalidTransaction, "{error}");
        assert!(!error.is_retryable());
    }

    // Well formed but signed for another chain.
    let mut payer = chain.payer(6, DEPOSIT).await;
    let foreign = payer.sign_call_at(payer.next_nonce(), 1, chain.token, vec![]);
    let error = client.submit_raw(foreign).await.expect_err("chain 1");
    assert_eq!(error.kind, ChainErrorKind::InvalidTransaction, "{error}");

    // A different transaction reusing a mined nonce: the node rejects it, and since the node
    // does not know this hash, the rejection stands.
    let nonce = payer.next_nonce();
    client.submit_raw(payer.approve(1)).await.expect("approve");
    let conflicting = payer.sign_call_at(nonce, CHAIN_ID, chain.token, vec![0x01]);
    let error = client
        .submit_raw(conflicting)
        .await
        .expect_err("nonce already used");
    assert_eq!(error.kind, ChainErrorKind::Rejected, "{error}");
    assert!(!error.is_retryable());
}

/// The deterministic fault cycle the flaky-proxy tests use: at most two faults in a row, every
/// kind of fault, one request in three passes.
fn cycle(n: u64) -> Fault {
    const CYCLE: [Fault; 9] = [
        Fault::Drop,
        Fault::ServerError,
        Fault::Pass,
        Fault::Truncate,
        Fault::Stall,
        Fault::Pass,
        Fault::ServerError,
        Fault::Truncate,
        Fault::Pass,
    ];
    CYCLE[(n % CYCLE.len() as u64) as usize]
}

/// Retries carry reads and broadcasts through a proxy that fails two requests in three; the
/// results equal those read directly from the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_broadcasts_survive_a_flaky_link() {
    let chain = TestChain::start().await;
    let direct = connect(&chain).await;
    let proxy = FlakyProxy::start(chain.rpc_addr(), cycle).await;
    let mut config = chain.config_for(proxy.url().parse().expect("proxy url"));
    // Up to two faults in a row by the plan; two spare retries absorb a pass that a loaded
    // machine answers too slowly.
    config.request_timeout = Duration::from_secs(1);
    config.max_retries = 4;
    let flaky = RpcChain::connect(config)
        .await
        .expect("connects through faults");

    // Broadcasts: a truncated answer to eth_sendRawTransaction means the node has the
    // transaction; the retry is recognised by its hash.
    let payee = chain.account(1).address();
    let mut payer = chain.payer(7, DEPOSIT).await;
    assert!(
        flaky
            .submit_raw(payer.approve(DEPOSIT))
            .await
            .expect("approve")
            .success
    );
    let (open_tx, channel_id) = payer.open(payee, DEPOSIT, B256::repeat_byte(9), Address::ZERO);
    assert!(flaky.submit_raw(open_tx).await.expect("open").success);

    let expected = direct.channel(channel_id).await.expect("direct read");
    assert!(expected.exists());
    for _ in 0..6 {
        assert_eq!(flaky.channel(channel_id).await.expect("read"), expected);
    }
    let ids = [channel_id, B256::repeat_byte(3)];
    for _ in 0..3 {
        assert_eq!(
            flaky.channels(&ids).await.expect("batch read"),
            vec![expected, OnChainChannel::default()]
        );
    }
    for fault in [
        Fault::Drop,
        Fault::ServerError,
        Fault::Truncate,
        Fault::Stall,
    ] {
        assert!(proxy.count(fault) > 0, "{fault:?} was injected");
    }
    assert!(proxy.count(Fault::Pass) < proxy.requests());
}

/// With retries off, each kind of fault surfaces as a retryable `Transport` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_is_a_retryable_transport_error() {
    let chain = TestChain::start().await;
    for fault in [
        Fault::Drop,
        Fault::ServerError,
        Fault::Truncate,
        Fault::Stall,
    ] {
        // The two connect checks pass; everything after gets the fault.
        let proxy = FlakyProxy::start(
            chain.rpc_addr(),
            move |n| {
                if n < 2 { Fault::Pass } else { fault }
            },
        )
        .await;
        let mut config = chain.config_for(proxy.url().parse().expect("proxy url"));
        config.max_retries = 0;
        // Only a stall waits for the timeout; keep it short there.
        if fault == Fault::Stall {
            config.request_timeout = Duration::from_secs(1);
        }
        let client = RpcChain::connect(config).await.expect("connects");
        let error = client
            .channel(B256::repeat_byte(1))
            .await
            .expect_err("faulted");
        assert_eq!(error.kind, ChainErrorKind::Transport, "{fault:?}: {error}");
        assert!(error.is_retryable());
        let error = client
            .channels(&[B256::repeat_byte(1)])
            .await
            .expect_err("faulted");
        assert_eq!(error.kind, ChainErrorKind::Transport, "{fault:?}: {error}");
        assert_eq!(
            proxy.requests(),
            4,
            "{fault:?}: no retries with max_retries = 0"
        );
    }
}

/// A node that keeps failing: the client retries exactly `max_retries` times, then reports a
/// retryable error naming the attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let chain = TestChain::start().await;
    let proxy = FlakyProxy::start(chain.rpc_addr(), |n| {
        if n < 2 {
            Fault::Pass
        } else {
            Fault::ServerError
        }
    })
    .await;
    let mut config = chain.config_for(proxy.url().parse().expect("proxy url"));
    config.max_retries = 2;
    let client = RpcChain::connect(config).await.expect("connects");
    let error = client
        .channel(B256::repeat_byte(1))
        .await
        .expect_err("always 500");
    assert_eq!(error.kind, ChainErrorKind::Transport);
    assert!(error.message.contains("after 3 attempts"), "{error}");
    assert_eq!(proxy.requests(), 2 + 3);

    // A broadcast through a dead link never reaches the node, and says so retryably.
    let mut payer = chain.payer(8, DEPOSIT).await;
    let error = client
        .submit_raw(payer.approve(DEPOSIT))
        .await
        .expect_err("always 500");
    assert_eq!(error.kind, ChainErrorKind::Transport);
    assert_eq!(proxy.requests(), 2 + 3 + 3);
}

/// A transaction the node accepted but that is never mined (anvil with mining off): the wait
/// ends with a retryable `Timeout`; re-broadcasting the pending transaction is not a rejection;
/// once a block is mined the same bytes give the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmined_transaction_times_out_then_resubmits() {
    let chain = TestChain::start().await;
    let mut config = chain.config();
    config.receipt_timeout = Duration::from_millis(300);
    let client = RpcChain::connect(config).await.expect("connects");
    let admin = ProviderBuilder::new().connect_http(chain.rpc_url());
    admin
        .raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (false,))
        .await
        .expect("automine off");

    let mut payer = chain.payer(9, 0).await;
    let approve = payer.approve(1);
    for attempt in ["first broadcast", "re-broadcast while pending"] {
        let error = client
            .submit_raw(approve.clone())
            .await
            .expect_err("never mined");
        assert_eq!(error.kind, ChainErrorKind::Timeout, "{attempt}: {error}");
        assert!(error.is_retryable());
    }

    admin
        .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
        .await
        .expect("mine a block");
    let outcome = client.submit_raw(approve).await.expect("mined now");
    assert!(outcome.success);
}
