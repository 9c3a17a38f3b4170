//! Signing helpers for payers (clients, tests, benchmarks).

use crate::{SignedVoucher, Voucher, VoucherDomain, VoucherSignature};
use alloy_primitives::B256;
use k256::{
    Secp256k1,
    ecdsa::{RecoveryId, Signature, SigningKey},
    sha2::Sha256,
};

/// Signs `voucher` under `domain` with `key`: RFC 6979 deterministic nonces and low `s`, so
/// the result is byte-identical to what mppx (viem) produces for the same key and voucher.
#[must_use]
pub fn sign_voucher(domain: &VoucherDomain, voucher: &Voucher, key: &SigningKey) -> SignedVoucher {
    SignedVoucher {
        voucher: *voucher,
        signature: sign_digest(&domain.digest(voucher), key),
    }
}

/// Signs a 32-byte digest with `key` (RFC 6979, low `s`).
#[must_use]
pub fn sign_digest(digest: &B256, key: &SigningKey) -> VoucherSignature {
    let (mut signature, mut recovery_id) = key.sign_prehash_recoverable(digest.as_slice());
    // A nonce point whose x is at or above n (probability about 2^-128) cannot be expressed
    // with v = 27/28. Draw another RFC 6979 nonce by adding data, as RFC 6979 §3.6 allows.
    let mut extra: u64 = 0;
    while recovery_id.is_x_reduced() {
        extra += 1;
        (signature, recovery_id) = rederive(key, digest, extra);
    }
    let (r, s) = signature.split_bytes();
    // k256 normalises s for secp256k1; the parity in the recovery id matches the result.
    VoucherSignature::from_canonical_parts(
        B256::from_slice(&r),
        B256::from_slice(&s),
        recovery_id.is_y_odd(),
    )
}

fn rederive(key: &SigningKey, digest: &B256, extra: u64) -> (Signature, RecoveryId) {
    ecdsa::hazmat::sign_prehashed_rfc6979::<Secp256k1, Sha256>(
        key.as_nonzero_scalar(),
        digest.as_slice(),
        &extra.to_be_bytes(),
    )
}
