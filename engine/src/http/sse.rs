//! Metered server-sent events: one unit charged per event (durably, one by one or in batches),
//! pausing for vouchers.
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
//! **Batches.** With [`PaymentOptions::stream_charge_batch`] K > 1 the meter charges up to K
//! units the vouchers cover in one durable update (its reservation) when the reservation is
//! empty, sends that many events without touching the store, and gives the unused rest back
//! with one durable update when the stream ends (before the final receipt; from a spawned task
//! if the stream is dropped). Receipts and need-voucher events report what was served, never
//! the reservation. A crash leaves at most K units charged but unserved (K = 1: the one unit
//! of the event in flight, as before); other requests on the channel see the reservation as
//! spent while it is held.
//!
//! [`PaymentOptions::stream_voucher_wait`]: super::PaymentOptions::stream_voucher_wait
//! [`PaymentOptions::stream_charge_batch`]: super::PaymentOptions::stream_charge_batch

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
use crate::facade::{Engine, EngineError, Route, receipt_for};
use crate::protocol::{NeedVoucher, Problem, Timestamp, sse_message_event};
use crate::session::SessionError;
use crate::store::{ChannelId, ChannelRecord, ChannelStore};

/// `Content-Type` of a metered stream, as mppx sends it.
pub const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reservation applied to the store, its durability still pending.
pub(crate) struct PendingReservation {
    /// Units charged (0 only when the meter asked for none).
    pub(crate) units: u64,
    /// Resolves with the durable record once the charge is durable.
    pub(crate) durable: BoxFuture<'static, Result<ChannelRecord, EngineError>>,
}

/// The engine operations a meter needs, object-safe so that [`SseMeter`] is not generic over
/// the store and chain types.
pub(crate) trait MeterEngine: Send + Sync + 'static {
    /// Charges up to `max_units` (at least one) in one update; applied, durability pending.
    fn reserve(
        &self,
        route: &Route,
        channel: &ChannelId,
        max_units: u64,
        now: Timestamp,
    ) -> Result<PendingReservation, EngineError>;

    /// Gives back `units` charged but not served; resolves once durable.
    fn release_units<'a>(
        &'a self,
        route: &'a Route,
        channel: &'a ChannelId,
        units: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<ChannelRecord, EngineError>>;

    fn wait_above<'a>(
        &'a self,
        channel: &'a ChannelId,
        above: u128,
    ) -> BoxFuture<'a, Result<ChannelRecord, EngineError>>;

    fn record(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, EngineError>;
}

impl<S: ChannelStore + 'static, C: ChainClient> MeterEngine for Engine<S, C> {
    fn reserve(
        &self,
        route: &Route,
        channel: &ChannelId,
        max_units: u64,
        now: Timestamp,
    ) -> Result<PendingReservation, EngineError> {
        let pending = self.charge_up_to_pending(route, channel, max_units, now)?;
        let units = pending.committed().value;
        let channel = *channel;
        Ok(PendingReservation {
            units,
            durable: Box::pin(async move {
                let committed = pending.durable().await?;
                committed
                    .record
                    .ok_or(EngineError::Session(SessionError::ChannelNotFound {
                        channel,
                    }))
            }),
        })
    }

    fn release_units<'a>(
        &'a self,
        route: &'a Route,
        channel: &'a ChannelId,
        units: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<ChannelRecord, EngineError>> {
        Box::pin(self.release(route, channel, units, now))
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
}

/// What a meter needs from its layer: the engine, the route, the wait bound and the batch size.
#[derive(Clone)]
pub(crate) struct MeterContext {
    pub(crate) engine: Arc<dyn MeterEngine>,
    pub(crate) route: Arc<Route>,
    pub(crate) wait: Duration,
    /// Units charged per durable update (at least 1).
    pub(crate) batch: u64,
}

impl fmt::Debug for MeterContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeterContext")
            .field("route", self.route.price())
            .field("wait", &self.wait)
            .field("batch", &self.batch)
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

/// Units a stream has charged but not yet served. Dropping it with units left (the stream
/// ended without giving them back, e.g. the client disconnected) gives them back from a
/// spawned task.
struct Reservation {
    ctx: MeterContext,
    channel_id: ChannelId,
    units: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let units = std::mem::take(&mut self.units);
        if units == 0 {
            return;
        }
        // Without a runtime (not the case under a server) the units stay charged: at most
        // K − 1 units, within vouchers the payer signed, as after a crash.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::clone(&self.ctx.engine);
        let route = Arc::clone(&self.ctx.route);
        let channel = self.channel_id;
        runtime.spawn(async move {
            // A failed release leaves the units charged (as a crash would); nothing else to do.
            let _released = engine.release_units(&route, &channel, units, now()).await;
        });
    }
}

