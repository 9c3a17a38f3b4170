//! The settlement feed over HTTP: `GET /feed`, the remote settlement daemon's input.
//!
//! [`feed_router`] serves the store's feed (see [`crate::feed`]) to holders of a bearer token.
//! It is a separate router on purpose: **mount it on an admin listener** (loopback, a private
//! network, behind mTLS), never merge it into the public API router. Nothing in this crate
//! mounts it for you.
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<sluice_engine::store::SledStore>) -> std::io::Result<()> {
//! use sluice_engine::http::feed::{FeedAuth, feed_router};
//!
//! let auth = FeedAuth::new(std::env::var("SLUICE_FEED_TOKEN").unwrap_or_default())
//!     .expect("a feed token of at least 32 characters");
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! axum::serve(admin, feed_router(store, auth)).await
//! # }
//! ```
//!
//! The wire contract (documented in the crate README, `## http: settlement feed endpoint`):
//! `GET /feed?after=<cursor>&limit=<n>&wait_ms=<ms>` with `Authorization: Bearer <token>`
//! answers `200` with a [`FeedPageDto`] as JSON; bad parameters answer an RFC 9457
//! `bad-request` problem; a missing or wrong token answers `401` with
//! `WWW-Authenticate: Bearer realm="sluice-feed"` and an empty body.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Engine;
use crate::chain::ChainClient;
use crate::feed::{FeedCursor, FeedEntry, FeedPage, FeedSubscription};
use crate::protocol::Problem;
use crate::store::{ChannelStatus, ChannelStore, SIGNATURE_LEN, StoreError};

/// The path the feed is served at.
pub const FEED_PATH: &str = "/feed";
/// The realm named in `WWW-Authenticate: Bearer realm="…"`.
pub const FEED_REALM: &str = "sluice-feed";
/// The shortest bearer token [`FeedAuth::new`] accepts, in bytes (32 bytes of base64 carry
/// 192 bits).
pub const MIN_TOKEN_LEN: usize = 32;
/// The longest bearer token [`FeedAuth::new`] accepts, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Entries per page when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// The largest `limit` a request may ask for.
pub const MAX_PAGE_LIMIT: usize = 1000;
/// The longest long-poll a request may ask for (`wait_ms`).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Longest user-supplied text echoed back in an error.
const MAX_ECHO: usize = 64;

/// Why a feed token is refused, or a feed request failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedHttpError {
    /// The configured token is too short to be a secret.
    #[error("feed token is {len} bytes; at least {min} are required")]
    TokenTooShort {
        /// The token's length.
        len: usize,
        /// [`MIN_TOKEN_LEN`].
        min: usize,
    },
    /// The configured token is longer than any header should carry.
    #[error("feed token is {len} bytes; at most {max} are allowed")]
    TokenTooLong {
        /// The token's length.
        len: usize,
        /// [`MAX_TOKEN_LEN`].
        max: usize,
    },
    /// The configured token has a byte outside RFC 6750's `b64token` characters.
    #[error(
        "feed token byte {position} is not a bearer-token character (A-Z a-z 0-9 - . _ ~ + / =)"
    )]
    TokenInvalidChar {
        /// The byte offset of the first bad character.
        position: usize,
    },
    /// A query parameter is not a canonical decimal number that fits its type.
    #[error("query parameter `{name}` is not a decimal number in range: {value:?}")]
    InvalidNumber {
        /// The parameter.
        name: &'static str,
        /// The value given (cut to 64 characters).
        value: String,
    },
    /// `limit` is zero or above [`MAX_PAGE_LIMIT`].
    #[error("limit {limit} is outside 1..={max}")]
    LimitOutOfRange {
        /// The limit asked for.
        limit: u64,
        /// [`MAX_PAGE_LIMIT`].
        max: usize,
    },
    /// `wait_ms` is above [`MAX_WAIT`].
    #[error("wait_ms {wait_ms} exceeds the maximum of {max_ms}")]
    WaitTooLong {
        /// The wait asked for, in milliseconds.
        wait_ms: u64,
        /// [`MAX_WAIT`] in milliseconds.
        max_ms: u64,
    },
    /// The query names a parameter the endpoint does not know.
    #[error("unknown query parameter {name:?} (known: after, limit, wait_ms)")]
    UnknownParameter {
        /// The parameter name (cut to 64 characters).
        name: String,
    },
    /// The query names a parameter twice.
    #[error("query parameter `{name}` is given more than once")]
    DuplicateParameter {
        /// The parameter.
        name: &'static str,
    },
    /// The store could not read the feed.
    #[error("reading the feed failed: {0}")]
    Store(#[from] StoreError),
}

