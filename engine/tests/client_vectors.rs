//! The payer client against the mppx 0.11.0 vectors (`testdata/mppx-0.11.0/`): which 402
//! challenges it pays, which it refuses (with typed errors), and how server problems surface.
//! A small axum server replays the vectors' responses over real HTTP; no chain is involved, so a
//! client that would have to open a channel fails at the chain, after one unpaid request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy::primitives::{Address, B256, address};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use sluice_engine::chain::ChainErrorKind;
use sluice_engine::client::{ClientError, PayerClient, PayerConfig, payable_challenges};
use sluice_engine::protocol::ProtocolError;

const CORE: &str = include_str!("../../testdata/mppx-0.11.0/core-challenge.json");
const PROBLEMS: &str = include_str!("../../testdata/mppx-0.11.0/problem-details.json");

/// The escrow and token the vectors' challenges name.
const ESCROW: Address = address!("e7f1725E7734CE288F8367e1Bb143E90bb3F0512");
const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");

fn core() -> Value {
    serde_json::from_str(CORE).expect("vector JSON")
}

fn headers(www_authenticate: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "www-authenticate",
        HeaderValue::from_str(www_authenticate).expect("header value"),
    );
    headers
}

fn config(escrow: Address, rpc_url: &str) -> PayerConfig {
    // Anvil's key #1; nothing is signed on chain here.
    let key: B256 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
        .parse()
        .unwrap();
    PayerConfig::new(rpc_url, 31_337, escrow, TOKEN, key)
}

#[test]
fn pays_every_v1_session_challenge_in_the_vectors_and_skips_the_rest() {
    let core = core();
    for case in core["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        let header = case["wwwAuthenticate"].as_str().unwrap();
        let result = payable_challenges(&headers(header), "https://api.example.com/");
        if case["input"]["intent"] == "session" {
            let challenges = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(challenges.len(), 1, "{name}");
            assert_eq!(challenges[0].id(), case["id"].as_str().unwrap(), "{name}");
            let request = challenges[0].session_request().unwrap();
            assert_eq!(
                request.amount.to_string(),
                case["input"]["request"]["amount"].as_str().unwrap()
            );
        } else {
            match result {
                Err(ClientError::NoUsableChallenge { offered, .. }) => {
                    assert_eq!(offered, vec!["tempo/charge".to_owned()], "{name}");
                }
                other => panic!("{name}: a charge challenge is not payable: {other:?}"),
            }
        }
    }

    // Two challenges in one value: the session one is taken, the charge one skipped.
    let multi = &core["multipleChallengesInOneHeader"];
    let challenges =
        payable_challenges(&headers(multi["wwwAuthenticate"].as_str().unwrap()), "u").unwrap();
    assert_eq!(challenges.len(), 1);
    assert_eq!(
        challenges[0].id(),
        multi["parsed"][0]["id"].as_str().unwrap()
    );

    // mppx's human-unit transform: base units on the wire.
    let transformed = &core["fromMethodTransform"];
    let challenges = payable_challenges(
        &headers(transformed["wwwAuthenticate"].as_str().unwrap()),
        "u",
    )
    .unwrap();
    let request = challenges[0].session_request().unwrap();
    assert_eq!(request.amount, 25);
    assert_eq!(request.method_details.min_voucher_delta, Some(10_000));

    // The real mppx server only issues v2 (precompile) challenges: not payable by a v1 client.
    let server = &core["server402"]["headers"]["www-authenticate"];
    match payable_challenges(&headers(server.as_str().unwrap()), "u") {
        Err(ClientError::NoUsableChallenge { offered, .. }) => {
            assert_eq!(offered, vec!["tempo/session".to_owned()]);
        }
        other => panic!("a v2 challenge is not payable: {other:?}"),
    }
}

