//! Metered SSE charging in batches (`PaymentLayer::charge_batch(K)`, K > 1), end to end: real
//! HTTP on loopback, real sled, a real anvil chain. The stream reserves up to K units per
//! durable update and gives back what it did not serve when it ends; every test checks that
//! `spent == served × price` once the stream is over, that `spent ≤ accepted` at every event,
//! and that no receipt or need-voucher event reports more than was served.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use futures_util::{StreamExt, stream};
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use serde_json::Value;
use sluice_engine::http::{PaymentLayer, SSE_CONTENT_TYPE, SseMeter};
use sluice_engine::protocol::{Challenge, SessionReceipt};
use sluice_engine::store::ChannelRecord;
use support::http::{
    Events, Provider, ProviderOptions, TOKEN_PRICE, TestPayer, challenge_of, data_of,
};

const DEPOSIT: u128 = 1_000_000;

#[derive(serde::Deserialize)]
struct CountedQuery {
    /// Tokens the content has (`None`: endless).
    tokens: Option<u64>,
    /// After this many tokens the content waits for [`Counted::release_hold`].
    hold_after: Option<u64>,
}

/// A second server on the provider's engine: `GET|POST /counted` is the `/stream` route
/// metered with batch `k`, and counts the `message` events the meter hands to the connection
/// (the events served).
struct Counted {
    base: String,
    served: Arc<AtomicU64>,
    hold: Arc<tokio::sync::Semaphore>,
}

