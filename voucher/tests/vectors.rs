//! The mppx 0.11.0 vectors: EIP-712 voucher digests and signatures, and channel ids.

use alloy_primitives::{Address, B256, hex, keccak256};
use serde_json::Value;
use sluice_voucher::{
    ChannelId, ChannelParams, KnownSigner, SignedVoucher, SignerKey, SigningKey, TableWidth,
    VOUCHER_TYPE_V1, VOUCHER_TYPEHASH_V1, Voucher, VoucherDomain, VoucherError, VoucherSignature,
    address_of, recover_address, sign_voucher, verify,
};

fn load(name: &str) -> Value {
    let path = format!(
        "{}/../testdata/mppx-0.11.0/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value}"))
}

fn b256(value: &Value, key: &str) -> B256 {
    text(value, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn address(value: &Value, key: &str) -> Address {
    text(value, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn domain_of(vector: &Value) -> VoucherDomain {
    let d = &vector["domain"];
    VoucherDomain::new(
        text(d, "name"),
        text(d, "version"),
        d["chainId"].as_u64().expect("chainId"),
        address(d, "verifyingContract"),
    )
}

fn voucher_of(vector: &Value) -> Voucher {
    let m = &vector["message"];
    Voucher::new(
        text(m, "channelId").parse().expect("channelId"),
        text(m, "cumulativeAmount")
            .parse()
            .expect("cumulativeAmount"),
    )
}

fn signing_key(vector: &Value) -> SigningKey {
    let bytes = hex::decode(text(vector, "signerPrivateKey")).expect("key hex");
    SigningKey::from_slice(&bytes).expect("key")
}

fn vouchers() -> Vec<Value> {
    let file = load("eip712-vouchers.json");
    let vectors = file["vectors"].as_array().expect("vectors").clone();
    assert_eq!(vectors.len(), 6, "the file documents six vouchers");
    vectors
}

#[test]
fn domain_separators_match_for_every_vector() {
    // The domain is generic in its name, so v1 ("Tempo Stream Channel") and v2
    // ("TIP20 Channel Reserve") separators are both ours to reproduce.
    for vector in vouchers() {
        let label = text(&vector, "label");
        assert_eq!(
            text(&vector, "eip712DomainType"),
            sluice_voucher::EIP712_DOMAIN_TYPE,
            "{label}"
        );
        assert_eq!(
            domain_of(&vector).separator(),
            b256(&vector, "domainSeparator"),
            "{label}"
        );
    }
}

#[test]
fn v1_struct_hashes_and_digests_match() {
    let mut v1 = 0;
    for vector in vouchers().iter().filter(|v| v["version"] == "v1") {
        let label = text(vector, "label");
        assert_eq!(text(vector, "voucherType"), VOUCHER_TYPE_V1, "{label}");
        assert_eq!(
            b256(vector, "voucherTypehash"),
            VOUCHER_TYPEHASH_V1,
            "{label}"
        );
        let domain = domain_of(vector);
        let voucher = voucher_of(vector);
        assert_eq!(
            domain.struct_hash(&voucher),
            b256(vector, "structHash"),
            "{label}"
        );
        assert_eq!(domain.digest(&voucher), b256(vector, "digest"), "{label}");
        v1 += 1;
    }
    assert_eq!(v1, 4);
}

#[test]
fn v2_digests_match_given_their_struct_hash() {
    // v2 vouchers are `Voucher(bytes32 channelId,uint96 cumulativeAmount)` for the Tempo-only
    // precompile. This crate implements the v1 voucher type only, so it does not produce v2
    // struct hashes; it does own the domain half of the digest, which is checked here, and
    // the signatures (checked in `signatures_are_mppx_bytes_and_recover_to_the_signer`).
    let mut v2 = 0;
    for vector in vouchers().iter().filter(|v| v["version"] == "v2") {
        let label = text(vector, "label");
        let typehash = keccak256(text(vector, "voucherType"));
        assert_eq!(typehash, b256(vector, "voucherTypehash"), "{label}");
        assert_ne!(typehash, VOUCHER_TYPEHASH_V1, "{label}");
        let domain = domain_of(vector);
        assert_eq!(
            domain.digest_from_struct_hash(&b256(vector, "structHash")),
            b256(vector, "digest"),
            "{label}"
        );
        v2 += 1;
    }
    assert_eq!(v2, 2);
}

#[test]
fn signatures_are_mppx_bytes_and_recover_to_the_signer() {
    for vector in vouchers() {
        let label = text(&vector, "label");
        let digest = b256(&vector, "digest");
        let signer = address(&vector, "signerAddress");
        let key = signing_key(&vector);
        assert_eq!(address_of(key.verifying_key()), signer, "{label}");
        assert_eq!(address(&vector, "expectedSigner"), signer, "{label}");

        let parsed: VoucherSignature = text(&vector, "signature").parse().expect("signature");
        assert_eq!(*parsed.r(), b256(&vector, "signatureR"), "{label}");
        assert_eq!(*parsed.s(), b256(&vector, "signatureS"), "{label}");
        assert_eq!(
            u64::from(parsed.y_odd()),
            vector["yParity"].as_u64().expect("yParity")
        );
        assert_eq!(parsed.to_string(), text(&vector, "signature"), "{label}");
        assert_eq!(recover_address(&digest, &parsed), Ok(signer), "{label}");
        // Our signer is deterministic (RFC 6979) and produces mppx's exact bytes.
        assert_eq!(
            sluice_voucher::sign_digest(&digest, &key),
            parsed,
            "{label}"
        );

        if vector["version"] == "v1" {
            let domain = domain_of(&vector);
            let signed = sign_voucher(&domain, &voucher_of(&vector), &key);
            assert_eq!(signed.signature, parsed, "{label}");
            assert_eq!(verify(&domain, &signed, signer), Ok(()), "{label}");
            let payee = address(&load("eip712-vouchers.json")["keys"]["payee"], "address");
            assert_eq!(
                verify(&domain, &signed, payee),
                Err(VoucherError::SignerMismatch {
                    expected: payee,
                    recovered: signer
                }),
                "{label}"
            );
        }
    }
}

/// Our answer for one of mppx's byte encodings, and whether it deliberately differs.
fn expected_acceptance(variant: &str, mppx_accepts: bool, y_odd: bool) -> Result<(), VoucherError> {
    match variant {
        "rsv_v27_28 (as emitted)" | "uppercase_hex" => {
            assert!(mppx_accepts);
            Ok(())
        }
        "rsv_v0_1" => {
            // Same as mppx: v must be 27 or 28.
            assert!(!mppx_accepts);
            Err(VoucherError::InvalidRecoveryId { v: u8::from(y_odd) })
        }
        "eip2098_compact_64" => {
            // DELIBERATE DIFFERENCE: mppx reads 64 bytes as a Tempo signature envelope and
            // rejects it; the spec allows EIP-2098 compact signatures and so do we.
            assert!(!mppx_accepts);
            Ok(())
        }
        "high_s_malleated" => {
            // DELIBERATE DIFFERENCE: mppx accepts the malleated (high-s) twin; we reject it so
            // that a voucher has exactly one valid encoding (mppx never produces high s).
            assert!(mppx_accepts);
            Err(VoucherError::HighS)
        }
        other => panic!("new signature variant {other:?}: decide and document our answer"),
    }
}

#[test]
fn signature_encodings_are_accepted_as_documented() {
    for vector in vouchers() {
        let label = text(&vector, "label");
        let digest = b256(&vector, "digest");
        let signer = address(&vector, "signerAddress");
        let emitted: VoucherSignature = text(&vector, "signature").parse().expect("signature");
        let variants = vector["signatureVariants"].as_object().expect("variants");
        assert_eq!(variants.len(), 5, "{label}");
        let cached = (vector["version"] == "v1").then(|| {
            let signed = SignedVoucher {
                voucher: voucher_of(&vector),
                signature: emitted,
            };
            SignerKey::learn(&domain_of(&vector), &signed, signer).expect("learn")
        });
        for (name, variant) in variants {
            let mppx_accepts = variant["mppxVerifyVoucherAccepts"].as_bool().expect("bool");
            let want = expected_acceptance(name, mppx_accepts, emitted.y_odd());
            let ours = VoucherSignature::from_hex(text(variant, "signature")).and_then(|sig| {
                // Every accepted encoding is the very same signature.
                assert_eq!(sig, emitted, "{label} / {name}");
                assert_eq!(
                    recover_address(&digest, &sig),
                    Ok(signer),
                    "{label} / {name}"
                );
                if let Some(key) = &cached {
                    key.verify_digest(&digest, &sig)?;
                }
                Ok(())
            });
            assert_eq!(ours, want, "{label} / {name}");
        }
    }
}

#[test]
fn cached_key_path_agrees_with_recovery_on_vectors() {
    for vector in vouchers().iter().filter(|v| v["version"] == "v1") {
        let label = text(vector, "label");
        let domain = domain_of(vector);
        let signer = address(vector, "signerAddress");
        let signed = SignedVoucher {
            voucher: voucher_of(vector),
            signature: text(vector, "signature").parse().expect("signature"),
        };
        for width in [TableWidth::Small, TableWidth::Medium, TableWidth::Large] {
            let key = SignerKey::learn_with(&domain, &signed, signer, width).expect("learn");
            assert_eq!(key.verify(&domain, &signed), Ok(()), "{label}");
            // Another amount under the same signature must fail on both paths.
            let mut forged = signed;
            forged.voucher.cumulative_amount += 1;
            assert_eq!(
                key.verify(&domain, &forged),
                Err(VoucherError::NotSignedByKey { expected: signer }),
                "{label}"
            );
            assert!(matches!(
                verify(&domain, &forged, signer),
                Err(VoucherError::SignerMismatch { .. })
            ));
            // The persisted key rebuilds an equivalent cache.
            let restored =
                SignerKey::from_sec1_bytes(signer, &key.to_sec1_bytes(), width).expect("restore");
            assert_eq!(restored.verify(&domain, &signed), Ok(()), "{label}");
        }
        let mut known = KnownSigner::new(signer);
        assert!(known.key().is_none());
        assert_eq!(known.verify(&domain, &signed), Ok(()));
        assert_eq!(known.key().map(SignerKey::address), Some(signer));
        assert_eq!(known.verify(&domain, &signed), Ok(()));
    }
}

#[test]
fn v1_channel_ids_match() {
    let file = load("channel-ids.json");
    let cases = file["v1"]["cases"].as_array().expect("v1 cases");
    assert_eq!(cases.len(), 2);
    for case in cases {
        let params = ChannelParams {
            payer: address(case, "payer"),
            payee: address(case, "payee"),
            token: address(case, "token"),
            salt: b256(case, "salt"),
            authorized_signer: address(case, "authorizedSigner"),
            escrow: address(case, "escrowContract"),
            chain_id: case["chainId"].as_u64().expect("chainId"),
        };
        let want: ChannelId = text(case, "channelId").parse().expect("channelId");
        assert_eq!(params.channel_id(), want);
        assert_eq!(
            params.channel_id().to_string(),
            text(case, "channelId").to_lowercase()
        );
        assert_eq!(
            sluice_voucher::channel_id_v1(
                params.payer,
                params.payee,
                params.token,
                params.salt,
                params.authorized_signer,
                params.escrow,
                params.chain_id
            ),
            want
        );
        if let Some(encoded) = case["abiEncoded"].as_str() {
            assert_eq!(hex::encode_prefixed(params.abi_encode()), encoded);
        }
    }
    // v2 ids hash an operator and Tempo's expiring-nonce hash for the TIP-1034 precompile,
    // which only exists on Tempo; this crate targets the v1 escrow, so v2 ids are not derived.
}

#[test]
fn delegated_signer_vector_uses_the_authorized_signer() {
    let ids = load("channel-ids.json");
    let delegated = &ids["v1"]["cases"][1];
    let params_signer = sluice_voucher::expected_signer(
        address(delegated, "payer"),
        address(delegated, "authorizedSigner"),
    );
    let vector = vouchers()
        .into_iter()
        .find(|v| text(v, "label").contains("delegated"))
        .expect("delegated vector");
    assert_eq!(
        text(&vector["message"], "channelId"),
        text(delegated, "channelId")
    );
    assert_eq!(params_signer, address(&vector, "expectedSigner"));
    let domain = domain_of(&vector);
    let signed = SignedVoucher {
        voucher: voucher_of(&vector),
        signature: text(&vector, "signature").parse().expect("signature"),
    };
    assert_eq!(verify(&domain, &signed, params_signer), Ok(()));
    // The payer's own address is not the expected signer once a delegate is set.
    let payer = address(delegated, "payer");
    assert!(matches!(
        verify(&domain, &signed, payer),
        Err(VoucherError::SignerMismatch { expected, .. }) if expected == payer
    ));
}
