//! The one error type of the protocol module and its mapping to RFC 9457 problem types.

use std::fmt;

use super::problem::{Problem, ProblemKind};

/// A challenge field that the server pins against the route's current terms after the HMAC check
/// (mppx `getPinnedChallengeMismatch`, plus `escrowContract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinnedField {
    /// `method` auth-param.
    Method,
    /// `intent` auth-param.
    Intent,
    /// `realm` auth-param.
    Realm,
    /// `opaque` auth-param (compared as the decoded string map).
    Opaque,
    /// `request.amount`.
    Amount,
    /// `request.currency`.
    Currency,
    /// `request.recipient`.
    Recipient,
    /// `request.methodDetails.chainId`.
    ChainId,
    /// `request.methodDetails.sessionProtocol`.
    SessionProtocol,
    /// `request.unitType`.
    UnitType,
    /// `request.methodDetails.escrowContract`.
    EscrowContract,
}

impl PinnedField {
    /// The field's name as mppx reports it in `credential <field> does not match ...`.
    pub const fn wire_name(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Intent => "intent",
            Self::Realm => "realm",
            Self::Opaque => "opaque",
            Self::Amount => "amount",
            Self::Currency => "currency",
            Self::Recipient => "recipient",
            Self::ChainId => "chainId",
            Self::SessionProtocol => "sessionProtocol",
            Self::UnitType => "unitType",
            Self::EscrowContract => "escrowContract",
        }
    }
}

