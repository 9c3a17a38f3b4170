//! Support for the daemon's process tests: the whole deployment as real processes
//! ([`world`]) and the fault-injecting JSON-RPC proxy of `sluice-testkit` ([`flaky_proxy`]).
//!
//! Each test binary compiles its own copy and uses part of it, hence the `dead_code`
//! allowance.

#![allow(dead_code, unreachable_pub, missing_docs)]

#[allow(unused_imports)] // not every test binary uses it
pub use sluice_testkit::flaky_proxy;
pub mod world;
