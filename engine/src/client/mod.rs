//! The payer side of MPP sessions: [`PayerClient`] opens channels, answers `402` session
//! challenges, signs vouchers (optionally ahead of what is owed), follows metered SSE streams,
//! tops up, closes, and enforces hard spending caps.
//!
//! It speaks exactly what the engine's server parses: challenges are read with
//! [`Challenge`](crate::protocol::Challenge), credentials written with
//! [`Credential`](crate::protocol::Credential), receipts read with [`Receipt`]. See the crate
//! README (`## client`) for the caps, the sign-ahead rule and the differences from mppx's client.

mod channel;
mod config;
mod error;
mod sse;
mod wallet;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use alloy::transports::http::reqwest;
use alloy_primitives::{Address, B256, Bytes as HexBytes};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;
use sluice_voucher::{SigningKey, Voucher, VoucherDomain, sign_voucher};
use tokio::sync::OnceCell;

pub use self::config::{
    DEFAULT_DEPOSIT, DEFAULT_HTTP_TIMEOUT, DEFAULT_MAX_PAYMENT_RETRIES,
    DEFAULT_STREAM_IDLE_TIMEOUT, PayerConfig, TopUpPolicy,
};
pub use self::error::{CapScope, ClientError, HttpFailure};
pub use self::sse::{EventTooLong, MAX_EVENT_LEN, SseEvent, SseReader};
/// A session receipt (`Payment-Receipt`), as the server sent it.
pub use crate::protocol::SessionReceipt as Receipt;
pub use sluice_voucher::ChannelId;

use self::channel::{ChannelState, Limits, VoucherPlan, plan_voucher};
use self::wallet::{Wallet, random_salt};
use crate::chain::ChainClient;
use crate::protocol::{
    Challenge, Credential, Did, INTENT_SESSION, METHOD_TEMPO, OpenPayload, ProblemKind,
    ProtocolError, SessionPayload, SessionProtocol, Timestamp, TopUpPayload, VoucherPayload,
    parse_www_authenticate,
};

const ACCEPT_PAYMENT: &str = "accept-payment";
const PAYMENT_RECEIPT: &str = "payment-receipt";
/// What this client pays with.
const ACCEPT_PAYMENT_VALUE: &str = "tempo/session";
/// A cached challenge is reused only while it has at least this long to live.
const CHALLENGE_MARGIN: Duration = Duration::from_secs(30);

/// A response to a request the client paid for (or that needed no payment).
#[derive(Debug)]
pub struct PaidResponse {
    /// The final status.
    pub status: StatusCode,
    /// The final headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The `Payment-Receipt`, checked against what the client signed (`None`: not paid).
    pub receipt: Option<Receipt>,
    /// The channel the request was paid on.
    pub channel: Option<ChannelId>,
}

/// What a metered stream cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// `message` (and other content) events received.
    pub data_events: u64,
    /// Vouchers POSTed in answer to `payment-need-voucher`.
    pub vouchers_posted: u64,
    /// Top-ups made while the stream ran.
    pub top_ups: u32,
    /// The channel's highest signed cumulative amount when the stream ended.
    pub cumulative: u128,
}

/// The outcome of a cooperative close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseSummary {
    /// The channel.
    pub channel: ChannelId,
    /// The close voucher's cumulative amount.
    pub final_amount: u128,
}

/// Counters of one client (shared by its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Calls of `get` / `request` / `stream`.
    pub requests: u64,
    /// Voucher signatures made (open, voucher, close).
    pub vouchers_signed: u64,
    /// Channels opened.
    pub opens: u64,
    /// Top-ups made.
    pub top_ups: u64,
    /// Cooperative closes.
    pub closes: u64,
    /// Credentials re-sent after a refusal the client could fix (a fresh challenge, a voucher
    /// overtaken by a concurrent one, a balance to raise).
    pub retries: u64,
    /// Sum over the client's channels of the highest cumulative amount signed.
    pub signed_total: u128,
}

/// One channel as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// The channel id.
    pub id: ChannelId,
    /// `scheme://host:port` of the provider.
    pub origin: String,
    /// The payee.
    pub payee: Address,
    /// The deposit.
    pub deposit: u128,
    /// The highest cumulative amount signed.
    pub signed: u128,
    /// The highest `spent` a receipt reported.
    pub owed: u128,
    /// The highest `acceptedCumulative` a receipt reported.
    pub accepted: u128,
    /// Whether the client stopped using it: it closed it, or the server answered that the
    /// channel is gone or closing (`410`).
    pub closed: bool,
}

/// The payer client. Cheap to clone (the state is shared); `Send + Sync`, so many tasks can
/// pay through one client, and they share its channels.
#[derive(Clone)]
pub struct PayerClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PayerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayerClient")
            .field("payer", &self.inner.payer)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ChannelKey {
    origin: String,
    payee: Address,
}

/// One channel slot per (origin, payee); the token and escrow are the client's pinned ones.
struct Slot {
    key: ChannelKey,
    /// Serializes "decide the amount → (top up) → sign" on the channel, and an open while its
    /// request is in flight.
    sequence: Arc<tokio::sync::Mutex<()>>,
    /// Held shared by each charged request from before its voucher is decided until its answer
    /// is in; a close takes it exclusively.
    in_flight: Arc<tokio::sync::RwLock<()>>,
    /// `None` until a channel is opened.
    state: Mutex<Option<ChannelState>>,
    /// Set when the channel was closed; the slot is no longer in the client's map.
    retired: AtomicBool,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    vouchers_signed: AtomicU64,
    opens: AtomicU64,
    top_ups: AtomicU64,
    closes: AtomicU64,
    retries: AtomicU64,
}

struct Inner {
    config: PayerConfig,
    http: reqwest::Client,
    payer_key: SigningKey,
    payer: Address,
    voucher_key: SigningKey,
    /// The `authorizedSigner` written into `open` (zero when the payer signs).
    authorized_signer: Address,
    domain: VoucherDomain,
    source: Did,
    wallet: OnceCell<Wallet>,
    /// One payer transaction sequence (nonce) at a time: approve → open/topUp → broadcast.
    tx_lock: Arc<tokio::sync::Mutex<()>>,
    slots: Mutex<HashMap<ChannelKey, Arc<Slot>>>,
    closed: Mutex<Vec<ChannelSnapshot>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    total_signed: Mutex<u128>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The URL split the way the client keys its state.
struct Target {
    url: reqwest::Url,
    origin: String,
    /// `origin + path`: challenges are cached per route.
    route: String,
}

fn target(url: &str) -> Result<Target, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("only http(s) URLs with a host are supported"));
    }
    let origin = parsed.origin().ascii_serialization();
    let route = format!("{origin}{}", parsed.path());
    Ok(Target {
        url: parsed,
        origin,
        route,
    })
}

/// The money terms of a usable challenge.
#[derive(Clone, Copy, Debug)]
struct Terms {
    price: u128,
    payee: Address,
    min_delta: u128,
}

