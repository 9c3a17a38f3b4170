//! Crash safety of the sled store under SIGKILL.
//!
//! The parent test re-runs this test binary as a child (selecting the ignored `crash_child`
//! test and passing the database path in an environment variable). The child applies vouchers,
//! charges (each with an idempotency entry) and top-ups from several threads and prints one
//! `ACK` line per update *after* its durability wait returned. The parent kills the child with
//! SIGKILL after a random number of acknowledgements, reopens the database and checks that
//! every acknowledged update is there and that `spent ≤ accepted ≤ deposit` holds, then starts
//! the next child on the same database.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use alloy_primitives::B256;
use sluice_engine::{
    feed::FeedCursor,
    store::{
        AuxEntry, Change, ChannelId, ChannelRecord, ChannelStatus, ChannelStore, Durability,
        SIGNATURE_LEN, SledStore, StoreError,
    },
};

const DB_ENV: &str = "SLUICE_CRASH_CHILD_DB";
const SEED_ENV: &str = "SLUICE_CRASH_CHILD_SEED";
const CHANNELS: u8 = 8;
const WORKERS: u64 = 8;
const KILLS: usize = 20;
/// A child that is never killed stops on its own after this many updates per worker.
const CHILD_MAX_UPDATES_PER_WORKER: u64 = 20_000;

fn channel(n: u8) -> ChannelId {
    B256::repeat_byte(n + 1)
}

fn signature_for(amount: u128) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..16].copy_from_slice(&amount.to_be_bytes());
    signature[64] = 27;
    signature
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

// ---- child ---------------------------------------------------------------------------------

/// The child process. Ignored in normal runs; the crash test runs it by name with its
/// environment set, and without that environment it has nothing to do.
#[test]
#[ignore = "child process of `sigkill_never_loses_an_acknowledged_update`"]
fn crash_child() {
    let (Ok(path), Ok(seed)) = (std::env::var(DB_ENV), std::env::var(SEED_ENV)) else {
        return;
    };
    let seed: u64 = seed.parse().expect("numeric seed");
    let store = SledStore::open(&path, Durability::default()).expect("child opens the store");
    for n in 0..CHANNELS {
        store
            .update(&channel(n), |record| -> Result<_, StoreError> {
                Ok(match record {
                    Some(_) => Change::keep(()),
                    None => {
                        let mut record = ChannelRecord::new(channel(n));
                        record.status = ChannelStatus::Open;
                        record.deposit = 1_000;
                        Change::write(record, ())
                    }
                })
            })
            .expect("create channel");
    }
    // libtest has already printed `test crash_child ... ` without a newline.
    println!("\nREADY");
    let counter = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for worker in 0..WORKERS {
            let (store, counter) = (&store, &counter);
            scope.spawn(move || {
                let mut rng =
                    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (worker + 1) << 32 | 1);
                for _ in 0..CHILD_MAX_UPDATES_PER_WORKER {
                    let n = rng.below(u64::from(CHANNELS)) as u8;
                    let roll = rng.below(10);
                    let delta = u128::from(rng.below(50) + 1);
                    let request = counter.fetch_add(1, Ordering::Relaxed);
                    let key = format!("{seed}-{request}");
                    let committed = store
                        .apply(
                            &channel(n),
                            Some(key.as_bytes()),
                            |current| -> Result<_, StoreError> {
                                let record = *current.record.expect("channel exists");
                                let mut next = record;
                                let mut aux = None;
                                match roll {
                                    // Voucher: raise the accepted amount, capped by the deposit.
                                    0..=4 => {
                                        next.accepted_cumulative = (record.accepted_cumulative
                                            + delta)
                                            .min(record.deposit);
                                        next.accepted_signature =
                                            signature_for(next.accepted_cumulative);
                                    }
                                    // Charge, recorded under its idempotency key.
                                    5..=8 => {
                                        if record.available() >= delta {
                                            next.spent += delta;
                                            next.units += 1;
                                            aux = Some(AuxEntry {
                                                value: [&[n][..], &next.spent.to_be_bytes()]
                                                    .concat(),
                                                expires_at_ms: u64::MAX,
                                            });
                                        }
                                    }
                                    // Top-up seen on chain.
                                    _ => next.deposit += delta * 4,
                                }
                                if next.accepted_cumulative == record.accepted_cumulative {
                                    next.accepted_signature = record.accepted_signature;
                                }
                                let charged = aux.is_some();
                                let change = if next == record {
                                    Change::keep(false)
                                } else {
                                    Change::write(next, charged)
                                };
                                Ok(match aux {
                                    Some(aux) => change.with_aux(key.clone().into_bytes(), aux),
                                    None => change,
                                })
                            },
                        )
                        .expect("apply")
                        .wait()
                        .expect("durable");
                    let record = committed.record.expect("record");
                    let key = if committed.value { key.as_str() } else { "-" };
                    let mut out = std::io::stdout().lock();
                    let written = writeln!(
                        out,
                        "ACK {n} {} {} {} {key}",
                        record.accepted_cumulative, record.spent, record.deposit
                    )
                    .and_then(|()| out.flush());
                    if written.is_err() {
                        // The parent is gone: nobody is left to acknowledge to.
                        std::process::exit(1);
                    }
                }
            });
        }
    });
}

