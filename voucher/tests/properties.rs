//! Property tests: sign/check round trips, hostile bytes, and the acceptance rule against a
//! naive model.

use alloy_primitives::{Address, B256};
use proptest::prelude::*;
use sluice_voucher::{
    AcceptancePolicy, Amount, ChannelId, ChannelView, Decision, RejectReason, SignedVoucher,
    SignerKey, SigningKey, TableWidth, Voucher, VoucherDomain, VoucherError, VoucherSignature,
    address_of, decide, recover_address, sign_voucher, verify,
};

fn signing_key() -> impl Strategy<Value = SigningKey> {
    // Almost every 32-byte string is a valid key; the rest (0 or >= n) are filtered out.
    any::<[u8; 32]>().prop_filter_map("valid secp256k1 secret", |b| {
        SigningKey::from_slice(&b).ok()
    })
}

fn domain() -> impl Strategy<Value = VoucherDomain> {
    (
        "[ -~]{0,24}",
        "[0-9a-z.]{0,4}",
        any::<u64>(),
        any::<[u8; 20]>(),
    )
        .prop_map(|(name, version, chain_id, contract)| {
            VoucherDomain::new(name, version, chain_id, Address::from(contract))
        })
}

fn voucher() -> impl Strategy<Value = Voucher> {
    (any::<[u8; 32]>(), any::<u128>())
        .prop_map(|(id, amount)| Voucher::new(ChannelId::new(B256::from(id)), amount))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn signed_vouchers_verify_on_both_paths(key in signing_key(), domain in domain(), voucher in voucher()) {
        let signer = address_of(key.verifying_key());
        let signed = sign_voucher(&domain, &voucher, &key);
        prop_assert_eq!(verify(&domain, &signed, signer), Ok(()));
        let cached = SignerKey::learn(&domain, &signed, signer).expect("learn");
        prop_assert_eq!(cached.verify(&domain, &signed), Ok(()));
        // Both wire forms parse back to the same canonical signature.
        let sig = signed.signature;
        prop_assert_eq!(VoucherSignature::from_bytes(&sig.to_bytes65()), Ok(sig));
        prop_assert_eq!(VoucherSignature::from_bytes(&sig.to_compact64()), Ok(sig));
        prop_assert_eq!(sig.to_string().parse::<VoucherSignature>(), Ok(sig));
        // The same r and s with the other parity name another nonce point: the cached check
        // must refuse it exactly as recovery does (it does not just test x(R) == r).
        let flipped = VoucherSignature::from_rsv(*sig.r(), *sig.s(), !sig.y_odd()).expect("canonical");
        let twin = SignedVoucher { voucher, signature: flipped };
        prop_assert!(verify(&domain, &twin, signer).is_err());
        prop_assert_eq!(cached.verify(&domain, &twin), Err(VoucherError::NotSignedByKey { expected: signer }));
    }

    #[test]
    fn a_signature_binds_amount_channel_domain_and_signer(
        key in signing_key(),
        domain in domain(),
        voucher in voucher(),
        other in any::<[u8; 20]>(),
    ) {
        let signer = address_of(key.verifying_key());
        let signed = sign_voucher(&domain, &voucher, &key);
        let cached = SignerKey::learn(&domain, &signed, signer).expect("learn");

        let mut more = signed;
        more.voucher.cumulative_amount = voucher.cumulative_amount.wrapping_add(1);
        let mut moved = signed;
        let mut id = *voucher.channel_id.as_b256();
        id.0[usize::from(other[0]) % 32] ^= 1 << (other[1] % 8);
        moved.voucher.channel_id = ChannelId::new(id);
        let elsewhere = VoucherDomain::new(
            domain.name(),
            domain.version(),
            domain.chain_id().wrapping_add(1),
            domain.verifying_contract(),
        );
        for (d, s) in [(&domain, &more), (&domain, &moved), (&elsewhere, &signed)] {
            let mismatch = matches!(verify(d, s, signer), Err(VoucherError::SignerMismatch { .. }));
            prop_assert!(mismatch, "{:?} must not verify", s);
            prop_assert_eq!(cached.verify(d, s), Err(VoucherError::NotSignedByKey { expected: signer }));
        }
        let stranger = Address::from(other);
        if stranger != signer {
            prop_assert_eq!(
                verify(&domain, &signed, stranger),
                Err(VoucherError::SignerMismatch { expected: stranger, recovered: signer })
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..140), text in ".{0,140}") {
        let _ = VoucherSignature::from_hex(&text);
        let _ = text.parse::<ChannelId>();
        if let Ok(sig) = VoucherSignature::from_bytes(&bytes) {
            // Whatever parsed is canonical and round-trips.
            prop_assert!(bytes.len() == 64 || bytes.len() == 65);
            prop_assert_eq!(VoucherSignature::from_bytes(&sig.to_bytes65()), Ok(sig));
            let _ = recover_address(&B256::repeat_byte(0x5a), &sig);
        }
    }

    #[test]
    fn recovery_matches_k256_recover_from_prehash(digest in any::<[u8; 32]>(), r in any::<[u8; 32]>(), s in any::<[u8; 32]>(), y_odd in any::<bool>()) {
        // k256's own recovery is the oracle for ours (which uses precomputed tables).
        use sluice_voucher::k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
        let mut s = s;
        s[0] &= 0x7f; // mostly low-s, so most cases reach recovery
        let Ok(sig) = VoucherSignature::from_rsv(B256::from(r), B256::from(s), y_odd) else {
            return Ok(());
        };
        let digest = B256::from(digest);
        let k256_sig = Signature::from_scalars(r, s).expect("in range");
        let oracle = VerifyingKey::recover_from_prehash(digest.as_slice(), &k256_sig, RecoveryId::new(y_odd, false)).ok();
        prop_assert_eq!(sluice_voucher::recover_key(&digest, &sig).ok(), oracle);
    }

    #[test]
    fn corrupted_signatures_get_the_same_answer_on_both_paths(
        key in signing_key(),
        voucher in voucher(),
        flips in proptest::collection::vec((0usize..65, any::<u8>()), 1..3),
        width in prop_oneof![Just(TableWidth::Small), Just(TableWidth::Medium), Just(TableWidth::Large)],
    ) {
        // A differential test: the cached-key check must accept exactly what recovery accepts.
        let domain = VoucherDomain::tempo_v1(31337, Address::repeat_byte(0xe7));
        let signer = address_of(key.verifying_key());
        let signed = sign_voucher(&domain, &voucher, &key);
        let cached = SignerKey::learn_with(&domain, &signed, signer, width).expect("learn");
        let mut bytes = signed.signature.to_bytes65();
        for (index, mask) in flips {
            bytes[index] ^= mask;
        }
        if let Ok(signature) = VoucherSignature::from_bytes(&bytes) {
            let candidate = SignedVoucher { voucher, signature };
            let by_recovery = verify(&domain, &candidate, signer).is_ok();
            let by_cache = cached.verify(&domain, &candidate).is_ok();
            prop_assert_eq!(by_recovery, by_cache, "bytes {:?}", bytes);
            if by_recovery {
                prop_assert_eq!(signature, signed.signature);
            }
        }
    }
}

/// The rule as a specification: every condition written out on its own, no early returns.
fn model(view: &ChannelView, got: Amount, policy: &AcceptancePolicy) -> Decision {
    let open = !view.finalized && !view.closing;
    let within_deposit = got <= view.deposit;
    let accepted = view.accepted_cumulative;
    if open && within_deposit && got == accepted {
        return Decision::IdempotentRetry;
    }
    let increases = got > accepted;
    let above_settled = got > view.settled;
    let big_enough = increases && got - accepted >= policy.min_voucher_delta;
    if open && within_deposit && increases && above_settled && big_enough {
        return Decision::Accept {
            delta: got - accepted,
        };
    }
    // Refused: the first failing condition, in the documented order, names the reason.
    let reasons = [
        (view.finalized, RejectReason::ChannelFinalized),
        (view.closing, RejectReason::ChannelClosing),
        (
            !within_deposit,
            RejectReason::ExceedsDeposit {
                deposit: view.deposit,
                got,
            },
        ),
        (
            got < accepted,
            RejectReason::AmountNotIncreasing { accepted, got },
        ),
        (
            !above_settled,
            RejectReason::NotAboveSettled {
                settled: view.settled,
                got,
            },
        ),
        (
            !big_enough,
            RejectReason::DeltaTooSmall {
                min: policy.min_voucher_delta,
                delta: got.saturating_sub(accepted),
            },
        ),
    ];
    let reason = reasons
        .into_iter()
        .find(|(fails, _)| *fails)
        .map(|(_, reason)| reason);
    Decision::Reject(reason.expect("a refused voucher fails some condition"))
}

/// Amounts clustered around small values (to hit equalities) plus the extremes.
fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        4 => 0u128..24,
        1 => Just(u128::MAX),
        1 => (u128::MAX - 4)..=u128::MAX,
        1 => any::<u128>(),
    ]
}

