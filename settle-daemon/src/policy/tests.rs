use proptest::prelude::*;

use super::*;

const NOW: u64 = 1_000_000;

fn id(n: u8) -> ChannelId {
    B256::repeat_byte(n)
}

fn config() -> PolicyConfig {
    PolicyConfig {
        min_unsettled_amount: 1_000,
        max_age_secs: 3_600,
        batch_size: 3,
        gas_per_batch_base: 30_000,
        gas_per_item: 10,
        gas_per_close: 60_000,
        max_gas_price: 100,
        max_gas_per_batch: 1_000_000,
        close_grace_period_secs: 900,
        watchtower_margin_secs: 120,
    }
}

fn market(gas_price: u128) -> Market {
    Market {
        now: NOW,
        gas_price,
        token_per_gas: 1,
        chain_now: 0,
    }
}

/// An open channel holding a voucher for `amount`, nothing settled, deposit 1e9.
fn open(n: u8, amount: u128) -> ChannelView {
    ChannelView {
        id: id(n),
        payer: Address::repeat_byte(0xaa),
        payee: Address::repeat_byte(0xbb),
        token: Address::repeat_byte(0xcc),
        salt: Some(B256::repeat_byte(0x55)),
        authorized_signer: Address::ZERO,
        voucher: (amount > 0).then_some(Voucher {
            amount,
            signature: [7; SIGNATURE_LEN],
        }),
        settled: 0,
        deposit: 1_000_000_000,
        status: EngineStatus::Open,
        close_requested_at: None,
        first_unsettled_at: Some(NOW),
        in_flight_amount: None,
    }
}

fn reason_of(plan: &Plan, channel: ChannelId) -> Option<SkipReason> {
    plan.skipped
        .iter()
        .find(|s| s.channel == channel)
        .map(|s| s.reason)
}

#[test]
fn settles_above_amount_threshold_largest_first_in_batches() {
    let views = [
        open(1, 2_000),
        open(2, 5_000),
        open(3, 999),
        open(4, 3_000),
        open(5, 4_000),
    ];
    let plan = plan(&views, &config(), &market(1));
    assert_eq!(
        plan.actions,
        vec![
            Action::SettleBatch(vec![id(2), id(5), id(4)]),
            Action::SettleBatch(vec![id(1)])
        ]
    );
    assert_eq!(
        reason_of(&plan, id(3)),
        Some(SkipReason::BelowThreshold { unsettled: 999 })
    );
}

#[test]
fn settles_old_vouchers_below_amount_threshold() {
    let mut old = open(1, 500);
    old.first_unsettled_at = Some(NOW - 3_600);
    let mut young = open(2, 500);
    young.first_unsettled_at = Some(NOW - 3_599);
    let plan = plan(&[old, young], &config(), &market(1));
    assert_eq!(plan.actions, vec![Action::SettleBatch(vec![id(1)])]);
    assert_eq!(
        reason_of(&plan, id(2)),
        Some(SkipReason::BelowThreshold { unsettled: 500 })
    );
}

#[test]
fn skips_settles_that_do_not_pay_their_gas() {
    let mut old = open(1, 500);
    old.first_unsettled_at = Some(0);
    // 10 gas per item at 60 token units per gas costs 600 > 500.
    let plan = plan(
        &[old],
        &config(),
        &Market {
            now: NOW,
            gas_price: 1,
            token_per_gas: 60,
            chain_now: 0,
        },
    );
    assert!(plan.actions.is_empty());
    assert_eq!(
        reason_of(&plan, id(1)),
        Some(SkipReason::Unprofitable {
            unsettled: 500,
            gas_cost: 600
        })
    );
}

#[test]
fn never_settles_a_voucher_not_above_settled() {
    let mut settled = open(1, 5_000);
    settled.settled = 5_000;
    let mut none = open(2, 0);
    none.first_unsettled_at = Some(0);
    let plan = plan(&[settled, none], &config(), &market(1));
    assert!(plan.actions.is_empty());
    assert_eq!(reason_of(&plan, id(1)), Some(SkipReason::NothingToSettle));
    assert_eq!(reason_of(&plan, id(2)), Some(SkipReason::NothingToSettle));
}

#[test]
fn settles_only_the_unsettled_part() {
    let mut view = open(1, 5_000);
    view.settled = 4_500;
    assert_eq!(view.unsettled(), 500);
    let plan = plan(&[view], &config(), &market(1));
    assert_eq!(
        reason_of(&plan, id(1)),
        Some(SkipReason::BelowThreshold { unsettled: 500 })
    );
}

