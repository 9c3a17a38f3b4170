//! Metered server-sent events: one unit charged per event, pausing for vouchers.
//!
//! A handler behind a [`PaymentLayer::metered`](super::PaymentLayer::metered) route takes an
//! [`SseMeter`] and turns its content stream into the response with [`SseMeter::stream`].
//! Before each content event is sent the meter charges one unit of the route's price. When the
//! accepted vouchers do not cover it, the stream sends `event: payment-need-voucher` (mppx's
//! data: `{"channelId","requiredCumulative","acceptedCumulative","deposit"}`) and pauses until
//! a voucher, POSTed with an empty body to the same URL on another connection, raises the
//! channel's accepted amount; the wait is woken by the store's change feed (no polling). If no
//! voucher comes within [`PaymentOptions::stream_voucher_wait`], or the channel closes, the
//! stream ends with `event: payment-error` (data: the RFC 9457 problem JSON). A stream whose
//! content ends sends a final `event: payment-receipt` with the receipt JSON.
//!
//! The stream is pulled by the connection: an event is charged only when the client's
//! connection takes the previous one, so a consumer that stops reading stops being charged and
//! holds no task, only its connection. Dropping the connection drops the stream (and any wait).
//!
//! [`PaymentOptions::stream_voucher_wait`]: super::PaymentOptions::stream_voucher_wait

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use tokio::time::Instant;

use super::problem::problem_for;
use super::service::now;
use crate::chain::ChainClient;
use crate::facade::{Engine, EngineError, Route};
use crate::protocol::{NeedVoucher, Problem, SessionReceipt, Timestamp, sse_message_event};
use crate::store::{ChannelId, ChannelRecord, ChannelStore};

/// `Content-Type` of a metered stream, as mppx sends it.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The engine operations a meter needs, object-safe so that [`SseMeter`] is not generic over
/// the store and chain types.
pub(crate) trait MeterEngine: Send + Sync + 'static {
    fn charge_units<'a>(
        &'a self,
        route: &'a Route,
        channel: &'a ChannelId,
        challenge_id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SessionReceipt, EngineError>>;

    fn wait_above<'a>(
        &'a self,
        channel: &'a ChannelId,
        above: u128,
    ) -> BoxFuture<'a, Result<ChannelRecord, EngineError>>;

    fn record(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, EngineError>;

    fn receipt_now(
        &self,
        channel: &ChannelId,
        challenge_id: &str,
        now: Timestamp,
    ) -> Result<SessionReceipt, EngineError>;
}

impl<S: ChannelStore + 'static, C: ChainClient> MeterEngine for Engine<S, C> {
    fn charge_units<'a>(
        &'a self,
        route: &'a Route,
        channel: &'a ChannelId,
        challenge_id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SessionReceipt, EngineError>> {
        Box::pin(self.charge(route, channel, 1, challenge_id, now))
    }

    fn wait_above<'a>(
        &'a self,
        channel: &'a ChannelId,
        above: u128,
    ) -> BoxFuture<'a, Result<ChannelRecord, EngineError>> {
        Box::pin(self.wait_for_accepted(channel, above))
    }

    fn record(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, EngineError> {
        self.channel(channel)
    }

    fn receipt_now(
        &self,
        channel: &ChannelId,
        challenge_id: &str,
        now: Timestamp,
    ) -> Result<SessionReceipt, EngineError> {
        self.receipt(channel, challenge_id, now)
    }
}

/// What a meter needs from its layer: the engine, the route and the wait bound.
#[derive(Clone)]
pub(crate) struct MeterContext {
    pub(crate) engine: Arc<dyn MeterEngine>,
    pub(crate) route: Arc<Route>,
    pub(crate) wait: Duration,
}

impl fmt::Debug for MeterContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeterContext")
            .field("route", self.route.price())
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// Charges a paid stream one unit per event (see the [module docs](self)). Get it with the
/// extractor (`meter: SseMeter`) or [`Payment::meter`](super::Payment::meter).
#[derive(Clone, Debug)]
pub struct SseMeter {
    ctx: MeterContext,
    channel_id: ChannelId,
    challenge_id: String,
}

fn error_event(problem: &Problem) -> Bytes {
    Bytes::from(format!(
        "event: payment-error\ndata: {}\n\n",
        problem.to_json()
    ))
}

enum Phase {
    Running,
    /// Waiting for the accepted amount to rise above `above`, with `chunk` still to send.
    Paused {
        chunk: String,
        above: u128,
        deadline: Instant,
    },
    Finished,
}

