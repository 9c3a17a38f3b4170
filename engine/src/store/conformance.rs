//! The conformance suite every [`ChannelStore`] passes. Each check takes a factory that returns
//! a fresh, empty store (plus whatever must outlive it, such as a temporary directory); the
//! `conformance_tests!` macro at the bottom instantiates every check for one store.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
};

use alloy_primitives::{Address, B256};

use super::*;
use crate::feed::{FeedCursor, FeedEntry};

/// A fresh store and the guard that keeps its backing files alive.
pub(crate) type Fixture<S> = (S, Option<tempfile::TempDir>);

#[derive(Debug, thiserror::Error)]
pub(crate) enum TestError {
    #[error("rejected: {0}")]
    Rejected(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn channel(n: u8) -> ChannelId {
    B256::repeat_byte(n)
}

fn signature_for(amount: u128) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..16].copy_from_slice(&amount.to_be_bytes());
    signature[64] = 27;
    signature
}

fn open_record(id: ChannelId, deposit: u128) -> ChannelRecord {
    let mut record = ChannelRecord::new(id);
    record.status = ChannelStatus::Open;
    record.payer = Address::repeat_byte(0xaa);
    record.payee = Address::repeat_byte(0xbb);
    record.token = Address::repeat_byte(0xcc);
    record.deposit = deposit;
    record
}

fn create<S: ChannelStore>(store: &S, id: ChannelId, deposit: u128) -> ChannelRecord {
    let committed = store
        .update(&id, |current| -> Result<_, TestError> {
            assert!(current.is_none(), "channel {id} already exists");
            Ok(Change::write(open_record(id, deposit), ()))
        })
        .expect("create channel");
    committed.record.expect("written record")
}

/// The money operations of the concurrency model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Voucher(u128),
    Charge(u128),
    TopUp(u128),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Decision {
    Accepted,
    Duplicate,
    Rejected,
    Charged,
    Insufficient,
    DepositRaised,
    DepositUnchanged,
}

/// The money state the model tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Money {
    deposit: u128,
    accepted: u128,
    spent: u128,
    units: u64,
}

impl Money {
    fn of(record: &ChannelRecord) -> Self {
        Self {
            deposit: record.deposit,
            accepted: record.accepted_cumulative,
            spent: record.spent,
            units: record.units,
        }
    }

    /// Every write raises this strictly, so it orders writes.
    fn progress(self) -> u128 {
        self.deposit + self.accepted + self.spent + u128::from(self.units)
    }
}

/// The reference rule: what `op` does to `state`.
fn model(state: Money, op: Op) -> (Decision, Money) {
    let mut next = state;
    let decision = match op {
        Op::Voucher(amount) if amount == state.accepted => Decision::Duplicate,
        Op::Voucher(amount) if amount < state.accepted || amount > state.deposit => {
            Decision::Rejected
        }
        Op::Voucher(amount) => {
            next.accepted = amount;
            Decision::Accepted
        }
        Op::Charge(cost) if state.accepted - state.spent < cost => Decision::Insufficient,
        Op::Charge(cost) => {
            next.spent += cost;
            next.units += 1;
            Decision::Charged
        }
        Op::TopUp(deposit) if deposit <= state.deposit => Decision::DepositUnchanged,
        Op::TopUp(deposit) => {
            next.deposit = deposit;
            Decision::DepositRaised
        }
    };
    (decision, next)
}

/// The same rule as an update closure, written against the record.
fn apply_op(
    record: Option<&ChannelRecord>,
    op: Op,
) -> Result<Change<(Decision, Money)>, TestError> {
    let record = record.ok_or(TestError::Rejected("unknown channel"))?;
    let before = Money::of(record);
    let mut next = *record;
    let decision = match op {
        Op::Voucher(amount) if amount == record.accepted_cumulative => Decision::Duplicate,
        Op::Voucher(amount) if amount < record.accepted_cumulative || amount > record.deposit => {
            Decision::Rejected
        }
        Op::Voucher(amount) => {
            next.accepted_cumulative = amount;
            next.accepted_signature = signature_for(amount);
            Decision::Accepted
        }
        Op::Charge(cost) if record.available() < cost => Decision::Insufficient,
        Op::Charge(cost) => {
            next.spent += cost;
            next.units += 1;
            Decision::Charged
        }
        Op::TopUp(deposit) if deposit <= record.deposit => Decision::DepositUnchanged,
        Op::TopUp(deposit) => {
            next.deposit = deposit;
            Decision::DepositRaised
        }
    };
    Ok(if next == *record {
        Change::keep((decision, before))
    } else {
        Change::write(next, (decision, before))
    })
}

