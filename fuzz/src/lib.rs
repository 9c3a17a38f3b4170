//! cargo-fuzz targets for Sluice. Each target is a `do_test(&[u8])` function here, driven by a
//! one-line shim in `fuzz_targets/`, and also run by this crate's unit tests on the mppx
//! vectors and deterministic mutations of them (`cargo test` in `fuzz/`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod challenge_parse;
pub mod credential_parse;

#[cfg(test)]
mod seeds;
