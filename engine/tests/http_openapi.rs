//! `GET /openapi.json` over real HTTP, generated from routes of a real engine (anvil chain,
//! deployed escrow), checked against the challenges the engine issues for the same routes and
//! validated by mppx 0.11.0's own discovery validator.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use alloy_primitives::Address;
use axum::http::Method;
use serde_json::{Map, Value, json};
use sluice_engine::chain::RpcChain;
use sluice_engine::http::feed::{FeedAuth, FeedPageDto, feed_router};
use sluice_engine::http::openapi::{OpenApiDoc, Operation, ServiceInfo, openapi_router};
use sluice_engine::protocol::{ChallengeSecret, Timestamp};
use sluice_engine::store::MemoryStore;
use sluice_engine::{Engine, EngineConfig, Route, RoutePrice};
use support::anvil::{CHAIN_ID, TestChain};

const FEED_TOKEN: &str = "an-admin-token-of-more-than-32-chars";

/// What mppx's discovery generator writes as the offer of a route whose 402 challenge is
/// `challenge` (its `Metadata.paymentOffer`): amount, currency and description from the request,
/// intent and method from the challenge, then every other request field except `methodDetails`.
fn mppx_offer(engine: &Engine<MemoryStore, RpcChain>, route: &Route) -> Value {
    let now = Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").expect("time");
    let challenge = engine.challenge(route, now, None).expect("challenge");
    let request = challenge.request();
    let mut offer = Map::new();
    offer.insert("amount".into(), request["amount"].clone());
    offer.insert("currency".into(), request["currency"].clone());
    if let Some(description) = request.get("description") {
        offer.insert("description".into(), description.clone());
    }
    offer.insert("intent".into(), challenge.intent().into());
    offer.insert("method".into(), challenge.method().into());
    for (key, value) in request {
        if !["amount", "currency", "description", "methodDetails"].contains(&key.as_str()) {
            offer.insert(key.clone(), value.clone());
        }
    }
    offer.into()
}

