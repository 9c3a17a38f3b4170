//! The payer client against the example provider (`examples/provider.rs`) as a process, on a
//! real anvil chain with the escrow: plain requests over one channel, clones and concurrent
//! tasks, signing ahead, a metered SSE stream with need-voucher POSTs and automatic top-ups,
//! spending caps, a delegated voucher signer, a cooperative close, and a server problem. Every
//! test checks the client's accounting against the provider's (admin `GET /channels/{id}`) and
//! the escrow's.

mod support;

use std::sync::{Arc, Mutex};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes};
use alloy::providers::ProviderBuilder;
use alloy::signers::local::PrivateKeySigner;
use sluice_contracts::SluiceEscrow;
use sluice_engine::chain::{ChainClient, OnChainChannel, RpcChain};
use sluice_engine::client::{
    CapScope, ChannelSnapshot, ClientError, PayerClient, PayerConfig, TopUpPolicy,
};
use sluice_engine::http::feed::FeedPageDto;
use sluice_engine::protocol::ProblemKind;
use support::anvil::{CHAIN_ID, TestChain};
use support::provider::{ADMIN_TOKEN, ExampleProvider};

const PRICE: u128 = 1_000;

fn key(signer: &PrivateKeySigner) -> B256 {
    signer.to_bytes()
}

fn config(chain: &TestChain, payer: &PrivateKeySigner) -> PayerConfig {
    let mut config = PayerConfig::new(
        chain.rpc_url().as_str(),
        CHAIN_ID,
        chain.escrow,
        chain.token,
        key(payer),
    );
    config.deposit = 50 * PRICE;
    config
}

async fn on_chain(chain: &TestChain, id: B256) -> OnChainChannel {
    RpcChain::connect(chain.config())
        .await
        .expect("rpc")
        .channel(id)
        .await
        .expect("getChannel")
}

