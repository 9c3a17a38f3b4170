//! The cache policy for chain facts kept in a [`ChannelRecord`]: when to re-read them, and how
//! a fresh read is folded into the record without breaking its money invariants.
//!
//! Both functions are pure (time is an argument), so the facade can call them inside a store
//! update closure.

use std::time::Duration;

use alloy_primitives::Address;

use super::OnChainChannel;
use crate::store::{ChannelId, ChannelRecord, ChannelStatus, RecordError};

/// How long cached chain facts are trusted before a read re-checks them: 5 s, as mppx's
/// `channelStateTtl`.
pub const DEFAULT_CHAIN_FACTS_TTL: Duration = Duration::from_secs(5);

/// Why fresh chain facts were not applied to a record. The record is left as it was; each
/// variant means the read contradicts what the escrow guarantees (a lagging or forked node, a
/// reorg, or the wrong escrow), so the caller should not serve on the cached facts either
/// without looking.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainFactsError {
    /// The escrow has no such channel (and no tombstone).
    #[error("channel {channel} does not exist on chain")]
    NotOnChain {
        /// The channel.
        channel: ChannelId,
    },
    /// A field fixed at `open` differs from the cached one.
    #[error("channel {channel}: on-chain {field} is {chain}, cached {cached}")]
    IdentityChanged {
        /// The channel.
        channel: ChannelId,
        /// Which field (`payer`, `payee`, `token`, `authorizedSigner`).
        field: &'static str,
        /// The cached value.
        cached: Address,
        /// The value read from the chain.
        chain: Address,
    },
    /// The deposit went down (it only grows while a channel lives).
    #[error("channel {channel}: on-chain deposit {chain} is below the cached {cached}")]
    DepositDecreased {
        /// The channel.
        channel: ChannelId,
        /// The cached deposit.
        cached: u128,
        /// The deposit read from the chain.
        chain: u128,
    },
    /// The settled amount went down (it only grows while a channel lives).
    #[error("channel {channel}: on-chain settled {chain} is below the cached {cached}")]
    SettledDecreased {
        /// The channel.
        channel: ChannelId,
        /// The cached settled amount.
        cached: u128,
        /// The settled amount read from the chain.
        chain: u128,
    },
    /// The chain reports more settled than deposited, which the escrow never allows.
    #[error("channel {channel}: on-chain settled {settled} exceeds deposit {deposit}")]
    SettledExceedsDeposit {
        /// The channel.
        channel: ChannelId,
        /// The settled amount read.
        settled: u128,
        /// The deposit read.
        deposit: u128,
    },
    /// The record says finalized but the chain shows a live channel (finalization is final).
    #[error("channel {channel} is finalized in the store but live on chain")]
    Unfinalized {
        /// The channel.
        channel: ChannelId,
    },
    /// The record given was already invalid.
    #[error("record breaks an invariant: {0}")]
    Record(#[from] RecordError),
}

/// Whether the chain facts of `record` should be re-read at `now_ms` (unix milliseconds).
///
/// True when they were never read, when they are at least `ttl` old, or when the clock reads
/// earlier than the last check (the cache age is then unknown). A finalized channel never
/// changes on chain again, so it never needs a refresh.
pub fn needs_refresh(record: &ChannelRecord, now_ms: u64, ttl: Duration) -> bool {
    if record.finalized {
        return false;
    }
    if record.chain_checked_at_ms == 0 {
        return true;
    }
    match now_ms.checked_sub(record.chain_checked_at_ms) {
        Some(age_ms) => u128::from(age_ms) >= ttl.as_millis(),
        None => true,
    }
}

