//! RFC 9457 problem details with mppx's problem types (PROTOCOL.md §1.5).

use serde::Serialize;
use serde_json::{Map, Value};

/// Base URI of every problem type.
pub const PROBLEM_TYPE_BASE: &str = "https://paymentauth.org/problems/";

const HINT_PAY: &str = "Use a supported wallet to pay for this resource using one of the supported payment methods returned in the WWW-Authenticate header. See https://mpp.dev/tools/wallet.md";
const HINT_CREDENTIAL: &str = "Use a supported wallet to construct valid credentials for one of the supported payment methods returned in the WWW-Authenticate header. See https://mpp.dev/tools/wallet.md";

/// JSON-RPC code for "payment required" in the MCP binding.
pub const MCP_PAYMENT_REQUIRED: i32 = -32042;
/// JSON-RPC code for "payment verification failed" in the MCP binding.
pub const MCP_VERIFICATION_FAILED: i32 = -32043;
/// JSON-RPC "invalid params".
pub const MCP_INVALID_PARAMS: i32 = -32602;
/// JSON-RPC "internal error".
pub const MCP_INTERNAL_ERROR: i32 = -32603;

/// Every problem type mppx 0.11.0 emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// `payment-required` (402): no credential.
    PaymentRequired,
    /// `malformed-credential` (402): bad base64url or JSON.
    MalformedCredential,
    /// `invalid-challenge` (402): HMAC mismatch, missing/malformed expires, pinned field.
    InvalidChallenge,
    /// `verification-failed` (402): any other verification failure.
    VerificationFailed,
    /// `payment-expired` (402).
    PaymentExpired,
    /// `invalid-payload` (402; the session spec says 400, mppx sends 402).
    InvalidPayload,
    /// `payment-insufficient` (402).
    PaymentInsufficient,
    /// `method-unsupported` (400).
    MethodUnsupported,
    /// `bad-request` (400).
    BadRequest,
    /// `payment-action-required` (402).
    PaymentActionRequired,
    /// `internal-payment-error` (500).
    InternalPaymentError,
    /// `session/insufficient-balance` (402).
    InsufficientBalance,
    /// `session/invalid-signature` (402).
    InvalidSignature,
    /// `session/signer-mismatch` (402).
    SignerMismatch,
    /// `session/amount-exceeds-deposit` (402).
    AmountExceedsDeposit,
    /// `session/delta-too-small` (402).
    DeltaTooSmall,
    /// `session/channel-not-found` (410).
    ChannelNotFound,
    /// `session/channel-finalized` (410): finalized, or a close request is pending.
    ChannelFinalized,
}

impl ProblemKind {
    /// Every kind, in mppx's declaration order.
    pub const ALL: [Self; 18] = [
        Self::PaymentRequired,
        Self::MalformedCredential,
        Self::InvalidChallenge,
        Self::VerificationFailed,
        Self::PaymentExpired,
        Self::InvalidPayload,
        Self::PaymentInsufficient,
        Self::MethodUnsupported,
        Self::BadRequest,
        Self::PaymentActionRequired,
        Self::InternalPaymentError,
        Self::InsufficientBalance,
        Self::InvalidSignature,
        Self::SignerMismatch,
        Self::AmountExceedsDeposit,
        Self::DeltaTooSmall,
        Self::ChannelNotFound,
        Self::ChannelFinalized,
    ];