impl FeedHttpError {
    /// The RFC 9457 problem a client receives for this error: `bad-request` for parameters,
    /// `internal` (with no detail from the store) for store failures.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Store(_) => Problem::internal(),
            other => Problem::bad_request(Some(&other.to_string())),
        }
    }
}

impl IntoResponse for FeedHttpError {
    fn into_response(self) -> Response {
        problem_response(&self.problem())
    }
}

fn problem_response(problem: &Problem) -> Response {
    let status =
        StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, problem.to_json()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn cut(text: &str) -> String {
    text.chars().take(MAX_ECHO).collect()
}

/// The bearer token that guards the feed.
///
/// Only the token's SHA-256 digest is kept; a presented token is hashed and the digests are
/// compared in constant time (`subtle`), so neither the content nor the length of the token
/// leaks through response timing. `Debug` does not print it.
#[derive(Clone)]
pub struct FeedAuth {
    digest: [u8; 32],
}

impl std::fmt::Debug for FeedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedAuth { .. }")
    }
}

impl FeedAuth {
    /// Guards the feed with `token`: [`MIN_TOKEN_LEN`]–[`MAX_TOKEN_LEN`] bytes of RFC 6750
    /// `b64token` characters (`A-Z a-z 0-9 - . _ ~ + / =`), e.g. 32 random bytes in base64url.
    pub fn new(token: impl AsRef<str>) -> Result<Self, FeedHttpError> {
        let token = token.as_ref().as_bytes();
        if token.len() < MIN_TOKEN_LEN {
            return Err(FeedHttpError::TokenTooShort {
                len: token.len(),
                min: MIN_TOKEN_LEN,
            });
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(FeedHttpError::TokenTooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        if let Some(position) = token.iter().position(|&b| !is_token_byte(b)) {
            return Err(FeedHttpError::TokenInvalidChar { position });
        }
        Ok(Self {
            digest: Sha256::digest(token).into(),
        })
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }

    /// Checks the `Authorization` header of a request.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Unauthorized> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Unauthorized::NoToken);
        };
        let value = value.as_bytes();
        // `Bearer` is case-insensitive (RFC 7235 auth-scheme) and followed by one or more spaces.
        let Some(rest) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return Err(Unauthorized::NoToken);
        };
        let presented = rest.trim_ascii();
        if self.verify(presented) {
            Ok(())
        } else {
            Err(Unauthorized::InvalidToken)
        }
    }
}

const fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// A refused request: `401` with a `Bearer` challenge and an empty body (RFC 6750 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unauthorized {
    /// No `Authorization: Bearer` header (absent, another scheme, or repeated).
    NoToken,
    /// A bearer token that is not the configured one.
    InvalidToken,
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let challenge = match self {
            Self::NoToken => HeaderValue::from_static(r#"Bearer realm="sluice-feed""#),
            Self::InvalidToken => {
                HeaderValue::from_static(r#"Bearer realm="sluice-feed", error="invalid_token""#)
            }
        };
        let mut response = (StatusCode::UNAUTHORIZED, Body::empty()).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// What the feed endpoint reads from: a [`ChannelStore`] or an [`Engine`].
///
/// Object safe, so the router holds one `Arc<dyn FeedSource>` whatever the store type.
pub trait FeedSource: Send + Sync + 'static {
    /// Up to `limit` durable entries after `after` (see [`ChannelStore::read_feed`]).
    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError>;
    /// A wake-up handle for new durable entries (see [`ChannelStore::subscribe_feed`]).
    fn subscribe_feed(&self) -> FeedSubscription;
}

impl<S: ChannelStore + 'static> FeedSource for S {
    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError> {
        ChannelStore::read_feed(self, after, limit)
    }

    fn subscribe_feed(&self) -> FeedSubscription {
        ChannelStore::subscribe_feed(self)
    }
}

