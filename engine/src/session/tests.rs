//! Unit tests of the session machine: transaction decoding (against the mppx vectors and
//! crafted transactions) and every transition and refusal.

use alloy::consensus::{
    SignableTransaction, Signed, TxEip1559, TxEip2930, TxEip7702, TxEnvelope, TxLegacy,
};
use alloy::eips::eip2718::Encodable2718;
use alloy::sol_types::SolCall;
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, address, b256, hex};
use sluice_contracts::SluiceEscrow;
use sluice_voucher::{
    AcceptancePolicy, RejectReason, SigningKey, Voucher, VoucherDomain, VoucherError, address_of,
    channel_id_v1, sign_digest, sign_voucher,
};

use super::*;
use crate::chain::OnChainChannel;
use crate::protocol::ProblemKind;
use crate::store::{ChannelId, ChannelRecord, ChannelStatus};

const PAYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const OTHER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const PAYER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
const PAYEE: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");
const ESCROW: Address = address!("e7f1725E7734CE288F8367e1Bb143E90bb3F0512");
const CHAIN: u64 = 31337;
const VECTOR_CHANNEL: B256 =
    b256!("5ccc5ed2b18a0a89493ae68350766f15444b0c1b7e01665dcacd115121143869");
const SALT: B256 = b256!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");

const TERMS: EscrowTerms = EscrowTerms {
    chain_id: CHAIN,
    escrow: ESCROW,
    payee: PAYEE,
    token: TOKEN,
};

fn key(hex_key: &str) -> SigningKey {
    let bytes: [u8; 32] = hex::decode_to_array(hex_key).expect("hex");
    SigningKey::from_slice(&bytes).expect("key")
}

