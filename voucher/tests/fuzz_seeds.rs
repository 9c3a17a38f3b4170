//! Replays the `voucher_check` fuzz target's seeds as part of this crate's tests, so they run
//! in `cargo test --workspace` (the fuzz crate is its own workspace).

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/voucher_check.rs"]
mod voucher_check;

use sluice_voucher::Decision;
use std::path::PathBuf;

/// The seed corpus cargo-fuzz starts from (`make fuzz` / `make fuzz-smoke` pass it).
fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/voucher_check")
}

#[test]
fn committed_seed_corpus_matches_the_seed_list() {
    let seeds = voucher_check::seeds();
    let dir = seed_dir();
    if std::env::var_os("SLUICE_WRITE_SEEDS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("write seed");
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with SLUICE_WRITE_SEEDS=1",
                dir.display()
            )
        })
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    files.sort();
    let on_disk: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read seed"))
        .collect();
    assert_eq!(
        on_disk, seeds,
        "seed corpus is stale; regenerate with SLUICE_WRITE_SEEDS=1"
    );
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
