//! The HTTP edge: axum routers for the engine's endpoints.
//!
//! - [`feed`]: the settlement feed for the daemon (bearer-token authenticated, cursor paged).
//!   Mount it on an **admin** listener, never on the public one.
//! - [`openapi`]: `GET /openapi.json`, the discovery document listing the paid operations.

pub mod feed;
pub mod openapi;