fn vector_tx(name: &str) -> Vec<u8> {
    let file: serde_json::Value = serde_json::from_str(include_str!(
        "../../../testdata/mppx-0.11.0/credentials.json"
    ))
    .expect("json");
    let case = file["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .expect("case");
    hex::decode(case["context"]["transaction"].as_str().expect("tx")).expect("hex")
}

fn signature_of(digest: &B256, key: &SigningKey) -> Signature {
    let sig = sign_digest(digest, key);
    Signature::new(
        U256::from_be_bytes(sig.r().0),
        U256::from_be_bytes(sig.s().0),
        sig.y_odd(),
    )
}

fn sign<T>(tx: T, key: &SigningKey) -> Vec<u8>
where
    T: SignableTransaction<Signature>,
    TxEnvelope: From<Signed<T>>,
{
    let signature = signature_of(&tx.signature_hash(), key);
    TxEnvelope::from(tx.into_signed(signature)).encoded_2718()
}

fn open_calldata(payee: Address, token: Address, deposit: u128, signer: Address) -> Bytes {
    SluiceEscrow::openCall {
        payee,
        token,
        deposit,
        salt: SALT,
        authorizedSigner: signer,
    }
    .abi_encode()
    .into()
}

fn eip1559(chain_id: u64, to: TxKind, input: Bytes) -> TxEip1559 {
    TxEip1559 {
        chain_id,
        nonce: 1,
        gas_limit: 300_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to,
        value: U256::ZERO,
        access_list: Default::default(),
        input,
    }
}

fn payer_channel(signer: Address) -> ChannelId {
    channel_id_v1(PAYER, PAYEE, TOKEN, SALT, signer, ESCROW, CHAIN).into()
}

// ---------------------------------------------------------------- transaction decoding

#[test]
fn the_mppx_open_vector_decodes_to_its_payer_and_channel() {
    let raw = vector_tx("v1-open");
    let open = decode_open_tx(&raw, &TERMS, &VECTOR_CHANNEL).expect("valid open");
    assert_eq!(open.payer, PAYER);
    assert_eq!(open.payee, PAYEE);
    assert_eq!(open.token, TOKEN);
    assert_eq!(open.deposit, 10_000_000);
    assert_eq!(open.salt, SALT);
    assert_eq!(open.authorized_signer, Address::ZERO);
    assert_eq!(open.expected_signer(), PAYER);
    assert_eq!(open.channel_id, VECTOR_CHANNEL);
    assert_eq!(open.tx_hash, alloy_primitives::keccak256(&raw));
}

#[test]
fn the_mppx_top_up_vector_decodes() {
    let raw = vector_tx("v1-topUp");
    let top_up = decode_top_up_tx(&raw, &TERMS, &VECTOR_CHANNEL, 5_000_000).expect("valid");
    assert_eq!(top_up.sender, PAYER);
    assert_eq!(top_up.channel_id, VECTOR_CHANNEL);
    assert_eq!(top_up.additional_deposit, 5_000_000);
    assert_eq!(
        decode_top_up_tx(&raw, &TERMS, &VECTOR_CHANNEL, 5_000_001),
        Err(SessionError::TopUpAmountMismatch {
            claimed: 5_000_001,
            in_tx: U256::from(5_000_000u64)
        })
    );
    let other = B256::repeat_byte(9);
    assert_eq!(
        decode_top_up_tx(&raw, &TERMS, &other, 5_000_000),
        Err(SessionError::TopUpChannelMismatch {
            claimed: other,
            in_tx: VECTOR_CHANNEL
        })
    );
}

#[test]
fn open_transactions_for_other_terms_are_refused() {
    let raw = vector_tx("v1-open");
    let with = |f: fn(&mut EscrowTerms)| {
        let mut terms = TERMS;
        f(&mut terms);
        decode_open_tx(&raw, &terms, &VECTOR_CHANNEL)
    };
    assert_eq!(
        with(|t| t.chain_id = 1),
        Err(SessionError::TxWrongChain {
            expected: 1,
            got: Some(CHAIN)
        })
    );
    assert_eq!(
        with(|t| t.escrow = Address::repeat_byte(1)),
        Err(SessionError::TxWrongTarget {
            expected: Address::repeat_byte(1),
            got: Some(ESCROW)
        })
    );
    assert_eq!(
        with(|t| t.payee = Address::repeat_byte(2)),
        Err(SessionError::PayeeMismatch {
            expected: Address::repeat_byte(2),
            got: PAYEE
        })
    );
    assert_eq!(
        with(|t| t.token = Address::repeat_byte(3)),
        Err(SessionError::TokenMismatch {
            expected: Address::repeat_byte(3),
            got: TOKEN
        })
    );
    let claimed = B256::repeat_byte(4);
    assert_eq!(
        decode_open_tx(&raw, &TERMS, &claimed),
        Err(SessionError::ChannelIdMismatch {
            claimed,
            computed: VECTOR_CHANNEL
        })
    );
}

#[test]
fn the_wrong_escrow_function_is_refused() {
    let open = vector_tx("v1-open");
    let top_up = vector_tx("v1-topUp");
    assert_eq!(
        decode_top_up_tx(&open, &TERMS, &VECTOR_CHANNEL, 1),
        Err(SessionError::TxWrongFunction {
            expected: "topUp",
            selector: Some(SluiceEscrow::openCall::SELECTOR)
        })
    );
    assert_eq!(
        decode_open_tx(&top_up, &TERMS, &VECTOR_CHANNEL),
        Err(SessionError::TxWrongFunction {
            expected: "open",
            selector: Some(SluiceEscrow::topUpCall::SELECTOR)
        })
    );
    let payer = key(PAYER_KEY);
    let empty = sign(eip1559(CHAIN, TxKind::Call(ESCROW), Bytes::new()), &payer);
    assert_eq!(
        decode_open_tx(&empty, &TERMS, &VECTOR_CHANNEL),
        Err(SessionError::TxWrongFunction {
            expected: "open",
            selector: None
        })
    );
    let create = sign(
        eip1559(
            CHAIN,
            TxKind::Create,
            open_calldata(PAYEE, TOKEN, 1, Address::ZERO),
        ),
        &payer,
    );
    assert_eq!(
        decode_open_tx(&create, &TERMS, &VECTOR_CHANNEL),
        Err(SessionError::TxWrongTarget {
            expected: ESCROW,
            got: None
        })
    );
}

#[test]
fn dirty_or_short_calldata_is_refused() {
    let payer = key(PAYER_KEY);
    let mut dirty = open_calldata(PAYEE, TOKEN, 1, Address::ZERO).to_vec();
    dirty[4] = 0xff; // a non-zero byte in the payee word's padding
    let raw = sign(eip1559(CHAIN, TxKind::Call(ESCROW), dirty.into()), &payer);
    assert!(matches!(
        decode_open_tx(&raw, &TERMS, &payer_channel(Address::ZERO)),
        Err(SessionError::TxCalldata {
            function: "open",
            ..
        })
    ));
    let short = open_calldata(PAYEE, TOKEN, 1, Address::ZERO).slice(..40);
    let raw = sign(eip1559(CHAIN, TxKind::Call(ESCROW), short), &payer);
    assert!(matches!(
        decode_open_tx(&raw, &TERMS, &payer_channel(Address::ZERO)),
        Err(SessionError::TxCalldata { .. })
    ));
}

#[test]
fn malformed_transaction_bytes_are_typed_errors() {
    let raw = vector_tx("v1-open");
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x02],
        vec![0xff; 40],
        raw[..raw.len() - 1].to_vec(),
    ];
    let mut trailing = raw.clone();
    trailing.push(0);
    cases.push(trailing);
    for bytes in cases {
        assert!(
            matches!(
                decode_open_tx(&bytes, &TERMS, &VECTOR_CHANNEL),
                Err(SessionError::TxMalformed { len, .. }) if len == bytes.len()
            ),
            "{}",
            hex::encode(&bytes)
        );
    }
}

