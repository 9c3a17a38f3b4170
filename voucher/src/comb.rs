//! Fixed-base scalar multiplication with precomputed tables (signed-digit comb).
//!
//! For a base point `B` and window width `w`, the table holds `j · 2^(w·i) · B` for every
//! window `i` and every digit magnitude `j` in `1..=2^(w-1)`, in affine form. A scalar is
//! recoded into signed base-`2^w` digits `d_i` in `[-2^(w-1), 2^(w-1)]`, and `k · B` is the
//! sum of one table entry (or its negation) per non-zero digit: no doublings at all, about
//! `257 / w` mixed additions. The price is memory, which is why the generator table is shared
//! and a per-signer table is only built for keys the caller chooses to cache.
//!
//! Only public data (the signer's public key, signature scalars) ever goes through these
//! tables, so variable-time lookups are fine.

use k256::{
    AffinePoint, ProjectivePoint, Scalar,
    elliptic_curve::{BatchNormalize, point::AffineCoordinates as _},
};
use std::sync::OnceLock;

/// Window width of the shared generator table: 33 windows × 128 points ≈ 370 KB, built once.
const GENERATOR_WIDTH: u32 = 8;

/// A precomputed multiplication table for one base point.
pub(crate) struct CombTable {
    width: u32,
    windows: usize,
    points: Box<[AffinePoint]>,
}

impl CombTable {
    /// Builds the table for `base` with `width`-bit windows (`2..=8`).
    pub(crate) fn new(base: ProjectivePoint, width: u32) -> Self {
        debug_assert!((2..=8).contains(&width));
        // 257 bits: a 256-bit scalar plus the carry out of the top signed digit.
        let windows = 257usize.div_ceil(width as usize);
        let per_window = 1usize << (width - 1);
        let mut projective = Vec::with_capacity(windows * per_window);
        let mut window_base = base;
        for _ in 0..windows {
            let mut multiple = window_base;
            for _ in 0..per_window {
                projective.push(multiple);
                multiple += window_base;
            }
            for _ in 0..width {
                window_base = window_base.double();
            }
        }
        let points =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(&projective);
        Self {
            width,
            windows,
            points: points.into_boxed_slice(),
        }
    }

    /// Adds `k · base` to `acc`.
    pub(crate) fn mul_add(&self, k: &Scalar, acc: &mut ProjectivePoint) {
        let be = k.to_bytes();
        // Little-endian 64-bit limbs, plus one zero limb so the top window can read past 256.
        let mut limbs = [0u64; 5];
        for (i, limb) in limbs.iter_mut().take(4).enumerate() {
            let start = 32 - 8 * (i + 1);
            let mut word = [0u8; 8];
            word.copy_from_slice(&be[start..start + 8]);
            *limb = u64::from_be_bytes(word);
        }
        let width = self.width as usize;
        let mask = (1u64 << width) - 1;
        let half = 1i64 << (width - 1);
        let per_window = 1usize << (width - 1);
        let mut carry = 0i64;
        for window in 0..self.windows {
            let bit = window * width;
            let (limb, offset) = (bit / 64, bit % 64);
            let mut chunk = limbs[limb] >> offset;
            if offset + width > 64 && limb + 1 < limbs.len() {
                chunk |= limbs[limb + 1] << (64 - offset);
            }
            // Signed recoding: a digit at or above half borrows from the next window.
            let mut digit = (chunk & mask) as i64 + carry;
            carry = i64::from(digit >= half);
            digit -= carry << width;
            if digit != 0 {
                let index = window * per_window + (digit.unsigned_abs() as usize - 1);
                let point = &self.points[index];
                if digit > 0 {
                    *acc += point;
                } else {
                    *acc += &-*point;
                }
            }
        }
    }

    /// Bytes held by the table's points.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.points.len() * size_of::<AffinePoint>()
    }
}

/// The shared table for the secp256k1 generator, built on first use.
pub(crate) fn generator_table() -> &'static CombTable {
    static TABLE: OnceLock<CombTable> = OnceLock::new();
    TABLE.get_or_init(|| CombTable::new(ProjectivePoint::GENERATOR, GENERATOR_WIDTH))
}

/// Checks that `u1·G + u2·Q` has affine x equal to `r_bytes` and y parity `y_odd`.
pub(crate) fn check_lincomb(
    key_table: &CombTable,
    u1: &Scalar,
    u2: &Scalar,
    r_bytes: &[u8; 32],
    y_odd: bool,
) -> bool {
    let mut acc = ProjectivePoint::IDENTITY;
    generator_table().mul_add(u1, &mut acc);
    key_table.mul_add(u2, &mut acc);
    if acc == ProjectivePoint::IDENTITY {
        return false;
    }
    let point = acc.to_affine();
    point.x().as_slice() == r_bytes && bool::from(point.y_is_odd()) == y_odd
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::PrimeField as _;
    use proptest::prelude::*;

    fn scalar(bytes: [u8; 32]) -> Option<Scalar> {
        Option::from(Scalar::from_repr(bytes.into()))
    }

    #[test]
    fn edge_scalars_match_plain_multiplication() {
        let base = ProjectivePoint::GENERATOR * Scalar::from(7u64);
        let minus_one = -Scalar::ONE;
        let edges = [
            Scalar::ZERO,
            Scalar::ONE,
            Scalar::from(2u64),
            minus_one,
            minus_one - Scalar::ONE,
        ];
        for width in 2..=8 {
            let table = CombTable::new(base, width);
            for k in &edges {
                let mut acc = ProjectivePoint::IDENTITY;
                table.mul_add(k, &mut acc);
                assert_eq!(acc, base * k, "width {width}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn comb_matches_plain_multiplication(k in any::<[u8; 32]>(), b in any::<[u8; 32]>(), width in 2u32..=8) {
            let (Some(k), Some(b)) = (scalar(k), scalar(b)) else { return Ok(()) };
            let base = ProjectivePoint::GENERATOR * b;
            prop_assume!(base != ProjectivePoint::IDENTITY);
            let table = CombTable::new(base, width);
            let mut acc = ProjectivePoint::IDENTITY;
            table.mul_add(&k, &mut acc);
            prop_assert_eq!(acc, base * k);
            let mut acc = ProjectivePoint::IDENTITY;
            generator_table().mul_add(&k, &mut acc);
            prop_assert_eq!(acc, ProjectivePoint::GENERATOR * k);
        }
    }
}
