//! The engine's admin routes for operators and the settlement daemon: channel introspection
//! and a forced chain refresh, behind the same bearer token as the feed ([`FeedAuth`]).
//!
//! Like [`feed_router`](super::feed::feed_router), **mount it on an admin listener only**
//! (loopback, a private network, behind mTLS), never on the public API router.
//!
//! | Route | What |
//! |---|---|
//! | `GET /channels/{id}` | the stored record as JSON (below); `404` if unknown |
//! | `POST /channels/{id}/refresh` | re-read the channel from the escrow now, merge the facts ([`Engine::refresh_channel`]), answer the record as JSON; `404` if the engine never stored the channel |
//!
//! The channel JSON: `channelId`, `acceptedCumulative`, `spent`, `units`, `deposit`,
//! `settled` (decimal strings but `units`), `status` (`opening` / `open` / `closing` /
//! `closed`), `finalized`, `closeRequestedAt` (unix seconds, 0 when none).
//!
//! Refusals: `401` with `WWW-Authenticate: Bearer …` and an empty body for a missing or wrong
//! token (checked first, in constant time); `400` for an id that is not `0x` + 64 hex digits;
//! `503` (with `Retry-After: 1`) when the escrow could not be read for a transient reason;
//! `409` when the escrow contradicts the stored record; `500` otherwise. Error bodies are
//! `{"error": "…"}`.

use std::sync::Arc;

use alloy_primitives::B256;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::feed::FeedAuth;
use crate::chain::ChainClient;
use crate::protocol::Timestamp;
use crate::session::SessionError;
use crate::store::{ChannelRecord, ChannelStatus, ChannelStore};
use crate::{Engine, EngineError};

/// The path of the refresh route (`{id}`: the channel id).
pub const REFRESH_PATH: &str = "/channels/{id}/refresh";
/// The path of the channel route.
pub const CHANNEL_PATH: &str = "/channels/{id}";

struct AdminState<S, C> {
    engine: Arc<Engine<S, C>>,
    auth: Arc<FeedAuth>,
}

impl<S, C> Clone for AdminState<S, C> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The admin router: `GET /channels/{id}` and `POST /channels/{id}/refresh` for holders of
/// `auth`'s token. Mount it on an admin listener only (see the module docs).
pub fn admin_router<S, C>(engine: Arc<Engine<S, C>>, auth: FeedAuth) -> Router
where
    S: ChannelStore + 'static,
    C: ChainClient,
{
    let state = AdminState {
        engine,
        auth: Arc::new(auth),
    };
    Router::new()
        .route(CHANNEL_PATH, get(get_channel::<S, C>))
        .route(REFRESH_PATH, post(refresh_channel::<S, C>))
        .with_state(state)
}

/// The JSON view of a channel record the admin routes answer.
pub fn channel_json(record: &ChannelRecord) -> serde_json::Value {
    serde_json::json!({
        "channelId": record.channel_id.to_string(),
        "acceptedCumulative": record.accepted_cumulative.to_string(),
        "spent": record.spent.to_string(),
        "units": record.units,
        "deposit": record.deposit.to_string(),
        "settled": record.settled.to_string(),
        "status": match record.status {
            ChannelStatus::Opening => "opening",
            ChannelStatus::Open => "open",
            ChannelStatus::Closing => "closing",
            ChannelStatus::Closed => "closed",
        },
        "finalized": record.finalized,
        "closeRequestedAt": record.close_requested_at,
    })
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

fn parse_id(id: &str) -> Option<B256> {
    let hex = id.strip_prefix("0x").filter(|h| h.len() == 64);
    hex.and_then(|_| id.parse::<B256>().ok())
}

fn bad_id() -> Response {
    error(StatusCode::BAD_REQUEST, "channel id must be 0x + 64 hex")
}

fn engine_error(e: &EngineError) -> Response {
    if e.is_retryable() {
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "the escrow is unreachable");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    match e {
        EngineError::Session(
            SessionError::ChainFactsMismatch { .. } | SessionError::ChannelNotFound { .. },
        ) => error(StatusCode::CONFLICT, &e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn get_channel<S: ChannelStore + 'static, C: ChainClient>(
    State(state): State<AdminState<S, C>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = state.auth.check(&headers) {
        return refusal.into_response();
    }
    let Some(id) = parse_id(&id) else {
        return bad_id();
    };
    match state.engine.channel(&id) {
        Ok(Some(record)) => json(StatusCode::OK, &channel_json(&record)),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown channel"),
        Err(e) => engine_error(&e),
    }
}

async fn refresh_channel<S: ChannelStore + 'static, C: ChainClient>(
    State(state): State<AdminState<S, C>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = state.auth.check(&headers) {
        return refusal.into_response();
    }
    let Some(id) = parse_id(&id) else {
        return bad_id();
    };
    let Some(now) = Timestamp::from_system_time(std::time::SystemTime::now()) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "clock before 1970");
    };
    match state.engine.refresh_channel(&id, now).await {
        Ok(Some(record)) => json(StatusCode::OK, &channel_json(&record)),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown channel"),
        Err(e) => engine_error(&e),
    }
}