#[test]
fn legacy_and_access_list_transactions_are_accepted_with_replay_protection() {
    let payer = key(PAYER_KEY);
    let input = open_calldata(PAYEE, TOKEN, 7, Address::ZERO);
    let legacy = |chain_id| TxLegacy {
        chain_id,
        nonce: 0,
        gas_price: 1_000_000_000,
        gas_limit: 300_000,
        to: TxKind::Call(ESCROW),
        value: U256::ZERO,
        input: input.clone(),
    };
    let channel = payer_channel(Address::ZERO);
    let open = decode_open_tx(&sign(legacy(Some(CHAIN)), &payer), &TERMS, &channel)
        .expect("EIP-155 legacy");
    assert_eq!((open.payer, open.deposit), (PAYER, 7));
    assert_eq!(
        decode_open_tx(&sign(legacy(None), &payer), &TERMS, &channel),
        Err(SessionError::TxWrongChain {
            expected: CHAIN,
            got: None
        })
    );
    let access_list = TxEip2930 {
        chain_id: CHAIN,
        nonce: 0,
        gas_price: 1_000_000_000,
        gas_limit: 300_000,
        to: TxKind::Call(ESCROW),
        value: U256::ZERO,
        access_list: Default::default(),
        input: input.clone(),
    };
    assert_eq!(
        decode_open_tx(&sign(access_list, &payer), &TERMS, &channel).map(|o| o.payer),
        Ok(PAYER)
    );
    let set_code = TxEip7702 {
        chain_id: CHAIN,
        nonce: 0,
        gas_limit: 300_000,
        max_fee_per_gas: 2,
        max_priority_fee_per_gas: 1,
        to: ESCROW,
        value: U256::ZERO,
        access_list: Default::default(),
        authorization_list: vec![],
        input,
    };
    assert_eq!(
        decode_open_tx(&sign(set_code, &payer), &TERMS, &channel),
        Err(SessionError::TxTypeUnsupported { tx_type: 4 })
    );
}

#[test]
fn the_sender_is_recovered_and_a_high_s_signature_is_refused() {
    let other = key(OTHER_KEY);
    let other_address = address_of(other.verifying_key());
    let tx = eip1559(
        CHAIN,
        TxKind::Call(ESCROW),
        open_calldata(PAYEE, TOKEN, 5, Address::ZERO),
    );
    let other_channel: ChannelId = channel_id_v1(
        other_address,
        PAYEE,
        TOKEN,
        SALT,
        Address::ZERO,
        ESCROW,
        CHAIN,
    )
    .into();
    // Signed by another key: a different payer, hence a different channel id.
    let raw = sign(tx.clone(), &other);
    assert_eq!(
        decode_open_tx(&raw, &TERMS, &payer_channel(Address::ZERO)),
        Err(SessionError::ChannelIdMismatch {
            claimed: payer_channel(Address::ZERO),
            computed: other_channel
        })
    );
    assert_eq!(
        decode_open_tx(&raw, &TERMS, &other_channel).map(|o| o.payer),
        Ok(other_address)
    );
    // The malleable twin (n − s, flipped parity) recovers the same key but is not canonical.
    let good = signature_of(&tx.signature_hash(), &key(PAYER_KEY));
    let n = U256::from_be_bytes(
        hex::decode_to_array::<_, 32>(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        )
        .expect("n"),
    );
    let twin = Signature::new(good.r(), n - good.s(), !good.v());
    let raw = TxEnvelope::from(tx.into_signed(twin)).encoded_2718();
    assert_eq!(
        decode_open_tx(&raw, &TERMS, &payer_channel(Address::ZERO)),
        Err(SessionError::TxSignature {
            source: VoucherError::HighS
        })
    );
}

// ---------------------------------------------------------------- transitions

fn domain() -> VoucherDomain {
    VoucherDomain::tempo_v1(CHAIN, ESCROW)
}

fn claim(channel: ChannelId, amount: u128) -> VoucherClaim {
    let signed = sign_voucher(
        &domain(),
        &Voucher::new(channel.into(), amount),
        &key(PAYER_KEY),
    );
    VoucherClaim::new(amount, &signed.signature)
}

fn decoded(deposit: u128) -> DecodedOpen {
    DecodedOpen {
        tx_hash: B256::repeat_byte(0x11),
        payer: PAYER,
        payee: PAYEE,
        token: TOKEN,
        deposit,
        salt: SALT,
        authorized_signer: Address::ZERO,
        channel_id: payer_channel(Address::ZERO),
    }
}

fn chain_facts(deposit: u128) -> OnChainChannel {
    OnChainChannel {
        finalized: false,
        close_requested_at: 0,
        payer: PAYER,
        payee: PAYEE,
        token: TOKEN,
        authorized_signer: Address::ZERO,
        deposit,
        settled: 0,
    }
}

const NOW: u64 = 1_900_000_000_000;
const POLICY: AcceptancePolicy = AcceptancePolicy {
    min_voucher_delta: 0,
};

/// An open channel with `deposit`, holding a voucher of `accepted` of which `spent` is spent.
fn open_channel(deposit: u128, accepted: u128, spent: u128) -> ChannelRecord {
    let open = decoded(deposit);
    let chain = chain_facts(deposit);
    let t = on_open(
        None,
        &OpenInput {
            open: &open,
            chain: &chain,
            chain_read_at_ms: NOW,
            voucher: claim(open.channel_id, accepted),
            now_ms: NOW,
        },
    )
    .expect("open");
    let mut record = t.record;
    if spent > 0 {
        record = charge(Some(&record), &record.channel_id.clone(), spent, 1, NOW)
            .expect("charge")
            .record;
    }
    record
}

