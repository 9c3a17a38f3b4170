//! Property tests: serialise → parse round trips for random challenges, credentials and
//! receipts, and "never panics" on arbitrary input for every reader.

use alloy_primitives::{Address, B256, Bytes};
use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice_engine::protocol::{
    AcceptPayment, Challenge, ChallengeSecret, Credential, Did, OpenPayload, SessionPayload,
    SessionReceipt, Timestamp, TopUpPayload, VoucherPayload, base64url_decode, base64url_encode,
    canonicalize, parse_authorization, parse_www_authenticate,
};

fn secret() -> ChallengeSecret {
    ChallengeSecret::new("property-test-secret-0123456789abcdef").unwrap()
}

/// Text with quotes, backslashes, commas, control characters, Latin-1, BMP and astral
/// characters: everything the quoting must survive.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('"'),
            Just('\\'),
            Just(','),
            Just('='),
            Just(' '),
            Just('\r'),
            Just('\n'),
            Just('\u{0}'),
            Just('é'),
            Just('\u{2014}'),
            Just('\u{1f600}'),
            Just('u'),
            any::<char>(),
            "[a-zA-Z0-9]".prop_map(|s| s.chars().next().unwrap()),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1_i64 << 53) + 1..(1_i64 << 53)).prop_map(Value::from),
        tricky_text().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(tricky_text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(tricky_text(), json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

/// A request object: a few members, at most one level of nesting (cheap to generate; the JCS
/// property covers deeper values).
fn request_object() -> impl Strategy<Value = Map<String, Value>> {
    let member = prop_oneof![
        json_leaf(),
        prop::collection::btree_map(tricky_text(), json_leaf(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ];
    prop::collection::btree_map(tricky_text(), member, 0..5).prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn challenge()(
        realm in tricky_text(),
        method in "[a-z][a-z0-9:_-]{0,8}",
        intent in "[a-z]{1,8}",
        request in request_object(),
        description in prop::option::of(tricky_text()),
        digest in prop::option::of("sha-256=[A-Za-z0-9+/=:]{0,12}"),
        expires in prop::option::of(0_i64..253_402_300_799_999),
        header in prop::option::of("[A-Za-z0-9-]{1,12}"),
        opaque in prop::option::of(prop::collection::btree_map(tricky_text(), tricky_text(), 0..4)),
    ) -> Challenge {
        let mut b = Challenge::builder(realm, method, intent, request);
        if let Some(d) = description { b = b.description(d); }
        if let Some(d) = digest { b = b.digest(d); }
        if let Some(ms) = expires { b = b.expires_at(Timestamp::from_unix_millis(ms).unwrap()); }
        if let Some(h) = header { b = b.header(h); }
        if let Some(o) = opaque { b = b.opaque(o); }
        b.issue(&secret()).unwrap()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 1..max).prop_map(Bytes::from)
}

fn payload() -> impl Strategy<Value = SessionPayload> {
    let b256 = any::<[u8; 32]>().prop_map(B256::from);
    let addr = any::<[u8; 20]>().prop_map(|a| Address::from(a).into());
    prop_oneof![
        (
            b256.clone(),
            bytes(200),
            any::<u128>(),
            bytes(70),
            prop::option::of(addr)
        )
            .prop_map(
                |(channel_id, transaction, cumulative_amount, signature, authorized_signer)| {
                    SessionPayload::Open(OpenPayload {
                        channel_id,
                        transaction,
                        cumulative_amount,
                        signature,
                        authorized_signer,
                        descriptor: None,
                    })
                }
            ),
        (b256.clone(), bytes(200), any::<u128>()).prop_map(
            |(channel_id, transaction, additional_deposit)| {
                SessionPayload::TopUp(TopUpPayload {
                    channel_id,
                    transaction,
                    additional_deposit,
                    descriptor: None,
                })
            }
        ),
        (b256, any::<u128>(), bytes(70), any::<bool>()).prop_map(
            |(channel_id, cumulative_amount, signature, close)| {
                let v = VoucherPayload {
                    channel_id,
                    cumulative_amount,
                    signature,
                    descriptor: None,
                };
                if close {
                    SessionPayload::Close(v)
                } else {
                    SessionPayload::Voucher(v)
                }
            }
        ),
    ]
}

/// The member names of a JSON object in document order.
struct TopLevelNames(Vec<String>);

impl<'de> serde::Deserialize<'de> for TopLevelNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = TopLevelNames;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some((name, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    names.push(name);
                }
                Ok(TopLevelNames(names))
            }
        }
        d.deserialize_map(Names)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn challenge_header_round_trips(c in challenge()) {
        let header = c.to_header_value();
        // Always a legal, ASCII-only header value.
        prop_assert!(header.bytes().all(|b| (0x20..0x7f).contains(&b)), "{}", header);
        let parsed = Challenge::from_header_value(&header).unwrap();
        prop_assert_eq!(&parsed, &c);
        parsed.verify_id(&secret()).unwrap();
    }

    #[test]
    fn several_challenges_in_one_value_round_trip(list in prop::collection::vec(challenge(), 2..4)) {
        let value = list.iter().map(Challenge::to_header_value).collect::<Vec<_>>().join(", ");
        prop_assert_eq!(parse_www_authenticate(&value).unwrap(), list);
    }

    #[test]
    fn credential_round_trips(
        c in challenge(),
        p in payload(),
        source in prop::option::of((any::<u64>(), any::<[u8; 20]>())),
    ) {
        let credential = Credential {
            challenge: c,
            payload: p,
            source: source.map(|(chain, a)| Did::pkh_eip155(chain, Address::from(a))),
        };
        let header = credential.to_header_value();
        let parsed = parse_authorization(&header).unwrap();
        prop_assert_eq!(parsed.payload.clone(), credential.payload.to_json());
        let typed = parsed.into_session().unwrap();
        prop_assert_eq!(&typed, &credential);
        prop_assert_eq!(typed.to_header_value(), header);
    }

    #[test]
    fn receipts_round_trip_and_hold_spent_le_accepted(
        millis in 0_i64..253_402_300_799_999,
        accepted in any::<u128>(),
        spent in any::<u128>(),
        units in prop::option::of(any::<u64>()),
        tx in prop::option::of(any::<[u8; 32]>()),
    ) {
        let at = Timestamp::from_unix_millis(millis).unwrap();
        let made = SessionReceipt::new(at, "challenge", B256::repeat_byte(7), accepted, spent);
        prop_assert_eq!(made.is_ok(), spent <= accepted);
        if let Ok(mut receipt) = made {
            if let Some(u) = units { receipt = receipt.with_units(u); }
            if let Some(t) = tx { receipt = receipt.with_tx_hash(B256::from(t)); }
            let back = SessionReceipt::from_header_value(&receipt.to_header_value()).unwrap();
            prop_assert_eq!(back, receipt);
        }
    }

    #[test]
    fn jcs_is_idempotent_and_sorted(v in json_object()) {
        let once = canonicalize(&Value::Object(v.clone())).unwrap();
        let reparsed: Value = serde_json::from_str(&once).unwrap();
        prop_assert_eq!(&reparsed, &Value::Object(v.clone()));
        prop_assert_eq!(canonicalize(&reparsed).unwrap(), once.clone());
        // Top-level members appear in the UTF-16 order of their names.
        let TopLevelNames(names) = serde_json::from_str(&once).unwrap();
        let units: Vec<Vec<u16>> = names.iter().map(|k| k.encode_utf16().collect()).collect();
        prop_assert!(units.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(names.len(), v.len());
    }

    #[test]
    fn base64url_round_trips(data in prop::collection::vec(any::<u8>(), 0..64)) {
        let text = base64url_encode(&data);
        prop_assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
        prop_assert_eq!(base64url_decode(&text).unwrap(), data);
    }

    #[test]
    fn accept_payment_rank_respects_weights(
        prefs in prop::collection::vec(("[a-c*]", "[x-z*]", 0_u16..=1000), 1..6),
        offers in prop::collection::vec(("[a-c]", "[x-z]"), 0..6),
    ) {
        let header = prefs
            .iter()
            .map(|(m, i, q)| format!("{m}/{i};q={}", if *q == 1000 { "1".into() } else { format!("0.{q:03}") }))
            .collect::<Vec<_>>()
            .join(", ");
        let accept = AcceptPayment::parse(&header).unwrap();
        let offers: Vec<(&str, &str)> = offers.iter().map(|(m, i)| (m.as_str(), i.as_str())).collect();
        let ranked = accept.rank(&offers);
        let weights: Vec<u16> = ranked.iter().map(|&i| accept.weight(offers[i].0, offers[i].1).unwrap()).collect();
        prop_assert!(weights.iter().all(|&q| q > 0));
        prop_assert!(weights.windows(2).all(|w| w[0] >= w[1]));
        let expected = offers.iter().filter(|(m, i)| accept.weight(m, i).is_some_and(|q| q > 0)).count();
        prop_assert_eq!(ranked.len(), expected);
    }

    #[test]
    fn readers_never_panic_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = parse_www_authenticate(&s);
        let _ = Challenge::from_header_value(&s);
        let _ = parse_authorization(&s);
        let _ = AcceptPayment::parse(&s);
        let _ = Did::parse(&s);
        let _ = SessionReceipt::from_header_value(&s);
        let _ = Timestamp::parse_rfc3339(&s);
    }

    #[test]
    fn readers_never_panic_on_payment_shaped_noise(
        parts in prop::collection::vec(
            prop_oneof![
                Just("Payment ".to_owned()),
                Just("payment\t".to_owned()),
                Just(", ".to_owned()),
                Just("=".to_owned()),
                Just("\"".to_owned()),
                Just("\\".to_owned()),
                Just("\\u".to_owned()),
                Just("\\ud83d".to_owned()),
                Just("\\ude00".to_owned()),
                Just("request=\"e30\"".to_owned()),
                Just("id=\"x\"".to_owned()),
                "[a-z]{1,6}".prop_map(|s| s),
                "[0-9a-fA-F]{4}".prop_map(|s| s),
                any::<char>().prop_map(String::from),
            ],
            0..40,
        )
    ) {
        let s: String = parts.concat();
        let _ = parse_www_authenticate(&s);
        let _ = Challenge::from_header_value(&s);
        let _ = parse_authorization(&s);
        let _ = parse_authorization(&format!("Payment {}", base64url_encode(&s)));
    }

    #[test]
    fn credential_reader_never_panics_on_arbitrary_json(v in json_value(), c in request_object()) {
        let mut root = Map::new();
        root.insert("challenge".into(), Value::Object(c));
        root.insert("payload".into(), v.clone());
        let header = format!("Payment {}", base64url_encode(serde_json::to_string(&root).unwrap()));
        if let Ok(credential) = parse_authorization(&header) {
            let _ = credential.into_session();
        }
        let _ = SessionPayload::from_json(&v);
    }
}