/// What the settlement daemon does after a cooperative close: the payee closes the channel on
/// chain with the feed's latest voucher. Returns that voucher's amount.
async fn payee_closes_from_feed(
    chain: &TestChain,
    provider: &ExampleProvider,
    payee: &PrivateKeySigner,
    channel: B256,
) -> u128 {
    let page: FeedPageDto = reqwest::Client::new()
        .get(format!("{}/feed", provider.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = page
        .entries
        .iter()
        .rfind(|e| e.channel_id == channel)
        .expect("a feed entry for the channel");
    let rpc = ProviderBuilder::new()
        .wallet(EthereumWallet::from(payee.clone()))
        .connect_http(chain.rpc_url());
    let receipt = SluiceEscrow::new(chain.escrow, &rpc)
        .close(
            channel,
            entry.cumulative_amount,
            Bytes::from(entry.signature.expect("signed").to_vec()),
        )
        .send()
        .await
        .expect("close accepted")
        .get_receipt()
        .await
        .expect("close mined");
    assert!(
        receipt.status(),
        "the payee's close with the feed's voucher"
    );
    entry.cumulative_amount
}

fn only_channel(client: &PayerClient) -> ChannelSnapshot {
    let channels = client.channels();
    assert_eq!(channels.len(), 1, "{channels:?}");
    channels.into_iter().next().unwrap()
}

fn amount(view: &serde_json::Value, field: &str) -> u128 {
    view[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {view}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_reuse_one_channel_across_clones_and_the_server_agrees() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(1);
    chain.mint(payer.address(), 100 * PRICE).await;
    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    assert_eq!(client.address(), payer.address());

    for i in 1..=5u128 {
        let response = client.get(&provider.url("/paid")).await.unwrap();
        assert_eq!(response.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["answer"], "paid content");
        let receipt = response.receipt.expect("a receipt");
        assert_eq!(receipt.spent(), i * PRICE);
        assert_eq!(receipt.accepted_cumulative(), i * PRICE, "no signing ahead");
        assert_eq!(
            response.channel.map(|c| *c.as_b256()),
            Some(receipt.channel_id())
        );
    }
    // A clone in another task pays on the same channel (new connections, shared state).
    let clone = client.clone();
    let url = provider.url("/paid");
    tokio::spawn(async move {
        for _ in 0..3 {
            assert_eq!(clone.get(&url).await.unwrap().status, 200);
        }
    })
    .await
    .unwrap();

    let channel = only_channel(&client);
    assert_eq!(channel.signed, 8 * PRICE);
    assert_eq!(channel.owed, 8 * PRICE);
    assert_eq!(channel.deposit, 50 * PRICE);
    assert_eq!(channel.payee, provider.payee);
    assert_eq!(channel.origin, provider.base);
    let stats = client.stats();
    assert_eq!(stats.opens, 1);
    assert_eq!(
        stats.vouchers_signed, 8,
        "one voucher per request, the open's included"
    );
    assert_eq!(stats.requests, 8);
    assert_eq!(stats.signed_total, 8 * PRICE);

    let view = provider
        .channel(channel.id)
        .await
        .expect("the server knows it");
    assert_eq!(amount(&view, "acceptedCumulative"), 8 * PRICE);
    assert_eq!(amount(&view, "spent"), 8 * PRICE);
    assert_eq!(view["units"], 8);
    assert_eq!(amount(&view, "deposit"), 50 * PRICE);
    assert_eq!(view["status"], "open");
    let escrow = on_chain(&chain, *channel.id.as_b256()).await;
    assert_eq!(escrow.payer, payer.address());
    assert_eq!(escrow.payee, provider.payee);
    assert_eq!(escrow.deposit, 50 * PRICE);
    assert_eq!(escrow.authorized_signer, Address::ZERO, "the payer signs");
    assert_eq!(chain.balance(payer.address()).await, 50 * PRICE);

    // A free route costs nothing and names no channel.
    let free = client.get(&provider.url("/free")).await.unwrap();
    assert_eq!(free.status, 200);
    assert_eq!(&free.body[..], b"free content");
    assert!(free.receipt.is_none() && free.channel.is_none());
    assert_eq!(client.stats().vouchers_signed, 8);
}

const TASKS: u128 = 32;
const EACH: u128 = 6;

/// `TASKS` tasks paying `EACH` requests each through clones of one client; returns the client,
/// its channel and the provider's view of it.
async fn pay_concurrently(sign_ahead: u128) -> (PayerClient, ChannelSnapshot, serde_json::Value) {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(2);
    chain.mint(payer.address(), 300 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.deposit = 300 * PRICE;
    config.sign_ahead = sign_ahead;
    let client = PayerClient::new(config).unwrap();

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = client.clone();
        let url = provider.url("/paid");
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let response = client.get(&url).await.expect("paid");
                assert_eq!(response.status, 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Vouchers signed in one order may reach the server in another; a lower one is refused and
    // re-sent at the highest amount (how often is up to the scheduler, so it is printed, not
    // asserted).
    eprintln!("sign_ahead {sign_ahead}: {:?}", client.stats());
    assert_eq!(client.stats().opens, 1, "one channel for all tasks");
    let channel = only_channel(&client);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), TASKS * EACH * PRICE);
    assert_eq!(view["units"], (TASKS * EACH) as u64);
    assert_eq!(amount(&view, "acceptedCumulative"), channel.signed);
    (client, channel, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_one_channel_and_the_accounting_is_exact() {
    let (client, channel, _) = pay_concurrently(0).await;
    let total = TASKS * EACH * PRICE;
    assert_eq!(channel.signed, total, "cumulative = requests × price");
    assert_eq!(client.stats().vouchers_signed, (TASKS * EACH) as u64);
    assert_eq!(client.stats().signed_total, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_signing_ahead_sign_rarely_and_never_beyond_the_headroom() {
    const AHEAD: u128 = 32;
    let (client, channel, _) = pay_concurrently(AHEAD * PRICE).await;
    let total = TASKS * EACH * PRICE;
    // Each new voucher is at least one unit above the last plus the headroom.
    let most = (TASKS * EACH).div_ceil(AHEAD + 1) as u64 + 1;
    assert!(
        client.stats().vouchers_signed <= most,
        "{:?}",
        client.stats()
    );
    assert!(channel.signed >= total && channel.signed <= total + AHEAD * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_ahead_saves_signatures_and_close_settles_what_the_server_holds() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(3);
    chain.mint(payer.address(), 100 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.sign_ahead = 3 * PRICE;
    let client = PayerClient::new(config).unwrap();

    for _ in 0..6 {
        assert_eq!(
            client.get(&provider.url("/paid")).await.unwrap().status,
            200
        );
    }
    // Open at 4 (1 + 3 ahead) covers requests 1..=4; request 5 signs 8, request 6 reuses it.
    assert_eq!(client.stats().vouchers_signed, 2);
    let channel = only_channel(&client);
    assert_eq!(channel.signed, 8 * PRICE);
    assert_eq!(channel.owed, 6 * PRICE);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "acceptedCumulative"), 8 * PRICE);
    assert_eq!(amount(&view, "spent"), 6 * PRICE);

    // The server holds the voucher of 8: on a v1 escrow that is what the payee can claim, so
    // the close says so, with the signature already made.
    let closed = client.close(&provider.url("/paid")).await.unwrap();
    assert_eq!(closed.channel, channel.id);
    assert_eq!(closed.final_amount, 8 * PRICE);
    assert_eq!(client.stats().vouchers_signed, 2);
    assert_eq!(client.stats().closes, 1);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(view["status"], "closing");
    assert_eq!(amount(&view, "acceptedCumulative"), 8 * PRICE);
    let snapshot = client.channels();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot[0].closed);

    // Settlement: the payee gets exactly the close amount, the payer the rest of the deposit.
    let settled =
        payee_closes_from_feed(&chain, &provider, &chain.account(9), *channel.id.as_b256()).await;
    assert_eq!(settled, closed.final_amount);
    assert_eq!(chain.balance(provider.payee).await, 8 * PRICE);
    assert_eq!(
        chain.balance(payer.address()).await,
        100 * PRICE - 8 * PRICE
    );
    assert_eq!(chain.balance(chain.escrow).await, 0);
    assert!(on_chain(&chain, *channel.id.as_b256()).await.finalized);

    // The next request opens a fresh channel.
    assert_eq!(
        client.get(&provider.url("/paid")).await.unwrap().status,
        200
    );
    assert_eq!(client.stats().opens, 2);
    let open: Vec<_> = client
        .channels()
        .into_iter()
        .filter(|c| !c.closed)
        .collect();
    assert_eq!(open.len(), 1);
    assert_ne!(open[0].id, channel.id);
    // Closing twice is refused: nothing is open for that origin any more after this close.
    client.close(&provider.url("/paid")).await.unwrap();
    assert!(matches!(
        client.close(&provider.url("/paid")).await,
        Err(ClientError::NoChannel { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_posts_vouchers_and_tops_up_mid_stream() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(
        &chain,
        chain.account(9).address(),
        PRICE,
        &["--stream-wait-ms", "20000"],
    );
    let payer = chain.account(4);
    chain.mint(payer.address(), 100 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.deposit = 4 * PRICE;
    config.top_up = Some(TopUpPolicy {
        below: PRICE,
        amount: 10 * PRICE,
    });
    let client = PayerClient::new(config).unwrap();

    const TOKENS: u64 = 30;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let summary = client
        .stream(
            &provider.url(&format!("/stream?tokens={TOKENS}")),
            move |data| {
                sink.lock().unwrap().push(data.to_owned());
            },
        )
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..TOKENS).map(|i| format!("token {i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(summary.data_events, TOKENS);
    // The stream's own voucher covers the first token; each later one needs a voucher.
    assert_eq!(summary.vouchers_posted, TOKENS - 1);
    // Deposit 4, top up by 10 whenever less than 1 would be left: at 4, 14 and 24.
    assert_eq!(summary.top_ups, 3, "{summary:?}");
    assert_eq!(u64::from(summary.top_ups), client.stats().top_ups);
    assert_eq!(summary.cumulative, u128::from(TOKENS) * PRICE);

    let channel = only_channel(&client);
    let deposit = 4 * PRICE + u128::from(summary.top_ups) * 10 * PRICE;
    assert_eq!(channel.deposit, deposit);
    assert_eq!(
        channel.owed,
        u128::from(TOKENS) * PRICE,
        "the final receipt"
    );
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), u128::from(TOKENS) * PRICE);
    assert_eq!(
        amount(&view, "acceptedCumulative"),
        u128::from(TOKENS) * PRICE
    );
    assert_eq!(amount(&view, "deposit"), deposit);
    assert_eq!(view["units"], TOKENS);
    let escrow = on_chain(&chain, *channel.id.as_b256()).await;
    assert_eq!(escrow.deposit, deposit);
    // The payer funded exactly the deposit; the rest is still in its wallet.
    assert_eq!(chain.balance(payer.address()).await, 100 * PRICE - deposit);
    // Money invariant on the server: spent ≤ accepted ≤ deposit.
    assert!(amount(&view, "spent") <= amount(&view, "acceptedCumulative"));
    assert!(amount(&view, "acceptedCumulative") <= amount(&view, "deposit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_before_anything_is_signed_or_sent() {
    let chain = TestChain::start().await;
    let first = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let second = ExampleProvider::start(&chain, chain.account(8).address(), PRICE, &[]);

    // Per channel: three units, then the fourth is refused.
    let payer = chain.account(5);
    chain.mint(payer.address(), 100 * PRICE).await;
    let mut per_channel = config(&chain, &payer);
    per_channel.cap_per_channel = Some(3 * PRICE);
    per_channel.sign_ahead = 10 * PRICE; // headroom is clamped to the cap, never refused
    let client = PayerClient::new(per_channel).unwrap();
    for _ in 0..3 {
        assert_eq!(client.get(&first.url("/paid")).await.unwrap().status, 200);
    }
    let channel = only_channel(&client);
    assert_eq!(channel.signed, 3 * PRICE);
    let signed_before = client.stats().vouchers_signed;
    let view_before = first.channel(channel.id).await.unwrap();
    match client.get(&first.url("/paid")).await {
        Err(ClientError::CapExceeded {
            scope,
            cap,
            would_be,
        }) => {
            assert_eq!(scope, CapScope::Channel);
            assert_eq!(cap, 3 * PRICE);
            assert_eq!(would_be, 4 * PRICE);
        }
        other => panic!("expected CapExceeded, got {other:?}"),
    }
    assert_eq!(
        client.stats().vouchers_signed,
        signed_before,
        "nothing signed"
    );
    let view_after = first.channel(channel.id).await.unwrap();
    assert_eq!(view_after, view_before, "the server saw nothing new");
    assert_eq!(only_channel(&client).signed, 3 * PRICE);

    // Per client: five units over two providers (two channels), then both refuse.
    let payer = chain.account(6);
    chain.mint(payer.address(), 200 * PRICE).await;
    let mut per_client = config(&chain, &payer);
    per_client.cap_total = Some(5 * PRICE);
    let client = PayerClient::new(per_client).unwrap();
    for _ in 0..3 {
        assert_eq!(client.get(&first.url("/paid")).await.unwrap().status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client.get(&second.url("/paid")).await.unwrap().status, 200);
    }
    assert_eq!(client.stats().signed_total, 5 * PRICE);
    assert_eq!(client.channels().len(), 2);
    let mut before = Vec::new();
    for c in client.channels() {
        let provider = if c.payee == first.payee {
            &first
        } else {
            &second
        };
        before.push((c.id, provider.payee, provider.channel(c.id).await.unwrap()));
    }
    for provider in [&first, &second] {
        match client.get(&provider.url("/paid")).await {
            Err(ClientError::CapExceeded {
                scope: CapScope::Client,
                cap,
                would_be,
            }) => assert_eq!((cap, would_be), (5 * PRICE, 6 * PRICE)),
            other => panic!("expected the client cap, got {other:?}"),
        }
    }
    assert_eq!(client.stats().vouchers_signed, 5);
    for (id, payee, view) in before {
        let provider = if payee == first.payee {
            &first
        } else {
            &second
        };
        assert_eq!(
            provider.channel(id).await.unwrap(),
            view,
            "the server saw nothing new"
        );
    }

    // A cap below one unit: refused before the approve (the payer's nonce does not move) and
    // before any open.
    let payer = chain.account(7);
    chain.mint(payer.address(), 10 * PRICE).await;
    let nonce_before = chain.payer(7, 0).await.next_nonce();
    let mut tiny = config(&chain, &payer);
    tiny.cap_total = Some(PRICE - 1);
    let client = PayerClient::new(tiny).unwrap();
    assert!(matches!(
        client.get(&first.url("/paid")).await,
        Err(ClientError::CapExceeded {
            scope: CapScope::Client,
            ..
        })
    ));
    assert_eq!(chain.payer(7, 0).await.next_nonce(), nonce_before);
    assert!(client.channels().is_empty());
    assert_eq!(client.stats().vouchers_signed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_signer_signs_the_vouchers_and_the_close() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(1);
    let signer = PrivateKeySigner::random();
    chain.mint(payer.address(), 100 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.voucher_signer = Some(key(&signer));
    let client = PayerClient::new(config).unwrap();
    assert_eq!(client.voucher_signer(), signer.address());

    for _ in 0..4 {
        assert_eq!(
            client.get(&provider.url("/paid")).await.unwrap().status,
            200
        );
    }
    let channel = only_channel(&client);
    let escrow = on_chain(&chain, *channel.id.as_b256()).await;
    assert_eq!(escrow.payer, payer.address());
    assert_eq!(escrow.authorized_signer, signer.address());
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "acceptedCumulative"), 4 * PRICE);

    let closed = client.close(&provider.url("/paid")).await.unwrap();
    assert_eq!(closed.final_amount, 4 * PRICE);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(view["status"], "closing");
    // The delegated signer's close voucher settles on chain: 4 units to the payee, the rest back
    // to the payer (who funded the deposit, not the signer).
    let settled =
        payee_closes_from_feed(&chain, &provider, &chain.account(9), *channel.id.as_b256()).await;
    assert_eq!(settled, 4 * PRICE);
    assert_eq!(chain.balance(provider.payee).await, 4 * PRICE);
    assert_eq!(chain.balance(payer.address()).await, 96 * PRICE);
    assert_eq!(chain.balance(signer.address()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfundable_deposit_is_refused_before_any_transaction() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(2);
    chain.mint(payer.address(), 10 * PRICE).await; // the deposit is 50 units
    let nonce_before = chain.payer(2, 0).await.next_nonce();
    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    match client.get(&provider.url("/paid")).await {
        Err(ClientError::InsufficientFunds {
            token,
            balance,
            required,
        }) => {
            assert_eq!(token, chain.token);
            assert_eq!((balance, required), (10 * PRICE, 50 * PRICE));
        }
        other => panic!("expected InsufficientFunds, got {other:?}"),
    }
    assert_eq!(
        chain.payer(2, 0).await.next_nonce(),
        nonce_before,
        "no approve sent"
    );
    assert!(client.channels().is_empty());
    assert_eq!(client.stats().opens, 0);
    assert_eq!(client.stats().signed_total, 0);

    // Funded, the same client opens and pays.
    chain.mint(payer.address(), 40 * PRICE).await;
    assert_eq!(
        client.get(&provider.url("/paid")).await.unwrap().status,
        200
    );
    assert_eq!(client.stats().opens, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_problem_surfaces_typed_and_a_lost_channel_is_replaced() {
    let chain = TestChain::start().await;
    let payee = chain.account(9).address();
    let provider = ExampleProvider::start(&chain, payee, PRICE, &[]);
    let payer = chain.account(3);
    chain.mint(payer.address(), 200 * PRICE).await;
    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    for _ in 0..2 {
        assert_eq!(
            client.get(&provider.url("/paid")).await.unwrap().status,
            200
        );
    }
    let lost = only_channel(&client);

    // The provider restarts on the same address with an empty store: it does not know the
    // channel any more and answers the next voucher with a 410 problem.
    let listen = provider.base.trim_start_matches("http://").to_owned();
    drop(provider);
    let provider = ExampleProvider::start_on(&chain, payee, PRICE, &listen, &[]);
    match client.get(&provider.url("/paid")).await {
        Err(error @ ClientError::Problem { .. }) => {
            assert_eq!(
                error.problem_kind(),
                Some(ProblemKind::ChannelNotFound),
                "{error}"
            );
            assert!(matches!(error, ClientError::Problem { status: 410, .. }));
        }
        other => panic!("expected a server problem, got {other:?}"),
    }
    // The client stops using that channel; the next request opens a new one.
    let response = client.get(&provider.url("/paid")).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(client.stats().opens, 2);
    assert_ne!(response.channel, Some(lost.id));
    let view = provider.channel(response.channel.unwrap()).await.unwrap();
    assert_eq!(amount(&view, "spent"), PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stops_at_the_deposit_or_the_cap_with_a_typed_error() {
    let chain = TestChain::start().await;
    let provider = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let url = provider.url("/stream?tokens=10");

    // No top-up policy: the voucher for the fourth token does not fit a 3-unit deposit.
    let payer = chain.account(1);
    chain.mint(payer.address(), 10 * PRICE).await;
    let mut small = config(&chain, &payer);
    small.deposit = 3 * PRICE;
    let client = PayerClient::new(small).unwrap();
    let mut received = 0u32;
    match client.stream(&url, |_| received += 1).await {
        Err(ClientError::DepositExhausted {
            deposit, required, ..
        }) => assert_eq!((deposit, required), (3 * PRICE, 4 * PRICE)),
        other => panic!("expected DepositExhausted, got {other:?}"),
    }
    assert_eq!(received, 3);
    let channel = only_channel(&client);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), 3 * PRICE);
    assert_eq!(amount(&view, "acceptedCumulative"), 3 * PRICE);

    // A per-channel cap of 5 units: five tokens, then the sixth is refused before signing.
    let payer = chain.account(2);
    chain.mint(payer.address(), 100 * PRICE).await;
    let mut capped = config(&chain, &payer);
    capped.cap_per_channel = Some(5 * PRICE);
    let client = PayerClient::new(capped).unwrap();
    let mut received = 0u32;
    match client.stream(&url, |_| received += 1).await {
        Err(ClientError::CapExceeded {
            scope: CapScope::Channel,
            cap,
            would_be,
        }) => assert_eq!((cap, would_be), (5 * PRICE, 6 * PRICE)),
        other => panic!("expected CapExceeded, got {other:?}"),
    }
    assert_eq!(received, 5);
    assert_eq!(client.stats().vouchers_signed, 5);
    let channel = only_channel(&client);
    assert_eq!(channel.signed, 5 * PRICE);
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), 5 * PRICE);
    assert_eq!(amount(&view, "acceptedCumulative"), 5 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_stream_bills_the_client_exactly_what_it_received() {
    let chain = TestChain::start().await;
    // The provider's metered stream reserves up to 8 tokens per durable update.
    let provider = ExampleProvider::start(
        &chain,
        chain.account(9).address(),
        PRICE,
        &["--stream-wait-ms", "20000", "--sse-charge-batch", "8"],
    );
    let payer = chain.account(5);
    chain.mint(payer.address(), 200 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.deposit = 100 * PRICE;
    // Vouchers 5 tokens ahead: reservations of up to 6 tokens, pauses in mid-batch.
    config.sign_ahead = 5 * PRICE;
    let client = PayerClient::new(config).unwrap();

    const TOKENS: u64 = 30;
    let mut seen = Vec::new();
    let summary = client
        .stream(&provider.url(&format!("/stream?tokens={TOKENS}")), |data| {
            seen.push(data.to_owned());
        })
        .await
        .unwrap();
    let expected: Vec<String> = (0..TOKENS).map(|i| format!("token {i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(summary.data_events, TOKENS);
    assert!(summary.vouchers_posted > 0, "{summary:?}");
    let total = u128::from(TOKENS) * PRICE;
    // Signed ahead, but never more than one voucher's headroom beyond what was served.
    assert!(summary.cumulative >= total, "{summary:?}");
    assert!(summary.cumulative <= total + 6 * PRICE, "{summary:?}");

    // The client owes exactly what it received: no receipt reported an unserved reservation.
    let channel = only_channel(&client);
    assert_eq!(channel.owed, total, "the final receipt");
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), total);
    assert_eq!(view["units"], TOKENS);
    assert_eq!(amount(&view, "acceptedCumulative"), summary.cumulative);
    assert!(amount(&view, "acceptedCumulative") <= amount(&view, "deposit"));

    // Out of deposit mid-stream: the client stops at the deposit; the server charged what it
    // sent and nothing stays reserved.
    let payer = chain.account(6);
    chain.mint(payer.address(), 10 * PRICE).await;
    let mut small = self::config(&chain, &payer);
    small.deposit = 3 * PRICE;
    let client = PayerClient::new(small).unwrap();
    let mut received = 0u32;
    match client
        .stream(&provider.url("/stream?tokens=10"), |_| received += 1)
        .await
    {
        Err(ClientError::DepositExhausted {
            deposit, required, ..
        }) => assert_eq!((deposit, required), (3 * PRICE, 4 * PRICE)),
        other => panic!("expected DepositExhausted, got {other:?}"),
    }
    assert_eq!(received, 3);
    let channel = only_channel(&client);
    // No final receipt came; the receipts it saw never reported more than it received.
    assert!(channel.owed <= 3 * PRICE, "{channel:?}");
    let view = provider.channel(channel.id).await.unwrap();
    assert_eq!(amount(&view, "spent"), 3 * PRICE);
    assert_eq!(amount(&view, "acceptedCumulative"), 3 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_batch_leaves_at_most_one_batch_charged_beyond_what_was_sent() {
    const K: u128 = 10;
    let chain = TestChain::start().await;
    let payee = chain.account(9).address();
    let store = tempfile::tempdir().unwrap();
    let path = store.path().join("store");
    let flags = ["--stream-wait-ms", "20000", "--sse-charge-batch", "10"];
    let mut provider =
        ExampleProvider::start_in(&chain, payee, PRICE, "127.0.0.1:0", &path, &flags);
    let payer = chain.account(7);
    chain.mint(payer.address(), 1_000 * PRICE).await;
    let mut config = config(&chain, &payer);
    config.deposit = 500 * PRICE;
    // One voucher covers the whole stream: reservations are whole batches of 10.
    config.sign_ahead = 100 * PRICE;
    let client = PayerClient::new(config).unwrap();

    // A token every 20 ms; the provider is killed (SIGKILL) once 15 have arrived, in the middle
    // of the second reservation (tokens 10–19).
    let (count, mut received) = tokio::sync::watch::channel(0u128);
    let url = provider.url("/stream?tokens=90&delay_ms=20");
    let task = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .stream(&url, move |_| count.send_modify(|n| *n += 1))
                .await
        }
    });
    received.wait_for(|&n| n >= 15).await.unwrap();
    provider.kill();
    assert!(task.await.unwrap().is_err(), "the stream breaks");
    let received = *received.borrow();

    // Restarted on the same store: what is durable is what the dead process charged.
    let provider = ExampleProvider::start_in(&chain, payee, PRICE, "127.0.0.1:0", &path, &flags);
    let channel = only_channel(&client);
    let view = provider.channel(channel.id).await.unwrap();
    let spent = amount(&view, "spent");
    let accepted = amount(&view, "acceptedCumulative");
    // Persist before serve: every token received was charged durably.
    assert!(
        spent >= received * PRICE,
        "spent {spent}, {received} received"
    );
    // The unserved rest of one reservation at most (K units: K − 1 of the batch plus, as with
    // K = 1, the token that may have been in flight at the kill).
    assert!(
        spent - received * PRICE <= K * PRICE,
        "spent {spent}, {received} received"
    );
    assert!(spent <= accepted && accepted <= amount(&view, "deposit"));
    // Within what the payer signed, and no receipt told the client it owed unserved tokens.
    assert!(accepted <= channel.signed);
    assert!(channel.owed <= received * PRICE, "{channel:?}");
}

// ---- malicious servers (axum on loopback; the chain is real, for the client's own open) ----

/// A `tempo`/`session` challenge for the test chain's escrow and token, paying `payee`, with
/// `header` as the credential header.
fn rogue_challenge(chain: &TestChain, payee: Address, header: Option<&str>) -> String {
    use sluice_engine::protocol::{
        Challenge, ChallengeSecret, HexAddress, SessionMethodDetails, SessionProtocol,
        SessionRequest, Timestamp,
    };
    let request = SessionRequest {
        amount: PRICE,
        currency: HexAddress::from_address(chain.token),
        recipient: HexAddress::from_address(payee),
        unit_type: "request".into(),
        suggested_deposit: None,
        description: None,
        external_id: None,
        method_details: SessionMethodDetails {
            escrow_contract: HexAddress::from_address(chain.escrow),
            chain_id: CHAIN_ID,
            channel_id: None,
            min_voucher_delta: None,
            session_protocol: Some(SessionProtocol::V1),
            fee_payer: None,
            fee_token: None,
            operator: None,
        },
    };
    let expires = Timestamp::from_system_time(
        std::time::SystemTime::now() + std::time::Duration::from_secs(600),
    )
    .unwrap();
    let mut builder =
        Challenge::builder("rogue", "tempo", "session", request.to_json()).expires_at(expires);
    if let Some(header) = header {
        builder = builder.header(header);
    }
    builder
        .issue(&ChallengeSecret::new([7u8; 32]).unwrap())
        .unwrap()
        .to_header_value()
}

/// Serves `app` on a loopback port; returns `http://127.0.0.1:port`.
async fn serve_rogue(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A rogue's `200` with a receipt that accepts `amount` on `channel` as spent.
fn rogue_ok(channel: B256, amount: u128) -> axum::response::Response {
    use axum::response::IntoResponse;
    use sluice_engine::protocol::{SessionReceipt, Timestamp};
    let receipt = SessionReceipt::new(
        Timestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
        "rogue",
        channel,
        amount,
        amount,
    )
    .unwrap();
    (
        axum::http::StatusCode::OK,
        [("payment-receipt", receipt.to_header_value())],
        "ok",
    )
        .into_response()
}

/// The session credential a rogue received, or its `402` with `challenge` when there is none.
#[allow(clippy::result_large_err)] // a test helper: the error is the response to send
fn rogue_credential(
    headers: &axum::http::HeaderMap,
    challenge: &str,
) -> Result<
    sluice_engine::protocol::Credential<sluice_engine::protocol::SessionPayload>,
    axum::response::Response,
> {
    use axum::response::IntoResponse;
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err((
            axum::http::StatusCode::PAYMENT_REQUIRED,
            [(axum::http::header::WWW_AUTHENTICATE, challenge.to_owned())],
        )
            .into_response());
    };
    Ok(
        sluice_engine::protocol::parse_authorization(value.to_str().unwrap())
            .unwrap()
            .into_session()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_never_follows_a_redirect_to_another_origin() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    const CREDENTIAL_HEADER: &str = "x-payment-credential";
    let chain = TestChain::start().await;
    let payer = chain.account(4);
    chain.mint(payer.address(), 200 * PRICE).await;

    // The other origin records every request it gets.
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    let other = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let recorded = Arc::clone(&recorded);
        async move {
            recorded.lock().unwrap().push(headers);
            "thanks"
        }
    }))
    .await;
    // The provider asks for payment with its own credential header, and answers the paid
    // request with a redirect to the other origin.
    let challenge = rogue_challenge(&chain, chain.account(9).address(), Some(CREDENTIAL_HEADER));
    let location = format!("{other}/loot");
    let provider = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let challenge = challenge.clone();
        let location = location.clone();
        async move {
            if headers.contains_key(CREDENTIAL_HEADER) {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
                    .into_response()
            } else {
                (
                    StatusCode::PAYMENT_REQUIRED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                )
                    .into_response()
            }
        }
    }))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    let result = client.get(&format!("{provider}/paid")).await;
    let leaked = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|headers| headers.contains_key(CREDENTIAL_HEADER))
        .count();
    assert_eq!(leaked, 0, "the credential reached another origin");
    assert!(seen.lock().unwrap().is_empty(), "the redirect was followed");
    match result {
        Err(ClientError::Problem { status: 307, .. }) => {}
        other => panic!("expected the redirect as a problem, got {other:?}"),
    }
    // The open was never broadcast: the client stopped using the channel (its signed amount
    // stays counted, see `a_refused_open_stays_counted_against_the_client_cap`).
    let channel = only_channel(&client);
    assert!(channel.closed, "{channel:?}");
    assert_eq!(client.stats().signed_total, channel.signed);
    assert!(!on_chain(&chain, *channel.id.as_b256()).await.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_open_stays_counted_against_the_client_cap() {
    use alloy::providers::Provider;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::{SessionPayload, parse_authorization};

    let chain = TestChain::start().await;
    let honest = ExampleProvider::start(&chain, chain.account(9).address(), PRICE, &[]);
    let payer = chain.account(5);
    chain.mint(payer.address(), 500 * PRICE).await;

    // A provider that keeps every open credential it is sent and answers with a refusal,
    // without broadcasting the transaction (yet).
    let kept: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = Arc::clone(&kept);
    let rogue_payee = chain.account(8).address();
    let challenge = rogue_challenge(&chain, rogue_payee, None);
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let keep = Arc::clone(&keep);
        let challenge = challenge.clone();
        async move {
            match headers.get(header::AUTHORIZATION) {
                Some(value) => {
                    keep.lock().unwrap().push(value.to_str().unwrap().to_owned());
                    (
                        StatusCode::BAD_REQUEST,
                        [(header::CONTENT_TYPE, "application/problem+json")],
                        r#"{"type":"https://paymentauth.org/problems/verification-failed","title":"no","status":400,"detail":"not today"}"#,
                    )
                        .into_response()
                }
                None => (
                    StatusCode::PAYMENT_REQUIRED,
                    [(header::WWW_AUTHENTICATE, challenge)],
                )
                    .into_response(),
            }
        }
    }))
    .await;

    let mut config = config(&chain, &payer);
    config.cap_total = Some(2 * PRICE);
    let client = PayerClient::new(config).unwrap();
    assert_eq!(client.get(&honest.url("/paid")).await.unwrap().status, 200);
    match client.get(&format!("{rogue}/paid")).await {
        Err(error @ ClientError::Problem { status: 400, .. }) => {
            assert_eq!(error.problem_kind(), Some(ProblemKind::VerificationFailed));
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    // The refused open's voucher and transaction left the client: they stay counted.
    assert_eq!(client.stats().signed_total, 2 * PRICE);
    match client.get(&honest.url("/paid")).await {
        Err(ClientError::CapExceeded {
            scope: CapScope::Client,
            cap,
            would_be,
        }) => assert_eq!((cap, would_be), (2 * PRICE, 3 * PRICE)),
        other => panic!("expected the client cap, got {other:?}"),
    }
    let refused = client
        .channels()
        .into_iter()
        .find(|c| c.payee == rogue_payee)
        .expect("the refused open is listed");
    assert!(refused.closed, "{refused:?}");
    assert_eq!(refused.signed, PRICE);

    // Why: the provider can still broadcast the open it kept, and then holds a voucher the
    // payee can claim on chain.
    let credential = kept.lock().unwrap()[0].clone();
    let credential = parse_authorization(&credential)
        .unwrap()
        .into_session()
        .unwrap();
    let SessionPayload::Open(open) = credential.payload else {
        panic!("an open credential")
    };
    assert_eq!(
        (open.channel_id, open.cumulative_amount),
        (*refused.id.as_b256(), PRICE)
    );
    let rpc = ProviderBuilder::new().connect_http(chain.rpc_url());
    let mined = rpc
        .send_raw_transaction(&open.transaction)
        .await
        .expect("the kept open is still valid")
        .get_receipt()
        .await
        .expect("mined");
    assert!(mined.status());
    let on_chain = on_chain(&chain, open.channel_id).await;
    assert!(on_chain.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payee_switch_on_retry_leaves_nothing_owed_on_the_first_channel() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use sluice_engine::protocol::{SessionPayload, SessionReceipt, Timestamp};

    let chain = TestChain::start().await;
    let payer = chain.account(6);
    chain.mint(payer.address(), 500 * PRICE).await;
    let (first, second) = (chain.account(8).address(), chain.account(7).address());
    let challenges = (
        rogue_challenge(&chain, first, None),
        rogue_challenge(&chain, second, None),
    );

    // Accepts every open (spent: one unit), refuses vouchers on the first channel with a
    // fresh challenge for another payee, accepts a close as sent.
    let first_channel: Arc<Mutex<Option<B256>>> = Arc::default();
    let closes: Arc<Mutex<Vec<(B256, u128)>>> = Arc::default();
    let (state, recorded) = (Arc::clone(&first_channel), Arc::clone(&closes));
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let (state, recorded, challenges) =
            (Arc::clone(&state), Arc::clone(&recorded), challenges.clone());
        async move {
            let receipt = |channel: B256, amount: u128| {
                SessionReceipt::new(
                    Timestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
                    "rogue",
                    channel,
                    amount,
                    amount.min(PRICE),
                )
                .unwrap()
                .to_header_value()
            };
            let credential = match rogue_credential(&headers, &challenges.0) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            let ok = |channel, amount| -> Response {
                (StatusCode::OK, [("payment-receipt", receipt(channel, amount))], "ok")
                    .into_response()
            };
            match credential.payload {
                SessionPayload::Open(open) => {
                    state.lock().unwrap().get_or_insert(open.channel_id);
                    ok(open.channel_id, open.cumulative_amount)
                }
                SessionPayload::Voucher(_) => (
                    StatusCode::PAYMENT_REQUIRED,
                    [
                        (header::WWW_AUTHENTICATE, challenges.1),
                        (header::CONTENT_TYPE, "application/problem+json".to_owned()),
                    ],
                    r#"{"type":"https://paymentauth.org/problems/invalid-challenge","title":"x","status":402,"detail":"pay the other payee"}"#,
                )
                    .into_response(),
                SessionPayload::Close(close) => {
                    recorded
                        .lock()
                        .unwrap()
                        .push((close.channel_id, close.cumulative_amount));
                    ok(close.channel_id, close.cumulative_amount)
                }
                SessionPayload::TopUp(_) => StatusCode::BAD_REQUEST.into_response(),
            }
        }
    }))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    let url = format!("{rogue}/paid");
    let paid = client.get(&url).await.unwrap();
    let opened = first_channel.lock().unwrap().expect("first open");
    assert_eq!(paid.channel.map(|c| *c.as_b256()), Some(opened));
    // The voucher on the first channel is refused; the retry pays the other payee.
    let paid = client.get(&url).await.unwrap();
    assert_ne!(paid.channel.map(|c| *c.as_b256()), Some(opened));
    let first_view = client
        .channels()
        .into_iter()
        .find(|c| c.payee == first)
        .unwrap();
    assert_eq!((first_view.owed, first_view.accepted), (PRICE, PRICE));
    assert_eq!(
        first_view.signed,
        2 * PRICE,
        "the refused voucher was signed"
    );

    // The close of the first channel pays what it was owed: one unit (the second request
    // was paid on the other channel), not the refused voucher.
    let closed = client.close(&url).await.unwrap();
    assert_eq!(*closed.channel.as_b256(), opened);
    assert_eq!(closed.final_amount, PRICE);
    assert_eq!(closes.lock().unwrap().as_slice(), &[(opened, PRICE)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_leaves_nothing_owed_behind() {
    use axum::http::HeaderMap;
    use sluice_engine::protocol::SessionPayload;

    let chain = TestChain::start().await;
    let payer = chain.account(7);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // Accepts the open (one unit spent), never answers a voucher (after telling the test it
    // arrived), accepts a close as sent.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let closes: Arc<Mutex<Vec<u128>>> = Arc::default();
    let (notify, recorded) = (Arc::clone(&arrived), Arc::clone(&closes));
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let (notify, recorded, challenge) = (
            Arc::clone(&notify),
            Arc::clone(&recorded),
            challenge.clone(),
        );
        async move {
            let ok = rogue_ok;
            let credential = match rogue_credential(&headers, &challenge) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            match credential.payload {
                SessionPayload::Open(open) => ok(open.channel_id, open.cumulative_amount),
                SessionPayload::Close(close) => {
                    recorded.lock().unwrap().push(close.cumulative_amount);
                    ok(close.channel_id, close.cumulative_amount)
                }
                _ => {
                    notify.notify_one();
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    }))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    let url = format!("{rogue}/paid");
    assert_eq!(client.get(&url).await.unwrap().status, 200);
    // The second request reaches the server, which never answers; its task is cancelled.
    tokio::select! {
        result = client.get(&url) => panic!("the server never answers: {result:?}"),
        () = arrived.notified() => {}
    }
    let channel = only_channel(&client);
    assert_eq!(channel.signed, 2 * PRICE, "its voucher was signed and sent");
    assert_eq!((channel.owed, channel.accepted), (PRICE, PRICE));
    // Nothing the server acknowledged is owed beyond the first unit: the close pays that.
    let closed = client.close(&url).await.unwrap();
    assert_eq!(closed.final_amount, PRICE);
    assert_eq!(closes.lock().unwrap().as_slice(), &[PRICE]);
}

/// Broadcasts a payer-signed transaction from a credential and waits for it to be mined.
async fn broadcast(rpc: sluice_engine::chain::RpcUrl, transaction: &Bytes) {
    use alloy::providers::Provider;
    let mined = ProviderBuilder::new()
        .connect_http(rpc)
        .send_raw_transaction(transaction)
        .await
        .expect("accepted by the node")
        .get_receipt()
        .await
        .expect("mined");
    assert!(mined.status(), "the transaction succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_mined_but_unacknowledged_is_not_made_twice() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::SessionPayload;

    let chain = TestChain::start().await;
    let payer = chain.account(2);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // Broadcasts opens and top-ups as a provider does, but answers the first top-up with a
    // 500 after it was mined; vouchers are accepted as sent (spent = the voucher).
    let top_ups = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = Arc::clone(&top_ups);
    let rpc = chain.rpc_url();
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let (counted, challenge, rpc) = (Arc::clone(&counted), challenge.clone(), rpc.clone());
        async move {
            let ok = rogue_ok;
            let credential = match rogue_credential(&headers, &challenge) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            match credential.payload {
                SessionPayload::Open(open) => {
                    broadcast(rpc, &open.transaction).await;
                    ok(open.channel_id, open.cumulative_amount)
                }
                SessionPayload::TopUp(top_up) => {
                    broadcast(rpc, &top_up.transaction).await;
                    if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        (StatusCode::INTERNAL_SERVER_ERROR, "lost the answer").into_response()
                    } else {
                        StatusCode::NO_CONTENT.into_response()
                    }
                }
                SessionPayload::Voucher(voucher) | SessionPayload::Close(voucher) => {
                    ok(voucher.channel_id, voucher.cumulative_amount)
                }
            }
        }
    }))
    .await;

    let mut config = config(&chain, &payer);
    config.deposit = 2 * PRICE;
    config.top_up = Some(TopUpPolicy {
        below: 0,
        amount: 5 * PRICE,
    });
    let client = PayerClient::new(config).unwrap();
    let url = format!("{rogue}/paid");
    for _ in 0..2 {
        assert_eq!(client.get(&url).await.unwrap().status, 200);
    }
    // The third unit needs a top-up: mined, but its answer is lost.
    match client.get(&url).await {
        Err(ClientError::Problem { status: 500, .. }) => {}
        other => panic!("expected the lost top-up answer, got {other:?}"),
    }
    let id = *only_channel(&client).id.as_b256();
    assert_eq!(on_chain(&chain, id).await.deposit, 7 * PRICE);
    // The client knows the deposit grew: the next unit fits without another top-up.
    let paid = client.get(&url).await.unwrap();
    assert_eq!(paid.receipt.unwrap().accepted_cumulative(), 3 * PRICE);
    assert_eq!(
        top_ups.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one top-up sent"
    );
    assert_eq!(on_chain(&chain, id).await.deposit, 7 * PRICE);
    assert_eq!(only_channel(&client).deposit, 7 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_the_server_already_made_retires_the_channel() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::{SessionPayload, SessionReceipt, Timestamp};

    let chain = TestChain::start().await;
    let payer = chain.account(3);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // Accepts opens; answers anything else on a channel it has seen with 410 (it was closed
    // on chain behind the client's back).
    let finalized = (
        StatusCode::GONE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"https://paymentauth.org/problems/session/channel-finalized","title":"gone","status":410,"detail":"closed on chain"}"#,
    );
    let vouchers = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = Arc::clone(&vouchers);
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let (challenge, counted) = (challenge.clone(), Arc::clone(&counted));
        async move {
            let credential = match rogue_credential(&headers, &challenge) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            match credential.payload {
                SessionPayload::Open(open) => {
                    let receipt = SessionReceipt::new(
                        Timestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
                        "rogue",
                        open.channel_id,
                        open.cumulative_amount,
                        open.cumulative_amount,
                    )
                    .unwrap();
                    (
                        StatusCode::OK,
                        [("payment-receipt", receipt.to_header_value())],
                        "ok",
                    )
                        .into_response()
                }
                SessionPayload::Voucher(_) => {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    finalized.into_response()
                }
                _ => finalized.into_response(),
            }
        }
    }))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    let url = format!("{rogue}/paid");
    let first = client.get(&url).await.unwrap().channel.unwrap();
    match client.close(&url).await {
        Err(error @ ClientError::Problem { status: 410, .. }) => {
            assert_eq!(error.problem_kind(), Some(ProblemKind::ChannelFinalized));
        }
        other => panic!("expected the 410, got {other:?}"),
    }
    // The client stopped using the channel: a second close has nothing to close, and the next
    // request opens a new channel without first trying a voucher on the dead one.
    let channel = only_channel(&client);
    assert!(channel.closed && channel.id == first, "{channel:?}");
    assert!(matches!(
        client.close(&url).await,
        Err(ClientError::NoChannel { .. })
    ));
    let second = client.get(&url).await.unwrap().channel.unwrap();
    assert_ne!(second, first);
    assert_eq!(vouchers.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_waits_for_the_requests_in_flight() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::SessionPayload;

    let chain = TestChain::start().await;
    let payer = chain.account(2);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // Accepts the open (one unit); holds a voucher request until a close arrives and then
    // refuses it (the channel is closing): a close sent while it is in flight would pay for a
    // unit that is never served.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let closing = Arc::new(tokio::sync::Notify::new());
    let closes: Arc<Mutex<Vec<u128>>> = Arc::default();
    let (notify_arrived, notify_closing, recorded) = (
        Arc::clone(&arrived),
        Arc::clone(&closing),
        Arc::clone(&closes),
    );
    let rogue = serve_rogue(axum::Router::new().fallback(move |headers: HeaderMap| {
        let (arrived, closing, recorded, challenge) = (
            Arc::clone(&notify_arrived),
            Arc::clone(&notify_closing),
            Arc::clone(&recorded),
            challenge.clone(),
        );
        async move {
            let ok = rogue_ok;
            let credential = match rogue_credential(&headers, &challenge) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            match credential.payload {
                SessionPayload::Open(open) => ok(open.channel_id, open.cumulative_amount),
                SessionPayload::Close(close) => {
                    recorded.lock().unwrap().push(close.cumulative_amount);
                    closing.notify_waiters();
                    ok(close.channel_id, close.cumulative_amount)
                }
                _ => {
                    let closed = closing.notified();
                    arrived.notify_one();
                    closed.await;
                    (
                        StatusCode::GONE,
                        [(header::CONTENT_TYPE, "application/problem+json")],
                        r#"{"type":"https://paymentauth.org/problems/session/channel-finalized","title":"gone","status":410,"detail":"closing"}"#,
                    )
                        .into_response()
                }
            }
        }
    }))
    .await;

    let mut config = config(&chain, &payer);
    // Bounds the held request (the server answers it only after a close).
    config.http_timeout = std::time::Duration::from_secs(2);
    let client = PayerClient::new(config).unwrap();
    let url = format!("{rogue}/paid");
    assert_eq!(client.get(&url).await.unwrap().status, 200);
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).await }
    });
    arrived.notified().await;
    // The close waits until the request in flight has its answer (here: none, its timeout),
    // then pays what the server acknowledged.
    let closed = client.close(&url).await.unwrap();
    match in_flight.await.unwrap() {
        Err(ClientError::Http(failure)) => assert!(failure.timeout, "{failure:?}"),
        other => panic!("expected the held request to time out, got {other:?}"),
    }
    assert_eq!(closed.final_amount, PRICE);
    assert_eq!(closes.lock().unwrap().as_slice(), &[PRICE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_need_voucher_answer_overtaken_by_a_concurrent_request_is_resent() {
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::{SessionPayload, SessionReceipt, Timestamp, parse_authorization};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::{Notify, mpsc};

    let chain = TestChain::start().await;
    let payer = chain.account(4);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // A metered stream: two events, then a need-voucher for two units. The voucher POST that
    // answers it is held until a concurrent request's higher voucher was accepted, then judged
    // as a server does: a voucher below the accepted one is refused.
    #[derive(Clone)]
    struct Rogue {
        challenge: String,
        accepted: Arc<Mutex<u128>>,
        events: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
        hold_first_post: Arc<AtomicBool>,
        post_arrived: Arc<Notify>,
        overtaken: Arc<Notify>,
        refused_posts: Arc<Mutex<Vec<u128>>>,
    }
    let rogue = Rogue {
        challenge,
        accepted: Arc::default(),
        events: Arc::default(),
        hold_first_post: Arc::new(AtomicBool::new(true)),
        post_arrived: Arc::new(Notify::new()),
        overtaken: Arc::new(Notify::new()),
        refused_posts: Arc::default(),
    };
    let state = rogue.clone();
    let base = serve_rogue(axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap| {
            let rogue = state.clone();
            async move {
                let Some(value) = headers.get(header::AUTHORIZATION) else {
                    return (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, rogue.challenge)],
                    )
                        .into_response();
                };
                let credential = parse_authorization(value.to_str().unwrap())
                    .unwrap()
                    .into_session()
                    .unwrap();
                let ok = |channel: B256, amount: u128| {
                    let receipt = SessionReceipt::new(
                        Timestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
                        "rogue",
                        channel,
                        amount,
                        amount,
                    )
                    .unwrap();
                    (
                        StatusCode::OK,
                        [("payment-receipt", receipt.to_header_value())],
                        "ok",
                    )
                        .into_response()
                };
                match (method, uri.path(), credential.payload) {
                    (Method::GET, "/stream", SessionPayload::Open(open)) => {
                        *rogue.accepted.lock().unwrap() = open.cumulative_amount;
                        let (events, mut rx) = mpsc::unbounded_channel::<String>();
                        for event in [
                            "data: t0\n\n".to_owned(),
                            "data: t1\n\n".to_owned(),
                            format!(
                                "event: payment-need-voucher\ndata: {{\"channelId\":\"{}\",\"requiredCumulative\":\"{}\",\"acceptedCumulative\":\"{}\",\"deposit\":\"{}\"}}\n\n",
                                open.channel_id,
                                2 * PRICE,
                                open.cumulative_amount,
                                50 * PRICE
                            ),
                        ] {
                            events.send(event).unwrap();
                        }
                        *rogue.events.lock().unwrap() = Some(events);
                        let body = futures_util::stream::poll_fn(move |cx| {
                            rx.poll_recv(cx).map(|e| e.map(Ok::<_, std::io::Error>))
                        });
                        (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "text/event-stream")],
                            axum::body::Body::from_stream(body),
                        )
                            .into_response()
                    }
                    (Method::POST, "/stream", SessionPayload::Voucher(voucher)) => {
                        if rogue.hold_first_post.swap(false, Ordering::SeqCst) {
                            rogue.post_arrived.notify_one();
                            rogue.overtaken.notified().await;
                        }
                        let mut accepted = rogue.accepted.lock().unwrap();
                        if voucher.cumulative_amount < *accepted {
                            rogue
                                .refused_posts
                                .lock()
                                .unwrap()
                                .push(voucher.cumulative_amount);
                            return (
                                StatusCode::BAD_REQUEST,
                                [(header::CONTENT_TYPE, "application/problem+json")],
                                r#"{"type":"https://paymentauth.org/problems/verification-failed","title":"x","status":400,"detail":"below the accepted voucher"}"#,
                            )
                                .into_response();
                        }
                        *accepted = voucher.cumulative_amount;
                        // The voucher covers the stream: one more event, and the end.
                        if let Some(events) = rogue.events.lock().unwrap().take() {
                            events.send("data: t2\n\n".to_owned()).unwrap();
                        }
                        ok(voucher.channel_id, voucher.cumulative_amount)
                    }
                    (Method::GET, "/paid", SessionPayload::Voucher(voucher)) => {
                        {
                            let mut accepted = rogue.accepted.lock().unwrap();
                            *accepted = (*accepted).max(voucher.cumulative_amount);
                        }
                        rogue.overtaken.notify_one();
                        ok(voucher.channel_id, voucher.cumulative_amount)
                    }
                    _ => StatusCode::BAD_REQUEST.into_response(),
                }
            }
        },
    ))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    let stream = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/stream"));
        async move {
            let mut data = Vec::new();
            let summary = client.stream(&url, |d| data.push(d.to_owned())).await;
            (summary, data)
        }
    });
    rogue.post_arrived.notified().await;
    // While the need-voucher answer (two units) is in flight, a request on the same channel
    // signs a third unit, and the server accepts it first.
    let paid = client.get(&format!("{base}/paid")).await.unwrap();
    assert_eq!(paid.receipt.unwrap().accepted_cumulative(), 3 * PRICE);
    let (summary, data) = stream.await.unwrap();
    let summary = summary.expect("the stream goes on after re-sending the highest voucher");
    assert_eq!(data, ["t0", "t1", "t2"]);
    assert_eq!(summary.cumulative, 3 * PRICE);
    assert_eq!(rogue.refused_posts.lock().unwrap().as_slice(), &[2 * PRICE]);
    assert_eq!(*rogue.accepted.lock().unwrap(), 3 * PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_receipt_and_a_greedy_demand_are_refused_without_moving_the_accounting() {
    use axum::http::{HeaderMap, StatusCode, Uri, header};
    use axum::response::IntoResponse;
    use sluice_engine::protocol::{SessionPayload, SessionReceipt, Timestamp};

    let chain = TestChain::start().await;
    let payer = chain.account(5);
    chain.mint(payer.address(), 500 * PRICE).await;
    let challenge = rogue_challenge(&chain, chain.account(8).address(), None);

    // `/ok` pays honestly; `/lie` answers with a receipt for far more than was signed;
    // `/greedy` asks for a hundred units through `session/insufficient-balance`.
    let rogue = serve_rogue(axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let challenge = challenge.clone();
        async move {
            let receipt = |channel: B256, accepted: u128| {
                SessionReceipt::new(
                    Timestamp::from_system_time(std::time::SystemTime::now()).unwrap(),
                    "rogue",
                    channel,
                    accepted,
                    accepted,
                )
                .unwrap()
                .to_header_value()
            };
            let credential = match rogue_credential(&headers, &challenge) {
                Ok(credential) => credential,
                Err(answer) => return answer,
            };
            let (channel, amount) = match credential.payload {
                SessionPayload::Open(open) => (open.channel_id, open.cumulative_amount),
                SessionPayload::Voucher(v) => (v.channel_id, v.cumulative_amount),
                _ => return StatusCode::BAD_REQUEST.into_response(),
            };
            match uri.path() {
                "/lie" => (
                    StatusCode::OK,
                    [("payment-receipt", receipt(channel, 1_000 * PRICE))],
                    "ok",
                )
                    .into_response(),
                "/greedy" => (
                    StatusCode::PAYMENT_REQUIRED,
                    [
                        (header::WWW_AUTHENTICATE, challenge),
                        (header::CONTENT_TYPE, "application/problem+json".to_owned()),
                    ],
                    format!(
                        r#"{{"type":"https://paymentauth.org/problems/session/insufficient-balance","title":"x","status":402,"detail":"more","details":{{"requiredCumulative":"{}"}}}}"#,
                        100 * PRICE
                    ),
                )
                    .into_response(),
                _ => (
                    StatusCode::OK,
                    [("payment-receipt", receipt(channel, amount))],
                    "ok",
                )
                    .into_response(),
            }
        }
    }))
    .await;

    let client = PayerClient::new(config(&chain, &payer)).unwrap();
    assert_eq!(
        client.get(&format!("{rogue}/ok")).await.unwrap().status,
        200
    );
    match client.get(&format!("{rogue}/lie")).await {
        Err(ClientError::InvalidReceipt { reason, .. }) => {
            assert!(
                reason.contains("above the highest signed voucher"),
                "{reason}"
            );
        }
        other => panic!("expected InvalidReceipt, got {other:?}"),
    }
    let channel = only_channel(&client);
    assert_eq!(
        (channel.signed, channel.owed, channel.accepted),
        (2 * PRICE, PRICE, PRICE),
        "the lie moved nothing"
    );
    let signatures = client.stats().vouchers_signed;
    match client.get(&format!("{rogue}/greedy")).await {
        Err(ClientError::Overcharge { required, owed, .. }) => {
            // Owed: the first unit and this request (the lying answer counts for nothing), and
            // one unit more at most.
            assert_eq!((required, owed), (100 * PRICE, 3 * PRICE));
        }
        other => panic!("expected Overcharge, got {other:?}"),
    }
    assert_eq!(client.stats().vouchers_signed, signatures, "nothing signed");
    assert_eq!(only_channel(&client).signed, 2 * PRICE);
    assert_eq!(client.stats().signed_total, 2 * PRICE);
}