#[test]
fn watchtower_closes_come_first_earliest_deadline_first() {
    let mut late = open(1, 10);
    late.close_requested_at = Some(NOW - 100);
    let mut early = open(2, 10);
    early.close_requested_at = Some(NOW - 800);
    let mut closing = open(3, 0);
    closing.status = EngineStatus::Closing;
    let views = [open(4, 9_000), closing, late, early];
    let plan = plan(&views, &config(), &market(1));
    assert_eq!(
        plan.actions,
        vec![
            Action::Close(id(2)),
            Action::Close(id(1)),
            Action::Close(id(3)),
            Action::SettleBatch(vec![id(4)]),
        ]
    );
}

#[test]
fn gas_cap_defers_all_but_urgent_watchtower_closes() {
    let mut urgent = open(1, 10);
    urgent.close_requested_at = Some(NOW - 900 + 120); // exactly at the margin
    let mut relaxed = open(2, 10);
    relaxed.close_requested_at = Some(NOW - 900 + 121);
    let mut closing = open(3, 10);
    closing.status = EngineStatus::Closing;
    let views = [urgent, relaxed, closing, open(4, 9_000)];
    let plan = plan(&views, &config(), &market(101));
    assert_eq!(plan.actions, vec![Action::Close(id(1))]);
    let over = SkipReason::GasPriceAboveCap {
        gas_price: 101,
        cap: 100,
    };
    for n in 2..=4 {
        assert_eq!(reason_of(&plan, id(n)), Some(over), "channel {n}");
    }
}

#[test]
fn no_batch_when_its_fixed_gas_alone_is_over_the_cap() {
    // Items estimated free: the item count was unbounded by gas even though the batch's fixed
    // part alone is over the cap (found by the model test).
    let cfg = PolicyConfig {
        gas_per_batch_base: 69,
        gas_per_item: 0,
        max_gas_per_batch: 68,
        ..config()
    };
    assert_eq!(cfg.items_per_batch(), 0);
    let plan = plan(&[open(1, 5_000)], &cfg, &market(1));
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(
        reason_of(&plan, id(1)),
        Some(SkipReason::GasCapTooSmall {
            needed: 69,
            cap: 68
        })
    );
}

#[test]
fn watchtower_urgency_follows_the_chain_clock_when_it_runs_ahead() {
    // The grace deadline is in block time. The chain's clock runs 300 s ahead of the daemon's:
    // by the daemon's clock the deadline is 380 s away (outside the 120 s margin), by the
    // chain's only 80 s; with gas above the cap the close must still go out.
    let mut watched = open(1, 10);
    watched.close_requested_at = Some(NOW - 900 + 380);
    let ahead = Market {
        chain_now: NOW + 300,
        ..market(101)
    };
    assert_eq!(
        plan(&[watched], &config(), &ahead).actions,
        vec![Action::Close(id(1))]
    );
    // A chain clock behind the daemon's does not delay anything either.
    let behind = Market {
        now: NOW + 300,
        chain_now: NOW,
        ..market(101)
    };
    assert_eq!(
        plan(&[watched], &config(), &behind).actions,
        vec![Action::Close(id(1))]
    );
    // Neither clock near the deadline: deferred by the cap.
    assert!(plan(&[watched], &config(), &market(101)).actions.is_empty());
}

#[test]
fn watchtower_ignores_thresholds_and_profitability() {
    let mut view = open(1, 1);
    view.close_requested_at = Some(NOW);
    view.salt = None; // close needs no salt
    let plan = plan(
        &[view],
        &config(),
        &Market {
            now: NOW,
            gas_price: 1,
            token_per_gas: 1_000,
            chain_now: 0,
        },
    );
    assert_eq!(plan.actions, vec![Action::Close(id(1))]);
}

#[test]
fn close_requested_with_nothing_unsettled_needs_no_transaction() {
    let mut view = open(1, 0);
    view.close_requested_at = Some(NOW);
    let plan = plan(&[view], &config(), &market(1));
    assert!(plan.actions.is_empty());
    assert_eq!(reason_of(&plan, id(1)), Some(SkipReason::NothingToSettle));
}

