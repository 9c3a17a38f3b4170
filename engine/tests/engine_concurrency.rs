//! 2,048 concurrent submissions on one channel through the engine facade, on a real anvil
//! chain: 400 voucher amounts each sent three times (duplicates, shuffled so amounts arrive out
//! of order, some charging as they go), 840 charges, and 8 top-ups racing them on chain. The
//! final accepted, spent and deposit amounts must be exactly what the outcomes the callers saw
//! imply, for the memory store and for sled with group commit.

mod support;

use std::sync::Arc;

use alloy::primitives::{Address, B256};
use sluice_engine::chain::ChainClient;
use sluice_engine::feed::FeedCursor;
use sluice_engine::session::{SessionError, VoucherOutcome};
use sluice_engine::store::{ChannelStore, Durability, MemoryStore, SledStore};
use sluice_engine::{Authorized, EngineError};
use sluice_voucher::RejectReason;
use support::session::{Harness, PRICE, now};

const SUBMISSIONS: usize = 2_048;
const AMOUNTS: u128 = 400;
const STEP: u128 = 50;
const COPIES: usize = 3;
const CHARGES: usize = 840;
const TOP_UPS: usize = 8;
const TOP_UP: u128 = 2_000;
const DEPOSIT: u128 = 10_000;
/// Submissions are shuffled within windows of this many.
const WINDOW: usize = 24;

enum Op {
    Voucher {
        amount: u128,
        header: String,
        units: u64,
    },
    Charge {
        units: u64,
    },
    TopUp {
        header: String,
    },
}

enum Outcome {
    Voucher {
        amount: u128,
        units: u64,
        /// Every attempt: a voucher refused for exceeding the deposit is sent again once enough
        /// top-ups have completed, as a client that topped up would.
        attempts: Vec<Result<Authorized, EngineError>>,
    },
    Charge {
        units: u64,
        result: Result<(), EngineError>,
    },
    TopUp {
        /// The top-up transaction's hash, as the receipt reports it.
        result: Result<Option<B256>, EngineError>,
    },
}

/// A deterministic Fisher-Yates shuffle (xorshift64), so a failure can be replayed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut seed = seed | 1;
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = usize::try_from(seed % (i as u64 + 1)).expect("index");
        items.swap(i, j);
    }
}

