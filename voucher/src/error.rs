//! The crate's one error type.

use alloy_primitives::{Address, hex::FromHexError};
use core::fmt;

/// Which of the two ECDSA signature scalars a check refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureScalar {
    /// `r`: the x coordinate of the signer's nonce point, reduced modulo the curve order.
    R,
    /// `s`: the proof scalar.
    S,
}

impl fmt::Display for SignatureScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::R => "r",
            Self::S => "s",
        })
    }
}

/// Everything that can go wrong while parsing or checking a voucher.
///
/// Each variant names the values that caused it, so a caller can map it to a wire error (the
/// HTTP edge maps these to RFC 9457 problems) without parsing strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VoucherError {
    /// The signature is neither 65 bytes (`r‖s‖v`) nor 64 bytes (EIP-2098 compact).
    #[error("signature is {len} bytes; expected 65 (r||s||v) or 64 (EIP-2098 compact)")]
    InvalidLength {
        /// The length that was given, in bytes.
        len: usize,
    },
    /// The last byte of a 65-byte signature is not 27 or 28.
    #[error("signature recovery byte v = {v}; expected 27 or 28")]
    InvalidRecoveryId {
        /// The `v` byte that was given.
        v: u8,
    },
    /// `r` or `s` is zero.
    #[error("signature scalar {which} is zero")]
    ScalarZero {
        /// The scalar that is zero.
        which: SignatureScalar,
    },
    /// `r` or `s` is not below the secp256k1 group order `n`.
    #[error("signature scalar {which} is not below the secp256k1 group order")]
    ScalarOutOfRange {
        /// The scalar that is out of range.
        which: SignatureScalar,
    },
    /// `s` is above `n/2`: the malleable twin of a valid signature. Rejected, never normalised.
    #[error("signature s is above n/2 (high-s, malleable form)")]
    HighS,
    /// A hex string could not be decoded.
    #[error("invalid hex for {what}: {source}")]
    BadHex {
        /// What was being decoded (for example "signature" or "channel id").
        what: &'static str,
        /// Why decoding failed.
        source: FromHexError,
    },
    /// The signature is well formed but recovers to another address than the expected signer.
    #[error("voucher signed by {recovered}, expected signer {expected}")]
    SignerMismatch {
        /// The signer the channel allows (authorizedSigner if set, else payer).
        expected: Address,
        /// The address the signature recovers to.
        recovered: Address,
    },
    /// No public key can be recovered: `r` is not the x coordinate of a curve point, or the
    /// recovered point is the point at infinity.
    #[error("no public key can be recovered from the signature")]
    RecoveryFailed,
    /// The signature does not verify against the cached key of the expected signer.
    #[error("voucher signature is not valid for signer {expected}")]
    NotSignedByKey {
        /// The signer whose cached key was checked.
        expected: Address,
    },
    /// Bytes given as a public key are not a valid SEC1 secp256k1 point.
    #[error("{len} bytes are not a valid SEC1-encoded secp256k1 public key")]
    InvalidPublicKey {
        /// The length of the bytes that were given.
        len: usize,
    },
    /// A public key offered for caching belongs to another address than the expected signer.
    #[error("public key belongs to {key_address}, expected signer {expected}")]
    KeyMismatch {
        /// The signer the channel allows.
        expected: Address,
        /// The address derived from the offered key.
        key_address: Address,
    },
}
