//! The settlement feed endpoint over real HTTP on loopback, backed by a real sled store on disk:
//! paging, cursor semantics, restart durability, authentication, bad parameters, long polls.

use std::net::SocketAddr;
use std::sync::Arc;

use alloy_primitives::{Address, B256};
use reqwest::StatusCode;
use sluice_engine::feed::{FeedCursor, FeedPage};
use sluice_engine::http::feed::{FeedAuth, FeedPageDto, feed_router};
use sluice_engine::store::{
    Change, ChannelId, ChannelRecord, ChannelStatus, ChannelStore, Durability, SIGNATURE_LEN,
    SledStore, StoreError,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "feed-token-0123456789-abcdefghijklmnop";

fn channel(n: u8) -> ChannelId {
    B256::repeat_byte(n)
}

fn signature_for(amount: u128) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..16].copy_from_slice(&amount.to_be_bytes());
    signature[64] = 27;
    signature
}

/// Opens a channel with `deposit` and accepts a voucher for `amount`, through the store.
fn open_with_voucher(store: &SledStore, id: ChannelId, deposit: u128, amount: u128) {
    store
        .update(&id, |_| -> Result<_, StoreError> {
            let mut record = ChannelRecord::new(id);
            record.status = ChannelStatus::Open;
            record.payer = Address::repeat_byte(0xaa);
            record.payee = Address::repeat_byte(0xbb);
            record.token = Address::repeat_byte(0xcc);
            record.authorized_signer = Address::repeat_byte(0xdd);
            record.deposit = deposit;
            record.settled = 1;
            record.accepted_cumulative = amount;
            record.accepted_signature = signature_for(amount);
            Ok(Change::write(record, ()))
        })
        .expect("open");
}

fn raise_voucher(store: &SledStore, id: ChannelId, amount: u128) {
    store
        .update(&id, |record| -> Result<_, StoreError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = amount;
            next.accepted_signature = signature_for(amount);
            Ok(Change::write(next, ()))
        })
        .expect("raise");
}

/// A feed server on an ephemeral loopback port.
struct Server {
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(store: Arc<SledStore>) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = feed_router(store, FeedAuth::new(TOKEN).expect("token"));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        Self { base, stop, task }
    }

    /// Stops accepting, lets open connections finish, and waits until the router (and the store
    /// it holds) is dropped.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.send().await.expect("request")
}

