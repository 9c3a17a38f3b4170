//! Hostile and mistaken credentials against the engine on a real anvil chain. Each is refused
//! with its own typed error and RFC 9457 class, and none changes anything: the stored record
//! (byte for byte), the settlement feed and, for transactions, the chain (the payer's nonce).

mod support;

use std::future::Future;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::sol_types::SolCall;
use sluice_contracts::SluiceEscrow;
use sluice_engine::feed::{FeedCursor, FeedPage};
use sluice_engine::protocol::{
    ChallengeSecret, HexAddress, OpenPayload, PinnedField, ProblemKind, ProtocolError,
    SessionPayload, SessionRoute, base64url_decode, base64url_encode,
};
use sluice_engine::session::SessionError;
use sluice_engine::store::{ChannelStore, MemoryStore, RECORD_LEN};
use sluice_engine::{Authorized, EngineError, RoutePrice};
use sluice_voucher::{RejectReason, Voucher, VoucherDomain, VoucherError, sign_voucher};
use support::anvil::CHAIN_ID;
use support::session::{Client, Harness, credential, later, now};

const TOKENS: u128 = 10_000;
const DEPOSIT: u128 = 1_000;

/// An edit of a route's terms, to issue a challenge for terms the engine does not serve.
type RouteEdit<'a> = &'a dyn Fn(&mut SessionRoute);
/// What a refused transaction's error must look like.
type Expected = Box<dyn Fn(&SessionError) -> bool>;

type Snapshot = (Vec<Option<[u8; RECORD_LEN]>>, FeedPage);

fn snapshot(h: &Harness<MemoryStore>, channels: &[B256]) -> Snapshot {
    let records = channels
        .iter()
        .map(|c| h.record(c).map(|r| r.to_bytes()))
        .collect();
    let feed = h
        .engine
        .store()
        .read_feed(FeedCursor::ZERO, 1_000)
        .expect("feed");
    (records, feed)
}

/// Runs `attempt`, requires it to fail with `kind`, and requires the records of `channels` and
/// the feed to be exactly as before. Returns the error for closer checks.
async fn refused(
    h: &Harness<MemoryStore>,
    channels: &[B256],
    kind: ProblemKind,
    attempt: impl Future<Output = Result<Authorized, EngineError>>,
) -> EngineError {
    let before = snapshot(h, channels);
    let error = attempt.await.expect_err("must be refused");
    assert_eq!(error.problem_kind(), kind, "{error}");
    assert_eq!(
        snapshot(h, channels),
        before,
        "refusal changed state: {error}"
    );
    error
}

async fn nonce(h: &Harness<MemoryStore>, account: Address) -> u64 {
    ProviderBuilder::new()
        .connect_http(h.chain.rpc_url())
        .get_transaction_count(account)
        .await
        .expect("nonce")
}

/// An engine on anvil with one open channel (deposit 1,000, voucher 100, 25 spent).
async fn opened() -> (Harness<MemoryStore>, Client) {
    let h = Harness::start(MemoryStore::new()).await;
    let mut client = h.client(2, TOKENS).await;
    let open = client.open(
        &h.challenge(),
        DEPOSIT,
        B256::repeat_byte(1),
        Address::ZERO,
        100,
    );
    h.engine
        .authorize_and_charge(&h.route, &open, 1, now())
        .await
        .expect("open");
    (h, client)
}