fn view() -> impl Strategy<Value = ChannelView> {
    (amount(), amount(), amount(), any::<bool>(), any::<bool>()).prop_map(
        |(deposit, settled, accepted_cumulative, closing, finalized)| ChannelView {
            deposit,
            settled,
            accepted_cumulative,
            closing: closing && deposit % 3 == 0,
            finalized: finalized && settled % 4 == 0,
        },
    )
}

#[derive(Debug, Clone)]
enum Event {
    Voucher(Amount),
    TopUp(Amount),
    SettleAccepted,
    RequestClose,
    CancelClose,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => amount().prop_map(Event::Voucher),
        1 => (0u128..16).prop_map(Event::TopUp),
        1 => Just(Event::SettleAccepted),
        1 => Just(Event::RequestClose),
        1 => Just(Event::CancelClose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decide_matches_the_model(view in view(), got in amount(), min in prop_oneof![Just(0u128), 0u128..8, any::<u128>()]) {
        let policy = AcceptancePolicy { min_voucher_delta: min };
        let decision = decide(&view, got, &policy);
        prop_assert_eq!(decision, model(&view, got, &policy));
        if let Decision::Accept { delta } = decision {
            prop_assert!(view.accepted_cumulative < got && got <= view.deposit);
            prop_assert_eq!(view.accepted_cumulative + delta, got);
        }
    }

    #[test]
    fn a_channel_driven_by_decide_keeps_the_money_invariants(
        deposit in 0u128..32,
        min in 0u128..3,
        events in proptest::collection::vec(event(), 1..40),
    ) {
        let policy = AcceptancePolicy { min_voucher_delta: min };
        let mut view = ChannelView { deposit, ..ChannelView::default() };
        let mut highest_offered_ok = 0u128;
        for event in events {
            let before = view;
            match event {
                Event::Voucher(got) => match decide(&view, got, &policy) {
                    Decision::Accept { delta } => {
                        view.accepted_cumulative += delta;
                        highest_offered_ok = highest_offered_ok.max(got);
                    }
                    Decision::IdempotentRetry => prop_assert_eq!(got, view.accepted_cumulative),
                    Decision::Reject(_) => {}
                },
                Event::TopUp(more) => {
                    view.deposit += more;
                    view.closing = false;
                }
                // The payee settles the highest accepted voucher on chain.
                Event::SettleAccepted => view.settled = view.accepted_cumulative,
                Event::RequestClose => view.closing = true,
                Event::CancelClose => view.closing = false,
            }
            prop_assert!(view.settled <= view.accepted_cumulative);
            prop_assert!(view.accepted_cumulative <= view.deposit);
            prop_assert!(view.accepted_cumulative >= before.accepted_cumulative);
            prop_assert_eq!(view.accepted_cumulative, highest_offered_ok);
        }
    }
}