struct Metered {
    meter: SseMeter,
    content: Pin<Box<dyn Stream<Item = String> + Send>>,
    phase: Phase,
    reservation: Reservation,
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

    /// Units charged per durable store update (the route's batch size, 1 unless the layer was
    /// built with [`PaymentLayer::charge_batch`](super::PaymentLayer::charge_batch)).
    pub fn charge_batch(&self) -> u64 {
        self.ctx.batch
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
        let reservation = Reservation {
            ctx: self.ctx.clone(),
            channel_id: self.channel_id,
            units: 0,
        };
        let state = Metered {
            meter: self,
            content: Box::pin(content),
            phase: Phase::Running,
            reservation,
        };
        stream::unfold(state, next_event)
    }

    /// A receipt for what was served: `record` minus the `reserved` units not yet served.
    fn served_receipt(&self, record: &ChannelRecord, reserved: u64) -> Result<Bytes, EngineError> {
        let held = self
            .ctx
            .route
            .price()
            .amount
            .saturating_mul(u128::from(reserved));
        let mut served = *record;
        served.spent = record.spent.saturating_sub(held);
        served.units = record.units.saturating_sub(reserved);
        let receipt = receipt_for(&served, &self.challenge_id, now(), None)?;
        Ok(Bytes::from(receipt.to_sse_event()))
    }
}

impl Metered {
    /// The event for `chunk` once it is paid for (from the reservation, or a new one), or the
    /// event that pauses or ends the stream.
    async fn pay_for(&mut self, chunk: String, deadline: Option<Instant>) -> (Bytes, Phase) {
        if self.reservation.units > 0 {
            self.reservation.units -= 1;
            return (Bytes::from(sse_message_event(&chunk)), Phase::Running);
        }
        let ctx = self.meter.ctx.clone();
        let channel = self.meter.channel_id;
        loop {
            let error = match ctx.engine.reserve(&ctx.route, &channel, ctx.batch, now()) {
                Ok(pending) => {
                    // Known before the wait for durability: a stream dropped while waiting
                    // still gives the units back.
                    self.reservation.units = pending.units;
                    match pending.durable.await {
                        Ok(_) if self.reservation.units > 0 => {
                            self.reservation.units -= 1;
                            return (Bytes::from(sse_message_event(&chunk)), Phase::Running);
                        }
                        // Nothing reserved: only with a zero batch, which the layer rules out.
                        Ok(_) => {
                            let problem = Problem::internal();
                            return (error_event(&problem), Phase::Finished);
                        }
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            if error.insufficient_balance().is_none() {
                return (error_event(&problem_for(&error)), Phase::Finished);
            }
            let record = match ctx.engine.record(&channel) {
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
            // The reservation is empty here, so the record's spent is what was served (plus
            // any other request's charges on the channel).
            let need = NeedVoucher {
                channel_id: channel,
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

    /// The final receipt, after giving back what the reservation still holds.
    async fn final_event(&mut self) -> Bytes {
        let ctx = self.meter.ctx.clone();
        let channel = self.meter.channel_id;
        let unused = self.reservation.units;
        let record = if unused == 0 {
            match ctx.engine.record(&channel) {
                Ok(Some(record)) => Ok(record),
                Ok(None) => Err(EngineError::Session(SessionError::ChannelNotFound {
                    channel,
                })),
                Err(error) => Err(error),
            }
        } else {
            // Taken before the release is applied (on its first poll, with no await in
            // between), so a stream dropped while the release waits for durability does not
            // release the same units again from its drop.
            self.reservation.units = 0;
            ctx.engine
                .release_units(&ctx.route, &channel, unused, now())
                .await
        };
        match record.and_then(|record| self.meter.served_receipt(&record, self.reservation.units)) {
            Ok(event) => event,
            Err(error) => error_event(&problem_for(&error)),
        }
    }
}

async fn next_event(mut state: Metered) -> Option<(Bytes, Metered)> {
    match std::mem::replace(&mut state.phase, Phase::Finished) {
        Phase::Finished => None,
        Phase::Running => match state.content.next().await {
            None => {
                let event = state.final_event().await;
                Some((event, state))
            }
            Some(chunk) => {
                let (event, phase) = state.pay_for(chunk, None).await;
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
                    let (event, phase) = state.pay_for(chunk, Some(deadline)).await;
                    // A voucher that raised the amount but not enough pauses again, with the
                    // same deadline: one pause is bounded in all.
                    state.phase = phase;
                    Some((event, state))
                }
            }
        }
    }
}