fn malleate(signature: &Bytes) -> Bytes {
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .expect("n");
    let mut bytes = signature.to_vec();
    let s = U256::from_be_slice(&bytes[32..64]);
    bytes[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    bytes[64] = 55 - bytes[64]; // 27 <-> 28
    bytes.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forged_and_expired_challenges_are_refused() {
    let (h, client) = opened().await;
    let channels = [client.channel];
    let secret = ChallengeSecret::new(support::session::SECRET).expect("secret");
    let expires = later(60);
    let reissue = |edit: RouteEdit<'_>| {
        let mut route = h.route.session_route().clone();
        edit(&mut route);
        route.issue(&secret, expires).expect("issue")
    };
    let mismatch = |error: EngineError| match error {
        EngineError::Protocol(ProtocolError::ChallengeMismatch { field, .. }) => field,
        other => panic!("expected a pinned-field mismatch, got {other}"),
    };

    // Issued by this server's secret, but for another realm, escrow or chain.
    let cases: [(RouteEdit<'_>, PinnedField); 4] = [
        (&|r| r.realm = "other.example".into(), PinnedField::Realm),
        (
            &|r| {
                r.request.method_details.escrow_contract =
                    HexAddress::from_address(Address::repeat_byte(0xee))
            },
            PinnedField::EscrowContract,
        ),
        (
            &|r| r.request.method_details.chain_id = 1,
            PinnedField::ChainId,
        ),
        (
            &|r| r.request.currency = HexAddress::from_address(Address::repeat_byte(1)),
            PinnedField::Currency,
        ),
    ];
    for (edit, field) in cases {
        let challenge = reissue(edit);
        let header = client.voucher(&challenge, 200);
        let error = refused(
            &h,
            &channels,
            ProblemKind::InvalidChallenge,
            h.engine.authorize(&h.route, &header, now()),
        )
        .await;
        assert_eq!(mismatch(error), field);
    }

    // A challenge of another route of this engine: another route id, or another price.
    let mut images = RoutePrice::new(support::session::PRICE, "request");
    images.route_id = Some("images".into());
    let images = h.engine.route(images).expect("route");
    let mut pricier = RoutePrice::new(50, "request");
    pricier.route_id = Some("chat".into());
    let pricier = h.engine.route(pricier).expect("route");
    for (other, field) in [
        (&images, PinnedField::Opaque),
        (&pricier, PinnedField::Amount),
    ] {
        let challenge = h.engine.challenge(other, now(), None).expect("challenge");
        let header = client.voucher(&challenge, 200);
        let error = refused(
            &h,
            &channels,
            ProblemKind::InvalidChallenge,
            h.engine.authorize(&h.route, &header, now()),
        )
        .await;
        assert_eq!(mismatch(error), field);
        // ...which that route itself accepts.
        assert!(h.engine.authorize(other, &header, now()).await.is_ok());
    }

    // Not issued here (another secret).
    let foreign = ChallengeSecret::new("a-completely-different-secret-of-32-bytes").expect("s");
    let forged = h
        .route
        .session_route()
        .issue(&foreign, expires)
        .expect("issue");
    let error = refused(
        &h,
        &channels,
        ProblemKind::InvalidChallenge,
        h.engine
            .authorize(&h.route, &client.voucher(&forged, 300), now()),
    )
    .await;
    assert!(matches!(
        error,
        EngineError::Protocol(ProtocolError::ChallengeNotIssued { .. })
    ));

    // Expired: answered after the challenge's TTL.
    let challenge = h.challenge();
    let error = refused(
        &h,
        &channels,
        ProblemKind::PaymentExpired,
        h.engine
            .authorize(&h.route, &client.voucher(&challenge, 300), later(301)),
    )
    .await;
    assert!(matches!(
        error,
        EngineError::Protocol(ProtocolError::ChallengeExpired { .. })
    ));

    // Malformed headers and payloads.
    refused(
        &h,
        &channels,
        ProblemKind::MalformedCredential,
        h.engine.authorize(&h.route, "Payment !!!not-base64", now()),
    )
    .await;
    let valid = client.voucher(&challenge, 300);
    let json = base64url_decode(valid.trim_start_matches("Payment ")).expect("b64");
    let json = String::from_utf8(json)
        .expect("utf8")
        .replace("\"action\":\"voucher\"", "\"action\":\"refund\"");
    let unknown_action = format!("Payment {}", base64url_encode(json));
    refused(
        &h,
        &channels,
        ProblemKind::InvalidPayload,
        h.engine.authorize(&h.route, &unknown_action, now()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_with_bad_signatures_or_amounts_are_refused() {
    let (h, client) = opened().await;
    let challenge = h.challenge();
    let a = client.channel;
    // A second channel, of another payer.
    let mut other = h.client(3, TOKENS).await;
    let open = other.open(&challenge, DEPOSIT, B256::repeat_byte(2), Address::ZERO, 10);
    h.engine
        .authorize(&h.route, &open, now())
        .await
        .expect("second channel");
    let b = other.channel;
    let channels = [a, b];
    let signature_error = |error: EngineError| match error {
        EngineError::Signature { source, .. } => source,
        other => panic!("expected a signature error, got {other}"),
    };

    // The other channel's voucher (signed by its payer, for its channel) sent for this one.
    let theirs = other.sign(b, 200);
    let error = refused(
        &h,
        &channels,
        ProblemKind::InvalidSignature,
        h.engine.authorize(
            &h.route,
            &client.voucher_with(&challenge, 200, theirs),
            now(),
        ),
    )
    .await;
    signature_error(error);
    // This payer's signature over the other channel's id.
    let wrong_channel = client.sign(b, 200);
    refused(
        &h,
        &channels,
        ProblemKind::InvalidSignature,
        h.engine.authorize(
            &h.route,
            &client.voucher_with(&challenge, 200, wrong_channel),
            now(),
        ),
    )
    .await;
    // Signed under another chain's or another escrow's EIP-712 domain.
    for domain in [
        VoucherDomain::tempo_v1(1, h.chain.escrow),
        VoucherDomain::tempo_v1(CHAIN_ID, Address::repeat_byte(0xee)),
    ] {
        let signature: Bytes =
            sign_voucher(&domain, &Voucher::new(a.into(), 200), &client.voucher_key)
                .signature
                .to_bytes65()
                .to_vec()
                .into();
        refused(
            &h,
            &channels,
            ProblemKind::InvalidSignature,
            h.engine.authorize(
                &h.route,
                &client.voucher_with(&challenge, 200, signature),
                now(),
            ),
        )
        .await;
    }
    // The malleable high-s twin of a valid signature.
    let high_s = malleate(&client.sign(a, 200));
    let error = refused(
        &h,
        &channels,
        ProblemKind::InvalidSignature,
        h.engine.authorize(
            &h.route,
            &client.voucher_with(&challenge, 200, high_s),
            now(),
        ),
    )
    .await;
    assert_eq!(signature_error(error), VoucherError::HighS);
    // Malformed bytes.
    let mut bad_v = client.sign(a, 200).to_vec();
    bad_v[64] = 1;
    for (bytes, expected) in [
        (
            Bytes::from(vec![0x11; 63]),
            VoucherError::InvalidLength { len: 63 },
        ),
        (Bytes::from(bad_v), VoucherError::InvalidRecoveryId { v: 1 }),
    ] {
        let error = refused(
            &h,
            &channels,
            ProblemKind::InvalidSignature,
            h.engine.authorize(
                &h.route,
                &client.voucher_with(&challenge, 200, bytes),
                now(),
            ),
        )
        .await;
        assert_eq!(signature_error(error), expected);
    }

    // Amounts: above the deposit, u128::MAX, below the accepted amount.
    let rejection = |error: EngineError| match error {
        EngineError::Session(SessionError::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other}"),
    };
    for amount in [DEPOSIT + 1, u128::MAX] {
        let error = refused(
            &h,
            &channels,
            ProblemKind::AmountExceedsDeposit,
            h.engine
                .authorize(&h.route, &client.voucher(&challenge, amount), now()),
        )
        .await;
        assert_eq!(
            rejection(error),
            RejectReason::ExceedsDeposit {
                deposit: DEPOSIT,
                got: amount
            }
        );
    }
    let error = refused(
        &h,
        &channels,
        ProblemKind::VerificationFailed,
        h.engine
            .authorize(&h.route, &client.voucher(&challenge, 99), now()),
    )
    .await;
    assert_eq!(
        rejection(error),
        RejectReason::AmountNotIncreasing {
            accepted: 100,
            got: 99
        }
    );
    // A route with a minimum voucher delta.
    let mut strict = RoutePrice::new(support::session::PRICE, "request");
    strict.route_id = Some("chat".into());
    strict.min_voucher_delta = Some(100);
    let strict = h.engine.route(strict).expect("route");
    let strict_challenge = h.engine.challenge(&strict, now(), None).expect("challenge");
    let error = refused(
        &h,
        &channels,
        ProblemKind::DeltaTooSmall,
        h.engine
            .authorize(&strict, &client.voucher(&strict_challenge, 150), now()),
    )
    .await;
    assert_eq!(
        rejection(error),
        RejectReason::DeltaTooSmall {
            min: 100,
            delta: 50
        }
    );
    // An unknown channel.
    let mut stranger = h.client(4, 0).await;
    stranger.channel = B256::repeat_byte(0x99);
    refused(
        &h,
        &[stranger.channel],
        ProblemKind::ChannelNotFound,
        h.engine
            .authorize(&h.route, &stranger.voucher(&challenge, 1), now()),
    )
    .await;
    // A close below what was spent.
    let error = refused(
        &h,
        &channels,
        ProblemKind::VerificationFailed,
        h.engine
            .authorize(&h.route, &client.close(&challenge, 24), now()),
    )
    .await;
    assert!(matches!(
        error,
        EngineError::Session(SessionError::CloseBelowRequired {
            got: 24,
            required: 25,
            ..
        })
    ));

    // After all that, the honest next voucher still goes through.
    h.engine
        .authorize(&h.route, &client.voucher(&challenge, 200), now())
        .await
        .expect("honest voucher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactions_are_refused_before_anything_is_broadcast() {
    let (h, mut client) = opened().await;
    let challenge = h.challenge();
    let a = client.channel;
    let payer = client.address();
    let nonce_before = nonce(&h, payer).await;
    assert_eq!(nonce_before, client.payer.next_nonce());
    let open_call = |payee: Address, salt: u8| {
        SluiceEscrow::openCall {
            payee,
            token: h.chain.token,
            deposit: 500,
            salt: B256::repeat_byte(salt),
            authorizedSigner: Address::ZERO,
        }
        .abi_encode()
    };
    let open_credential = |transaction: Bytes, channel: B256| {
        credential(
            &challenge,
            SessionPayload::Open(OpenPayload {
                channel_id: channel,
                transaction,
                cumulative_amount: 0,
                signature: client.sign(channel, 0),
                authorized_signer: None,
                descriptor: None,
            }),
            None,
        )
    };
    let salt_channel = |salt: u8| {
        h.chain
            .channel_id(payer, h.payee, B256::repeat_byte(salt), Address::ZERO)
    };
    let session = |error: EngineError| match error {
        EngineError::Session(error) => error,
        other => panic!("expected a session error, got {other}"),
    };
    let next = client.payer.next_nonce();

    // To another contract (the token), for another chain, for another payee, under a channel id
    // that is not the one the transaction creates, with an initial voucher of someone else.
    let cases: Vec<(Bytes, B256, Expected)> = vec![
        (
            client
                .payer
                .sign_call_at(next, CHAIN_ID, h.chain.token, open_call(h.payee, 7)),
            salt_channel(7),
            Box::new(|e| matches!(e, SessionError::TxWrongTarget { .. })),
        ),
        (
            client
                .payer
                .sign_call_at(next, 1, h.chain.escrow, open_call(h.payee, 8)),
            salt_channel(8),
            Box::new(|e| {
                matches!(
                    e,
                    SessionError::TxWrongChain {
                        expected: CHAIN_ID,
                        got: Some(1)
                    }
                )
            }),
        ),
        (
            client.payer.sign_call_at(
                next,
                CHAIN_ID,
                h.chain.escrow,
                open_call(Address::repeat_byte(0x42), 9),
            ),
            h.chain.channel_id(
                payer,
                Address::repeat_byte(0x42),
                B256::repeat_byte(9),
                Address::ZERO,
            ),
            Box::new(|e| matches!(e, SessionError::PayeeMismatch { .. })),
        ),
        (
            client
                .payer
                .sign_call_at(next, CHAIN_ID, h.chain.escrow, open_call(h.payee, 10)),
            salt_channel(11),
            Box::new(|e| matches!(e, SessionError::ChannelIdMismatch { .. })),
        ),
    ];
    for (transaction, channel, expected) in cases {
        let error = refused(
            &h,
            &[a, channel],
            ProblemKind::VerificationFailed,
            h.engine
                .authorize(&h.route, &open_credential(transaction, channel), now()),
        )
        .await;
        let error = session(error);
        assert!(expected(&error), "{error}");
        assert!(h.record(&channel).is_none());
    }
    // A valid open transaction whose initial voucher another key signed.
    let transaction =
        client
            .payer
            .sign_call_at(next, CHAIN_ID, h.chain.escrow, open_call(h.payee, 12));
    let channel = salt_channel(12);
    let stranger = h.client(5, 0).await;
    let forged = credential(
        &challenge,
        SessionPayload::Open(OpenPayload {
            channel_id: channel,
            transaction,
            cumulative_amount: 0,
            signature: stranger.sign(channel, 0),
            authorized_signer: None,
            descriptor: None,
        }),
        None,
    );
    refused(
        &h,
        &[a, channel],
        ProblemKind::InvalidSignature,
        h.engine.authorize(&h.route, &forged, now()),
    )
    .await;
    assert_eq!(
        nonce(&h, payer).await,
        nonce_before,
        "nothing was broadcast"
    );

    // A top-up of this channel signed by another account, and one whose amount differs from
    // the credential's.
    let mut intruder = h.client(6, TOKENS).await;
    intruder.channel = a;
    let intruder_nonce = nonce(&h, intruder.address()).await;
    let header = intruder.top_up(&challenge, 100);
    let error = refused(
        &h,
        &[a],
        ProblemKind::VerificationFailed,
        h.engine.authorize(&h.route, &header, now()),
    )
    .await;
    assert!(matches!(
        session(error),
        SessionError::TopUpNotFromPayer { .. }
    ));
    assert_eq!(nonce(&h, intruder.address()).await, intruder_nonce);
    let raw = client.payer.sign_call_at(
        next,
        CHAIN_ID,
        h.chain.escrow,
        SluiceEscrow::topUpCall {
            channelId: a,
            additionalDeposit: U256::from(100),
        }
        .abi_encode(),
    );
    let header = credential(
        &challenge,
        SessionPayload::TopUp(sluice_engine::protocol::TopUpPayload {
            channel_id: a,
            transaction: raw,
            additional_deposit: 1_000_000,
            descriptor: None,
        }),
        None,
    );
    let error = refused(
        &h,
        &[a],
        ProblemKind::VerificationFailed,
        h.engine.authorize(&h.route, &header, now()),
    )
    .await;
    assert!(matches!(
        session(error),
        SessionError::TopUpAmountMismatch { .. }
    ));
    assert_eq!(
        nonce(&h, payer).await,
        nonce_before,
        "nothing was broadcast"
    );

    // An open the escrow reverts (no allowance): reported, and no channel is stored.
    let mut unfunded = h.chain.payer(7, 0).await;
    let (transaction, channel) = unfunded.open(h.payee, 500, B256::repeat_byte(13), Address::ZERO);
    let unfunded_key =
        sluice_voucher::SigningKey::from_slice(unfunded.signer.to_bytes().as_slice()).expect("key");
    let signature: Bytes = sign_voucher(
        &VoucherDomain::tempo_v1(CHAIN_ID, h.chain.escrow),
        &Voucher::new(channel.into(), 0),
        &unfunded_key,
    )
    .signature
    .to_bytes65()
    .to_vec()
    .into();
    let header = credential(
        &challenge,
        SessionPayload::Open(OpenPayload {
            channel_id: channel,
            transaction,
            cumulative_amount: 0,
            signature,
            authorized_signer: None,
            descriptor: None,
        }),
        None,
    );
    let error = refused(
        &h,
        &[a, channel],
        ProblemKind::VerificationFailed,
        h.engine.authorize(&h.route, &header, now()),
    )
    .await;
    assert!(
        matches!(error, EngineError::TxReverted { action: "open", .. }),
        "{error}"
    );
    assert!(h.record(&channel).is_none());

    // The honest payer's own next top-up still works.
    let header = client.top_up(&challenge, 100);
    let topped = h
        .engine
        .authorize(&h.route, &header, now())
        .await
        .expect("honest top-up");
    assert_eq!(topped.record.deposit, DEPOSIT + 100);
}