/// What a credential must achieve on the channel.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// A content request charging one unit: owed grows by `price` (once per request).
    Charge { price: u128, reserve: bool },
    /// A stream start: headroom for one unit, nothing counted as owed yet.
    Headroom { price: u128 },
    /// Cover exactly `required` (a `payment-need-voucher`), one unit beyond what is owed at most.
    Cumulative { required: u128, price: u128 },
    /// A management request: the current voucher, nothing more.
    Nothing,
}

/// What one credential must achieve: `need`, at least `floor` (an amount the server asked
/// for), and whether to keep the channel's lock until the answer is in.
#[derive(Clone, Copy, Debug)]
struct Ask {
    need: Need,
    floor: u128,
    hold: bool,
}

/// A credential ready to send, and the locks an `open` holds until its answer is in.
struct Prepared {
    header: String,
    channel: B256,
    amount: u128,
    topped_up: bool,
    open: Option<OpenInFlight>,
    /// The channel's sequence lock, held until the answer is in (a re-send after being
    /// overtaken twice: no newer voucher can be signed while it is in flight, so it cannot be
    /// overtaken again).
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

struct OpenInFlight {
    _sequence: tokio::sync::OwnedMutexGuard<()>,
    _tx: tokio::sync::OwnedMutexGuard<()>,
}

/// A refusal as the server described it.
#[derive(Debug)]
struct ProblemBody {
    status: u16,
    problem_type: String,
    detail: String,
    required_cumulative: Option<u128>,
}

impl ProblemBody {
    fn kind(&self) -> Option<ProblemKind> {
        ProblemKind::ALL
            .into_iter()
            .find(|kind| kind.type_uri() == self.problem_type)
    }

