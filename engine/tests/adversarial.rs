//! Hostile and malformed input: every case ends in the right typed error (and problem type),
//! never a panic, and verification accepts only what this server issued for this route.

use std::collections::BTreeMap;

use alloy_primitives::{B256, Bytes};
use serde_json::{Value, json};
use sluice_engine::protocol::{
    AcceptPayment, Challenge, ChallengeSecret, Credential, Did, HexAddress, IdFields,
    MAX_HEADER_VALUE_LEN, MAX_REQUEST_PARAM_LEN, PinnedField, ProblemKind, ProtocolError,
    SessionMethodDetails, SessionPayload, SessionProtocol, SessionReceipt, SessionRequest,
    SessionRoute, Timestamp, VoucherPayload, base64url_decode, base64url_encode,
    parse_authorization, parse_www_authenticate,
};

const SECRET: &str = "an-adversarial-test-secret-of-40-bytes!!";

fn secret() -> ChallengeSecret {
    ChallengeSecret::new(SECRET).unwrap()
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn expires() -> Timestamp {
    ts("2030-01-01T00:00:00Z")
}

fn before_expiry() -> Timestamp {
    ts("2029-12-31T23:59:59.999Z")
}

fn addr(s: &str) -> HexAddress {
    HexAddress::parse(s).unwrap()
}

fn route() -> SessionRoute {
    SessionRoute {
        realm: "api.example.com".into(),
        request: SessionRequest {
            amount: 25,
            currency: addr("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            recipient: addr("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
            unit_type: "llm_token".into(),
            suggested_deposit: Some(10_000_000),
            description: None,
            external_id: None,
            method_details: SessionMethodDetails {
                escrow_contract: addr("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"),
                chain_id: 31337,
                channel_id: None,
                min_voucher_delta: Some(0),
                session_protocol: Some(SessionProtocol::V1),
                fee_payer: None,
                fee_token: None,
                operator: None,
            },
        },
        opaque: Some(BTreeMap::from([("routeId".to_owned(), "chat".to_owned())])),
        description: Some("LLM tokens".into()),
    }
}

fn voucher_payload() -> SessionPayload {
    SessionPayload::Voucher(VoucherPayload {
        channel_id: B256::repeat_byte(0x5c),
        cumulative_amount: 250_000,
        signature: Bytes::from(vec![0x11; 65]),
        descriptor: None,
    })
}

fn credential_for(challenge: Challenge) -> String {
    Credential {
        challenge,
        payload: voucher_payload(),
        source: Some(Did::pkh_eip155(
            31337,
            addr("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266").address(),
        )),
    }
    .to_header_value()
}

/// The decoded JSON inside a credential header.
fn wire(header: &str) -> Value {
    serde_json::from_slice(&base64url_decode(header.strip_prefix("Payment ").unwrap()).unwrap())
        .unwrap()
}

fn header_of(wire: &Value) -> String {
    format!(
        "Payment {}",
        base64url_encode(serde_json::to_string(wire).unwrap())
    )
}

/// Issues under `r`, echoes through a credential, verifies under `route()`.
fn verify_via_credential(
    issued: Challenge,
    now: Timestamp,
) -> Result<SessionRequest, ProtocolError> {
    let credential = parse_authorization(&credential_for(issued))?;
    route().verify(&credential.challenge, &secret(), now)
}

#[test]
fn genuine_credential_verifies_and_returns_the_echoed_request() {
    let issued = route().issue(&secret(), expires()).unwrap();
    assert_eq!(issued.expires(), Some("2030-01-01T00:00:00.000Z"));
    let request = verify_via_credential(issued, before_expiry()).unwrap();
    assert_eq!(request, route().request);
    // At the very instant of expiry the challenge is still good (mppx: `expires < now` fails).
    let issued = route().issue(&secret(), expires()).unwrap();
    verify_via_credential(issued, expires()).unwrap();
}

#[test]
fn expired_challenge_is_payment_expired() {
    let issued = route().issue(&secret(), expires()).unwrap();
    let err = verify_via_credential(issued.clone(), ts("2030-01-01T00:00:00.001Z")).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ChallengeExpired {
            id: issued.id().to_owned(),
            expires: "2030-01-01T00:00:00.000Z".into()
        }
    );
    assert_eq!(err.problem_kind(), ProblemKind::PaymentExpired);
    assert_eq!(
        err.to_problem().detail(),
        "Payment expired at 2030-01-01T00:00:00.000Z."
    );
}

#[test]
fn missing_or_malformed_expires_is_invalid_challenge() {
    let r = route();
    let no_expires = Challenge::builder(&r.realm, "tempo", "session", r.request.to_json())
        .opaque(r.opaque.clone().unwrap())
        .issue(&secret())
        .unwrap();
    let err = verify_via_credential(no_expires.clone(), before_expiry()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::MissingExpires {
            id: no_expires.id().to_owned()
        }
    );
    assert_eq!(err.problem_kind(), ProblemKind::InvalidChallenge);

    // A well-shaped but impossible date, correctly signed (only a header can carry it: the
    // builder refuses it).
    let request_b64 = no_expires.request_b64();
    let opaque = no_expires.opaque().unwrap();
    let fields = IdFields {
        realm: "api.example.com",
        method: "tempo",
        intent: "session",
        request_b64,
        expires: Some("2030-02-31T00:00:00Z"),
        digest: None,
        header: None,
        opaque: Some(opaque),
    };
    let id = secret().compute_id(&fields);
    let header = format!(
        r#"Payment id="{id}", realm="api.example.com", method="tempo", intent="session", request="{request_b64}", expires="2030-02-31T00:00:00Z", opaque="{opaque}""#
    );
    let challenge = Challenge::from_header_value(&header).unwrap();
    let err = verify_via_credential(challenge, before_expiry()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::MalformedExpires {
            id,
            expires: "2030-02-31T00:00:00Z".into()
        }
    );
    assert_eq!(
        err.to_problem().detail().rsplit(": ").next(),
        Some("malformed expires timestamp.")
    );
}

#[test]
fn forged_or_tampered_challenges_are_not_issued_here() {
    let issued = route().issue(&secret(), expires()).unwrap();
    let genuine = credential_for(issued.clone());

    // Another server's secret.
    let foreign = route()
        .issue(&ChallengeSecret::new([9_u8; 32]).unwrap(), expires())
        .unwrap();
    let err = verify_via_credential(foreign.clone(), before_expiry()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ChallengeNotIssued {
            id: foreign.id().to_owned()
        }
    );

    // Each HMAC-bound field tampered with, id kept.
    let tampered_request = {
        let mut request = issued.request().clone();
        request.insert("amount".into(), json!("1"));
        base64url_encode(serde_json::to_string(&request).unwrap())
    };
    for (field, value) in [
        ("realm", json!("evil.example.com")),
        ("method", json!("evm")),
        ("intent", json!("charge")),
        ("request", json!(tampered_request)),
        ("expires", json!("2099-01-01T00:00:00.000Z")),
        ("digest", json!("sha-256=:AAAA:")),
        ("opaque", json!(base64url_encode(r#"{"routeId":"admin"}"#))),
        ("header", json!("X-Payment")),
    ] {
        let mut w = wire(&genuine);
        w["challenge"][field] = value;
        let credential = parse_authorization(&header_of(&w)).unwrap();
        let err = route()
            .verify(&credential.challenge, &secret(), before_expiry())
            .unwrap_err();
        assert_eq!(
            err,
            ProtocolError::ChallengeNotIssued {
                id: issued.id().to_owned()
            },
            "{field}"
        );
        assert_eq!(err.problem_kind(), ProblemKind::InvalidChallenge);
    }

    // Removing a bound field also breaks the id.
    let mut w = wire(&genuine);
    w["challenge"].as_object_mut().unwrap().remove("opaque");
    let credential = parse_authorization(&header_of(&w)).unwrap();
    assert!(matches!(
        route().verify(&credential.challenge, &secret(), before_expiry()),
        Err(ProtocolError::ChallengeNotIssued { .. })
    ));

    // The description is not bound (mppx): changing it keeps the credential valid.
    let mut w = wire(&genuine);
    w["challenge"]["description"] = json!("something else");
    let credential = parse_authorization(&header_of(&w)).unwrap();
    route()
        .verify(&credential.challenge, &secret(), before_expiry())
        .unwrap();
}

#[test]
fn echoed_request_is_recanonicalised_before_the_hmac() {
    let issued = route().issue(&secret(), expires()).unwrap();
    let mut w = wire(&credential_for(issued));
    // Same JSON, different bytes: reordered keys, whitespace, padded base64.
    let request: Value = serde_json::from_slice(
        &base64url_decode(w["challenge"]["request"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let pretty = serde_json::to_string_pretty(&request).unwrap();
    let mut reordered = pretty.replace("\"amount\"", "\"zzz\":1,\n\"amount\"");
    reordered = reordered.replacen("\"zzz\":1,\n", "", 1);
    let padded = format!("{}==", base64url_encode(reordered.as_bytes()));
    w["challenge"]["request"] = json!(padded);
    let credential = parse_authorization(&header_of(&w)).unwrap();
    route()
        .verify(&credential.challenge, &secret(), before_expiry())
        .unwrap();
}

#[test]
fn legacy_object_opaque_is_reencoded() {
    let issued = route().issue(&secret(), expires()).unwrap();
    let mut w = wire(&credential_for(issued.clone()));
    w["challenge"]["opaque"] = json!({"routeId": "chat"});
    let credential = parse_authorization(&header_of(&w)).unwrap();
    assert_eq!(credential.challenge.opaque(), issued.opaque());
    route()
        .verify(&credential.challenge, &secret(), before_expiry())
        .unwrap();

    for bad in [
        json!({"routeId": 1}),
        json!(["chat"]),
        json!(7),
        json!(null),
    ] {
        w["challenge"]["opaque"] = bad.clone();
        let err = parse_authorization(&header_of(&w)).unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::InvalidField {
                    field: "opaque",
                    ..
                }
            ),
            "{bad}"
        );
        assert_eq!(err.problem_kind(), ProblemKind::MalformedCredential);
    }
}

/// A route whose terms differ from `route()` in one pinned field.
fn variant(field: PinnedField) -> (String, String, String, SessionRoute) {
    let mut r = route();
    let (mut method, mut intent) = ("tempo".to_owned(), "session".to_owned());
    let d = &mut r.request.method_details;
    match field {
        PinnedField::Method => method = "evm".into(),
        PinnedField::Intent => intent = "charge".into(),
        PinnedField::Realm => r.realm = "other.example.com".into(),
        PinnedField::Opaque => {
            r.opaque = Some(BTreeMap::from([("routeId".into(), "files".into())]))
        }
        PinnedField::Amount => r.request.amount = 1,
        PinnedField::Currency => {
            r.request.currency = addr("0x0000000000000000000000000000000000000001")
        }
        PinnedField::Recipient => {
            r.request.recipient = addr("0x0000000000000000000000000000000000000002")
        }
        PinnedField::ChainId => d.chain_id = 4217,
        PinnedField::SessionProtocol => d.session_protocol = None,
        PinnedField::UnitType => r.request.unit_type = "request".into(),
        PinnedField::EscrowContract => {
            d.escrow_contract = addr("0x0000000000000000000000000000000000000003");
        }
    }
    (method, intent, r.realm.clone(), r)
}

#[test]
fn every_pinned_field_mismatch_is_invalid_challenge() {
    let fields = [
        PinnedField::Method,
        PinnedField::Intent,
        PinnedField::Realm,
        PinnedField::Opaque,
        PinnedField::Amount,
        PinnedField::Currency,
        PinnedField::Recipient,
        PinnedField::ChainId,
        PinnedField::SessionProtocol,
        PinnedField::UnitType,
        PinnedField::EscrowContract,
    ];
    for field in fields {
        let (method, intent, realm, other) = variant(field);
        // Genuinely issued by this server (same secret), but for other terms.
        let mut builder = Challenge::builder(realm, method, intent, other.request.to_json())
            .expires_at(expires());
        if let Some(opaque) = other.opaque.clone() {
            builder = builder.opaque(opaque);
        }
        let issued = builder.issue(&secret()).unwrap();
        let err = verify_via_credential(issued.clone(), before_expiry()).unwrap_err();
        match &err {
            ProtocolError::ChallengeMismatch { id, field: got, .. } => {
                assert_eq!(*got, field);
                assert_eq!(id, issued.id());
            }
            other => panic!("{field}: expected a mismatch, got {other:?}"),
        }
        assert_eq!(err.problem_kind(), ProblemKind::InvalidChallenge);
        assert_eq!(
            err.to_problem().detail(),
            format!(
                "Challenge \"{}\" is invalid: credential {field} does not match this route's requirements.",
                issued.id()
            )
        );
    }
    // Opaque present on the route but absent in the echo is a mismatch too.
    let mut bare = route();
    bare.opaque = None;
    let issued = bare.issue(&secret(), expires()).unwrap();
    assert!(matches!(
        verify_via_credential(issued, before_expiry()),
        Err(ProtocolError::ChallengeMismatch {
            field: PinnedField::Opaque,
            ..
        })
    ));
}

#[test]
fn unpinned_fields_may_vary_per_challenge() {
    // A challenge that suggests a channel and a different deposit is still this route's.
    let mut suggesting = route();
    suggesting.request.method_details.channel_id = Some(B256::repeat_byte(0x5c));
    suggesting.request.suggested_deposit = Some(1);
    suggesting.description = None;
    let issued = suggesting.issue(&secret(), expires()).unwrap();
    let echoed = verify_via_credential(issued, before_expiry()).unwrap();
    assert_eq!(
        echoed.method_details.channel_id,
        Some(B256::repeat_byte(0x5c))
    );
    // Addresses are compared as addresses: a lower-cased spelling is the same payee.
    let mut lower = route();
    lower.request.recipient = addr("0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
    let issued = lower.issue(&secret(), expires()).unwrap();
    verify_via_credential(issued, before_expiry()).unwrap();
}

/// A predicate on the error a malformed input must produce.
type ErrorCheck = fn(&ProtocolError) -> bool;

#[test]
fn malformed_challenge_headers() {
    let good = route()
        .issue(&secret(), expires())
        .unwrap()
        .to_header_value();
    let cases: Vec<(String, ErrorCheck)> = vec![
        ("Basic realm=\"x\"".into(), |e| {
            *e == ProtocolError::MissingPaymentScheme
        }),
        ("".into(), |e| *e == ProtocolError::MissingPaymentScheme),
        ("Payment".into(), |e| {
            *e == ProtocolError::MissingPaymentScheme
        }),
        ("PaymentX id=\"a\"".into(), |e| {
            *e == ProtocolError::MissingPaymentScheme
        }),
        (good[..good.len() - 1].to_owned(), |e| {
            matches!(e, ProtocolError::UnterminatedQuotedString { .. })
        }),
        (format!("{good}, x=\"a\\"), |e| {
            matches!(e, ProtocolError::UnterminatedQuotedString { .. })
        }),
        (format!("{good}, id=\"again\""), |e| {
            *e == ProtocolError::DuplicateParam { name: "id".into() }
        }),
        (
            good.replace("realm=", "REALM=")
                .replace("method=", "realm="),
            |e| {
                *e == ProtocolError::DuplicateParam {
                    name: "realm".into(),
                }
            },
        ),
        (good.replace("method=\"tempo\"", "method=\"Tempo\""), |e| {
            matches!(
                e,
                ProtocolError::InvalidField {
                    field: "method",
                    ..
                }
            )
        }),
        (good.replace("method=\"tempo\", ", ""), |e| {
            *e == ProtocolError::MissingField { field: "method" }
        }),
        (good.replace("id=", "xid="), |e| {
            *e == ProtocolError::MissingField { field: "id" }
        }),
        (good.replace("realm=", "xrealm="), |e| {
            *e == ProtocolError::MissingField { field: "realm" }
        }),
        (good.replace("intent=", "xintent="), |e| {
            *e == ProtocolError::MissingField { field: "intent" }
        }),
        (good.replace("request=", "xrequest="), |e| {
            *e == ProtocolError::MissingField { field: "request" }
        }),
        (good.replacen("id=\"", "id=\"\", xid=\"", 1), |e| {
            matches!(e, ProtocolError::InvalidField { field: "id", .. })
        }),
        (good.replace("request=\"", "request=\"!"), |e| {
            *e == ProtocolError::InvalidBase64 { field: "request" }
        }),
        (
            good.replace(
                &format!(
                    "request=\"{}\"",
                    route().issue(&secret(), expires()).unwrap().request_b64()
                ),
                &format!("request=\"{}\"", base64url_encode("[1,2]")),
            ),
            |e| {
                matches!(
                    e,
                    ProtocolError::InvalidJson {
                        field: "request",
                        ..
                    }
                )
            },
        ),
        (
            good.replace(
                &format!(
                    "request=\"{}\"",
                    route().issue(&secret(), expires()).unwrap().request_b64()
                ),
                &format!("request=\"{}\"", base64url_encode("{\"a\":")),
            ),
            |e| {
                matches!(
                    e,
                    ProtocolError::InvalidJson {
                        field: "request",
                        ..
                    }
                )
            },
        ),
        (format!("{good}, digest=\"md5=abc\""), |e| {
            matches!(
                e,
                ProtocolError::InvalidField {
                    field: "digest",
                    ..
                }
            )
        }),
        (format!("{good}, header=\"Bad Header\""), |e| {
            matches!(
                e,
                ProtocolError::InvalidField {
                    field: "header",
                    ..
                }
            )
        }),
        (good.replace("2030-01-01T00:00:00.000Z", "tomorrow"), |e| {
            matches!(
                e,
                ProtocolError::InvalidField {
                    field: "expires",
                    ..
                }
            )
        }),
        (format!("{good}, description=\"\\ud800\""), |e| {
            matches!(
                e,
                ProtocolError::UnpairedSurrogate {
                    code_unit: 0xd800,
                    ..
                }
            )
        }),
    ];
    for (header, expected) in cases {
        let single = Challenge::from_header_value(&header);
        let list = parse_www_authenticate(&header);
        let err = single.expect_err(&header);
        assert!(expected(&err), "{header}: {err:?}");
        assert_eq!(list.unwrap_err(), err, "{header}");
    }
}

#[test]
fn oversized_inputs_are_refused() {
    let big_request = json!({ "pad": "x".repeat(MAX_REQUEST_PARAM_LEN) });
    let b64 = base64url_encode(serde_json::to_string(&big_request).unwrap());
    let header =
        format!(r#"Payment id="a", realm="r", method="tempo", intent="session", request="{b64}""#);
    assert_eq!(
        Challenge::from_header_value(&header).unwrap_err(),
        ProtocolError::RequestTooLarge {
            len: b64.len(),
            max: MAX_REQUEST_PARAM_LEN
        }
    );
    let err = Challenge::builder(
        "r",
        "tempo",
        "session",
        big_request.as_object().unwrap().clone(),
    )
    .issue(&secret())
    .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::InvalidConfig {
            field: "request",
            ..
        }
    ));
    assert_eq!(err.problem_kind(), ProblemKind::InternalPaymentError);

    let huge = format!("Payment {}", "A".repeat(MAX_HEADER_VALUE_LEN));
    let too_large = ProtocolError::HeaderTooLarge {
        len: huge.len(),
        max: MAX_HEADER_VALUE_LEN,
    };
    assert_eq!(parse_authorization(&huge).unwrap_err(), too_large);
    assert_eq!(parse_www_authenticate(&huge).unwrap_err(), too_large);
    assert_eq!(Challenge::from_header_value(&huge).unwrap_err(), too_large);
    assert_eq!(too_large.problem_kind(), ProblemKind::MalformedCredential);
}

#[test]
fn malformed_credentials() {
    let genuine = credential_for(route().issue(&secret(), expires()).unwrap());
    let b64 = |s: &str| format!("Payment {}", base64url_encode(s));
    let cases: Vec<(String, ProtocolError)> = vec![
        (
            "Basic dXNlcjpwdw==".into(),
            ProtocolError::MissingPaymentScheme,
        ),
        ("Payment".into(), ProtocolError::MissingPaymentScheme),
        ("Payment ".into(), ProtocolError::MissingPaymentScheme),
        ("Paymentabc".into(), ProtocolError::MissingPaymentScheme),
        (
            "Payment !!!".into(),
            ProtocolError::InvalidBase64 {
                field: "credential",
            },
        ),
        (
            "Payment a".into(),
            ProtocolError::InvalidBase64 {
                field: "credential",
            },
        ),
        (
            b64("[]"),
            ProtocolError::InvalidJson {
                field: "credential",
                reason: "not a JSON object".into(),
            },
        ),
        (
            b64("{}"),
            ProtocolError::MissingField { field: "challenge" },
        ),
        (
            b64(r#"{"challenge":"x"}"#),
            ProtocolError::MissingField { field: "challenge" },
        ),
        (
            b64(r#"{"challenge":{"id":1}}"#),
            ProtocolError::InvalidField {
                field: "id",
                value: String::new(),
                reason: "not a string",
            },
        ),
        (
            b64(r#"{"challenge":{"id":"a","realm":"r","method":"tempo","intent":"session"}}"#),
            ProtocolError::MissingField { field: "request" },
        ),
    ];
    for (header, expected) in cases {
        let err = parse_authorization(&header).unwrap_err();
        assert_eq!(err, expected, "{header}");
        assert_eq!(
            err.problem_kind(),
            ProblemKind::MalformedCredential,
            "{header}"
        );
    }
    // JSON garbage.
    let err = parse_authorization(&b64("{\"challenge\":")).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::InvalidJson {
            field: "credential",
            ..
        }
    ));

    // Field-level problems inside an otherwise genuine credential.
    for (field, value, expected_field) in [
        ("expires", json!(""), "expires"),
        ("expires", json!("2030-01-01"), "expires"),
        ("digest", json!(""), "digest"),
        ("header", json!("a b"), "header"),
        ("id", json!(""), "id"),
    ] {
        let mut w = wire(&genuine);
        w["challenge"][field] = value;
        let err = parse_authorization(&header_of(&w)).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidField { field, .. } if field == expected_field),
            "{err:?}"
        );
    }
    let mut w = wire(&genuine);
    w["source"] = json!("did:pkh:eip155:abc:0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
    assert!(matches!(
        parse_authorization(&header_of(&w)),
        Err(ProtocolError::InvalidField {
            field: "source",
            ..
        })
    ));
    w["source"] = json!(5);
    assert!(matches!(
        parse_authorization(&header_of(&w)),
        Err(ProtocolError::InvalidField {
            field: "source",
            ..
        })
    ));

    // Several schemes in one Authorization value: the Payment part is found.
    let combined = format!("Basic dXNlcjpwdw==, {genuine}");
    assert_eq!(
        parse_authorization(&combined).unwrap(),
        parse_authorization(&genuine).unwrap()
    );
    // Scheme name is case-insensitive.
    let lower = genuine.replacen("Payment", "payment", 1);
    assert_eq!(
        parse_authorization(&lower).unwrap(),
        parse_authorization(&genuine).unwrap()
    );
}

#[test]
fn malformed_payloads_are_invalid_payload() {
    let channel = format!("0x{}", "5c".repeat(32));
    let sig = format!("0x{}", "11".repeat(65));
    let cases = [
        (json!("voucher"), "payload"),
        (json!({}), "action"),
        (json!({"action": 1}), "action"),
        (
            json!({"action": "voucher", "cumulativeAmount": "1", "signature": sig}),
            "channelId",
        ),
        (
            json!({"action": "voucher", "channelId": "0x1234", "cumulativeAmount": "1", "signature": sig}),
            "channelId",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "signature": sig}),
            "cumulativeAmount",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": 1, "signature": sig}),
            "cumulativeAmount",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "-1", "signature": sig}),
            "cumulativeAmount",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "1.5", "signature": sig}),
            "cumulativeAmount",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "340282366920938463463374607431768211456", "signature": sig}),
            "cumulativeAmount",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "1", "signature": "0xabc"}),
            "signature",
        ),
        (
            json!({"action": "close", "channelId": channel, "cumulativeAmount": "1", "signature": "zz"}),
            "signature",
        ),
        (
            json!({"action": "open", "channelId": channel, "transaction": "0x02", "cumulativeAmount": "0", "signature": sig}),
            "type",
        ),
        (
            json!({"action": "open", "type": "hash", "channelId": channel, "transaction": "0x02", "cumulativeAmount": "0", "signature": sig}),
            "type",
        ),
        (
            json!({"action": "open", "type": "transaction", "channelId": channel, "cumulativeAmount": "0", "signature": sig}),
            "transaction",
        ),
        (
            json!({"action": "open", "type": "transaction", "channelId": channel, "transaction": "0x02", "cumulativeAmount": "0", "signature": sig, "authorizedSigner": "me"}),
            "authorizedSigner",
        ),
        (
            json!({"action": "topUp", "type": "transaction", "channelId": channel, "transaction": "0x02"}),
            "additionalDeposit",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "1", "signature": sig, "descriptor": {"payer": "0x1"}}),
            "payer",
        ),
        (
            json!({"action": "voucher", "channelId": channel, "cumulativeAmount": "1", "signature": sig, "descriptor": 3}),
            "descriptor",
        ),
    ];
    for (payload, field) in cases {
        let err = SessionPayload::from_json(&payload).unwrap_err();
        assert!(
            matches!(err, ProtocolError::InvalidPayload { field: f, .. } if f == field),
            "{payload}: {err:?}"
        );
        assert_eq!(err.problem_kind(), ProblemKind::InvalidPayload);
        assert_eq!(err.to_problem().detail(), "Credential payload is invalid.");
    }
    let err = SessionPayload::from_json(&json!({"action": "settle"})).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::UnknownPayloadAction {
            action: "settle".into()
        }
    );
    assert_eq!(err.problem_kind(), ProblemKind::InvalidPayload);

    // Through a credential: the challenge still parses, the payload fails when typed.
    let genuine = credential_for(route().issue(&secret(), expires()).unwrap());
    let mut w = wire(&genuine);
    w["payload"]["cumulativeAmount"] = json!("01");
    let credential = parse_authorization(&header_of(&w)).unwrap();
    assert!(matches!(
        credential.into_session(),
        Err(ProtocolError::InvalidPayload {
            field: "cumulativeAmount",
            ..
        })
    ));
    w.as_object_mut().unwrap().remove("payload");
    let credential = parse_authorization(&header_of(&w)).unwrap();
    assert_eq!(credential.payload, Value::Null);
    assert!(credential.into_session().is_err());
}