async fn counted(provider: &Provider, k: u64) -> Counted {
    let served = Arc::new(AtomicU64::new(0));
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let counter = Arc::clone(&served);
    let gate = Arc::clone(&hold);
    let handler = move |meter: SseMeter, Query(query): Query<CountedQuery>| {
        let counter = Arc::clone(&counter);
        let gate = Arc::clone(&gate);
        async move {
            assert_eq!(meter.charge_batch(), k);
            let tokens = query.tokens.unwrap_or(u64::MAX);
            let split = query.hold_after.unwrap_or(tokens).min(tokens);
            let held = query.hold_after.is_some();
            let wait = stream::once(async move {
                if held {
                    let _permit = gate.acquire().await;
                }
            })
            .filter_map(|()| async { None::<u64> });
            let content = stream::iter(0..split)
                .chain(wait)
                .chain(stream::iter(split..tokens))
                .map(|i| format!("token {i}"));
            let events = meter.events(content).inspect(move |event| {
                if event.starts_with(b"event: message\n") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            let mut response =
                Response::new(Body::from_stream(events.map(Ok::<_, std::io::Error>)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(SSE_CONTENT_TYPE));
            response
        }
    };
    let app = Router::new()
        .route("/counted", get(handler.clone()).post(handler))
        .route_layer(
            PaymentLayer::metered(Arc::clone(&provider.engine), provider.stream_route.clone())
                .charge_batch(k),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Counted {
        base: format!("http://{addr}"),
        served,
        hold,
    }
}

impl Counted {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Lets held content go on.
    fn release_hold(&self) {
        self.hold.add_permits(1);
    }

    fn served(&self) -> u128 {
        u128::from(self.served.load(Ordering::SeqCst))
    }

    async fn challenge(&self, path: &str) -> Challenge {
        let response = reqwest::get(self.url(path)).await.expect("send");
        assert_eq!(response.status(), 402);
        challenge_of(&response)
    }
}

fn decimal(value: &Value, field: &str) -> u128 {
    value[field]
        .as_str()
        .expect("string")
        .parse()
        .expect("decimal")
}

/// The money invariant, checked at every event.
fn check_money(record: &ChannelRecord) {
    assert!(
        record.spent <= record.accepted_cumulative,
        "spent {} above accepted {}",
        record.spent,
        record.accepted_cumulative
    );
    assert!(record.accepted_cumulative <= record.deposit);
}

async fn open_stream(
    server: &Counted,
    payer: &mut TestPayer,
    path: &str,
    cumulative: u128,
) -> (Challenge, Events) {
    let challenge = server.challenge(path).await;
    let open = payer.open_credential(challenge.clone(), cumulative);
    let response = reqwest::Client::new()
        .get(server.url(path))
        .header("authorization", open)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], SSE_CONTENT_TYPE);
    (
        challenge,
        Events {
            response,
            buffer: String::new(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_stream_gives_back_the_unused_reservation_when_its_content_ends() {
    const K: u64 = 8;
    const TOKENS: u128 = 13;
    let provider = Provider::start(ProviderOptions::default()).await;
    let server = counted(&provider, K).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    // The voucher covers 50 tokens: reservations of 8 and 8; 3 of the second go unused.
    let (challenge, mut events) = open_stream(
        &server,
        &mut payer,
        &format!("/counted?tokens={TOKENS}"),
        50 * TOKEN_PRICE,
    )
    .await;
    let mut messages = 0u128;
    let receipt_event = loop {
        let event = events.next().await.expect("the stream ends with a receipt");
        let record = provider.record(payer.channel);
        check_money(&record);
        if event.starts_with("event: message\n") {
            assert_eq!(event, format!("event: message\ndata: token {messages}\n\n"));
            messages += 1;
            // Each event was charged before it was sent; the server may run ahead of the
            // reader by whole reservations (at most two of 8 here), or have ended already.
            assert!(record.spent >= messages * TOKEN_PRICE, "after {messages}");
            assert!(record.spent <= 16 * TOKEN_PRICE, "after {messages}");
        } else if event.starts_with("event: payment-receipt\n") {
            break event;
        } else {
            panic!("unexpected event {event:?}");
        }
    };
    assert_eq!(messages, TOKENS);
    assert!(
        events.next().await.is_none(),
        "the receipt is the last event"
    );
    let receipt = SessionReceipt::from_json(&data_of(&receipt_event)).expect("receipt");
    assert_eq!(
        receipt.spent(),
        TOKENS * TOKEN_PRICE,
        "the receipt reports what was served"
    );
    assert_eq!(receipt.units(), Some(13));
    assert_eq!(receipt.accepted_cumulative(), 50 * TOKEN_PRICE);
    assert_eq!(receipt.challenge_id(), challenge.id());
    assert_eq!(server.served(), TOKENS);
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (TOKENS * TOKEN_PRICE, 13));
    check_money(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_stream_pauses_for_a_voucher_when_it_runs_out_mid_batch() {
    const K: u64 = 8;
    const TOKENS: u128 = 20;
    let provider = Provider::start(ProviderOptions::default()).await;
    let server = counted(&provider, K).await;
    let mut payer = provider.payer(2, DEPOSIT).await;
    let path = format!("/counted?tokens={TOKENS}");
    // The open voucher covers 3 tokens (less than a batch); each later one 5 more.
    let (challenge, mut events) = open_stream(&server, &mut payer, &path, 3 * TOKEN_PRICE).await;
    let mut messages = 0u128;
    let mut pauses = 0;
    let receipt_event = loop {
        let event = events.next().await.expect("the stream ends with a receipt");
        let record = provider.record(payer.channel);
        check_money(&record);
        if event.starts_with("event: message\n") {
            assert_eq!(event, format!("event: message\ndata: token {messages}\n\n"));
            messages += 1;
        } else if event.starts_with("event: payment-need-voucher\n") {
            pauses += 1;
            let need = data_of(&event);
            // What was served plus one token, never the reservation.
            assert_eq!(
                decimal(&need, "requiredCumulative"),
                (messages + 1) * TOKEN_PRICE
            );
            assert_eq!(
                decimal(&need, "acceptedCumulative"),
                record.accepted_cumulative
            );
            // A pause only happens with an empty reservation: spent is what was served.
            assert_eq!(record.spent, messages * TOKEN_PRICE);
            assert_eq!(server.served(), messages);
            let cumulative =
                (record.accepted_cumulative + 5 * TOKEN_PRICE).min(TOKENS * TOKEN_PRICE);
            let post = reqwest::Client::new()
                .post(server.url(&path))
                .header(
                    "authorization",
                    payer.voucher_credential(challenge.clone(), cumulative),
                )
                .send()
                .await
                .expect("send");
            assert_eq!(post.status(), 204);
        } else if event.starts_with("event: payment-receipt\n") {
            break event;
        } else {
            panic!("unexpected event {event:?}");
        }
    };
    assert_eq!(messages, TOKENS);
    // Vouchers at 3, 8, 13, 18 and 20 tokens: a pause at each of the first four.
    assert_eq!(pauses, 4);
    let receipt = SessionReceipt::from_json(&data_of(&receipt_event)).expect("receipt");
    assert_eq!(receipt.spent(), TOKENS * TOKEN_PRICE);
    assert_eq!(receipt.accepted_cumulative(), TOKENS * TOKEN_PRICE);
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (TOKENS * TOKEN_PRICE, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_stream_gives_back_the_unused_reservation_when_the_client_disconnects() {
    const K: u64 = 64;
    let provider = Provider::start(ProviderOptions::default()).await;
    let server = counted(&provider, K).await;
    let mut payer = provider.payer(3, DEPOSIT).await;
    // Endless content; the voucher covers 100,000 tokens, so only the connection stops it.
    let (_challenge, mut events) =
        open_stream(&server, &mut payer, "/counted", 100_000 * TOKEN_PRICE).await;
    let mut messages = 0u128;
    while messages < 100 {
        let event = events.next().await.expect("content");
        assert!(event.starts_with("event: message\n"), "{event:?}");
        check_money(&provider.record(payer.channel));
        messages += 1;
    }
    // The client goes away mid-batch.
    drop(events);

    // The meter gives the rest of its reservation back from the dropped stream. Wait (bounded)
    // for the store to show the release: spent a whole number of tokens served, not of batches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let record = loop {
        let record = provider.record(payer.channel);
        let served = server.served();
        if record.spent == served * TOKEN_PRICE {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spent {} never fell to {served} tokens served",
            record.spent
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let served = server.served();
    assert!(served >= messages, "{served} served, {messages} read");
    assert_eq!(record.spent, served * TOKEN_PRICE);
    assert_eq!(record.units, u64::try_from(served).expect("fits"));
    check_money(&record);
    // Nothing more is charged or given back later: the count is final.
    let later = provider.engine.channel(&payer.channel).unwrap().unwrap();
    assert_eq!(later.spent, served * TOKEN_PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_spent_for_other_requests_until_it_is_given_back() {
    const K: u64 = 10;
    let provider = Provider::start(ProviderOptions::default()).await;
    let server = counted(&provider, K).await;
    let mut payer = provider.payer(4, DEPOSIT).await;
    let (challenge, mut events) = open_stream(
        &server,
        &mut payer,
        "/counted?tokens=3&hold_after=3",
        12 * TOKEN_PRICE,
    )
    .await;
    for i in 0..3 {
        let event = events.next().await.expect("token");
        assert_eq!(event, format!("event: message\ndata: token {i}\n\n"));
    }
    // The content is held: served 3 of a 10-token reservation.
    assert_eq!(server.served(), 3);
    assert_eq!(provider.record(payer.channel).spent, 10 * TOKEN_PRICE);
    // The stream reserved 10 of the 12 tokens covered: a 3-token charge elsewhere is refused,
    // a 2-token one fits.
    let now = support::http::now();
    let refused = provider
        .engine
        .charge(
            &provider.stream_route,
            &payer.channel,
            3,
            challenge.id(),
            now,
        )
        .await
        .unwrap_err();
    assert!(refused.insufficient_balance().is_some(), "{refused}");
    provider
        .engine
        .charge(
            &provider.stream_route,
            &payer.channel,
            2,
            challenge.id(),
            now,
        )
        .await
        .expect("two tokens fit");
    server.release_hold();
    let mut last = String::new();
    while let Some(event) = events.next().await {
        last = event;
    }
    let receipt = SessionReceipt::from_json(&data_of(&last)).expect("final receipt");
    // The stream served 3; the other charge took 2; the 7 unused are back.
    assert_eq!(receipt.spent(), 5 * TOKEN_PRICE);
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (5 * TOKEN_PRICE, 5));
    // A release never gives back more than was charged.
    let error = provider
        .engine
        .release(&provider.stream_route, &payer.channel, 6, now)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            sluice_engine::EngineError::Session(
                sluice_engine::session::SessionError::ReleaseExceedsSpent { .. }
            )
        ),
        "{error}"
    );
    assert_eq!(provider.record(payer.channel), record);
}