#[test]
fn open_creates_an_open_record_from_chain_facts() {
    let open = decoded(1_000);
    let mut chain = chain_facts(1_500); // topped up before the open was seen
    chain.settled = 0;
    let voucher = claim(open.channel_id, 100);
    let t = on_open(
        None,
        &OpenInput {
            open: &open,
            chain: &chain,
            chain_read_at_ms: NOW - 5,
            voucher,
            now_ms: NOW,
        },
    )
    .expect("open");
    assert!(t.write);
    assert_eq!(t.voucher, Some(VoucherOutcome::Accepted { delta: 100 }));
    let r = t.record;
    assert_eq!(r.status, ChannelStatus::Open);
    assert_eq!((r.payer, r.payee, r.token), (PAYER, PAYEE, TOKEN));
    assert_eq!((r.deposit, r.accepted_cumulative, r.spent), (1_500, 100, 0));
    assert_eq!(r.accepted_signature, voucher.signature);
    assert_eq!((r.chain_checked_at_ms, r.updated_at_ms), (NOW - 5, NOW));
    r.check_invariants().expect("invariants");
}

#[test]
fn a_zero_open_voucher_holds_no_voucher() {
    let r = open_channel(1_000, 0, 0);
    assert_eq!(r.accepted_cumulative, 0);
    assert!(!r.has_voucher());
    assert_eq!(r.status, ChannelStatus::Open);
}

#[test]
fn a_repeated_open_keeps_the_higher_voucher_and_refreshes_facts() {
    let stored = open_channel(1_000, 300, 100);
    let open = decoded(1_000);
    let mut chain = chain_facts(2_000);
    chain.settled = 50;
    for (amount, expect_accepted, outcome) in [
        (0, 300, VoucherOutcome::Retry),
        (300, 300, VoucherOutcome::Retry),
        (400, 400, VoucherOutcome::Accepted { delta: 100 }),
    ] {
        let t = on_open(
            Some(&stored),
            &OpenInput {
                open: &open,
                chain: &chain,
                chain_read_at_ms: NOW + 1,
                voucher: claim(open.channel_id, amount),
                now_ms: NOW + 1,
            },
        )
        .expect("re-open");
        assert_eq!(t.voucher, Some(outcome));
        assert_eq!(t.record.accepted_cumulative, expect_accepted);
        assert_eq!((t.record.deposit, t.record.settled), (2_000, 50));
        assert_eq!(t.record.spent, 100);
        if amount <= 300 {
            assert_eq!(t.record.accepted_signature, stored.accepted_signature);
        }
    }
}

#[test]
fn open_refuses_what_the_escrow_does_not_confirm() {
    let open = decoded(1_000);
    let input = |chain: &OnChainChannel| {
        on_open(
            None,
            &OpenInput {
                open: &open,
                chain,
                chain_read_at_ms: NOW,
                voucher: claim(open.channel_id, 10),
                now_ms: NOW,
            },
        )
    };
    let channel = open.channel_id;
    assert_eq!(
        input(&OnChainChannel::default()),
        Err(SessionError::ChannelNotFound { channel })
    );
    let finalized = OnChainChannel {
        finalized: true,
        ..OnChainChannel::default()
    };
    assert!(matches!(
        input(&finalized),
        Err(SessionError::ChannelFinalized {
            finalized: true,
            ..
        })
    ));
    let mut closing = chain_facts(1_000);
    closing.close_requested_at = 77;
    assert_eq!(
        input(&closing),
        Err(SessionError::ChannelClosing {
            channel,
            close_requested_at: 77
        })
    );
    let mut other_signer = chain_facts(1_000);
    other_signer.authorized_signer = Address::repeat_byte(5);
    assert_eq!(
        input(&other_signer),
        Err(SessionError::ChainFactsMismatch {
            channel,
            field: ChainField::AuthorizedSigner,
            expected: Address::ZERO,
            on_chain: Address::repeat_byte(5)
        })
    );
    let mut other_payee = chain_facts(1_000);
    other_payee.payee = Address::repeat_byte(6);
    assert!(matches!(
        input(&other_payee),
        Err(SessionError::ChainFactsMismatch {
            field: ChainField::Payee,
            ..
        })
    ));
    assert_eq!(
        input(&chain_facts(5)),
        Err(SessionError::Rejected {
            channel,
            reason: RejectReason::ExceedsDeposit {
                deposit: 5,
                got: 10
            }
        })
    );
}

#[test]
fn open_on_a_closing_or_closed_record_is_refused() {
    let open = decoded(1_000);
    for status in [ChannelStatus::Closing, ChannelStatus::Closed] {
        let mut stored = open_channel(1_000, 10, 0);
        stored.status = status;
        let result = on_open(
            Some(&stored),
            &OpenInput {
                open: &open,
                chain: &chain_facts(1_000),
                chain_read_at_ms: NOW,
                voucher: claim(open.channel_id, 10),
                now_ms: NOW,
            },
        );
        assert!(matches!(
            result,
            Err(SessionError::ChannelFinalized { status: s, .. }) if s == status
        ));
    }
}