    fn into_error(self) -> ClientError {
        ClientError::Problem {
            status: self.status,
            problem_type: self.problem_type,
            detail: self.detail,
        }
    }
}

fn problem_of(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<ProblemBody> {
    let is_problem = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !is_problem {
        return None;
    }
    let json: Value = serde_json::from_slice(body).ok()?;
    problem_from_json(status.as_u16(), &json)
}

fn problem_from_json(status: u16, json: &Value) -> Option<ProblemBody> {
    let object = json.as_object()?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(ProblemBody {
        status: object
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(status),
        problem_type: text("type").unwrap_or_default(),
        detail: text("detail").or_else(|| text("title")).unwrap_or_default(),
        required_cumulative: object
            .get("details")
            .and_then(|d| d.get("requiredCumulative"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
    })
}

fn http_error(operation: &'static str, url: &reqwest::Url, error: &reqwest::Error) -> ClientError {
    ClientError::Http(HttpFailure {
        operation,
        url: url.to_string(),
        message: error.to_string(),
        timeout: error.is_timeout(),
    })
}

/// Redirects are followed only within the origin they start from (at most 10): a credential
/// (in `Authorization` or a header the challenge names, which reqwest would not strip) never
/// goes to another host, port or scheme. A redirect elsewhere is returned as the response.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let leaves_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() != attempt.url().origin());
        if leaves_origin {
            attempt.stop()
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

fn key_of(bytes: &B256, field: &'static str) -> Result<SigningKey, ClientError> {
    SigningKey::from_slice(bytes.as_slice()).map_err(|_| ClientError::InvalidConfig {
        field,
        reason: "not a valid secp256k1 private key".into(),
    })
}

fn now() -> Option<Timestamp> {
    Timestamp::from_system_time(SystemTime::now())
}

/// The challenges of a `WWW-Authenticate` set this client can pay: `tempo`/`session`, session
/// protocol v1 (or unset). Values that do not parse are skipped; if nothing usable remains the
/// first parse error (or [`ClientError::NoUsableChallenge`]) is returned.
pub fn payable_challenges(headers: &HeaderMap, url: &str) -> Result<Vec<Challenge>, ClientError> {
    let mut usable = Vec::new();
    let mut offered = Vec::new();
    let mut first_error: Option<ProtocolError> = None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        let challenges = match parse_www_authenticate(text) {
            Ok(challenges) => challenges,
            Err(ProtocolError::MissingPaymentScheme) => continue,
            Err(error) => {
                first_error.get_or_insert(error);
                continue;
            }
        };
        for challenge in challenges {
            offered.push(format!("{}/{}", challenge.method(), challenge.intent()));
            if challenge.method() != METHOD_TEMPO || challenge.intent() != INTENT_SESSION {
                continue;
            }
            match challenge.session_request() {
                Ok(request)
                    if matches!(
                        request.method_details.session_protocol,
                        None | Some(SessionProtocol::V1)
                    ) =>
                {
                    usable.push(challenge);
                }
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    if !usable.is_empty() {
        return Ok(usable);
    }
    Err(match first_error {
        Some(error) => ClientError::Protocol(error),
        None => ClientError::NoUsableChallenge {
            url: url.to_owned(),
            offered,
        },
    })
}

impl PayerClient {
    /// A client for `config`. Checks the keys and amounts; connects to the chain lazily (on the
    /// first open or top-up).
    pub fn new(config: PayerConfig) -> Result<Self, ClientError> {
        let payer_key = key_of(&config.payer_key, "payer_key")?;
        let payer = sluice_voucher::address_of(payer_key.verifying_key());
        let (voucher_key, authorized_signer) = match &config.voucher_signer {
            Some(key) => {
                let key = key_of(key, "voucher_signer")?;
                let address = sluice_voucher::address_of(key.verifying_key());
                (key, address)
            }
            None => (payer_key.clone(), Address::ZERO),
        };
        if config.deposit == 0 {
            return Err(ClientError::InvalidConfig {
                field: "deposit",
                reason: "must be above zero".into(),
            });
        }
        if config.top_up.is_some_and(|p| p.amount == 0) {
            return Err(ClientError::InvalidConfig {
                field: "top_up",
                reason: "the top-up amount must be above zero".into(),
            });
        }
        if let Err(e) = config.rpc_url.parse::<reqwest::Url>() {
            return Err(ClientError::InvalidConfig {
                field: "rpc_url",
                reason: e.to_string(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.http_timeout)
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ClientError::InvalidConfig {
                field: "http_timeout",
                reason: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                domain: VoucherDomain::tempo_v1(config.chain_id, config.escrow),
                source: Did::pkh_eip155(config.chain_id, payer),
                config,
                http,
                payer_key,
                payer,
                voucher_key,
                authorized_signer,
                wallet: OnceCell::new(),
                tx_lock: Arc::new(tokio::sync::Mutex::new(())),
                slots: Mutex::new(HashMap::new()),
                closed: Mutex::new(Vec::new()),
                challenges: Mutex::new(HashMap::new()),
                total_signed: Mutex::new(0),
                counters: Counters::default(),
            }),
        })
    }

    /// The payer's address (funds channels, `source` of every credential).
    pub fn address(&self) -> Address {
        self.inner.payer
    }

    /// The address that signs vouchers (the delegated signer, or the payer).
    pub fn voucher_signer(&self) -> Address {
        match self.inner.authorized_signer {
            Address::ZERO => self.inner.payer,
            signer => signer,
        }
    }

    /// `GET url`, paying if the server asks.
    pub async fn get(&self, url: &str) -> Result<PaidResponse, ClientError> {
        self.request(Method::GET, url, None).await
    }

    /// Sends `method url` (with `body`), paying one unit of the route's price if the server
    /// answers `402`. A `HEAD` or an empty `POST` is a management request: it presents the
    /// current voucher and is not charged.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<PaidResponse, ClientError> {
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let target = target(url)?;
        let management = method == Method::HEAD
            || (method == Method::POST && body.as_ref().is_none_or(Bytes::is_empty));
        let paid = self.pay(&method, &target, body, !management, false).await?;
        let status = paid.response.status();
        let headers = paid.response.headers().clone();
        let body = paid
            .response
            .bytes()
            .await
            .map_err(|e| http_error("read body", &target.url, &e))?;
        if !status.is_success()
            && let Some(problem) = problem_of(status, &headers, &body)
        {
            return Err(problem.into_error());
        }
        Ok(PaidResponse {
            status,
            headers,
            body,
            receipt: paid.receipt,
            channel: paid.channel.map(|(_, id)| ChannelId::from(id)),
        })
    }

    /// GETs an SSE route, pays per event, answers `payment-need-voucher` by POSTing a voucher
    /// to the same URL (topping up first when the policy says so), and hands every content
    /// event's data to `on_data`. Ends when the server ends the stream; an
    /// `event: payment-error` ends it with [`ClientError::Problem`].
    pub async fn stream(
        &self,
        url: &str,
        mut on_data: impl FnMut(&str) + Send,
    ) -> Result<StreamSummary, ClientError> {
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let target = target(url)?;
        let mut paid = self.pay(&Method::GET, &target, None, false, true).await?;
        let mut summary = StreamSummary {
            top_ups: u32::from(paid.topped_up),
            ..StreamSummary::default()
        };
        let mut reader = SseReader::new();
        let status = paid.response.status();
        if !status.is_success() {
            let headers = paid.response.headers().clone();
            let body = paid.response.bytes().await.unwrap_or_default();
            return Err(match problem_of(status, &headers, &body) {
                Some(problem) => problem.into_error(),
                None => ClientError::Problem {
                    status: status.as_u16(),
                    problem_type: String::new(),
                    detail: format!("the stream answered {status}"),
                },
            });
        }
        loop {
            let idle = self.inner.config.stream_idle_timeout;
            let chunk = tokio::time::timeout(idle, paid.response.chunk())
                .await
                .map_err(|_| {
                    ClientError::Http(HttpFailure {
                        operation: "read stream",
                        url: target.url.to_string(),
                        message: format!("nothing received for {} ms", idle.as_millis()),
                        timeout: true,
                    })
                })?
                .map_err(|e| http_error("read stream", &target.url, &e))?;
            let Some(chunk) = chunk else { break };
            let events = reader.feed(&chunk).map_err(|e| {
                ClientError::Protocol(ProtocolError::InvalidJson {
                    field: "event-stream",
                    reason: e.to_string(),
                })
            })?;
            for event in events {
                match event.event.as_str() {
                    "payment-need-voucher" => {
                        let (slot, terms, challenge) =
                            match (&paid.channel, paid.terms, &paid.challenge) {
                                (Some((slot, _)), Some(terms), Some(challenge)) => {
                                    (Arc::clone(slot), terms, challenge.clone())
                                }
                                _ => continue,
                            };
                        let required = need_voucher_amount(&event.data)?;
                        let topped_up = self
                            .answer_need_voucher(&slot, &target, challenge, terms, required)
                            .await?;
                        summary.vouchers_posted += 1;
                        summary.top_ups += u32::from(topped_up);
                    }
                    "payment-receipt" => {
                        let json: Value = serde_json::from_str(&event.data).map_err(|e| {
                            ProtocolError::InvalidJson {
                                field: "payment-receipt",
                                reason: e.to_string(),
                            }
                        })?;
                        let receipt = Receipt::from_json(&json)?;
                        if let Some((slot, _)) = &paid.channel {
                            apply_receipt(slot, &receipt)?;
                        }
                    }
                    "payment-error" => {
                        let problem = serde_json::from_str::<Value>(&event.data)
                            .ok()
                            .and_then(|json| problem_from_json(status.as_u16(), &json));
                        return Err(match problem {
                            Some(problem) => problem.into_error(),
                            None => ClientError::Problem {
                                status: status.as_u16(),
                                problem_type: String::new(),
                                detail: event.data,
                            },
                        });
                    }
                    _ => {
                        if let (Some((slot, _)), Some(terms)) = (&paid.channel, paid.terms) {
                            let mut state = lock(&slot.state);
                            if let Some(state) = state.as_mut() {
                                state.committed = state.committed.saturating_add(terms.price);
                            }
                        }
                        summary.data_events += 1;
                        on_data(&event.data);
                    }
                }
            }
        }
        if let Some((slot, _)) = &paid.channel {
            summary.cumulative = lock(&slot.state).as_ref().map_or(0, |s| s.signed);
        }
        Ok(summary)
    }

    /// Adds `amount` to the deposit of the channel used for `url`'s origin: the payer approves
    /// it on chain, then sends a `topUp` credential (the server broadcasts the transaction).
    pub async fn top_up(&self, url: &str, amount: u128) -> Result<(), ClientError> {
        if amount == 0 {
            return Err(ClientError::InvalidConfig {
                field: "amount",
                reason: "a top-up must add something".into(),
            });
        }
        let target = target(url)?;
        let slot = self.open_slot(&target.origin)?;
        let challenge = self.challenge_for(&target).await?;
        let _sequence = slot.sequence.lock().await;
        self.top_up_locked(&slot, &target, challenge, amount).await
    }

    /// Cooperative close of the channel used for `url`'s origin: a `close` credential with the
    /// final voucher, `max(owed, accepted)` as the receipts reported it (never above what was
    /// signed). The server closes on chain (through its settlement daemon); the payer gets the
    /// rest of the deposit back.
    pub async fn close(&self, url: &str) -> Result<CloseSummary, ClientError> {
        let target = target(url)?;
        let slot = self.open_slot(&target.origin)?;
        let mut challenge = self.challenge_for(&target).await?;
        // Charged requests in flight on the channel get their answers first (new ones wait), so
        // the final amount neither pays for a unit the server will refuse once closing nor
        // falls below what it charged meanwhile.
        let _quiet = Arc::clone(&slot.in_flight).write_owned().await;
        let _sequence = slot.sequence.lock().await;
        let no_channel = || ClientError::NoChannel {
            origin: target.origin.clone(),
        };
        if slot.retired.load(Ordering::SeqCst) {
            return Err(no_channel());
        }
        let state = lock(&slot.state).clone().ok_or_else(no_channel)?;
        let final_amount = state
            .committed
            .max(state.spent)
            .max(state.accepted)
            .min(state.signed);
        let signature = if final_amount == state.signed {
            state.signature.clone()
        } else {
            self.sign(state.id, final_amount)
        };
        let mut attempts = 0;
        loop {
            let credential = self.credential_header(
                challenge.clone(),
                SessionPayload::Close(VoucherPayload {
                    channel_id: state.id,
                    cumulative_amount: final_amount,
                    signature: signature.clone(),
                    descriptor: None,
                }),
            );
            let response = self
                .send(
                    &Method::POST,
                    &target.url,
                    None,
                    Some((&challenge, credential)),
                    false,
                )
                .await?;
            let outcome = match self.management_outcome(&slot, &target, response).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    // Closed or forgotten on the server's side: the client stops using it too.
                    if matches!(
                        error.problem_kind(),
                        Some(ProblemKind::ChannelNotFound | ProblemKind::ChannelFinalized)
                    ) {
                        self.retire(&slot);
                    }
                    return Err(error);
                }
            };
            match outcome {
                Ok(()) => break,
                Err(fresh) if attempts < self.inner.config.max_payment_retries => {
                    attempts += 1;
                    challenge = fresh;
                }
                Err(_) => {
                    return Err(ClientError::Problem {
                        status: 402,
                        problem_type: ProblemKind::InvalidChallenge.type_uri(),
                        detail: "no challenge the server accepts for the close".into(),
                    });
                }
            }
        }
        self.retire(&slot);
        self.inner.counters.closes.fetch_add(1, Ordering::Relaxed);
        Ok(CloseSummary {
            channel: ChannelId::from(state.id),
            final_amount,
        })
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            vouchers_signed: c.vouchers_signed.load(Ordering::Relaxed),
            opens: c.opens.load(Ordering::Relaxed),
            top_ups: c.top_ups.load(Ordering::Relaxed),
            closes: c.closes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            signed_total: *lock(&self.inner.total_signed),
        }
    }

    /// Every channel of this client, open ones first, then closed ones.
    pub fn channels(&self) -> Vec<ChannelSnapshot> {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).values().cloned().collect();
        let mut out: Vec<ChannelSnapshot> = slots
            .iter()
            .filter_map(|slot| snapshot(slot, false))
            .collect();
        out.extend(lock(&self.inner.closed).iter().cloned());
        out
    }

    // ---- internals ---------------------------------------------------------------------

    async fn wallet(&self) -> Result<&Wallet, ClientError> {
        let inner = &self.inner;
        inner
            .wallet
            .get_or_try_init(|| {
                Wallet::connect(
                    &inner.config.rpc_url,
                    inner.config.chain_id,
                    inner.config.escrow,
                    inner.config.token,
                    inner.payer_key.clone(),
                    inner.payer,
                )
            })
            .await
    }

    fn limits(&self, terms: Terms) -> Limits {
        let c = &self.inner.config;
        Limits {
            sign_ahead: c.sign_ahead,
            min_delta: terms.min_delta,
            cap_per_channel: c.cap_per_channel,
            cap_total: c.cap_total,
            top_up: c.top_up,
        }
    }

    /// The money terms of `challenge`, refused unless it names the pinned chain, escrow and
    /// token.
    fn terms(&self, challenge: &Challenge) -> Result<Terms, ClientError> {
        let request = challenge.session_request()?;
        // An expired challenge is refused before anything is signed or sent (the server would
        // refuse the credential, but an `open` would already be approved and signed).
        if challenge.expires().is_some()
            && let Some(now) = now()
            && let Err(error @ ProtocolError::ChallengeExpired { .. }) = challenge.check_expiry(now)
        {
            return Err(error.into());
        }
        let c = &self.inner.config;
        let details = &request.method_details;
        if details.chain_id != c.chain_id {
            return Err(ClientError::UntrustedChallenge {
                field: "chainId",
                expected: c.chain_id.to_string(),
                got: details.chain_id.to_string(),
            });
        }
        if details.escrow_contract.address() != c.escrow {
            return Err(ClientError::UntrustedChallenge {
                field: "escrowContract",
                expected: c.escrow.to_string(),
                got: details.escrow_contract.to_string(),
            });
        }
        if request.currency.address() != c.token {
            return Err(ClientError::UntrustedChallenge {
                field: "currency",
                expected: c.token.to_string(),
                got: request.currency.to_string(),
            });
        }
        if request.amount == 0 {
            return Err(ClientError::ZeroPrice);
        }
        Ok(Terms {
            price: request.amount,
            payee: request.recipient.address(),
            min_delta: details.min_voucher_delta.unwrap_or(0),
        })
    }

    /// The first payable challenge of a 402 whose terms this client trusts.
    fn select(&self, headers: &HeaderMap, url: &str) -> Result<(Challenge, Terms), ClientError> {
        let mut first_error = None;
        for challenge in payable_challenges(headers, url)? {
            match self.terms(&challenge) {
                Ok(terms) => return Ok((challenge, terms)),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(
            first_error.unwrap_or_else(|| ClientError::NoUsableChallenge {
                url: url.to_owned(),
                offered: Vec::new(),
            }),
        )
    }

    fn cached_challenge(&self, route: &str) -> Option<Challenge> {
        let challenge = lock(&self.inner.challenges).get(route).cloned()?;
        let deadline = now()?.checked_add(CHALLENGE_MARGIN)?;
        match challenge.expires_at() {
            Ok(expires) if expires.unix_millis() > deadline.unix_millis() => Some(challenge),
            _ => None,
        }
    }

    fn remember_challenge(&self, route: &str, challenge: &Challenge) {
        lock(&self.inner.challenges).insert(route.to_owned(), challenge.clone());
    }

    /// A challenge for `target`'s route: the cached one, or the one an unpaid GET is answered
    /// with.
    async fn challenge_for(&self, target: &Target) -> Result<Challenge, ClientError> {
        if let Some(challenge) = self.cached_challenge(&target.route) {
            return Ok(challenge);
        }
        let response = self
            .send(&Method::GET, &target.url, None, None, false)
            .await?;
        let (challenge, _) = self.select(response.headers(), target.url.as_str())?;
        Ok(challenge)
    }

    fn slot(&self, origin: &str, payee: Address) -> Arc<Slot> {
        let key = ChannelKey {
            origin: origin.to_owned(),
            payee,
        };
        Arc::clone(
            lock(&self.inner.slots)
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        key,
                        sequence: Arc::new(tokio::sync::Mutex::new(())),
                        in_flight: Arc::new(tokio::sync::RwLock::new(())),
                        state: Mutex::new(None),
                        retired: AtomicBool::new(false),
                    })
                }),
        )
    }

