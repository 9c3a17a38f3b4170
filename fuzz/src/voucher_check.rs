//! Fuzz target `voucher_check`: signature bytes and voucher fields from the input, then the full
//! check on both paths (recovery and cached key) and the acceptance rule, as the engine runs
//! them. Invariants asserted:
//!
//! - nothing panics, whatever the bytes;
//! - a parsed signature is canonical and round-trips through both wire forms;
//! - the cached-key check accepts exactly what recovery accepts;
//! - a voucher is only ever accepted with a signature that recovers to the expected signer,
//!   and only the one canonical signature the payer produced verifies;
//! - acceptance never lets the accepted amount go down or exceed the deposit.
//!
//! Input layout (missing bytes read as zero): `mode`, `amount` (16), `deposit` (16),
//! `settled` (16), `accepted` (16), `min delta` (16), `state flags`, `channel id` (32), then
//! either raw signature bytes (mode bit 0 clear) or a `(position, mask)` list that corrupts
//! the payer's real signature (mode bit 0 set).

use alloy_primitives::{Address, B256};
use sluice_voucher::{
    AcceptancePolicy, ChannelId, ChannelView, Decision, SignedVoucher, SignerKey, SigningKey,
    TableWidth, Voucher, VoucherDomain, VoucherSignature, address_of, decide, recover_address,
    sign_voucher, verify,
};
use std::sync::OnceLock;

/// Mode bit: sign the voucher with the payer key instead of taking raw signature bytes.
const SIGN: u8 = 1;
/// Mode bit: encode the payer's signature in EIP-2098 compact form.
const COMPACT: u8 = 1 << 1;
/// Mode bit: expect the payee, who did not sign, instead of the payer.
const WRONG_SIGNER: u8 = 1 << 2;

struct Keys {
    payer: SigningKey,
    payer_address: Address,
    payee_address: Address,
    /// The payer's key cached with every table size, and the payee's (a wrong key).
    payer_cached: [SignerKey; 3],
    payee_cached: SignerKey,
    domain: VoucherDomain,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // anvil's well-known keys #0 (payer) and #1 (payee), as in the mppx vectors.
        let payer = key("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");
        let payee = key("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d");
        let payer_address = address_of(payer.verifying_key());
        let payee_address = address_of(payee.verifying_key());
        let cached = |address, k: &SigningKey, width| {
            SignerKey::new(address, *k.verifying_key(), width).expect("own key")
        };
        Keys {
            payer_cached: [TableWidth::Small, TableWidth::Medium, TableWidth::Large]
                .map(|w| cached(payer_address, &payer, w)),
            payee_cached: cached(payee_address, &payee, TableWidth::Medium),
            payer,
            payer_address,
            payee_address,
            domain: VoucherDomain::tempo_v1(31337, Address::repeat_byte(0xe7)),
        }
    })
}

fn key(hex: &str) -> SigningKey {
    let bytes: [u8; 32] = alloy_primitives::hex::decode_to_array(hex).expect("hex");
    SigningKey::from_slice(&bytes).expect("key")
}

/// Reads fixed-size fields from the input, yielding zeros past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for byte in &mut out {
            *byte = self.byte();
        }
        out
    }

    fn u128(&mut self) -> u128 {
        u128::from_be_bytes(self.array())
    }
}

/// Runs one input. Panics only when an invariant is broken.
pub fn do_test(data: &[u8]) {
    let _ = run(data);
}

/// Which paths one input reached (for checking that the seeds cover them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// What the acceptance rule decided.
    pub decision: Decision,
    /// The signature bytes parsed.
    pub parsed: bool,
    /// The signature is the expected signer's, by both checks.
    pub verified: bool,
}

