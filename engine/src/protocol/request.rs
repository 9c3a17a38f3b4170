//! The `tempo`/`session` challenge request (PROTOCOL.md §2).

use alloy_primitives::B256;
use serde_json::{Map, Value};

use super::ProtocolError;
use super::error::PinnedField;
use super::wire::{FieldDefect, Fields, HexAddress};

/// Which session protocol a request advertises (`methodDetails.sessionProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    /// `"v1"`: the contract-backed escrow (Tempo Stream Channel ABI). Sluice's protocol.
    V1,
    /// `"v2"`: the Tempo-only TIP-1034 precompile (read for completeness; not served).
    V2,
}

impl SessionProtocol {
    /// The wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// `request.methodDetails` of a session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMethodDetails {
    /// `escrowContract`: the escrow holding the channel deposits.
    pub escrow_contract: HexAddress,
    /// `chainId` (a JSON number).
    pub chain_id: u64,
    /// `channelId`: a channel the server suggests resuming.
    pub channel_id: Option<B256>,
    /// `minVoucherDelta`: smallest accepted increase of a voucher, in base units.
    pub min_voucher_delta: Option<u128>,
    /// `sessionProtocol`; absent means v1 to mppx clients, but Sluice always writes `"v1"`.
    pub session_protocol: Option<SessionProtocol>,
    /// `feePayer` (Tempo fee sponsorship).
    pub fee_payer: Option<bool>,
    /// `feeToken` (Tempo fee sponsorship).
    pub fee_token: Option<HexAddress>,
    /// `operator` (v2 only).
    pub operator: Option<HexAddress>,
}

/// The `request` of a `tempo`/`session` challenge.
///
/// Amounts are base units. Unknown fields of a parsed request are ignored here (they stay in
/// [`Challenge::request`](super::Challenge::request), which is what the id binds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// `amount`: price per unit, in base units; greater than zero.
    pub amount: u128,
    /// `currency`: the token.
    pub currency: HexAddress,
    /// `recipient`: the payee.
    pub recipient: HexAddress,
    /// `unitType`, e.g. `llm_token` (required by mppx's schema).
    pub unit_type: String,
    /// `suggestedDeposit`, in base units.
    pub suggested_deposit: Option<u128>,
    /// `description`.
    pub description: Option<String>,
    /// `externalId`.
    pub external_id: Option<String>,
    /// `methodDetails`.
    pub method_details: SessionMethodDetails,
}

fn field_error(field: &'static str) -> impl Fn(FieldDefect) -> ProtocolError {
    move |defect| ProtocolError::InvalidRequest {
        field,
        reason: defect.reason(),
    }
}

impl SessionRequest {
    /// Reads a session request from a challenge's request object.
    pub fn from_json(request: &Map<String, Value>) -> Result<Self, ProtocolError> {
        let f = Fields(request);
        let amount = f.amount("amount").map_err(field_error("amount"))?;
        if amount == 0 {
            return Err(ProtocolError::InvalidRequest {
                field: "amount",
                reason: "must be greater than 0",
            });
        }
        let details = f
            .object("methodDetails")
            .map_err(field_error("methodDetails"))?;
        let session_protocol = match details.opt_str("sessionProtocol") {
            Ok(None) => None,
            Ok(Some("v1")) => Some(SessionProtocol::V1),
            Ok(Some("v2")) => Some(SessionProtocol::V2),
            Ok(Some(_)) => {
                return Err(ProtocolError::InvalidRequest {
                    field: "methodDetails.sessionProtocol",
                    reason: "must be \"v1\" or \"v2\"",
                });
            }
            Err(defect) => return Err(field_error("methodDetails.sessionProtocol")(defect)),
        };
        let chain_id = details
            .opt_u64("chainId")
            .map_err(field_error("methodDetails.chainId"))?
            .ok_or(ProtocolError::InvalidRequest {
                field: "methodDetails.chainId",
                reason: FieldDefect::Missing.reason(),
            })?;
        Ok(Self {
            amount,
            currency: f.address("currency").map_err(field_error("currency"))?,
            recipient: f.address("recipient").map_err(field_error("recipient"))?,
            unit_type: f
                .str("unitType")
                .map_err(field_error("unitType"))?
                .to_owned(),
            suggested_deposit: f
                .opt_amount("suggestedDeposit")
                .map_err(field_error("suggestedDeposit"))?,
            description: f
                .opt_str("description")
                .map_err(field_error("description"))?
                .map(str::to_owned),
            external_id: f
                .opt_str("externalId")
                .map_err(field_error("externalId"))?
                .map(str::to_owned),
            method_details: SessionMethodDetails {
                escrow_contract: details
                    .address("escrowContract")
                    .map_err(field_error("methodDetails.escrowContract"))?,
                chain_id,
                channel_id: details
                    .opt_b256("channelId")
                    .map_err(field_error("methodDetails.channelId"))?,
                min_voucher_delta: details
                    .opt_amount("minVoucherDelta")
                    .map_err(field_error("methodDetails.minVoucherDelta"))?,
                session_protocol,
                fee_payer: details
                    .opt_bool("feePayer")
                    .map_err(field_error("methodDetails.feePayer"))?,
                fee_token: details
                    .opt_address("feeToken")
                    .map_err(field_error("methodDetails.feeToken"))?,
                operator: details
                    .opt_address("operator")
                    .map_err(field_error("methodDetails.operator"))?,
            },
        })
    }

