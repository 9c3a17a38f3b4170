//! The one place where failures become RFC 9457 problem responses.
//!
//! Every refusal the HTTP layer sends is built here: the status is the problem type's own
//! (mppx's: 402 for what the payer can fix, 410 for a channel that is gone or closing, 400 for
//! a bad request, 500 for the server's own failures), the body is the problem JSON with the
//! id of the fresh challenge, and, as mppx does whatever the status, the response carries that
//! fresh challenge in `WWW-Authenticate` and `Cache-Control: no-store`.

use axum::body::Body;
use axum::response::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value};

use crate::chain::ChainErrorKind;
use crate::facade::EngineError;
use crate::protocol::{Challenge, Problem, ProtocolError};
use crate::session::SessionError;
use sluice_voucher::RejectReason;

/// Why the HTTP layer refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request carries no `Payment` credential.
    #[error("payment required: no Payment credential")]
    PaymentRequired {
        /// The route's description, for the problem detail.
        description: Option<String>,
    },
    /// A credential header holds bytes that are not visible ASCII.
    #[error("the {header} header is not visible ASCII")]
    HeaderNotAscii {
        /// The header.
        header: &'static str,
    },
    /// The `Accept-Payment` header does not parse.
    #[error("invalid Accept-Payment header: {0}")]
    InvalidAcceptPayment(#[source] ProtocolError),
    /// The `Accept-Payment` header rules out every offer of the route.
    #[error("Accept-Payment rules out {offered}, the only payment offered")]
    NoAcceptableOffer {
        /// The offer, `method/intent`.
        offered: &'static str,
    },
    /// The engine refused the credential or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl HttpError {
    /// The problem body for this error (without `challengeId`).
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::PaymentRequired { description } => {
                Problem::payment_required(description.as_deref())
            }
            Self::HeaderNotAscii {
                header: "Authorization",
            } => Problem::malformed_credential(Some("header is not visible ASCII")),
            Self::HeaderNotAscii { header } => {
                Problem::bad_request(Some(&format!("{header} is not visible ASCII")))
            }
            Self::InvalidAcceptPayment(error) => error.to_problem(),
            Self::NoAcceptableOffer { offered } => Problem::method_unsupported(Some(offered)),
            Self::Engine(error) => problem_for(error),
        }
    }

    /// Whether repeating the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Engine(error) if error.is_retryable())
    }
}

/// The problem body for an engine error (without `challengeId`): the type from
/// [`EngineError::problem_kind`], a detail that names values but no parser internals.
pub fn problem_for(error: &EngineError) -> Problem {
    match error {
        EngineError::Protocol(error) => error.to_problem(),
        EngineError::Signature { source, .. } => {
            Problem::invalid_signature(Some(&source.to_string()))
        }
        EngineError::Session(error) | EngineError::ChargeRefused { source: error, .. } => {
            session_problem(error)
        }
        EngineError::TxReverted { action, tx_hash } => Problem::verification_failed(Some(
            &format!("{action} transaction {tx_hash} reverted on chain"),
        )),
        EngineError::Chain(chain)
            if matches!(
                chain.kind,
                ChainErrorKind::Rejected | ChainErrorKind::InvalidTransaction
            ) =>
        {
            Problem::verification_failed(Some("the chain refused the payer's transaction"))
        }
        EngineError::InvalidIdempotencyKey { reason, .. } => {
            Problem::bad_request(Some(&format!("invalid Idempotency-Key: {reason}")))
        }
        EngineError::IdempotencyKeyReused { .. } => Problem::bad_request(Some(
            "Idempotency-Key was already used for a different request on this channel",
        )),
        _ => Problem::internal(),
    }
}

fn amounts(pairs: &[(&str, u128)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.to_string())))
        .collect()
}

fn session_problem(error: &SessionError) -> Problem {
    match error {
        SessionError::InsufficientBalance {
            required,
            available,
            required_cumulative,
            ..
        } => Problem::insufficient_balance(Some(&format!(
            "requested {required}, available {available}"
        )))
        .with_details(amounts(&[
            ("required", *required),
            ("available", *available),
            ("requiredCumulative", *required_cumulative),
        ])),
        SessionError::ChargeOverflow { .. } => {
            Problem::insufficient_balance(Some("the charge overflows"))
        }
        SessionError::ChannelNotFound { .. } => Problem::channel_not_found(None),
        SessionError::ChannelNotOpen { .. } => {
            Problem::channel_not_found(Some("the channel is not open yet"))
        }
        SessionError::ChannelFinalized { .. } => Problem::channel_finalized(None),
        SessionError::ChannelClosing { .. } => {
            Problem::channel_finalized(Some("a close request is pending"))
        }
        SessionError::Rejected { reason, .. } => {
            let text = reason.to_string();
            match reason {
                RejectReason::ChannelFinalized | RejectReason::ChannelClosing => {
                    Problem::channel_finalized(Some(&text))
                }
                RejectReason::ExceedsDeposit { .. } => Problem::amount_exceeds_deposit(Some(&text)),
                RejectReason::DeltaTooSmall { .. } => Problem::delta_too_small(Some(&text)),
                _ => Problem::verification_failed(Some(&text)),
            }
        }
        other => Problem::new(other.problem_kind(), other.to_string()),
    }
}

/// Renders a refusal: the problem's status, `Content-Type: application/problem+json`,
/// `Cache-Control: no-store`, the fresh challenge (if one could be issued) in
/// `WWW-Authenticate` and as the body's `challengeId`, and `Retry-After: 1` for transient
/// failures.
pub(crate) fn render(error: &HttpError, challenge: Option<&Challenge>) -> Response {
    let mut problem = error.to_problem();
    if let Some(challenge) = challenge {
        problem = problem.with_challenge_id(challenge.id());
    }
    let status =
        StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(problem.to_json()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c.to_header_value()).ok()) {
        headers.insert(WWW_AUTHENTICATE, value);
    }
    if error.is_retryable() {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
