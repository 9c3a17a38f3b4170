//! The session receipt (`Payment-Receipt` header and final SSE event) and the other SSE events
//! of a metered stream (PROTOCOL.md §1.4, §3.7, §3.8).

use alloy_primitives::B256;
use serde::Serialize;
use serde_json::Value;

use super::ProtocolError;
use super::b64::{base64url_decode, base64url_encode};
use super::error::echo;
use super::time::Timestamp;
use super::verify::{INTENT_SESSION, METHOD_TEMPO};
use super::wire::{FieldDefect, Fields};

/// A `tempo`/`session` receipt: what the server has accepted and charged on a channel.
///
/// Holds the money invariant `spent ≤ acceptedCumulative`: it cannot be built, or read, without
/// it. `reference` is the channel id, as mppx sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReceipt {
    timestamp: Timestamp,
    challenge_id: String,
    channel_id: B256,
    accepted_cumulative: u128,
    spent: u128,
    units: Option<u64>,
    tx_hash: Option<B256>,
}

fn receipt_field(field: &'static str) -> impl Fn(FieldDefect) -> ProtocolError {
    move |defect| ProtocolError::InvalidField {
        field,
        value: String::new(),
        reason: defect.reason(),
    }
}

impl SessionReceipt {
    /// A receipt for `channel_id` answering challenge `challenge_id`; fails if `spent` exceeds
    /// `accepted_cumulative`.
    pub fn new(
        timestamp: Timestamp,
        challenge_id: impl Into<String>,
        channel_id: B256,
        accepted_cumulative: u128,
        spent: u128,
    ) -> Result<Self, ProtocolError> {
        if spent > accepted_cumulative {
            return Err(ProtocolError::SpentExceedsAccepted {
                spent,
                accepted: accepted_cumulative,
            });
        }
        Ok(Self {
            timestamp,
            challenge_id: challenge_id.into(),
            channel_id,
            accepted_cumulative,
            spent,
            units: None,
            tx_hash: None,
        })
    }

    /// Adds the number of units charged so far.
    #[must_use]
    pub const fn with_units(mut self, units: u64) -> Self {
        self.units = Some(units);
        self
    }

    /// Adds the hash of the on-chain transaction this response caused (open, topUp, close).
    #[must_use]
    pub const fn with_tx_hash(mut self, tx_hash: B256) -> Self {
        self.tx_hash = Some(tx_hash);
        self
    }

    /// When the receipt was made.
    pub const fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The challenge the credential answered.
    pub fn challenge_id(&self) -> &str {
        &self.challenge_id
    }

    /// The channel.
    pub const fn channel_id(&self) -> B256 {
        self.channel_id
    }

    /// Highest voucher amount the server has accepted.
    pub const fn accepted_cumulative(&self) -> u128 {
        self.accepted_cumulative
    }

    /// Amount charged so far.
    pub const fn spent(&self) -> u128 {
        self.spent
    }

    /// Units charged so far.
    pub const fn units(&self) -> Option<u64> {
        self.units
    }

    /// On-chain transaction hash, if any.
    pub const fn tx_hash(&self) -> Option<B256> {
        self.tx_hash
    }

