//! `Idempotency-Key` on paid requests.
//!
//! The key is scoped to the credential's channel. The first charged request with a key records
//! its outcome (status and `Payment-Receipt`) in the same durable store update as its charge;
//! a later request on the same channel with the same key and the same method and target is
//! charged nothing: the handler runs again and the response carries the recorded receipt and
//! `Idempotent-Replayed: true`. The same key on a different request is refused (400
//! `bad-request`). Outcomes are kept for [`PaymentOptions::idempotency_retention`] (24 h by
//! default) and removed by [`Engine::prune_idempotency`](crate::Engine::prune_idempotency).
//!
//! [`PaymentOptions::idempotency_retention`]: super::PaymentOptions::idempotency_retention

use std::time::Duration;

use http::request::Parts;

use super::IDEMPOTENCY_KEY;
use super::problem::HttpError;
use crate::facade::{IdempotencyKey, IdempotentRequest};
use crate::protocol::Timestamp;

/// `Idempotent-Replayed: true` marks a response that replays a recorded outcome (nothing was
/// charged for it).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The idempotent request a request's `Idempotency-Key` asks for, if it has one.
pub(crate) fn idempotent_request(
    parts: &Parts,
    status: u16,
    now: Timestamp,
    retention: Duration,
) -> Result<Option<IdempotentRequest>, HttpError> {
    let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |reason| {
        HttpError::Engine(crate::EngineError::InvalidIdempotencyKey {
            len: value.len(),
            reason,
        })
    };
    if values.next().is_some() {
        return Err(invalid("more than one Idempotency-Key header"));
    }
    let text = value.to_str().map_err(|_| invalid("not visible ASCII"))?;
    let key = IdempotencyKey::parse(text)?;
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let expires = now
        .checked_add(retention)
        .map_or(i64::MAX, Timestamp::unix_millis);
    Ok(Some(IdempotentRequest {
        key,
        fingerprint: IdempotentRequest::fingerprint_of(parts.method.as_str(), target),
        status,
        expires_at_ms: u64::try_from(expires).unwrap_or(u64::MAX),
    }))
}
