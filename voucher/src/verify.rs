//! Signer checks: recovery against an expected address, and a faster check against a cached
//! per-signer key.

use crate::{
    SignedVoucher, VoucherDomain, VoucherError, VoucherSignature,
    comb::{self, CombTable},
};
use alloy_primitives::{Address, B256, keccak256};
use k256::{
    AffinePoint, FieldBytes, ProjectivePoint, Scalar,
    ecdsa::VerifyingKey,
    elliptic_curve::{
        PrimeField as _,
        ops::{MulVartime as _, Reduce},
        point::{AffineCoordinates as _, DecompressPoint as _},
        subtle::Choice,
    },
};

/// The Ethereum address of a public key: the last 20 bytes of `keccak256(x ‖ y)`.
#[must_use]
pub fn address_of(key: &VerifyingKey) -> Address {
    let point = key.as_affine();
    let mut xy = [0u8; 64];
    xy[..32].copy_from_slice(&point.x());
    xy[32..].copy_from_slice(&point.y());
    Address::from_slice(&keccak256(xy)[12..])
}

/// Recovers the public key that produced `signature` over `digest`.
///
/// `Q = r⁻¹ · (s·R − z·G)`, where `R` is the curve point with x = `r` and the signature's y
/// parity. `z·G` comes from the shared precomputed generator table and `s·R` from k256's
/// variable-time GLV multiplication. The whole voucher check built on it measured about 10%
/// faster than k256's own `recover_from_prehash` alone (`benches/RESULTS.md`); k256's function
/// is the oracle for this one in the property tests.
///
/// # Errors
/// [`VoucherError::RecoveryFailed`] when no key can be recovered.
pub fn recover_key(
    digest: &B256,
    signature: &VoucherSignature,
) -> Result<VerifyingKey, VoucherError> {
    let failed = VoucherError::RecoveryFailed;
    let r_bytes: FieldBytes = signature.r().0.into();
    // Parsing guarantees 0 < r, s < n; should that ever not hold, recovery fails cleanly.
    let r = Option::<Scalar>::from(Scalar::from_repr(r_bytes)).ok_or(failed.clone())?;
    let s =
        Option::<Scalar>::from(Scalar::from_repr(signature.s().0.into())).ok_or(failed.clone())?;
    // v 27/28 only ever name an x coordinate below n (x = r itself, never r + n).
    let nonce_point = Option::<AffinePoint>::from(AffinePoint::decompress(
        &r_bytes,
        Choice::from(u8::from(signature.y_odd())),
    ))
    .ok_or(failed.clone())?;
    let r_inv = Option::<Scalar>::from(r.invert_vartime()).ok_or(failed.clone())?;
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest.0.into());
    let u1 = -(z * r_inv);
    let u2 = s * r_inv;
    let mut key = ProjectivePoint::from(nonce_point).mul_vartime(&u2);
    comb::generator_table().mul_add(&u1, &mut key);
    if key == ProjectivePoint::IDENTITY {
        return Err(failed);
    }
    VerifyingKey::from_affine(key.to_affine()).map_err(|_| failed)
}

/// Recovers the address that produced `signature` over `digest` (Ethereum `ecrecover`).
///
/// # Errors
/// [`VoucherError::RecoveryFailed`] when no key can be recovered.
pub fn recover_address(
    digest: &B256,
    signature: &VoucherSignature,
) -> Result<Address, VoucherError> {
    recover_key(digest, signature).map(|key| address_of(&key))
}

/// The full voucher check on the recovery path: the voucher's digest under `domain`, then
/// recovery of the signer, then comparison with `expected`.
///
/// `expected` must come from channel state the caller trusts (see
/// [`expected_signer`](crate::expected_signer)). The signature's format, range and low-s checks
/// already ran when the [`VoucherSignature`] was parsed.
///
/// # Errors
/// [`VoucherError::RecoveryFailed`] or [`VoucherError::SignerMismatch`].
pub fn verify(
    domain: &VoucherDomain,
    signed: &SignedVoucher,
    expected: Address,
) -> Result<(), VoucherError> {
    let digest = domain.digest(&signed.voucher);
    let recovered = recover_address(&digest, &signed.signature)?;
    if recovered == expected {
        Ok(())
    } else {
        Err(VoucherError::SignerMismatch {
            expected,
            recovered,
        })
    }
}

/// Builds the shared precomputed generator table now rather than on the first cached-key check
/// (a few milliseconds, once per process). Optional.
pub fn precompute_tables() {
    let _ = comb::generator_table();
}

/// How much memory a [`SignerKey`] spends on its precomputed table, against check speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TableWidth {
    /// 3-bit windows: 344 points (about 30 KB), 86 additions per check.
    Small,
    /// 4-bit windows: 520 points (about 45 KB), 65 additions per check.
    #[default]
    Medium,
    /// 6-bit windows: 1376 points (about 121 KB), 43 additions per check.
    Large,
}

impl TableWidth {
    const fn bits(self) -> u32 {
        match self {
            Self::Small => 3,
            Self::Medium => 4,
            Self::Large => 6,
        }
    }
}