// ---- parent --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Acked {
    accepted: u128,
    spent: u128,
    deposit: u128,
}

#[derive(Debug, Default)]
struct Acknowledged {
    channels: BTreeMap<u8, Acked>,
    aux_keys: BTreeSet<String>,
    count: usize,
    /// Per child seed, how many updates it acknowledged (it used fewer than that plus
    /// `WORKERS` request numbers).
    acks_per_seed: BTreeMap<usize, usize>,
}

impl Acknowledged {
    fn record(&mut self, line: &str) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [_, n, accepted, spent, deposit, key] = fields[..] else {
            panic!("malformed line from child: {line:?}")
        };
        let parse = |s: &str| s.parse::<u128>().expect("number");
        let acked = self
            .channels
            .entry(n.parse().expect("channel"))
            .or_default();
        acked.accepted = acked.accepted.max(parse(accepted));
        acked.spent = acked.spent.max(parse(spent));
        acked.deposit = acked.deposit.max(parse(deposit));
        if key != "-" {
            self.aux_keys.insert(key.to_owned());
        }
        self.count += 1;
    }
}

fn verify(path: &std::path::Path, acknowledged: &Acknowledged) {
    let store = SledStore::open(path, Durability::default()).expect("reopen after SIGKILL");
    // Atomicity, acknowledged or not: an idempotency entry that survived implies its charge did.
    let mut visible = 0;
    for (seed, acks) in &acknowledged.acks_per_seed {
        for request in 0..acks + WORKERS as usize {
            let Some(aux) = store
                .get_aux(format!("{seed}-{request}").as_bytes())
                .expect("aux")
            else {
                continue;
            };
            let (n, spent) = aux.value.split_first().expect("channel byte");
            let spent = u128::from_be_bytes(spent.try_into().expect("16 bytes"));
            let record = store.get(&channel(*n)).expect("get").expect("record");
            assert!(
                record.spent >= spent,
                "entry {seed}-{request} without its charge: {record:?}"
            );
            visible += 1;
        }
    }
    assert!(visible >= acknowledged.aux_keys.len());
    for (n, acked) in &acknowledged.channels {
        let record = store
            .get(&channel(*n))
            .expect("get")
            .expect("acknowledged channel exists");
        assert!(record.spent <= record.accepted_cumulative, "{record:?}");
        assert!(record.accepted_cumulative <= record.deposit, "{record:?}");
        assert!(
            record.accepted_cumulative >= acked.accepted,
            "lost a voucher: {record:?} {acked:?}"
        );
        assert!(
            record.spent >= acked.spent,
            "lost a charge: {record:?} {acked:?}"
        );
        assert!(
            record.deposit >= acked.deposit,
            "lost a top-up: {record:?} {acked:?}"
        );
    }
    for key in &acknowledged.aux_keys {
        assert!(
            store.get_aux(key.as_bytes()).expect("aux").is_some(),
            "lost idempotency entry {key}"
        );
    }
    let mut cursor = FeedCursor::ZERO;
    let mut latest = BTreeMap::new();
    loop {
        let page = store.read_feed(cursor, 4).expect("feed");
        if page.entries.is_empty() {
            break;
        }
        cursor = page.next;
        for entry in page.entries {
            assert!(
                latest
                    .insert(entry.channel_id, entry.cumulative_amount)
                    .is_none(),
                "one entry per channel"
            );
        }
    }
    for record in store.scan(None, 100).expect("scan") {
        let expected = (record.accepted_cumulative > 0).then_some(record.accepted_cumulative);
        assert_eq!(
            latest.get(&record.channel_id).copied(),
            expected,
            "feed matches {record:?}"
        );
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_update() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = Rng(0x00c0_ffee_d00d_0001);
    let mut acknowledged = Acknowledged::default();
    let started = Instant::now();
    for round in 0..KILLS {
        // Kill right after startup now and then, otherwise after up to 600 acknowledgements.
        let kill_after = if round % 5 == 0 {
            0
        } else {
            rng.below(600) as usize + 1
        };
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &path)
            .env(SEED_ENV, (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut ready = false;
        let mut acks_this_round = 0;
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.expect("child stdout");
            if line == "READY" {
                ready = true;
            } else if line.starts_with("ACK ") {
                acknowledged.record(&line);
                acks_this_round += 1;
            }
            *acknowledged.acks_per_seed.entry(round + 1).or_default() = acks_this_round;
            if ready && acks_this_round >= kill_after {
                child.kill().expect("SIGKILL");
                killed = true;
                break;
            }
        }
        assert!(killed, "child {round} exited before it was killed");
        // Lines written before the kill were acknowledged too.
        for line in lines {
            let line = line.expect("child stdout");
            if line.starts_with("ACK ") {
                acknowledged.record(&line);
                *acknowledged.acks_per_seed.entry(round + 1).or_default() += 1;
            }
        }
        let status = child.wait().expect("reap child");
        assert!(!status.success(), "the child was killed");
        verify(&path, &acknowledged);
    }
    assert!(
        acknowledged.count > 1_000,
        "the children did real work: {}",
        acknowledged.count
    );
    eprintln!(
        "{KILLS} SIGKILLs, {} acknowledged updates checked in {:?}",
        acknowledged.count,
        started.elapsed()
    );
}
