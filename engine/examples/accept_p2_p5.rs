//! P2 and P5 (PERFORMANCE.md): the engine's accept path against the pure voucher check, and
//! the same accept path with a small and a large number of channels in sled. A first look,
//! printed as Markdown; not a criterion benchmark.
//!
//! "Engine accept" here is the store-level path without HTTP or chain: parse the 65 signature
//! bytes, read the record, run the cheap checks (`precheck_voucher`), verify against the cached
//! key (`SignerKey`: digest + ECDSA), apply the `on_voucher` transition in one store update and
//! await its durability (sled, group commit). Many tokio tasks run it on a 2-worker runtime so
//! group commit can batch. The pure check is the 65-byte parse, the digest and the cached-key
//! verify of the same vouchers on 2 OS threads. Rounds alternate between the two (and between
//! the two stores for P5), so both see the same machine load.
//!
//! Channels are seeded straight into the store as `Open` records carrying their chain facts
//! (payer, payee, token, deposit): no anvil. This measures the accept path, not opening.
//!
//! The `active` channels (default 1,000) get the vouchers; the small store holds just them, the
//! large store holds them plus random others up to `large` channels. Seeding uses
//! `Durability::None` and one final sync and is timed on its own.
//!
//! ```text
//! cargo run --release -p sluice-engine --example accept_p2_p5 -- [large] [rounds] [active] [group|none]
//! cargo run --release -p sluice-engine --example accept_p2_p5 -- 1000000 20 1000
//! ```

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256};
use sluice_engine::{
    session::{SessionError, SignatureCheck, VoucherClaim, on_voucher, precheck_voucher},
    store::{
        Change, ChannelRecord, ChannelStatus, ChannelStore, Durability, SledOptions, SledStore,
        StoreError,
    },
};
use sluice_voucher::{
    AcceptancePolicy, SignedVoucher, SignerKey, SigningKey, Voucher, VoucherDomain, VoucherError,
    VoucherSignature, address_of, sign_voucher,
};

/// The price of one voucher step in token base units.
const STEP: u128 = 1_000;
/// Tokio tasks driving the engine path (each owns `active / TASKS` channels).
const TASKS: usize = 250;

/// Why one accept failed (the benchmark stops on the first).
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error("voucher: {0}")]
    Voucher(#[from] VoucherError),
    #[error("the channel expects signer {0}, not the cached key")]
    WrongSigner(Address),
}

/// One voucher as it arrives: channel, amount, and the 65 wire bytes.
#[derive(Clone, Copy)]
struct Wire {
    channel: B256,
    amount: u128,
    signature: [u8; 65],
}

/// Everything shared by the accept paths.
struct Ctx {
    domain: VoucherDomain,
    key: SignerKey,
    policy: AcceptancePolicy,
}

/// splitmix64: deterministic pseudo-random channel ids.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn channel_id(n: u64) -> B256 {
    let mut id = [0u8; 32];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(n.wrapping_mul(4).wrapping_add(i as u64)).to_be_bytes());
    }
    B256::from(id)
}

fn open_record(channel: B256, payer: Address, rounds: usize) -> ChannelRecord {
    let mut record = ChannelRecord::new(channel);
    record.status = ChannelStatus::Open;
    record.payer = payer;
    record.payee = Address::repeat_byte(0x70);
    record.token = Address::repeat_byte(0x20);
    record.deposit = STEP * (rounds as u128 + 10);
    record.chain_checked_at_ms = 1;
    record
}

/// Seeds `channels` (the active ones first) with `Durability::None`, syncs once, closes.
/// Returns the seeding time and the RSS growth from before opening to after the sync.
fn seed(
    path: &Path,
    active: &[B256],
    total: u64,
    payer: Address,
    rounds: usize,
) -> (Duration, u64) {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let store = SledStore::open(path, Durability::None).expect("open for seeding");
    let extra = total.saturating_sub(active.len() as u64);
    let ids = active
        .iter()
        .copied()
        .chain((0..extra).map(|n| channel_id(1_000_000_000 + n)));
    for id in ids {
        store
            .update(&id, |_| -> Result<_, StoreError> {
                Ok(Change::write(open_record(id, payer, rounds), ()))
            })
            .expect("seed");
    }
    store.sync().expect("sync");
    (started.elapsed(), rss_bytes().saturating_sub(rss_before))
}

/// The engine's accept path for one voucher, up to durability.
async fn accept(ctx: &Ctx, store: &SledStore, wire: &Wire) -> Result<(), AcceptError> {
    let signature = VoucherSignature::from_bytes(&wire.signature)?;
    let claim = VoucherClaim::new(wire.amount, &signature);
    let current = store.get(&wire.channel)?;
    match precheck_voucher(current.as_ref(), &wire.channel, &claim, &ctx.policy, None)? {
        SignatureCheck::Verify { signer } => {
            if signer != ctx.key.address() {
                return Err(AcceptError::WrongSigner(signer));
            }
            let signed = SignedVoucher {
                voucher: Voucher::new(wire.channel.into(), wire.amount),
                signature,
            };
            ctx.key.verify(&ctx.domain, &signed)?;
        }
        SignatureCheck::Skip => {}
    }
    let now_ms = 1_000;
    store
        .update_pending(&wire.channel, |record| -> Result<_, AcceptError> {
            let transition = on_voucher(record, &wire.channel, &claim, &ctx.policy, None, now_ms)?;
            Ok(if transition.write {
                Change::write(transition.record, ())
            } else {
                Change::keep(())
            })
        })?
        .durable()
        .await?;
    Ok(())
}

