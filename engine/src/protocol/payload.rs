//! Typed `tempo`/`session` credential payloads (PROTOCOL.md §3.1).

use alloy_primitives::{B256, Bytes};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ProtocolError;
use super::error::echo;
use super::wire::{FieldDefect, Fields, HexAddress, hex_string};

/// The v2 channel descriptor (`payload.descriptor`), sent by mppx's v2 (precompile) client.
/// Sluice serves v1 and only reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescriptor {
    /// `payer`.
    pub payer: HexAddress,
    /// `payee`.
    pub payee: HexAddress,
    /// `operator` (zero address when unset).
    pub operator: HexAddress,
    /// `token`.
    pub token: HexAddress,
    /// `salt`.
    pub salt: B256,
    /// `authorizedSigner` (zero address when unset).
    pub authorized_signer: HexAddress,
    /// `expiringNonceHash`.
    pub expiring_nonce_hash: B256,
}

/// `action: "open"`: the payer's signed open transaction plus the initial voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPayload {
    /// `channelId`.
    pub channel_id: B256,
    /// `transaction`: the signed transaction bytes.
    pub transaction: Bytes,
    /// `cumulativeAmount` of the initial voucher.
    pub cumulative_amount: u128,
    /// `signature` of the initial voucher.
    pub signature: Bytes,
    /// `authorizedSigner` as claimed by the client (the server takes the real one from chain).
    pub authorized_signer: Option<HexAddress>,
    /// `descriptor` (v2).
    pub descriptor: Option<ChannelDescriptor>,
}

/// `action: "topUp"`: the payer's signed top-up transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpPayload {
    /// `channelId`.
    pub channel_id: B256,
    /// `transaction`: the signed transaction bytes.
    pub transaction: Bytes,
    /// `additionalDeposit`.
    pub additional_deposit: u128,
    /// `descriptor` (v2).
    pub descriptor: Option<ChannelDescriptor>,
}

/// `action: "voucher"` or `"close"`: a cumulative voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherPayload {
    /// `channelId`.
    pub channel_id: B256,
    /// `cumulativeAmount`.
    pub cumulative_amount: u128,
    /// `signature` (hex bytes as sent; the voucher crate checks their form).
    pub signature: Bytes,
    /// `descriptor` (v2).
    pub descriptor: Option<ChannelDescriptor>,
}

/// A session credential payload, discriminated by `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPayload {
    /// Open a channel.
    Open(OpenPayload),
    /// Add to a channel's deposit.
    TopUp(TopUpPayload),
    /// Raise the accepted cumulative amount.
    Voucher(VoucherPayload),
    /// Close the channel with this final voucher.
    Close(VoucherPayload),
}

fn field_error(field: &'static str) -> impl Fn(FieldDefect) -> ProtocolError {
    move |defect| ProtocolError::InvalidPayload {
        field,
        reason: defect.reason(),
    }
}

fn read_descriptor(f: &Fields<'_>) -> Result<Option<ChannelDescriptor>, ProtocolError> {
    let Some(d) = f
        .opt_object("descriptor")
        .map_err(field_error("descriptor"))?
    else {
        return Ok(None);
    };
    let address = |key: &'static str| d.address(key).map_err(field_error(key));
    let hash = |key: &'static str| d.b256(key).map_err(field_error(key));
    Ok(Some(ChannelDescriptor {
        payer: address("payer")?,
        payee: address("payee")?,
        operator: address("operator")?,
        token: address("token")?,
        salt: hash("salt")?,
        authorized_signer: address("authorizedSigner")?,
        expiring_nonce_hash: hash("expiringNonceHash")?,
    }))
}

fn require_transaction_type(f: &Fields<'_>) -> Result<(), ProtocolError> {
    match f.str("type").map_err(field_error("type"))? {
        "transaction" => Ok(()),
        _ => Err(ProtocolError::InvalidPayload {
            field: "type",
            reason: "must be \"transaction\"",
        }),
    }
}