#[test]
fn vouchers_follow_the_acceptance_rule() {
    let r = open_channel(1_000, 100, 40);
    let id = r.channel_id;
    let policy = AcceptancePolicy {
        min_voucher_delta: 10,
    };
    let t = on_voucher(Some(&r), &id, &claim(id, 150), &policy, None, NOW + 9).expect("accept");
    assert_eq!(t.voucher, Some(VoucherOutcome::Accepted { delta: 50 }));
    assert!(t.write);
    assert_eq!((t.record.accepted_cumulative, t.record.spent), (150, 40));
    assert_eq!(t.record.updated_at_ms, NOW + 9);

    let retry = on_voucher(Some(&r), &id, &claim(id, 100), &policy, None, NOW + 9).expect("retry");
    assert_eq!(retry.voucher, Some(VoucherOutcome::Retry));
    assert!(!retry.write);
    assert_eq!(retry.record, r);

    let refused = |amount| on_voucher(Some(&r), &id, &claim(id, amount), &policy, None, NOW);
    assert_eq!(
        refused(99),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::AmountNotIncreasing {
                accepted: 100,
                got: 99
            }
        })
    );
    assert_eq!(
        refused(105),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::DeltaTooSmall { min: 10, delta: 5 }
        })
    );
    assert_eq!(
        refused(1_001),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::ExceedsDeposit {
                deposit: 1_000,
                got: 1_001
            }
        })
    );
    assert_eq!(
        refused(u128::MAX),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::ExceedsDeposit {
                deposit: 1_000,
                got: u128::MAX
            }
        })
    );
    assert_eq!(
        on_voucher(None, &id, &claim(id, 1), &policy, None, NOW),
        Err(SessionError::ChannelNotFound { channel: id })
    );
}

#[test]
fn vouchers_on_closing_closed_or_close_requested_channels_are_410() {
    let base = open_channel(1_000, 100, 0);
    let id = base.channel_id;
    let mut cases = Vec::new();
    for status in [ChannelStatus::Closing, ChannelStatus::Closed] {
        let mut r = base;
        r.status = status;
        cases.push(r);
    }
    let mut finalized = base;
    finalized.finalized = true;
    cases.push(finalized);
    let mut requested = base;
    requested.close_requested_at = 5;
    cases.push(requested);
    for r in cases {
        let err = on_voucher(Some(&r), &id, &claim(id, 200), &POLICY, None, NOW).unwrap_err();
        assert_eq!(err.problem_kind(), ProblemKind::ChannelFinalized, "{err}");
        assert_eq!(err.problem_kind().status(), 410);
    }
    let mut opening = base;
    opening.status = ChannelStatus::Opening;
    let err = on_voucher(Some(&opening), &id, &claim(id, 200), &POLICY, None, NOW).unwrap_err();
    assert_eq!(err.problem_kind(), ProblemKind::ChannelNotFound);
}

#[test]
fn fresh_chain_facts_are_applied_before_the_rule() {
    let r = open_channel(1_000, 100, 0);
    let id = r.channel_id;
    // A top-up seen on chain lets a voucher above the cached deposit through.
    let t = on_voucher(
        Some(&r),
        &id,
        &claim(id, 1_500),
        &POLICY,
        Some((&chain_facts(2_000), NOW + 10)),
        NOW + 10,
    )
    .expect("accept");
    assert_eq!(
        (t.record.deposit, t.record.accepted_cumulative),
        (2_000, 1_500)
    );
    assert_eq!(t.record.chain_checked_at_ms, NOW + 10);
    // A close request seen on chain refuses it.
    let mut closing = chain_facts(2_000);
    closing.close_requested_at = 9;
    assert_eq!(
        on_voucher(
            Some(&r),
            &id,
            &claim(id, 150),
            &POLICY,
            Some((&closing, NOW + 10)),
            NOW
        ),
        Err(SessionError::ChannelClosing {
            channel: id,
            close_requested_at: 9
        })
    );
    // A vanished channel is not found.
    assert_eq!(
        on_voucher(
            Some(&r),
            &id,
            &claim(id, 150),
            &POLICY,
            Some((&OnChainChannel::default(), NOW + 10)),
            NOW
        ),
        Err(SessionError::ChannelNotFound { channel: id })
    );
    // A settlement above the voucher makes it worthless.
    let mut settled = chain_facts(1_000);
    settled.settled = 500;
    assert_eq!(
        on_voucher(
            Some(&r),
            &id,
            &claim(id, 400),
            &POLICY,
            Some((&settled, NOW + 10)),
            NOW
        ),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::NotAboveSettled {
                settled: 500,
                got: 400
            }
        })
    );
}

#[test]
fn settled_funds_count_as_spent_when_the_engine_holds_no_voucher() {
    // The engine opens a channel it never saw vouchers for, on which 300 was settled.
    let r = open_channel(1_000, 0, 0);
    let id = r.channel_id;
    let mut settled = chain_facts(1_000);
    settled.settled = 300;
    let t = on_voucher(
        Some(&r),
        &id,
        &claim(id, 500),
        &POLICY,
        Some((&settled, NOW)),
        NOW,
    )
    .expect("accept");
    assert_eq!(
        (
            t.record.accepted_cumulative,
            t.record.spent,
            t.record.available()
        ),
        (500, 300, 200)
    );
    // Later settlements of vouchers the engine accepted do not touch spent.
    let mut later = chain_facts(1_000);
    later.settled = 500;
    let t2 = on_voucher(
        Some(&t.record),
        &id,
        &claim(id, 600),
        &POLICY,
        Some((&later, NOW + 1)),
        NOW + 1,
    )
    .expect("accept");
    assert_eq!((t2.record.spent, t2.record.available()), (300, 300));
}