    /// The type URI suffix after [`PROBLEM_TYPE_BASE`].
    pub const fn slug(self) -> &'static str {
        match self {
            Self::PaymentRequired => "payment-required",
            Self::MalformedCredential => "malformed-credential",
            Self::InvalidChallenge => "invalid-challenge",
            Self::VerificationFailed => "verification-failed",
            Self::PaymentExpired => "payment-expired",
            Self::InvalidPayload => "invalid-payload",
            Self::PaymentInsufficient => "payment-insufficient",
            Self::MethodUnsupported => "method-unsupported",
            Self::BadRequest => "bad-request",
            Self::PaymentActionRequired => "payment-action-required",
            Self::InternalPaymentError => "internal-payment-error",
            Self::InsufficientBalance => "session/insufficient-balance",
            Self::InvalidSignature => "session/invalid-signature",
            Self::SignerMismatch => "session/signer-mismatch",
            Self::AmountExceedsDeposit => "session/amount-exceeds-deposit",
            Self::DeltaTooSmall => "session/delta-too-small",
            Self::ChannelNotFound => "session/channel-not-found",
            Self::ChannelFinalized => "session/channel-finalized",
        }
    }

    /// The full type URI.
    pub fn type_uri(self) -> String {
        format!("{PROBLEM_TYPE_BASE}{}", self.slug())
    }

    /// The problem title.
    pub const fn title(self) -> &'static str {
        match self {
            Self::PaymentRequired => "Payment Required",
            Self::MalformedCredential => "Malformed Credential",
            Self::InvalidChallenge => "Invalid Challenge",
            Self::VerificationFailed => "Verification Failed",
            Self::PaymentExpired => "Payment Expired",
            Self::InvalidPayload => "Invalid Payload",
            Self::PaymentInsufficient => "Payment Insufficient",
            Self::MethodUnsupported => "Method Unsupported",
            Self::BadRequest => "Bad Request",
            Self::PaymentActionRequired => "Payment Action Required",
            Self::InternalPaymentError => "Internal Payment Error",
            Self::InsufficientBalance => "Insufficient Balance",
            Self::InvalidSignature => "Invalid Signature",
            Self::SignerMismatch => "Signer Mismatch",
            Self::AmountExceedsDeposit => "Amount Exceeds Deposit",
            Self::DeltaTooSmall => "Delta Too Small",
            Self::ChannelNotFound => "Channel Not Found",
            Self::ChannelFinalized => "Channel Closed",
        }
    }

    /// The HTTP status mppx answers with (the response also carries a fresh challenge, whatever
    /// the status).
    pub const fn status(self) -> u16 {
        match self {
            Self::MethodUnsupported | Self::BadRequest => 400,
            Self::ChannelNotFound | Self::ChannelFinalized => 410,
            Self::InternalPaymentError => 500,
            _ => 402,
        }
    }

    /// The JSON-RPC error code of the MCP binding.
    pub const fn mcp_code(self) -> i32 {
        match self {
            Self::PaymentRequired => MCP_PAYMENT_REQUIRED,
            Self::MalformedCredential | Self::InvalidPayload => MCP_INVALID_PARAMS,
            Self::InternalPaymentError => MCP_INTERNAL_ERROR,
            _ => MCP_VERIFICATION_FAILED,
        }
    }

    /// The `hint` mppx adds for this kind, if any.
    pub const fn hint(self) -> Option<&'static str> {
        match self {
            Self::PaymentRequired | Self::MethodUnsupported => Some(HINT_PAY),
            Self::MalformedCredential => Some(HINT_CREDENTIAL),
            _ => None,
        }
    }
}

/// An RFC 9457 problem body (`Content-Type: application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    kind: ProblemKind,
    detail: String,
    details: Option<Map<String, Value>>,
    challenge_id: Option<String>,
}

/// `<prefix>: <reason>.` or the bare default, as mppx's error classes build their messages.
fn reasoned(prefix: &str, reason: Option<&str>, default: &str) -> String {
    match reason {
        Some(reason) if !reason.is_empty() => format!("{prefix}: {reason}."),
        _ => default.to_owned(),
    }
}

