//! The settlement policy: which channels to settle or close, in which order, in which batches.
//!
//! Pure: no I/O, no clock, no randomness. The caller passes a snapshot of channels, the
//! configuration, the time and the gas market; [`plan`] returns the actions to take and, for
//! every channel it leaves out, why. The same inputs always give the same plan.
//!
//! Priorities, first to last:
//! 1. **Watchtower**: channels whose payer asked the escrow to close (`CloseRequested`) and that
//!    hold an unsettled voucher. The payee closes them with the voucher before the grace period
//!    ends, earliest deadline first. Inside the safety margin the gas price cap no longer holds:
//!    losing the voucher costs more than any gas.
//! 2. **Closing**: channels the engine marked closing (cooperative close). Closed promptly, even
//!    with nothing left to settle, so the payer's rest is refunded.
//! 3. **Threshold settles**: channels whose unsettled amount or age passed the thresholds and
//!    whose unsettled amount pays for its gas, largest first, in `settleBatch` batches of at most
//!    `batch_size` items and `max_gas_per_batch` gas.

use std::collections::BTreeSet;

use alloy_primitives::{Address, B256};

/// A channel id (`bytes32`).
pub type ChannelId = B256;

/// The length of a voucher signature (`r ‖ s ‖ v`).
pub const SIGNATURE_LEN: usize = 65;

/// The engine's view of a channel, as the settlement feed reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineStatus {
    /// The open transaction is not final yet.
    Opening,
    /// Open: vouchers are accepted.
    Open,
    /// The engine marked the channel for a cooperative close.
    Closing,
    /// Finalized on chain: nothing left to do.
    Closed,
}

/// The highest voucher the engine accepted for a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Voucher {
    /// The cumulative amount, token base units.
    pub amount: u128,
    /// The payer's (or authorized signer's) 65-byte signature of it.
    pub signature: [u8; SIGNATURE_LEN],
}

/// One channel as the policy sees it: engine facts, chain facts and the daemon's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel id.
    pub id: ChannelId,
    /// Chain fact: the payer.
    pub payer: Address,
    /// Chain fact: the payee (the daemon's account).
    pub payee: Address,
    /// Chain fact: the token.
    pub token: Address,
    /// Chain fact: the salt from `ChannelOpened`; `None` until the daemon has seen the event
    /// (a `settleBatch` item needs it, `close` does not).
    pub salt: Option<B256>,
    /// Chain fact: the authorized signer (the zero address: the payer signs).
    pub authorized_signer: Address,
    /// Engine fact: the highest accepted voucher, `None` when there is none.
    pub voucher: Option<Voucher>,
    /// Chain fact: the amount already settled to the payee.
    pub settled: u128,
    /// Chain fact: the deposit.
    pub deposit: u128,
    /// Engine fact: the channel's status.
    pub status: EngineStatus,
    /// Chain fact: unix seconds of a pending close request (`CloseRequested`), `None` if none.
    pub close_requested_at: Option<u64>,
    /// Daemon fact: unix seconds since which the channel holds an unsettled voucher.
    pub first_unsettled_at: Option<u64>,
    /// Daemon fact: the amount of a submitted, not yet confirmed transaction for this channel.
    pub in_flight_amount: Option<u128>,
}

impl ChannelView {
    /// What settling the voucher now would pay the payee: `voucher − settled`, zero when there
    /// is no voucher or it is not above what is settled.
    pub fn unsettled(&self) -> u128 {
        self.voucher
            .map_or(0, |v| v.amount.saturating_sub(self.settled))
    }
}

/// The policy's knobs (see `settle.example.toml` for the operator's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Settle once this much is unsettled (token base units).
    pub min_unsettled_amount: u128,
    /// Settle once a voucher has waited this long unsettled (seconds).
    pub max_age_secs: u64,
    /// At most this many items per `settleBatch`.
    pub batch_size: usize,
    /// Gas of a `settleBatch` call with no items (the fixed part).
    pub gas_per_batch_base: u64,
    /// Gas one `settleBatch` item adds (estimate).
    pub gas_per_item: u64,
    /// Gas of a `close` call (estimate).
    pub gas_per_close: u64,
    /// Send nothing but urgent watchtower closes above this gas price (wei per gas).
    pub max_gas_price: u128,
    /// No transaction may use more gas than this.
    pub max_gas_per_batch: u64,
    /// The escrow's close grace period (seconds), `CLOSE_GRACE_PERIOD`.
    pub close_grace_period_secs: u64,
    /// How long before the grace period ends a watchtower close ignores the gas price cap.
    pub watchtower_margin_secs: u64,
}

