//! The client's view of one channel and the pure rule that decides the next voucher.

use alloy_primitives::{Address, B256, Bytes};

use super::{CapScope, ClientError, TopUpPolicy};

/// What the client knows about one of its channels.
#[derive(Clone, Debug)]
pub(crate) struct ChannelState {
    pub(crate) id: B256,
    pub(crate) payee: Address,
    pub(crate) deposit: u128,
    /// Highest cumulative amount signed, and its signature (empty before the first voucher).
    pub(crate) signed: u128,
    pub(crate) signature: Bytes,
    /// What the client counts as owed: units it asked for (requests in flight included) and
    /// stream events it received, raised to any `spent` a receipt reported.
    pub(crate) committed: u128,
    /// The highest `spent` and `acceptedCumulative` receipts reported.
    pub(crate) spent: u128,
    pub(crate) accepted: u128,
}

/// The limits a new voucher must respect.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) sign_ahead: u128,
    pub(crate) min_delta: u128,
    pub(crate) cap_per_channel: Option<u128>,
    pub(crate) cap_total: Option<u128>,
    pub(crate) top_up: Option<TopUpPolicy>,
}

/// The voucher to send for a payment that needs the channel's cumulative amount to reach a
/// target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoucherPlan {
    /// The highest signed voucher already covers it: send it again (no new signature).
    Reuse {
        /// Its amount.
        amount: u128,
    },
    /// Sign a new voucher of `amount`, after raising the deposit by `top_up` (0 = no top-up).
    Sign {
        /// The new cumulative amount (> the highest signed one).
        amount: u128,
        /// Deposit to add first.
        top_up: u128,
    },
}