#[test]
fn malformed_challenges_are_typed_protocol_errors() {
    let core = core();
    let good = core["cases"][0]["wwwAuthenticate"]
        .as_str()
        .unwrap()
        .to_owned();
    let cut = &good[..good.len() - 5]; // inside the last quoted value
    let duplicated = format!("{good}, realm=\"again\"");
    let bad_request = good.replace("request=\"eyJ", "request=\"!!!");
    let no_id = good.replacen("id=\"", "xid=\"", 1);
    for (what, header) in [
        ("unterminated", cut.to_owned()),
        ("duplicate param", duplicated),
        ("request not base64url", bad_request),
        ("no id", no_id),
    ] {
        match payable_challenges(&headers(&header), "u") {
            Err(ClientError::Protocol(error)) => {
                // Each is the protocol module's own, typed refusal.
                assert!(
                    !matches!(error, ProtocolError::MissingPaymentScheme),
                    "{what}: {error:?}"
                );
            }
            other => panic!("{what}: expected a protocol error, got {other:?}"),
        }
    }
    // No `Payment` scheme at all: nothing offered.
    assert!(matches!(
        payable_challenges(&headers("Bearer realm=\"x\""), "u"),
        Err(ClientError::NoUsableChallenge { offered, .. }) if offered.is_empty()
    ));
}

#[derive(Clone)]
struct Replay {
    problems: Arc<Value>,
    challenge: Arc<String>,
    hits: Arc<AtomicU64>,
}

async fn problem(State(replay): State<Replay>, Path(name): Path<String>) -> Response {
    replay.hits.fetch_add(1, Ordering::SeqCst);
    let body = &replay.problems["problems"][&name];
    let status = StatusCode::from_u16(body["status"].as_u64().unwrap() as u16).unwrap();
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn challenge(State(replay): State<Replay>) -> Response {
    replay.hits.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::PAYMENT_REQUIRED,
        [
            ("www-authenticate", replay.challenge.as_str()),
            ("content-type", "application/problem+json"),
        ],
        r#"{"type":"https://paymentauth.org/problems/payment-required","title":"Payment Required","status":402,"detail":"Payment is required."}"#,
    )
        .into_response()
}