    /// The request as a JSON object (canonicalised and encoded when a challenge is issued).
    /// Amounts become decimal strings, addresses keep their spelling, `chainId` is a number.
    pub fn to_json(&self) -> Map<String, Value> {
        let s = |v: &str| Value::String(v.to_owned());
        let amount = |v: u128| Value::String(v.to_string());
        let d = &self.method_details;
        let mut details = Map::new();
        details.insert("escrowContract".into(), s(d.escrow_contract.as_str()));
        details.insert("chainId".into(), Value::from(d.chain_id));
        if let Some(channel_id) = d.channel_id {
            details.insert("channelId".into(), Value::String(channel_id.to_string()));
        }
        if let Some(delta) = d.min_voucher_delta {
            details.insert("minVoucherDelta".into(), amount(delta));
        }
        if let Some(protocol) = d.session_protocol {
            details.insert("sessionProtocol".into(), s(protocol.as_str()));
        }
        if let Some(fee_payer) = d.fee_payer {
            details.insert("feePayer".into(), Value::Bool(fee_payer));
        }
        if let Some(fee_token) = &d.fee_token {
            details.insert("feeToken".into(), s(fee_token.as_str()));
        }
        if let Some(operator) = &d.operator {
            details.insert("operator".into(), s(operator.as_str()));
        }

        let mut request = Map::new();
        request.insert("amount".into(), amount(self.amount));
        request.insert("currency".into(), s(self.currency.as_str()));
        request.insert("recipient".into(), s(self.recipient.as_str()));
        request.insert("unitType".into(), s(&self.unit_type));
        if let Some(deposit) = self.suggested_deposit {
            request.insert("suggestedDeposit".into(), amount(deposit));
        }
        if let Some(description) = &self.description {
            request.insert("description".into(), s(description));
        }
        if let Some(external_id) = &self.external_id {
            request.insert("externalId".into(), s(external_id));
        }
        request.insert("methodDetails".into(), Value::Object(details));
        request
    }

    /// The first pinned field where `echoed` differs from these (the route's) terms, with both
    /// values rendered for the error. Addresses compare as addresses (case-insensitively).
    pub(crate) fn pinned_mismatch(&self, echoed: &Self) -> Option<(PinnedField, String, String)> {
        let (mine, theirs) = (&self.method_details, &echoed.method_details);
        let protocol = |p: Option<SessionProtocol>| p.map_or("(absent)", SessionProtocol::as_str);
        if self.amount != echoed.amount {
            return Some((
                PinnedField::Amount,
                echoed.amount.to_string(),
                self.amount.to_string(),
            ));
        }
        if self.currency != echoed.currency {
            return Some((
                PinnedField::Currency,
                echoed.currency.to_string(),
                self.currency.to_string(),
            ));
        }
        if self.recipient != echoed.recipient {
            return Some((
                PinnedField::Recipient,
                echoed.recipient.to_string(),
                self.recipient.to_string(),
            ));
        }
        if mine.chain_id != theirs.chain_id {
            return Some((
                PinnedField::ChainId,
                theirs.chain_id.to_string(),
                mine.chain_id.to_string(),
            ));
        }
        if mine.session_protocol != theirs.session_protocol {
            return Some((
                PinnedField::SessionProtocol,
                protocol(theirs.session_protocol).to_owned(),
                protocol(mine.session_protocol).to_owned(),
            ));
        }
        if self.unit_type != echoed.unit_type {
            return Some((
                PinnedField::UnitType,
                echoed.unit_type.clone(),
                self.unit_type.clone(),
            ));
        }
        if mine.escrow_contract != theirs.escrow_contract {
            return Some((
                PinnedField::EscrowContract,
                theirs.escrow_contract.to_string(),
                mine.escrow_contract.to_string(),
            ));
        }
        None
    }
}