/// A signer's public key, bound to its address, with a precomputed table that makes each
/// check cheaper than recovery.
///
/// The only ways to build one check the binding: [`learn`](Self::learn) recovers the key from a
/// voucher and requires it to match the expected address; [`new`](Self::new) and
/// [`from_sec1_bytes`](Self::from_sec1_bytes) derive the address from the key and require it
/// to match. [`verify`](Self::verify) then accepts exactly the signatures [`verify`](crate::verify)
/// accepts for that address: it checks `u1·G + u2·Q = R` where `R` is the point with x = `r`
/// and the signature's y parity, which holds if and only if recovery with that parity yields
/// `Q`. The cache removes work, not checks.
///
/// A key holds its table on the heap (see [`TableWidth`]); share it (for example in an `Arc`)
/// rather than cloning it, and bound how many you keep.
pub struct SignerKey {
    address: Address,
    key: VerifyingKey,
    table: CombTable,
}

impl SignerKey {
    /// Recovers the signer of `signed`, requires it to be `expected`, and caches its key with
    /// the default table.
    ///
    /// # Errors
    /// As [`verify`](crate::verify).
    pub fn learn(
        domain: &VoucherDomain,
        signed: &SignedVoucher,
        expected: Address,
    ) -> Result<Self, VoucherError> {
        Self::learn_with(domain, signed, expected, TableWidth::default())
    }

    /// [`learn`](Self::learn) with a chosen table size.
    ///
    /// # Errors
    /// As [`verify`](crate::verify).
    pub fn learn_with(
        domain: &VoucherDomain,
        signed: &SignedVoucher,
        expected: Address,
        width: TableWidth,
    ) -> Result<Self, VoucherError> {
        let digest = domain.digest(&signed.voucher);
        let key = recover_key(&digest, &signed.signature)?;
        let recovered = address_of(&key);
        if recovered != expected {
            return Err(VoucherError::SignerMismatch {
                expected,
                recovered,
            });
        }
        Ok(Self::build(expected, key, width))
    }

    /// Caches a known public key for `expected`, requiring the key's address to be `expected`.
    ///
    /// # Errors
    /// [`VoucherError::KeyMismatch`].
    pub fn new(
        expected: Address,
        key: VerifyingKey,
        width: TableWidth,
    ) -> Result<Self, VoucherError> {
        let key_address = address_of(&key);
        if key_address != expected {
            return Err(VoucherError::KeyMismatch {
                expected,
                key_address,
            });
        }
        Ok(Self::build(expected, key, width))
    }

    /// [`new`](Self::new) from a SEC1-encoded public key (33 or 65 bytes), for keys persisted
    /// with [`to_sec1_bytes`](Self::to_sec1_bytes) so a restart need not recover them again.
    ///
    /// # Errors
    /// [`VoucherError::InvalidPublicKey`] or [`VoucherError::KeyMismatch`].
    pub fn from_sec1_bytes(
        expected: Address,
        bytes: &[u8],
        width: TableWidth,
    ) -> Result<Self, VoucherError> {
        let key = VerifyingKey::from_sec1_bytes(bytes)
            .map_err(|_| VoucherError::InvalidPublicKey { len: bytes.len() })?;
        Self::new(expected, key, width)
    }

    fn build(address: Address, key: VerifyingKey, width: TableWidth) -> Self {
        let table = CombTable::new(ProjectivePoint::from(*key.as_affine()), width.bits());
        Self {
            address,
            key,
            table,
        }
    }

    /// The signer's address.
    #[must_use]
    pub const fn address(&self) -> Address {
        self.address
    }

    /// The signer's public key.
    #[must_use]
    pub const fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The 33-byte compressed SEC1 encoding of the key, for persisting it.
    #[must_use]
    pub fn to_sec1_bytes(&self) -> [u8; 33] {
        let point = self.key.as_affine();
        let mut out = [0u8; 33];
        out[0] = 2 + u8::from(bool::from(point.y_is_odd()));
        out[1..].copy_from_slice(&point.x());
        out
    }

    /// Heap bytes held by the precomputed table.
    #[must_use]
    pub fn table_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// The full voucher check against the cached key: the voucher's digest under `domain`,
    /// then the signature check. Accepts exactly what [`verify`](crate::verify) accepts for
    /// [`address`](Self::address).
    ///
    /// # Errors
    /// [`VoucherError::NotSignedByKey`].
    pub fn verify(
        &self,
        domain: &VoucherDomain,
        signed: &SignedVoucher,
    ) -> Result<(), VoucherError> {
        self.verify_digest(&domain.digest(&signed.voucher), &signed.signature)
    }