#[test]
fn units_covered_is_bounded_by_the_batch_and_the_vouchers() {
    let r = open_channel(1_000, 100, 30);
    // 70 available at 25 a unit: 2 units.
    assert_eq!(units_covered(&r, 25, 8), 2);
    assert_eq!(units_covered(&r, 25, 1), 1);
    assert_eq!(units_covered(&r, 25, 0), 0);
    assert_eq!(units_covered(&r, 10, 5), 5);
    assert_eq!(units_covered(&r, 71, 5), 0);
    // A free unit is always covered, up to the batch.
    assert_eq!(units_covered(&r, 0, 7), 7);
    // More units than fit a u64 are capped at the batch.
    let huge = open_channel(u128::MAX, u128::MAX, 0);
    assert_eq!(units_covered(&huge, 1, u64::MAX), u64::MAX);
}

#[test]
fn releasing_gives_back_unserved_units_never_below_settled() {
    let mut r = open_channel(1_000, 100, 0);
    let id = r.channel_id;
    r = charge(Some(&r), &id, 10, 8, NOW).expect("reserve").record;
    assert_eq!((r.spent, r.units), (80, 8));
    let t = release(Some(&r), &id, 10, 5, NOW + 1).expect("release");
    assert!(t.write);
    assert_eq!((t.record.spent, t.record.units), (30, 3));
    assert_eq!(t.record.updated_at_ms, NOW + 1);
    assert_eq!(t.record.accepted_cumulative, 100);
    // Zero units: nothing to write.
    let zero = release(Some(&r), &id, 10, 0, NOW).expect("no-op");
    assert!(!zero.write);
    assert_eq!(zero.record, r);
    // Never below what the escrow settled.
    let mut settled = r;
    settled.settled = 50;
    let t = release(Some(&settled), &id, 10, 5, NOW).expect("release");
    assert_eq!(t.record.spent, 50);
    // Never more than was spent, and a refusal names the amounts.
    assert_eq!(
        release(Some(&r), &id, 10, 9, NOW),
        Err(SessionError::ReleaseExceedsSpent {
            channel: id,
            released: 90,
            spent: 80
        })
    );
    assert!(matches!(
        release(Some(&r), &id, u128::MAX, 2, NOW),
        Err(SessionError::ChargeOverflow { .. })
    ));
    assert_eq!(
        release(None, &id, 1, 1, NOW),
        Err(SessionError::ChannelNotFound { channel: id })
    );
    // Allowed once the channel is closing: it only gives the payer back what it was not served.
    let mut closing = r;
    closing.status = ChannelStatus::Closing;
    assert_eq!(
        release(Some(&closing), &id, 10, 8, NOW)
            .expect("release")
            .record
            .spent,
        0
    );
    assert_eq!(
        SessionError::ReleaseExceedsSpent {
            channel: id,
            released: 1,
            spent: 0
        }
        .problem_kind(),
        ProblemKind::InternalPaymentError
    );
}

#[test]
fn charging_moves_available_to_spent() {
    let r = open_channel(1_000, 100, 0);
    let id = r.channel_id;
    let t = charge(Some(&r), &id, 25, 3, NOW + 1).expect("charge");
    assert_eq!(
        (t.record.spent, t.record.units, t.record.available()),
        (75, 3, 25)
    );
    assert!(t.write);
    let zero = charge(Some(&r), &id, 25, 0, NOW).expect("no-op");
    assert!(!zero.write);
    assert_eq!(zero.record, r);
    assert_eq!(
        charge(Some(&t.record), &id, 25, 2, NOW),
        Err(SessionError::InsufficientBalance {
            channel: id,
            required: 50,
            available: 25,
            required_cumulative: 125
        })
    );
    assert_eq!(
        charge(Some(&r), &id, u128::MAX, 2, NOW),
        Err(SessionError::ChargeOverflow {
            channel: id,
            amount: u128::MAX,
            units: 2
        })
    );
    let mut full_units = r;
    full_units.units = u64::MAX;
    assert!(matches!(
        charge(Some(&full_units), &id, 0, 1, NOW),
        Err(SessionError::ChargeOverflow { .. })
    ));
    assert_eq!(
        charge(None, &id, 1, 1, NOW),
        Err(SessionError::ChannelNotFound { channel: id })
    );
    let mut closing = r;
    closing.status = ChannelStatus::Closing;
    assert!(matches!(
        charge(Some(&closing), &id, 1, 1, NOW),
        Err(SessionError::ChannelFinalized { .. })
    ));
    // A pending close request does not stop charges against accepted vouchers.
    let mut requested = r;
    requested.close_requested_at = 5;
    assert!(charge(Some(&requested), &id, 1, 1, NOW).is_ok());
}