#[test]
fn builder_refuses_bad_configuration() {
    let request = route().request.to_json();
    let s = secret();
    let issue = |b: sluice_engine::protocol::ChallengeBuilder| b.issue(&s).unwrap_err();
    let base = || Challenge::builder("r", "tempo", "session", request.clone());
    for (err, field) in [
        (
            issue(Challenge::builder("r", "Tempo", "session", request.clone())),
            "method",
        ),
        (
            issue(Challenge::builder("r", "tempo", "", request.clone())),
            "intent",
        ),
        (issue(base().expires("2030-02-30T00:00:00Z")), "expires"),
        (issue(base().digest("sha-512=abc")), "digest"),
        (issue(base().header("Bad:Header")), "header"),
    ] {
        assert!(
            matches!(err, ProtocolError::InvalidConfig { field: f, .. } if f == field),
            "{err:?}"
        );
        assert_eq!(err.problem_kind(), ProblemKind::InternalPaymentError);
        assert_eq!(
            err.to_problem().detail(),
            "An internal payment error occurred."
        );
    }
    let mut with_float = request.clone();
    with_float.insert("ratio".into(), json!(0.5));
    assert!(matches!(
        Challenge::builder("r", "tempo", "session", with_float).issue(&s),
        Err(ProtocolError::InvalidConfig {
            field: "request",
            ..
        })
    ));
    // `Authorization` is the default and is not advertised.
    let c = base().header("authorization").issue(&s).unwrap();
    assert_eq!(c.header(), None);
    assert_eq!(c.credential_header(), "Authorization");
    let c = base().header("Payment-Authorization").issue(&s).unwrap();
    assert!(
        c.to_header_value()
            .ends_with(r#"header="Payment-Authorization""#)
    );
    assert!(c.id_fields().input().ends_with("||Payment-Authorization|"));
}

#[test]
fn session_request_schema_errors_are_invalid_challenge() {
    let good = route().request.to_json();
    let mutate = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut m = good.clone();
        f(&mut m);
        SessionRequest::from_json(&m).unwrap_err()
    };
    let cases: Vec<(ProtocolError, &str)> = vec![
        (
            mutate(&|m| {
                m.insert("amount".into(), json!("0"));
            }),
            "amount",
        ),
        (
            mutate(&|m| {
                m.insert("amount".into(), json!(25));
            }),
            "amount",
        ),
        (
            mutate(&|m| {
                m.remove("currency");
            }),
            "currency",
        ),
        (
            mutate(&|m| {
                m.insert("recipient".into(), json!("0x12"));
            }),
            "recipient",
        ),
        (
            mutate(&|m| {
                m.remove("unitType");
            }),
            "unitType",
        ),
        (
            mutate(&|m| {
                m.remove("methodDetails");
            }),
            "methodDetails",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]["chainId"] = json!("31337");
            }),
            "methodDetails.chainId",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]
                    .as_object_mut()
                    .unwrap()
                    .remove("chainId");
            }),
            "methodDetails.chainId",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]["sessionProtocol"] = json!("v3");
            }),
            "methodDetails.sessionProtocol",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]
                    .as_object_mut()
                    .unwrap()
                    .remove("escrowContract");
            }),
            "methodDetails.escrowContract",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]["channelId"] = json!("0x00");
            }),
            "methodDetails.channelId",
        ),
        (
            mutate(&|m| {
                m["methodDetails"]["feePayer"] = json!("yes");
            }),
            "methodDetails.feePayer",
        ),
    ];
    for (err, field) in cases {
        assert!(
            matches!(err, ProtocolError::InvalidRequest { field: f, .. } if f == field),
            "{err:?}"
        );
        assert_eq!(err.problem_kind(), ProblemKind::InvalidChallenge);
    }
}

