//! Issuing a route's session challenge and verifying the challenge a credential echoes.

use std::collections::BTreeMap;

use super::ProtocolError;
use super::challenge::{Challenge, encode_opaque};
use super::challenge_id::ChallengeSecret;
use super::error::{PinnedField, echo};
use super::request::SessionRequest;
use super::time::Timestamp;

/// The payment method Sluice serves.
pub const METHOD_TEMPO: &str = "tempo";
/// The intent Sluice serves.
pub const INTENT_SESSION: &str = "session";

/// A paid route's current terms: what its challenges say and what echoed challenges must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoute {
    /// Protection space, e.g. the API host name.
    pub realm: String,
    /// The session request (price, token, payee, escrow, chain).
    pub request: SessionRequest,
    /// Server correlation data sent as `opaque` (e.g. a route id); pinned on verify.
    pub opaque: Option<BTreeMap<String, String>>,
    /// Display text for the challenge (not bound by the id, not pinned).
    pub description: Option<String>,
}

impl SessionRoute {
    /// Issues a fresh `tempo`/`session` challenge that expires at `expires`.
    pub fn issue(
        &self,
        secret: &ChallengeSecret,
        expires: Timestamp,
    ) -> Result<Challenge, ProtocolError> {
        let mut builder = Challenge::builder(
            &self.realm,
            METHOD_TEMPO,
            INTENT_SESSION,
            self.request.to_json(),
        )
        .expires_at(expires);
        if let Some(description) = &self.description {
            builder = builder.description(description);
        }
        if let Some(opaque) = &self.opaque {
            builder = builder.opaque(opaque.clone());
        }
        builder.issue(secret)
    }

    /// Verifies the challenge echoed in a credential, in mppx's order:
    ///
    /// 1. the id is the HMAC of the echoed fields (request re-canonicalised) under `secret`
    ///    ([`ProtocolError::ChallengeNotIssued`]);
    /// 2. the money-bearing fields match this route's current terms: method, intent, realm,
    ///    opaque, amount, currency, recipient, chainId, sessionProtocol, unitType,
    ///    escrowContract ([`ProtocolError::ChallengeMismatch`]);
    /// 3. `expires` is present, valid and not before `now` ([`ProtocolError::MissingExpires`],
    ///    [`ProtocolError::MalformedExpires`], [`ProtocolError::ChallengeExpired`]).
    ///
    /// Returns the echoed request (which may carry per-challenge fields such as a suggested
    /// `channelId`). The payload is checked separately, after this.
    pub fn verify(
        &self,
        echoed: &Challenge,
        secret: &ChallengeSecret,
        now: Timestamp,
    ) -> Result<SessionRequest, ProtocolError> {
        echoed.verify_id(secret)?;
        let mismatch =
            |field: PinnedField, got: &str, want: &str| ProtocolError::ChallengeMismatch {
                id: echo(echoed.id()),
                field,
                echoed: echo(got),
                expected: echo(want),
            };
        for (field, got, want) in [
            (PinnedField::Method, echoed.method(), METHOD_TEMPO),
            (PinnedField::Intent, echoed.intent(), INTENT_SESSION),
            (PinnedField::Realm, echoed.realm(), self.realm.as_str()),
        ] {
            if got != want {
                return Err(mismatch(field, got, want));
            }
        }
        // Compared decoded, as mppx compares `meta`; an undecodable echo cannot match.
        let echoed_opaque = echoed.opaque_map().ok();
        if echoed_opaque.as_ref() != Some(&self.opaque) {
            let want = self.opaque.as_ref().map(encode_opaque).unwrap_or_default();
            return Err(mismatch(
                PinnedField::Opaque,
                echoed.opaque().unwrap_or_default(),
                &want,
            ));
        }
        let request = echoed.session_request()?;
        if let Some((field, got, want)) = self.request.pinned_mismatch(&request) {
            return Err(mismatch(field, &got, &want));
        }
        echoed.check_expiry(now)?;
        Ok(request)
    }
}