#[test]
fn top_ups_must_grow_the_deposit() {
    let r = open_channel(1_000, 100, 0);
    let id = r.channel_id;
    let top_up = DecodedTopUp {
        tx_hash: B256::repeat_byte(1),
        sender: PAYER,
        channel_id: id,
        additional_deposit: 500,
    };
    let mut after = chain_facts(1_500);
    after.close_requested_at = 0;
    fn input<'a>(
        top_up: &'a DecodedTopUp,
        chain: &'a OnChainChannel,
        before: u128,
    ) -> TopUpInput<'a> {
        TopUpInput {
            top_up,
            chain,
            chain_read_at_ms: NOW + 1,
            deposit_before: before,
            now_ms: NOW + 1,
        }
    }
    let t = on_top_up(Some(&r), &input(&top_up, &after, 1_000)).expect("top up");
    assert!(t.write);
    assert_eq!(t.record.deposit, 1_500);
    // A racing top-up: this one's read already includes the other's 200.
    let t =
        on_top_up(Some(&r), &input(&top_up, &chain_facts(1_700), 1_000)).expect("racing top up");
    assert_eq!(t.record.deposit, 1_700);
    assert_eq!(
        on_top_up(Some(&r), &input(&top_up, &chain_facts(1_200), 1_000)),
        Err(SessionError::DepositDidNotGrow {
            channel: id,
            before: 1_000,
            after: 1_200,
            additional: 500
        })
    );
    let foreign = DecodedTopUp {
        sender: Address::repeat_byte(9),
        ..top_up
    };
    assert_eq!(
        on_top_up(
            Some(&r),
            &TopUpInput {
                top_up: &foreign,
                ..input(&top_up, &after, 1_000)
            }
        ),
        Err(SessionError::TopUpNotFromPayer {
            channel: id,
            payer: PAYER,
            sender: Address::repeat_byte(9)
        })
    );
    // A top-up cancels a pending close request on chain; the record follows.
    let mut requested = r;
    requested.close_requested_at = 42;
    let t = on_top_up(Some(&requested), &input(&top_up, &after, 1_000)).expect("cancels close");
    assert_eq!(t.record.close_requested_at, 0);
    assert_eq!(
        on_top_up(None, &input(&top_up, &after, 1_000)),
        Err(SessionError::ChannelNotFound { channel: id })
    );
    let finalized = OnChainChannel {
        finalized: true,
        ..OnChainChannel::default()
    };
    assert!(matches!(
        on_top_up(Some(&r), &input(&top_up, &finalized, 1_000)),
        Err(SessionError::ChannelFinalized { .. })
    ));
}

#[test]
fn close_needs_a_voucher_covering_spent_and_settled() {
    let r = open_channel(1_000, 300, 200);
    let id = r.channel_id;
    assert_eq!(
        on_close(Some(&r), &id, &claim(id, 199), None, NOW),
        Err(SessionError::CloseBelowRequired {
            channel: id,
            got: 199,
            required: 200
        })
    );
    let mut settled = chain_facts(1_000);
    settled.settled = 250;
    assert_eq!(
        on_close(Some(&r), &id, &claim(id, 240), Some((&settled, NOW)), NOW),
        Err(SessionError::CloseBelowRequired {
            channel: id,
            got: 240,
            required: 250
        })
    );
    assert_eq!(
        on_close(Some(&r), &id, &claim(id, 1_001), None, NOW),
        Err(SessionError::Rejected {
            channel: id,
            reason: RejectReason::ExceedsDeposit {
                deposit: 1_000,
                got: 1_001
            }
        })
    );
    // Below the accepted voucher: the higher stored voucher stays; the channel is closing.
    let t = on_close(Some(&r), &id, &claim(id, 250), None, NOW + 3).expect("close");
    assert_eq!(t.voucher, Some(VoucherOutcome::Retry));
    assert_eq!(t.record.status, ChannelStatus::Closing);
    assert_eq!(t.record.accepted_cumulative, 300);
    assert_eq!(t.record.accepted_signature, r.accepted_signature);
    // Above: it becomes the accepted voucher.
    let t = on_close(Some(&r), &id, &claim(id, 400), None, NOW + 3).expect("close");
    assert_eq!(t.voucher, Some(VoucherOutcome::Accepted { delta: 100 }));
    assert_eq!(
        (t.record.status, t.record.accepted_cumulative),
        (ChannelStatus::Closing, 400)
    );
    let closing = t.record;
    // Then: no vouchers, no charges, a repeated close is a retry, a higher one is refused.
    assert!(matches!(
        on_voucher(Some(&closing), &id, &claim(id, 500), &POLICY, None, NOW),
        Err(SessionError::ChannelFinalized { .. })
    ));
    assert!(matches!(
        charge(Some(&closing), &id, 1, 1, NOW),
        Err(SessionError::ChannelFinalized { .. })
    ));
    let again = on_close(Some(&closing), &id, &claim(id, 400), None, NOW + 4).expect("retry");
    assert!(!again.write);
    assert_eq!(again.voucher, Some(VoucherOutcome::Retry));
    assert!(matches!(
        on_close(Some(&closing), &id, &claim(id, 401), None, NOW),
        Err(SessionError::ChannelFinalized { .. })
    ));
    // A close request pending on chain does not stop a cooperative close.
    let mut requested = r;
    requested.close_requested_at = 8;
    assert!(on_close(Some(&requested), &id, &claim(id, 300), None, NOW).is_ok());
    let mut finalized = r;
    finalized.finalized = true;
    assert!(matches!(
        on_close(Some(&finalized), &id, &claim(id, 300), None, NOW),
        Err(SessionError::ChannelFinalized { .. })
    ));
}