/// Vouchers per second through the engine path for one round (one voucher per active channel).
fn engine_round(
    runtime: &tokio::runtime::Runtime,
    ctx: &Arc<Ctx>,
    store: &Arc<SledStore>,
    round: &Arc<Vec<Wire>>,
) -> f64 {
    let started = Instant::now();
    runtime.block_on(async {
        let per_task = round.len().div_ceil(TASKS);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (ctx, store, round) = (Arc::clone(ctx), Arc::clone(store), Arc::clone(round));
                tokio::spawn(async move {
                    let end = ((task + 1) * per_task).min(round.len());
                    for wire in round.get(task * per_task..end).unwrap_or_default() {
                        accept(&ctx, &store, wire).await.expect("accepted");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
    });
    round.len() as f64 / started.elapsed().as_secs_f64()
}

/// Pure checks per second on 2 threads over the same vouchers.
fn pure_round(ctx: &Ctx, round: &[Wire]) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for half in round.chunks(round.len().div_ceil(2)) {
            scope.spawn(move || {
                for wire in half {
                    let signature = VoucherSignature::from_bytes(&wire.signature).expect("parse");
                    let signed = SignedVoucher {
                        voucher: Voucher::new(wire.channel.into(), wire.amount),
                        signature,
                    };
                    ctx.key.verify(&ctx.domain, &signed).expect("valid");
                }
            });
        }
    });
    round.len() as f64 / started.elapsed().as_secs_f64()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Bytes of the files under `dir` (apparent size) and bytes allocated on disk.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            let (len, blocks) = dir_bytes(&entry.path());
            total.0 += len;
            total.1 += blocks;
        } else {
            total.0 += meta.len();
            total.1 += meta.blocks() * 512;
        }
    }
    total
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let large: u64 = args.next().map_or(200_000, |s| s.parse().expect("large"));
    let rounds: usize = args.next().map_or(20, |s| s.parse().expect("rounds"));
    let active: usize = args.next().map_or(1_000, |s| s.parse().expect("active"));
    // `none` runs the accept rounds without flushing (to separate the flush cost).
    let durability = match args.next().as_deref() {
        None | Some("group") => Durability::default(),
        Some("none") => Durability::None,
        Some(other) => panic!("durability must be `group` or `none`, not {other}"),
    };

    let payer_key = SigningKey::from_slice(&[0x42; 32]).expect("key");
    let payer = address_of(payer_key.verifying_key());
    let domain = VoucherDomain::tempo_v1(31337, Address::repeat_byte(0xe7));
    let key =
        SignerKey::new(payer, *payer_key.verifying_key(), Default::default()).expect("own key");
    let ctx = Arc::new(Ctx {
        domain,
        key,
        policy: AcceptancePolicy {
            min_voucher_delta: 1,
        },
    });

    // Sign every voucher ahead: round r carries amount (r + 1) × STEP on each active channel.
    let channels: Vec<B256> = (0..active as u64).map(channel_id).collect();
    let signing = Instant::now();
    let all: Vec<Arc<Vec<Wire>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|half| {
                let (channels, domain, payer_key) = (&channels, &ctx.domain, &payer_key);
                scope.spawn(move || {
                    (0..rounds)
                        .filter(|r| r % 2 == half)
                        .map(|r| {
                            let amount = (r as u128 + 1) * STEP;
                            let wires: Vec<Wire> = channels
                                .iter()
                                .map(|&channel| {
                                    let voucher = Voucher::new(channel.into(), amount);
                                    let signed = sign_voucher(domain, &voucher, payer_key);
                                    Wire {
                                        channel,
                                        amount,
                                        signature: signed.signature.to_bytes65(),
                                    }
                                })
                                .collect();
                            (r, wires)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut rounds: Vec<_> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("signer"))
            .collect();
        rounds.sort_by_key(|(r, _)| *r);
        rounds.into_iter().map(|(_, w)| Arc::new(w)).collect()
    });
    eprintln!(
        "signed {} vouchers in {:.1} s",
        rounds * active,
        signing.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let small_path = dir.path().join("small");
    let large_path = dir.path().join("large");
    let (small_seed, _) = seed(&small_path, &channels, active as u64, payer, rounds);
    let (large_seed, seed_rss) = seed(&large_path, &channels, large, payer, rounds);
    let (large_len, large_alloc) = dir_bytes(&large_path);
    let (small_len, small_alloc) = dir_bytes(&small_path);
    eprintln!(
        "seeded {active} channels in {:.2} s, {large} in {:.1} s",
        small_seed.as_secs_f64(),
        large_seed.as_secs_f64()
    );

    let open = |path: &Path| {
        Arc::new(SledStore::open_with(SledOptions::new(path).durability(durability)).expect("open"))
    };
    let rss_before_open = rss_bytes();
    let small = open(&small_path);
    let large_store = open(&large_path);
    let large_disk_reported = large_store.approximate_size_on_disk().expect("size");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let (mut pure, mut eng_small, mut eng_large) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r_p2, mut r_p5) = (Vec::new(), Vec::new());
    for (r, round) in all.iter().enumerate() {
        // Alternate the order of the two stores so neither always runs second.
        let p = pure_round(&ctx, round);
        let (s, l) = if r % 2 == 0 {
            let s = engine_round(&runtime, &ctx, &small, round);
            (s, engine_round(&runtime, &ctx, &large_store, round))
        } else {
            let l = engine_round(&runtime, &ctx, &large_store, round);
            (engine_round(&runtime, &ctx, &small, round), l)
        };
        r_p2.push(s / p);
        r_p5.push(l / s);
        pure.push(p);
        eng_small.push(s);
        eng_large.push(l);
    }
    let rss_after_run = rss_bytes();

    // Every active channel holds the last voucher, nothing was spent, and the invariants hold.
    let last = rounds as u128 * STEP;
    for store in [&small, &large_store] {
        for channel in &channels {
            let record = store.get(channel).expect("get").expect("seeded");
            assert_eq!(record.accepted_cumulative, last, "accepted amount");
            record.check_invariants().expect("invariants");
        }
    }
    assert_eq!(
        large_store.len().expect("len"),
        large.max(active as u64) as usize
    );

    // Restart: drop the large store, reopen, read one active channel; then a full scan (what
    // the facade's `rebuild_payer_index` does with each page).
    drop(large_store);
    let restart = Instant::now();
    let reopened = open(&large_path);
    let first = reopened.get(&channels[0]).expect("get").expect("present");
    let restart_first_read = restart.elapsed();
    assert_eq!(first.accepted_cumulative, last);
    let scan_started = Instant::now();
    let mut after = None;
    let mut open_count = 0usize;
    loop {
        let page = reopened.scan(after.as_ref(), 1024).expect("scan");
        let Some(tail) = page.last() else { break };
        after = Some(tail.channel_id);
        open_count += page
            .iter()
            .filter(|r| r.status == ChannelStatus::Open && !r.finalized)
            .count();
    }
    let scan_time = scan_started.elapsed();

    println!(
        "{active} active channels, {rounds} rounds of one voucher per active channel, \
         {TASKS} tasks on 2 tokio workers, sled durability {durability:?}\n"
    );
    println!("### P2\n");
    println!("| path | median vouchers/s | median per-round ratio to pure |");
    println!("|---|---:|---:|");
    println!(
        "| pure check, 2 threads | {:.0} | 1.00 |",
        median(&mut pure)
    );
    println!(
        "| engine accept, {active} channels in sled | {:.0} | {:.2} |",
        median(&mut eng_small),
        median(&mut r_p2)
    );
    println!("\n### P5\n");
    println!("| store | median vouchers/s | median per-round ratio to {active} channels |");
    println!("|---|---:|---:|");
    println!(
        "| {active} channels | {:.0} | 1.00 |",
        median(&mut eng_small.clone())
    );
    println!(
        "| {large} channels | {:.0} | {:.2} |",
        median(&mut eng_large),
        median(&mut r_p5)
    );
    let per = |bytes: u64| bytes as f64 / large as f64;
    println!("\n| {large}-channel store | value |\n|---|---:|");
    println!(
        "| seeding (Durability::None, one sync) | {:.1} s ({:.0} channels/s) |",
        large_seed.as_secs_f64(),
        large as f64 / large_seed.as_secs_f64()
    );
    println!(
        "| files on disk after seeding (apparent / allocated) | {:.0} / {:.0} bytes per channel |",
        per(large_len),
        per(large_alloc)
    );
    println!(
        "| `approximate_size_on_disk` after reopen | {:.0} bytes per channel |",
        per(large_disk_reported)
    );
    println!(
        "| small store ({active} channels) files, for scale | {small_len} bytes apparent, {small_alloc} allocated |"
    );
    println!(
        "| RSS delta while seeding | {:.0} bytes per channel |",
        per(seed_rss)
    );
    println!(
        "| RSS delta from opening both stores to the end of the run | {:.0} bytes per channel |",
        per(rss_after_run.saturating_sub(rss_before_open))
    );
    println!(
        "| restart: drop, reopen, first read | {:.1} ms |",
        restart_first_read.as_secs_f64() * 1e3
    );
    println!(
        "| full scan after restart ({open_count} open records, `rebuild_payer_index`'s reads) | {:.2} s |",
        scan_time.as_secs_f64()
    );
}
