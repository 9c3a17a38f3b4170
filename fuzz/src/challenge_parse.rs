//! Fuzz target for the client-side readers of server headers: `WWW-Authenticate` (one and many
//! challenges), `Payment-Receipt` and `Accept-Payment`.
//!
//! Oracles: no reader panics; whenever the list reader succeeds, the single-challenge reader
//! returns its first challenge; every challenge read serialises to an ASCII-only header value
//! that reads back to an equal challenge; every receipt read holds `spent ≤ accepted` and
//! round-trips.

use sluice_engine::protocol::{AcceptPayment, Challenge, SessionReceipt, parse_www_authenticate};

/// Runs every reader on `data` (as UTF-8) and checks the oracles; panics on a violation.
pub fn do_test(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Challenge::from_header_value(text);
    if let Ok(list) = parse_www_authenticate(text) {
        assert_eq!(
            first.as_ref().ok(),
            list.first(),
            "single and list readers disagree"
        );
        list.iter().for_each(check_round_trip);
    }
    if let Ok(challenge) = &first {
        check_round_trip(challenge);
    }

    if let Ok(receipt) = SessionReceipt::from_header_value(text) {
        assert!(
            receipt.spent() <= receipt.accepted_cumulative(),
            "receipt breaks spent <= accepted"
        );
        let again = SessionReceipt::from_header_value(&receipt.to_header_value())
            .expect("a serialised receipt reads back");
        assert_eq!(again, receipt);
    }

    if let Ok(accept) = AcceptPayment::parse(text) {
        let again = AcceptPayment::parse(&accept.to_header_value())
            .expect("a serialised Accept-Payment reads back");
        assert_eq!(again.preferences(), accept.preferences());
    }
}

fn check_round_trip(challenge: &Challenge) {
    let header = challenge.to_header_value();
    assert!(
        header.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "header value is not printable ASCII: {header:?}"
    );
    let again = Challenge::from_header_value(&header).expect("a serialised challenge reads back");
    assert_eq!(&again, challenge);
    // The derived readers must not panic either.
    let _ = challenge.session_request();
    let _ = challenge.opaque_map();
    let _ = challenge.expires_at();
}