/// A deterministic mix of duplicate and out-of-order vouchers, charges and racing top-ups.
fn workload(count: usize, seed: u64) -> Vec<Op> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| match next() % 20 {
            // 200 distinct amounts up to 3x the initial deposit: plenty of duplicates.
            0..=9 => Op::Voucher(u128::from(next() % 200 + 1) * 15),
            10..=16 => Op::Charge(u128::from(next() % 20 + 1)),
            _ => Op::TopUp(u128::from(next() % 2001 + 1000)),
        })
        .collect()
}

/// Checks that the committed results of `ops` form one linear history that follows the model.
fn check_history(initial: Money, results: &[(Op, Committed<(Decision, Money)>)]) -> Money {
    let mut writes: Vec<(Money, Money)> = Vec::new();
    let mut accepted_amounts: HashMap<u128, usize> = HashMap::new();
    for (op, committed) in results {
        let (decision, before) = committed.value;
        let after = Money::of(committed.record.as_ref().expect("record exists"));
        let (expected_decision, expected_after) = model(before, *op);
        assert_eq!(decision, expected_decision, "{op:?} on {before:?}");
        assert_eq!(after, expected_after, "{op:?} on {before:?}");
        assert_eq!(
            committed.written,
            after != before,
            "{op:?} wrote iff it changed state"
        );
        if committed.written {
            writes.push((before, after));
        }
        if decision == Decision::Accepted {
            let Op::Voucher(amount) = op else {
                unreachable!("only vouchers are accepted")
            };
            *accepted_amounts.entry(*amount).or_default() += 1;
        }
    }
    for (amount, times) in &accepted_amounts {
        assert_eq!(*times, 1, "voucher {amount} accepted {times} times");
    }
    // Writes strictly raise `progress`, so sorting by it recovers the commit order; each write
    // must start from the state the previous one left.
    writes.sort_by_key(|(_, after)| after.progress());
    let mut state = initial;
    let mut states = BTreeSet::from([initial]);
    for (before, after) in &writes {
        assert_eq!(
            *before, state,
            "a write did not see the write ordered before it"
        );
        assert!(after.progress() > state.progress());
        state = *after;
        states.insert(state);
    }
    for (op, committed) in results {
        if !committed.written {
            let (_, before) = committed.value;
            assert!(
                states.contains(&before),
                "{op:?} observed a state that never existed"
            );
        }
    }
    state
}

// ---- checks --------------------------------------------------------------------------------

pub(crate) fn creates_reads_and_scans<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    assert!(store.is_empty().expect("is_empty"));
    assert_eq!(store.get(&channel(1)).expect("get"), None);
    let mut created = BTreeMap::new();
    for n in [5u8, 1, 9, 3, 7] {
        created.insert(channel(n), create(&store, channel(n), u128::from(n) * 100));
    }
    assert_eq!(store.len().expect("len"), 5);
    assert!(!store.is_empty().expect("is_empty"));
    for (id, record) in &created {
        assert_eq!(store.get(id).expect("get").as_ref(), Some(record));
    }
    let all = store.scan(None, 100).expect("scan");
    assert_eq!(
        all,
        created.values().copied().collect::<Vec<_>>(),
        "scan is in id order"
    );
    let first = store.scan(None, 2).expect("scan");
    let rest = store
        .scan(Some(&first[1].channel_id), 100)
        .expect("scan after");
    assert_eq!([first, rest].concat(), all, "pages join up");
    assert!(
        store
            .scan(Some(&channel(9)), 10)
            .expect("scan past end")
            .is_empty()
    );
}

pub(crate) fn keep_writes_nothing<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let absent = store
        .update(&channel(1), |current| -> Result<_, TestError> {
            Ok(Change::keep(current.is_some()))
        })
        .expect("keep");
    assert_eq!(
        absent,
        Committed {
            record: None,
            value: false,
            written: false
        }
    );
    assert_eq!(store.len().expect("len"), 0);
    let record = create(&store, channel(1), 10);
    assert_eq!(record.revision, 1, "a new record is revision 1");
    let kept = store
        .update(&channel(1), |current| -> Result<_, TestError> {
            Ok(Change::keep(current.map(|r| r.deposit)))
        })
        .expect("keep");
    assert_eq!(
        kept,
        Committed {
            record: Some(record),
            value: Some(10),
            written: false
        }
    );
    // The store maintains the revision and the feed cursor whatever the closure writes there.
    let rewritten = store
        .update(&channel(1), |current| -> Result<_, TestError> {
            let mut next = *current.expect("exists");
            next.revision = 77;
            next.feed_cursor = 99;
            Ok(Change::write(next, ()))
        })
        .expect("write")
        .record
        .expect("record");
    assert_eq!((rewritten.revision, rewritten.feed_cursor), (2, 0));
    assert_eq!(store.get(&channel(1)).expect("get"), Some(rewritten));
}

