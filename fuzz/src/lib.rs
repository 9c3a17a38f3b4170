//! Sluice fuzz targets. Each target's logic is `pub fn do_test(data: &[u8])` in its own module,
//! wrapped by a one-line cargo-fuzz shim in `fuzz_targets/`, and replayed on seeds as an
//! ordinary test (the voucher crate's `tests/fuzz_seeds.rs` includes this module too, so the
//! seeds run in `cargo test --workspace`).

pub mod voucher_check;

#[cfg(test)]
mod tests {
    #[test]
    fn voucher_check_seeds_hold_the_invariants() {
        for seed in super::voucher_check::seeds() {
            super::voucher_check::do_test(&seed);
        }
    }
}