impl PolicyConfig {
    /// How many items one batch can hold under both `batch_size` and `max_gas_per_batch`.
    pub fn items_per_batch(&self) -> usize {
        if self.gas_per_batch_base > self.max_gas_per_batch {
            // Not even an empty batch fits (whatever an item costs, including nothing).
            return 0;
        }
        let room = self
            .max_gas_per_batch
            .saturating_sub(self.gas_per_batch_base);
        let by_gas = room.checked_div(self.gas_per_item).unwrap_or(u64::MAX);
        self.batch_size
            .min(usize::try_from(by_gas).unwrap_or(usize::MAX))
    }

    /// The gas a batch of `items` items is estimated to use.
    pub fn batch_gas(&self, items: usize) -> u64 {
        let items = u64::try_from(items).unwrap_or(u64::MAX);
        self.gas_per_batch_base
            .saturating_add(self.gas_per_item.saturating_mul(items))
    }
}

/// The gas market and the time, as the caller observed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Market {
    /// Now, unix seconds.
    pub now: u64,
    /// The gas price a transaction would pay (wei per gas); compared with the cap.
    pub gas_price: u128,
    /// What one gas costs in the channel token's base units (the caller converts; on a chain
    /// whose fees are paid in the token this is the gas price in that token).
    pub token_per_gas: u128,
    /// The latest block's timestamp, unix seconds (0 when unknown). A close request's grace
    /// deadline is in chain time (the escrow compares it with `block.timestamp`): the
    /// watchtower's urgency uses the later of `now` and this, so a chain clock running ahead
    /// of the daemon's cannot make a deadline look further away than it is.
    pub chain_now: u64,
}

/// One transaction to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `settleBatch` with these channels' latest vouchers, in this order.
    SettleBatch(Vec<ChannelId>),
    /// `close` with the channel's latest voucher (settles it and refunds the payer the rest).
    Close(ChannelId),
}

/// Why a channel is in no action of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The snapshot names this channel more than once; only the first view is planned.
    Duplicate,
    /// Finalized on chain.
    Closed,
    /// The open transaction is not final yet.
    Opening,
    /// No voucher above the settled amount.
    NothingToSettle,
    /// The voucher exceeds the deposit (the escrow would refuse it until a top-up).
    VoucherAboveDeposit {
        /// The voucher amount.
        voucher: u128,
        /// The deposit.
        deposit: u128,
    },
    /// A submitted transaction already carries this voucher (or a higher one).
    InFlight {
        /// The amount in flight.
        amount: u128,
    },
    /// Neither the amount nor the age threshold is passed.
    BelowThreshold {
        /// The unsettled amount.
        unsettled: u128,
    },
    /// Settling would cost more gas than it pays.
    Unprofitable {
        /// The unsettled amount.
        unsettled: u128,
        /// The item's gas cost in token base units.
        gas_cost: u128,
    },
    /// The gas price is above the cap and the action is not urgent.
    GasPriceAboveCap {
        /// The current gas price.
        gas_price: u128,
        /// The cap.
        cap: u128,
    },
    /// A `settleBatch` item needs the salt, which the daemon has not seen yet.
    MissingSalt,
    /// The transaction would use more gas than `max_gas_per_batch` allows.
    GasCapTooSmall {
        /// The gas the transaction needs.
        needed: u64,
        /// `max_gas_per_batch`.
        cap: u64,
    },
}

/// A channel left out of a plan, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The channel.
    pub channel: ChannelId,
    /// Why.
    pub reason: SkipReason,
}

/// What to do this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Transactions to send, in priority order.
    pub actions: Vec<Action>,
    /// Channels in no action, with the reason.
    pub skipped: Vec<Skip>,
}

