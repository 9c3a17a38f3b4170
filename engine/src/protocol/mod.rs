//! MPP core codecs for the `Payment` HTTP authentication scheme, `tempo`/`session` profile.
//!
//! Pure: no I/O, no clock, no async. Callers pass `now` in and get values or typed
//! [`ProtocolError`]s back; nothing here panics on malformed input.
//!
//! | Wire element | Types |
//! |---|---|
//! | `WWW-Authenticate: Payment …` | [`Challenge`], [`ChallengeBuilder`], [`parse_www_authenticate`] |
//! | challenge id (HMAC-SHA256) | [`ChallengeSecret`], [`IdFields`] |
//! | session `request` | [`SessionRequest`], [`SessionMethodDetails`], [`SessionProtocol`] |
//! | issuing and verifying a route's challenge | [`SessionRoute`] |
//! | `Authorization: Payment …` | [`parse_authorization`], [`Credential`], [`Did`], [`SessionPayload`] |
//! | `Payment-Receipt`, SSE events | [`SessionReceipt`], [`NeedVoucher`], [`sse_message_event`] |
//! | RFC 9457 problem bodies | [`Problem`], [`ProblemKind`] |
//! | `Accept-Payment` | [`AcceptPayment`] |
//! | encodings | [`canonicalize`] (JCS), [`base64url_encode`], [`base64url_decode`], [`Timestamp`] |

mod accept_payment;
mod auth_params;
mod b64;
mod challenge;
mod challenge_id;
mod credential;
mod error;
mod jcs;
mod payload;
mod problem;
mod receipt;
mod request;
mod time;
mod verify;
mod wire;

pub use accept_payment::{AcceptPayment, MAX_ACCEPT_PAYMENT_LEN, PaymentPreference};
pub use b64::{base64url_decode, base64url_encode};
pub use challenge::{
    Challenge, ChallengeBuilder, DEFAULT_CREDENTIAL_HEADER, MAX_HEADER_VALUE_LEN,
    MAX_REQUEST_PARAM_LEN, encode_opaque, parse_www_authenticate,
};
pub use challenge_id::{ChallengeSecret, IdFields};
pub use credential::{Credential, Did, PkhAccount, parse_authorization};
pub use error::{PinnedField, ProtocolError};
pub use jcs::canonicalize;
pub use payload::{ChannelDescriptor, OpenPayload, SessionPayload, TopUpPayload, VoucherPayload};
pub use problem::{
    MCP_INTERNAL_ERROR, MCP_INVALID_PARAMS, MCP_PAYMENT_REQUIRED, MCP_VERIFICATION_FAILED,
    PROBLEM_TYPE_BASE, Problem, ProblemKind,
};
pub use receipt::{NeedVoucher, SessionReceipt, sse_message_event};
pub use request::{SessionMethodDetails, SessionProtocol, SessionRequest};
pub use time::Timestamp;
pub use verify::{INTENT_SESSION, METHOD_TEMPO, SessionRoute};
pub use wire::HexAddress;
