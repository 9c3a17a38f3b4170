//! Shared test support: an in-process EVM (revm) running the committed artifacts, voucher
//! signing, and an EIP-712 digest computed independently of the escrow.

#![allow(dead_code)]

pub(crate) mod evm;

use alloy::{
    primitives::{Address, B256, U256, keccak256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{SolStruct, SolValue, eip712_domain},
};

/// Anvil's well-known test keys #0..#5 (the mppx vectors use #0..#2).
pub(crate) const ANVIL_KEYS: [&str; 6] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
];

/// The signer for anvil key `i`.
pub(crate) fn anvil_signer(i: usize) -> PrivateKeySigner {
    ANVIL_KEYS[i].parse().expect("anvil key parses")
}

/// secp256k1 group order n.
pub(crate) fn secp256k1_n() -> U256 {
    U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .expect("constant parses")
}

alloy::sol! {
    /// The v1 voucher, for alloy's own EIP-712 hashing (independent of the escrow's).
    struct Voucher {
        bytes32 channelId;
        uint128 cumulativeAmount;
    }
}

/// The EIP-712 voucher digest computed by alloy from the domain parameters, without the escrow.
///
/// Computed twice, independently: by alloy's EIP-712 implementation and by the `sluice-voucher`
/// crate (the digest the engine checks vouchers against); the two must agree, and every test
/// that checks the escrow's `getVoucherDigest` goes through this function.
pub(crate) fn reference_digest(
    name: &str,
    version: &str,
    chain_id: u64,
    escrow: Address,
    channel_id: B256,
    cumulative_amount: u128,
) -> B256 {
    let domain = eip712_domain! {
        name: name.to_owned(),
        version: version.to_owned(),
        chain_id: chain_id,
        verifying_contract: escrow,
    };
    let digest = Voucher {
        channelId: channel_id,
        cumulativeAmount: cumulative_amount,
    }
    .eip712_signing_hash(&domain);
    let ours = sluice_voucher::VoucherDomain::new(name, version, chain_id, escrow).digest(
        &sluice_voucher::Voucher {
            channel_id: channel_id.into(),
            cumulative_amount,
        },
    );
    assert_eq!(
        digest, ours,
        "sluice-voucher's digest differs from alloy's EIP-712 digest"
    );
    digest
}

/// The v1 channel id formula, computed here without the escrow.
///
/// Also checked against `sluice-voucher`'s derivation, which the engine uses.
pub(crate) fn reference_channel_id(
    payer: Address,
    payee: Address,
    token: Address,
    salt: B256,
    authorized_signer: Address,
    escrow: Address,
    chain_id: u64,
) -> B256 {
    let id = keccak256(
        (
            payer,
            payee,
            token,
            salt,
            authorized_signer,
            escrow,
            U256::from(chain_id),
        )
            .abi_encode(),
    );
    let ours = sluice_voucher::channel_id_v1(
        payer,
        payee,
        token,
        salt,
        authorized_signer,
        escrow,
        chain_id,
    );
    assert_eq!(id, B256::from(ours), "sluice-voucher's channel id differs");
    id
}

/// A 65-byte r ‖ s ‖ v signature (v = 27 + yParity), as mppx sends it.
pub(crate) fn sign65(signer: &PrivateKeySigner, digest: B256) -> Vec<u8> {
    let sig = signer.sign_hash_sync(&digest).expect("signing succeeds");
    let mut out = sig.r().to_be_bytes::<32>().to_vec();
    out.extend_from_slice(&sig.s().to_be_bytes::<32>());
    out.push(27 + u8::from(sig.v()));
    out
}

/// The malleated twin of a 65-byte signature: (r, n − s, v flipped). Recovers the same key.
pub(crate) fn malleate(sig65: &[u8]) -> Vec<u8> {
    let s = U256::from_be_slice(&sig65[32..64]);
    let mut out = sig65[..32].to_vec();
    out.extend_from_slice(&(secp256k1_n() - s).to_be_bytes::<32>());
    out.push(if sig65[64] == 27 { 28 } else { 27 });
    out
}

/// Reads a vector file from the committed copy at `<repo>/testdata/mppx-0.11.0/`.
pub(crate) fn vector_file(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/mppx-0.11.0")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}