impl Problem {
    /// A problem of `kind` with free-form `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            details: None,
            challenge_id: None,
        }
    }

    /// Sets `challengeId`: the id of the fresh challenge sent with this response.
    #[must_use]
    pub fn with_challenge_id(mut self, challenge_id: impl Into<String>) -> Self {
        self.challenge_id = Some(challenge_id.into());
        self
    }

    /// Sets the structured `details` object (left out when empty, as in mppx).
    #[must_use]
    pub fn with_details(mut self, details: Map<String, Value>) -> Self {
        self.details = Some(details);
        self
    }

    /// The kind.
    pub const fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The HTTP status.
    pub const fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The `detail` text.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// `payment-required`: `Payment is required[ (<description>)].`
    pub fn payment_required(description: Option<&str>) -> Self {
        let detail = match description {
            Some(d) if !d.is_empty() => format!("Payment is required ({d})."),
            _ => "Payment is required.".to_owned(),
        };
        Self::new(ProblemKind::PaymentRequired, detail)
    }

    /// `malformed-credential`: `Credential is malformed[: <reason>].`
    pub fn malformed_credential(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Credential is malformed",
            reason,
            "Credential is malformed.",
        );
        Self::new(ProblemKind::MalformedCredential, detail)
    }

    /// `invalid-challenge`: `Challenge[ "<id>"] is invalid[: <reason>].`
    pub fn invalid_challenge(id: Option<&str>, reason: Option<&str>) -> Self {
        let id = id
            .filter(|i| !i.is_empty())
            .map(|i| format!(" \"{i}\""))
            .unwrap_or_default();
        let reason = reason
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        Self::new(
            ProblemKind::InvalidChallenge,
            format!("Challenge{id} is invalid{reason}."),
        )
    }

    /// `verification-failed`: `Payment verification failed[: <reason>].`
    pub fn verification_failed(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Payment verification failed",
            reason,
            "Payment verification failed.",
        );
        Self::new(ProblemKind::VerificationFailed, detail)
    }

    /// `payment-expired`: `Payment expired at <expires>.` or `Payment has expired.`
    pub fn payment_expired(expires: Option<&str>) -> Self {
        let detail = match expires {
            Some(e) if !e.is_empty() => format!("Payment expired at {e}."),
            _ => "Payment has expired.".to_owned(),
        };
        Self::new(ProblemKind::PaymentExpired, detail)
    }

    /// `invalid-payload`: `Credential payload is invalid[: <reason>].`
    pub fn invalid_payload(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Credential payload is invalid",
            reason,
            "Credential payload is invalid.",
        );
        Self::new(ProblemKind::InvalidPayload, detail)
    }

    /// `payment-insufficient`: `Payment insufficient: <reason>.`
    pub fn payment_insufficient(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Payment insufficient",
            reason,
            "Payment amount is insufficient.",
        );
        Self::new(ProblemKind::PaymentInsufficient, detail)
    }

    /// `method-unsupported`: `Payment method "<method>" is not supported.`
    pub fn method_unsupported(method: Option<&str>) -> Self {
        let detail = match method {
            Some(m) if !m.is_empty() => format!("Payment method \"{m}\" is not supported."),
            _ => "Payment method is not supported.".to_owned(),
        };
        Self::new(ProblemKind::MethodUnsupported, detail)
    }

    /// `bad-request`: `Bad request[: <reason>].`
    pub fn bad_request(reason: Option<&str>) -> Self {
        Self::new(
            ProblemKind::BadRequest,
            reasoned("Bad request", reason, "Bad request."),
        )
    }

    /// `payment-action-required`: `Payment requires action[: <reason>].`
    pub fn payment_action_required(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Payment requires action",
            reason,
            "Payment requires action.",
        );
        Self::new(ProblemKind::PaymentActionRequired, detail)
    }

    /// `internal-payment-error`: `An internal payment error occurred.` (never says more).
    pub fn internal() -> Self {
        Self::new(
            ProblemKind::InternalPaymentError,
            "An internal payment error occurred.",
        )
    }

    /// `session/insufficient-balance`: `Insufficient balance[: <reason>].`
    pub fn insufficient_balance(reason: Option<&str>) -> Self {
        let detail = reasoned("Insufficient balance", reason, "Insufficient balance.");
        Self::new(ProblemKind::InsufficientBalance, detail)
    }

    /// `session/invalid-signature`: `Invalid signature[: <reason>].`
    pub fn invalid_signature(reason: Option<&str>) -> Self {
        let detail = reasoned("Invalid signature", reason, "Invalid signature.");
        Self::new(ProblemKind::InvalidSignature, detail)
    }

    /// `session/signer-mismatch`: `Signer mismatch: <reason>.` or
    /// `Signer is not authorized for this channel.`
    pub fn signer_mismatch(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Signer mismatch",
            reason,
            "Signer is not authorized for this channel.",
        );
        Self::new(ProblemKind::SignerMismatch, detail)
    }

    /// `session/amount-exceeds-deposit`: `Amount exceeds deposit[: <reason>].`
    pub fn amount_exceeds_deposit(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Amount exceeds deposit",
            reason,
            "Voucher amount exceeds channel deposit.",
        );
        Self::new(ProblemKind::AmountExceedsDeposit, detail)
    }

    /// `session/delta-too-small`: `Delta too small[: <reason>].`
    pub fn delta_too_small(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Delta too small",
            reason,
            "Amount increase below minimum voucher delta.",
        );
        Self::new(ProblemKind::DeltaTooSmall, detail)
    }

    /// `session/channel-not-found`: `Channel not found: <reason>.` or
    /// `No channel with this ID exists.`
    pub fn channel_not_found(reason: Option<&str>) -> Self {
        let detail = reasoned(
            "Channel not found",
            reason,
            "No channel with this ID exists.",
        );
        Self::new(ProblemKind::ChannelNotFound, detail)
    }

    /// `session/channel-finalized`: `Channel closed[: <reason>].`
    pub fn channel_finalized(reason: Option<&str>) -> Self {
        let detail = reasoned("Channel closed", reason, "Channel is closed.");
        Self::new(ProblemKind::ChannelFinalized, detail)
    }

    /// The JSON body exactly as mppx writes it:
    /// `{type,title,status,detail,[details],[hint],[challengeId]}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            #[serde(rename = "type")]
            type_uri: String,
            title: &'static str,
            status: u16,
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a Map<String, Value>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            hint: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            challenge_id: Option<&'a str>,
        }
        serde_json::to_string(&Wire {
            type_uri: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.kind.status(),
            detail: &self.detail,
            details: self.details.as_ref().filter(|d| !d.is_empty()),
            hint: self.kind.hint(),
            challenge_id: self.challenge_id.as_deref().filter(|id| !id.is_empty()),
        })
        .unwrap_or_default()
    }
}