    /// The signature check of [`verify`](Self::verify) for an already computed digest.
    ///
    /// # Errors
    /// [`VoucherError::NotSignedByKey`].
    pub fn verify_digest(
        &self,
        digest: &B256,
        signature: &VoucherSignature,
    ) -> Result<(), VoucherError> {
        let rejected = VoucherError::NotSignedByKey {
            expected: self.address,
        };
        // Parsing guarantees 0 < r, s < n, so both conversions succeed and s is invertible;
        // should that ever not hold, the signature is rejected rather than trusted.
        let r = Option::<Scalar>::from(Scalar::from_repr(signature.r().0.into()))
            .ok_or(rejected.clone())?;
        let s = Option::<Scalar>::from(Scalar::from_repr(signature.s().0.into()))
            .ok_or(rejected.clone())?;
        let s_inv = Option::<Scalar>::from(s.invert_vartime()).ok_or(rejected.clone())?;
        let z = <Scalar as Reduce<FieldBytes>>::reduce(&digest.0.into());
        let u1 = z * s_inv;
        let u2 = r * s_inv;
        if comb::check_lincomb(&self.table, &u1, &u2, &signature.r().0, signature.y_odd()) {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}

impl core::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SignerKey")
            .field("address", &self.address)
            .field("table_bytes", &self.table_bytes())
            .finish_non_exhaustive()
    }
}

/// A channel's expected signer, and its key once a voucher has proven it.
///
/// The first successful check recovers the key (the slow path) and caches it; later checks
/// use the cached key. A failed check caches nothing.
#[derive(Debug)]
pub struct KnownSigner {
    expected: Address,
    width: TableWidth,
    key: Option<SignerKey>,
}

impl KnownSigner {
    /// A signer not yet proven by any voucher.
    #[must_use]
    pub const fn new(expected: Address) -> Self {
        Self {
            expected,
            width: TableWidth::Medium,
            key: None,
        }
    }

    /// [`new`](Self::new) with a chosen table size for the cached key.
    #[must_use]
    pub const fn with_table_width(expected: Address, width: TableWidth) -> Self {
        Self {
            expected,
            width,
            key: None,
        }
    }

    /// The expected signer's address.
    #[must_use]
    pub const fn expected(&self) -> Address {
        self.expected
    }

    /// The cached key, once learned.
    #[must_use]
    pub const fn key(&self) -> Option<&SignerKey> {
        self.key.as_ref()
    }

    /// Checks `signed` under `domain`: against the cached key when there is one, otherwise by
    /// recovery, caching the key on success.
    ///
    /// # Errors
    /// As [`verify`](crate::verify) before the key is learned, as [`SignerKey::verify`] after.
    pub fn verify(
        &mut self,
        domain: &VoucherDomain,
        signed: &SignedVoucher,
    ) -> Result<(), VoucherError> {
        match &self.key {
            Some(key) => key.verify(domain, signed),
            None => {
                self.key = Some(SignerKey::learn_with(
                    domain,
                    signed,
                    self.expected,
                    self.width,
                )?);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_slice(&[byte; 32]).expect("valid secret")
    }

    #[test]
    fn signer_keys_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SignerKey>();
        shareable::<KnownSigner>();
    }

    #[test]
    fn a_key_is_only_cached_for_its_own_address() {
        let (mine, other) = (key(1), key(2));
        let address = address_of(mine.verifying_key());
        let other_address = address_of(other.verifying_key());
        assert!(SignerKey::new(address, *mine.verifying_key(), TableWidth::Small).is_ok());
        assert_eq!(
            SignerKey::new(address, *other.verifying_key(), TableWidth::Small).err(),
            Some(VoucherError::KeyMismatch {
                expected: address,
                key_address: other_address
            })
        );
        let sec1 = SignerKey::new(other_address, *other.verifying_key(), TableWidth::Small)
            .expect("own key")
            .to_sec1_bytes();
        assert_eq!(
            SignerKey::from_sec1_bytes(address, &sec1, TableWidth::Small).err(),
            Some(VoucherError::KeyMismatch {
                expected: address,
                key_address: other_address
            })
        );
    }

    #[test]
    fn malformed_public_keys_are_typed_errors() {
        let address = Address::repeat_byte(1);
        // x = 0 is on no point of secp256k1; x = 2^256 - 1 is not below p; bad prefixes, lengths.
        let mut no_point = [0u8; 33];
        no_point[0] = 2;
        let mut too_big = [0xffu8; 33];
        too_big[0] = 3;
        let mut uncompressed = [4u8; 65];
        uncompressed[1..33].copy_from_slice(&[0u8; 32]);
        let cases = [
            &[][..],
            &no_point,
            &too_big,
            &uncompressed,
            &[5u8; 33],
            &[7u8; 20],
        ];
        for bytes in cases {
            assert_eq!(
                SignerKey::from_sec1_bytes(address, bytes, TableWidth::Small).err(),
                Some(VoucherError::InvalidPublicKey { len: bytes.len() }),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn table_sizes_follow_the_width() {
        let k = key(3);
        let address = address_of(k.verifying_key());
        let bytes = [TableWidth::Small, TableWidth::Medium, TableWidth::Large].map(|w| {
            SignerKey::new(address, *k.verifying_key(), w)
                .expect("own key")
                .table_bytes()
        });
        let point = size_of::<k256::AffinePoint>();
        assert_eq!(bytes, [344 * point, 520 * point, 1376 * point]);
    }
}