pub(crate) fn closure_errors_change_nothing<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let record = create(&store, channel(1), 100);
    let error = store
        .update(&channel(1), |_| -> Result<Change<()>, TestError> {
            Err(TestError::Rejected("amount not increasing"))
        })
        .unwrap_err();
    assert!(
        matches!(error, TestError::Rejected("amount not increasing")),
        "{error}"
    );
    let error = store
        .update(&channel(2), |_| -> Result<Change<()>, TestError> {
            Err(TestError::Rejected("no"))
        })
        .unwrap_err();
    assert!(matches!(error, TestError::Rejected("no")));
    assert_eq!(store.get(&channel(1)).expect("get"), Some(record));
    assert_eq!(store.get(&channel(2)).expect("get"), None);
    assert_eq!(store.len().expect("len"), 1);
}

pub(crate) fn guards_money_invariants<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let id = channel(1);
    create(&store, id, 100);
    let accepted = store
        .update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = 50;
            next.accepted_signature = signature_for(50);
            next.spent = 20;
            Ok(Change::write(next, ()))
        })
        .expect("valid update")
        .record
        .expect("record");
    let feed_before = store.read_feed(FeedCursor::ZERO, 10).expect("feed");

    let attempt = |edit: &dyn Fn(&mut ChannelRecord)| -> StoreError {
        let error = store
            .update(&id, |record| -> Result<_, TestError> {
                let mut next = *record.expect("exists");
                edit(&mut next);
                Ok(Change::write(next, ()).with_aux(
                    b"k".to_vec(),
                    AuxEntry {
                        value: b"v".to_vec(),
                        expires_at_ms: 1,
                    },
                ))
            })
            .unwrap_err();
        match error {
            TestError::Store(error) => error,
            other => panic!("unexpected {other}"),
        }
    };
    let error = attempt(&|r| r.spent = 51);
    assert!(
        matches!(
            error,
            StoreError::InvalidRecord {
                source: RecordError::SpentExceedsAccepted {
                    spent: 51,
                    accepted: 50
                },
                ..
            }
        ),
        "{error}"
    );
    let error = attempt(&|r| {
        r.accepted_cumulative = 101;
        r.accepted_signature = signature_for(101);
    });
    assert!(
        matches!(
            error,
            StoreError::InvalidRecord {
                source: RecordError::AcceptedExceedsDeposit {
                    accepted: 101,
                    deposit: 100
                },
                ..
            }
        ),
        "{error}"
    );
    let error = attempt(&|r| {
        r.accepted_cumulative = 40;
        r.accepted_signature = signature_for(40);
    });
    assert!(
        matches!(
            error,
            StoreError::AcceptedDecreased {
                stored: 50,
                proposed: 40,
                ..
            }
        ),
        "{error}"
    );
    let error = attempt(&|r| r.spent = 10);
    assert!(
        matches!(
            error,
            StoreError::SpentDecreased {
                stored: 20,
                proposed: 10,
                ..
            }
        ),
        "{error}"
    );
    let error = attempt(&|r| r.accepted_signature = signature_for(49));
    assert!(
        matches!(error, StoreError::SignatureReplaced { accepted: 50, .. }),
        "{error}"
    );
    let error = attempt(&|r| r.channel_id = channel(2));
    assert!(
        matches!(error, StoreError::ChannelMismatch { .. }),
        "{error}"
    );

    let aux_error = |key: Vec<u8>, len: usize| -> StoreError {
        let error = store
            .update(&id, |record| -> Result<_, TestError> {
                Ok(Change::write(*record.expect("exists"), ()).with_aux(
                    key.clone(),
                    AuxEntry {
                        value: vec![0; len],
                        expires_at_ms: 1,
                    },
                ))
            })
            .unwrap_err();
        match error {
            TestError::Store(error) => error,
            other => panic!("unexpected {other}"),
        }
    };
    let error = aux_error(Vec::new(), 1);
    assert!(
        matches!(error, StoreError::AuxKeyLength { len: 0, .. }),
        "{error}"
    );
    let error = aux_error(vec![1; MAX_AUX_KEY_LEN + 1], 1);
    assert!(
        matches!(error, StoreError::AuxKeyLength { len: 257, max: 256 }),
        "{error}"
    );
    let error = aux_error(b"k".to_vec(), MAX_AUX_VALUE_LEN + 1);
    assert!(
        matches!(error, StoreError::AuxValueTooLong { .. }),
        "{error}"
    );
    let error = store
        .apply(&id, Some(&[]), |_| -> Result<Change<()>, TestError> {
            Ok(Change::keep(()))
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            TestError::Store(StoreError::AuxKeyLength { len: 0, .. })
        ),
        "{error}"
    );

    assert_eq!(
        store.get(&id).expect("get"),
        Some(accepted),
        "rejected writes changed nothing"
    );
    assert_eq!(
        store.get_aux(b"k").expect("aux"),
        None,
        "no aux entry from rejected writes"
    );
    assert_eq!(
        store.read_feed(FeedCursor::ZERO, 10).expect("feed"),
        feed_before
    );
}