async fn two_thousand_submissions<S: ChannelStore + 'static>(h: Harness<S>, seed: u64) {
    let mut client = h.client(2, DEPOSIT + TOP_UP * TOP_UPS as u128).await;
    let challenge = h.challenge();
    let open = client.open(
        &challenge,
        DEPOSIT,
        B256::repeat_byte(0x2b),
        Address::ZERO,
        0,
    );
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("open");
    let channel = client.channel;

    // Everything is signed ahead. Submissions are laid out roughly in amount order (top-ups
    // early, charges spread out) and then shuffled within windows, so amounts arrive out of
    // order and duplicates race each other; vouchers above the initial deposit only fit once
    // top-ups have landed on chain, so their fate depends on the interleaving.
    let mut ops: Vec<(usize, Op)> = Vec::with_capacity(SUBMISSIONS);
    for i in 1..=AMOUNTS {
        let amount = i * STEP;
        let header = client.voucher(&challenge, amount);
        let slot = usize::try_from(i).expect("small") * 5;
        for copy in 0..COPIES {
            let op = Op::Voucher {
                amount,
                header: header.clone(),
                units: u64::from(copy == 0),
            };
            ops.push((slot, op));
        }
    }
    for i in 0..CHARGES {
        let op = Op::Charge {
            units: 1 + (i % 2) as u64,
        };
        ops.push((i * 2_000 / CHARGES, op));
    }
    for k in 0..TOP_UPS {
        let op = Op::TopUp {
            header: client.top_up(&challenge, TOP_UP),
        };
        ops.push((k * 40, op));
    }
    assert_eq!(ops.len(), SUBMISSIONS);
    ops.sort_by_key(|(slot, _)| *slot);
    for (n, window) in ops.chunks_mut(WINDOW).enumerate() {
        shuffle(window, seed.wrapping_add(n as u64));
    }

    // All of them in flight at once on the two worker threads. Completed top-ups are announced
    // on a watch channel (the deposit they guarantee at least).
    let (topped_up, deposit_at_least) = tokio::sync::watch::channel(DEPOSIT);
    let topped_up = Arc::new(topped_up);
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|(_, op)| {
            let engine = Arc::clone(&h.engine);
            let route = h.route.clone();
            let challenge_id = challenge.id().to_owned();
            let topped_up = Arc::clone(&topped_up);
            let mut deposit_at_least = deposit_at_least.clone();
            tokio::spawn(async move {
                match op {
                    Op::Voucher {
                        amount,
                        header,
                        units,
                    } => {
                        let mut attempts = Vec::new();
                        loop {
                            let result = engine
                                .authorize_and_charge(&route, &header, units, now())
                                .await;
                            let above_deposit = matches!(
                                result,
                                Err(EngineError::Session(SessionError::Rejected {
                                    reason: RejectReason::ExceedsDeposit { .. },
                                    ..
                                }))
                            );
                            attempts.push(result);
                            if !above_deposit {
                                break;
                            }
                            deposit_at_least
                                .wait_for(|deposit| *deposit >= amount)
                                .await
                                .expect("top-ups announce");
                        }
                        Outcome::Voucher {
                            amount,
                            units,
                            attempts,
                        }
                    }
                    Op::Charge { units } => Outcome::Charge {
                        units,
                        result: engine
                            .charge(&route, &channel, units, &challenge_id, now())
                            .await
                            .map(|_| ()),
                    },
                    Op::TopUp { header } => {
                        let result = engine.authorize(&route, &header, now()).await;
                        if result.is_ok() {
                            topped_up.send_modify(|deposit| *deposit += TOP_UP);
                        }
                        Outcome::TopUp {
                            result: result.map(|authorized| authorized.tx_hash),
                        }
                    }
                }
            })
        })
        .collect();

    let mut accepted = Vec::new();
    let mut retried = Vec::new();
    let mut delta_sum = 0u128;
    let mut units_charged = 0u64;
    let mut refused = 0usize;
    let mut note_voucher = |amount: u128, outcome: Option<VoucherOutcome>| match outcome {
        Some(VoucherOutcome::Accepted { delta }) => {
            accepted.push(amount);
            delta_sum += delta;
        }
        Some(VoucherOutcome::Retry) => retried.push(amount),
        None => panic!("a voucher credential reports its voucher's outcome"),
    };
    for task in tasks {
        match task.await.expect("task") {
            Outcome::Voucher {
                amount,
                units,
                attempts,
            } => {
                for result in attempts {
                    match result {
                        Ok(authorized) => {
                            assert_eq!(authorized.units_charged, units);
                            units_charged += units;
                            note_voucher(amount, authorized.voucher);
                        }
                        Err(EngineError::ChargeRefused { authorized, source }) => {
                            assert!(
                                matches!(source, SessionError::InsufficientBalance { .. }),
                                "{source}"
                            );
                            assert_eq!(authorized.units_charged, 0);
                            note_voucher(amount, authorized.voucher);
                        }
                        Err(EngineError::Session(SessionError::Rejected { reason, .. })) => {
                            assert!(
                                matches!(
                                    reason,
                                    RejectReason::AmountNotIncreasing { .. }
                                        | RejectReason::ExceedsDeposit { .. }
                                ),
                                "{reason}"
                            );
                            refused += 1;
                        }
                        Err(other) => panic!("voucher {amount}: unexpected {other}"),
                    }
                }
            }
            Outcome::Charge { units, result } => match result {
                Ok(()) => units_charged += units,
                Err(EngineError::Session(SessionError::InsufficientBalance { .. })) => {
                    refused += 1;
                }
                Err(other) => panic!("charge: unexpected {other}"),
            },
            Outcome::TopUp { result } => {
                let tx_hash = result.expect("every top-up succeeds");
                assert!(tx_hash.is_some());
            }
        }
    }

    let record = h.record(&channel).expect("record");
    // No voucher amount was accepted twice, and the accepted ones form one chain from 0.
    let mut distinct = accepted.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        accepted.len(),
        "a voucher was accepted twice"
    );
    assert_eq!(delta_sum, record.accepted_cumulative);
    assert_eq!(
        accepted.iter().max().copied(),
        Some(record.accepted_cumulative)
    );
    // A retry repeats an amount that some submission had accepted.
    for amount in &retried {
        assert!(distinct.binary_search(amount).is_ok(), "retry of {amount}");
    }
    // Every successful charge, and only those, is spent.
    assert_eq!(record.spent, PRICE * u128::from(units_charged));
    assert_eq!(record.units, units_charged);
    // Every top-up is in the deposit, as on chain.
    let expected_deposit = DEPOSIT + TOP_UP * TOP_UPS as u128;
    assert_eq!(record.deposit, expected_deposit);
    let on_chain = h.engine.chain().channel(channel).await.expect("getChannel");
    assert_eq!(on_chain.deposit, expected_deposit);
    assert_eq!(h.chain.balance(h.chain.escrow).await, expected_deposit);
    // The money invariants, and the feed's copy of the accepted voucher.
    assert!(record.spent <= record.accepted_cumulative);
    assert!(record.accepted_cumulative <= record.deposit);
    let feed = h
        .engine
        .store()
        .read_feed(FeedCursor::ZERO, 10)
        .expect("feed");
    let latest = feed
        .entries
        .iter()
        .rev()
        .find(|e| e.channel_id == channel)
        .expect("channel in the feed");
    assert_eq!(latest.cumulative_amount, record.accepted_cumulative);
    assert_eq!(latest.signature, record.accepted_signature);
    // The run exercised what it is meant to: acceptances, retries and refusals. (How many
    // vouchers raced past the deposit before a top-up landed varies from run to run.)
    assert!(accepted.len() > 1 && !retried.is_empty() && refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_on_one_channel_with_the_memory_store() {
    two_thousand_submissions(Harness::start(MemoryStore::new()).await, 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_on_one_channel_with_the_sled_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path().join("channels"), Durability::default()).expect("sled");
    two_thousand_submissions(Harness::start(store).await, 0x5eed_0002).await;
}