impl<S: ChannelStore + 'static, C: ChainClient> FeedSource for Engine<S, C> {
    fn read_feed(&self, after: FeedCursor, limit: usize) -> Result<FeedPage, StoreError> {
        self.store().read_feed(after, limit)
    }

    fn subscribe_feed(&self) -> FeedSubscription {
        self.store().subscribe_feed()
    }
}

#[derive(Clone)]
struct FeedState {
    source: Arc<dyn FeedSource>,
    auth: Arc<FeedAuth>,
}

/// The router serving `GET /feed` from `source` to holders of `auth`'s token.
///
/// Mount it on an admin listener only (see the module docs). The handler reads the store on the
/// request's task (sled reads of at most [`MAX_PAGE_LIMIT`] entries); a long poll waits on
/// [`FeedSource::subscribe_feed`] and holds no thread.
pub fn feed_router<F: FeedSource>(source: Arc<F>, auth: FeedAuth) -> Router {
    let state = FeedState {
        source,
        auth: Arc::new(auth),
    };
    Router::new()
        .route(FEED_PATH, get(serve_feed))
        .with_state(state)
}

async fn serve_feed(
    State(state): State<FeedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // Authenticate before looking at anything else the caller sent.
    if let Err(refusal) = state.auth.check(&headers) {
        return refusal.into_response();
    }
    let query = match FeedQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    match read_page(state.source.as_ref(), query).await {
        Ok(page) => {
            let body = serde_json::to_vec(&FeedPageDto::from(&page));
            match body {
                Ok(body) => {
                    let mut response = (StatusCode::OK, body).into_response();
                    let headers = response.headers_mut();
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
                Err(_) => problem_response(&Problem::internal()),
            }
        }
        Err(error) => error.into_response(),
    }
}

/// Reads one page; when it is empty and the request allows it, waits (up to `wait`) for a
/// durable entry past `after` and reads again.
async fn read_page(source: &dyn FeedSource, query: FeedQuery) -> Result<FeedPage, FeedHttpError> {
    let page = source.read_feed(query.after, query.limit)?;
    if !page.entries.is_empty() || query.wait.is_zero() {
        return Ok(page);
    }
    // Subscribing after the read loses nothing: the subscription compares the store's durable
    // watermark, which already covers any entry written since the read.
    let mut subscription = source.subscribe_feed();
    match tokio::time::timeout(query.wait, subscription.wait_beyond(query.after)).await {
        Ok(Some(_)) => Ok(source.read_feed(query.after, query.limit)?),
        // Timed out, or the store shut down: the empty page stands.
        Ok(None) | Err(_) => Ok(page),
    }
}

/// The parsed query of `GET /feed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FeedQuery {
    after: FeedCursor,
    limit: usize,
    wait: Duration,
}

impl FeedQuery {
    fn parse(query: &str) -> Result<Self, FeedHttpError> {
        let (mut after, mut limit, mut wait_ms) = (None, None, None);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, name): (&mut Option<u64>, &'static str) = match name {
                "after" => (&mut after, "after"),
                "limit" => (&mut limit, "limit"),
                "wait_ms" => (&mut wait_ms, "wait_ms"),
                other => {
                    return Err(FeedHttpError::UnknownParameter { name: cut(other) });
                }
            };
            if slot.is_some() {
                return Err(FeedHttpError::DuplicateParameter { name });
            }
            *slot = Some(parse_decimal(name, value)?);
        }
        let limit = match limit {
            None => DEFAULT_PAGE_LIMIT,
            Some(limit) => usize::try_from(limit)
                .ok()
                .filter(|limit| (1..=MAX_PAGE_LIMIT).contains(limit))
                .ok_or(FeedHttpError::LimitOutOfRange {
                    limit,
                    max: MAX_PAGE_LIMIT,
                })?,
        };
        let wait_ms = wait_ms.unwrap_or(0);
        let max_ms = MAX_WAIT.as_millis() as u64;
        if wait_ms > max_ms {
            return Err(FeedHttpError::WaitTooLong { wait_ms, max_ms });
        }
        Ok(Self {
            after: FeedCursor::new(after.unwrap_or(0)),
            limit,
            wait: Duration::from_millis(wait_ms),
        })
    }
}

/// A query number: a canonical unsigned decimal (`0` or digits without a leading zero).
fn parse_decimal<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
) -> Result<T, FeedHttpError> {
    canonical_decimal(value).ok_or_else(|| FeedHttpError::InvalidNumber {
        name,
        value: cut(value),
    })
}

