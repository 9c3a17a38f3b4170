//! Reconciliation: the money of every channel checked from independent sources (the escrow's
//! events and balances on chain, the engine's accounting, each client's own counts), and the
//! figures of the summary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alloy::primitives::{Address, B256};

use crate::chain::{EscrowEvent, EventAt, TxCost};
use crate::services::{DaemonCounts, EngineChannel};

/// One channel's facts from every source.
#[derive(Debug, Clone)]
pub(crate) struct ChannelFacts {
    /// Agent index.
    pub(crate) agent: usize,
    /// Channel id.
    pub(crate) channel: B256,
    /// The payer.
    pub(crate) payer: Address,
    /// Units the client received (requests answered + SSE tokens).
    pub(crate) client_units: u64,
    /// The highest voucher the client signed.
    pub(crate) client_signed: u128,
    /// The engine's record (admin API), read after finalization.
    pub(crate) engine: EngineChannel,
    /// Whether the escrow reports the channel finalized.
    pub(crate) finalized_on_chain: bool,
    /// Whether the client refused a request beyond its cap (`None`: not tried).
    pub(crate) cap_refused: Option<bool>,
}

/// Token balances read before the agents start and after every channel is finalized.
#[derive(Debug, Clone, Default)]
pub(crate) struct Balances {
    /// The payee.
    pub(crate) payee: u128,
    /// The escrow contract.
    pub(crate) escrow: u128,
    /// Each payer.
    pub(crate) payers: BTreeMap<Address, u128>,
}

impl Balances {
    /// Sum over the payers.
    pub(crate) fn payers_total(&self) -> u128 {
        self.payers.values().sum()
    }
}

/// What the chain says about each channel, folded from the escrow's events.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainChannel {
    /// The payer from `ChannelOpened`.
    pub(crate) payer: Option<Address>,
    /// Opening deposit plus every top-up.
    pub(crate) deposit: u128,
    /// Number of top-ups.
    pub(crate) top_ups: u64,
    /// Settled by `settle`/`settleBatch` before the close.
    pub(crate) settled_before_close: u128,
    /// `(settledToPayee, refundedToPayer)` from `ChannelClosed`.
    pub(crate) closed: Option<(u128, u128)>,
}

/// Transactions by kind, with their gas.
#[derive(Debug, Clone, Default)]
pub(crate) struct TxSummary {
    /// `settleBatch`/`settle` transactions (they emitted `Settled`/`SettleSkipped`, no close).
    pub(crate) settle_txs: u64,
    /// Items settled by them.
    pub(crate) settle_items: u64,
    /// Items the escrow skipped.
    pub(crate) skipped_items: u64,
    /// Largest number of channels settled in one transaction.
    pub(crate) largest_batch: u64,
    /// Gas of the settle transactions.
    pub(crate) settle_gas: u64,
    /// `close` transactions.
    pub(crate) close_txs: u64,
    /// Gas of the close transactions.
    pub(crate) close_gas: u64,
    /// Whether every settle and close transaction was sent by the payee (the daemon).
    pub(crate) all_from_payee: bool,
}

/// Folds the escrow's events per channel.
pub(crate) fn fold_events(events: &[EventAt]) -> BTreeMap<B256, ChainChannel> {
    let mut out: BTreeMap<B256, ChainChannel> = BTreeMap::new();
    for EventAt { event, .. } in events {
        match *event {
            EscrowEvent::Opened {
                channel,
                payer,
                deposit,
            } => {
                let c = out.entry(channel).or_default();
                c.payer = Some(payer);
                c.deposit += deposit;
            }
            EscrowEvent::TopUp { channel, amount } => {
                let c = out.entry(channel).or_default();
                c.deposit += amount;
                c.top_ups += 1;
            }
            EscrowEvent::Settled {
                channel,
                new_settled,
                ..
            } => {
                let c = out.entry(channel).or_default();
                c.settled_before_close = c.settled_before_close.max(new_settled);
            }
            EscrowEvent::Closed {
                channel,
                to_payee,
                to_payer,
            } => {
                out.entry(channel).or_default().closed = Some((to_payee, to_payer));
            }
            EscrowEvent::Skipped | EscrowEvent::Other => {}
        }
    }
    out
}

