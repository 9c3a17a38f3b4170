//! P1 ratios measured interleaved: the baseline and each candidate run in alternating short
//! rounds, and the reported figure is the median of the per-round ratios. On a shared, noisy
//! machine this is steadier than comparing two criterion medians taken minutes apart.
//!
//! `cargo run --release --example p1_interleaved [rounds]`

use alloy_primitives::{Address, B256};
use secp256k1::{
    Message,
    ecdsa::{RecoverableSignature, RecoveryId},
};
use sluice_voucher::{
    ChannelId, SignedVoucher, SignerKey, SigningKey, TableWidth, Voucher, VoucherDomain,
    VoucherSignature, address_of, precompute_tables, sign_voucher, verify,
};
use std::{hint::black_box, time::Instant};

const VOUCHERS: usize = 64;
const OPS_PER_ROUND: usize = 64;

/// One full check of voucher number `i`; true when it passes.
type Check<'a> = Box<dyn Fn(usize) -> bool + 'a>;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let secret: [u8; 32] = alloy_primitives::hex::decode_to_array(
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    )
    .expect("hex");
    let key = SigningKey::from_slice(&secret).expect("key");
    let signer = address_of(key.verifying_key());
    let domain = VoucherDomain::tempo_v1(31337, Address::repeat_byte(0xe7));
    let channel = ChannelId::new(B256::repeat_byte(0x5c));
    let wire: Vec<(Voucher, [u8; 65])> = (0..VOUCHERS)
        .map(|i| {
            let voucher = Voucher::new(channel, 250_000 * (i as u128 + 1));
            (
                voucher,
                sign_voucher(&domain, &voucher, &key).signature.to_bytes65(),
            )
        })
        .collect();
    let secp: Vec<([u8; 64], RecoveryId, Message)> = wire
        .iter()
        .map(|(voucher, bytes)| {
            let mut compact = [0u8; 64];
            compact.copy_from_slice(&bytes[..64]);
            let id = RecoveryId::try_from(i32::from(bytes[64] - 27)).expect("recid");
            (compact, id, Message::from_digest(domain.digest(voucher).0))
        })
        .collect();
    precompute_tables();
    let first = SignedVoucher {
        voucher: wire[0].0,
        signature: VoucherSignature::from_bytes(&wire[0].1).expect("sig"),
    };
    let cached = [TableWidth::Small, TableWidth::Medium, TableWidth::Large]
        .map(|w| SignerKey::learn_with(&domain, &first, signer, w).expect("learn"));

    let baseline = |i: usize| {
        let (compact, id, msg) = &secp[i];
        let sig = RecoverableSignature::from_compact(compact, *id).expect("sig");
        sig.recover_ecdsa(*msg).is_ok()
    };
    let recover = |i: usize| {
        let (voucher, bytes) = &wire[i];
        VoucherSignature::from_bytes(bytes).is_ok_and(|signature| {
            verify(
                &domain,
                &SignedVoucher {
                    voucher: *voucher,
                    signature,
                },
                signer,
            )
            .is_ok()
        })
    };
    let with_key = |k: &SignerKey, i: usize| {
        let (voucher, bytes) = &wire[i];
        VoucherSignature::from_bytes(bytes).is_ok_and(|signature| {
            k.verify(
                &domain,
                &SignedVoucher {
                    voucher: *voucher,
                    signature,
                },
            )
            .is_ok()
        })
    };
    // The raw k256 recoveries of the same digests, for the choice of k256 version.
    use sluice_voucher::k256;
    let raw: Vec<([u8; 32], [u8; 64], bool)> = wire
        .iter()
        .map(|(voucher, bytes)| {
            let mut rs = [0u8; 64];
            rs.copy_from_slice(&bytes[..64]);
            (domain.digest(voucher).0, rs, bytes[64] == 28)
        })
        .collect();
    let k256_0_14 = |i: usize| {
        let (digest, rs, odd) = &raw[i];
        let sig = k256::ecdsa::Signature::from_slice(rs).expect("sig");
        let id = k256::ecdsa::RecoveryId::new(*odd, false);
        k256::ecdsa::VerifyingKey::recover_from_prehash(digest, &sig, id).is_ok()
    };
    let k256_0_13 = |i: usize| {
        let (digest, rs, odd) = &raw[i];
        let sig = k256_0_13::ecdsa::Signature::from_slice(rs).expect("sig");
        let id = k256_0_13::ecdsa::RecoveryId::new(*odd, false);
        k256_0_13::ecdsa::VerifyingKey::recover_from_prehash(digest, &sig, id).is_ok()
    };
    let candidates: [(&str, Check<'_>); 6] = [
        ("sluice_check_recover", Box::new(recover)),
        (
            "sluice_check_cached_key_small_table",
            Box::new(|i| with_key(&cached[0], i)),
        ),
        (
            "sluice_check_cached_key",
            Box::new(|i| with_key(&cached[1], i)),
        ),
        (
            "sluice_check_cached_key_large_table",
            Box::new(|i| with_key(&cached[2], i)),
        ),
        ("k256_0_14_recover_from_prehash", Box::new(k256_0_14)),
        ("k256_0_13_recover_from_prehash", Box::new(k256_0_13)),
    ];

    let time_round = |f: &dyn Fn(usize) -> bool| {
        let start = Instant::now();
        for i in 0..OPS_PER_ROUND {
            assert!(black_box(f(black_box(i % VOUCHERS))));
        }
        start.elapsed().as_secs_f64() * 1e6 / OPS_PER_ROUND as f64
    };
    // Warm up every path (tables, caches, CPU frequency).
    time_round(&baseline);
    for (_, f) in &candidates {
        time_round(f.as_ref());
    }

    let mut base_times = Vec::with_capacity(rounds);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); candidates.len()];
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); candidates.len()];
    for _ in 0..rounds {
        for (c, (_, f)) in candidates.iter().enumerate() {
            // Baseline immediately before each candidate: both see the same machine load.
            let base = time_round(&baseline);
            let t = time_round(f.as_ref());
            base_times.push(base);
            times[c].push(t);
            ratios[c].push(t / base);
        }
    }
    println!("rounds: {rounds} x {OPS_PER_ROUND} ops per path, interleaved");
    println!("| path | median µs/op | median ratio to libsecp256k1_ecrecover |");
    println!("|---|---|---|");
    println!(
        "| libsecp256k1_ecrecover | {:.2} | 1.00 |",
        median(&mut base_times)
    );
    for (c, (name, _)) in candidates.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:.3} |",
            median(&mut times[c]),
            median(&mut ratios[c])
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