/// One page of the feed as JSON: what `GET /feed` answers and what a remote daemon reads.
///
/// ```json
/// { "entries": [ { "cursor": "42", "channelId": "0x…", … } ], "next": "42" }
/// ```
///
/// Continue with `?after=<next>`. An empty `entries` means the reader is caught up (`next` is
/// then the `after` it sent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedPageDto {
    /// Entries in ascending cursor order, at most one per channel.
    pub entries: Vec<FeedEntryDto>,
    /// The cursor to read after next, a decimal string.
    #[serde(with = "decimal_cursor")]
    pub next: FeedCursor,
}

/// One channel's latest voucher and chain facts, as JSON.
///
/// Amounts and cursors are decimal strings (they exceed JavaScript's safe integers); ids,
/// addresses and the signature are `0x` hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEntryDto {
    /// The entry's feed position (decimal string).
    #[serde(with = "decimal_cursor")]
    pub cursor: FeedCursor,
    /// The channel id (`0x` + 64 hex digits).
    pub channel_id: B256,
    /// The highest accepted voucher amount, base units (decimal string).
    #[serde(with = "decimal_u128")]
    pub cumulative_amount: u128,
    /// That voucher's 65-byte `r ‖ s ‖ v` signature (`0x` + 130 hex digits), `null` when the
    /// channel has no voucher (`cumulativeAmount` is then `"0"`).
    #[serde(with = "voucher_signature")]
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    /// `"opening"`, `"open"`, `"closing"` or `"closed"` when the entry was written.
    #[serde(with = "status_name")]
    pub status: ChannelStatus,
    /// Chain fact: the payer.
    pub payer: Address,
    /// Chain fact: the payee.
    pub payee: Address,
    /// Chain fact: the token.
    pub token: Address,
    /// Chain fact: the authorized signer (the zero address: the payer signs).
    pub authorized_signer: Address,
    /// Chain fact: the deposit as last seen (decimal string).
    #[serde(with = "decimal_u128")]
    pub deposit: u128,
    /// Chain fact: the settled amount as last seen (decimal string).
    #[serde(with = "decimal_u128")]
    pub settled: u128,
    /// Chain fact: unix seconds of a pending close request, 0 when none (a JSON number).
    pub close_requested_at: u64,
}

impl From<&FeedEntry> for FeedEntryDto {
    fn from(entry: &FeedEntry) -> Self {
        Self {
            cursor: entry.cursor,
            channel_id: entry.channel_id,
            cumulative_amount: entry.cumulative_amount,
            signature: (entry.signature != [0; SIGNATURE_LEN]).then_some(entry.signature),
            status: entry.status,
            payer: entry.payer,
            payee: entry.payee,
            token: entry.token,
            authorized_signer: entry.authorized_signer,
            deposit: entry.deposit,
            settled: entry.settled,
            close_requested_at: entry.close_requested_at,
        }
    }
}

impl From<FeedEntryDto> for FeedEntry {
    fn from(dto: FeedEntryDto) -> Self {
        Self {
            cursor: dto.cursor,
            channel_id: dto.channel_id,
            cumulative_amount: dto.cumulative_amount,
            signature: dto.signature.unwrap_or([0; SIGNATURE_LEN]),
            status: dto.status,
            payer: dto.payer,
            payee: dto.payee,
            token: dto.token,
            authorized_signer: dto.authorized_signer,
            deposit: dto.deposit,
            settled: dto.settled,
            close_requested_at: dto.close_requested_at,
        }
    }
}

impl From<&FeedPage> for FeedPageDto {
    fn from(page: &FeedPage) -> Self {
        Self {
            entries: page.entries.iter().map(FeedEntryDto::from).collect(),
            next: page.next,
        }
    }
}

impl From<FeedPageDto> for FeedPage {
    fn from(dto: FeedPageDto) -> Self {
        Self {
            entries: dto.entries.into_iter().map(FeedEntry::from).collect(),
            next: dto.next,
        }
    }
}

/// Canonical decimal strings (`0` or no leading zero) for integers wider than JSON can carry.
fn canonical_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

mod decimal_u128 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::canonical_decimal(&text)
            .ok_or_else(|| D::Error::custom("expected a canonical decimal string of a u128"))
    }
}

mod decimal_cursor {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::feed::FeedCursor;

