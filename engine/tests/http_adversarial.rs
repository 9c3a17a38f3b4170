//! Hostile HTTP input against the payment layer (real HTTP on loopback, real anvil, real sled):
//! oversized and malformed headers, wrong schemes, forged and expired challenges, credentials
//! for another route or price, a voucher POST flood on one channel, and SSE consumers that stop
//! reading. Each gets a clear problem response or a bounded cost, and changes no money state.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::header::HeaderValue;
use serde_json::Value;
use sluice_engine::RoutePrice;
use sluice_engine::store::{ChannelRecord, ChannelStore};
use support::http::{
    PAID_PRICE, Provider, ProviderOptions, TOKEN_PRICE, TestPayer, challenge_of, now, paid_price,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEPOSIT: u128 = 100_000;

fn money(record: &ChannelRecord) -> (u128, [u8; 65], u128, u64) {
    (
        record.accepted_cumulative,
        record.accepted_signature,
        record.spent,
        record.units,
    )
}

/// A provider with one payer whose channel is open with `accepted` (one request charged).
async fn opened(options: ProviderOptions, accepted: u128) -> (Provider, TestPayer) {
    let provider = Provider::start(options).await;
    let mut payer = provider.payer(1, DEPOSIT).await;
    let challenge = provider.challenge("/paid").await;
    let open = payer.open_credential(challenge, accepted);
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    (provider, payer)
}

/// Sends `GET path` with `authorization` and returns the status and the problem body.
async fn refused_with(provider: &Provider, path: &str, authorization: HeaderValue) -> (u16, Value) {
    let response = provider
        .client
        .get(provider.url(path))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers().get("payment-receipt").is_none(),
        "a refusal carries no receipt"
    );
    let fresh = challenge_of(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["challengeId"],
        fresh.id(),
        "the fresh challenge is named"
    );
    (status, body)
}