/// Runs mppx's `validate` (from `mppx/discovery`) on `doc`; returns its findings.
fn mppx_validate(doc: &Value) -> Vec<Value> {
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/node_modules/mppx/dist/discovery/index.js");
    assert!(
        module.is_file(),
        "{} is missing: run `make tools`",
        module.display()
    );
    let script = format!(
        "import {{ validate }} from {};\n\
         let input = '';\n\
         for await (const chunk of process.stdin) input += chunk;\n\
         process.stdout.write(JSON.stringify(validate(JSON.parse(input))));",
        serde_json::to_string(&module.to_string_lossy()).expect("path")
    );
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(doc.to_string().as_bytes())
        .expect("write document");
    let output = child.wait_with_output().expect("node finishes");
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("findings are JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_document_lists_the_configured_routes_and_passes_mppx_validation() {
    let chain = TestChain::start().await;
    let rpc = RpcChain::connect(chain.config()).await.expect("rpc");
    let recipient = Address::repeat_byte(0x42);
    let config = EngineConfig::new(
        "api.example.com",
        ChallengeSecret::new("a discovery test secret of 32+ bytes").expect("secret"),
        CHAIN_ID,
        chain.escrow,
        recipient,
        chain.token,
    );
    let engine = Arc::new(Engine::new(config, MemoryStore::new(), rpc).expect("engine"));

    let chat = engine
        .route(RoutePrice {
            description: Some("Chat completion".into()),
            suggested_deposit: Some(10_000_000),
            min_voucher_delta: Some(100),
            route_id: Some("chat".into()),
            ..RoutePrice::new(25, "llm_token")
        })
        .expect("chat route");
    let search = engine
        .route(RoutePrice::new(1_000, "request"))
        .expect("search route");
    let bulk = engine
        .route(RoutePrice {
            description: Some("Bulk search".into()),
            ..RoutePrice::new(800, "request")
        })
        .expect("bulk route");

    let doc = OpenApiDoc::new("Example paid API", "2.1.0")
        .service_info(ServiceInfo {
            categories: vec!["ai".into(), "search".into()],
            api_reference: Some("https://api.example.com/docs".into()),
            homepage: Some("https://example.com".into()),
            llms: Some("/llms.txt".into()),
        })
        .expect("service info")
        .operation(
            Method::POST,
            "/v1/chat",
            Operation::paid(&chat)
                .summary("Chat completion, billed per token")
                .json_request_body(json!({
                    "type": "object",
                    "required": ["prompt"],
                    "properties": { "prompt": { "type": "string" } },
                })),
        )
        .expect("chat")
        .operation(
            Method::GET,
            "/v1/search",
            Operation::paid(&search).offer(&bulk).summary("Search"),
        )
        .expect("search")
        .free(Method::GET, "/health", "Liveness")
        .expect("health");

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    // The engine is also a feed source (served here on the same listener only for the test).
    let router = openapi_router(&doc).merge(feed_router(
        engine.clone(),
        FeedAuth::new(FEED_TOKEN).expect("token"),
    ));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "max-age=300");
    let served: Value = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(served, doc.to_json());

    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(
        served["info"],
        json!({ "title": "Example paid API", "version": "2.1.0" })
    );
    assert_eq!(
        served["x-service-info"],
        json!({
            "categories": ["ai", "search"],
            "docs": {
                "apiReference": "https://api.example.com/docs",
                "homepage": "https://example.com",
                "llms": "/llms.txt",
            },
        })
    );

    // One offer: flat x-payment-info, exactly what mppx derives from the route's challenge.
    let chat_op = &served["paths"]["/v1/chat"]["post"];
    let info = &chat_op["x-payment-info"];
    assert_eq!(*info, mppx_offer(&engine, &chat));
    assert_eq!(info["intent"], "session");
    assert_eq!(info["method"], "tempo");
    assert_eq!(info["amount"], "25");
    assert_eq!(info["currency"], chain.token.to_checksum(None));
    assert_eq!(info["recipient"], recipient.to_checksum(None));
    assert_eq!(info["unitType"], "llm_token");
    assert_eq!(info["suggestedDeposit"], "10000000");
    assert_eq!(info["description"], "Chat completion");
    assert!(info.get("methodDetails").is_none() && info.get("offers").is_none());
    assert_eq!(
        chat_op["requestBody"]["content"]["application/json"]["schema"]["required"],
        json!(["prompt"])
    );

    // Two offers: {offers: [...]} and no flat fields beside it.
    let search_info = &served["paths"]["/v1/search"]["get"]["x-payment-info"];
    assert_eq!(
        *search_info,
        json!({ "offers": [mppx_offer(&engine, &search), mppx_offer(&engine, &bulk)] })
    );
    assert_eq!(search_info["offers"][1]["amount"], "800");

    // Every paid operation declares its 402 with a problem body; the free one does not.
    for (path, method) in [("/v1/chat", "post"), ("/v1/search", "get")] {
        let payment_required = &served["paths"][path][method]["responses"]["402"];
        let schema = &payment_required["content"]["application/problem+json"]["schema"];
        assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{path}");
        assert!(payment_required["headers"]["WWW-Authenticate"].is_object());
    }
    assert_eq!(
        served["components"]["schemas"]["Problem"]["required"],
        json!(["type", "title", "status"])
    );
    let health = &served["paths"]["/health"]["get"];
    assert!(health.get("x-payment-info").is_none());
    assert!(health["responses"].get("402").is_none());
    assert_eq!(health["summary"], "Liveness");

    // mppx's validator: no errors, no warnings. And it does flag a paid operation without 402.
    assert_eq!(mppx_validate(&served), Vec::<Value>::new());
    let mut broken = served.clone();
    broken["paths"]["/v1/chat"]["post"]["responses"]
        .as_object_mut()
        .expect("responses")
        .remove("402");
    let findings = mppx_validate(&broken);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], "paths./v1/chat.post.responses");

    // The engine serves the feed (empty: nothing was paid).
    let feed: FeedPageDto = serde_json::from_str(
        &client
            .get(format!("{base}/feed"))
            .bearer_auth(FEED_TOKEN)
            .send()
            .await
            .expect("feed")
            .text()
            .await
            .expect("body"),
    )
    .expect("feed JSON");
    assert!(feed.entries.is_empty());
    server.abort();
}
