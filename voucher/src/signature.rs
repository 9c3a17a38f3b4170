//! Voucher signature bytes: strict parsing of `r‖s‖v` and EIP-2098 compact forms.

use crate::{SignatureScalar, VoucherError};
use alloy_primitives::{B256, b256, hex};
use core::{fmt, str::FromStr};

/// The secp256k1 group order `n`, big-endian.
const ORDER: B256 = b256!("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");

/// `floor(n / 2)`: the largest `s` a canonical (low-s) signature may carry.
const HALF_ORDER: B256 = b256!("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");

/// A well-formed, canonical secp256k1 signature over a voucher digest.
///
/// Holding one proves the bytes passed every format check: `r` and `s` are in `[1, n)`, `s` is
/// at most `n/2` (low-s), and the y parity of the nonce point is known. It does not prove who
/// signed: that is [`verify`](crate::verify)'s job.
///
/// Accepted encodings ([`from_bytes`](Self::from_bytes)):
/// - 65 bytes `r‖s‖v` with `v` 27 or 28 (what mppx and viem send);
/// - 64 bytes EIP-2098 compact `r‖(yParity << 255 | s)`.
///
/// Rejected, each with its own [`VoucherError`]: any other length, `v` other than 27/28
/// (including 0/1, as mppx does), zero or out-of-range `r`/`s`, and high `s`. A high-s
/// signature is never normalised: it is the malleable twin of a valid one, and accepting it
/// would give one voucher two valid byte strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoucherSignature {
    r: B256,
    s: B256,
    y_odd: bool,
}

impl VoucherSignature {
    /// Parses a 65-byte `r‖s‖v` or a 64-byte EIP-2098 compact signature.
    ///
    /// # Errors
    /// [`VoucherError::InvalidLength`], [`VoucherError::InvalidRecoveryId`],
    /// [`VoucherError::ScalarZero`], [`VoucherError::ScalarOutOfRange`] or
    /// [`VoucherError::HighS`]; never panics, whatever the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VoucherError> {
        match bytes.len() {
            65 => {
                let y_odd = match bytes[64] {
                    27 => false,
                    28 => true,
                    v => return Err(VoucherError::InvalidRecoveryId { v }),
                };
                Self::from_rsv(
                    B256::from_slice(&bytes[..32]),
                    B256::from_slice(&bytes[32..64]),
                    y_odd,
                )
            }
            64 => {
                // EIP-2098: the top bit of the second word is the y parity; s is the other 255.
                let y_odd = bytes[32] & 0x80 != 0;
                let mut s = B256::from_slice(&bytes[32..64]);
                s.0[0] &= 0x7f;
                Self::from_rsv(B256::from_slice(&bytes[..32]), s, y_odd)
            }
            len => Err(VoucherError::InvalidLength { len }),
        }
    }

    /// Builds a signature from its parts, with the same checks as
    /// [`from_bytes`](Self::from_bytes).
    ///
    /// # Errors
    /// [`VoucherError::ScalarZero`], [`VoucherError::ScalarOutOfRange`] or
    /// [`VoucherError::HighS`].
    pub fn from_rsv(r: B256, s: B256, y_odd: bool) -> Result<Self, VoucherError> {
        check_scalar(&r, SignatureScalar::R)?;
        check_scalar(&s, SignatureScalar::S)?;
        if s > HALF_ORDER {
            return Err(VoucherError::HighS);
        }
        Ok(Self { r, s, y_odd })
    }

    /// Parses hex text (optional `0x`, either case) holding 65 or 64 signature bytes.
    ///
    /// # Errors
    /// [`VoucherError::BadHex`] for text that is not hex, then the errors of
    /// [`from_bytes`](Self::from_bytes).
    pub fn from_hex(text: &str) -> Result<Self, VoucherError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        let bad_hex = |source| VoucherError::BadHex {
            what: "signature",
            source,
        };
        let mut buf = [0u8; 65];
        match digits.len() {
            130 => hex::decode_to_slice(digits, &mut buf).map_err(bad_hex)?,
            128 => hex::decode_to_slice(digits, &mut buf[..64]).map_err(bad_hex)?,
            _ => {
                // Report bad text as bad text, and only well-formed hex as a length error.
                let bytes = hex::decode(digits).map_err(bad_hex)?;
                return Err(VoucherError::InvalidLength { len: bytes.len() });
            }
        }
        Self::from_bytes(&buf[..digits.len() / 2])
    }

    /// `r`, big-endian.
    #[must_use]
    pub const fn r(&self) -> &B256 {
        &self.r
    }

    /// `s`, big-endian (always at most `n/2`).
    #[must_use]
    pub const fn s(&self) -> &B256 {
        &self.s
    }

    /// Whether the y coordinate of the signer's nonce point is odd (`v == 28`).
    #[must_use]
    pub const fn y_odd(&self) -> bool {
        self.y_odd
    }

    /// The 65-byte `r‖s‖v` form with `v` 27 or 28, as mppx sends it and the escrow takes it.
    #[must_use]
    pub fn to_bytes65(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(self.r.as_slice());
        out[32..64].copy_from_slice(self.s.as_slice());
        out[64] = 27 + u8::from(self.y_odd);
        out
    }

    /// The 64-byte EIP-2098 compact form.
    #[must_use]
    pub fn to_compact64(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.r.as_slice());
        out[32..64].copy_from_slice(self.s.as_slice());
        // s <= n/2 < 2^255, so its top bit is free for the parity.
        out[32] |= u8::from(self.y_odd) << 7;
        out
    }

    /// Builds a signature that is known to be canonical, from a signer this crate controls.
    pub(crate) const fn from_canonical_parts(r: B256, s: B256, y_odd: bool) -> Self {
        Self { r, s, y_odd }
    }
}