/// A release may lower `spent` (never below `settled`) and still obeys every other guard; a
/// plain write still may not lower it.
pub(crate) fn release_lowers_spent_down_to_settled<S: ChannelStore>(make: fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let id = channel(1);
    create(&store, id, 100);
    accept(&store, id, 60);
    let set = |spent: u128, settled: u128, units: u64| {
        store
            .update(&id, |record| -> Result<_, TestError> {
                let mut next = *record.expect("exists");
                next.spent = spent;
                next.settled = settled;
                next.units = units;
                Ok(Change::write(next, ()))
            })
            .expect("raise spent")
    };
    set(50, 10, 5);
    let release = |spent: u128, units: u64| {
        store.update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.spent = spent;
            next.units = units;
            Ok(Change::release(next, ()))
        })
    };

    // A release to exactly `settled` is allowed, and lowers the unit count too.
    let committed = release(10, 1).expect("release to settled");
    let record = committed.record.expect("record");
    assert!(committed.written);
    assert_eq!((record.spent, record.units), (10, 1));
    assert_eq!(store.get(&id).expect("get"), Some(record));

    // Below `settled`: refused, nothing written.
    let before = store.get(&id).expect("get");
    let error = release(9, 0).unwrap_err();
    assert!(
        matches!(
            error,
            TestError::Store(StoreError::SpentBelowSettled {
                settled: 10,
                proposed: 9,
                ..
            })
        ),
        "{error}"
    );
    assert_eq!(store.get(&id).expect("get"), before);

    // The other guards still hold for a release.
    let error = store
        .update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.spent = 61;
            Ok(Change::release(next, ()))
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            TestError::Store(StoreError::InvalidRecord {
                source: RecordError::SpentExceedsAccepted { .. },
                ..
            })
        ),
        "{error}"
    );
    let error = store
        .update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = 50;
            next.accepted_signature = signature_for(50);
            next.spent = 10;
            Ok(Change::release(next, ()))
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            TestError::Store(StoreError::AcceptedDecreased { .. })
        ),
        "{error}"
    );
    assert_eq!(store.get(&id).expect("get"), before);

    // A plain write still cannot lower `spent`.
    set(40, 10, 4);
    let error = store
        .update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.spent = 30;
            Ok(Change::write(next, ()))
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            TestError::Store(StoreError::SpentDecreased {
                stored: 40,
                proposed: 30,
                ..
            })
        ),
        "{error}"
    );
    let committed = release(30, 3).expect("release");
    assert_eq!(committed.record.map(|r| r.spent), Some(30));
    store.sync().expect("sync");
    assert_eq!(store.get(&id).expect("get").map(|r| r.spent), Some(30));
}

fn accept<S: ChannelStore>(store: &S, id: ChannelId, amount: u128) -> ChannelRecord {
    store
        .update(&id, |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.accepted_cumulative = amount;
            next.accepted_signature = signature_for(amount);
            Ok(Change::write(next, ()))
        })
        .expect("accept")
        .record
        .expect("record")
}

fn read_all<S: ChannelStore>(
    store: &S,
    after: FeedCursor,
    page: usize,
) -> (Vec<FeedEntry>, FeedCursor) {
    let mut entries = Vec::new();
    let mut cursor = after;
    loop {
        let batch = store.read_feed(cursor, page).expect("read feed");
        assert!(batch.next >= cursor, "next never goes back");
        let done = batch.entries.is_empty();
        entries.extend(batch.entries);
        cursor = batch.next;
        if done {
            return (entries, cursor);
        }
    }
}