struct Metered {
    meter: SseMeter,
    content: Pin<Box<dyn Stream<Item = String> + Send>>,
    phase: Phase,
}

impl SseMeter {
    pub(crate) fn new(ctx: MeterContext, channel_id: ChannelId, challenge_id: String) -> Self {
        Self {
            ctx,
            channel_id,
            challenge_id,
        }
    }

    /// The channel being charged.
    pub fn channel_id(&self) -> ChannelId {
        self.channel_id
    }

    /// The SSE response for `content`: one `message` event per item, each charged one unit
    /// before it is sent, then the final `payment-receipt` event.
    pub fn stream<St>(self, content: St) -> Response
    where
        St: Stream<Item = String> + Send + 'static,
    {
        let body = Body::from_stream(self.events(content).map(Ok::<Bytes, Infallible>));
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(SSE_CONTENT_TYPE));
        response
    }

    /// The encoded events of the metered stream (what [`SseMeter::stream`] sends).
    pub fn events<St>(self, content: St) -> impl Stream<Item = Bytes> + Send + 'static
    where
        St: Stream<Item = String> + Send + 'static,
    {
        let state = Metered {
            meter: self,
            content: Box::pin(content),
            phase: Phase::Running,
        };
        stream::unfold(state, next_event)
    }

    /// The event for `chunk` once it is paid for, or the event that pauses or ends the stream.
    async fn pay_for(&self, chunk: String, deadline: Option<Instant>) -> (Bytes, Phase) {
        let ctx = &self.ctx;
        loop {
            let charged = ctx
                .engine
                .charge_units(&ctx.route, &self.channel_id, &self.challenge_id, now())
                .await;
            let error = match charged {
                Ok(_) => return (Bytes::from(sse_message_event(&chunk)), Phase::Running),
                Err(error) => error,
            };
            if error.insufficient_balance().is_none() {
                return (error_event(&problem_for(&error)), Phase::Finished);
            }
            let record = match ctx.engine.record(&self.channel_id) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    return (
                        error_event(&Problem::channel_not_found(None)),
                        Phase::Finished,
                    );
                }
                Err(error) => return (error_event(&problem_for(&error)), Phase::Finished),
            };
            let price = ctx.route.price().amount;
            if record.available() >= price {
                // A voucher landed between the refused charge and the read: charge again.
                continue;
            }
            let need = NeedVoucher {
                channel_id: self.channel_id,
                required_cumulative: record.spent.saturating_add(price),
                accepted_cumulative: record.accepted_cumulative,
                deposit: record.deposit,
            };
            let deadline = deadline.unwrap_or_else(|| Instant::now() + ctx.wait);
            return (
                Bytes::from(need.to_sse_event()),
                Phase::Paused {
                    chunk,
                    above: record.accepted_cumulative,
                    deadline,
                },
            );
        }
    }

    fn final_event(&self) -> Bytes {
        match self
            .ctx
            .engine
            .receipt_now(&self.channel_id, &self.challenge_id, now())
        {
            Ok(receipt) => Bytes::from(receipt.to_sse_event()),
            Err(error) => error_event(&problem_for(&error)),
        }
    }
}

async fn next_event(mut state: Metered) -> Option<(Bytes, Metered)> {
    match std::mem::replace(&mut state.phase, Phase::Finished) {
        Phase::Finished => None,
        Phase::Running => match state.content.next().await {
            None => Some((state.meter.final_event(), state)),
            Some(chunk) => {
                let (event, phase) = state.meter.pay_for(chunk, None).await;
                state.phase = phase;
                Some((event, state))
            }
        },
        Phase::Paused {
            chunk,
            above,
            deadline,
        } => {
            let ctx = &state.meter.ctx;
            let waited = tokio::time::timeout_at(
                deadline,
                ctx.engine.wait_above(&state.meter.channel_id, above),
            )
            .await;
            match waited {
                Err(_elapsed) => {
                    let problem = Problem::insufficient_balance(Some(&format!(
                        "no voucher above {above} arrived within {} ms; the stream ends",
                        ctx.wait.as_millis()
                    )));
                    Some((error_event(&problem), state))
                }
                Ok(Err(error)) => Some((error_event(&problem_for(&error)), state)),
                Ok(Ok(_)) => {
                    let (event, phase) = state.meter.pay_for(chunk, Some(deadline)).await;
                    // A voucher that raised the amount but not enough pauses again, with the
                    // same deadline: one pause is bounded in all.
                    state.phase = phase;
                    Some((event, state))
                }
            }
        }
    }
}