fn check_scalar(value: &B256, which: SignatureScalar) -> Result<(), VoucherError> {
    if value.is_zero() {
        Err(VoucherError::ScalarZero { which })
    } else if *value >= ORDER {
        Err(VoucherError::ScalarOutOfRange { which })
    } else {
        Ok(())
    }
}

impl FromStr for VoucherSignature {
    type Err = VoucherError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text)
    }
}

/// Lower-case `0x` hex of the 65-byte `r‖s‖v` form, as mppx writes it.
impl fmt::Display for VoucherSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        f.write_str(&hex::encode(self.to_bytes65()))
    }
}

impl fmt::Debug for VoucherSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoucherSignature({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(byte: u8) -> B256 {
        B256::repeat_byte(byte)
    }

    fn rsv(r: B256, s: B256, v: u8) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(r.as_slice());
        out[32..64].copy_from_slice(s.as_slice());
        out[64] = v;
        out
    }

    #[test]
    fn order_constants_are_consistent() {
        // n = 2 * floor(n/2) + 1 (n is odd): check via u128 halves of the big-endian words.
        let n = alloy_primitives::U256::from_be_bytes(ORDER.0);
        let half = alloy_primitives::U256::from_be_bytes(HALF_ORDER.0);
        assert_eq!(
            half * alloy_primitives::U256::from(2u8) + alloy_primitives::U256::from(1u8),
            n
        );
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        let ok_r = word(0x11);
        let ok_s = word(0x22);
        assert!(VoucherSignature::from_bytes(&rsv(ok_r, ok_s, 27)).is_ok());
        assert!(VoucherSignature::from_bytes(&rsv(ok_r, ok_s, 28)).is_ok());
        for v in [0u8, 1, 2, 26, 29, 35, 36, 255] {
            assert_eq!(
                VoucherSignature::from_bytes(&rsv(ok_r, ok_s, v)),
                Err(VoucherError::InvalidRecoveryId { v })
            );
        }
        for len in [0usize, 1, 63, 66, 130] {
            assert_eq!(
                VoucherSignature::from_bytes(&vec![1u8; len]),
                Err(VoucherError::InvalidLength { len })
            );
        }
        use SignatureScalar::{R, S};
        let cases = [
            (B256::ZERO, ok_s, VoucherError::ScalarZero { which: R }),
            (ok_r, B256::ZERO, VoucherError::ScalarZero { which: S }),
            (ORDER, ok_s, VoucherError::ScalarOutOfRange { which: R }),
            (
                word(0xff),
                ok_s,
                VoucherError::ScalarOutOfRange { which: R },
            ),
            (ok_r, ORDER, VoucherError::ScalarOutOfRange { which: S }),
        ];
        for (r, s, err) in cases {
            assert_eq!(
                VoucherSignature::from_bytes(&rsv(r, s, 27)),
                Err(err.clone())
            );
        }
        // s = n/2 is the largest low s; n/2 + 1 is high.
        assert!(VoucherSignature::from_bytes(&rsv(ok_r, HALF_ORDER, 27)).is_ok());
        let mut just_high = HALF_ORDER;
        just_high.0[31] += 1;
        assert_eq!(
            VoucherSignature::from_bytes(&rsv(ok_r, just_high, 27)),
            Err(VoucherError::HighS)
        );
    }

    #[test]
    fn compact_and_rsv_forms_agree() {
        for y_odd in [false, true] {
            let sig = VoucherSignature::from_rsv(word(0x33), word(0x44), y_odd).expect("canonical");
            assert_eq!(VoucherSignature::from_bytes(&sig.to_bytes65()), Ok(sig));
            assert_eq!(VoucherSignature::from_bytes(&sig.to_compact64()), Ok(sig));
            assert_eq!(sig.to_string().parse::<VoucherSignature>(), Ok(sig));
        }
    }

    #[test]
    fn compact_form_cannot_smuggle_a_high_s() {
        // s with bit 255 clear but above n/2: high-s in compact form too.
        let mut compact = [0u8; 64];
        compact[..32].copy_from_slice(word(0x11).as_slice());
        compact[32..].copy_from_slice(word(0xff).as_slice());
        compact[32] = 0x7f;
        assert_eq!(
            VoucherSignature::from_bytes(&compact),
            Err(VoucherError::HighS)
        );
    }

    #[test]
    fn hex_errors_are_typed() {
        assert!(matches!(
            VoucherSignature::from_hex("0xzz"),
            Err(VoucherError::BadHex {
                what: "signature",
                ..
            })
        ));
        assert!(matches!(
            VoucherSignature::from_hex("0x123"),
            Err(VoucherError::BadHex {
                what: "signature",
                ..
            })
        ));
        assert_eq!(
            VoucherSignature::from_hex("0x"),
            Err(VoucherError::InvalidLength { len: 0 })
        );
        assert_eq!(
            VoucherSignature::from_hex(&"ab".repeat(66)),
            Err(VoucherError::InvalidLength { len: 66 })
        );
        let text = format!("0x{}", "g".repeat(130));
        assert!(matches!(
            VoucherSignature::from_hex(&text),
            Err(VoucherError::BadHex { .. })
        ));
    }
}