/// Folds a fresh read of the escrow into `record`, stamped `now_ms`, and returns the new
/// record. Engine facts (`accepted_cumulative`, its signature, `spent`, `units`) are never
/// touched.
///
/// - A live channel: payer, payee, token and signer must match the cached ones (when cached);
///   deposit and settled may only grow; `close_requested_at` is copied (a `topUp` cancels a
///   request, so it may go back to 0). A pending close request moves `Opening`/`Open` to
///   `Closing`. `Closing` is never undone here: only the facade knows whether it came from the
///   chain or from a close voucher, so only it may reopen a channel whose request a `topUp`
///   cancelled.
/// - A finalized channel: the escrow deleted its record (its reads are zero), so the cached
///   facts stay as the tombstone; `finalized` is set and the status becomes `Closed`.
///
/// Because the deposit never goes down, `spent ≤ accepted_cumulative ≤ deposit` keeps holding;
/// a read that would break it is refused with a [`ChainFactsError`] and changes nothing.
pub fn apply_chain_facts(
    record: &ChannelRecord,
    chain: &OnChainChannel,
    now_ms: u64,
) -> Result<ChannelRecord, ChainFactsError> {
    record.check_invariants()?;
    let channel = record.channel_id;
    if !chain.exists() {
        return Err(ChainFactsError::NotOnChain { channel });
    }
    let mut next = *record;
    next.chain_checked_at_ms = now_ms;
    if chain.finalized {
        next.finalized = true;
        next.status = ChannelStatus::Closed;
        return Ok(next);
    }
    if record.finalized {
        return Err(ChainFactsError::Unfinalized { channel });
    }
    if record.payer != Address::ZERO {
        for (field, cached, read) in [
            ("payer", record.payer, chain.payer),
            ("payee", record.payee, chain.payee),
            ("token", record.token, chain.token),
            (
                "authorizedSigner",
                record.authorized_signer,
                chain.authorized_signer,
            ),
        ] {
            if cached != read {
                return Err(ChainFactsError::IdentityChanged {
                    channel,
                    field,
                    cached,
                    chain: read,
                });
            }
        }
    }
    if chain.deposit < record.deposit {
        return Err(ChainFactsError::DepositDecreased {
            channel,
            cached: record.deposit,
            chain: chain.deposit,
        });
    }
    if chain.settled < record.settled {
        return Err(ChainFactsError::SettledDecreased {
            channel,
            cached: record.settled,
            chain: chain.settled,
        });
    }
    if chain.settled > chain.deposit {
        return Err(ChainFactsError::SettledExceedsDeposit {
            channel,
            settled: chain.settled,
            deposit: chain.deposit,
        });
    }
    next.payer = chain.payer;
    next.payee = chain.payee;
    next.token = chain.token;
    next.authorized_signer = chain.authorized_signer;
    next.deposit = chain.deposit;
    next.settled = chain.settled;
    next.close_requested_at = chain.close_requested_at;
    if chain.close_requested_at != 0
        && matches!(next.status, ChannelStatus::Opening | ChannelStatus::Open)
    {
        next.status = ChannelStatus::Closing;
    }
    // Holds by construction (the deposit did not go down); checked so a future edit cannot
    // silently hand the store a record it would refuse.
    next.check_invariants()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SIGNATURE_LEN;
    use alloy_primitives::B256;
    use proptest::prelude::*;

    const PAYER: Address = Address::repeat_byte(0x11);
    const PAYEE: Address = Address::repeat_byte(0x22);
    const TOKEN: Address = Address::repeat_byte(0x33);

    fn live(deposit: u128, settled: u128) -> OnChainChannel {
        OnChainChannel {
            finalized: false,
            close_requested_at: 0,
            payer: PAYER,
            payee: PAYEE,
            token: TOKEN,
            authorized_signer: Address::ZERO,
            deposit,
            settled,
        }
    }

    fn open_record() -> ChannelRecord {
        let mut record = ChannelRecord::new(B256::repeat_byte(0xc1));
        record.status = ChannelStatus::Open;
        record.payer = PAYER;
        record.payee = PAYEE;
        record.token = TOKEN;
        record.deposit = 1_000;
        record.settled = 100;
        record.chain_checked_at_ms = 10_000;
        record.accepted_cumulative = 600;
        record.accepted_signature = [7; SIGNATURE_LEN];
        record.spent = 550;
        record.units = 11;
        record
    }

    #[test]
    fn refresh_is_due_when_never_read_stale_or_the_clock_went_back() {
        let ttl = DEFAULT_CHAIN_FACTS_TTL;
        let mut record = open_record();
        assert!(!needs_refresh(&record, 10_000, ttl), "just read");
        assert!(!needs_refresh(&record, 14_999, ttl), "4.999 s old");
        assert!(needs_refresh(&record, 15_000, ttl), "5 s old");
        assert!(needs_refresh(&record, 9_999, ttl), "clock went back");
        assert!(needs_refresh(&record, u64::MAX, ttl));
        assert!(
            needs_refresh(&record, 10_000, Duration::ZERO),
            "a zero TTL always re-reads"
        );
        record.chain_checked_at_ms = 0;
        assert!(needs_refresh(&record, 0, ttl), "never read");
        record.finalized = true;
        assert!(!needs_refresh(&record, u64::MAX, ttl), "finalized is final");
    }

    #[test]
    fn first_read_fills_the_identity_and_amounts() {
        let fresh = ChannelRecord::new(B256::repeat_byte(0xc1));
        let mut chain = live(500, 0);
        chain.authorized_signer = Address::repeat_byte(0x44);
        let next = apply_chain_facts(&fresh, &chain, 42).expect("applies");
        assert_eq!(next.payer, PAYER);
        assert_eq!(next.payee, PAYEE);
        assert_eq!(next.token, TOKEN);
        assert_eq!(next.authorized_signer, Address::repeat_byte(0x44));
        assert_eq!((next.deposit, next.settled), (500, 0));
        assert_eq!(next.chain_checked_at_ms, 42);
        assert_eq!(
            next.status,
            ChannelStatus::Opening,
            "opening is the facade's call"
        );
    }

    #[test]
    fn top_up_and_settlement_grow_the_cached_amounts_and_keep_engine_facts() {
        let record = open_record();
        let next = apply_chain_facts(&record, &live(1_500, 400), 20_000).expect("applies");
        assert_eq!((next.deposit, next.settled), (1_500, 400));
        assert_eq!(next.chain_checked_at_ms, 20_000);
        assert_eq!(next.accepted_cumulative, record.accepted_cumulative);
        assert_eq!(next.accepted_signature, record.accepted_signature);
        assert_eq!((next.spent, next.units), (record.spent, record.units));
        assert_eq!(next.status, ChannelStatus::Open);
    }

    #[test]
    fn a_close_request_moves_to_closing_and_closing_sticks() {
        let record = open_record();
        let mut chain = live(1_000, 100);
        chain.close_requested_at = 1_700_000_000;
        let closing = apply_chain_facts(&record, &chain, 20_000).expect("applies");
        assert_eq!(closing.status, ChannelStatus::Closing);
        assert_eq!(closing.close_requested_at, 1_700_000_000);

        // A topUp cancelled the request: the fact is cleared, the status stays for the facade.
        let cancelled = apply_chain_facts(&closing, &live(2_000, 100), 30_000).expect("applies");
        assert_eq!(cancelled.close_requested_at, 0);
        assert_eq!(cancelled.status, ChannelStatus::Closing);
    }

    #[test]
    fn finalization_keeps_the_tombstone_and_closes() {
        let record = open_record();
        let chain = OnChainChannel {
            finalized: true,
            ..OnChainChannel::default()
        };
        let closed = apply_chain_facts(&record, &chain, 20_000).expect("applies");
        assert!(closed.finalized);
        assert_eq!(closed.status, ChannelStatus::Closed);
        assert_eq!(
            closed.deposit, record.deposit,
            "the zeroed read is not copied"
        );
        assert_eq!(closed.payer, record.payer);
        assert!(closed.check_invariants().is_ok());
        // A finalized channel reading live again is a contradiction.
        assert_eq!(
            apply_chain_facts(&closed, &live(1_000, 100), 30_000),
            Err(ChainFactsError::Unfinalized {
                channel: record.channel_id
            })
        );
    }

    #[test]
    fn contradictory_reads_are_refused() {
        let record = open_record();
        let channel = record.channel_id;
        assert_eq!(
            apply_chain_facts(&record, &OnChainChannel::default(), 1),
            Err(ChainFactsError::NotOnChain { channel })
        );
        assert_eq!(
            apply_chain_facts(&record, &live(999, 100), 1),
            Err(ChainFactsError::DepositDecreased {
                channel,
                cached: 1_000,
                chain: 999
            })
        );
        assert_eq!(
            apply_chain_facts(&record, &live(1_000, 99), 1),
            Err(ChainFactsError::SettledDecreased {
                channel,
                cached: 100,
                chain: 99
            })
        );
        assert_eq!(
            apply_chain_facts(&record, &live(1_000, 1_001), 1),
            Err(ChainFactsError::SettledExceedsDeposit {
                channel,
                settled: 1_001,
                deposit: 1_000
            })
        );
        let mut other_payee = live(1_000, 100);
        other_payee.payee = Address::repeat_byte(0x99);
        assert_eq!(
            apply_chain_facts(&record, &other_payee, 1),
            Err(ChainFactsError::IdentityChanged {
                channel,
                field: "payee",
                cached: PAYEE,
                chain: Address::repeat_byte(0x99)
            })
        );
        let mut other_signer = live(1_000, 100);
        other_signer.authorized_signer = Address::repeat_byte(0x98);
        assert!(matches!(
            apply_chain_facts(&record, &other_signer, 1),
            Err(ChainFactsError::IdentityChanged {
                field: "authorizedSigner",
                ..
            })
        ));
        let mut broken = record;
        broken.spent = broken.accepted_cumulative + 1;
        assert!(matches!(
            apply_chain_facts(&broken, &live(1_000, 100), 1),
            Err(ChainFactsError::Record(
                RecordError::SpentExceedsAccepted { .. }
            ))
        ));
    }

    fn arb_record() -> impl Strategy<Value = ChannelRecord> {
        (
            0u128..10_000,
            0u128..10_000,
            0u128..10_000,
            0u8..4,
            any::<bool>(),
            0u64..3,
        )
            .prop_map(
                |(deposit, accepted_raw, spent_raw, status, finalized, who)| {
                    let mut record = ChannelRecord::new(B256::repeat_byte(0xc1));
                    record.status = ChannelStatus::from_byte(status).expect("0..4");
                    record.finalized = finalized;
                    if who > 0 {
                        record.payer = PAYER;
                        record.payee = PAYEE;
                        record.token = TOKEN;
                    }
                    record.deposit = deposit;
                    record.settled = deposit / 3;
                    record.accepted_cumulative = accepted_raw % (deposit + 1);
                    record.spent = spent_raw % (record.accepted_cumulative + 1);
                    if record.accepted_cumulative > 0 {
                        record.accepted_signature = [9; SIGNATURE_LEN];
                    }
                    record
                },
            )
    }

    fn arb_chain() -> impl Strategy<Value = OnChainChannel> {
        (any::<bool>(), 0u64..3, 0u128..20_000, 0u128..20_000, 0u8..4).prop_map(
            |(finalized, close, deposit, settled, who)| OnChainChannel {
                finalized,
                close_requested_at: close * 1_000,
                payer: if who == 0 { Address::ZERO } else { PAYER },
                payee: if who == 3 {
                    Address::repeat_byte(0x99)
                } else {
                    PAYEE
                },
                token: TOKEN,
                authorized_signer: Address::ZERO,
                deposit,
                settled,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever the chain reports, the result either is refused or keeps every money
        /// invariant, never lowers the deposit, never touches engine facts, and only moves the
        /// status forward.
        #[test]
        fn applying_facts_keeps_the_money_invariants(
            record in arb_record(), chain in arb_chain(), now in 1..u64::MAX
        ) {
            match apply_chain_facts(&record, &chain, now) {
                Ok(next) => {
                    prop_assert!(next.check_invariants().is_ok());
                    prop_assert!(next.deposit >= record.deposit);
                    prop_assert!(next.settled >= record.settled || chain.finalized);
                    prop_assert_eq!(next.accepted_cumulative, record.accepted_cumulative);
                    prop_assert_eq!(next.accepted_signature, record.accepted_signature);
                    prop_assert_eq!(next.spent, record.spent);
                    prop_assert_eq!(next.units, record.units);
                    prop_assert!(next.status >= record.status);
                    prop_assert_eq!(next.chain_checked_at_ms, now);
                    prop_assert_eq!(next.finalized, record.finalized || chain.finalized);
                    if chain.finalized {
                        prop_assert_eq!(next.status, ChannelStatus::Closed);
                    } else {
                        prop_assert_eq!(next.deposit, chain.deposit);
                        prop_assert!(!needs_refresh(&next, now, DEFAULT_CHAIN_FACTS_TTL));
                    }
                }
                Err(_) => {
                    prop_assert!(
                        !chain.exists()
                            || chain.deposit < record.deposit
                            || chain.settled < record.settled
                            || chain.settled > chain.deposit
                            || record.finalized
                            || (record.payer != Address::ZERO && chain.payee != record.payee)
                    );
                }
            }
        }
    }
}