#[test]
fn receipts_refuse_spent_above_accepted() {
    let channel = B256::repeat_byte(1);
    let err = SessionReceipt::new(expires(), "id", channel, 10, 11).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::SpentExceedsAccepted {
            spent: 11,
            accepted: 10
        }
    );
    let ok = SessionReceipt::new(expires(), "id", channel, 10, 10).unwrap();
    // A receipt header claiming spent > accepted is refused by the reader too.
    let forged = ok.to_json().replace("\"spent\":\"10\"", "\"spent\":\"11\"");
    assert_eq!(
        SessionReceipt::from_header_value(&base64url_encode(forged)).unwrap_err(),
        err
    );
    for bad in [
        "",
        "!!",
        &base64url_encode("{}"),
        &base64url_encode(ok.to_json().replace("session", "charge")),
    ] {
        assert!(SessionReceipt::from_header_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn accept_payment_and_did_errors() {
    let err = AcceptPayment::parse("tempo").unwrap_err();
    assert!(matches!(err, ProtocolError::InvalidAcceptPayment { .. }));
    assert_eq!(err.problem_kind(), ProblemKind::BadRequest);
    assert!(AcceptPayment::parse(&"a/b, ".repeat(2000)).is_err());
    for bad in [
        "",
        "did",
        "did:",
        "did:pkh",
        "did:PKH:x",
        "did:pkh:eip155:1",
        "did:pkh:eip155:1:0x12",
        "did:pkh:eip155::0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "did:pkh:eip155:99999999999999999999999:0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "did:x:a b",
    ] {
        assert!(Did::parse(bad).is_err(), "{bad:?}");
    }
    let other = Did::parse("did:key:z6Mk").unwrap();
    assert_eq!(other.eip155_account(), None);
    assert_eq!(other.as_str(), "did:key:z6Mk");
}

#[test]
fn non_canonical_request_numbers_read_as_their_canonical_form() {
    let header = format!(
        r#"Payment id="a", realm="r", method="tempo", intent="session", request="{}""#,
        base64url_encode(r#"{ "n": 1.0, "m": -0.0, "k": 1e3 }"#)
    );
    let parsed = Challenge::from_header_value(&header).unwrap();
    assert_eq!(
        parsed.request_b64(),
        base64url_encode(r#"{"k":1000,"m":0,"n":1}"#)
    );
    assert_eq!(
        Value::Object(parsed.request().clone()),
        json!({"k": 1000, "m": 0, "n": 1})
    );
    assert_eq!(
        Challenge::from_header_value(&parsed.to_header_value()).unwrap(),
        parsed
    );
    // Non-integral numbers cannot be canonicalised like ECMAScript would: refused.
    let header = header.replace(
        &base64url_encode(r#"{ "n": 1.0, "m": -0.0, "k": 1e3 }"#),
        &base64url_encode(r#"{"n":0.1}"#),
    );
    let err = Challenge::from_header_value(&header).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::UnsupportedNumber {
            number: "0.1".into()
        }
    );
    assert_eq!(err.problem_kind(), ProblemKind::MalformedCredential);
}
