//! Fuzz target for the server-side credential reader (`Authorization: Payment …`) and the
//! verification that follows it.
//!
//! The input is used twice: as the header value itself, and as the JSON inside a well-formed
//! `Payment <base64url>` wrapper (to reach past the base64 layer). Oracles: nothing panics;
//! verification of an arbitrary credential never succeeds without this server's HMAC; a
//! credential whose payload types as a session payload re-encodes to a header that reads back
//! equal (unless re-canonicalising its request pushed it over a size limit).

use std::sync::OnceLock;

use sluice_engine::protocol::{
    ChallengeSecret, HexAddress, ProtocolError, SessionMethodDetails, SessionProtocol,
    SessionRequest, SessionRoute, Timestamp, base64url_encode, parse_authorization,
};

fn secret() -> &'static ChallengeSecret {
    static SECRET: OnceLock<ChallengeSecret> = OnceLock::new();
    SECRET.get_or_init(|| {
        ChallengeSecret::new("fuzz-secret-that-no-input-can-know-0123456789").expect("long secret")
    })
}

fn route() -> &'static SessionRoute {
    static ROUTE: OnceLock<SessionRoute> = OnceLock::new();
    ROUTE.get_or_init(|| {
        let addr = |s| HexAddress::parse(s).expect("valid address");
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
            opaque: None,
            description: None,
        }
    })
}

/// Reads `data` as a credential (twice, see the module docs) and checks the oracles; panics on
/// a violation.
pub fn do_test(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&format!("Payment {}", base64url_encode(data)));
}

fn check(header: &str) {
    let Ok(credential) = parse_authorization(header) else {
        return;
    };
    let now = Timestamp::from_unix_millis(0).expect("epoch is in range");
    let verdict = route().verify(&credential.challenge, secret(), now);
    assert!(
        verdict.is_err(),
        "a credential verified without the server's secret"
    );
    if let Err(e) = verdict {
        let _ = e.to_problem().to_json();
    }

    let Ok(session) = credential.into_session() else {
        return;
    };
    let reencoded = session.to_header_value();
    match parse_authorization(&reencoded) {
        Ok(again) => {
            assert_eq!(again.challenge, session.challenge);
            assert_eq!(again.source, session.source);
            assert_eq!(again.into_session().expect("payload reads back"), session);
        }
        Err(ProtocolError::RequestTooLarge { .. } | ProtocolError::HeaderTooLarge { .. }) => {}
        Err(e) => panic!("re-encoded credential does not read back: {e}"),
    }
}