/// Decides the voucher for reaching `target` on a channel with `deposit`, of which `signed`
/// is already signed, while the client's channels together have `total_signed` signed.
///
/// Caps are checked on what must be signed (`target`, raised to `signed + min_delta`): above a
/// cap is [`ClientError::CapExceeded`]. Signing ahead only adds headroom within the caps and the
/// deposit. Without a top-up policy a target above the deposit is
/// [`ClientError::DepositExhausted`]; with one, enough multiples of its amount are added so that
/// the deposit left after the voucher is at least `below`.
pub(crate) fn plan_voucher(
    channel: B256,
    deposit: u128,
    signed: u128,
    target: u128,
    total_signed: u128,
    limits: Limits,
) -> Result<VoucherPlan, ClientError> {
    if signed > 0 && target <= signed {
        return Ok(VoucherPlan::Reuse { amount: signed });
    }
    let floor = if signed > 0 {
        target.max(signed.saturating_add(limits.min_delta.max(1)))
    } else {
        target.max(1)
    };
    let others = total_signed.saturating_sub(signed);
    let mut ceiling = u128::MAX;
    if let Some(cap) = limits.cap_per_channel {
        if floor > cap {
            return Err(ClientError::CapExceeded {
                scope: CapScope::Channel,
                cap,
                would_be: floor,
            });
        }
        ceiling = ceiling.min(cap);
    }
    if let Some(cap) = limits.cap_total {
        // An overflowing sum is above any cap (saturated to `u128::MAX`, it passed a cap of
        // `u128::MAX`, and the voucher was then clamped below what it must cover).
        if others.checked_add(floor).is_none_or(|sum| sum > cap) {
            return Err(ClientError::CapExceeded {
                scope: CapScope::Client,
                cap,
                would_be: others.saturating_add(floor),
            });
        }
        ceiling = ceiling.min(cap - others);
    }
    let mut amount = floor.saturating_add(limits.sign_ahead).min(ceiling);
    let top_up = match limits.top_up {
        None => {
            if floor > deposit {
                return Err(ClientError::DepositExhausted {
                    channel,
                    deposit,
                    required: floor,
                });
            }
            amount = amount.min(deposit);
            0
        }
        Some(policy) => {
            let wanted = amount.saturating_add(policy.below);
            if wanted <= deposit || policy.amount == 0 {
                if floor > deposit {
                    return Err(ClientError::DepositExhausted {
                        channel,
                        deposit,
                        required: floor,
                    });
                }
                amount = amount.min(deposit);
                0
            } else {
                let missing = wanted - deposit;
                missing
                    .div_ceil(policy.amount)
                    .saturating_mul(policy.amount)
            }
        }
    };
    Ok(VoucherPlan::Sign { amount, top_up })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: B256 = B256::ZERO;

    fn limits() -> Limits {
        Limits {
            sign_ahead: 0,
            min_delta: 0,
            cap_per_channel: None,
            cap_total: None,
            top_up: None,
        }
    }

    #[test]
    fn reuses_a_voucher_that_covers_the_target() {
        assert_eq!(
            plan_voucher(CH, 1_000, 300, 250, 300, limits()).unwrap(),
            VoucherPlan::Reuse { amount: 300 }
        );
        assert_eq!(
            plan_voucher(CH, 1_000, 300, 301, 300, limits()).unwrap(),
            VoucherPlan::Sign {
                amount: 301,
                top_up: 0
            }
        );
    }

    #[test]
    fn signs_ahead_within_deposit_and_caps() {
        let l = Limits {
            sign_ahead: 500,
            ..limits()
        };
        assert_eq!(
            plan_voucher(CH, 1_000, 0, 100, 0, l).unwrap(),
            VoucherPlan::Sign {
                amount: 600,
                top_up: 0
            }
        );
        // The deposit and the caps clamp the headroom, not the payment.
        assert_eq!(
            plan_voucher(CH, 400, 0, 100, 0, l).unwrap(),
            VoucherPlan::Sign {
                amount: 400,
                top_up: 0
            }
        );
        let capped = Limits {
            cap_per_channel: Some(350),
            ..l
        };
        assert_eq!(
            plan_voucher(CH, 1_000, 0, 100, 0, capped).unwrap(),
            VoucherPlan::Sign {
                amount: 350,
                top_up: 0
            }
        );
        let total = Limits {
            cap_total: Some(1_000),
            ..l
        };
        assert_eq!(
            plan_voucher(CH, 10_000, 100, 200, 900, total).unwrap(),
            VoucherPlan::Sign {
                amount: 200,
                top_up: 0
            },
            "800 is signed elsewhere: at most 200 here"
        );
    }

    #[test]
    fn refuses_above_a_cap_with_the_amount_it_would_reach() {
        let l = Limits {
            cap_per_channel: Some(1_000),
            ..limits()
        };
        assert!(matches!(
            plan_voucher(CH, 10_000, 900, 1_001, 900, l),
            Err(ClientError::CapExceeded {
                scope: CapScope::Channel,
                cap: 1_000,
                would_be: 1_001
            })
        ));
        let l = Limits {
            cap_total: Some(1_500),
            ..limits()
        };
        // Reaching the cap exactly is allowed.
        assert_eq!(
            plan_voucher(CH, 10_000, 900, 1_000, 1_400, l).unwrap(),
            VoucherPlan::Sign {
                amount: 1_000,
                top_up: 0
            }
        );
        assert!(matches!(
            plan_voucher(CH, 10_000, 900, 1_001, 1_400, l),
            Err(ClientError::CapExceeded {
                scope: CapScope::Client,
                cap: 1_500,
                would_be: 1_501
            })
        ));
    }

    #[test]
    fn respects_the_minimum_delta() {
        let l = Limits {
            min_delta: 100,
            ..limits()
        };
        assert_eq!(
            plan_voucher(CH, 10_000, 1_000, 1_010, 1_000, l).unwrap(),
            VoucherPlan::Sign {
                amount: 1_100,
                top_up: 0
            }
        );
    }

    #[test]
    fn tops_up_in_multiples_of_the_policy_amount() {
        let policy = TopUpPolicy {
            below: 200,
            amount: 500,
        };
        let l = Limits {
            top_up: Some(policy),
            ..limits()
        };
        // 900 + 200 > 1000: one top-up of 500 leaves 600 ≥ 200.
        assert_eq!(
            plan_voucher(CH, 1_000, 800, 900, 800, l).unwrap(),
            VoucherPlan::Sign {
                amount: 900,
                top_up: 500
            }
        );
        // Far beyond the deposit: as many multiples as needed.
        assert_eq!(
            plan_voucher(CH, 1_000, 800, 2_100, 800, l).unwrap(),
            VoucherPlan::Sign {
                amount: 2_100,
                top_up: 1_500
            }
        );
        // Without a policy: refused, with the amount needed.
        assert!(matches!(
            plan_voucher(CH, 1_000, 800, 1_001, 800, limits()),
            Err(ClientError::DepositExhausted {
                deposit: 1_000,
                required: 1_001,
                ..
            })
        ));
    }

    #[test]
    fn amounts_near_u128_max_never_panic_and_keep_the_rule() {
        let edges = [
            0,
            1,
            2,
            u128::MAX / 2,
            u128::MAX - 2,
            u128::MAX - 1,
            u128::MAX,
        ];
        for deposit in edges {
            for signed in edges {
                for target in edges {
                    for extra in [0, 1, u128::MAX] {
                        let policy = [
                            None,
                            Some(TopUpPolicy {
                                below: extra,
                                amount: 3,
                            }),
                            Some(TopUpPolicy {
                                below: 1,
                                amount: u128::MAX,
                            }),
                        ];
                        for top_up in policy {
                            let limits = Limits {
                                sign_ahead: extra,
                                min_delta: extra,
                                cap_per_channel: Some(u128::MAX),
                                cap_total: Some(u128::MAX),
                                top_up,
                            };
                            let total = signed.saturating_add(extra);
                            match plan_voucher(CH, deposit, signed, target, total, limits) {
                                Ok(VoucherPlan::Sign { amount, .. }) => {
                                    assert!(
                                        amount >= target && amount > signed,
                                        "{deposit} {signed} {target} {extra} {top_up:?} -> {amount}"
                                    );
                                }
                                Ok(VoucherPlan::Reuse { amount }) => {
                                    assert!(amount == signed && target <= signed);
                                }
                                Err(_) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The rule against its specification: a new voucher covers the target, grows, keeps
        /// to the caps and the (topped-up) deposit, signs at most `sign_ahead` beyond what is
        /// needed, tops up by the fewest multiples; refusals happen exactly when they must.
        #[test]
        fn plan_keeps_caps_deposit_and_growth(
            deposit in 1u128..10_000,
            signed in 0u128..10_000,
            target in 0u128..12_000,
            others in 0u128..10_000,
            sign_ahead in 0u128..3_000,
            min_delta in 0u128..500,
            cap_channel in proptest::option::of(1u128..12_000),
            cap_total in proptest::option::of(1u128..25_000),
            policy in proptest::option::of((0u128..2_000, 1u128..3_000)),
        ) {
            let top_up = policy.map(|(below, amount)| TopUpPolicy { below, amount });
            let limits = Limits {
                sign_ahead,
                min_delta,
                cap_per_channel: cap_channel,
                cap_total,
                top_up,
            };
            let total = others + signed;
            let floor = if signed > 0 { target.max(signed + min_delta.max(1)) } else { target.max(1) };
            let result = plan_voucher(CH, deposit, signed, target, total, limits);
            if signed > 0 && target <= signed {
                proptest::prop_assert_eq!(result.unwrap(), VoucherPlan::Reuse { amount: signed });
                return Ok(());
            }
            let channel_ok = cap_channel.is_none_or(|cap| floor <= cap);
            let total_ok = cap_total.is_none_or(|cap| others + floor <= cap);
            let deposit_ok = top_up.is_some() || floor <= deposit;
            match result {
                Ok(VoucherPlan::Sign { amount, top_up: added }) => {
                    proptest::prop_assert!(channel_ok && total_ok && deposit_ok);
                    proptest::prop_assert!(amount >= floor && amount >= target && amount > signed);
                    proptest::prop_assert!(amount <= floor + sign_ahead);
                    if let Some(cap) = cap_channel { proptest::prop_assert!(amount <= cap); }
                    if let Some(cap) = cap_total { proptest::prop_assert!(others + amount <= cap); }
                    proptest::prop_assert!(amount <= deposit + added);
                    match top_up {
                        None => proptest::prop_assert_eq!(added, 0),
                        Some(policy) if added > 0 => {
                            proptest::prop_assert_eq!(added % policy.amount, 0);
                            proptest::prop_assert!(deposit + added >= amount + policy.below);
                            proptest::prop_assert!(deposit + added - policy.amount < amount + policy.below);
                        }
                        Some(policy) => proptest::prop_assert!(deposit >= amount + policy.below),
                    }
                }
                Ok(VoucherPlan::Reuse { .. }) => proptest::prop_assert!(false, "reuse below the target"),
                Err(ClientError::CapExceeded { scope: CapScope::Channel, cap, would_be }) => {
                    proptest::prop_assert!(!channel_ok);
                    proptest::prop_assert_eq!((Some(cap), would_be), (cap_channel, floor));
                }
                Err(ClientError::CapExceeded { scope: CapScope::Client, cap, would_be }) => {
                    proptest::prop_assert!(channel_ok && !total_ok);
                    proptest::prop_assert_eq!((Some(cap), would_be), (cap_total, others + floor));
                }
                Err(ClientError::DepositExhausted { deposit: d, required, .. }) => {
                    proptest::prop_assert!(channel_ok && total_ok && !deposit_ok);
                    proptest::prop_assert_eq!((d, required), (deposit, floor));
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {other}"),
            }
        }
    }
}