/// Groups the settle and close transactions and sums their gas.
pub(crate) fn summarize_txs(
    events: &[EventAt],
    costs: &BTreeMap<B256, TxCost>,
    payee: Address,
) -> TxSummary {
    #[derive(Default)]
    struct PerTx {
        settled: u64,
        skipped: u64,
        closed: u64,
    }
    let mut per_tx: BTreeMap<B256, PerTx> = BTreeMap::new();
    for EventAt { tx, event } in events {
        match event {
            EscrowEvent::Settled { .. } => per_tx.entry(*tx).or_default().settled += 1,
            EscrowEvent::Skipped => per_tx.entry(*tx).or_default().skipped += 1,
            EscrowEvent::Closed { .. } => per_tx.entry(*tx).or_default().closed += 1,
            _ => {}
        }
    }
    let mut s = TxSummary {
        all_from_payee: true,
        ..TxSummary::default()
    };
    for (tx, counts) in per_tx {
        let cost = costs.get(&tx);
        let gas = cost.map_or(0, |c| c.gas_used);
        if cost.is_none_or(|c| c.from != payee) {
            s.all_from_payee = false;
        }
        if counts.closed > 0 {
            s.close_txs += 1;
            s.close_gas += gas;
        } else {
            s.settle_txs += 1;
            s.settle_items += counts.settled;
            s.skipped_items += counts.skipped;
            s.largest_batch = s.largest_batch.max(counts.settled);
            s.settle_gas += gas;
        }
    }
    s
}

/// The transactions whose gas the summary needs (those that settled, skipped or closed).
pub(crate) fn settlement_txs(events: &[EventAt]) -> BTreeSet<B256> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                EscrowEvent::Settled { .. } | EscrowEvent::Skipped | EscrowEvent::Closed { .. }
            )
        })
        .map(|e| e.tx)
        .collect()
}

/// One reconciliation check.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What is checked.
    pub(crate) name: &'static str,
    /// Whether it held.
    pub(crate) pass: bool,
    /// The figures, or the first violations.
    pub(crate) detail: String,
}

/// Everything the checks read.
pub(crate) struct Inputs<'a> {
    /// Per channel, every source.
    pub(crate) channels: &'a [ChannelFacts],
    /// The escrow's events folded per channel.
    pub(crate) chain: &'a BTreeMap<B256, ChainChannel>,
    /// Settle and close transactions.
    pub(crate) txs: &'a TxSummary,
    /// Balances before the agents started.
    pub(crate) before: &'a Balances,
    /// Balances after every channel was finalized.
    pub(crate) after: &'a Balances,
    /// Price of one unit.
    pub(crate) price: u128,
    /// Agents that were started.
    pub(crate) agents: usize,
    /// Failed requests and streams.
    pub(crate) failures: u64,
    /// The daemon's own counts from its `/metrics` (`None`: not readable).
    pub(crate) daemon: Option<DaemonCounts>,
}