    /// The opened channel for `origin` (the one with the highest signed amount if several
    /// payees share it).
    fn open_slot(&self, origin: &str) -> Result<Arc<Slot>, ClientError> {
        lock(&self.inner.slots)
            .values()
            .filter(|slot| slot.key.origin == origin)
            .filter_map(|slot| {
                let signed = lock(&slot.state).as_ref()?.signed;
                Some((signed, Arc::clone(slot)))
            })
            .max_by_key(|(signed, _)| *signed)
            .map(|(_, slot)| slot)
            .ok_or_else(|| ClientError::NoChannel {
                origin: origin.to_owned(),
            })
    }

    fn retire(&self, slot: &Arc<Slot>) {
        slot.retired.store(true, Ordering::SeqCst);
        let mut slots = lock(&self.inner.slots);
        if slots.get(&slot.key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.key);
        }
        drop(slots);
        if let Some(snapshot) = snapshot(slot, true) {
            lock(&self.inner.closed).push(snapshot);
        }
    }

    fn sign(&self, channel: B256, amount: u128) -> HexBytes {
        let voucher = Voucher::new(ChannelId::from(channel), amount);
        let signed = sign_voucher(&self.inner.domain, &voucher, &self.inner.voucher_key);
        self.inner
            .counters
            .vouchers_signed
            .fetch_add(1, Ordering::Relaxed);
        HexBytes::copy_from_slice(&signed.signature.to_bytes65())
    }

    fn credential_header(&self, challenge: Challenge, payload: SessionPayload) -> String {
        Credential {
            challenge,
            payload,
            source: Some(self.inner.source.clone()),
        }
        .to_header_value()
    }

    /// Raises the client-wide signed total from `old` to `new` for one channel, or refuses if
    /// that would break the client cap (re-checked here: other channels may have moved). The
    /// reservation is given back when the guard is dropped before [`TotalReservation::signed`]
    /// (an error, or the caller's future dropped while a top-up or open is in flight).
    fn reserve_total(&self, old: u128, new: u128) -> Result<TotalReservation<'_>, ClientError> {
        let mut total = lock(&self.inner.total_signed);
        let base = total.saturating_sub(old);
        let would_be = base.saturating_add(new);
        if let Some(cap) = self.inner.config.cap_total
            && base.checked_add(new).is_none_or(|sum| sum > cap)
        {
            return Err(ClientError::CapExceeded {
                scope: CapScope::Client,
                cap,
                would_be,
            });
        }
        *total = would_be;
        Ok(TotalReservation {
            total: &self.inner.total_signed,
            reserved: new,
            back_to: old,
            signed: false,
        })
    }

    /// Builds the credential for `need` on `slot`'s channel: opens the channel if there is
    /// none (the open is the credential), tops up if the policy says so, signs a new voucher or
    /// reuses the highest one. Caps are checked before anything is signed or sent.
    async fn prepare(
        &self,
        slot: &Arc<Slot>,
        target: &Target,
        challenge: &Challenge,
        terms: Terms,
        ask: Ask,
    ) -> Result<Prepared, ClientError> {
        let Ask { need, floor, hold } = ask;
        let sequence = Arc::clone(&slot.sequence).lock_owned().await;
        if slot.retired.load(Ordering::SeqCst) {
            let id = lock(&slot.state).as_ref().map(|s| s.id).unwrap_or_default();
            return Err(ClientError::Problem {
                status: 410,
                problem_type: ProblemKind::ChannelFinalized.type_uri(),
                detail: format!("channel {id} was closed by this client"),
            });
        }
        let limits = self.limits(terms);
        let state = lock(&slot.state).clone();
        let Some(state) = state else {
            return self
                .prepare_open(slot, challenge, terms, need, floor, limits, sequence)
                .await;
        };
        let (committed, wanted) = match need {
            Need::Charge { price, reserve } => {
                let committed = if reserve {
                    state.committed.saturating_add(price)
                } else {
                    state.committed
                };
                (committed, committed)
            }
            Need::Headroom { price } => (state.committed, state.committed.saturating_add(price)),
            Need::Cumulative { required, price } => {
                let bound = state.committed.max(state.spent).saturating_add(price);
                if required > bound {
                    return Err(ClientError::Overcharge {
                        channel: state.id,
                        required,
                        owed: bound,
                    });
                }
                (state.committed, required)
            }
            Need::Nothing => (state.committed, state.signed.max(1)),
        };
        if floor > wanted {
            let bound = committed.max(state.spent).saturating_add(terms.price);
            if floor > bound {
                return Err(ClientError::Overcharge {
                    channel: state.id,
                    required: floor,
                    owed: bound,
                });
            }
        }
        let wanted = wanted.max(floor);
        let total = *lock(&self.inner.total_signed);
        let plan = plan_voucher(state.id, state.deposit, state.signed, wanted, total, limits)?;
        let (amount, signature, topped_up) = match plan {
            VoucherPlan::Reuse { amount } => (amount, state.signature.clone(), false),
            VoucherPlan::Sign { amount, top_up } => {
                let reservation = self.reserve_total(state.signed, amount)?;
                if top_up > 0 {
                    self.top_up_locked(slot, target, challenge.clone(), top_up)
                        .await?;
                }
                let signature = self.sign(state.id, amount);
                reservation.signed();
                (amount, signature, top_up > 0)
            }
        };
        {
            let mut guard = lock(&slot.state);
            if let Some(current) = guard.as_mut() {
                if amount > current.signed {
                    current.signed = amount;
                    current.signature = signature.clone();
                }
                current.committed = current.committed.max(committed);
            }
        }
        let held = hold.then_some(sequence);
        let header = self.credential_header(
            challenge.clone(),
            SessionPayload::Voucher(VoucherPayload {
                channel_id: state.id,
                cumulative_amount: amount,
                signature,
                descriptor: None,
            }),
        );
        Ok(Prepared {
            header,
            channel: state.id,
            amount,
            topped_up,
            open: None,
            _held: held,
        })
    }

    /// A voucher credential for the channel's highest signed amount if it is above `amount`:
    /// vouchers are cumulative, so the highest one pays for this request too, and sending the
    /// newest one makes it less likely that a concurrent, higher voucher overtakes it (the
    /// server refuses a voucher below the one it accepted, and the client re-sends).
    fn fresher_voucher(
        &self,
        slot: &Slot,
        challenge: &Challenge,
        amount: u128,
    ) -> Option<(String, u128)> {
        let (channel, signed, signature) = {
            let state = lock(&slot.state);
            let state = state.as_ref()?;
            (state.id, state.signed, state.signature.clone())
        };
        (signed > amount).then(|| {
            let header = self.credential_header(
                challenge.clone(),
                SessionPayload::Voucher(VoucherPayload {
                    channel_id: channel,
                    cumulative_amount: signed,
                    signature,
                    descriptor: None,
                }),
            );
            (header, signed)
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_open(
        &self,
        slot: &Arc<Slot>,
        challenge: &Challenge,
        terms: Terms,
        need: Need,
        floor: u128,
        limits: Limits,
        sequence: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Prepared, ClientError> {
        let committed = match need {
            Need::Charge {
                price,
                reserve: true,
            } => price,
            _ => 0,
        };
        let wanted = match need {
            Need::Cumulative { required, .. } => required,
            _ => terms.price,
        }
        .max(floor);
        let deposit = self.inner.config.deposit;
        let total = *lock(&self.inner.total_signed);
        let plan = plan_voucher(B256::ZERO, deposit, 0, wanted, total, limits)?;
        let (amount, top_up) = match plan {
            VoucherPlan::Sign { amount, top_up } => (amount, top_up),
            // A channel with nothing signed never reuses a voucher (plan_voucher reuses only
            // when something is signed); refused rather than panicking.
            VoucherPlan::Reuse { .. } => return Err(ClientError::ZeroPrice),
        };
        let deposit = deposit.saturating_add(top_up);
        let reservation = self.reserve_total(0, amount)?;
        let opened = async {
            let wallet = self.wallet().await?;
            let tx = Arc::clone(&self.inner.tx_lock).lock_owned().await;
            wallet.approve(deposit).await?;
            let salt = random_salt(self.inner.payer);
            let (transaction, channel) = wallet
                .open_tx(terms.payee, deposit, salt, self.inner.authorized_signer)
                .await?;
            Ok::<_, ClientError>((tx, transaction, channel))
        }
        .await;
        let (tx, transaction, channel) = opened?;
        let signature = self.sign(channel, amount);
        reservation.signed();
        *lock(&slot.state) = Some(ChannelState {
            id: channel,
            payee: terms.payee,
            deposit,
            signed: amount,
            signature: signature.clone(),
            committed,
            spent: 0,
            accepted: 0,
        });
        let header = self.credential_header(
            challenge.clone(),
            SessionPayload::Open(OpenPayload {
                channel_id: channel,
                transaction,
                cumulative_amount: amount,
                signature,
                authorized_signer: Some(self.voucher_signer().into()),
                descriptor: None,
            }),
        );
        Ok(Prepared {
            header,
            channel,
            amount,
            topped_up: false,
            open: Some(OpenInFlight {
                _sequence: sequence,
                _tx: tx,
            }),
            _held: None,
        })
    }

    /// After an `open` credential was refused: keep the channel if the escrow has it (the
    /// server broadcast the transaction), else forget it and give its amount back to the total.
    async fn settle_failed_open(&self, slot: &Arc<Slot>, channel: B256, open: OpenInFlight) {
        let exists = match self.wallet().await {
            Ok(wallet) => wallet
                .chain
                .channel(channel)
                .await
                .map(|c| c.exists())
                .unwrap_or(true),
            Err(_) => true,
        };
        if exists {
            self.inner.counters.opens.fetch_add(1, Ordering::Relaxed);
        } else {
            // The server did not broadcast the open, but it holds the signed transaction and
            // voucher and can still broadcast them until the payer's next transaction takes the
            // nonce: the amount stays counted against the client cap, and the channel is
            // listed as closed (the slot opens a new one next time).
            let forgotten = lock(&slot.state).take();
            if let Some(state) = forgotten {
                lock(&self.inner.closed).push(ChannelSnapshot {
                    id: ChannelId::from(state.id),
                    origin: slot.key.origin.clone(),
                    payee: state.payee,
                    deposit: state.deposit,
                    signed: state.signed,
                    owed: state.spent,
                    accepted: state.accepted,
                    closed: true,
                });
            }
        }
        drop(open);
    }

    /// Pays for one request: sends it with a credential (from the cached challenge, or after an
    /// unpaid attempt's 402), and re-sends on refusals the client can fix, at most
    /// `max_payment_retries` times.
    async fn pay(
        &self,
        method: &Method,
        target: &Target,
        body: Option<Bytes>,
        charged: bool,
        stream: bool,
    ) -> Result<Paid, ClientError> {
        let mut challenge = self.cached_challenge(&target.route);
        // The unit this request counts as owed, given back unless the request is paid (also
        // when this future is dropped mid-request).
        let mut reserved: Option<Reservation> = None;
        let mut floor = 0u128;
        let mut attempts = 0u32;
        // Consecutive refusals of a voucher overtaken by a concurrent, higher one.
        let mut overtaken = 0u32;
        let result = loop {
            let (challenge_now, terms) = match challenge.take() {
                Some(c) => match self.terms(&c) {
                    Ok(terms) => (c, terms),
                    Err(error) => break Err(error),
                },
                None => {
                    let response = match self
                        .send(method, &target.url, body.clone(), None, stream)
                        .await
                    {
                        Ok(response) => response,
                        Err(error) => break Err(error),
                    };
                    // Not a 402, or a 402 with no challenge at all (not a payment challenge,
                    // as mppx reads it): the caller gets the response (a problem body becomes
                    // `ClientError::Problem`).
                    if response.status() != StatusCode::PAYMENT_REQUIRED
                        || !response.headers().contains_key(WWW_AUTHENTICATE)
                    {
                        break Ok(Paid::unpaid(response));
                    }
                    match self.select(response.headers(), target.url.as_str()) {
                        Ok(selected) => selected,
                        Err(error) => break Err(error),
                    }
                }
            };
            let slot = self.slot(&target.origin, terms.payee);
            // A fresh challenge naming another payee moves the payment to another channel: the
            // unit reserved on the first one is given back there.
            if reserved
                .as_ref()
                .is_some_and(|r| !Arc::ptr_eq(&r.slot, &slot))
            {
                reserved = None;
            }
            // Taken before the voucher is decided, once per channel (a second shared lock
            // behind a waiting close would never be granted).
            let in_flight = if charged && reserved.is_none() {
                Some(Arc::clone(&slot.in_flight).read_owned().await)
            } else {
                None
            };
            let need = if !charged {
                if stream {
                    Need::Headroom { price: terms.price }
                } else {
                    Need::Nothing
                }
            } else {
                let reserve = reserved.is_none();
                Need::Charge {
                    price: terms.price,
                    reserve,
                }
            };
            let prepared = match self
                .prepare(
                    &slot,
                    target,
                    &challenge_now,
                    terms,
                    Ask {
                        need,
                        floor,
                        hold: overtaken >= 2,
                    },
                )
                .await
            {
                Ok(prepared) => prepared,
                Err(error) => break Err(error),
            };
            if let Some(in_flight) = in_flight {
                reserved = Some(Reservation {
                    slot: Arc::clone(&slot),
                    price: terms.price,
                    kept: false,
                    _in_flight: in_flight,
                });
            }
            let mut prepared = prepared;
            if prepared.open.is_none()
                && let Some((header, amount)) =
                    self.fresher_voucher(&slot, &challenge_now, prepared.amount)
            {
                prepared.header = header;
                prepared.amount = amount;
            }
            let sent = self
                .send(
                    method,
                    &target.url,
                    body.clone(),
                    Some((&challenge_now, prepared.header.clone())),
                    stream,
                )
                .await;
            let mut open = prepared.open;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    if let Some(open) = open.take() {
                        self.settle_failed_open(&slot, prepared.channel, open).await;
                    }
                    break Err(error);
                }
            };
            let status = response.status();
            let receipt_header = response
                .headers()
                .get(PAYMENT_RECEIPT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(header) = receipt_header {
                if let Some(open) = open.take() {
                    self.inner.counters.opens.fetch_add(1, Ordering::Relaxed);
                    drop(open);
                }
                let receipt = match Receipt::from_header_value(&header) {
                    Ok(receipt) => receipt,
                    Err(error) => break Err(error.into()),
                };
                if let Err(error) = check_receipt(&slot, prepared.channel, &receipt) {
                    break Err(error);
                }
                if let Err(error) = apply_receipt(&slot, &receipt) {
                    break Err(error);
                }
                if let Some(reservation) = reserved.take() {
                    reservation.keep();
                }
                self.remember_challenge(&target.route, &challenge_now);
                return Ok(Paid {
                    response,
                    topped_up: prepared.topped_up,
                    receipt: Some(receipt),
                    channel: Some((slot, prepared.channel)),
                    terms: Some(terms),
                    challenge: Some(challenge_now),
                });
            }
            if status.is_success() {
                if let Some(open) = open.take() {
                    self.inner.counters.opens.fetch_add(1, Ordering::Relaxed);
                    drop(open);
                }
                if let Some(reservation) = reserved.take() {
                    reservation.keep();
                }
                self.remember_challenge(&target.route, &challenge_now);
                return Ok(Paid {
                    response,
                    topped_up: prepared.topped_up,
                    receipt: None,
                    channel: Some((slot, prepared.channel)),
                    terms: Some(terms),
                    challenge: Some(challenge_now),
                });
            }
            // Refused: read the problem and the fresh challenge.
            let headers = response.headers().clone();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| http_error("read problem", &target.url, &e));
            let was_open = open.is_some();
            if let Some(open) = open.take() {
                self.settle_failed_open(&slot, prepared.channel, open).await;
            }
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(error) => break Err(error),
            };
            let Some(problem) = problem_of(status, &headers, &bytes) else {
                break Err(ClientError::Problem {
                    status: status.as_u16(),
                    problem_type: String::new(),
                    detail: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
                });
            };
            let fresh = self.select(&headers, target.url.as_str()).ok();
            let current_signed = lock(&slot.state).as_ref().map_or(0, |s| s.signed);
            let retry = match problem.kind() {
                Some(ProblemKind::InvalidChallenge | ProblemKind::PaymentExpired) => true,
                Some(ProblemKind::InsufficientBalance) => match problem.required_cumulative {
                    Some(required) => {
                        floor = floor.max(required);
                        true
                    }
                    None => false,
                },
                // Overtaken by a concurrent, higher voucher of this client: send the highest
                // (holding the channel's lock from the second time on).
                Some(ProblemKind::VerificationFailed) if prepared.amount < current_signed => {
                    overtaken += 1;
                    true
                }
                Some(ProblemKind::ChannelNotFound | ProblemKind::ChannelFinalized) => {
                    if !was_open {
                        self.retire(&slot);
                    }
                    false
                }
                _ => false,
            };
            attempts += 1;
            if !retry || attempts > self.inner.config.max_payment_retries {
                break Err(problem.into_error());
            }
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            lock(&self.inner.challenges).remove(&target.route);
            challenge = fresh.map(|(c, _)| c).or(Some(challenge_now));
        };
        drop(reserved);
        result
    }

    /// The answer to `payment-need-voucher`: a voucher for `required` POSTed to the stream's
    /// URL with an empty body. Returns whether a top-up was needed.
    async fn answer_need_voucher(
        &self,
        slot: &Arc<Slot>,
        target: &Target,
        mut challenge: Challenge,
        terms: Terms,
        required: u128,
    ) -> Result<bool, ClientError> {
        let mut attempts = 0;
        loop {
            let prepared = self
                .prepare(
                    slot,
                    target,
                    &challenge,
                    terms,
                    Ask {
                        need: Need::Cumulative {
                            required,
                            price: terms.price,
                        },
                        floor: 0,
                        hold: false,
                    },
                )
                .await?;
            let response = self
                .send(
                    &Method::POST,
                    &target.url,
                    None,
                    Some((&challenge, prepared.header)),
                    false,
                )
                .await?;
            let outcome = match self.management_outcome(slot, target, response).await {
                Ok(outcome) => outcome,
                // Overtaken by a concurrent, higher voucher of this client (the server refuses
                // one below what it accepted): the next round sends the highest one.
                Err(error)
                    if error.problem_kind() == Some(ProblemKind::VerificationFailed)
                        && attempts < self.inner.config.max_payment_retries
                        && lock(&slot.state)
                            .as_ref()
                            .is_some_and(|s| s.signed > prepared.amount) =>
                {
                    attempts += 1;
                    self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(error) => return Err(error),
            };
            match outcome {
                Ok(()) => return Ok(prepared.topped_up),
                Err(fresh) if attempts < self.inner.config.max_payment_retries => {
                    attempts += 1;
                    challenge = fresh;
                }
                Err(_) => {
                    return Err(ClientError::Problem {
                        status: 402,
                        problem_type: ProblemKind::InvalidChallenge.type_uri(),
                        detail: "no challenge the server accepts for the voucher".into(),
                    });
                }
            }
        }
    }

    /// The outcome of a management POST (voucher, topUp, close): `Ok(Ok(()))` on a 2xx (its
    /// receipt applied), `Ok(Err(fresh))` when the challenge was refused and a fresh one came
    /// back, `Err` for any other refusal.
    async fn management_outcome(
        &self,
        slot: &Arc<Slot>,
        target: &Target,
        response: reqwest::Response,
    ) -> Result<Result<(), Challenge>, ClientError> {
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            if let Some(header) = headers.get(PAYMENT_RECEIPT).and_then(|v| v.to_str().ok()) {
                let receipt = Receipt::from_header_value(header)?;
                let channel = lock(&slot.state).as_ref().map(|s| s.id).unwrap_or_default();
                check_receipt(slot, channel, &receipt)?;
                apply_receipt(slot, &receipt)?;
            }
            return Ok(Ok(()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| http_error("read problem", &target.url, &e))?;
        let problem = problem_of(status, &headers, &bytes).unwrap_or(ProblemBody {
            status: status.as_u16(),
            problem_type: String::new(),
            detail: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
            required_cumulative: None,
        });
        if matches!(
            problem.kind(),
            Some(ProblemKind::InvalidChallenge | ProblemKind::PaymentExpired)
        ) && let Ok((fresh, _)) = self.select(&headers, target.url.as_str())
        {
            return Ok(Err(fresh));
        }
        Err(problem.into_error())
    }

    /// Raises the deposit of `slot`'s channel by `amount`: approve (sent and mined by the
    /// client), then a `topUp` credential carrying the signed transaction, POSTed with an empty
    /// body. The caller holds the channel's sequence lock.
    async fn top_up_locked(
        &self,
        slot: &Arc<Slot>,
        target: &Target,
        challenge: Challenge,
        amount: u128,
    ) -> Result<(), ClientError> {
        let channel =
            lock(&slot.state)
                .as_ref()
                .map(|s| s.id)
                .ok_or_else(|| ClientError::NoChannel {
                    origin: target.origin.clone(),
                })?;
        let wallet = self.wallet().await?;
        let _tx = self.inner.tx_lock.lock().await;
        wallet.approve(amount).await?;
        let transaction = wallet.top_up_tx(channel, amount).await?;
        let sent = self
            .send_top_up(slot, target, challenge, channel, transaction, amount)
            .await;
        if let Err(error) = sent {
            // The server may have broadcast the top-up and lost its answer: take the deposit
            // from the escrow, so the next voucher does not top up a second time.
            if let Ok(on_chain) = wallet.chain.channel(channel).await
                && on_chain.exists()
                && let Some(state) = lock(&slot.state).as_mut()
            {
                state.deposit = state.deposit.max(on_chain.deposit);
            }
            return Err(error);
        }
        if let Some(state) = lock(&slot.state).as_mut() {
            state.deposit = state.deposit.saturating_add(amount);
        }
        self.inner.counters.top_ups.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// POSTs the `topUp` credential (re-sent with a fresh challenge when the server asks).
    async fn send_top_up(
        &self,
        slot: &Arc<Slot>,
        target: &Target,
        mut challenge: Challenge,
        channel: B256,
        transaction: HexBytes,
        amount: u128,
    ) -> Result<(), ClientError> {
        let mut attempts = 0;
        loop {
            let header = self.credential_header(
                challenge.clone(),
                SessionPayload::TopUp(TopUpPayload {
                    channel_id: channel,
                    transaction: transaction.clone(),
                    additional_deposit: amount,
                    descriptor: None,
                }),
            );
            let response = self
                .send(
                    &Method::POST,
                    &target.url,
                    None,
                    Some((&challenge, header)),
                    false,
                )
                .await?;
            match self.management_outcome(slot, target, response).await? {
                Ok(()) => break,
                Err(fresh) if attempts < self.inner.config.max_payment_retries => {
                    attempts += 1;
                    challenge = fresh;
                }
                Err(_) => {
                    return Err(ClientError::Problem {
                        status: 402,
                        problem_type: ProblemKind::InvalidChallenge.type_uri(),
                        detail: "no challenge the server accepts for the top-up".into(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: &Method,
        url: &reqwest::Url,
        body: Option<Bytes>,
        credential: Option<(&Challenge, String)>,
        stream: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .header(ACCEPT_PAYMENT, ACCEPT_PAYMENT_VALUE);
        if stream {
            request = request.header(ACCEPT, "text/event-stream");
        } else {
            request = request.timeout(self.inner.config.http_timeout);
        }
        if let Some((challenge, header)) = credential {
            let name = HeaderName::from_bytes(challenge.credential_header().as_bytes())
                .unwrap_or(http::header::AUTHORIZATION);
            let value = HeaderValue::from_str(&header).map_err(|e| ClientError::InvalidUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        request
            .send()
            .await
            .map_err(|e| http_error("send", url, &e))
    }
}

/// A paid (or unpaid) response and the channel it was paid on.
struct Paid {
    response: reqwest::Response,
    /// Whether preparing the credential topped the channel up.
    topped_up: bool,
    receipt: Option<Receipt>,
    channel: Option<(Arc<Slot>, B256)>,
    terms: Option<Terms>,
    challenge: Option<Challenge>,
}

impl Paid {
    fn unpaid(response: reqwest::Response) -> Self {
        Self {
            response,
            topped_up: false,
            receipt: None,
            channel: None,
            terms: None,
            challenge: None,
        }
    }
}

fn snapshot(slot: &Slot, closed: bool) -> Option<ChannelSnapshot> {
    let state = lock(&slot.state);
    let state = state.as_ref()?;
    Some(ChannelSnapshot {
        id: ChannelId::from(state.id),
        origin: slot.key.origin.clone(),
        payee: state.payee,
        deposit: state.deposit,
        signed: state.signed,
        owed: state.spent,
        accepted: state.accepted,
        closed,
    })
}

/// A receipt must name the channel paid on and never report more accepted than was signed.
fn check_receipt(slot: &Slot, channel: B256, receipt: &Receipt) -> Result<(), ClientError> {
    if receipt.channel_id() != channel {
        return Err(ClientError::InvalidReceipt {
            channel,
            reason: format!("it names channel {}", receipt.channel_id()),
        });
    }
    let signed = lock(&slot.state).as_ref().map_or(0, |s| s.signed);
    if receipt.accepted_cumulative() > signed {
        return Err(ClientError::InvalidReceipt {
            channel,
            reason: format!(
                "acceptedCumulative {} is above the highest signed voucher {signed}",
                receipt.accepted_cumulative()
            ),
        });
    }
    Ok(())
}

/// A raise of the client-wide signed total, reserved before a voucher is signed; given back on
/// drop unless the voucher was signed.
struct TotalReservation<'a> {
    total: &'a Mutex<u128>,
    reserved: u128,
    back_to: u128,
    signed: bool,
}

impl TotalReservation<'_> {
    /// The voucher was signed: the raise stays.
    fn signed(mut self) {
        self.signed = true;
    }
}

impl Drop for TotalReservation<'_> {
    fn drop(&mut self) {
        if !self.signed {
            let mut total = lock(self.total);
            *total = total
                .saturating_sub(self.reserved)
                .saturating_add(self.back_to);
        }
    }
}

/// One unit a charged request counts as owed on its channel while it is in flight. Given back
/// on drop unless [`Reservation::keep`] was called: a request that fails, moves to another
/// channel, or whose future is dropped (a cancelled task) leaves nothing owed behind; what the
/// server did charge comes back through its receipts (`spent`, `acceptedCumulative`).
struct Reservation {
    slot: Arc<Slot>,
    price: u128,
    kept: bool,
    /// Keeps a close of the channel waiting until the request has its answer.
    _in_flight: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Reservation {
    /// The request was paid: the unit stays owed.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept
            && let Some(state) = lock(&self.slot.state).as_mut()
        {
            state.committed = state.committed.saturating_sub(self.price);
        }
    }
}

fn apply_receipt(slot: &Slot, receipt: &Receipt) -> Result<(), ClientError> {
    let mut guard = lock(&slot.state);
    let Some(state) = guard.as_mut() else {
        return Ok(());
    };
    if receipt.channel_id() != state.id {
        return Err(ClientError::InvalidReceipt {
            channel: state.id,
            reason: format!("it names channel {}", receipt.channel_id()),
        });
    }
    if receipt.accepted_cumulative() > state.signed {
        return Err(ClientError::InvalidReceipt {
            channel: state.id,
            reason: format!(
                "acceptedCumulative {} is above the highest signed voucher {}",
                receipt.accepted_cumulative(),
                state.signed
            ),
        });
    }
    state.spent = state.spent.max(receipt.spent());
    state.accepted = state.accepted.max(receipt.accepted_cumulative());
    state.committed = state.committed.max(receipt.spent());
    Ok(())
}

/// `requiredCumulative` of a `payment-need-voucher` event (all four fields must be decimal
/// strings, as mppx's client requires).
fn need_voucher_amount(data: &str) -> Result<u128, ClientError> {
    let invalid = |reason: &str| {
        ClientError::Protocol(ProtocolError::InvalidJson {
            field: "payment-need-voucher",
            reason: reason.to_owned(),
        })
    };
    let json: Value = serde_json::from_str(data).map_err(|e| invalid(&e.to_string()))?;
    for field in ["channelId", "acceptedCumulative", "deposit"] {
        if !json.get(field).is_some_and(Value::is_string) {
            return Err(invalid(&format!("`{field}` must be a string")));
        }
    }
    json.get("requiredCumulative")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u128>().ok())
        .ok_or_else(|| invalid("`requiredCumulative` must be a decimal string"))
}
