//! P1 (PERFORMANCE.md): the full voucher check against libsecp256k1's raw ecrecover of the
//! same digests, in one run. Also the k256 0.13 / 0.14 backends side by side, which is what
//! the voucher crate's choice of k256 rests on.
//!
//! Every function cycles through the same 64 vouchers (one signer, growing amounts), so each
//! measures the same digests.

use alloy_primitives::{Address, B256};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use secp256k1::{
    Message,
    ecdsa::{RecoverableSignature, RecoveryId as SecpRecoveryId},
};
use sluice_voucher::{
    ChannelId, SignedVoucher, SignerKey, SigningKey, TableWidth, Voucher, VoucherDomain,
    VoucherSignature, address_of, precompute_tables, sign_voucher, verify,
};
use std::hint::black_box;

const VOUCHERS: usize = 64;

struct Fixture {
    domain: VoucherDomain,
    signer: Address,
    /// What arrives on the wire: the voucher fields and the 65 signature bytes.
    wire: Vec<(Voucher, [u8; 65])>,
    digests: Vec<B256>,
}

fn fixture() -> Fixture {
    // anvil's well-known key #0, as in the mppx vectors.
    let secret: [u8; 32] = alloy_primitives::hex::decode_to_array(
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    )
    .expect("hex");
    let key = SigningKey::from_slice(&secret).expect("key");
    let domain = VoucherDomain::tempo_v1(31337, Address::repeat_byte(0xe7));
    let channel = ChannelId::new(B256::repeat_byte(0x5c));
    let mut wire = Vec::new();
    let mut digests = Vec::new();
    for i in 0..VOUCHERS {
        let voucher = Voucher::new(channel, 250_000 * (i as u128 + 1));
        let signed = sign_voucher(&domain, &voucher, &key);
        wire.push((voucher, signed.signature.to_bytes65()));
        digests.push(domain.digest(&voucher));
    }
    Fixture {
        domain,
        signer: address_of(key.verifying_key()),
        wire,
        digests,
    }
}

/// The whole check on the recovery path, from wire bytes to "signed by the expected signer".
fn check_recover(f: &Fixture, i: usize) -> bool {
    let (voucher, bytes) = &f.wire[i];
    let Ok(signature) = VoucherSignature::from_bytes(bytes) else {
        return false;
    };
    verify(
        &f.domain,
        &SignedVoucher {
            voucher: *voucher,
            signature,
        },
        f.signer,
    )
    .is_ok()
}

/// The whole check against a cached key, from wire bytes.
fn check_cached(f: &Fixture, key: &SignerKey, i: usize) -> bool {
    let (voucher, bytes) = &f.wire[i];
    let Ok(signature) = VoucherSignature::from_bytes(bytes) else {
        return false;
    };
    key.verify(
        &f.domain,
        &SignedVoucher {
            voucher: *voucher,
            signature,
        },
    )
    .is_ok()
}

