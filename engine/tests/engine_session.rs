//! The engine facade against a real anvil chain running the escrow, over the memory store and
//! the sled store: a whole session (open with a real signed transaction, vouchers, charges, a
//! top-up, close, then the payee closing on chain with the accepted voucher), the chain-facts
//! TTL, delegated signers, waiting for vouchers, the payer index and a restart.

mod support;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::providers::ProviderBuilder;
use sluice_contracts::SluiceEscrow;
use sluice_engine::chain::ChainClient;
use sluice_engine::protocol::{ProblemKind, SessionReceipt};
use sluice_engine::session::{SessionError, VoucherOutcome};
use sluice_engine::store::{ChannelStatus, ChannelStore, Durability, MemoryStore, SledStore};
use sluice_engine::{Action, EngineError};
use support::session::{Harness, PRICE, later, now};

const TOKENS: u128 = 10_000;
const DEPOSIT: u128 = 1_000;

fn salt(byte: u8) -> B256 {
    B256::repeat_byte(byte)
}

fn session_error(result: Result<impl std::fmt::Debug, EngineError>) -> SessionError {
    match result {
        Err(EngineError::Session(error)) => error,
        other => panic!("expected a session error, got {other:?}"),
    }
}

fn sled() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path().join("channels"), Durability::default()).expect("sled");
    (dir, store)
}