pub(crate) fn feed_holds_the_latest_voucher_per_channel<S: ChannelStore>(
    make: impl Fn() -> Fixture<S>,
) {
    let (store, _dir) = make();
    for n in 1..=4 {
        create(&store, channel(n), 1_000);
    }
    let (entries, _) = read_all(&store, FeedCursor::ZERO, 10);
    assert!(
        entries.is_empty(),
        "channels without vouchers are not in the feed"
    );

    accept(&store, channel(1), 10);
    accept(&store, channel(2), 20);
    accept(&store, channel(1), 30);
    accept(&store, channel(3), 40);
    let (entries, after_first) = read_all(&store, FeedCursor::ZERO, 2);
    let seen: Vec<(ChannelId, u128)> = entries
        .iter()
        .map(|e| (e.channel_id, e.cumulative_amount))
        .collect();
    assert_eq!(seen, [(channel(2), 20), (channel(1), 30), (channel(3), 40)]);
    assert!(
        entries.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "ascending cursors"
    );
    for entry in &entries {
        let record = store.get(&entry.channel_id).expect("get").expect("record");
        assert_eq!(
            entry.cursor.get(),
            record.feed_cursor,
            "record points at its entry"
        );
        assert_eq!(entry.signature, signature_for(entry.cumulative_amount));
        assert_eq!(entry.status, ChannelStatus::Open);
        assert_eq!(
            (entry.payer, entry.payee, entry.token),
            (record.payer, record.payee, record.token)
        );
        assert_eq!((entry.deposit, entry.settled), (1_000, 0));
    }

    // Charges and chain-fact refreshes do not republish; a raised voucher or a close does.
    store
        .update(&channel(2), |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.spent = 5;
            next.deposit = 2_000;
            Ok(Change::write(next, ()))
        })
        .expect("charge");
    assert!(read_all(&store, after_first, 10).0.is_empty());
    accept(&store, channel(2), 25);
    store
        .update(&channel(3), |record| -> Result<_, TestError> {
            let mut next = *record.expect("exists");
            next.status = ChannelStatus::Closing;
            Ok(Change::write(next, ()))
        })
        .expect("closing");
    let (newer, _) = read_all(&store, after_first, 10);
    let seen: Vec<(ChannelId, u128, ChannelStatus)> = newer
        .iter()
        .map(|e| (e.channel_id, e.cumulative_amount, e.status))
        .collect();
    assert_eq!(
        seen,
        [
            (channel(2), 25, ChannelStatus::Open),
            (channel(3), 40, ChannelStatus::Closing)
        ]
    );
    assert!(newer[0].cursor > after_first);
    assert_eq!(newer[0].deposit, 2_000, "chain facts are the latest known");

    // One entry per channel in the whole feed.
    store.sync().expect("sync");
    let (all, _) = read_all(&store, FeedCursor::ZERO, 100);
    let latest: BTreeMap<ChannelId, u128> = all
        .iter()
        .map(|e| (e.channel_id, e.cumulative_amount))
        .collect();
    assert_eq!(latest.len(), 3);
    assert_eq!(latest[&channel(1)], 30);
    assert_eq!(latest[&channel(2)], 25);
    assert_eq!(latest[&channel(3)], 40);
    let page = store.read_feed(FeedCursor::ZERO, 0).expect("empty page");
    assert!(page.entries.is_empty());
    assert_eq!(page.next, FeedCursor::ZERO);
}

