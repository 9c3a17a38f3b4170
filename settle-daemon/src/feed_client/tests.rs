use std::sync::Arc;

use alloy_primitives::Address;
use sluice_engine::feed::FeedCursor;
use sluice_engine::http::feed::{FeedAuth, feed_router};
use sluice_engine::store::{Change, ChannelRecord, ChannelStore, MemoryStore, StoreError};

use super::*;

const TOKEN: &str = "daemon-test-token-0123456789abcdefghij";

fn id(n: u8) -> B256 {
    B256::repeat_byte(n)
}

/// Writes (or replaces) a channel's accepted voucher in the engine's store.
fn accept(store: &MemoryStore, n: u8, amount: u128, status: ChannelStatus) {
    store
        .update(&id(n), |current| -> Result<_, StoreError> {
            let mut record = current
                .copied()
                .unwrap_or_else(|| ChannelRecord::new(id(n)));
            record.status = status;
            record.payer = Address::repeat_byte(0xaa);
            record.payee = Address::repeat_byte(0xbb);
            record.token = Address::repeat_byte(0xcc);
            record.deposit = 1_000_000;
            record.settled = 100;
            record.close_requested_at = if status == ChannelStatus::Closing {
                1_700_000_000
            } else {
                0
            };
            record.accepted_cumulative = amount;
            record.accepted_signature = [n; 65];
            Ok(Change::write(record, ()))
        })
        .expect("store update");
}

/// Serves the engine's real feed router on a loopback port; returns its `/feed` URL.
async fn serve(store: Arc<MemoryStore>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = feed_router(store, FeedAuth::new(TOKEN).unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/feed")
}

fn client(url: &str, token: &str, page_limit: u32) -> FeedClient {
    let config = FeedConfig {
        name: None,
        url: url.to_owned(),
        token: crate::config::SecretSource::default(),
        page_limit,
        wait_ms: 0,
    };
    FeedClient::new(&config, FeedToken::parse(token.to_owned()).unwrap()).unwrap()
}

#[tokio::test]
async fn pulls_pages_from_the_real_feed_and_resumes_from_the_durable_cursor() {
    let store = Arc::new(MemoryStore::new());
    accept(&store, 1, 500, ChannelStatus::Open);
    accept(&store, 2, 700, ChannelStatus::Open);
    accept(&store, 3, 900, ChannelStatus::Closing);
    let url = serve(store.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    let feed = client(&url, TOKEN, 2);

    let first = feed.pull(&mut state).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.channel_id).collect::<Vec<_>>(),
        vec![id(1), id(2)]
    );
    let second = feed.pull(&mut state).await.unwrap();
    assert_eq!(
        second.iter().map(|e| e.channel_id).collect::<Vec<_>>(),
        vec![id(3)]
    );
    assert!(feed.pull(&mut state).await.unwrap().is_empty());
    assert_eq!(
        state.voucher(&id(2)).unwrap(),
        Some(Voucher {
            amount: 700,
            signature: [2; 65]
        })
    );

    // A newer voucher republishes only its channel; a restarted daemon resumes after the cursor.
    accept(&store, 1, 650, ChannelStatus::Open);
    drop(state);
    let mut state = DaemonState::open(dir.path()).unwrap();
    let again = feed.pull(&mut state).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].channel_id, again[0].cumulative_amount),
        (id(1), 650)
    );
    assert_eq!(state.voucher(&id(1)).unwrap().map(|v| v.amount), Some(650));

    let view = view_from_entry(&again[0], DaemonFacts::default());
    assert_eq!(view.status, EngineStatus::Open);
    assert_eq!(view.unsettled(), 550);
    assert_eq!(view.close_requested_at, None);
    let closing = view_from_entry(
        &second[0],
        DaemonFacts {
            salt: Some(id(9)),
            ..DaemonFacts::default()
        },
    );
    assert_eq!(closing.status, EngineStatus::Closing);
    assert_eq!(closing.close_requested_at, Some(1_700_000_000));
    assert_eq!(closing.salt, Some(id(9)));
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_changes_nothing() {
    let store = Arc::new(MemoryStore::new());
    accept(&store, 1, 500, ChannelStatus::Open);
    let url = serve(store).await;
    let dir = tempfile::tempdir().unwrap();
    let mut state = DaemonState::open(dir.path()).unwrap();
    let err = client(&url, &"x".repeat(40), 10)
        .pull(&mut state)
        .await
        .unwrap_err();
    assert!(matches!(err, FeedClientError::Unauthorized), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(state.feed_cursor().unwrap(), 0);
    assert_eq!(state.voucher(&id(1)).unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_engine_is_a_retryable_transport_error() {
    // Bind then drop a listener: the port is (almost surely) closed afterwards.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = client(&format!("http://{addr}/feed"), TOKEN, 10)
        .fetch(0)
        .await
        .unwrap_err();
    assert!(matches!(err, FeedClientError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn bad_requests_surface_the_status_and_are_not_retryable() {
    let url = serve(Arc::new(MemoryStore::new())).await;
    // limit 0 is refused by the engine with a bad-request problem.
    let err = client(&url, TOKEN, 0).fetch(0).await.unwrap_err();
    assert!(
        matches!(err, FeedClientError::Status { status: 400, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
}

fn entry(cursor: u64, amount: u128, signed: bool) -> FeedEntryDto {
    FeedEntryDto {
        cursor: FeedCursor::new(cursor),
        channel_id: id(1),
        cumulative_amount: amount,
        signature: signed.then_some([1; 65]),
        status: ChannelStatus::Open,
        payer: Address::ZERO,
        payee: Address::ZERO,
        token: Address::ZERO,
        authorized_signer: Address::ZERO,
        deposit: 10,
        settled: 0,
        close_requested_at: 0,
    }
}

#[test]
fn pages_breaking_the_cursor_contract_are_refused() {
    let page = |entries, next| FeedPageDto {
        entries,
        next: FeedCursor::new(next),
    };
    assert!(check_page(5, &page(vec![entry(6, 1, true), entry(8, 1, true)], 8)).is_ok());
    assert!(check_page(5, &page(vec![], 5)).is_ok());
    let bad = [
        page(vec![], 4),                                     // next goes back
        page(vec![entry(5, 1, true)], 6),                    // entry not after `after`
        page(vec![entry(7, 1, true), entry(6, 1, true)], 7), // not ascending
        page(vec![entry(9, 1, true)], 8),                    // beyond next
        page(vec![entry(6, 3, false)], 6),                   // amount without signature
    ];
    for p in &bad {
        assert!(matches!(
            check_page(5, p),
            Err(FeedClientError::CursorContract { after: 5, .. })
        ));
    }
}