/// Decide what to settle and close now. See the module documentation for the rules.
pub fn plan(channels: &[ChannelView], config: &PolicyConfig, market: &Market) -> Plan {
    let mut seen = BTreeSet::new();
    let mut skipped = Vec::new();
    // (deadline, id) for watchtower closes; ids for cooperative closes; (unsettled, id) settles.
    let mut watchtower: Vec<(u64, ChannelId)> = Vec::new();
    let mut closing: Vec<ChannelId> = Vec::new();
    let mut settles: Vec<(u128, ChannelId)> = Vec::new();
    let price_ok = market.gas_price <= config.max_gas_price;
    let over_cap = SkipReason::GasPriceAboveCap {
        gas_price: market.gas_price,
        cap: config.max_gas_price,
    };

    for view in channels {
        if !seen.insert(view.id) {
            skipped.push(Skip {
                channel: view.id,
                reason: SkipReason::Duplicate,
            });
            continue;
        }
        let skip = |reason| Skip {
            channel: view.id,
            reason,
        };
        match classify(view, config, market) {
            Class::Skip(reason) => skipped.push(skip(reason)),
            Class::Watchtower { deadline, urgent } => {
                if price_ok || urgent {
                    watchtower.push((deadline, view.id));
                } else {
                    skipped.push(skip(over_cap));
                }
            }
            Class::Close => {
                if price_ok {
                    closing.push(view.id);
                } else {
                    skipped.push(skip(over_cap));
                }
            }
            Class::Settle { unsettled } => {
                if price_ok {
                    settles.push((unsettled, view.id));
                } else {
                    skipped.push(skip(over_cap));
                }
            }
        }
    }

    watchtower.sort_unstable();
    closing.sort_unstable();
    // Largest first, so a capped round settles the most value; ties by id for determinism.
    settles.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut actions = Vec::new();
    let closes = watchtower.into_iter().map(|(_, id)| id).chain(closing);
    if config.gas_per_close <= config.max_gas_per_batch {
        actions.extend(closes.map(Action::Close));
    } else {
        let reason = SkipReason::GasCapTooSmall {
            needed: config.gas_per_close,
            cap: config.max_gas_per_batch,
        };
        skipped.extend(closes.map(|channel| Skip { channel, reason }));
    }
    let ids: Vec<ChannelId> = settles.into_iter().map(|(_, id)| id).collect();
    match config.items_per_batch() {
        0 => {
            let reason = SkipReason::GasCapTooSmall {
                needed: config.batch_gas(1),
                cap: config.max_gas_per_batch,
            };
            skipped.extend(ids.into_iter().map(|channel| Skip { channel, reason }));
        }
        per_batch => {
            actions.extend(
                ids.chunks(per_batch)
                    .map(|chunk| Action::SettleBatch(chunk.to_vec())),
            );
        }
    }
    Plan { actions, skipped }
}

enum Class {
    Skip(SkipReason),
    Watchtower { deadline: u64, urgent: bool },
    Close,
    Settle { unsettled: u128 },
}

fn classify(view: &ChannelView, config: &PolicyConfig, market: &Market) -> Class {
    match view.status {
        EngineStatus::Closed => return Class::Skip(SkipReason::Closed),
        EngineStatus::Opening => return Class::Skip(SkipReason::Opening),
        EngineStatus::Open | EngineStatus::Closing => {}
    }
    if let Some(voucher) = view.voucher
        && voucher.amount > view.deposit
    {
        return Class::Skip(SkipReason::VoucherAboveDeposit {
            voucher: voucher.amount,
            deposit: view.deposit,
        });
    }
    let unsettled = view.unsettled();
    let voucher_amount = view.voucher.map_or(0, |v| v.amount);
    if let Some(amount) = view.in_flight_amount
        && amount >= voucher_amount
    {
        return Class::Skip(SkipReason::InFlight { amount });
    }
    if let Some(requested_at) = view.close_requested_at
        && unsettled > 0
    {
        let deadline = requested_at.saturating_add(config.close_grace_period_secs);
        let now = market.now.max(market.chain_now);
        let urgent = now.saturating_add(config.watchtower_margin_secs) >= deadline;
        return Class::Watchtower { deadline, urgent };
    }
    if view.status == EngineStatus::Closing {
        return Class::Close;
    }
    if unsettled == 0 {
        return Class::Skip(SkipReason::NothingToSettle);
    }
    let old_enough = view
        .first_unsettled_at
        .is_some_and(|since| market.now.saturating_sub(since) >= config.max_age_secs);
    if unsettled < config.min_unsettled_amount && !old_enough {
        return Class::Skip(SkipReason::BelowThreshold { unsettled });
    }
    let gas_cost = u128::from(config.gas_per_item).saturating_mul(market.token_per_gas);
    if unsettled < gas_cost {
        return Class::Skip(SkipReason::Unprofitable {
            unsettled,
            gas_cost,
        });
    }
    if view.salt.is_none() {
        return Class::Skip(SkipReason::MissingSalt);
    }
    Class::Settle { unsettled }
}

#[cfg(test)]
mod tests;
