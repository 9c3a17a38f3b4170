//! cargo-fuzz targets for Sluice. Each target is a `do_test(&[u8])` function here, driven by a
//! one-line shim in `fuzz_targets/`, and also run by this crate's unit tests on seeds
//! (`cargo test --manifest-path fuzz/Cargo.toml`, part of `make test`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod challenge_parse;
pub mod credential_parse;
pub mod session_actions;
pub mod voucher_check;

#[cfg(test)]
mod seeds;

#[cfg(test)]
mod tests {
    #[test]
    fn voucher_check_seeds_hold_the_invariants() {
        for seed in super::voucher_check::seeds() {
            super::voucher_check::do_test(&seed);
        }
    }

    #[test]
    fn session_actions_seeds_hold_the_invariants() {
        for seed in super::session_actions::seeds() {
            super::session_actions::do_test(&seed);
        }
    }
}
