//! The [`Payment`] extractor: what the layer verified and charged, for the handler.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::sse::{MeterContext, SseMeter};
use crate::facade::Action;
use crate::protocol::SessionReceipt;
use crate::store::ChannelId;

/// The payment behind a request, put in the request extensions by the
/// [`PaymentLayer`](super::PaymentLayer) before the handler runs. Extract it in a handler
/// (`payment: Payment`), or the [`SseMeter`] for a metered stream.
#[derive(Clone, Debug)]
pub struct Payment {
    /// The action the credential carried (`Open` or `Voucher` for content requests).
    pub action: Action,
    /// The channel that paid.
    pub channel_id: ChannelId,
    /// The challenge the credential answered.
    pub challenge_id: String,
    /// The receipt the response carries (the layer adds it as `Payment-Receipt`).
    pub receipt: SessionReceipt,
    /// Units charged for this request before the handler ran (0 for a replay or a metered
    /// stream).
    pub units_charged: u64,
    /// Whether this request replays a recorded `Idempotency-Key` outcome (nothing charged).
    pub replayed: bool,
    pub(crate) meter: MeterContext,
}

impl Payment {
    /// A meter charging this request's channel one unit per event of a stream.
    pub fn meter(&self) -> SseMeter {
        SseMeter::new(
            self.meter.clone(),
            self.channel_id,
            self.challenge_id.clone(),
        )
    }
}

/// The rejection when a handler asks for a [`Payment`] on a route without a
/// [`PaymentLayer`](super::PaymentLayer): a server bug, answered 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no payment on this request: the route has no PaymentLayer")]
pub struct PaymentMissing;

impl IntoResponse for PaymentMissing {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Payment {
    type Rejection = PaymentMissing;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(PaymentMissing)
    }
}

impl<St: Send + Sync> FromRequestParts<St> for SseMeter {
    type Rejection = PaymentMissing;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Payment>()
            .map(Payment::meter)
            .ok_or(PaymentMissing)
    }
}
