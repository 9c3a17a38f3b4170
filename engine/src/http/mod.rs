//! The HTTP edge: a tower [`PaymentLayer`] that gates axum routes with MPP `session` payments,
//! the [`Payment`] extractor that hands handlers their receipt and channel, [`SseMeter`] for
//! streams charged per event, request-level `Idempotency-Key` support, and two routers to mount
//! beside the paid routes: [`feed`] (the settlement feed for the daemon, bearer-token
//! authenticated and cursor paged: mount it on an **admin** listener, never the public one)
//! and [`openapi`] (`GET /openapi.json`, the discovery document of the paid operations).
//!
//! Per request, the layer:
//! 1. honours `Accept-Payment` (a header that rules out `tempo/session` gets a `400`);
//! 2. without a `Payment` credential, answers `402` with a fresh challenge
//!    (`WWW-Authenticate`), a `payment-required` problem body and `Cache-Control: no-store`;
//! 3. verifies the credential through the [`Engine`](crate::Engine);
//! 4. for a **management** request (`HEAD`, or a `POST` without a body, query or not), and
//!    for every `topUp` or `close` credential, answers `204` with the receipt; the handler is
//!    not called and nothing is charged (a `voucher` or `close` credential may reuse an expired
//!    challenge here, as the mppx client does);
//! 5. otherwise charges the route's units **before** the handler runs (persisted before the
//!    response is released), calls the handler with a [`Payment`] in the request extensions,
//!    and adds `Payment-Receipt` and `Cache-Control: private` to its response;
//! 6. turns every failure into an RFC 9457 problem in one place (`problem.rs`), with mppx's
//!    statuses (402, 410, 400, 500) and a fresh challenge, suggesting the payer's open channel
//!    (`methodDetails.channelId`) when the credential names a payer the engine knows.

pub mod admin;
mod extract;
pub mod feed;
mod future;
mod idempotency;
mod layer;
pub mod openapi;
mod problem;
mod service;
mod sse;

pub use admin::admin_router;
pub use extract::{Payment, PaymentMissing};
pub use feed::feed_router;
pub use future::ResponseFuture;
pub use idempotency::IDEMPOTENT_REPLAYED;
pub use layer::{DEFAULT_STREAM_VOUCHER_WAIT, PaymentLayer, PaymentOptions};
pub use problem::{HttpError, problem_for};
pub use service::PaymentService;
pub use sse::{SSE_CONTENT_TYPE, SseMeter};

/// `Payment-Receipt`: the receipt header of a paid response.
pub const PAYMENT_RECEIPT: &str = "payment-receipt";
/// `Accept-Payment`: the client's payment-method preferences.
pub const ACCEPT_PAYMENT: &str = "accept-payment";
/// `Idempotency-Key`: a client-chosen key making a paid request safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