/// Runs every check.
pub(crate) fn reconcile(i: &Inputs<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let total_paid: u128 = i
        .channels
        .iter()
        .filter_map(|c| i.chain.get(&c.channel).and_then(|cc| cc.closed))
        .map(|(to_payee, _)| to_payee)
        .sum();

    checks.push(Check {
        name: "every agent opened a channel and every request and stream succeeded",
        pass: i.channels.len() == i.agents && i.failures == 0,
        detail: format!(
            "{} channels for {} agents, {} failures",
            i.channels.len(),
            i.agents,
            i.failures
        ),
    });

    checks.push(per_channel(
        "engine charged exactly what each client received (spent = units x price)",
        i.channels,
        |c| {
            let want = i.price * u128::from(c.client_units);
            (c.engine.spent == want && c.engine.units == c.client_units)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "engine spent {} for {} units, client received {} units ({want})",
                        c.engine.spent, c.engine.units, c.client_units
                    )
                })
        },
    ));

    checks.push(per_channel(
        "spent <= accepted <= deposit (engine vs on-chain deposit)",
        i.channels,
        |c| {
            let deposit = i.chain.get(&c.channel).map_or(0, |cc| cc.deposit);
            (c.engine.spent <= c.engine.accepted && c.engine.accepted <= deposit)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "spent {} accepted {} deposit {deposit}",
                        c.engine.spent, c.engine.accepted
                    )
                })
        },
    ));

    checks.push(per_channel(
        "client's highest signed voucher = engine's accepted voucher",
        i.channels,
        |c| {
            (c.client_signed == c.engine.accepted)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "client signed {} engine accepted {}",
                        c.client_signed, c.engine.accepted
                    )
                })
        },
    ));

    checks.push(per_channel(
        "on-chain payee amount (ChannelClosed) = engine's accepted voucher",
        i.channels,
        |c| match i.chain.get(&c.channel).and_then(|cc| cc.closed) {
            Some((to_payee, _)) if to_payee == c.engine.accepted => Ok(()),
            Some((to_payee, _)) => Err(format!(
                "paid {to_payee} on chain, engine accepted {}",
                c.engine.accepted
            )),
            None => Err("no ChannelClosed event".into()),
        },
    ));

    checks.push(per_channel(
        "payer refunded the rest (refund = deposit + top-ups - paid)",
        i.channels,
        |c| {
            let Some(cc) = i.chain.get(&c.channel) else {
                return Err("no events".into());
            };
            match cc.closed {
                Some((to_payee, to_payer)) if to_payee + to_payer == cc.deposit => Ok(()),
                Some((to_payee, to_payer)) => Err(format!(
                    "paid {to_payee} + refunded {to_payer} != deposit {}",
                    cc.deposit
                )),
                None => Err("not closed".into()),
            }
        },
    ));

    checks.push(per_channel(
        "each payer's balance fell by exactly what its payee was paid",
        i.channels,
        |c| {
            let paid = i
                .chain
                .get(&c.channel)
                .and_then(|cc| cc.closed)
                .map_or(0, |(p, _)| p);
            let before = i.before.payers.get(&c.payer).copied().unwrap_or(0);
            let after = i.after.payers.get(&c.payer).copied().unwrap_or(0);
            (before.checked_sub(after) == Some(paid))
                .then_some(())
                .ok_or_else(|| format!("balance {before} -> {after}, paid {paid}"))
        },
    ));

    let payee_delta = i.after.payee.checked_sub(i.before.payee);
    checks.push(Check {
        name: "payee's balance grew by the sum paid on chain",
        pass: payee_delta == Some(total_paid),
        detail: format!(
            "payee +{}, channels paid {total_paid}",
            payee_delta.map_or_else(|| "negative".into(), |d| d.to_string())
        ),
    });

    let unfinalized = i.channels.iter().filter(|c| !c.finalized_on_chain).count();
    checks.push(Check {
        name: "escrow holds nothing: every channel finalized, escrow balance back to its start",
        pass: unfinalized == 0 && i.after.escrow == i.before.escrow,
        detail: format!(
            "{unfinalized} channels not finalized; escrow balance {} -> {}",
            i.before.escrow, i.after.escrow
        ),
    });

    let before_total = i.before.payee + i.before.escrow + i.before.payers_total();
    let after_total = i.after.payee + i.after.escrow + i.after.payers_total();
    checks.push(Check {
        name: "no token created or lost (payee + payers + escrow)",
        pass: before_total == after_total,
        detail: format!("{before_total} before, {after_total} after"),
    });

    checks.push(Check {
        name: "the daemon (payee key) settled in batches and closed every channel",
        pass: i.txs.all_from_payee
            && i.txs.settle_txs > 0
            && i.txs.close_txs as usize == i.channels.len()
            && i.txs.skipped_items == 0,
        detail: format!(
            "{} settle txs ({} items, largest {}), {} skipped, {} close txs, all from payee: {}",
            i.txs.settle_txs,
            i.txs.settle_items,
            i.txs.largest_batch,
            i.txs.skipped_items,
            i.txs.close_txs,
            i.txs.all_from_payee
        ),
    });

    let chain_gas = i.txs.settle_gas + i.txs.close_gas;
    checks.push(Check {
        name: "the daemon's /metrics agree with the chain (settle batches, closes, gas)",
        pass: i.daemon.is_some_and(|d| {
            d.settle_batches == i.txs.settle_txs
                && d.closes == i.txs.close_txs
                && d.gas_used == chain_gas
        }),
        detail: match i.daemon {
            Some(d) => format!(
                "daemon: {} settle batches, {} closes, {} gas; chain: {}, {}, {}",
                d.settle_batches,
                d.closes,
                d.gas_used,
                i.txs.settle_txs,
                i.txs.close_txs,
                chain_gas
            ),
            None => "the daemon's /metrics could not be read".into(),
        },
    });

    checks.push(per_channel(
        "the engine learnt every channel is closed",
        i.channels,
        |c| {
            (c.engine.status == "closed" && c.engine.finalized)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "status {} finalized {}",
                        c.engine.status, c.engine.finalized
                    )
                })
        },
    ));

    checks.push(per_channel(
        "spending cap: a request beyond it was refused by the client (CapExceeded)",
        i.channels,
        |c| match c.cap_refused {
            Some(true) => Ok(()),
            Some(false) => Err("the request beyond the cap was not refused".into()),
            None => Err("not tried (the agent had failures)".into()),
        },
    ));

    checks
}