pub(crate) fn aux_entries_commit_with_the_update<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let id = channel(7);
    create(&store, id, 100);
    accept(&store, id, 60);
    // The idempotent charge: the first request charges and records its outcome; a replay with
    // the same key sees the outcome inside the same atomic update and charges nothing.
    let charge = |key: &'static [u8], cost: u128| {
        store
            .apply(&id, Some(key), |current| -> Result<_, TestError> {
                if let Some(outcome) = current.aux {
                    return Ok(Change::keep(outcome.value.clone()));
                }
                let mut next = *current.record.expect("exists");
                if next.available() < cost {
                    return Err(TestError::Rejected("insufficient"));
                }
                next.spent += cost;
                next.units += 1;
                let outcome = format!("charged {cost}, spent {}", next.spent).into_bytes();
                Ok(Change::write(next, outcome.clone()).with_aux(
                    key,
                    AuxEntry {
                        value: outcome,
                        expires_at_ms: 1_000,
                    },
                ))
            })
            .and_then(|pending| Ok(pending.wait()?))
    };
    let first = charge(b"req-1", 10).expect("charge");
    assert_eq!(first.value, b"charged 10, spent 10");
    let replay = charge(b"req-1", 10).expect("replay");
    assert_eq!(replay.value, b"charged 10, spent 10");
    assert!(!replay.written);
    assert_eq!(
        store.get(&id).expect("get").expect("record").spent,
        10,
        "charged once"
    );
    charge(b"req-2", 15).expect("second request");
    assert!(matches!(
        charge(b"req-3", 1_000),
        Err(TestError::Rejected("insufficient"))
    ));
    assert_eq!(
        store.get_aux(b"req-3").expect("aux"),
        None,
        "a rejected update writes no aux"
    );
    assert_eq!(
        store.get_aux(b"req-2").expect("aux"),
        Some(AuxEntry {
            value: b"charged 15, spent 25".to_vec(),
            expires_at_ms: 1_000
        })
    );

    // Keys are written once: a second write of req-2 fails and changes nothing.
    let before = store.get(&id).expect("get");
    let error = store
        .apply(&id, None, |current| -> Result<_, TestError> {
            let mut next = *current.record.expect("exists");
            next.spent += 1;
            let entry = AuxEntry {
                value: b"again".to_vec(),
                expires_at_ms: 5_000,
            };
            Ok(Change::write(next, ()).with_aux(b"req-2".to_vec(), entry))
        })
        .unwrap_err();
    assert!(
        matches!(&error, TestError::Store(StoreError::AuxKeyExists { key }) if key == b"req-2"),
        "{error}"
    );
    assert_eq!(store.get(&id).expect("get"), before);
    assert_eq!(
        store
            .get_aux(b"req-2")
            .expect("aux")
            .expect("kept")
            .expires_at_ms,
        1_000
    );

    // Pruning removes only what expired before the (exclusive) bound.
    for (key, expires_at_ms) in [(&b"other"[..], 999), (&b"late"[..], 5_000)] {
        store
            .apply(&id, None, |_| -> Result<_, TestError> {
                let entry = AuxEntry {
                    value: Vec::new(),
                    expires_at_ms,
                };
                Ok(Change::keep(()).with_aux(key.to_vec(), entry))
            })
            .expect("aux only")
            .wait()
            .expect("durable");
    }
    assert_eq!(
        store.prune_aux(999).expect("prune"),
        0,
        "bound is exclusive"
    );
    assert_eq!(store.prune_aux(1_000).expect("prune"), 1, "other");
    assert_eq!(store.get_aux(b"other").expect("aux"), None);
    assert_eq!(store.prune_aux(1_001).expect("prune"), 2, "req-1 and req-2");
    assert_eq!(store.get_aux(b"req-1").expect("aux"), None);
    assert_eq!(store.get_aux(b"req-2").expect("aux"), None);
    assert!(store.get_aux(b"late").expect("aux").is_some());
    assert_eq!(store.prune_aux(u64::MAX).expect("prune"), 1);
    assert_eq!(store.prune_aux(u64::MAX).expect("prune"), 0);
    // A pruned key can be written again.
    store
        .apply(&id, None, |_| -> Result<_, TestError> {
            let entry = AuxEntry {
                value: vec![1],
                expires_at_ms: 1,
            };
            Ok(Change::keep(()).with_aux(b"req-1".to_vec(), entry))
        })
        .expect("rewrite after prune")
        .wait()
        .expect("durable");
    assert_eq!(
        store
            .get_aux(b"req-1")
            .expect("aux")
            .expect("written")
            .value,
        [1]
    );
}

pub(crate) fn idempotent_replays_race_to_one_charge<S: ChannelStore>(
    make: impl Fn() -> Fixture<S>,
) {
    let (store, _dir) = make();
    let id = channel(8);
    create(&store, id, 1_000);
    accept(&store, id, 1_000);
    let threads = 16;
    let barrier = Barrier::new(threads);
    let outcomes: Vec<Committed<u128>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    store
                        .apply(&id, Some(b"same-key"), |current| -> Result<_, TestError> {
                            if let Some(outcome) = current.aux {
                                let spent = u128::from_be_bytes(
                                    outcome.value.as_slice().try_into().expect("16 bytes"),
                                );
                                return Ok(Change::keep(spent));
                            }
                            let mut next = *current.record.expect("exists");
                            next.spent += 7;
                            let value = next.spent.to_be_bytes().to_vec();
                            Ok(Change::write(next, next.spent).with_aux(
                                b"same-key".to_vec(),
                                AuxEntry {
                                    value,
                                    expires_at_ms: 9,
                                },
                            ))
                        })
                        .expect("apply")
                        .wait()
                        .expect("durable")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        outcomes.iter().filter(|c| c.written).count(),
        1,
        "exactly one charge"
    );
    assert!(
        outcomes.iter().all(|c| c.value == 7),
        "every replay sees the one outcome"
    );
    assert_eq!(store.get(&id).expect("get").expect("record").spent, 7);
}

fn initial_for_race<S: ChannelStore>(store: &S, id: ChannelId) -> Money {
    Money::of(&create(store, id, 1_000))
}

