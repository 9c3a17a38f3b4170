//! Paid requests per second through the engine facade (`authorize_and_charge`: credential
//! parse, challenge HMAC, cheap checks, cached-key voucher check, voucher + charge in one store
//! update, durability wait, receipt), against the pure voucher check on the same two threads, in
//! the same run. A first look at P2, printed as a Markdown table; not a criterion benchmark.
//!
//! Starts anvil with the escrow (the pinned binary, see `sluice_contracts::anvil_binary`), opens
//! 64 channels with real transactions, signs every voucher ahead, then lets 64 tasks (one per
//! channel) pay on a 2-worker tokio runtime.
//!
//! ```text
//! cargo run --release -p sluice-engine --example facade_throughput [vouchers-per-channel]
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use sluice_engine::store::{ChannelStore, Durability, MemoryStore, SledStore};
use sluice_voucher::{SignedVoucher, SignerKey, Voucher, VoucherSignature};
use support::session::{Harness, PRICE, now};

const PAYERS: usize = 8;
const CHANNELS_PER_PAYER: usize = 8;

struct Prepared {
    /// Per channel, the credentials in order.
    headers: Vec<Vec<String>>,
    /// Every voucher with its signer's key, for the pure-check baseline.
    signed: Vec<(Arc<SignerKey>, SignedVoucher)>,
}

async fn prepare<S: ChannelStore>(h: &Harness<S>, per_channel: u128) -> Prepared {
    let mut headers = Vec::new();
    let mut signed = Vec::new();
    let challenge = h.challenge();
    for payer in 0..PAYERS {
        let deposit = per_channel * 2 * PRICE * 2;
        let mut client = h
            .client(2 + payer, deposit * CHANNELS_PER_PAYER as u128)
            .await;
        let key = Arc::new(
            SignerKey::new(
                client.address(),
                *client.voucher_key.verifying_key(),
                Default::default(),
            )
            .expect("own key"),
        );
        for n in 0..CHANNELS_PER_PAYER {
            let open = client.open(
                &challenge,
                deposit,
                B256::repeat_byte(n as u8 + 1),
                Address::ZERO,
                0,
            );
            h.engine
                .authorize(&h.route, &open, now())
                .await
                .expect("open");
            let mut channel_headers = Vec::new();
            for k in 1..=per_channel {
                let amount = k * 2 * PRICE;
                channel_headers.push(client.voucher(&challenge, amount));
                if k <= 64 {
                    let signature = client.sign(client.channel, amount);
                    signed.push((
                        Arc::clone(&key),
                        SignedVoucher {
                            voucher: Voucher::new(client.channel.into(), amount),
                            signature: VoucherSignature::from_bytes(&signature).expect("sig"),
                        },
                    ));
                }
            }
            headers.push(channel_headers);
        }
    }
    Prepared { headers, signed }
}

/// Paid requests per second: one task per channel, each paying its vouchers in order.
async fn facade_rate<S: ChannelStore + 'static>(h: &Harness<S>, prepared: &Prepared) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = prepared
        .headers
        .iter()
        .cloned()
        .map(|headers| {
            let engine = Arc::clone(&h.engine);
            let route = h.route.clone();
            tokio::spawn(async move {
                for header in &headers {
                    engine
                        .authorize_and_charge(&route, header, 1, now())
                        .await
                        .expect("paid");
                }
                headers.len()
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Pure checks per second on two threads (parse the 65 bytes, digest, cached-key verify).
fn pure_rate(
    h_domain: &sluice_voucher::VoucherDomain,
    prepared: &Prepared,
    duration: Duration,
) -> f64 {
    let started = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0u64;
                    while started.elapsed() < duration {
                        for (key, signed) in &prepared.signed {
                            let bytes = signed.signature.to_bytes65();
                            let signature = VoucherSignature::from_bytes(&bytes).expect("parse");
                            let again = SignedVoucher {
                                voucher: signed.voucher,
                                signature,
                            };
                            key.verify(h_domain, &again).expect("valid");
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

async fn measure<S: ChannelStore + 'static>(name: &str, store: S, per_channel: u128) {
    let h = Harness::start(store).await;
    let prepared = prepare(&h, per_channel).await;
    let domain = h.engine.voucher_domain().clone();
    let facade = facade_rate(&h, &prepared).await;
    let pure =
        tokio::task::block_in_place(|| pure_rate(&domain, &prepared, Duration::from_secs(3)));
    println!(
        "| {name} | {:.0} | {pure:.0} | {:.2}x |",
        facade,
        facade / pure
    );
}

fn main() {
    let per_channel: u128 = std::env::args()
        .nth(1)
        .map_or(500, |n| n.parse().expect("vouchers per channel"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{} channels × {per_channel} paid requests, 64 concurrent payers, 2 tokio workers\n",
        PAYERS * CHANNELS_PER_PAYER
    );
    println!("| store | paid requests/s (facade) | pure checks/s (2 threads) | ratio |");
    println!("|---|---:|---:|---:|");
    runtime.block_on(async {
        measure("memory", MemoryStore::new(), per_channel).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledStore::open(dir.path().join("db"), Durability::default()).expect("sled");
        measure("sled, group commit", sled, per_channel).await;
    });
}
