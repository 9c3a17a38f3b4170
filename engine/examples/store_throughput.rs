//! Quick throughput measurement of the channel store: durable updates per second for each
//! durability mode with 8 and 64 concurrent writers (each writer accepts vouchers on its own
//! channel). Not a criterion benchmark; a first look, printed as a Markdown table.
//!
//! ```text
//! cargo run --release -p sluice-engine --example store_throughput [seconds-per-cell]
//! ```

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy_primitives::B256;
use sluice_engine::store::{
    Change, ChannelRecord, ChannelStatus, ChannelStore, Durability, MemoryStore, SIGNATURE_LEN,
    SledStore, StoreError,
};

fn channel(writer: u64) -> B256 {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&writer.to_be_bytes());
    id[31] = 1;
    B256::from(id)
}

/// Runs `writers` threads for `duration`, each accepting ever higher vouchers on its own
/// channel; returns updates per second.
fn run<S: ChannelStore + 'static>(store: Arc<S>, writers: u64, duration: Duration) -> f64 {
    for writer in 0..writers {
        store
            .update(&channel(writer), |_| -> Result<_, StoreError> {
                let mut record = ChannelRecord::new(channel(writer));
                record.status = ChannelStatus::Open;
                record.deposit = u128::MAX;
                Ok(Change::write(record, ()))
            })
            .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(writers as usize + 1));
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (store, stop, done, barrier) = (
                Arc::clone(&store),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    store
                        .update(&channel(writer), |record| -> Result<_, StoreError> {
                            let mut next = *record.expect("exists");
                            next.accepted_cumulative += 1;
                            let mut signature = [0u8; SIGNATURE_LEN];
                            signature[..16]
                                .copy_from_slice(&next.accepted_cumulative.to_be_bytes());
                            next.accepted_signature = signature;
                            next.spent += 1;
                            next.units += 1;
                            Ok(Change::write(next, ()))
                        })
                        .expect("update");
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("writer");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Like `run`, but with `tasks` async tasks on a 2-thread tokio runtime, each awaiting the
/// durability of its update without blocking a thread (the engine's shape).
fn run_async<S: ChannelStore + 'static>(store: Arc<S>, tasks: u64, duration: Duration) -> f64 {
    for task in 0..tasks {
        store
            .update(&channel(task), |_| -> Result<_, StoreError> {
                let mut record = ChannelRecord::new(channel(task));
                record.status = ChannelStatus::Open;
                record.deposit = u128::MAX;
                Ok(Change::write(record, ()))
            })
            .expect("create");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let done: u64 = runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        store
                            .update_pending(&channel(task), |record| -> Result<_, StoreError> {
                                let mut next = *record.expect("exists");
                                next.accepted_cumulative += 1;
                                let mut signature = [0u8; SIGNATURE_LEN];
                                signature[..16]
                                    .copy_from_slice(&next.accepted_cumulative.to_be_bytes());
                                next.accepted_signature = signature;
                                next.spent += 1;
                                Ok(Change::write(next, ()))
                            })
                            .expect("update")
                            .durable()
                            .await
                            .expect("durable");
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        let stopper = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            stopper.store(true, Ordering::Relaxed);
        });
        let mut total = 0;
        for handle in handles {
            total += handle.await.expect("task");
        }
        total
    });
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(2.0, |s| s.parse().expect("seconds"));
    let duration = Duration::from_secs_f64(seconds);
    let modes: [(&str, Option<Durability>); 6] = [
        ("memory (no disk)", None),
        ("sled, no flush", Some(Durability::None)),
        ("sled, per-request flush", Some(Durability::PerRequest)),
        (
            "sled, group commit (0)",
            Some(Durability::GroupCommit {
                max_delay: Duration::ZERO,
            }),
        ),
        (
            "sled, group commit (200 µs)",
            Some(Durability::GroupCommit {
                max_delay: Duration::from_micros(200),
            }),
        ),
        (
            "sled, group commit (1 ms)",
            Some(Durability::GroupCommit {
                max_delay: Duration::from_millis(1),
            }),
        ),
    ];
    println!("| mode | 8 writers (updates/s) | 64 writers (updates/s) |");
    println!("|---|---:|---:|");
    for (name, durability) in modes {
        let mut cells = Vec::new();
        for writers in [8, 64] {
            let rate = match durability {
                None => run(Arc::new(MemoryStore::new()), writers, duration),
                Some(durability) => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = SledStore::open(dir.path().join("db"), durability).expect("open");
                    run(Arc::new(store), writers, duration)
                }
            };
            cells.push(format!("{rate:.0}"));
        }
        println!("| {name} | {} | {} |", cells[0], cells[1]);
    }
    println!();
    println!(
        "| 2 tokio workers, async durability wait | 8 tasks (updates/s) | 256 tasks (updates/s) |"
    );
    println!("|---|---:|---:|");
    for (name, durability) in [
        (
            "sled, group commit (0)",
            Durability::GroupCommit {
                max_delay: Duration::ZERO,
            },
        ),
        ("sled, no flush", Durability::None),
    ] {
        let mut cells = Vec::new();
        for tasks in [8, 256] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SledStore::open(dir.path().join("db"), durability).expect("open");
            cells.push(format!(
                "{:.0}",
                run_async(Arc::new(store), tasks, duration)
            ));
        }
        println!("| {name} | {} | {} |", cells[0], cells[1]);
    }
}
