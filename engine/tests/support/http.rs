//! A paid HTTP API on loopback for the HTTP tests: the engine over real sled and a real anvil
//! chain, an axum router with a paid JSON route, a metered SSE route and a free route, and
//! payers that open channels and sign vouchers the way a client does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use sluice_engine::chain::{ChainClient, RpcChain};
use sluice_engine::http::{Payment, PaymentLayer, PaymentOptions, SseMeter};
use sluice_engine::protocol::{
    Challenge, ChallengeSecret, Credential, Did, OpenPayload, SessionPayload, Timestamp,
    VoucherPayload, parse_www_authenticate,
};
use sluice_engine::store::{ChannelRecord, Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, Route, RoutePrice};
use sluice_voucher::{SigningKey, Voucher, VoucherDomain, sign_voucher};

use super::anvil::{CHAIN_ID, Payer, TestChain};

/// The engine type the tests run.
pub type TestEngine = Engine<SledStore, RpcChain>;

/// Price of one `/paid` request.
pub const PAID_PRICE: u128 = 25;
/// Price of one streamed token.
pub const TOKEN_PRICE: u128 = 10;
/// The realm the provider issues challenges for.
pub const REALM: &str = "api.sluice.test";
const SECRET: &str = "sluice-http-tests-secret-0123456789abcdef";

/// The route of `/paid`.
pub fn paid_price() -> RoutePrice {
    RoutePrice {
        amount: PAID_PRICE,
        unit_type: "request".into(),
        description: Some("one answer".into()),
        suggested_deposit: Some(10_000),
        min_voucher_delta: None,
        route_id: Some("paid".into()),
    }
}

/// The route of `/stream`.
pub fn stream_price() -> RoutePrice {
    RoutePrice {
        amount: TOKEN_PRICE,
        unit_type: "llm_token".into(),
        description: None,
        suggested_deposit: Some(10_000),
        min_voucher_delta: None,
        route_id: Some("stream".into()),
    }
}

/// Options of the provider under test.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// How long a paused stream waits for a voucher.
    pub stream_wait: Duration,
    /// Units `/stream` charges per durable update.
    pub stream_charge_batch: u64,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            stream_wait: Duration::from_secs(20),
            stream_charge_batch: 1,
        }
    }
}

/// A running provider.
pub struct Provider {
    /// The chain (anvil, escrow, token).
    pub chain: TestChain,
    /// The engine behind the routes.
    pub engine: Arc<TestEngine>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The listening address.
    pub addr: SocketAddr,
    /// An HTTP client.
    pub client: reqwest::Client,
    /// How many times the `/paid` handler ran.
    pub paid_calls: Arc<AtomicU64>,
    /// The payee.
    pub payee: Address,
    /// The `/paid` route.
    pub paid_route: Route,
    /// The `/stream` route.
    pub stream_route: Route,
    _dir: tempfile::TempDir,
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    tokens: Option<u32>,
}

async fn paid(
    axum::extract::State(calls): axum::extract::State<Arc<AtomicU64>>,
    payment: Payment,
) -> Response {
    calls.fetch_add(1, Ordering::SeqCst);
    Json(serde_json::json!({
        "answer": 42,
        "channelId": payment.channel_id.to_string(),
        "unitsCharged": payment.units_charged,
        "replayed": payment.replayed,
    }))
    .into_response()
}

async fn stream_tokens(meter: SseMeter, Query(query): Query<StreamQuery>) -> Response {
    let tokens = query.tokens.unwrap_or(5).min(10_000);
    meter.stream(stream::iter((0..tokens).map(|i| format!("token {i}"))))
}