fn p1_voucher_check(c: &mut Criterion) {
    let f = fixture();
    precompute_tables();
    let first = SignedVoucher {
        voucher: f.wire[0].0,
        signature: VoucherSignature::from_bytes(&f.wire[0].1).expect("sig"),
    };
    let keys = [TableWidth::Small, TableWidth::Medium, TableWidth::Large]
        .map(|width| SignerKey::learn_with(&f.domain, &first, f.signer, width).expect("learn"));
    // libsecp256k1's inputs: the same digests and signatures, in its own types.
    let secp: Vec<([u8; 64], SecpRecoveryId, Message)> = f
        .wire
        .iter()
        .zip(&f.digests)
        .map(|((_, bytes), digest)| {
            let mut compact = [0u8; 64];
            compact.copy_from_slice(&bytes[..64]);
            let id = SecpRecoveryId::try_from(i32::from(bytes[64] - 27)).expect("recid");
            (compact, id, Message::from_digest(digest.0))
        })
        .collect();
    for i in 0..VOUCHERS {
        assert!(check_recover(&f, i) && keys.iter().all(|k| check_cached(&f, k, i)));
    }

    let mut group = c.benchmark_group("p1_voucher_check");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) % VOUCHERS;
        i
    };
    group.bench_function("libsecp256k1_ecrecover", |b| {
        b.iter(|| {
            let (compact, id, msg) = &secp[next()];
            let sig = RecoverableSignature::from_compact(compact, *id).expect("sig");
            black_box(sig.recover_ecdsa(*msg).expect("recover"))
        })
    });
    group.bench_function("sluice_check_recover", |b| {
        b.iter(|| black_box(check_recover(&f, next())))
    });
    group.bench_function("sluice_check_cached_key", |b| {
        b.iter(|| black_box(check_cached(&f, &keys[1], next())))
    });
    group.bench_function("sluice_check_cached_key_small_table", |b| {
        b.iter(|| black_box(check_cached(&f, &keys[0], next())))
    });
    group.bench_function("sluice_check_cached_key_large_table", |b| {
        b.iter(|| black_box(check_cached(&f, &keys[2], next())))
    });
    group.bench_function("digest", |b| {
        b.iter(|| black_box(f.domain.digest(&f.wire[next()].0)))
    });
    group.bench_function("signature_parse", |b| {
        b.iter(|| black_box(VoucherSignature::from_bytes(&f.wire[next()].1)))
    });
    group.bench_function("signer_key_learn", |b| {
        b.iter_batched(
            || (),
            |()| black_box(SignerKey::learn(&f.domain, &first, f.signer).is_ok()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("libsecp256k1_verify_known_key", |b| {
        let public = {
            let (compact, id, msg) = &secp[0];
            RecoverableSignature::from_compact(compact, *id)
                .expect("sig")
                .recover_ecdsa(*msg)
                .expect("pk")
        };
        b.iter(|| {
            let (compact, _, msg) = &secp[next()];
            let sig = secp256k1::ecdsa::Signature::from_compact(compact).expect("sig");
            black_box(secp256k1::ecdsa::verify(&sig, *msg, &public).is_ok())
        })
    });
    group.finish();
}

fn k256_backends(c: &mut Criterion) {
    use k256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use sluice_voucher::k256;
    let f = fixture();
    let mut group = c.benchmark_group("k256_backends");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) % VOUCHERS;
        i
    };

    let v14: Vec<(k256::ecdsa::Signature, k256::ecdsa::RecoveryId)> = f
        .wire
        .iter()
        .map(|(_, b)| {
            let sig = k256::ecdsa::Signature::from_slice(&b[..64]).expect("sig");
            (sig, k256::ecdsa::RecoveryId::new(b[64] == 28, false))
        })
        .collect();
    let key14 =
        k256::ecdsa::VerifyingKey::recover_from_prehash(&f.digests[0].0, &v14[0].0, v14[0].1)
            .expect("recover");
    group.bench_function("k256_0_14_recover_from_prehash", |b| {
        b.iter(|| {
            let n = next();
            let (sig, id) = &v14[n];
            black_box(k256::ecdsa::VerifyingKey::recover_from_prehash(
                &f.digests[n].0,
                sig,
                *id,
            ))
        })
    });
    group.bench_function("k256_0_14_verify_prehash", |b| {
        b.iter(|| {
            let n = next();
            black_box(key14.verify_prehash(&f.digests[n].0, &v14[n].0).is_ok())
        })
    });

    use k256_0_13::ecdsa::signature::hazmat::PrehashVerifier as _;
    let v13: Vec<(k256_0_13::ecdsa::Signature, k256_0_13::ecdsa::RecoveryId)> = f
        .wire
        .iter()
        .map(|(_, b)| {
            let sig = k256_0_13::ecdsa::Signature::from_slice(&b[..64]).expect("sig");
            (sig, k256_0_13::ecdsa::RecoveryId::new(b[64] == 28, false))
        })
        .collect();
    let key13 =
        k256_0_13::ecdsa::VerifyingKey::recover_from_prehash(&f.digests[0].0, &v13[0].0, v13[0].1)
            .expect("recover");
    group.bench_function("k256_0_13_recover_from_prehash", |b| {
        b.iter(|| {
            let n = next();
            let (sig, id) = &v13[n];
            black_box(k256_0_13::ecdsa::VerifyingKey::recover_from_prehash(
                &f.digests[n].0,
                sig,
                *id,
            ))
        })
    });
    group.bench_function("k256_0_13_verify_prehash", |b| {
        b.iter(|| {
            let n = next();
            black_box(key13.verify_prehash(&f.digests[n].0, &v13[n].0).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, p1_voucher_check, k256_backends);
criterion_main!(benches);