impl SessionPayload {
    /// Reads a credential's `payload` against the session schema (mppx `Methods.session`).
    /// Unknown fields are ignored; every known field is type- and format-checked.
    pub fn from_json(payload: &Value) -> Result<Self, ProtocolError> {
        let Value::Object(map) = payload else {
            return Err(ProtocolError::InvalidPayload {
                field: "payload",
                reason: "not an object",
            });
        };
        let f = Fields(map);
        let action = f.str("action").map_err(field_error("action"))?;
        let channel_id = || f.b256("channelId").map_err(field_error("channelId"));
        let amount = |key: &'static str| f.amount(key).map_err(field_error(key));
        let bytes = |key: &'static str| f.hex_bytes(key).map_err(field_error(key));
        match action {
            "open" => {
                require_transaction_type(&f)?;
                Ok(Self::Open(OpenPayload {
                    channel_id: channel_id()?,
                    transaction: bytes("transaction")?,
                    cumulative_amount: amount("cumulativeAmount")?,
                    signature: bytes("signature")?,
                    authorized_signer: f
                        .opt_address("authorizedSigner")
                        .map_err(field_error("authorizedSigner"))?,
                    descriptor: read_descriptor(&f)?,
                }))
            }
            "topUp" => {
                require_transaction_type(&f)?;
                Ok(Self::TopUp(TopUpPayload {
                    channel_id: channel_id()?,
                    transaction: bytes("transaction")?,
                    additional_deposit: amount("additionalDeposit")?,
                    descriptor: read_descriptor(&f)?,
                }))
            }
            "voucher" | "close" => {
                let voucher = VoucherPayload {
                    channel_id: channel_id()?,
                    cumulative_amount: amount("cumulativeAmount")?,
                    signature: bytes("signature")?,
                    descriptor: read_descriptor(&f)?,
                };
                Ok(if action == "voucher" {
                    Self::Voucher(voucher)
                } else {
                    Self::Close(voucher)
                })
            }
            other => Err(ProtocolError::UnknownPayloadAction {
                action: echo(other),
            }),
        }
    }

    /// The `action` name.
    pub const fn action(&self) -> &'static str {
        match self {
            Self::Open(_) => "open",
            Self::TopUp(_) => "topUp",
            Self::Voucher(_) => "voucher",
            Self::Close(_) => "close",
        }
    }

    /// The channel this payload is about.
    pub const fn channel_id(&self) -> B256 {
        match self {
            Self::Open(p) => p.channel_id,
            Self::TopUp(p) => p.channel_id,
            Self::Voucher(p) | Self::Close(p) => p.channel_id,
        }
    }

    /// The payload as mppx's client writes it (field order included), for serialisation.
    pub(crate) fn to_wire(&self) -> WirePayload {
        let descriptor = |d: &Option<ChannelDescriptor>| d.as_ref().map(WireDescriptor::from);
        match self {
            Self::Open(p) => WirePayload {
                action: "open",
                kind: Some("transaction"),
                channel_id: p.channel_id.to_string(),
                descriptor: descriptor(&p.descriptor),
                transaction: Some(hex_string(&p.transaction)),
                authorized_signer: p.authorized_signer.as_ref().map(|a| a.as_str().to_owned()),
                additional_deposit: None,
                cumulative_amount: Some(p.cumulative_amount.to_string()),
                signature: Some(hex_string(&p.signature)),
            },
            Self::TopUp(p) => WirePayload {
                action: "topUp",
                kind: Some("transaction"),
                channel_id: p.channel_id.to_string(),
                descriptor: descriptor(&p.descriptor),
                transaction: Some(hex_string(&p.transaction)),
                authorized_signer: None,
                additional_deposit: Some(p.additional_deposit.to_string()),
                cumulative_amount: None,
                signature: None,
            },
            Self::Voucher(p) | Self::Close(p) => WirePayload {
                action: self.action(),
                kind: None,
                channel_id: p.channel_id.to_string(),
                descriptor: descriptor(&p.descriptor),
                transaction: None,
                authorized_signer: None,
                additional_deposit: None,
                cumulative_amount: Some(p.cumulative_amount.to_string()),
                signature: Some(hex_string(&p.signature)),
            },
        }
    }

    /// The payload as a JSON value (key order not significant).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_wire()).unwrap_or(Value::Object(Map::new()))
    }
}

/// Wire form of a payload; field order is mppx's (`JSON.stringify` keeps insertion order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WirePayload {
    action: &'static str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    channel_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    descriptor: Option<WireDescriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorized_signer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_deposit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cumulative_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WireDescriptor {
    payer: String,
    payee: String,
    operator: String,
    token: String,
    salt: String,
    authorized_signer: String,
    expiring_nonce_hash: String,
}

impl From<&ChannelDescriptor> for WireDescriptor {
    fn from(d: &ChannelDescriptor) -> Self {
        Self {
            payer: d.payer.as_str().to_owned(),
            payee: d.payee.as_str().to_owned(),
            operator: d.operator.as_str().to_owned(),
            token: d.token.as_str().to_owned(),
            salt: d.salt.to_string(),
            authorized_signer: d.authorized_signer.as_str().to_owned(),
            expiring_nonce_hash: d.expiring_nonce_hash.to_string(),
        }
    }
}
