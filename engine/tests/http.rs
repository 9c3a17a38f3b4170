//! The HTTP payment layer end to end: real HTTP on loopback, a real anvil chain with the escrow,
//! real sled. 402 shape, Accept-Payment, a paid flow with payer-signed opens and vouchers,
//! management requests, 410s, insufficient balance, idempotency, metered SSE.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use sluice_engine::http::SSE_CONTENT_TYPE;
use sluice_engine::protocol::{NeedVoucher, SessionReceipt, base64url_decode};
use support::http::{
    Events, PAID_PRICE, Provider, ProviderOptions, REALM, TOKEN_PRICE, challenge_of, data_of,
};

const DEPOSIT: u128 = 100_000;

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problem responses are typed"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status, "body status matches the response");
    body
}

/// The engine facts a refused request must leave alone (chain facts are a cache the engine may
/// refresh on any request).
fn money(record: &sluice_engine::store::ChannelRecord) -> (u128, [u8; 65], u128, u64) {
    (
        record.accepted_cumulative,
        record.accepted_signature,
        record.spent,
        record.units,
    )
}

fn receipt_of(response: &reqwest::Response) -> SessionReceipt {
    assert_eq!(response.headers()["cache-control"], "private");
    SessionReceipt::from_header_value(
        response.headers()["payment-receipt"]
            .to_str()
            .expect("ascii"),
    )
    .expect("a session receipt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_request_gets_a_402_challenge_with_a_problem_body() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    assert!(response.headers().get("payment-receipt").is_none());
    let challenge = challenge_of(&response);
    assert_eq!(challenge.realm(), REALM);
    assert_eq!(challenge.method(), "tempo");
    assert_eq!(challenge.intent(), "session");
    assert!(challenge.expires().is_some(), "challenges always expire");
    let request = challenge.session_request().expect("a session request");
    assert_eq!(request.amount, PAID_PRICE);
    assert_eq!(request.unit_type, "request");
    assert_eq!(request.suggested_deposit, Some(10_000));
    assert_eq!(request.method_details.channel_id, None);
    let raw_request =
        String::from_utf8(base64url_decode(challenge.request_b64()).unwrap()).unwrap();
    assert!(
        raw_request.contains(r#""sessionProtocol":"v1""#),
        "{raw_request}"
    );
    let body = problem(response).await;
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/payment-required"
    );
    assert_eq!(body["detail"], "Payment is required (one answer).");
    assert_eq!(body["challengeId"], challenge.id());
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 0);

    // The free route is untouched by the layer.
    let free = provider
        .client
        .get(provider.url("/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), 200);
    assert!(free.headers().get("www-authenticate").is_none());
    assert_eq!(free.text().await.unwrap(), "free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_payment_is_honoured() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let send = |value: &'static str| {
        provider
            .client
            .get(provider.url("/paid"))
            .header("accept-payment", value)
            .send()
    };
    for accepted in ["tempo/session", "tempo/*;q=0.5, stripe/charge", "*/*"] {
        let response = send(accepted).await.unwrap();
        assert_eq!(response.status(), 402, "{accepted}");
        assert_eq!(
            problem(response).await["type"],
            "https://paymentauth.org/problems/payment-required"
        );
    }
    for refused in ["tempo/charge", "stripe/*", "tempo/session;q=0"] {
        let response = send(refused).await.unwrap();
        assert_eq!(response.status(), 400, "{refused}");
        let body = problem(response).await;
        assert_eq!(
            body["type"],
            "https://paymentauth.org/problems/method-unsupported"
        );
    }
    let response = send("tempo session;;").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        problem(response).await["type"],
        "https://paymentauth.org/problems/bad-request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_flow_open_vouchers_management_and_receipts() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let mut payer = provider.payer(1, DEPOSIT).await;

    // Open with an initial voucher covering two requests; the open request is charged one.
    let challenge = provider.challenge("/paid").await;
    let open = payer.open_credential(challenge.clone(), 2 * PAID_PRICE);
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let receipt = receipt_of(&response);
    assert_eq!(receipt.channel_id(), payer.channel);
    assert_eq!(receipt.challenge_id(), challenge.id());
    assert_eq!(receipt.accepted_cumulative(), 2 * PAID_PRICE);
    assert_eq!(receipt.spent(), PAID_PRICE);
    assert_eq!(receipt.units(), Some(1));
    assert!(receipt.tx_hash().is_some(), "the open transaction's hash");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["answer"], 42);
    assert_eq!(body["unitsCharged"], 1);
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 1);
    assert_eq!(provider.chain.balance(provider.chain.escrow).await, DEPOSIT);

    // The next request's challenge suggests the payer's channel... once the payer is known:
    // an unpaid request does not say who it is, so it gets no suggestion.
    let fresh = provider.challenge("/paid").await;
    assert_eq!(
        fresh.session_request().unwrap().method_details.channel_id,
        None
    );

    // Vouchers pay for further requests; each request is charged before the handler runs.
    for n in 2..=4u128 {
        let challenge = provider.challenge("/paid").await;
        let response = provider
            .client
            .get(provider.url("/paid"))
            .header(
                "authorization",
                payer.voucher_credential(challenge, n * PAID_PRICE),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let receipt = receipt_of(&response);
        assert_eq!(receipt.accepted_cumulative(), n * PAID_PRICE);
        assert_eq!(receipt.spent(), n * PAID_PRICE);
    }
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 4);

    // Management requests (HEAD, empty POST) get 204 + receipt, are not charged and never
    // reach the handler; a higher voucher is still accepted.
    let challenge = provider.challenge("/paid").await;
    let head = provider
        .client
        .head(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(challenge.clone(), 6 * PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 204);
    let receipt = receipt_of(&head);
    assert_eq!(receipt.accepted_cumulative(), 6 * PAID_PRICE);
    assert_eq!(receipt.spent(), 4 * PAID_PRICE);
    let post = provider
        .client
        .post(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(challenge, 7 * PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 204);
    assert_eq!(receipt_of(&post).accepted_cumulative(), 7 * PAID_PRICE);
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 4);
    let record = provider.record(payer.channel);
    assert_eq!(
        (record.accepted_cumulative, record.spent, record.units),
        (7 * PAID_PRICE, 4 * PAID_PRICE, 4)
    );
    // A POST with a body is content: charged, handler called.
    let challenge = provider.challenge("/paid").await;
    let content_post = provider
        .client
        .post(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(challenge, 7 * PAID_PRICE),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(content_post.status(), 200);
    assert_eq!(receipt_of(&content_post).spent(), 5 * PAID_PRICE);
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_balance_is_a_402_with_a_fresh_challenge_suggesting_the_channel() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    let challenge = provider.challenge("/paid").await;
    let open = payer.open_credential(challenge.clone(), PAID_PRICE);
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let before = provider.record(payer.channel);

    // The same voucher again: nothing left to spend.
    let challenge = provider.challenge("/paid").await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(challenge, PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    let fresh = challenge_of(&response);
    assert_eq!(
        fresh.session_request().unwrap().method_details.channel_id,
        Some(payer.channel),
        "the fresh challenge suggests the payer's open channel"
    );
    let body = problem(response).await;
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/session/insufficient-balance"
    );
    assert_eq!(body["challengeId"], fresh.id());
    assert_eq!(body["details"]["requiredCumulative"], "50");
    assert_eq!(
        money(&provider.record(payer.channel)),
        money(&before),
        "no state change"
    );
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_requested_or_closed_channels_get_410() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    let mut other = provider.payer(2, DEPOSIT).await;
    for p in [&mut payer, &mut other] {
        let challenge = provider.challenge("/paid").await;
        let open = p.open_credential(challenge, 4 * PAID_PRICE);
        let response = provider
            .client
            .get(provider.url("/paid"))
            .header("authorization", open)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    // The payer asks the escrow to close: no new vouchers (mppx: 410 channel-finalized).
    let request_close = payer.payer.request_close(payer.channel);
    use sluice_engine::chain::ChainClient;
    assert!(
        provider
            .engine
            .chain()
            .submit_raw(request_close)
            .await
            .unwrap()
            .success
    );
    let before = provider.record(payer.channel);
    let challenge = provider.challenge("/paid").await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(challenge, 5 * PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    assert!(response.headers().get("www-authenticate").is_some());
    let body = problem(response).await;
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/session/channel-finalized"
    );
    let after = provider.record(payer.channel);
    assert_eq!(
        (after.accepted_cumulative, after.spent),
        (before.accepted_cumulative, before.spent),
        "the voucher was not taken"
    );

    // A cooperative close credential gets 204; the channel then refuses content with 410.
    let challenge = provider.challenge("/paid").await;
    let close = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            other.close_credential(challenge, PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let receipt = receipt_of(&close);
    assert_eq!(receipt.spent(), PAID_PRICE);
    let challenge = provider.challenge("/paid").await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            other.voucher_credential(challenge, 4 * PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    assert_eq!(provider.paid_calls.load(Ordering::SeqCst), 2);

    // An unknown channel is 410 channel-not-found.
    let mut stranger = provider.payer(3, DEPOSIT).await;
    stranger.channel = alloy::primitives::B256::repeat_byte(0x77);
    let challenge = provider.challenge("/paid").await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            stranger.voucher_credential(challenge, PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    assert_eq!(
        problem(response).await["type"],
        "https://paymentauth.org/problems/session/channel-not-found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_recorded_outcome_and_charges_nothing() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    let challenge = provider.challenge("/paid").await;
    let open = payer.open_credential(challenge, 10 * PAID_PRICE);
    let first = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", open.clone())
        .header("idempotency-key", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_receipt = first.headers()["payment-receipt"].clone();
    assert_eq!(receipt_of(&first).spent(), PAID_PRICE);

    // The same request again (a retry after a lost response): same receipt, nothing charged.
    for _ in 0..3 {
        let replay = provider
            .client
            .get(provider.url("/paid"))
            .header("authorization", open.clone())
            .header("idempotency-key", "req-1")
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 200);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(replay.headers()["payment-receipt"], first_receipt);
        let body: Value = replay.json().await.unwrap();
        assert_eq!(body["replayed"], true);
        assert_eq!(body["unitsCharged"], 0);
    }
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (PAID_PRICE, 1));

    // The same key on a different request is refused; nothing changes.
    let challenge = provider.challenge("/paid").await;
    let voucher = payer.voucher_credential(challenge, 10 * PAID_PRICE);
    let misuse = provider
        .client
        .get(provider.url("/paid?other=1"))
        .header("authorization", voucher.clone())
        .header("idempotency-key", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(misuse.status(), 400);
    assert_eq!(
        problem(misuse).await["type"],
        "https://paymentauth.org/problems/bad-request"
    );
    assert_eq!(money(&provider.record(payer.channel)), money(&record));

    // A new key is a new request: charged once.
    let second = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", voucher.clone())
        .header("idempotency-key", "req-2")
        .send()
        .await
        .unwrap();
    assert_eq!(receipt_of(&second).spent(), 2 * PAID_PRICE);
    // Invalid keys are a 400 and change nothing.
    let bad = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", voucher)
        .header("idempotency-key", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(provider.record(payer.channel).spent, 2 * PAID_PRICE);

    // Retention: pruning after the retention period removes the outcomes.
    let later = sluice_engine::protocol::Timestamp::from_unix_millis(
        support::http::now().unix_millis() + 25 * 3600 * 1000,
    )
    .unwrap();
    assert_eq!(provider.engine.prune_idempotency(later).unwrap(), 2);
    assert_eq!(provider.engine.prune_idempotency(later).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_pauses_for_vouchers_posted_mid_stream_and_ends_with_a_receipt() {
    let provider = Provider::start(ProviderOptions::default()).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    const TOKENS: u128 = 10;
    // The open voucher covers 3 tokens; each later voucher 3 more (so at least 3 pauses).
    let challenge = provider.challenge("/stream").await;
    let open = payer.open_credential(challenge.clone(), 3 * TOKEN_PRICE);
    let response = provider
        .client
        .get(provider.url(&format!("/stream?tokens={TOKENS}")))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], SSE_CONTENT_TYPE);
    let initial = receipt_of(&response);
    assert_eq!(
        initial.spent(),
        0,
        "a metered stream is not charged up front"
    );
    let mut events = Events {
        response,
        buffer: String::new(),
    };
    let mut messages = 0u128;
    let mut vouchers = 0;
    let receipt_event = loop {
        let event = events.next().await.expect("the stream ends with a receipt");
        if event.starts_with("event: message\n") {
            assert_eq!(event, format!("event: message\ndata: token {messages}\n\n"));
            messages += 1;
        } else if event.starts_with("event: payment-need-voucher\n") {
            let record = provider.record(payer.channel);
            let expected = NeedVoucher {
                channel_id: payer.channel,
                required_cumulative: (messages + 1) * TOKEN_PRICE,
                accepted_cumulative: record.accepted_cumulative,
                deposit: DEPOSIT,
            };
            // Byte-exact: mppx's event name and data keys, in mppx's order.
            assert_eq!(
                event,
                format!(
                    "event: payment-need-voucher\ndata: {{\"channelId\":\"{}\",\"requiredCumulative\":\"{}\",\"acceptedCumulative\":\"{}\",\"deposit\":\"{DEPOSIT}\"}}\n\n",
                    payer.channel,
                    (messages + 1) * TOKEN_PRICE,
                    record.accepted_cumulative
                )
            );
            assert_eq!(event, expected.to_sse_event());
            assert_eq!(
                record.spent,
                messages * TOKEN_PRICE,
                "charged per event sent"
            );
            // Answer as mppx does: a voucher POSTed with an empty body to the same URL, on
            // another connection, while the stream stays open.
            let data = data_of(&event);
            let required: u128 = data["requiredCumulative"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            // mppx POSTs to the stream's URL, query included, reusing the stream's challenge;
            // here 2 extra ticks per voucher, capped at the stream's total.
            let cumulative = (required + 2 * TOKEN_PRICE).min(TOKENS * TOKEN_PRICE);
            let post = reqwest::Client::new()
                .post(provider.url(&format!("/stream?tokens={TOKENS}")))
                .header(
                    "authorization",
                    payer.voucher_credential(challenge.clone(), cumulative),
                )
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            assert_eq!(post.status(), 204);
            vouchers += 1;
        } else if event.starts_with("event: payment-receipt\n") {
            break event;
        } else {
            panic!("unexpected event {event:?}");
        }
    };
    assert_eq!(messages, TOKENS);
    assert!(vouchers >= 3, "{vouchers} vouchers");
    assert!(
        events.next().await.is_none(),
        "the receipt is the last event"
    );
    let receipt = SessionReceipt::from_json(&data_of(&receipt_event)).unwrap();
    assert_eq!(receipt.spent(), TOKENS * TOKEN_PRICE);
    assert_eq!(receipt.accepted_cumulative(), TOKENS * TOKEN_PRICE);
    assert_eq!(receipt.units(), Some(10));
    assert_eq!(receipt.challenge_id(), challenge.id());
    // Byte-exact against mppx's receipt event shape.
    assert_eq!(receipt_event, receipt.to_sse_event());
    assert_eq!(
        receipt_event,
        format!(
            "event: payment-receipt\ndata: {{\"method\":\"tempo\",\"intent\":\"session\",\"status\":\"success\",\"timestamp\":\"{}\",\"reference\":\"{ch}\",\"challengeId\":\"{}\",\"channelId\":\"{ch}\",\"acceptedCumulative\":\"100\",\"spent\":\"100\",\"units\":10}}\n\n",
            receipt.timestamp().to_iso_string(),
            challenge.id(),
            ch = payer.channel,
        )
    );
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (100, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_without_a_voucher_ends_with_an_error_event_after_the_bounded_wait() {
    let provider = Provider::start(ProviderOptions {
        stream_wait: Duration::from_millis(300),
        ..ProviderOptions::default()
    })
    .await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    let challenge = provider.challenge("/stream").await;
    let open = payer.open_credential(challenge, 2 * TOKEN_PRICE);
    let response = provider
        .client
        .get(provider.url("/stream?tokens=5"))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = Events {
        response,
        buffer: String::new(),
    };
    let mut kinds = Vec::new();
    while let Some(event) = events.next().await {
        kinds.push(event.lines().next().unwrap().to_owned());
        if event.starts_with("event: payment-error\n") {
            let problem = data_of(&event);
            assert_eq!(
                problem["type"],
                "https://paymentauth.org/problems/session/insufficient-balance"
            );
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("within 300 ms")
            );
        }
    }
    assert_eq!(
        kinds,
        [
            "event: message",
            "event: message",
            "event: payment-need-voucher",
            "event: payment-error"
        ]
    );
    let record = provider.record(payer.channel);
    assert_eq!((record.spent, record.units), (2 * TOKEN_PRICE, 2));
}