fn kind(body: &Value) -> &str {
    body["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://paymentauth.org/problems/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_foreign_scheme_credentials_are_refused() {
    let (provider, payer) = opened(ProviderOptions::default(), 4 * PAID_PRICE).await;
    let before = provider.record(payer.channel);
    let cases: Vec<(&str, HeaderValue, u16, &str)> = vec![
        (
            "not base64",
            HeaderValue::from_static("Payment !!!not-base64!!!"),
            402,
            "malformed-credential",
        ),
        (
            "base64 of non-JSON",
            HeaderValue::from_static("Payment aGVsbG8gd29ybGQ"),
            402,
            "malformed-credential",
        ),
        (
            "JSON without a challenge",
            HeaderValue::from_static("Payment eyJwYXlsb2FkIjp7fX0"),
            402,
            "malformed-credential",
        ),
        (
            "non-ASCII bytes",
            HeaderValue::from_bytes(b"Payment \xff\xfe").unwrap(),
            402,
            "malformed-credential",
        ),
        (
            "70 KB credential",
            HeaderValue::from_str(&format!("Payment {}", "A".repeat(70 * 1024))).unwrap(),
            402,
            "malformed-credential",
        ),
        (
            "Bearer scheme",
            HeaderValue::from_static("Bearer abc.def.ghi"),
            402,
            "payment-required",
        ),
        (
            "Basic scheme",
            HeaderValue::from_static("Basic dXNlcjpwYXNz"),
            402,
            "payment-required",
        ),
    ];
    for (name, value, status, expected) in cases {
        let (got, body) = refused_with(&provider, "/paid", value).await;
        assert_eq!((got, kind(&body)), (status, expected), "{name}: {body}");
    }
    // A 2 MB header never reaches the layer: the server refuses it and keeps serving.
    let huge = provider
        .client
        .get(provider.url("/paid"))
        .header("authorization", format!("Payment {}", "A".repeat(2 << 20)))
        .send()
        .await;
    if let Ok(response) = huge {
        assert_eq!(response.status(), 431);
    }
    // Oversized or malformed Accept-Payment and Idempotency-Key are 400s.
    let challenge = provider.challenge("/paid").await;
    let voucher = payer.voucher_credential(challenge, 4 * PAID_PRICE);
    for (header, value) in [
        ("accept-payment", "tempo/session;q=0.5, ".repeat(400)),
        ("accept-payment", "tempo/session;q=2".to_owned()),
        ("idempotency-key", "k".repeat(201)),
        ("idempotency-key", "two words".to_owned()),
    ] {
        let response = provider
            .client
            .get(provider.url("/paid"))
            .header("authorization", voucher.clone())
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{header}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(kind(&body), "bad-request", "{header}: {body}");
    }
    assert_eq!(money(&provider.record(payer.channel)), money(&before));
    let free = provider
        .client
        .get(provider.url("/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), 200);
    assert_eq!(
        provider
            .paid_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_route_challenges_are_refused() {
    let (provider, payer) = opened(ProviderOptions::default(), 4 * PAID_PRICE).await;
    let before = provider.record(payer.channel);

    // Forged id: the HMAC does not match.
    let challenge = provider.challenge("/paid").await;
    let header = payer.voucher_credential(challenge.clone(), 4 * PAID_PRICE);
    let forged = {
        let json = sluice_engine::protocol::base64url_decode(header.trim_start_matches("Payment "))
            .unwrap();
        let json = String::from_utf8(json)
            .unwrap()
            .replace(challenge.id(), "forged-challenge-id");
        format!(
            "Payment {}",
            sluice_engine::protocol::base64url_encode(json)
        )
    };
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&forged).unwrap()).await;
    assert_eq!((status, kind(&body)), (402, "invalid-challenge"));
    assert_eq!(
        body["detail"],
        "Challenge \"forged-challenge-id\" is invalid: challenge was not issued by this server."
    );

    // Expired: a content request is refused...
    let past =
        sluice_engine::protocol::Timestamp::from_unix_millis(now().unix_millis() - 10 * 60 * 1000)
            .unwrap();
    let expired = provider
        .engine
        .challenge(&provider.paid_route, past, None)
        .unwrap();
    let header = payer.voucher_credential(expired.clone(), 4 * PAID_PRICE);
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&header).unwrap()).await;
    assert_eq!((status, kind(&body)), (402, "payment-expired"));
    // ...while a management voucher POST on it is taken (mppx reuses challenges there) and
    // charges nothing.
    let post = provider
        .client
        .post(provider.url("/paid"))
        .header(
            "authorization",
            payer.voucher_credential(expired, 5 * PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 204);
    let after_post = provider.record(payer.channel);
    assert_eq!(after_post.accepted_cumulative, 5 * PAID_PRICE);
    assert_eq!(after_post.spent, before.spent);
    let before = after_post;

    // A challenge of another route (the stream) or another price on this route.
    let stream_challenge = provider.challenge("/stream").await;
    let header = payer.voucher_credential(stream_challenge, 5 * PAID_PRICE);
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&header).unwrap()).await;
    assert_eq!((status, kind(&body)), (402, "invalid-challenge"));
    let cheaper = provider
        .engine
        .route(RoutePrice {
            amount: 1,
            ..paid_price()
        })
        .unwrap();
    let cheap = provider.engine.challenge(&cheaper, now(), None).unwrap();
    let header = payer.voucher_credential(cheap, 5 * PAID_PRICE);
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&header).unwrap()).await;
    assert_eq!((status, kind(&body)), (402, "invalid-challenge"));
    assert!(
        body["detail"].as_str().unwrap().contains("amount"),
        "{body}"
    );

    // Vouchers the payer did not sign, or above the deposit.
    let challenge = provider.challenge("/paid").await;
    let mut impostor = provider.payer(2, 0).await;
    impostor.channel = payer.channel;
    let header = impostor.voucher_credential(challenge.clone(), 6 * PAID_PRICE);
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&header).unwrap()).await;
    assert_eq!((status, kind(&body)), (402, "session/invalid-signature"));
    let header = payer.voucher_credential(challenge, DEPOSIT + 1);
    let (status, body) =
        refused_with(&provider, "/paid", HeaderValue::from_str(&header).unwrap()).await;
    assert_eq!(
        (status, kind(&body)),
        (402, "session/amount-exceeds-deposit")
    );

    assert_eq!(money(&provider.record(payer.channel)), money(&before));
    assert_eq!(
        provider
            .paid_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_post_flood_on_one_channel_keeps_the_highest_and_charges_nothing() {
    let (provider, payer) = opened(ProviderOptions::default(), PAID_PRICE).await;
    let provider = Arc::new(provider);
    let payer = Arc::new(payer);
    let challenge = provider.challenge("/paid").await;
    const DISTINCT: u128 = 40;
    const COPIES: usize = 5;
    // 200 management POSTs: 40 increasing amounts, each 5 times, interleaved.
    let posts = (0..COPIES).flat_map(|_| 1..=DISTINCT).map(|step| {
        let provider = Arc::clone(&provider);
        let header = payer.voucher_credential(challenge.clone(), PAID_PRICE + step * 10);
        async move {
            let response = provider
                .client
                .post(provider.url("/paid"))
                .header("authorization", header)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let kind = if status == 204 {
                None
            } else {
                let body: Value = response.json().await.unwrap();
                Some(body["type"].as_str().unwrap().to_owned())
            };
            (status, kind)
        }
    });
    let outcomes = join_all(posts).await;
    let mut accepted = 0;
    for (status, kind) in &outcomes {
        match status {
            204 => accepted += 1,
            // A voucher below one accepted meanwhile: refused, typed.
            402 => assert_eq!(
                kind.as_deref(),
                Some("https://paymentauth.org/problems/verification-failed")
            ),
            other => panic!("unexpected status {other} ({kind:?})"),
        }
    }
    assert!(accepted >= 1);
    let record = provider.record(payer.channel);
    assert_eq!(record.accepted_cumulative, PAID_PRICE + DISTINCT * 10);
    assert_eq!(
        (record.spent, record.units),
        (PAID_PRICE, 1),
        "nothing charged"
    );
    let feed = provider
        .engine
        .store()
        .read_feed(sluice_engine::feed::FeedCursor::ZERO, 1_000)
        .unwrap();
    assert_eq!(feed.entries.len(), 1, "one feed entry per channel");
    assert_eq!(
        feed.entries[0].cumulative_amount,
        PAID_PRICE + DISTINCT * 10
    );
    assert_eq!(
        provider
            .paid_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_consumers_that_stop_reading_cost_a_bounded_amount_and_never_overcharge() {
    let (provider, payer) = opened(
        ProviderOptions {
            stream_wait: Duration::from_millis(200),
            ..ProviderOptions::default()
        },
        PAID_PRICE + 30 * TOKEN_PRICE,
    )
    .await;
    // 16 connections ask for long streams and never read a byte of the response.
    let challenge = provider.challenge("/stream").await;
    let header = payer.voucher_credential(challenge, PAID_PRICE + 30 * TOKEN_PRICE);
    let mut lorises = Vec::new();
    for _ in 0..16 {
        let mut socket = tokio::net::TcpStream::connect(provider.addr).await.unwrap();
        let request = format!(
            "GET /stream?tokens=10000 HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nauthorization: {header}\r\n\r\n",
            provider.addr
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        lorises.push(socket);
    }
    // The server keeps serving others meanwhile.
    for _ in 0..5 {
        let free = provider
            .client
            .get(provider.url("/free"))
            .send()
            .await
            .unwrap();
        assert_eq!(free.status(), 200);
    }
    let mut other = provider.payer(2, DEPOSIT).await;
    let challenge = provider.challenge("/paid").await;
    let response = provider
        .client
        .get(provider.url("/paid"))
        .header(
            "authorization",
            other.open_credential(challenge, PAID_PRICE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Nothing these consumers do can make the channel spend more than its vouchers cover.
    let record = provider.record(payer.channel);
    assert!(record.spent <= record.accepted_cumulative);

    // Now (much later, for a client) collect what each connection was sent: every stream
    // ended by itself (headroom gone, need-voucher, bounded wait, error event), and the
    // channel was charged exactly one unit per message event sent, 30 in all.
    let mut messages = 0;
    for mut socket in lorises {
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut bytes))
            .await
            .expect("the stream ends without a voucher")
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        messages += text.matches("event: message\n").count();
        assert!(
            text.contains("event: payment-error\n"),
            "ends with the error event"
        );
    }
    assert_eq!(messages, 30);
    let record = provider.record(payer.channel);
    assert_eq!(record.accepted_cumulative, PAID_PRICE + 30 * TOKEN_PRICE);
    assert_eq!(record.spent, record.accepted_cumulative);
    assert_eq!(record.units, 1 + 30);
    let free = provider
        .client
        .get(provider.url("/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), 200);
}
