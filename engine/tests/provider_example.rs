//! The example provider (`examples/provider.rs`) as a process: flags, the `LISTENING` line,
//! free, paid and admin routes, the channel suggestion for a single payer, and a graceful stop
//! on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_engine::protocol::SessionReceipt;
use support::anvil::{CHAIN_ID, TestChain};
use support::http::{approved_payer, challenge_of};

const PRICE: u128 = 1_000;
const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

struct Running {
    child: Option<Child>,
    base: String,
    admin: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start(chain: &TestChain, store: &std::path::Path, payee: alloy::primitives::Address) -> Running {
    let mut child = Command::new(support::provider::provider_binary())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--rpc-url", chain.rpc_url().as_str()])
        .args(["--chain-id", &CHAIN_ID.to_string()])
        .args(["--escrow", &chain.escrow.to_string()])
        .args(["--token", &chain.token.to_string()])
        .args(["--recipient", &payee.to_string()])
        .arg("--store")
        .arg(store)
        .args(["--price", &PRICE.to_string(), "--realm", "provider.test"])
        .arg("--suggest-latest-channel")
        .env("SLUICE_SECRET", "example-provider-test-secret-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("provider starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = || lines.next().expect("a line").expect("utf-8");
    let base = line()
        .strip_prefix("LISTENING ")
        .expect("LISTENING line first")
        .to_owned();
    let admin = line()
        .strip_prefix("ADMIN ")
        .expect("ADMIN line")
        .to_owned();
    Running {
        child: Some(child),
        base,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_provider_serves_paid_free_and_admin_routes_and_stops_on_sigterm() {
    let chain = TestChain::start().await;
    let payee = chain.account(9).address();
    let dir = tempfile::tempdir().unwrap();
    let mut provider = start(&chain, &dir.path().join("store"), payee);
    let client = reqwest::Client::new();

    let free = client
        .get(format!("{}/free", provider.base))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), 200);

    let unpaid = client
        .get(format!("{}/paid", provider.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unpaid.status(), 402);
    let challenge = challenge_of(&unpaid);
    assert_eq!(challenge.realm(), "provider.test");
    assert_eq!(
        challenge
            .session_request()
            .unwrap()
            .method_details
            .channel_id,
        None,
        "no channel to suggest yet"
    );

    let mut payer = approved_payer(&chain, 1, 50 * PRICE, payee).await;
    let open = payer.open_credential(challenge, PRICE);
    let paid = client
        .get(format!("{}/paid", provider.base))
        .header("authorization", open)
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let receipt =
        SessionReceipt::from_header_value(paid.headers()["payment-receipt"].to_str().unwrap())
            .unwrap();
    assert_eq!(receipt.spent(), PRICE);

    // A single-payer provider suggests the open channel even to a request without a credential
    // (what the mppx client needs to resume it).
    let unpaid = client
        .get(format!("{}/paid", provider.base))
        .send()
        .await
        .unwrap();
    let suggested = challenge_of(&unpaid)
        .session_request()
        .unwrap()
        .method_details
        .channel_id;
    assert_eq!(suggested, Some(payer.channel));

    // Admin introspection needs the token.
    let url = format!("{}/channels/{}", provider.admin, payer.channel);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let view: Value = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["acceptedCumulative"], PRICE.to_string());
    assert_eq!(view["spent"], PRICE.to_string());
    assert_eq!(view["units"], 1);
    assert_eq!(view["deposit"], (50 * PRICE).to_string());
    assert_eq!(view["settled"], "0");
    assert_eq!(view["status"], "open");
    let unknown = format!("{}/channels/0x{}", provider.admin, "ab".repeat(32));
    assert_eq!(
        client
            .get(&unknown)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The settlement feed is on the admin listener only, behind the same token, and already
    // names the channel's latest voucher.
    let feed = format!("{}/feed", provider.admin);
    assert_eq!(client.get(&feed).send().await.unwrap().status(), 401);
    let page: Value = client
        .get(&feed)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().expect("feed entries");
    assert_eq!(entries.len(), 1, "{page}");
    assert_eq!(entries[0]["channelId"], payer.channel.to_string());
    assert_eq!(entries[0]["cumulativeAmount"], PRICE.to_string());
    let public_feed = client
        .get(format!("{}/feed", provider.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        public_feed.status(),
        404,
        "the feed must not be on the public listener"
    );

    // Discovery lists the two paid routes with their prices, and the free one.
    let doc: Value = client
        .get(format!("{}/openapi.json", provider.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/paid", "/stream"] {
        let op = &doc["paths"][path]["get"];
        assert_eq!(
            op["x-payment-info"]["amount"],
            PRICE.to_string(),
            "{path}: {op}"
        );
        assert_eq!(op["x-payment-info"]["intent"], "session", "{path}");
        assert!(
            op["responses"]["402"].is_object(),
            "{path} declares its 402"
        );
    }
    assert!(doc["paths"]["/free"]["get"]["x-payment-info"].is_null());

    // SIGTERM: a graceful stop, exit status 0.
    let mut child = provider.child.take().expect("running");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the provider stops")
    .unwrap()
    .expect("exit status");
    assert!(status.success(), "{status}");
}