async fn read_page(client: &reqwest::Client, base: &str, query: &str) -> FeedPageDto {
    let response = get(client, &format!("{base}/feed?{query}"), Some(TOKEN)).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{query}"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.text().await.expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Reads the whole feed after `after`, `limit` entries per request, checking page invariants.
async fn read_all(
    client: &reqwest::Client,
    base: &str,
    mut after: FeedCursor,
    limit: usize,
) -> (FeedPage, usize) {
    let mut all = FeedPage {
        entries: Vec::new(),
        next: after,
    };
    let mut requests = 0;
    loop {
        let page =
            FeedPage::from(read_page(client, base, &format!("after={after}&limit={limit}")).await);
        requests += 1;
        assert!(page.entries.len() <= limit, "limit respected");
        assert!(page.next >= after, "next never goes back");
        if page.entries.is_empty() {
            assert_eq!(page.next, after, "an empty page keeps the cursor");
            all.next = page.next;
            return (all, requests);
        }
        let cursors: Vec<_> = page.entries.iter().map(|e| e.cursor).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "ascending");
        assert!(cursors[0] > after, "strictly after the cursor");
        assert_eq!(page.next, *cursors.last().expect("non-empty"));
        after = page.next;
        all.entries.extend(page.entries);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_through_the_feed_and_continues_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), Durability::default()).expect("open"));
    for n in 1..=25u8 {
        open_with_voucher(&store, channel(n), 1_000_000, u128::from(n) * 100);
    }
    let server = Server::start(store.clone()).await;
    let client = reqwest::Client::new();

    // 25 channels, 10 per page: 3 pages of entries and one empty page.
    let (page, requests) = read_all(&client, &server.base, FeedCursor::ZERO, 10).await;
    assert_eq!(requests, 4);
    assert_eq!(page.entries.len(), 25);
    for (entry, n) in page.entries.iter().zip(1..=25u8) {
        assert_eq!(entry.channel_id, channel(n));
        assert_eq!(entry.cumulative_amount, u128::from(n) * 100);
        assert_eq!(entry.signature, signature_for(u128::from(n) * 100));
        assert_eq!(entry.status, ChannelStatus::Open);
        assert_eq!(entry.payer, Address::repeat_byte(0xaa));
        assert_eq!(entry.payee, Address::repeat_byte(0xbb));
        assert_eq!(entry.token, Address::repeat_byte(0xcc));
        assert_eq!(entry.authorized_signer, Address::repeat_byte(0xdd));
        assert_eq!(entry.deposit, 1_000_000);
        assert_eq!(entry.settled, 1);
    }
    // The HTTP view equals the in-process view.
    assert_eq!(
        page.entries,
        store
            .read_feed(FeedCursor::ZERO, 100)
            .expect("read")
            .entries
    );
    let caught_up = page.next;

    // The raw JSON: amounts and cursors as decimal strings, 0x hex for bytes.
    let raw: serde_json::Value = serde_json::from_str(
        &get(
            &client,
            &format!("{}/feed?limit=1", server.base),
            Some(TOKEN),
        )
        .await
        .text()
        .await
        .expect("body"),
    )
    .expect("json");
    let first = &raw["entries"][0];
    assert_eq!(first["cumulativeAmount"], "100");
    assert_eq!(first["deposit"], "1000000");
    assert_eq!(first["status"], "open");
    assert_eq!(first["channelId"], format!("0x{}", "01".repeat(32)));
    assert!(first["cursor"].is_string() && raw["next"] == first["cursor"]);
    assert_eq!(first["signature"].as_str().expect("hex").len(), 2 + 130);

    // A second voucher on channel 3 moves it past every other entry: one entry per channel,
    // the newest voucher, at a higher cursor.
    raise_voucher(&store, channel(3), 777);
    let (newer, _) = read_all(&client, &server.base, caught_up, 10).await;
    assert_eq!(newer.entries.len(), 1);
    assert_eq!(newer.entries[0].channel_id, channel(3));
    assert_eq!(newer.entries[0].cumulative_amount, 777);
    assert!(newer.entries[0].cursor > caught_up);
    let (whole, _) = read_all(&client, &server.base, FeedCursor::ZERO, 1000).await;
    assert_eq!(whole.entries.len(), 25, "still one entry per channel");
    assert_eq!(
        whole
            .entries
            .iter()
            .filter(|e| e.channel_id == channel(3))
            .map(|e| e.cumulative_amount)
            .collect::<Vec<_>>(),
        vec![777]
    );
    let saved = whole.next;

    // Restart: the server lets go of the store, the store is closed and reopened from disk.
    drop(client);
    server.stop().await;
    drop(Arc::into_inner(store).expect("the server released the store"));
    let store = Arc::new(SledStore::open(dir.path(), Durability::default()).expect("reopen"));
    let server = Server::start(store.clone()).await;
    let client = reqwest::Client::new();

    let (after_restart, _) = read_all(&client, &server.base, saved, 10).await;
    assert!(
        after_restart.entries.is_empty(),
        "nothing new since the saved cursor"
    );
    let (whole_again, _) = read_all(&client, &server.base, FeedCursor::ZERO, 7).await;
    assert_eq!(
        whole_again.entries, whole.entries,
        "the feed survived the restart"
    );

    raise_voucher(&store, channel(9), 9_999);
    let (resumed, _) = read_all(&client, &server.base, saved, 10).await;
    assert_eq!(resumed.entries.len(), 1);
    assert_eq!(resumed.entries[0].channel_id, channel(9));
    assert_eq!(resumed.entries[0].cumulative_amount, 9_999);
    assert!(
        resumed.entries[0].cursor > saved,
        "cursors continue above the old ones"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_requests_without_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), Durability::default()).expect("open"));
    open_with_voucher(&store, channel(1), 1_000, 10);
    let server = Server::start(store).await;
    let client = reqwest::Client::new();
    let url = format!("{}/feed", server.base);

    let wrong = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    let cases: [(&str, Option<String>, &str); 6] = [
        ("missing", None, r#"Bearer realm="sluice-feed""#),
        (
            "wrong token",
            Some(format!("Bearer {wrong}")),
            r#"Bearer realm="sluice-feed", error="invalid_token""#,
        ),
        (
            "prefix of the token",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            r#"Bearer realm="sluice-feed", error="invalid_token""#,
        ),
        (
            "wrong scheme",
            Some(format!("Basic {TOKEN}")),
            r#"Bearer realm="sluice-feed""#,
        ),
        (
            "bare token",
            Some(TOKEN.to_owned()),
            r#"Bearer realm="sluice-feed""#,
        ),
        (
            "bearer without a token",
            Some("Bearer".to_owned()),
            r#"Bearer realm="sluice-feed""#,
        ),
    ];
    for (case, authorization, challenge) in cases {
        // Bad parameters too: authentication is checked first and says nothing else.
        for url in [url.clone(), format!("{url}?limit=0&bogus=1")] {
            let mut request = client.get(&url);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
            assert_eq!(response.headers()["www-authenticate"], challenge, "{case}");
            assert!(
                response.text().await.expect("body").is_empty(),
                "{case}: no body"
            );
        }
    }

    // Case-insensitive scheme, and the right token works.
    let response = client
        .get(&url)
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_bad_parameters_with_a_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), Durability::default()).expect("open"));
    let server = Server::start(store).await;
    let client = reqwest::Client::new();

    for query in [
        "after=abc",
        "after=-1",
        "after=18446744073709551616",
        "limit=0",
        "limit=1001",
        "wait_ms=30001",
        "cursor=3",
        "after=1&after=2",
    ] {
        let response = get(
            &client,
            &format!("{}/feed?{query}", server.base),
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: serde_json::Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("json");
        assert_eq!(problem["status"], 400, "{query}");
        assert!(
            problem["type"]
                .as_str()
                .expect("type")
                .ends_with("bad-request"),
            "{query}: {problem}"
        );
        assert!(!problem["detail"].as_str().expect("detail").is_empty());
    }

    // The limit bound is inclusive, and other methods are not served.
    let page = read_page(&client, &server.base, "limit=1000").await;
    assert!(page.entries.is_empty());
    let response = client
        .post(format!("{}/feed", server.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_a_new_voucher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path(), Durability::default()).expect("open"));
    open_with_voucher(&store, channel(1), 1_000, 10);
    let server = Server::start(store.clone()).await;
    let client = reqwest::Client::new();
    let caught_up = read_page(&client, &server.base, "").await.next;
    assert!(caught_up > FeedCursor::ZERO);

    // Nothing arrives: a short wait ends with an empty page at the same cursor.
    let idle = read_page(
        &client,
        &server.base,
        &format!("after={caught_up}&wait_ms=50"),
    )
    .await;
    assert!(idle.entries.is_empty());
    assert_eq!(idle.next, caught_up);

    // A voucher arrives while the request waits (up to 30 s): the page returns with it. Had the
    // wait not been woken, it would have ended with the empty page read before waiting.
    let poll = {
        let client = client.clone();
        let url = format!("{}/feed?after={caught_up}&wait_ms=30000", server.base);
        tokio::spawn(async move { get(&client, &url, Some(TOKEN)).await.text().await })
    };
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || raise_voucher(&store, channel(1), 20))
    };
    writer.await.expect("writer");
    let body = poll.await.expect("poll task").expect("body");
    let page: FeedPageDto = serde_json::from_str(&body).expect("json");
    assert_eq!(page.entries.len(), 1, "{body}");
    assert_eq!(page.entries[0].channel_id, channel(1));
    assert_eq!(page.entries[0].cumulative_amount, 20);
    assert!(page.next > caught_up);
    server.stop().await;
}