/// [`do_test`], reporting the paths it took.
pub fn run(data: &[u8]) -> Outcome {
    let keys = keys();
    let mut input = Reader(data);
    let mode = input.byte();
    let amount = input.u128();
    let view_fields = (input.u128(), input.u128(), input.u128());
    let min_voucher_delta = input.u128();
    let flags = input.byte();
    let channel_id = ChannelId::new(B256::from(input.array::<32>()));
    let view = ChannelView {
        deposit: view_fields.0,
        settled: view_fields.1,
        accepted_cumulative: view_fields.2,
        closing: flags & 1 != 0,
        finalized: flags & 2 != 0,
    };
    let policy = AcceptancePolicy { min_voucher_delta };
    let voucher = Voucher::new(channel_id, amount);
    let expected = if mode & WRONG_SIGNER != 0 {
        keys.payee_address
    } else {
        keys.payer_address
    };
    let cached = if mode & WRONG_SIGNER != 0 {
        &keys.payee_cached
    } else {
        &keys.payer_cached[usize::from(flags >> 2) % 3]
    };

    // The signature bytes, and the payer's real signature when there is one.
    let (bytes, genuine) = if mode & SIGN != 0 {
        let signed = sign_voucher(&keys.domain, &voucher, &keys.payer);
        let mut bytes = if mode & COMPACT != 0 {
            signed.signature.to_compact64().to_vec()
        } else {
            signed.signature.to_bytes65().to_vec()
        };
        while !input.0.is_empty() {
            let (position, mask) = (usize::from(input.byte()), input.byte());
            if let Some(byte) = bytes.get_mut(position % 66) {
                *byte ^= mask;
            } else {
                bytes.push(mask); // position 65 (or 64 in compact form) grows the signature
            }
        }
        (bytes, Some(signed.signature))
    } else {
        (input.0.to_vec(), None)
    };

    let decision = decide(&view, amount, &policy);
    if let Decision::Accept { delta } = decision {
        assert!(!view.closing && !view.finalized);
        assert!(view.accepted_cumulative < amount && amount <= view.deposit);
        assert_eq!(view.accepted_cumulative.checked_add(delta), Some(amount));
    }
    if decision == Decision::IdempotentRetry {
        assert_eq!(amount, view.accepted_cumulative);
        assert!(amount <= view.deposit);
    }

    let Ok(signature) = VoucherSignature::from_bytes(&bytes) else {
        return Outcome {
            decision,
            parsed: false,
            verified: false,
        };
    };
    assert!(bytes.len() == 64 || bytes.len() == 65);
    assert_eq!(
        VoucherSignature::from_bytes(&signature.to_bytes65()),
        Ok(signature)
    );
    assert_eq!(
        VoucherSignature::from_bytes(&signature.to_compact64()),
        Ok(signature)
    );

    let signed = SignedVoucher { voucher, signature };
    let by_recovery = verify(&keys.domain, &signed, expected).is_ok();
    let by_cache = cached.verify(&keys.domain, &signed).is_ok();
    assert_eq!(
        by_recovery, by_cache,
        "recovery and cached key disagree on {bytes:02x?}"
    );
    if by_recovery {
        let digest = keys.domain.digest(&voucher);
        assert_eq!(recover_address(&digest, &signature), Ok(expected));
        // Only the payer signs here, and only one encoding of its signature is canonical.
        assert_eq!(expected, keys.payer_address);
        assert_eq!(Some(signature), genuine);
    } else if genuine == Some(signature) {
        // The payer's untouched signature fails only when another signer is expected.
        assert_eq!(expected, keys.payee_address);
    }

    // The engine's order: amount rule first, then the signature, then apply.
    if matches!(decision, Decision::Accept { .. }) && by_recovery {
        let after = ChannelView {
            accepted_cumulative: amount,
            ..view
        };
        assert!(after.accepted_cumulative > view.accepted_cumulative);
        assert!(after.accepted_cumulative <= after.deposit);
    }
    Outcome {
        decision,
        parsed: true,
        verified: by_recovery,
    }
}

/// Seeds: each input mode, corruptions of the payer's signature, and edge amounts.
pub fn seeds() -> Vec<Vec<u8>> {
    fn input(mode: u8, amounts: [u128; 5], flags: u8, tail: &[u8]) -> Vec<u8> {
        let mut out = vec![mode];
        for amount in amounts {
            out.extend_from_slice(&amount.to_be_bytes());
        }
        out.push(flags);
        out.extend_from_slice(&[0x5c; 32]);
        out.extend_from_slice(tail);
        out
    }
    // [amount, deposit, settled, accepted, min delta]
    let accept = [300, 1_000, 100, 200, 50];
    let retry = [200, 1_000, 100, 200, 50];
    let over = [2_000, 1_000, 0, 0, 0];
    let max = [u128::MAX, u128::MAX, 0, u128::MAX - 1, 1];
    let mut seeds = Vec::new();
    for amounts in [accept, retry, over, max] {
        for flags in [0u8, 1, 2, 4, 8] {
            seeds.push(input(1, amounts, flags, &[]));
        }
        seeds.push(input(1 | 2, amounts, 0, &[]));
        seeds.push(input(1 | 4, amounts, 0, &[]));
        seeds.push(input(1, amounts, 0, &[64, 0x07])); // v 27 <-> 28
        seeds.push(input(1, amounts, 0, &[40, 0x01])); // one bit of s
        seeds.push(input(1, amounts, 0, &[3, 0x80])); // one bit of r
        seeds.push(input(1, amounts, 0, &[65, 0x00])); // 66 bytes
        seeds.push(input(1 | 2, amounts, 0, &[32, 0x80])); // compact parity bit
        seeds.push(input(0, amounts, 0, &[0x11; 65]));
        seeds.push(input(0, amounts, 0, &[0xff; 64]));
        seeds.push(input(0, amounts, 0, &[0x00; 65]));
    }
    seeds.push(Vec::new());
    seeds.push(vec![0xff; 300]);
    seeds
}
