//! `Engine::refresh_channel` and the admin route `POST /channels/{id}/refresh` against a real
//! anvil chain: once the escrow finalizes a channel (or the payer asks to close it), a refresh
//! makes the engine refuse vouchers at once, without waiting for the chain-facts TTL; the
//! route is behind the bearer token and refuses a wrong one without touching anything.

mod support;

use std::sync::Arc;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::providers::ProviderBuilder;
use sluice_contracts::SluiceEscrow;
use sluice_engine::EngineError;
use sluice_engine::chain::ChainClient;
use sluice_engine::feed::FeedCursor;
use sluice_engine::http::admin_router;
use sluice_engine::http::feed::FeedAuth;
use sluice_engine::protocol::ProblemKind;
use sluice_engine::session::SessionError;
use sluice_engine::store::{ChannelStatus, ChannelStore, Durability, SledStore};
use support::session::{Harness, now};

const TOKEN: &str = "admin-refresh-test-token-0123456789abcdef";

async fn serve_admin(h: &Harness<SledStore>) -> String {
    let router = admin_router(Arc::clone(&h.engine), FeedAuth::new(TOKEN).expect("token"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn sled() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path().join("channels"), Durability::default()).expect("sled");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_an_on_chain_close_stops_vouchers_at_once() {
    let (_dir, store) = sled();
    let h = Harness::start(store).await;
    let base = serve_admin(&h).await;
    let http = reqwest::Client::new();
    let mut client = h.client(2, 10_000).await;
    let challenge = h.challenge();
    let open = client.open(&challenge, 1_000, B256::repeat_byte(7), Address::ZERO, 100);
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open");
    let channel = client.channel;
    let refresh = format!("{base}/channels/{channel}/refresh");

    // The payee closes on chain with the accepted voucher.
    let payee = ProviderBuilder::new()
        .wallet(EthereumWallet::from(h.chain.account(1)))
        .connect_http(h.chain.rpc_url());
    let record = h.record(&channel).expect("record");
    let receipt = SluiceEscrow::new(h.chain.escrow, &payee)
        .close(channel, 100, record.accepted_signature.to_vec().into())
        .send()
        .await
        .expect("close sent")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(receipt.status());
    assert!(
        h.engine
            .chain()
            .channel(channel)
            .await
            .expect("read")
            .finalized
    );

    // A wrong token, no token and another scheme are refused (401, empty body) and change
    // nothing: the cached facts still say open.
    let before = h.record(&channel).expect("record");
    for auth in [
        Some("Bearer admin-refresh-test-token-0123456789abcdeX"),
        None,
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let mut request = http.post(&refresh);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let answer = request.send().await.expect("answer");
        assert_eq!(answer.status(), 401, "{auth:?}");
        assert!(answer.headers().contains_key("www-authenticate"));
        assert!(answer.bytes().await.expect("body").is_empty());
    }
    assert_eq!(h.record(&channel).expect("record"), before);
    assert_eq!(before.status, ChannelStatus::Open);

    // Within the TTL the engine would still trust its cache; the refresh reads the escrow.
    let answer = http
        .post(&refresh)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["status"], "closed");
    assert_eq!(body["finalized"], true);
    assert_eq!(body["acceptedCumulative"], "100");
    let record = h.record(&channel).expect("record");
    assert_eq!(record.status, ChannelStatus::Closed);
    assert!(record.finalized);
    // The change is published on the feed (the daemon sees `closed`).
    let feed = h
        .engine
        .store()
        .read_feed(FeedCursor::ZERO, 10)
        .expect("feed");
    let entry = feed
        .entries
        .iter()
        .find(|e| e.channel_id == channel)
        .expect("entry");
    assert_eq!(entry.status, ChannelStatus::Closed);

    // A new voucher is refused with a typed 410 error, at once.
    let refused = h
        .engine
        .authorize(&h.route, &client.voucher(&challenge, 200), now())
        .await
        .expect_err("finalized");
    assert!(matches!(
        refused,
        EngineError::Session(SessionError::ChannelFinalized { .. })
    ));
    assert_eq!(refused.problem_kind(), ProblemKind::ChannelFinalized);
    assert_eq!(
        h.record(&channel).expect("record"),
        record,
        "refusal writes nothing"
    );

    // A second refresh changes nothing; GET shows the same record.
    let again = h
        .engine
        .refresh_channel(&channel, now())
        .await
        .expect("refresh")
        .expect("known");
    assert_eq!(
        (
            again.status,
            again.finalized,
            again.accepted_cumulative,
            again.feed_cursor
        ),
        (
            record.status,
            record.finalized,
            record.accepted_cumulative,
            record.feed_cursor
        ),
        "only the read time moves"
    );
    let shown: serde_json::Value = http
        .get(format!("{base}/channels/{channel}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "closed");

    // Unknown channels are 404 (nothing created), malformed ids 400.
    let unknown = B256::repeat_byte(0x42);
    let answer = http
        .post(format!("{base}/channels/{unknown}/refresh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 404);
    assert_eq!(h.record(&unknown), None);
    let answer = http
        .post(format!("{base}/channels/0x1234/refresh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_after_a_close_request_refuses_vouchers() {
    let (_dir, store) = sled();
    let h = Harness::start(store).await;
    let mut client = h.client(3, 10_000).await;
    let challenge = h.challenge();
    let open = client.open(&challenge, 1_000, B256::repeat_byte(8), Address::ZERO, 100);
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open");
    let channel = client.channel;
    let request = client.payer.request_close(channel);
    assert!(
        h.engine
            .chain()
            .submit_raw(request)
            .await
            .expect("requestClose")
            .success
    );
    let record = h
        .engine
        .refresh_channel(&channel, now())
        .await
        .expect("refresh")
        .expect("known");
    assert!(record.close_requested_at > 0);
    let refused = h
        .engine
        .authorize(&h.route, &client.voucher(&challenge, 200), now())
        .await
        .expect_err("close requested");
    assert!(matches!(
        refused,
        EngineError::Session(SessionError::ChannelClosing { .. })
    ));
    assert_eq!(h.record(&channel).expect("record").accepted_cumulative, 100);
}