impl fmt::Display for PinnedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// Everything that can go wrong while reading, writing or verifying MPP protocol values.
///
/// Parsing never panics: every malformed input ends in one of these variants, and
/// [`ProtocolError::problem_kind`] says which RFC 9457 problem a server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A header value is longer than the limit this module accepts.
    #[error("header value is {len} bytes, above the {max}-byte limit")]
    HeaderTooLarge {
        /// Length of the offered value in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header value contains no `Payment` auth scheme.
    #[error("header value contains no `Payment` scheme")]
    MissingPaymentScheme,
    /// An auth-param does not start with a token name.
    #[error("malformed auth-param at byte {position}")]
    MalformedAuthParam {
        /// Byte offset in the header value.
        position: usize,
    },
    /// A quoted-string has no closing quote.
    #[error("unterminated quoted-string starting at byte {position}")]
    UnterminatedQuotedString {
        /// Byte offset of the opening quote in the header value.
        position: usize,
    },
    /// A `\uXXXX` escape names half of a UTF-16 surrogate pair without the other half.
    #[error("escape \\u{code_unit:04x} at byte {position} is an unpaired UTF-16 surrogate")]
    UnpairedSurrogate {
        /// Byte offset of the escape in the header value.
        position: usize,
        /// The surrogate code unit.
        code_unit: u16,
    },
    /// The same auth-param appears twice in one challenge.
    #[error("duplicate auth-param `{name}`")]
    DuplicateParam {
        /// The (lower-cased) parameter name.
        name: String,
    },
    /// The `request` auth-param (or echoed `request`) exceeds the size limit.
    #[error("`request` is {len} bytes, above the {max}-byte limit")]
    RequestTooLarge {
        /// Length of the encoded request in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A required challenge or credential field is absent.
    #[error("missing required field `{field}`")]
    MissingField {
        /// Field name as it appears on the wire.
        field: &'static str,
    },
    /// A challenge or credential field has a value this module refuses.
    #[error("field `{field}` value {value:?} is invalid: {reason}")]
    InvalidField {
        /// Field name as it appears on the wire.
        field: &'static str,
        /// The offending value (truncated to a short prefix).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A base64url field does not decode.
    #[error("field `{field}` is not valid base64url")]
    InvalidBase64 {
        /// Field name.
        field: &'static str,
    },
    /// A field decodes to bytes that are not the JSON this module expects.
    #[error("field `{field}` is not valid JSON of the expected shape: {reason}")]
    InvalidJson {
        /// Field name.
        field: &'static str,
        /// Parser message or shape complaint.
        reason: String,
    },
    /// JCS cannot canonicalise a number: only integers within ±(2^53 − 1) are supported.
    #[error(
        "number {number} cannot be canonicalised: only integers within ±(2^53 - 1) are supported"
    )]
    UnsupportedNumber {
        /// The number as serde_json prints it.
        number: String,
    },
    /// The typed session `request` (of a challenge) is missing a field or has a bad value.
    #[error("session request field `{field}` is invalid: {reason}")]
    InvalidRequest {
        /// Field path, e.g. `methodDetails.chainId`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value given to a builder (server configuration, not client input) is invalid.
    #[error("invalid configuration for `{field}` ({value:?}): {reason}")]
    InvalidConfig {
        /// Field name.
        field: &'static str,
        /// The offending value (truncated).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HMAC secret is shorter than the minimum.
    #[error("challenge secret is {len} bytes; at least {min} are required")]
    SecretTooShort {
        /// Offered length.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The echoed challenge id is not the HMAC of its fields under this server's secret.
    #[error("challenge {id:?} was not issued by this server")]
    ChallengeNotIssued {
        /// The echoed id.
        id: String,
    },
    /// The echoed challenge carries no `expires` (mppx servers fail closed).
    #[error("challenge {id:?} has no expires")]
    MissingExpires {
        /// The echoed id.
        id: String,
    },
    /// The echoed `expires` is not a valid RFC 3339 timestamp.
    #[error("challenge {id:?} has a malformed expires {expires:?}")]
    MalformedExpires {
        /// The echoed id.
        id: String,
        /// The echoed value.
        expires: String,
    },
    /// The echoed challenge expired before `now`.
    #[error("challenge {id:?} expired at {expires}")]
    ChallengeExpired {
        /// The echoed id.
        id: String,
        /// The echoed `expires` value.
        expires: String,
    },
    /// A pinned field of the (authentic) echoed challenge differs from the route's terms.
    #[error(
        "credential {field} does not match this route's requirements (echoed {echoed:?}, route {expected:?})"
    )]
    ChallengeMismatch {
        /// The echoed id.
        id: String,
        /// Which field differs.
        field: PinnedField,
        /// The echoed value.
        echoed: String,
        /// The route's value.
        expected: String,
    },
    /// The credential payload does not match the session payload schema.
    #[error("payload field `{field}` is invalid: {reason}")]
    InvalidPayload {
        /// Payload field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload's `action` is not one of the session actions.
    #[error("payload action {action:?} is not one of open, topUp, voucher, close")]
    UnknownPayloadAction {
        /// The offered action (truncated).
        action: String,
    },
    /// An `Accept-Payment` entry does not parse.
    #[error("Accept-Payment entry {entry:?} is invalid: {reason}")]
    InvalidAcceptPayment {
        /// The offending entry (truncated).
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A timestamp is not an RFC 3339 date-time this module accepts.
    #[error("timestamp {value:?} is not a valid RFC 3339 date-time")]
    InvalidTimestamp {
        /// The offending value (truncated).
        value: String,
    },
    /// A receipt claims more spent than accepted (the money invariant `spent ≤ accepted`).
    #[error("receipt spent {spent} exceeds acceptedCumulative {accepted}")]
    SpentExceedsAccepted {
        /// The `spent` amount.
        spent: u128,
        /// The `acceptedCumulative` amount.
        accepted: u128,
    },
}

/// Longest prefix of an offending value that errors carry (they end up in logs and problem bodies).
const MAX_ECHO_CHARS: usize = 96;

/// A short, owned copy of untrusted input for an error message.
pub(crate) fn echo(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

impl ProtocolError {
    /// The RFC 9457 problem type a server answers this error with (mppx's choice of error class).
    pub const fn problem_kind(&self) -> ProblemKind {
        match self {
            // Everything a server parses from a client's credential header is "malformed".
            Self::HeaderTooLarge { .. }
            | Self::MissingPaymentScheme
            | Self::MalformedAuthParam { .. }
            | Self::UnterminatedQuotedString { .. }
            | Self::UnpairedSurrogate { .. }
            | Self::DuplicateParam { .. }
            | Self::RequestTooLarge { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::InvalidBase64 { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedNumber { .. }
            | Self::InvalidTimestamp { .. } => ProblemKind::MalformedCredential,
            Self::ChallengeNotIssued { .. }
            | Self::MissingExpires { .. }
            | Self::MalformedExpires { .. }
            | Self::ChallengeMismatch { .. }
            | Self::InvalidRequest { .. } => ProblemKind::InvalidChallenge,
            Self::ChallengeExpired { .. } => ProblemKind::PaymentExpired,
            Self::InvalidPayload { .. } | Self::UnknownPayloadAction { .. } => {
                ProblemKind::InvalidPayload
            }
            Self::InvalidAcceptPayment { .. } => ProblemKind::BadRequest,
            Self::SpentExceedsAccepted { .. } => ProblemKind::VerificationFailed,
            Self::InvalidConfig { .. } | Self::SecretTooShort { .. } => {
                ProblemKind::InternalPaymentError
            }
        }
    }

    /// The problem body mppx would send for this error (without `challengeId`, which is the id
    /// of the fresh challenge the HTTP layer issues alongside; add it with
    /// [`Problem::with_challenge_id`]).
    ///
    /// Details for malformed credentials and invalid payloads stay generic, as in mppx, so that
    /// parser internals are not echoed to clients; the full error is for the server's logs.
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::ChallengeNotIssued { id } => Problem::invalid_challenge(
                Some(id),
                Some("challenge was not issued by this server"),
            ),
            Self::MissingExpires { id } => {
                Problem::invalid_challenge(Some(id), Some("missing required expires field"))
            }
            Self::MalformedExpires { id, .. } => {
                Problem::invalid_challenge(Some(id), Some("malformed expires timestamp"))
            }
            Self::ChallengeMismatch { id, field, .. } => Problem::invalid_challenge(
                Some(id),
                Some(&format!(
                    "credential {field} does not match this route's requirements"
                )),
            ),
            Self::InvalidRequest { .. } => {
                Problem::invalid_challenge(None, Some("challenge request is not a session request"))
            }
            Self::ChallengeExpired { expires, .. } => Problem::payment_expired(Some(expires)),
            Self::InvalidPayload { .. } | Self::UnknownPayloadAction { .. } => {
                Problem::invalid_payload(None)
            }
            Self::InvalidAcceptPayment { .. } => {
                Problem::bad_request(Some("invalid Accept-Payment header"))
            }
            Self::SpentExceedsAccepted { .. } => {
                Problem::verification_failed(Some("receipt spent exceeds accepted amount"))
            }
            Self::InvalidConfig { .. } | Self::SecretTooShort { .. } => Problem::internal(),
            Self::HeaderTooLarge { .. } => Problem::malformed_credential(Some("header too large")),
            Self::RequestTooLarge { .. } => {
                Problem::malformed_credential(Some("request parameter too large"))
            }
            Self::InvalidBase64 { .. } => Problem::malformed_credential(Some("bad base64")),
            Self::MissingPaymentScheme => {
                Problem::malformed_credential(Some("missing Payment scheme"))
            }
            Self::MalformedAuthParam { .. }
            | Self::UnterminatedQuotedString { .. }
            | Self::UnpairedSurrogate { .. }
            | Self::DuplicateParam { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. }
            | Self::InvalidJson { .. }
            | Self::UnsupportedNumber { .. }
            | Self::InvalidTimestamp { .. } => Problem::malformed_credential(None),
        }
    }
}
