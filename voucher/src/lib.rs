#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod acceptance;
mod channel;
mod comb;
mod domain;
mod error;
mod sign;
mod signature;
mod verify;

pub use acceptance::{AcceptancePolicy, ChannelView, Decision, RejectReason, decide};
pub use channel::{
    Amount, CHANNEL_ID_V1_PREIMAGE_LEN, ChannelId, ChannelParams, channel_id_v1, expected_signer,
};
pub use domain::{
    EIP712_DOMAIN_TYPE, EIP712_DOMAIN_TYPEHASH, SignedVoucher, TEMPO_V1_DOMAIN_NAME,
    TEMPO_V1_DOMAIN_VERSION, VOUCHER_TYPE_V1, VOUCHER_TYPEHASH_V1, Voucher, VoucherDomain,
};
pub use error::{SignatureScalar, VoucherError};
pub use sign::{sign_digest, sign_voucher};
pub use signature::VoucherSignature;
pub use verify::{
    KnownSigner, SignerKey, TableWidth, address_of, precompute_tables, recover_address,
    recover_key, verify,
};

/// The k256 version this crate's key types come from (0.14), for callers that build keys.
pub use k256;
/// Key types used by the signing and cached-key APIs.
pub use k256::ecdsa::{SigningKey, VerifyingKey};