async fn serve(replay: Replay) -> String {
    let app = Router::new()
        .route("/problem/{name}", get(problem))
        .route("/v1", get(challenge))
        .with_state(replay);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn server_problems_become_typed_client_errors() {
    let problems: Value = serde_json::from_str(PROBLEMS).unwrap();
    let core = core();
    let replay = Replay {
        problems: Arc::new(problems.clone()),
        challenge: Arc::new(
            core["cases"][0]["wwwAuthenticate"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        hits: Arc::new(AtomicU64::new(0)),
    };
    let base = serve(replay.clone()).await;
    // Nothing listens on port 9: a client that needs the chain fails there.
    let client = PayerClient::new(config(ESCROW, "http://127.0.0.1:9")).unwrap();

    let names: Vec<String> = problems["problems"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names.len(), 18);
    for name in &names {
        let expected = &problems["problems"][name];
        match client.get(&format!("{base}/problem/{name}")).await {
            Err(error @ ClientError::Problem { .. }) => {
                let ClientError::Problem {
                    status,
                    problem_type,
                    detail,
                } = &error
                else {
                    unreachable!()
                };
                assert_eq!(
                    u64::from(*status),
                    expected["status"].as_u64().unwrap(),
                    "{name}"
                );
                assert_eq!(problem_type, expected["type"].as_str().unwrap(), "{name}");
                assert_eq!(detail, expected["detail"].as_str().unwrap(), "{name}");
                let kind = error.problem_kind().expect("an mppx problem type");
                assert_eq!(kind.type_uri(), *problem_type, "{name}");
                assert_eq!(error.is_retryable(), *status >= 500, "{name}");
            }
            other => panic!("{name}: expected ClientError::Problem, got {other:?}"),
        }
    }
    assert_eq!(client.stats().vouchers_signed, 0);

    // A payable challenge naming another escrow than the pinned one: refused, nothing signed.
    let other = PayerClient::new(config(Address::repeat_byte(0x11), "http://127.0.0.1:9")).unwrap();
    let before = replay.hits.load(Ordering::SeqCst);
    match other.get(&format!("{base}/v1")).await {
        Err(ClientError::UntrustedChallenge { field, .. }) => assert_eq!(field, "escrowContract"),
        other => panic!("expected UntrustedChallenge, got {other:?}"),
    }
    assert_eq!(
        replay.hits.load(Ordering::SeqCst),
        before + 1,
        "only the unpaid request"
    );

    // The pinned escrow: the client must open a channel, and the chain is unreachable: a
    // retryable chain error, after the one unpaid request; nothing was signed.
    let before = replay.hits.load(Ordering::SeqCst);
    match client.get(&format!("{base}/v1")).await {
        Err(ClientError::Chain(error)) => {
            assert_eq!(error.kind, ChainErrorKind::Transport, "{error}");
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
    assert_eq!(replay.hits.load(Ordering::SeqCst), before + 1);
    assert_eq!(client.stats().vouchers_signed, 0);
    assert_eq!(
        client.stats().signed_total,
        0,
        "the failed open gave its amount back"
    );
    assert!(client.channels().is_empty());

    // A cap below one unit's price refuses before the chain is even asked.
    let mut capped = config(ESCROW, "http://127.0.0.1:9");
    capped.cap_per_channel = Some(24);
    let capped = PayerClient::new(capped).unwrap();
    match capped.get(&format!("{base}/v1")).await {
        Err(ClientError::CapExceeded { cap, would_be, .. }) => {
            assert_eq!((cap, would_be), (24, 25));
        }
        other => panic!("expected CapExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_challenge_is_refused_before_anything_is_signed() {
    let core = core();
    let header = core["cases"][0]["wwwAuthenticate"]
        .as_str()
        .unwrap()
        .replace("2030-01-01T00:00:00Z", "2020-01-01T00:00:00Z");
    assert!(header.contains("expires=\"2020-01-01T00:00:00Z\""));
    let replay = Replay {
        problems: Arc::new(Value::Null),
        challenge: Arc::new(header),
        hits: Arc::new(AtomicU64::new(0)),
    };
    let base = serve(replay.clone()).await;
    // Nothing listens on port 9: a client that went on to open a channel would fail at the
    // chain instead.
    let client = PayerClient::new(config(ESCROW, "http://127.0.0.1:9")).unwrap();
    match client.get(&format!("{base}/v1")).await {
        Err(ClientError::Protocol(ProtocolError::ChallengeExpired { expires, .. })) => {
            assert_eq!(expires, "2020-01-01T00:00:00Z");
        }
        other => panic!("expected ChallengeExpired, got {other:?}"),
    }
    assert_eq!(replay.hits.load(Ordering::SeqCst), 1, "one unpaid request");
    assert_eq!(client.stats().vouchers_signed, 0);
    assert_eq!(client.stats().signed_total, 0);
    assert!(client.channels().is_empty());
}

#[tokio::test]
async fn a_request_cancelled_while_opening_gives_its_cap_reservation_back() {
    let core = core();
    let replay = Replay {
        problems: Arc::new(Value::Null),
        challenge: Arc::new(
            core["cases"][0]["wwwAuthenticate"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        hits: Arc::new(AtomicU64::new(0)),
    };
    let base = serve(replay.clone()).await;
    // A chain endpoint that accepts the connection and never answers: the open waits there.
    let rpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rpc_url = format!("http://{}", rpc.local_addr().unwrap());
    let connected = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&connected);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = rpc.accept().await {
            held.push(socket);
            notify.notify_one();
        }
    });
    let mut config = config(ESCROW, &rpc_url);
    config.cap_total = Some(25);
    let client = PayerClient::new(config).unwrap();
    let url = format!("{base}/v1");
    tokio::select! {
        result = client.get(&url) => panic!("the chain never answers: {result:?}"),
        () = connected.notified() => {}
    }
    // The task was cancelled before anything was signed: nothing stays reserved.
    assert_eq!(client.stats().vouchers_signed, 0);
    assert_eq!(client.stats().signed_total, 0);
    assert!(client.channels().is_empty());
}