#[test]
fn skips_closed_opening_in_flight_missing_salt_and_voucher_above_deposit() {
    let mut closed = open(1, 9_000);
    closed.status = EngineStatus::Closed;
    let mut opening = open(2, 9_000);
    opening.status = EngineStatus::Opening;
    let mut in_flight = open(3, 9_000);
    in_flight.in_flight_amount = Some(9_000);
    let mut no_salt = open(4, 9_000);
    no_salt.salt = None;
    let mut too_big = open(5, 9_000);
    too_big.deposit = 8_000;
    let mut newer = open(6, 9_000);
    newer.in_flight_amount = Some(8_000);
    let views = [closed, opening, in_flight, no_salt, too_big, newer];
    let plan = plan(&views, &config(), &market(1));
    assert_eq!(plan.actions, vec![Action::SettleBatch(vec![id(6)])]);
    assert_eq!(reason_of(&plan, id(1)), Some(SkipReason::Closed));
    assert_eq!(reason_of(&plan, id(2)), Some(SkipReason::Opening));
    assert_eq!(
        reason_of(&plan, id(3)),
        Some(SkipReason::InFlight { amount: 9_000 })
    );
    assert_eq!(reason_of(&plan, id(4)), Some(SkipReason::MissingSalt));
    assert_eq!(
        reason_of(&plan, id(5)),
        Some(SkipReason::VoucherAboveDeposit {
            voucher: 9_000,
            deposit: 8_000
        })
    );
}

#[test]
fn duplicate_views_are_planned_once() {
    let plan = plan(&[open(1, 9_000), open(1, 9_500)], &config(), &market(1));
    assert_eq!(plan.actions, vec![Action::SettleBatch(vec![id(1)])]);
    assert_eq!(reason_of(&plan, id(1)), Some(SkipReason::Duplicate));
}

#[test]
fn batch_gas_cap_limits_items_per_batch() {
    let mut cfg = config();
    cfg.batch_size = 100;
    cfg.max_gas_per_batch = 30_000 + 2 * 10; // room for two items
    assert_eq!(cfg.items_per_batch(), 2);
    let views = [open(1, 9_000), open(2, 8_000), open(3, 7_000)];
    let plan = plan(&views, &cfg, &market(1));
    assert_eq!(
        plan.actions,
        vec![
            Action::SettleBatch(vec![id(1), id(2)]),
            Action::SettleBatch(vec![id(3)])
        ]
    );
}

#[test]
fn a_gas_cap_below_one_transaction_plans_nothing_and_says_so() {
    let mut cfg = config();
    cfg.max_gas_per_batch = 30_000; // no room for an item, nor a close
    let mut closing = open(2, 10);
    closing.status = EngineStatus::Closing;
    let plan = plan(&[open(1, 9_000), closing], &cfg, &market(1));
    assert!(plan.actions.is_empty());
    assert_eq!(
        reason_of(&plan, id(1)),
        Some(SkipReason::GasCapTooSmall {
            needed: 30_010,
            cap: 30_000
        })
    );
    assert_eq!(
        reason_of(&plan, id(2)),
        Some(SkipReason::GasCapTooSmall {
            needed: 60_000,
            cap: 30_000
        })
    );
}

// ---- property test against a naive model ----

/// The naive model of one channel: what must (or may) happen to it.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Close,
    Settle,
}

fn model(view: &ChannelView, cfg: &PolicyConfig, m: &Market) -> Expect {
    let voucher = view.voucher.map_or(0, |v| v.amount);
    let live = matches!(view.status, EngineStatus::Open | EngineStatus::Closing);
    let valid = voucher <= view.deposit && view.in_flight_amount.is_none_or(|a| a < voucher);
    if !live || !valid {
        return Expect::Nothing;
    }
    let unsettled = voucher.saturating_sub(view.settled);
    let cheap = m.gas_price <= cfg.max_gas_price;
    if let Some(at) = view.close_requested_at
        && unsettled > 0
    {
        let urgent =
            m.now.max(m.chain_now) + cfg.watchtower_margin_secs >= at + cfg.close_grace_period_secs;
        return if (cheap || urgent) && cfg.gas_per_close <= cfg.max_gas_per_batch {
            Expect::Close
        } else {
            Expect::Nothing
        };
    }
    if view.status == EngineStatus::Closing {
        return if cheap && cfg.gas_per_close <= cfg.max_gas_per_batch {
            Expect::Close
        } else {
            Expect::Nothing
        };
    }
    let due = unsettled >= cfg.min_unsettled_amount
        || view
            .first_unsettled_at
            .is_some_and(|t| m.now - t >= cfg.max_age_secs);
    let pays = unsettled >= u128::from(cfg.gas_per_item) * m.token_per_gas;
    let fits = cfg.gas_per_batch_base + cfg.gas_per_item <= cfg.max_gas_per_batch;
    if unsettled > 0 && due && pays && cheap && fits && view.salt.is_some() {
        Expect::Settle
    } else {
        Expect::Nothing
    }
}