    pub(super) fn serialize<S: Serializer>(
        cursor: &FeedCursor,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&cursor.get())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<FeedCursor, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::canonical_decimal(&text)
            .map(FeedCursor::new)
            .ok_or_else(|| D::Error::custom("expected a cursor as a canonical decimal string"))
    }
}

mod voucher_signature {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::store::SIGNATURE_LEN;

    pub(super) fn serialize<S: Serializer>(
        signature: &Option<[u8; SIGNATURE_LEN]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match signature {
            Some(bytes) => serializer.serialize_str(&alloy_primitives::hex::encode_prefixed(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<[u8; SIGNATURE_LEN]>, D::Error> {
        let Some(text) = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)? else {
            return Ok(None);
        };
        let mut bytes = [0u8; SIGNATURE_LEN];
        text.strip_prefix("0x")
            .and_then(|digits| alloy_primitives::hex::decode_to_slice(digits, &mut bytes).ok())
            .ok_or_else(|| D::Error::custom("expected a 65-byte signature as 0x hex"))?;
        Ok(Some(bytes))
    }
}

mod status_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::store::ChannelStatus;

    pub(super) fn serialize<S: Serializer>(
        status: &ChannelStatus,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match status {
            ChannelStatus::Opening => "opening",
            ChannelStatus::Open => "open",
            ChannelStatus::Closing => "closing",
            ChannelStatus::Closed => "closed",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ChannelStatus, D::Error> {
        match &*<std::borrow::Cow<'de, str>>::deserialize(deserializer)? {
            "opening" => Ok(ChannelStatus::Opening),
            "open" => Ok(ChannelStatus::Open),
            "closing" => Ok(ChannelStatus::Closing),
            "closed" => Ok(ChannelStatus::Closed),
            other => Err(D::Error::custom(format!(
                "unknown channel status {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn token_rules() {
        assert!(matches!(
            FeedAuth::new("short"),
            Err(FeedHttpError::TokenTooShort { len: 5, min: 32 })
        ));
        assert!(matches!(
            FeedAuth::new("x".repeat(MAX_TOKEN_LEN + 1)),
            Err(FeedHttpError::TokenTooLong { .. })
        ));
        let spaced = format!("{} {}", &TOKEN[..16], &TOKEN[16..]);
        assert!(matches!(
            FeedAuth::new(spaced),
            Err(FeedHttpError::TokenInvalidChar { position: 16 })
        ));
        assert!(FeedAuth::new(TOKEN).is_ok());
        assert!(FeedAuth::new("A-Z.a_z~0+9/xxxxxxxxxxxxxxxxxxxxxxxxxx==").is_ok());
        assert_eq!(
            format!("{:?}", FeedAuth::new(TOKEN).unwrap()),
            "FeedAuth { .. }"
        );
    }

    #[test]
    fn verify_compares_whole_tokens() {
        let auth = FeedAuth::new(TOKEN).unwrap();
        assert!(auth.verify(TOKEN.as_bytes()));
        let mut flipped = TOKEN.as_bytes().to_vec();
        flipped[31] ^= 1;
        assert!(!auth.verify(&flipped), "same length, last byte differs");
        assert!(!auth.verify(&TOKEN.as_bytes()[..31]), "a prefix");
        assert!(!auth.verify(format!("{TOKEN}0").as_bytes()), "an extension");
        assert!(!auth.verify(b""));
    }

    #[test]
    fn authorization_header_forms() {
        let auth = FeedAuth::new(TOKEN).unwrap();
        assert_eq!(auth.check(&headers(&format!("Bearer {TOKEN}"))), Ok(()));
        assert_eq!(auth.check(&headers(&format!("bEARER   {TOKEN}"))), Ok(()));
        assert_eq!(auth.check(&HeaderMap::new()), Err(Unauthorized::NoToken));
        assert_eq!(
            auth.check(&headers(&format!("Basic {TOKEN}"))),
            Err(Unauthorized::NoToken)
        );
        assert_eq!(auth.check(&headers(TOKEN)), Err(Unauthorized::NoToken));
        assert_eq!(
            auth.check(&headers(&format!("Bearer{TOKEN}"))),
            Err(Unauthorized::NoToken)
        );
        assert_eq!(
            auth.check(&headers("Bearer 0123456789abcdef0123456789abcdeX")),
            Err(Unauthorized::InvalidToken)
        );
        let mut twice = headers(&format!("Bearer {TOKEN}"));
        twice.append(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
        );
        assert_eq!(auth.check(&twice), Err(Unauthorized::NoToken));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            FeedQuery::parse("").unwrap(),
            FeedQuery {
                after: FeedCursor::ZERO,
                limit: DEFAULT_PAGE_LIMIT,
                wait: Duration::ZERO
            }
        );
        assert_eq!(
            FeedQuery::parse("after=17&limit=1000&wait_ms=30000").unwrap(),
            FeedQuery {
                after: FeedCursor::new(17),
                limit: 1000,
                wait: MAX_WAIT
            }
        );
        assert_eq!(
            FeedQuery::parse(&format!("after={}", u64::MAX))
                .unwrap()
                .after,
            FeedCursor::new(u64::MAX)
        );
        for (query, expected) in [
            ("after=-1", "InvalidNumber"),
            ("after=01", "InvalidNumber"),
            ("after=", "InvalidNumber"),
            ("after", "InvalidNumber"),
            ("after=%31", "InvalidNumber"),
            ("after=18446744073709551616", "InvalidNumber"),
            ("limit=0", "LimitOutOfRange"),
            ("limit=1001", "LimitOutOfRange"),
            ("limit=1e3", "InvalidNumber"),
            ("wait_ms=30001", "WaitTooLong"),
            ("cursor=5", "UnknownParameter"),
            ("after=1&after=2", "DuplicateParameter"),
        ] {
            let error = FeedQuery::parse(query).expect_err(query);
            assert!(
                format!("{error:?}").starts_with(expected),
                "{query}: {error:?}"
            );
            assert_eq!(error.problem().status(), 400, "{query}");
        }
        let long = "x".repeat(500);
        let FeedHttpError::UnknownParameter { name } = FeedQuery::parse(&long).unwrap_err() else {
            panic!("unknown parameter expected");
        };
        assert_eq!(name.len(), MAX_ECHO);
    }

    #[test]
    fn dto_round_trips_and_rejects_bad_fields() {
        let entry = FeedEntry {
            cursor: FeedCursor::new(u64::MAX),
            channel_id: B256::repeat_byte(0xab),
            cumulative_amount: u128::MAX,
            signature: [7; SIGNATURE_LEN],
            status: ChannelStatus::Closing,
            payer: Address::repeat_byte(1),
            payee: Address::repeat_byte(2),
            token: Address::repeat_byte(3),
            authorized_signer: Address::ZERO,
            deposit: u128::MAX,
            settled: 5,
            close_requested_at: 1_700_000_000,
        };
        let page = FeedPage {
            entries: vec![entry],
            next: entry.cursor,
        };
        let json = serde_json::to_value(FeedPageDto::from(&page)).unwrap();
        assert_eq!(json["next"], u64::MAX.to_string());
        assert_eq!(
            json["entries"][0]["cumulativeAmount"],
            u128::MAX.to_string()
        );
        assert_eq!(json["entries"][0]["status"], "closing");
        assert_eq!(
            json["entries"][0]["signature"],
            format!("0x{}", "07".repeat(65))
        );
        let back: FeedPageDto = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(FeedPage::from(back), page);

        let mut no_voucher = entry;
        no_voucher.signature = [0; SIGNATURE_LEN];
        no_voucher.cumulative_amount = 0;
        let dto = FeedEntryDto::from(&no_voucher);
        assert_eq!(dto.signature, None);
        assert_eq!(
            serde_json::to_value(&dto).unwrap()["signature"],
            serde_json::Value::Null
        );

        for (field, bad) in [
            ("cumulativeAmount", serde_json::json!("01")),
            ("cumulativeAmount", serde_json::json!(5)),
            (
                "deposit",
                serde_json::json!("340282366920938463463374607431768211456"),
            ),
            ("cursor", serde_json::json!("-1")),
            ("signature", serde_json::json!("0x1234")),
            ("signature", serde_json::json!("07".repeat(65))),
            ("status", serde_json::json!("settled")),
        ] {
            let mut bad_json = json["entries"][0].clone();
            bad_json[field] = bad;
            assert!(
                serde_json::from_value::<FeedEntryDto>(bad_json).is_err(),
                "{field}"
            );
        }
    }
}