    /// The receipt JSON exactly as mppx writes it (`JSON.stringify`, mppx's field order).
    pub fn to_json(&self) -> String {
        let channel_id = self.channel_id.to_string();
        let wire = WireReceipt {
            method: METHOD_TEMPO,
            intent: INTENT_SESSION,
            status: "success",
            timestamp: self.timestamp.to_iso_string(),
            reference: &channel_id,
            challenge_id: &self.challenge_id,
            channel_id: &channel_id,
            accepted_cumulative: self.accepted_cumulative.to_string(),
            spent: self.spent.to_string(),
            units: self.units,
            tx_hash: self.tx_hash.map(|h| h.to_string()),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The `Payment-Receipt` header value: base64url(JSON), no padding.
    pub fn to_header_value(&self) -> String {
        base64url_encode(self.to_json())
    }

    /// The final SSE event of a metered stream: `event: payment-receipt`.
    pub fn to_sse_event(&self) -> String {
        format!("event: payment-receipt\ndata: {}\n\n", self.to_json())
    }

    /// Reads a `Payment-Receipt` header value (client side), checking the session receipt shape
    /// and `spent ≤ acceptedCumulative` as mppx's client does.
    pub fn from_header_value(value: &str) -> Result<Self, ProtocolError> {
        let bytes = base64url_decode(value.trim()).ok_or(ProtocolError::InvalidBase64 {
            field: "Payment-Receipt",
        })?;
        let json: Value =
            serde_json::from_slice(&bytes).map_err(|e| ProtocolError::InvalidJson {
                field: "Payment-Receipt",
                reason: e.to_string(),
            })?;
        Self::from_json(&json)
    }

    /// Reads a receipt JSON value (the SSE `payment-receipt` data, or a decoded header).
    pub fn from_json(json: &Value) -> Result<Self, ProtocolError> {
        let Value::Object(map) = json else {
            return Err(ProtocolError::InvalidJson {
                field: "Payment-Receipt",
                reason: "not a JSON object".into(),
            });
        };
        let f = Fields(map);
        for (field, want) in [
            ("method", METHOD_TEMPO),
            ("intent", INTENT_SESSION),
            ("status", "success"),
        ] {
            let got = f.str(field).map_err(receipt_field(field))?;
            if got != want {
                return Err(ProtocolError::InvalidField {
                    field,
                    value: echo(got),
                    reason: "unexpected value for a session receipt",
                });
            }
        }
        f.str("reference").map_err(receipt_field("reference"))?;
        let timestamp = f.str("timestamp").map_err(receipt_field("timestamp"))?;
        let timestamp = Timestamp::parse_rfc3339(timestamp)?;
        let receipt = Self::new(
            timestamp,
            f.str("challengeId").map_err(receipt_field("challengeId"))?,
            f.b256("channelId").map_err(receipt_field("channelId"))?,
            f.amount("acceptedCumulative")
                .map_err(receipt_field("acceptedCumulative"))?,
            f.amount("spent").map_err(receipt_field("spent"))?,
        )?;
        Ok(Self {
            units: f.opt_u64("units").map_err(receipt_field("units"))?,
            tx_hash: f.opt_b256("txHash").map_err(receipt_field("txHash"))?,
            ..receipt
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReceipt<'a> {
    method: &'static str,
    intent: &'static str,
    status: &'static str,
    timestamp: String,
    reference: &'a str,
    challenge_id: &'a str,
    channel_id: &'a str,
    accepted_cumulative: String,
    spent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    units: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tx_hash: Option<String>,
}

/// The `payment-need-voucher` SSE event: the stream is paused until a voucher raises the
/// accepted amount to `required_cumulative`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedVoucher {
    /// The channel.
    pub channel_id: B256,
    /// Cumulative amount the next voucher must reach.
    pub required_cumulative: u128,
    /// Currently accepted cumulative amount.
    pub accepted_cumulative: u128,
    /// The channel's deposit (the client tops up first if `required_cumulative` exceeds it).
    pub deposit: u128,
}

impl NeedVoucher {
    /// The event data JSON, as mppx writes it.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            channel_id: String,
            required_cumulative: String,
            accepted_cumulative: String,
            deposit: String,
        }
        serde_json::to_string(&Wire {
            channel_id: self.channel_id.to_string(),
            required_cumulative: self.required_cumulative.to_string(),
            accepted_cumulative: self.accepted_cumulative.to_string(),
            deposit: self.deposit.to_string(),
        })
        .unwrap_or_default()
    }

    /// The SSE event: `event: payment-need-voucher`.
    pub fn to_sse_event(&self) -> String {
        format!("event: payment-need-voucher\ndata: {}\n\n", self.to_json())
    }
}

/// An application `message` SSE event: one `data:` line per line of `data`.
///
/// mppx splits on `\n` only; this also splits on `\r\n` and `\r`, which SSE readers treat as
/// line ends too, so a `\r` in content can never smuggle in an `event:` line of its own.
pub fn sse_message_event(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str("event: message\n");
    let mut rest = data;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.push('\n');
    out
}