fn arb_view() -> impl Strategy<Value = ChannelView> {
    (
        0u8..24,
        prop::option::of(0u128..20_000),
        0u128..20_000,
        0u128..20_000,
        0u8..4,
        prop::option::of(NOW - 2_000..=NOW),
        prop::option::of(NOW - 8_000..=NOW),
        prop::option::of(0u128..20_000),
        any::<bool>(),
    )
        .prop_map(
            |(n, voucher, settled, deposit, status, close_at, first, in_flight, salt)| {
                let mut view = open(n, 0);
                view.voucher = voucher.map(|amount| Voucher {
                    amount,
                    signature: [1; SIGNATURE_LEN],
                });
                view.settled = settled;
                view.deposit = deposit;
                view.status = [
                    EngineStatus::Opening,
                    EngineStatus::Open,
                    EngineStatus::Closing,
                    EngineStatus::Closed,
                ][usize::from(status)];
                view.close_requested_at = close_at;
                view.first_unsettled_at = first;
                view.in_flight_amount = in_flight;
                view.salt = salt.then_some(B256::repeat_byte(9));
                view
            },
        )
}

fn arb_config() -> impl Strategy<Value = PolicyConfig> {
    (
        1u128..5_000,
        1u64..5_000,
        1usize..6,
        0u64..100,
        0u64..50,
        0u64..200,
        1u128..50,
        0u64..400,
    )
        .prop_map(
            |(min, age, n, base, item, close, cap, max_gas)| PolicyConfig {
                min_unsettled_amount: min,
                max_age_secs: age,
                batch_size: n,
                gas_per_batch_base: base,
                gas_per_item: item,
                gas_per_close: close,
                max_gas_price: cap,
                max_gas_per_batch: max_gas,
                close_grace_period_secs: 900,
                watchtower_margin_secs: 120,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn plan_matches_the_naive_model(
        views in prop::collection::vec(arb_view(), 0..40),
        cfg in arb_config(),
        gas_price in 0u128..60,
        token_per_gas in 0u128..30,
        chain_now in prop_oneof![Just(0u64), NOW - 600..NOW + 600],
    ) {
        let m = Market { now: NOW, gas_price, token_per_gas, chain_now };
        let plan = plan(&views, &cfg, &m);

        // Never plan a channel twice.
        let mut planned = BTreeSet::new();
        for action in &plan.actions {
            match action {
                Action::Close(channel) => prop_assert!(planned.insert(*channel)),
                Action::SettleBatch(items) => {
                    prop_assert!(!items.is_empty());
                    prop_assert!(items.len() <= cfg.batch_size);
                    prop_assert!(cfg.batch_gas(items.len()) <= cfg.max_gas_per_batch);
                    for channel in items {
                        prop_assert!(planned.insert(*channel));
                    }
                }
            }
        }
        // Closes precede settles.
        let first_settle = plan.actions.iter().position(|a| matches!(a, Action::SettleBatch(_)));
        if let Some(first) = first_settle {
            prop_assert!(plan.actions[first..].iter().all(|a| matches!(a, Action::SettleBatch(_))));
        }

        // Exactly the model's channels are planned, with the model's action; the first view of
        // an id is the one that counts; every other channel is skipped with a reason.
        let mut firsts = BTreeSet::new();
        for view in &views {
            if !firsts.insert(view.id) {
                continue;
            }
            let expected = model(view, &cfg, &m);
            let got = plan.actions.iter().find_map(|a| match a {
                Action::Close(c) if *c == view.id => Some(Expect::Close),
                Action::SettleBatch(items) if items.contains(&view.id) => Some(Expect::Settle),
                _ => None,
            });
            match got {
                Some(action) => {
                    prop_assert_eq!(&action, &expected, "view {:?}", view);
                    if action == Expect::Settle {
                        prop_assert!(view.voucher.is_some_and(|v| v.amount > view.settled));
                    }
                }
                None => {
                    prop_assert_eq!(Expect::Nothing, expected, "view {:?}", view);
                    prop_assert!(plan.skipped.iter().any(|s| s.channel == view.id));
                }
            }
        }
        prop_assert_eq!(planned.len() + plan.skipped.len(), views.len());
    }
}
