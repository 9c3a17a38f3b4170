//! Replays the `voucher_check` fuzz target's seeds as part of this crate's tests, so they run
//! in `cargo test --workspace` (the fuzz crate is its own workspace).

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/voucher_check.rs"]
mod voucher_check;

use sluice_voucher::Decision;

#[test]
fn committed_seed_corpus_matches_the_seed_list() {
    // The corpus cargo-fuzz starts from (`make fuzz` / `make fuzz-smoke` pass it).
    sluice_testkit::seeds::assert_corpus_matches("voucher_check", &voucher_check::seeds());
}

#[test]
fn voucher_check_seeds_hold_the_invariants_and_reach_every_path() {
    let outcomes: Vec<_> = voucher_check::seeds()
        .iter()
        .map(|s| voucher_check::run(s))
        .collect();
    let reached = |what: &str, f: &dyn Fn(&voucher_check::Outcome) -> bool| {
        assert!(outcomes.iter().any(f), "no seed reaches: {what}");
    };
    reached("unparsable signature", &|o| !o.parsed);
    reached("parsed but not the expected signer", &|o| {
        o.parsed && !o.verified
    });
    reached("verified and accepted", &|o| {
        o.verified && matches!(o.decision, Decision::Accept { .. })
    });
    reached("verified idempotent retry", &|o| {
        o.verified && o.decision == Decision::IdempotentRetry
    });
    reached("verified but refused", &|o| {
        o.verified && matches!(o.decision, Decision::Reject(_))
    });
}
