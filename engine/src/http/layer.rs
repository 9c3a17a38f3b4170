//! [`PaymentLayer`]: gates a route with MPP `session` payments.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::{Gate, PaymentService};
use crate::chain::ChainClient;
use crate::facade::{DEFAULT_IDEMPOTENCY_RETENTION, Engine, Route};
use crate::store::ChannelStore;

/// How long a metered stream waits for a voucher after asking for one before it ends with an
/// error event: 60 s, as the session spec suggests.
pub const DEFAULT_STREAM_VOUCHER_WAIT: Duration = Duration::from_secs(60);

/// Per-route behaviour of a [`PaymentLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentOptions {
    /// Units charged before the handler runs (1 for a plain paid route; 0 for a metered stream,
    /// whose [`SseMeter`](super::SseMeter) charges per event instead).
    pub units_per_request: u64,
    /// How long a paused metered stream waits for a voucher in all (per pause).
    pub stream_voucher_wait: Duration,
    /// Units a metered stream charges per durable store update (its reservation; 0 counts as
    /// 1). With 1 (the default) every event is charged durably before it is sent. With K > 1
    /// the stream charges up to K units the vouchers cover in one update, sends that many
    /// events without touching the store, and gives back what it did not send when it ends
    /// (content exhausted, client gone, error). Receipts report what was served. The cost: a
    /// crash mid-stream can leave up to K − 1 units charged but not served (always within
    /// vouchers the payer signed), and other requests on the channel see the reservation as
    /// spent while the stream holds it. See [`PaymentLayer::charge_batch`].
    pub stream_charge_batch: u64,
    /// How long the outcome of a request with an `Idempotency-Key` is kept for replays.
    pub idempotency_retention: Duration,
    /// Suggest the channel most recently opened through the engine in challenges that answer
    /// requests without a credential. **Single-payer deployments only** (demos, interop tests):
    /// such a request does not say who pays, so the suggestion may name another payer's channel.
    /// Requests with a credential always get their own payer's channel suggested.
    pub suggest_latest_channel: bool,
}

impl Default for PaymentOptions {
    fn default() -> Self {
        Self {
            units_per_request: 1,
            stream_voucher_wait: DEFAULT_STREAM_VOUCHER_WAIT,
            stream_charge_batch: 1,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            suggest_latest_channel: false,
        }
    }
}

/// A tower [`Layer`] that puts one priced [`Route`] in front of a service (in axum:
/// `Router::route(...).route_layer(PaymentLayer::new(engine, route))`).
///
/// See the [module docs](super) for what it does per request.
pub struct PaymentLayer<S, C> {
    gate: Arc<Gate<S, C>>,
}

impl<S: ChannelStore + 'static, C: ChainClient> PaymentLayer<S, C> {
    /// A layer charging one unit of `route` per request, before the handler runs.
    pub fn new(engine: Arc<Engine<S, C>>, route: Route) -> Self {
        Self::with_options(engine, route, PaymentOptions::default())
    }

    /// A layer for a metered stream: nothing is charged up front; the handler's
    /// [`SseMeter`](super::SseMeter) charges one unit per event, one durable update per event
    /// unless [`charge_batch`](Self::charge_batch) says otherwise.
    pub fn metered(engine: Arc<Engine<S, C>>, route: Route) -> Self {
        Self::with_options(
            engine,
            route,
            PaymentOptions {
                units_per_request: 0,
                ..PaymentOptions::default()
            },
        )
    }

    /// A layer with explicit options.
    pub fn with_options(engine: Arc<Engine<S, C>>, route: Route, options: PaymentOptions) -> Self {
        Self {
            gate: Arc::new(Gate::new(engine, route, options)),
        }
    }

    /// The same layer with metered streams charging `units` per durable update
    /// ([`PaymentOptions::stream_charge_batch`]; 0 counts as 1):
    /// `PaymentLayer::metered(engine, route).charge_batch(100)`.
    #[must_use]
    pub fn charge_batch(self, units: u64) -> Self {
        let options = PaymentOptions {
            stream_charge_batch: units.max(1),
            ..self.gate.options.clone()
        };
        Self::with_options(
            Arc::clone(&self.gate.engine),
            self.gate.route.clone(),
            options,
        )
    }

    /// The route this layer charges for.
    pub fn route(&self) -> &Route {
        &self.gate.route
    }

    /// The layer's options.
    pub fn options(&self) -> &PaymentOptions {
        &self.gate.options
    }
}

impl<S, C> Clone for PaymentLayer<S, C> {
    fn clone(&self) -> Self {
        Self {
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S, C> fmt::Debug for PaymentLayer<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentLayer")
            .field("route", &self.gate.route.price())
            .field("options", &self.gate.options)
            .finish_non_exhaustive()
    }
}

impl<I, S, C> Layer<I> for PaymentLayer<S, C> {
    type Service = PaymentService<I, S, C>;

    fn layer(&self, inner: I) -> Self::Service {
        PaymentService::new(inner, Arc::clone(&self.gate))
    }
}