impl Provider {
    /// Starts anvil, the engine (sled in a temporary directory) and the server.
    pub async fn start(options: ProviderOptions) -> Self {
        let chain = TestChain::start().await;
        let payee = chain.account(9).address();
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path().join("store"), Durability::default()).expect("sled");
        let rpc = RpcChain::connect(chain.config()).await.expect("rpc");
        let mut config = EngineConfig::new(
            REALM,
            ChallengeSecret::new(SECRET).expect("secret"),
            CHAIN_ID,
            chain.escrow,
            payee,
            chain.token,
        );
        // Read chain facts on every voucher, so on-chain close requests are seen at once.
        config.chain_state_ttl = Duration::ZERO;
        let engine = Arc::new(Engine::new(config, store, rpc).expect("engine"));
        let paid_route = engine.route(paid_price()).expect("route");
        let stream_route = engine.route(stream_price()).expect("route");
        let paid_calls = Arc::new(AtomicU64::new(0));
        let stream_options = PaymentOptions {
            units_per_request: 0,
            stream_voucher_wait: options.stream_wait,
            stream_charge_batch: options.stream_charge_batch,
            ..PaymentOptions::default()
        };
        let app = Router::new()
            .route("/paid", get(paid).post(paid))
            .route_layer(PaymentLayer::new(Arc::clone(&engine), paid_route.clone()))
            .with_state(Arc::clone(&paid_calls))
            .merge(
                Router::new()
                    .route("/stream", get(stream_tokens).post(stream_tokens))
                    .route_layer(PaymentLayer::with_options(
                        Arc::clone(&engine),
                        stream_route.clone(),
                        stream_options,
                    )),
            )
            .route("/free", get(|| async { "free" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            chain,
            engine,
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            paid_calls,
            payee,
            paid_route,
            stream_route,
            _dir: dir,
        }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends an unpaid GET and returns the challenge of the 402.
    pub async fn challenge(&self, path: &str) -> Challenge {
        let response = self.client.get(self.url(path)).send().await.expect("send");
        assert_eq!(response.status(), 402);
        challenge_of(&response)
    }

    /// A channel's stored record.
    pub fn record(&self, channel: B256) -> ChannelRecord {
        self.engine
            .channel(&channel)
            .expect("store")
            .expect("channel known")
    }

    /// Account `index` as a payer with `deposit` tokens approved for the escrow (the approval
    /// mined), ready to open.
    pub async fn payer(&self, index: usize, deposit: u128) -> TestPayer {
        approved_payer(&self.chain, index, deposit, self.payee).await
    }
}

/// Account `index` as a payer of `payee` with `deposit` tokens minted and approved for the
/// escrow (the approval mined), ready to open.
pub async fn approved_payer(
    chain: &TestChain,
    index: usize,
    deposit: u128,
    payee: Address,
) -> TestPayer {
    let mut payer = chain.payer(index, deposit).await;
    let approve = payer.approve(deposit);
    let rpc = RpcChain::connect(chain.config()).await.expect("rpc");
    let mined = rpc.submit_raw(approve).await.expect("approve mined");
    assert!(mined.success);
    let key = SigningKey::from_slice(payer.signer.to_bytes().as_slice()).expect("key");
    TestPayer {
        payer,
        key,
        deposit,
        domain: VoucherDomain::tempo_v1(CHAIN_ID, chain.escrow),
        channel: B256::ZERO,
        payee,
    }
}

/// The first challenge of a response's `WWW-Authenticate`.
pub fn challenge_of(response: &reqwest::Response) -> Challenge {
    let header = response
        .headers()
        .get("www-authenticate")
        .expect("a challenge")
        .to_str()
        .expect("ascii");
    parse_www_authenticate(header)
        .expect("parses")
        .into_iter()
        .next()
        .expect("one challenge")
}

/// A payer that opens one channel and signs vouchers for it.
pub struct TestPayer {
    /// The chain-side payer.
    pub payer: Payer,
    key: SigningKey,
    /// The deposit it opens with.
    pub deposit: u128,
    domain: VoucherDomain,
    /// The channel (after [`TestPayer::open_credential`]).
    pub channel: B256,
    payee: Address,
}

impl TestPayer {
    /// The payer's address.
    pub fn address(&self) -> Address {
        self.payer.address()
    }

    fn signature(&self, cumulative: u128) -> Bytes {
        let voucher = Voucher::new(self.channel.into(), cumulative);
        Bytes::copy_from_slice(
            &sign_voucher(&self.domain, &voucher, &self.key)
                .signature
                .to_bytes65(),
        )
    }

    fn source(&self) -> Option<Did> {
        Some(Did::pkh_eip155(CHAIN_ID, self.address()))
    }

    /// An `open` credential answering `challenge`: the payer-signed open transaction and an
    /// initial voucher of `cumulative`.
    pub fn open_credential(&mut self, challenge: Challenge, cumulative: u128) -> String {
        let (transaction, channel) = self.payer.open(
            self.payee,
            self.deposit,
            B256::repeat_byte(0x5a),
            Address::ZERO,
        );
        self.channel = channel;
        Credential {
            challenge,
            payload: SessionPayload::Open(OpenPayload {
                channel_id: channel,
                transaction,
                cumulative_amount: cumulative,
                signature: self.signature(cumulative),
                authorized_signer: None,
                descriptor: None,
            }),
            source: self.source(),
        }
        .to_header_value()
    }

    /// A `voucher` credential of `cumulative` answering `challenge`.
    pub fn voucher_credential(&self, challenge: Challenge, cumulative: u128) -> String {
        Credential {
            challenge,
            payload: SessionPayload::Voucher(VoucherPayload {
                channel_id: self.channel,
                cumulative_amount: cumulative,
                signature: self.signature(cumulative),
                descriptor: None,
            }),
            source: self.source(),
        }
        .to_header_value()
    }

    /// A `close` credential of `cumulative` answering `challenge`.
    pub fn close_credential(&self, challenge: Challenge, cumulative: u128) -> String {
        Credential {
            challenge,
            payload: SessionPayload::Close(VoucherPayload {
                channel_id: self.channel,
                cumulative_amount: cumulative,
                signature: self.signature(cumulative),
                descriptor: None,
            }),
            source: self.source(),
        }
        .to_header_value()
    }
}

/// The wall clock as a protocol timestamp.
pub fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now()).expect("clock after 1970")
}

/// Reads SSE events from a streaming response, one at a time.
pub struct Events {
    /// The streaming response.
    pub response: reqwest::Response,
    /// Bytes read but not yet returned as an event.
    pub buffer: String,
}

impl Events {
    /// The next whole event (up to and including its blank line), or `None` at the end.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event = self.buffer[..end + 2].to_owned();
                self.buffer.drain(..end + 2);
                return Some(event);
            }
            let chunk = self.response.chunk().await.expect("stream reads")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

/// The JSON of an SSE event's `data:` line.
pub fn data_of(event: &str) -> serde_json::Value {
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    serde_json::from_str(data).expect("JSON data")
}
