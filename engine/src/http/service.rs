//! [`PaymentService`]: the payment checks around an inner service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body::Body as HttpBody;
use tower_service::Service;

use super::extract::Payment;
use super::future::ResponseFuture;
use super::idempotency::{IDEMPOTENT_REPLAYED, idempotent_request};
use super::layer::PaymentOptions;
use super::problem::{HttpError, render};
use super::sse::{MeterContext, MeterEngine};
use super::{ACCEPT_PAYMENT, PAYMENT_RECEIPT};
use crate::chain::ChainClient;
use crate::facade::{Action, Engine, IdempotentOutcome, Route};
use crate::protocol::{
    AcceptPayment, Challenge, INTENT_SESSION, METHOD_TEMPO, SessionReceipt, Timestamp,
    parse_authorization,
};
use crate::store::{ChannelId, ChannelStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const EPOCH: Timestamp = match Timestamp::from_unix_millis(0) {
    Some(epoch) => epoch,
    None => panic!("the epoch is a valid timestamp"),
};

/// The wall clock as a [`Timestamp`] (the epoch if the clock is before 1970).
pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now()).unwrap_or(EPOCH)
}

/// What the layer shares between its services: the engine, the priced route, the options.
pub(crate) struct Gate<S, C> {
    pub(crate) engine: Arc<Engine<S, C>>,
    pub(crate) route: Route,
    pub(crate) options: PaymentOptions,
    meter: MeterContext,
}

impl<S: ChannelStore + 'static, C: ChainClient> Gate<S, C> {
    pub(crate) fn new(engine: Arc<Engine<S, C>>, route: Route, options: PaymentOptions) -> Self {
        let meter = MeterContext {
            engine: Arc::clone(&engine) as Arc<dyn MeterEngine>,
            route: Arc::new(route.clone()),
            wait: options.stream_voucher_wait,
            batch: options.stream_charge_batch.max(1),
        };
        Self {
            engine,
            route,
            options,
            meter,
        }
    }
}

/// The service a [`PaymentLayer`](super::PaymentLayer) wraps around a route's handler.
pub struct PaymentService<I, S, C> {
    inner: I,
    gate: Arc<Gate<S, C>>,
}

impl<I, S, C> PaymentService<I, S, C> {
    pub(crate) fn new(inner: I, gate: Arc<Gate<S, C>>) -> Self {
        Self { inner, gate }
    }
}

impl<I: Clone, S, C> Clone for PaymentService<I, S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<I: fmt::Debug, S, C> fmt::Debug for PaymentService<I, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentService")
            .field("inner", &self.inner)
            .field("route", self.gate.route.price())
            .finish_non_exhaustive()
    }
}

impl<I, B, ResBody, S, C> Service<Request<B>> for PaymentService<I, S, C>
where
    I: Service<Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    B: HttpBody + Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    S: ChannelStore + 'static,
    C: ChainClient,
{
    type Response = Response;
    type Error = I::Error;
    type Future = ResponseFuture<I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is the fresh one; the instance that was polled ready serves this call.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let gate = Arc::clone(&self.gate);
        ResponseFuture::new(serve(gate, inner, request))
    }
}

/// Management requests get a receipt and no content: `HEAD`, or a `POST` without a body (how
/// clients send a voucher for a paused stream, a top-up or a close).
///
/// mppx's server counts a `POST` with a query string as content; its own v1 client POSTs
/// mid-stream vouchers to the stream's URL, query included, so here the body alone decides.
fn is_management<B: HttpBody>(request: &Request<B>) -> bool {
    let method = request.method();
    *method == Method::HEAD
        || (*method == Method::POST && request.body().size_hint().exact() == Some(0))
}

/// The request's `Payment` credential: `Ok(None)` when no `Authorization` header uses the
/// `Payment` scheme.
fn payment_credential(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    for value in headers.get_all(AUTHORIZATION) {
        let text = value.to_str().map_err(|_| HttpError::HeaderNotAscii {
            header: "Authorization",
        })?;
        let has_payment = text.split(',').any(|part| {
            let part = part.trim_start();
            part.get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("payment "))
        });
        if has_payment {
            return Ok(Some(text.to_owned()));
        }
    }
    Ok(None)
}

fn check_accept_payment(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(value) = headers.get(ACCEPT_PAYMENT) else {
        return Ok(());
    };
    let text = value.to_str().map_err(|_| HttpError::HeaderNotAscii {
        header: "Accept-Payment",
    })?;
    let accept = AcceptPayment::parse(text).map_err(HttpError::InvalidAcceptPayment)?;
    match accept.weight(METHOD_TEMPO, INTENT_SESSION) {
        Some(weight) if weight > 0 => Ok(()),
        _ => Err(HttpError::NoAcceptableOffer {
            offered: "tempo/session",
        }),
    }
}

fn receipt_response(status: StatusCode, receipt_header: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    add_receipt(response.headers_mut(), receipt_header);
    response
}