pub(crate) fn concurrent_submissions_on_one_channel<S: ChannelStore>(
    make: impl Fn() -> Fixture<S>,
) {
    const SUBMISSIONS: usize = 2_048;
    const THREADS: usize = 64;
    let (store, _dir) = make();
    let id = channel(0x42);
    let initial = initial_for_race(&store, id);
    let ops = workload(SUBMISSIONS, 0x5eed_1234_abcd_0001);
    let barrier = Barrier::new(THREADS);
    let results: Vec<(Op, Committed<(Decision, Money)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ops
            .chunks(SUBMISSIONS / THREADS)
            .map(|chunk| {
                let (store, barrier) = (&store, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    chunk
                        .iter()
                        .map(|op| {
                            let committed = store
                                .update(&id, |record| apply_op(record, *op))
                                .expect("update");
                            (*op, committed)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(results.len(), SUBMISSIONS);
    let last = check_history(initial, &results);
    let stored = store.get(&id).expect("get").expect("record");
    assert_eq!(
        Money::of(&stored),
        last,
        "the store ends where the history ends"
    );
    assert!(
        stored.spent <= stored.accepted_cumulative && stored.accepted_cumulative <= stored.deposit
    );
    let charged: u128 = results
        .iter()
        .filter(|(_, c)| c.value.0 == Decision::Charged)
        .map(|(op, _)| match op {
            Op::Charge(cost) => *cost,
            _ => unreachable!("only charges are charged"),
        })
        .sum();
    assert_eq!(
        stored.spent, charged,
        "spent is the sum of successful charges"
    );
    assert!(results.iter().any(|(_, c)| c.value.0 == Decision::Accepted));
    assert!(
        results
            .iter()
            .any(|(_, c)| c.value.0 == Decision::Duplicate)
    );
    assert!(
        results
            .iter()
            .any(|(_, c)| c.value.0 == Decision::Insufficient)
    );
    assert!(
        results
            .iter()
            .any(|(_, c)| c.value.0 == Decision::DepositRaised)
    );
    let (feed, _) = read_all(&store, FeedCursor::ZERO, 100);
    assert_eq!(feed.len(), 1, "one feed entry for the channel");
    assert_eq!(feed[0].cumulative_amount, stored.accepted_cumulative);
}

pub(crate) fn concurrent_async_submissions_on_one_channel<S: ChannelStore + 'static>(
    make: impl Fn() -> Fixture<S>,
) {
    const SUBMISSIONS: usize = 2_048;
    let (store, _dir) = make();
    let store = Arc::new(store);
    let id = channel(0x43);
    let initial = initial_for_race(store.as_ref(), id);
    let ops = workload(SUBMISSIONS, 0x0dd_ba11_cafe_0002);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let results = runtime.block_on(async {
        let tasks: Vec<_> = ops
            .iter()
            .map(|op| {
                let (store, op) = (Arc::clone(&store), *op);
                tokio::spawn(async move {
                    let pending = store
                        .update_pending(&id, |record| apply_op(record, op))
                        .expect("update");
                    (op, pending.durable().await.expect("durable"))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(SUBMISSIONS);
        for task in tasks {
            results.push(task.await.expect("task"));
        }
        results
    });
    let last = check_history(initial, &results);
    assert_eq!(
        Money::of(&store.get(&id).expect("get").expect("record")),
        last
    );
}

pub(crate) fn feed_subscribers_wake_on_new_entries<S: ChannelStore + 'static>(
    make: impl Fn() -> Fixture<S>,
) {
    let (store, _dir) = make();
    let store = Arc::new(store);
    let id = channel(0x51);
    create(store.as_ref(), id, 500);
    let mut subscription = store.subscribe_feed();
    let seen = subscription.latest();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let waiter = tokio::spawn(async move { subscription.wait_beyond(seen).await });
        let writer = Arc::clone(&store);
        let pending = writer
            .update_pending(&id, |record| -> Result<_, TestError> {
                let mut next = *record.expect("exists");
                next.accepted_cumulative = 100;
                next.accepted_signature = signature_for(100);
                Ok(Change::write(next, ()))
            })
            .expect("accept");
        let committed = pending.durable().await.expect("durable");
        let woke = waiter.await.expect("task").expect("store open");
        assert!(woke > seen);
        let page = store.read_feed(seen, 10).expect("read");
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].cumulative_amount, 100);
        assert_eq!(
            page.entries[0].cursor.get(),
            committed.record.expect("record").feed_cursor
        );
    });
}

pub(crate) fn many_channels_interleave<S: ChannelStore>(make: impl Fn() -> Fixture<S>) {
    let (store, _dir) = make();
    let channels: Vec<ChannelId> = (0..32u8)
        .map(|n| B256::repeat_byte(n.wrapping_mul(7) | 1))
        .collect();
    let channels: Vec<ChannelId> = channels
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for id in &channels {
        create(&store, *id, 10_000);
    }
    let writers_done = AtomicBool::new(false);
    let followed = std::thread::scope(|scope| {
        // A settlement-daemon-like follower reads the feed while the writers run.
        let follower = scope.spawn(|| {
            let mut cursor = FeedCursor::ZERO;
            let mut latest: BTreeMap<ChannelId, u128> = BTreeMap::new();
            loop {
                let finished = writers_done.load(Ordering::SeqCst);
                let page = store.read_feed(cursor, 5).expect("read feed");
                assert!(page.next >= cursor);
                for entry in &page.entries {
                    assert!(entry.cursor > cursor, "cursors only grow");
                    let seen = latest.entry(entry.channel_id).or_default();
                    assert!(
                        entry.cumulative_amount >= *seen,
                        "a channel's vouchers arrive in order"
                    );
                    *seen = entry.cumulative_amount;
                }
                let caught_up = page.entries.is_empty();
                cursor = page.next;
                if caught_up && finished {
                    return latest;
                }
                if caught_up {
                    std::thread::yield_now();
                }
            }
        });
        let writers: Vec<_> = channels
            .chunks(4)
            .enumerate()
            .map(|(t, chunk)| {
                let store = &store;
                scope.spawn(move || {
                    for round in 1..=20u128 {
                        for id in chunk {
                            accept(store, *id, round * 10 + t as u128);
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        writers_done.store(true, Ordering::SeqCst);
        follower.join().expect("follower")
    });
    for (i, chunk) in channels.chunks(4).enumerate() {
        for id in chunk {
            assert_eq!(
                followed.get(id),
                Some(&(200 + i as u128)),
                "the follower missed {id}"
            );
        }
    }
    store.sync().expect("sync");
    let (feed, _) = read_all(&store, FeedCursor::ZERO, 7);
    let per_channel: BTreeMap<ChannelId, u128> = feed
        .iter()
        .map(|e| (e.channel_id, e.cumulative_amount))
        .collect();
    assert_eq!(per_channel.len(), channels.len());
    assert_eq!(
        feed.len(),
        channels.len(),
        "one entry per channel after sync"
    );
    for (i, chunk) in channels.chunks(4).enumerate() {
        for id in chunk {
            assert_eq!(per_channel[id], 200 + i as u128);
            assert_eq!(
                store
                    .get(id)
                    .expect("get")
                    .expect("record")
                    .accepted_cumulative,
                200 + i as u128
            );
        }
    }
}

/// Instantiates every conformance check as a `#[test]` for one store factory.
macro_rules! conformance_tests {
    ($make:expr) => {
        #[test]
        fn creates_reads_and_scans() {
            $crate::store::conformance::creates_reads_and_scans($make);
        }
        #[test]
        fn keep_writes_nothing() {
            $crate::store::conformance::keep_writes_nothing($make);
        }
        #[test]
        fn closure_errors_change_nothing() {
            $crate::store::conformance::closure_errors_change_nothing($make);
        }
        #[test]
        fn guards_money_invariants() {
            $crate::store::conformance::guards_money_invariants($make);
        }
        #[test]
        fn release_lowers_spent_down_to_settled() {
            $crate::store::conformance::release_lowers_spent_down_to_settled($make);
        }
        #[test]
        fn feed_holds_the_latest_voucher_per_channel() {
            $crate::store::conformance::feed_holds_the_latest_voucher_per_channel($make);
        }
        #[test]
        fn aux_entries_commit_with_the_update() {
            $crate::store::conformance::aux_entries_commit_with_the_update($make);
        }
        #[test]
        fn idempotent_replays_race_to_one_charge() {
            $crate::store::conformance::idempotent_replays_race_to_one_charge($make);
        }
        #[test]
        fn concurrent_submissions_on_one_channel() {
            $crate::store::conformance::concurrent_submissions_on_one_channel($make);
        }
        #[test]
        fn concurrent_async_submissions_on_one_channel() {
            $crate::store::conformance::concurrent_async_submissions_on_one_channel($make);
        }
        #[test]
        fn feed_subscribers_wake_on_new_entries() {
            $crate::store::conformance::feed_subscribers_wake_on_new_entries($make);
        }
        #[test]
        fn many_channels_interleave() {
            $crate::store::conformance::many_channels_interleave($make);
        }
    };
}

mod memory_store {
    use super::*;

    fn make() -> Fixture<MemoryStore> {
        (MemoryStore::new(), None)
    }

    conformance_tests!(make);
}

mod sled_group_commit {
    use super::*;

    fn make() -> Fixture<SledStore> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path().join("db"), Durability::default()).expect("open");
        (store, Some(dir))
    }

    conformance_tests!(make);
}

mod sled_group_commit_lingering {
    use super::*;

    fn make() -> Fixture<SledStore> {
        let dir = tempfile::tempdir().expect("temp dir");
        let durability = Durability::GroupCommit {
            max_delay: std::time::Duration::from_micros(200),
        };
        let store = SledStore::open(dir.path().join("db"), durability).expect("open");
        (store, Some(dir))
    }

    conformance_tests!(make);
}

mod sled_per_request {
    use super::*;

    fn make() -> Fixture<SledStore> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path().join("db"), Durability::PerRequest).expect("open");
        (store, Some(dir))
    }

    conformance_tests!(make);
}

mod sled_no_flush {
    use super::*;

    fn make() -> Fixture<SledStore> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path().join("db"), Durability::None).expect("open");
        (store, Some(dir))
    }

    conformance_tests!(make);
}