/// The whole life of a channel, then the payee claims the accepted voucher on chain and the
/// payer gets the rest back.
async fn lifecycle<S: ChannelStore>(h: Harness<S>) {
    let mut client = h.client(2, TOKENS).await;
    let engine = &h.engine;

    // Open: the payer's own transaction, an initial voucher of 100, one unit charged.
    let challenge = h.challenge();
    let open = client.open(&challenge, DEPOSIT, salt(1), Address::ZERO, 100);
    let opened = engine
        .authorize_and_charge(&h.route, &open, 1, now())
        .await
        .expect("open");
    let channel = client.channel;
    assert_eq!(opened.action, Action::Open);
    assert_eq!(opened.channel_id, channel);
    assert_eq!(opened.challenge_id, challenge.id());
    assert_eq!(
        opened.voucher,
        Some(VoucherOutcome::Accepted { delta: 100 })
    );
    let tx_hash = opened.tx_hash.expect("open broadcast");
    let record = opened.record;
    assert_eq!(record.status, ChannelStatus::Open);
    assert_eq!((record.payer, record.payee), (client.address(), h.payee));
    assert_eq!((record.deposit, record.accepted_cumulative), (DEPOSIT, 100));
    assert_eq!((record.spent, record.units), (PRICE, 1));
    let receipt = &opened.receipt;
    assert_eq!(receipt.tx_hash(), Some(tx_hash));
    assert_eq!(receipt.challenge_id(), challenge.id());
    assert_eq!(
        (
            receipt.accepted_cumulative(),
            receipt.spent(),
            receipt.units()
        ),
        (100, PRICE, Some(1))
    );
    assert_eq!(
        SessionReceipt::from_header_value(&receipt.to_header_value()).expect("round trip"),
        *receipt
    );
    assert_eq!(h.chain.balance(h.chain.escrow).await, DEPOSIT);
    assert_eq!(
        engine
            .channel_for_payer(client.address())
            .expect("index read"),
        Some(channel)
    );
    assert_eq!(h.record(&channel), Some(record));

    // Vouchers and charges.
    let challenge = h.challenge();
    let up = engine
        .authorize_and_charge(&h.route, &client.voucher(&challenge, 150), 1, now())
        .await
        .expect("voucher 150");
    assert_eq!(up.voucher, Some(VoucherOutcome::Accepted { delta: 50 }));
    assert_eq!((up.record.spent, up.receipt.spent()), (50, 50));
    assert_eq!(up.tx_hash, None);
    let retry = engine
        .authorize_and_charge(&h.route, &client.voucher(&challenge, 150), 1, now())
        .await
        .expect("retry of 150");
    assert_eq!(retry.voucher, Some(VoucherOutcome::Retry));
    assert_eq!(retry.record.spent, 75);
    let receipt = engine
        .charge(&h.route, &channel, 3, challenge.id(), now())
        .await
        .expect("charge 3");
    assert_eq!((receipt.spent(), receipt.units()), (150, Some(6)));
    let short = session_error(
        engine
            .charge(&h.route, &channel, 1, challenge.id(), now())
            .await,
    );
    assert_eq!(
        short,
        SessionError::InsufficientBalance {
            channel,
            required: PRICE,
            available: 0,
            required_cumulative: 175
        }
    );
    assert_eq!(short.problem_kind(), ProblemKind::InsufficientBalance);
    // A voucher that does not cover its request is kept; only the charge is refused.
    let partial = engine
        .authorize_and_charge(&h.route, &client.voucher(&challenge, 160), 1, now())
        .await;
    let Err(EngineError::ChargeRefused { authorized, source }) = partial else {
        panic!("expected a refused charge, got {partial:?}");
    };
    assert!(matches!(
        source,
        SessionError::InsufficientBalance {
            required: PRICE,
            available: 10,
            ..
        }
    ));
    assert_eq!(
        authorized.voucher,
        Some(VoucherOutcome::Accepted { delta: 10 })
    );
    assert_eq!(authorized.units_charged, 0);
    assert_eq!(authorized.record.accepted_cumulative, 160);
    let after = h.record(&channel).expect("record");
    assert_eq!((after.accepted_cumulative, after.spent), (160, 150));

    // Top up: the deposit grows on chain and in the store.
    let challenge = h.challenge();
    let top_up = client.top_up(&challenge, 500);
    let topped = engine
        .authorize_and_charge(&h.route, &top_up, 1, now())
        .await
        .expect("top up");
    assert_eq!(topped.action, Action::TopUp);
    assert_eq!(
        topped.units_charged, 0,
        "management actions are not charged"
    );
    assert!(topped.tx_hash.is_some());
    assert_eq!(topped.receipt.tx_hash(), topped.tx_hash);
    assert_eq!(topped.record.deposit, DEPOSIT + 500);
    assert_eq!(topped.record.spent, 150);
    assert_eq!(h.chain.balance(h.chain.escrow).await, DEPOSIT + 500);

    // A voucher above the old deposit is now accepted.
    let big = engine
        .authorize_and_charge(&h.route, &client.voucher(&challenge, 1_200), 2, now())
        .await
        .expect("voucher above the old deposit");
    assert_eq!(big.voucher, Some(VoucherOutcome::Accepted { delta: 1_040 }));
    assert_eq!(big.record.spent, 200);

    // Close with the accepted voucher: the channel stops taking vouchers and charges.
    let closed = engine
        .authorize(&h.route, &client.close(&challenge, 1_200), now())
        .await
        .expect("close");
    assert_eq!(closed.action, Action::Close);
    assert_eq!(closed.record.status, ChannelStatus::Closing);
    assert_eq!(closed.record.accepted_cumulative, 1_200);
    let again = engine
        .authorize(&h.route, &client.close(&challenge, 1_200), now())
        .await
        .expect("repeated close");
    assert_eq!(again.voucher, Some(VoucherOutcome::Retry));
    let refused = engine
        .authorize(&h.route, &client.voucher(&challenge, 1_300), now())
        .await
        .expect_err("no vouchers after close");
    assert_eq!(refused.problem_kind(), ProblemKind::ChannelFinalized);
    assert_eq!(refused.problem_kind().status(), 410);
    let refused = engine
        .charge(&h.route, &channel, 1, challenge.id(), now())
        .await
        .expect_err("no charges after close");
    assert_eq!(refused.problem_kind().status(), 410);
    assert_eq!(
        engine
            .channel_for_payer(client.address())
            .expect("index read"),
        None
    );

    // The payee (only the payee) closes on chain with the voucher the engine accepted: it gets
    // exactly that, the payer gets the rest of the deposit back.
    let record = h.record(&channel).expect("record");
    let payee = ProviderBuilder::new()
        .wallet(EthereumWallet::from(h.chain.account(1)))
        .connect_http(h.chain.rpc_url());
    let payer_before = h.chain.balance(client.address()).await;
    let receipt = SluiceEscrow::new(h.chain.escrow, &payee)
        .close(
            channel,
            record.accepted_cumulative,
            record.accepted_signature.to_vec().into(),
        )
        .send()
        .await
        .expect("close accepted")
        .get_receipt()
        .await
        .expect("close receipt");
    assert!(receipt.status());
    assert_eq!(h.chain.balance(h.payee).await, 1_200);
    assert_eq!(
        h.chain.balance(client.address()).await,
        payer_before + DEPOSIT + 500 - 1_200
    );
    assert_eq!(h.chain.balance(h.chain.escrow).await, 0);

    // Once the engine reads the finalized channel, it reports it closed.
    let on_chain = engine.chain().channel(channel).await.expect("getChannel");
    assert!(on_chain.finalized);
    let refused = engine
        .authorize(&h.route, &client.voucher(&challenge, 1_200), later(10))
        .await
        .expect_err("finalized");
    assert_eq!(refused.problem_kind(), ProblemKind::ChannelFinalized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_on_anvil_with_the_memory_store() {
    lifecycle(Harness::start(MemoryStore::new()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_on_anvil_with_the_sled_store() {
    let (_dir, store) = sled();
    lifecycle(Harness::start(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_chain_facts_are_refreshed_after_the_ttl() {
    let h = Harness::start(MemoryStore::new()).await;
    let mut client = h.client(3, TOKENS).await;
    let challenge = h.challenge();
    let open = client.open(&challenge, DEPOSIT, salt(2), Address::ZERO, 0);
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open");
    let channel = client.channel;

    // The payer asks the escrow to close; the engine still trusts its cache within the TTL...
    let request = client.payer.request_close(channel);
    assert!(
        h.engine
            .chain()
            .submit_raw(request)
            .await
            .expect("requestClose")
            .success
    );
    let cached = h
        .engine
        .authorize(&h.route, &client.voucher(&challenge, 100), now())
        .await
        .expect("within the TTL the cached facts hold");
    assert_eq!(cached.record.close_requested_at, 0);

    // ...and re-reads once it is older: a pending close request refuses vouchers (410).
    let before = h.record(&channel);
    let refused = session_error(
        h.engine
            .authorize(&h.route, &client.voucher(&challenge, 200), later(6))
            .await,
    );
    assert!(
        matches!(refused, SessionError::ChannelClosing { close_requested_at, .. } if close_requested_at > 0)
    );
    assert_eq!(refused.problem_kind(), ProblemKind::ChannelFinalized);
    assert_eq!(h.record(&channel), before, "a refusal changes nothing");
    // Charges against what was accepted still go through during the grace period.
    h.engine
        .charge(&h.route, &channel, 1, challenge.id(), later(6))
        .await
        .expect("charge during the grace period");

    // A top-up cancels the request on chain; the engine follows and takes vouchers again.
    let top_up = client.top_up(&challenge, 100);
    let topped = h
        .engine
        .authorize(&h.route, &top_up, later(7))
        .await
        .expect("top up");
    assert_eq!(topped.record.close_requested_at, 0);
    assert_eq!(topped.record.deposit, DEPOSIT + 100);
    h.engine
        .authorize(&h.route, &client.voucher(&challenge, 200), later(8))
        .await
        .expect("voucher after the cancelled request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_signer_signs_the_vouchers() {
    let h = Harness::start(MemoryStore::new()).await;
    let mut client = h.client(4, TOKENS).await;
    let payer_key = client.voucher_key.clone();
    let delegate = sluice_voucher::SigningKey::from_slice(&[0x77; 32]).expect("key");
    let delegate_address = sluice_voucher::address_of(delegate.verifying_key());
    client.voucher_key = delegate.clone();
    let challenge = h.challenge();
    let open = client.open(&challenge, DEPOSIT, salt(3), delegate_address, 10);
    let opened = h
        .engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open with a delegate");
    assert_eq!(opened.record.authorized_signer, delegate_address);
    h.engine
        .authorize(&h.route, &client.voucher(&challenge, 20), now())
        .await
        .expect("the delegate's voucher");
    // The payer itself is not the channel's signer.
    client.voucher_key = payer_key;
    let before = h.record(&client.channel);
    let refused = h
        .engine
        .authorize(&h.route, &client.voucher(&challenge, 30), now())
        .await
        .expect_err("payer-signed voucher on a delegated channel");
    assert!(
        matches!(refused, EngineError::Signature { .. }),
        "{refused}"
    );
    assert_eq!(refused.problem_kind(), ProblemKind::InvalidSignature);
    assert_eq!(h.record(&client.channel), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stream_wakes_when_a_voucher_arrives() {
    let h = Harness::start(MemoryStore::new()).await;
    let mut client = h.client(5, TOKENS).await;
    let challenge = h.challenge();
    let open = client.open(&challenge, DEPOSIT, salt(4), Address::ZERO, 50);
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open");
    let channel = client.channel;

    let engine = h.engine.clone();
    let waiter = tokio::spawn(async move { engine.wait_for_accepted(&channel, 50).await });
    // Already satisfied waits return at once.
    let ready = h
        .engine
        .wait_for_accepted(&channel, 49)
        .await
        .expect("already above");
    assert_eq!(ready.accepted_cumulative, 50);
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    h.engine
        .authorize(&h.route, &client.voucher(&challenge, 80), now())
        .await
        .expect("voucher");
    let woke = waiter.await.expect("join").expect("woke");
    assert_eq!(woke.accepted_cumulative, 80);

    // A close wakes a waiter with a 410.
    let engine = h.engine.clone();
    let waiter = tokio::spawn(async move { engine.wait_for_accepted(&channel, 80).await });
    tokio::task::yield_now().await;
    h.engine
        .authorize(&h.route, &client.close(&challenge, 80), now())
        .await
        .expect("close");
    let closed = waiter.await.expect("join").expect_err("closing");
    assert_eq!(closed.problem_kind().status(), 410);
    let unknown = h
        .engine
        .wait_for_accepted(&B256::repeat_byte(0xcc), 0)
        .await
        .expect_err("unknown channel");
    assert_eq!(unknown.problem_kind(), ProblemKind::ChannelNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_continues_from_the_sled_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("channels");
    let store = SledStore::open(&path, Durability::default()).expect("sled");
    let h = Harness::start(store).await;
    let mut client = h.client(6, TOKENS).await;
    let challenge = h.challenge();
    let open = client.open(&challenge, DEPOSIT, salt(5), Address::ZERO, 300);
    h.engine
        .authorize_and_charge(&h.route, &open, 2, now())
        .await
        .expect("open");
    let channel = client.channel;
    let before = h.record(&channel).expect("record");

    // Restart: drop the engine (and its store), reopen the same directory.
    let Harness {
        chain,
        engine,
        route,
        payee,
    } = h;
    drop(engine);
    let store = SledStore::open(&path, Durability::default()).expect("reopen");
    let rpc = sluice_engine::chain::RpcChain::connect(chain.config())
        .await
        .expect("connect");
    let engine = sluice_engine::Engine::new(support::session::config(&chain, payee), store, rpc)
        .expect("engine");
    assert_eq!(engine.channel(&channel).expect("read"), Some(before));
    assert_eq!(
        engine.channel_for_payer(client.address()).expect("read"),
        None,
        "the index is in memory"
    );
    assert_eq!(engine.rebuild_payer_index().expect("scan"), 1);
    assert_eq!(
        engine.channel_for_payer(client.address()).expect("read"),
        Some(channel)
    );
    // A challenge from before the restart is still valid (same secret), the last voucher is a
    // retry, and the next one is accepted.
    let retry = engine
        .authorize(&route, &client.voucher(&challenge, 300), now())
        .await
        .expect("retry after restart");
    assert_eq!(retry.voucher, Some(VoucherOutcome::Retry));
    let next = engine
        .authorize_and_charge(&route, &client.voucher(&challenge, 400), 1, now())
        .await
        .expect("voucher after restart");
    assert_eq!(
        (next.record.accepted_cumulative, next.record.spent),
        (400, 3 * PRICE)
    );
}