/// `Payment-Receipt` and `Cache-Control: private` (unless the handler chose `no-store` or
/// `private` itself): a paid response must not be served to anyone else from a cache.
fn add_receipt(headers: &mut HeaderMap, receipt_header: &str) {
    if let Ok(value) = HeaderValue::from_str(receipt_header) {
        headers.insert(PAYMENT_RECEIPT, value);
    }
    let keeps = headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("private") || v.contains("no-store")
        });
    if !keeps {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

impl<S: ChannelStore + 'static, C: ChainClient> Gate<S, C> {
    /// The channel to suggest in the fresh challenge: the open channel of the payer the
    /// credential names (its `source`, or the payer of the channel it pays on).
    fn suggestion(&self, authorization: Option<&str>) -> Option<ChannelId> {
        authorization
            .and_then(|authorization| self.payer_channel(authorization))
            .or_else(|| {
                self.options
                    .suggest_latest_channel
                    .then(|| self.engine.latest_opened_channel().ok().flatten())
                    .flatten()
            })
    }

    fn payer_channel(&self, authorization: &str) -> Option<ChannelId> {
        let credential = parse_authorization(authorization).ok()?;
        if let Some(account) = credential.source.as_ref().and_then(|d| d.eip155_account())
            && let Ok(Some(channel)) = self.engine.channel_for_payer(account.address)
        {
            return Some(channel);
        }
        let channel = credential.into_session().ok()?.payload.channel_id();
        let record = self.engine.channel(&channel).ok()??;
        self.engine.channel_for_payer(record.payer).ok()?
    }

    fn refuse(&self, error: &HttpError, authorization: Option<&str>, now: Timestamp) -> Response {
        let suggested = self.suggestion(authorization);
        let challenge: Option<Challenge> = self.engine.challenge(&self.route, now, suggested).ok();
        render(error, challenge.as_ref())
    }
}

async fn serve<I, B, ResBody, S, C>(
    gate: Arc<Gate<S, C>>,
    mut inner: I,
    mut request: Request<B>,
) -> Result<Response, I::Error>
where
    I: Service<Request<B>, Response = http::Response<ResBody>>,
    B: HttpBody,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    S: ChannelStore + 'static,
    C: ChainClient,
{
    let now = now();
    let authorization = match payment_credential(request.headers()) {
        Ok(authorization) => authorization,
        Err(error) => return Ok(gate.refuse(&error, None, now)),
    };
    if let Err(error) = check_accept_payment(request.headers()) {
        return Ok(gate.refuse(&error, authorization.as_deref(), now));
    }
    let Some(authorization) = authorization else {
        let error = HttpError::PaymentRequired {
            description: gate.route.price().description.clone(),
        };
        return Ok(gate.refuse(&error, None, now));
    };
    let engine = &gate.engine;
    if is_management(&request) {
        return Ok(
            match engine
                .authorize_management(&gate.route, &authorization, now)
                .await
            {
                Ok(authorized) => receipt_response(
                    StatusCode::NO_CONTENT,
                    &authorized.receipt.to_header_value(),
                ),
                Err(error) => gate.refuse(&error.into(), Some(&authorization), now),
            },
        );
    }

    let units = gate.options.units_per_request;
    let (parts, body) = request.into_parts();
    let idempotent = match idempotent_request(
        &parts,
        StatusCode::OK.as_u16(),
        now,
        gate.options.idempotency_retention,
    ) {
        Ok(idempotent) => idempotent,
        Err(error) => return Ok(gate.refuse(&error, Some(&authorization), now)),
    };
    request = Request::from_parts(parts, body);
    let outcome = match &idempotent {
        Some(key) => {
            engine
                .authorize_and_charge_idempotent(&gate.route, &authorization, units, now, key)
                .await
        }
        None => engine
            .authorize_and_charge(&gate.route, &authorization, units, now)
            .await
            .map(|authorized| IdempotentOutcome::Fresh(Box::new(authorized))),
    };
    let (payment, receipt_header) = match outcome {
        Err(error) => return Ok(gate.refuse(&error.into(), Some(&authorization), now)),
        Ok(IdempotentOutcome::Fresh(authorized)) => {
            if matches!(authorized.action, Action::TopUp | Action::Close) {
                return Ok(receipt_response(
                    StatusCode::NO_CONTENT,
                    &authorized.receipt.to_header_value(),
                ));
            }
            let header = authorized.receipt.to_header_value();
            let payment = Payment {
                action: authorized.action,
                channel_id: authorized.channel_id,
                challenge_id: authorized.challenge_id,
                receipt: authorized.receipt,
                units_charged: authorized.units_charged,
                replayed: false,
                meter: gate.meter.clone(),
            };
            (payment, header)
        }
        Ok(IdempotentOutcome::Replayed(recorded)) => {
            let receipt: SessionReceipt = recorded.receipt;
            let payment = Payment {
                action: Action::Voucher,
                channel_id: receipt.channel_id(),
                challenge_id: receipt.challenge_id().to_owned(),
                receipt,
                units_charged: 0,
                replayed: true,
                meter: gate.meter.clone(),
            };
            (payment, recorded.receipt_header)
        }
    };
    let replayed = payment.replayed;
    request.extensions_mut().insert(payment);
    let response = inner.call(request).await?;
    let mut response = response.map(Body::new);
    add_receipt(response.headers_mut(), &receipt_header);
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}
