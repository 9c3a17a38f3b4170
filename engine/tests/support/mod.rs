//! Test support shared by the engine's integration tests: a real anvil chain with the escrow
//! and a token deployed, payers that sign their own raw transactions, the example provider as a
//! process, and (from `sluice-testkit`) a fault-injecting JSON-RPC proxy.
//!
//! Use it from a test file with `mod support;`. Each test binary compiles its own copy and uses
//! part of it, hence the `dead_code` allowance; the items are `pub` so that test files read
//! like users of an API.

#![allow(dead_code, unreachable_pub)]

pub mod anvil;
#[allow(unused_imports)] // not every test binary uses it
pub use sluice_testkit::flaky_proxy;
pub mod http;
pub mod provider;
pub mod session;