/// A check over every channel, listing the first few violations.
fn per_channel(
    name: &'static str,
    channels: &[ChannelFacts],
    rule: impl Fn(&ChannelFacts) -> Result<(), String>,
) -> Check {
    let violations: Vec<String> = channels
        .iter()
        .filter_map(|c| {
            rule(c)
                .err()
                .map(|why| format!("agent {} channel {}: {why}", c.agent, short(c.channel)))
        })
        .collect();
    Check {
        name,
        pass: violations.is_empty() && !channels.is_empty(),
        detail: if channels.is_empty() {
            "no channels".into()
        } else if violations.is_empty() {
            format!("{} channels", channels.len())
        } else {
            let mut shown: Vec<String> = violations.iter().take(3).cloned().collect();
            if violations.len() > 3 {
                shown.push(format!("... {} more", violations.len() - 3));
            }
            shown.join("; ")
        },
    }
}

/// `0x1234…abcd`.
pub(crate) fn short(id: B256) -> String {
    let s = id.to_string();
    format!("{}…{}", &s[..6], &s[s.len() - 4..])
}

/// The `p`-th percentile (0..=100) of `samples` by nearest rank; `None` when empty.
pub(crate) fn percentile(samples: &mut [Duration], p: u32) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = (u64::from(p) * n as u64).div_ceil(100).max(1) as usize;
    Some(samples[rank.min(n) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(channel: u8, units: u64, spent: u128, accepted: u128) -> ChannelFacts {
        ChannelFacts {
            agent: usize::from(channel),
            channel: B256::repeat_byte(channel),
            payer: Address::repeat_byte(channel),
            client_units: units,
            client_signed: accepted,
            engine: EngineChannel {
                accepted,
                spent,
                units,
                deposit: 10_000,
                status: "closed".into(),
                finalized: true,
            },
            finalized_on_chain: true,
            cap_refused: Some(true),
        }
    }

    fn tx(n: u8) -> B256 {
        B256::repeat_byte(0xf0 | n)
    }

    /// A consistent world: one channel, 10 units at 100, deposit 10,000 + 5,000 top-up,
    /// settled 600 in a batch, closed paying 1,000 and refunding 14,000.
    fn world() -> (Vec<ChannelFacts>, Vec<EventAt>, Balances, Balances) {
        let channel = B256::repeat_byte(1);
        let payer = Address::repeat_byte(1);
        let events = vec![
            EventAt {
                tx: tx(1),
                event: EscrowEvent::Opened {
                    channel,
                    payer,
                    deposit: 10_000,
                },
            },
            EventAt {
                tx: tx(2),
                event: EscrowEvent::TopUp {
                    channel,
                    amount: 5_000,
                },
            },
            EventAt {
                tx: tx(3),
                event: EscrowEvent::Settled {
                    channel,
                    delta: 600,
                    new_settled: 600,
                },
            },
            EventAt {
                tx: tx(4),
                event: EscrowEvent::Closed {
                    channel,
                    to_payee: 1_000,
                    to_payer: 14_000,
                },
            },
        ];
        let before = Balances {
            payee: 0,
            escrow: 0,
            payers: BTreeMap::from([(payer, 20_000)]),
        };
        let after = Balances {
            payee: 1_000,
            escrow: 0,
            payers: BTreeMap::from([(payer, 19_000)]),
        };
        (vec![facts(1, 10, 1_000, 1_000)], events, before, after)
    }

    fn run(
        channels: &[ChannelFacts],
        events: &[EventAt],
        before: &Balances,
        after: &Balances,
    ) -> Vec<Check> {
        let payee = Address::repeat_byte(0xee);
        let costs: BTreeMap<B256, TxCost> = (1..=4)
            .map(|n| {
                (
                    tx(n),
                    TxCost {
                        from: payee,
                        gas_used: 50_000,
                    },
                )
            })
            .collect();
        let chain = fold_events(events);
        let txs = summarize_txs(events, &costs, payee);
        let daemon = Some(DaemonCounts {
            settle_batches: txs.settle_txs,
            closes: txs.close_txs,
            gas_used: txs.settle_gas + txs.close_gas,
            ..DaemonCounts::default()
        });
        reconcile(&Inputs {
            channels,
            chain: &chain,
            txs: &txs,
            before,
            after,
            price: 100,
            agents: channels.len(),
            failures: 0,
            daemon,
        })
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.pass).map(|c| c.name).collect()
    }

    #[test]
    fn a_consistent_world_passes_every_check() {
        let (channels, events, before, after) = world();
        let checks = run(&channels, &events, &before, &after);
        assert!(failed(&checks).is_empty(), "{checks:#?}");
        assert!(checks.len() >= 10);
    }

    #[test]
    fn a_payee_paid_more_than_the_engine_accepted_fails() {
        let (channels, mut events, before, mut after) = world();
        events[3].event = EscrowEvent::Closed {
            channel: B256::repeat_byte(1),
            to_payee: 1_100,
            to_payer: 13_900,
        };
        after.payee = 1_100;
        after.payers.insert(Address::repeat_byte(1), 18_900);
        let failed = failed(&run(&channels, &events, &before, &after));
        assert_eq!(
            failed,
            vec!["on-chain payee amount (ChannelClosed) = engine's accepted voucher"]
        );
    }

    #[test]
    fn an_engine_charge_the_client_did_not_receive_fails() {
        let (mut channels, events, before, after) = world();
        channels[0].client_units = 9;
        let failed = failed(&run(&channels, &events, &before, &after));
        assert_eq!(
            failed,
            vec!["engine charged exactly what each client received (spent = units x price)"]
        );
    }

    #[test]
    fn a_refund_short_of_the_rest_fails_and_so_do_the_balances() {
        let (channels, mut events, before, mut after) = world();
        events[3].event = EscrowEvent::Closed {
            channel: B256::repeat_byte(1),
            to_payee: 1_000,
            to_payer: 13_000,
        };
        after.escrow = 1_000;
        after.payers.insert(Address::repeat_byte(1), 18_000);
        let failed = failed(&run(&channels, &events, &before, &after));
        assert!(failed.contains(&"payer refunded the rest (refund = deposit + top-ups - paid)"));
        assert!(failed.contains(
            &"escrow holds nothing: every channel finalized, escrow balance back to its start"
        ));
        assert!(failed.contains(&"each payer's balance fell by exactly what its payee was paid"));
    }

    #[test]
    fn accepted_above_the_deposit_or_below_spent_fails() {
        let (mut channels, events, before, after) = world();
        channels[0].engine.spent = 1_200;
        let failed = failed(&run(&channels, &events, &before, &after));
        assert!(failed.contains(&"spent <= accepted <= deposit (engine vs on-chain deposit)"));
    }

    #[test]
    fn a_settlement_sent_by_someone_else_or_a_missing_close_fails() {
        let (channels, mut events, before, after) = world();
        events.pop();
        let failed = failed(&run(&channels, &events, &before, &after));
        assert!(
            failed.contains(&"the daemon (payee key) settled in batches and closed every channel")
        );
        assert!(
            failed.contains(&"on-chain payee amount (ChannelClosed) = engine's accepted voucher")
        );
    }

    #[test]
    fn no_channels_is_a_failure_not_a_vacuous_pass() {
        let (_, events, before, after) = world();
        let checks = run(&[], &events, &before, &after);
        assert!(!checks.iter().all(|c| c.pass));
    }

    #[test]
    fn transactions_are_grouped_by_kind_with_their_gas() {
        let (_, events, _, _) = world();
        let payee = Address::repeat_byte(0xee);
        let costs: BTreeMap<B256, TxCost> = [(tx(3), 40_000), (tx(4), 70_000)]
            .into_iter()
            .map(|(t, gas_used)| {
                (
                    t,
                    TxCost {
                        from: payee,
                        gas_used,
                    },
                )
            })
            .collect();
        let s = summarize_txs(&events, &costs, payee);
        assert_eq!((s.settle_txs, s.settle_items, s.settle_gas), (1, 1, 40_000));
        assert_eq!((s.close_txs, s.close_gas), (1, 70_000));
        assert!(s.all_from_payee);
        let other = summarize_txs(&events, &costs, Address::repeat_byte(0xaa));
        assert!(!other.all_from_payee);
        assert_eq!(settlement_txs(&events), BTreeSet::from([tx(3), tx(4)]));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            percentile(&mut samples, 50),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            percentile(&mut samples, 99),
            Some(Duration::from_millis(99))
        );
        assert_eq!(
            percentile(&mut samples, 100),
            Some(Duration::from_millis(100))
        );
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentile(&mut one, 99), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&mut [], 50), None);
    }
}