#[test]
fn prechecks_skip_ecdsa_only_for_a_byte_identical_retry() {
    let r = open_channel(1_000, 100, 0);
    let id = r.channel_id;
    let same = VoucherClaim {
        cumulative_amount: 100,
        signature: r.accepted_signature,
    };
    assert_eq!(
        precheck_voucher(Some(&r), &id, &same, &POLICY, None),
        Ok(SignatureCheck::Skip)
    );
    // The same amount with other (even valid) signature bytes must be verified.
    let mut other_bytes = same;
    other_bytes.signature[5] ^= 1;
    assert_eq!(
        precheck_voucher(Some(&r), &id, &other_bytes, &POLICY, None),
        Ok(SignatureCheck::Verify { signer: PAYER })
    );
    assert_eq!(
        precheck_voucher(Some(&r), &id, &claim(id, 150), &POLICY, None),
        Ok(SignatureCheck::Verify { signer: PAYER })
    );
    // Refusals are decided before any signature work.
    assert!(matches!(
        precheck_voucher(Some(&r), &id, &claim(id, 50), &POLICY, None),
        Err(SessionError::Rejected { .. })
    ));
    // The expected signer is the channel's authorized signer when it has one.
    let mut delegated = r;
    delegated.authorized_signer = Address::repeat_byte(0xd);
    assert_eq!(
        precheck_voucher(Some(&delegated), &id, &claim(id, 150), &POLICY, None),
        Ok(SignatureCheck::Verify {
            signer: Address::repeat_byte(0xd)
        })
    );
    // A fresh channel's zero open voucher has no stored bytes to match: it is verified.
    let fresh = open_channel(1_000, 0, 0);
    let zero = claim(fresh.channel_id, 0);
    assert_eq!(
        precheck_voucher(Some(&fresh), &fresh.channel_id, &zero, &POLICY, None),
        Ok(SignatureCheck::Verify { signer: PAYER })
    );
    // Close: a retry of the accepted voucher skips, a lower close voucher is verified.
    assert_eq!(
        precheck_close(Some(&r), &id, &same, None),
        Ok(SignatureCheck::Skip)
    );
    assert_eq!(
        precheck_close(Some(&r), &id, &claim(id, 60), None),
        Ok(SignatureCheck::Verify { signer: PAYER })
    );
}

#[test]
fn chain_facts_merge_monotonically() {
    let r = open_channel(1_000, 100, 0);
    // A stale read (older than the record's) cannot lower the deposit or revive a close request.
    let mut stale = chain_facts(900);
    stale.close_requested_at = 5;
    let merged = merge_chain_facts(&r, &stale, NOW - 1).expect("merge");
    assert_eq!(merged.deposit, 1_000);
    assert_eq!(merged.close_requested_at, 0);
    assert_eq!(merged.chain_checked_at_ms, NOW);
    // A newer one sets and clears it.
    let merged = merge_chain_facts(&r, &stale, NOW + 1).expect("merge");
    assert_eq!(merged.close_requested_at, 5);
    let cleared = merge_chain_facts(&merged, &chain_facts(1_000), NOW + 2).expect("merge");
    assert_eq!(cleared.close_requested_at, 0);
    // Finalized is sticky and keeps the cached amounts (the escrow's record is a tombstone).
    let tombstone = OnChainChannel {
        finalized: true,
        ..OnChainChannel::default()
    };
    let closed = merge_chain_facts(&r, &tombstone, NOW + 3).expect("merge");
    assert!(closed.finalized);
    assert_eq!(closed.status, ChannelStatus::Closed);
    assert_eq!((closed.deposit, closed.payer), (1_000, PAYER));
    let still = merge_chain_facts(&closed, &chain_facts(1_000), NOW + 4).expect("merge");
    assert!(still.finalized);
}

#[test]
fn every_error_has_the_mppx_problem_class() {
    let id = B256::ZERO;
    let cases = [
        (SessionError::ChannelNotFound { channel: id }, 410),
        (
            SessionError::ChannelClosing {
                channel: id,
                close_requested_at: 1,
            },
            410,
        ),
        (
            SessionError::Rejected {
                channel: id,
                reason: RejectReason::DeltaTooSmall { min: 2, delta: 1 },
            },
            402,
        ),
        (
            SessionError::InsufficientBalance {
                channel: id,
                required: 2,
                available: 1,
                required_cumulative: 2,
            },
            402,
        ),
        (
            SessionError::TxWrongChain {
                expected: 1,
                got: None,
            },
            402,
        ),
    ];
    for (err, status) in cases {
        assert_eq!(err.problem_kind().status(), status, "{err}");
    }
    assert_eq!(
        SessionError::Rejected {
            channel: id,
            reason: RejectReason::ExceedsDeposit { deposit: 1, got: 2 }
        }
        .problem_kind(),
        ProblemKind::AmountExceedsDeposit
    );
    assert_eq!(
        SessionError::InsufficientBalance {
            channel: id,
            required: 25,
            available: 0,
            required_cumulative: 25
        }
        .problem_kind(),
        ProblemKind::InsufficientBalance
    );
}
