//! Support for the daemon's process tests: the whole deployment as real processes
//! ([`world`]) and a fault-injecting JSON-RPC proxy ([`flaky_proxy`]).
//!
//! Each test binary compiles its own copy and uses part of it, hence the `dead_code`
//! allowance.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod flaky_proxy;
pub mod world;
