#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod chain;
pub mod client;
mod facade;
pub mod feed;
pub mod http;
pub mod protocol;
pub mod session;
pub mod store;

pub use facade::{
    Action, Authorized, DEFAULT_CHAIN_STATE_TTL, DEFAULT_CHALLENGE_TTL,
    DEFAULT_IDEMPOTENCY_RETENTION, DEFAULT_SIGNER_CACHE_CAPACITY, Engine, EngineConfig,
    EngineError, IdempotencyKey, IdempotentOutcome, IdempotentRequest, MAX_IDEMPOTENCY_KEY_LEN,
    RecordedOutcome, Route, RoutePrice,
};
