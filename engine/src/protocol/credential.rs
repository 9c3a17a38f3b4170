//! The credential: `Authorization: Payment <base64url(JSON)>` (PROTOCOL.md §1.3).
//!
//! The JSON is parsed, never byte-compared: mppx writes it with plain `JSON.stringify`, so key
//! order is an accident of the client. What must match is checked by
//! [`SessionRoute::verify`](super::SessionRoute::verify) on the echoed [`Challenge`].

use std::fmt;

use alloy_primitives::Address;
use serde::Serialize;
use serde_json::{Map, Value};

use super::ProtocolError;
use super::auth_params::{SCHEME, is_js_space};
use super::b64::{base64url_decode, base64url_encode};
use super::challenge::{Challenge, MAX_HEADER_VALUE_LEN, Origin, RawChallenge, encode_opaque};
use super::error::echo;
use super::payload::{SessionPayload, WirePayload};
use super::wire::HexAddress;

/// A payment credential: the echoed challenge, the method-specific payload and the payer's DID.
///
/// [`parse_authorization`] yields `Credential<Value>` (the payload unchecked, as mppx checks it
/// only after the challenge); [`Credential::into_session`] types the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential<P = Value> {
    /// The challenge the client answers, as echoed.
    pub challenge: Challenge,
    /// The payload.
    pub payload: P,
    /// `source`: who pays, e.g. `did:pkh:eip155:31337:0x…`.
    pub source: Option<Did>,
}

/// A DID naming the payer (`source`).
///
/// `did:pkh:eip155:<chainId>:<address>` (what mppx's Tempo clients send) is read into its chain
/// id and address; other DID methods are kept as text.
#[derive(Clone, PartialEq, Eq)]
pub struct Did {
    text: String,
    account: Option<PkhAccount>,
}

/// The account of a `did:pkh:eip155` DID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PkhAccount {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The account address.
    pub address: Address,
}

impl Did {
    const PKH_EIP155: &'static str = "did:pkh:eip155:";

    /// Parses a DID (`did:<method>:<id>`); a `did:pkh:eip155:` DID must carry a decimal chain
    /// id and a 20-byte hex address.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let bad = |reason| ProtocolError::InvalidField {
            field: "source",
            value: echo(text),
            reason,
        };
        if let Some(rest) = text.strip_prefix(Self::PKH_EIP155) {
            let (chain, address) = rest
                .split_once(':')
                .ok_or_else(|| bad("expected did:pkh:eip155:<chainId>:<address>"))?;
            let chain_id = (!chain.is_empty()
                && chain.len() <= 20
                && chain.bytes().all(|b| b.is_ascii_digit()))
            .then(|| chain.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| bad("chain id is not a decimal u64"))?;
            let address =
                HexAddress::parse(address).ok_or_else(|| bad("not a 20-byte hex address"))?;
            return Ok(Self {
                text: text.to_owned(),
                account: Some(PkhAccount {
                    chain_id,
                    address: address.address(),
                }),
            });
        }
        let mut parts = text.splitn(3, ':');
        let well_formed = parts.next() == Some("did")
            && parts.next().is_some_and(|m| {
                !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && parts
                .next()
                .is_some_and(|id| !id.is_empty() && !id.chars().any(char::is_whitespace));
        if !well_formed {
            return Err(bad("not a DID"));
        }
        Ok(Self {
            text: text.to_owned(),
            account: None,
        })
    }

    /// `did:pkh:eip155:<chainId>:<EIP-55 address>`, as mppx's clients write it.
    pub fn pkh_eip155(chain_id: u64, address: Address) -> Self {
        Self {
            text: format!(
                "{}{chain_id}:{}",
                Self::PKH_EIP155,
                address.to_checksum(None)
            ),
            account: Some(PkhAccount { chain_id, address }),
        }
    }

    /// The DID text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The chain id and address of a `did:pkh:eip155` DID.
    pub const fn eip155_account(&self) -> Option<PkhAccount> {
        self.account
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reads the credential from an `Authorization` (or advertised credential header) value.
///
/// As mppx: the value is split on commas and the first part that starts with `Payment ` (any
/// case) is decoded; base64url → JSON → `{challenge, payload, source?}`. An `opaque` echoed as
/// an object (older mppx clients) is re-encoded to its base64url form. Every failure is a
/// malformed credential (see [`ProtocolError::problem_kind`]).
pub fn parse_authorization(value: &str) -> Result<Credential, ProtocolError> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(ProtocolError::HeaderTooLarge {
            len: value.len(),
            max: MAX_HEADER_VALUE_LEN,
        });
    }
    let token = value
        .split(',')
        .map(str::trim)
        .find_map(|part| {
            let scheme = part.get(..SCHEME.len())?;
            let rest = &part[SCHEME.len()..];
            (scheme.eq_ignore_ascii_case(SCHEME) && rest.starts_with(is_js_space))
                .then(|| rest.trim_start_matches(is_js_space))
        })
        .ok_or(ProtocolError::MissingPaymentScheme)?;
    let bytes = base64url_decode(token).ok_or(ProtocolError::InvalidBase64 {
        field: "credential",
    })?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| ProtocolError::InvalidJson {
        field: "credential",
        reason: e.to_string(),
    })?;
    let Value::Object(mut root) = json else {
        return Err(ProtocolError::InvalidJson {
            field: "credential",
            reason: "not a JSON object".into(),
        });
    };
    let Some(Value::Object(challenge)) = root.remove("challenge") else {
        return Err(ProtocolError::MissingField { field: "challenge" });
    };
    let challenge = read_echoed_challenge(challenge)?;
    let payload = root.remove("payload").unwrap_or(Value::Null);
    let source = match root.remove("source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(Did::parse(&s)?),
        Some(_) => {
            return Err(ProtocolError::InvalidField {
                field: "source",
                value: String::new(),
                reason: "not a string",
            });
        }
    };
    Ok(Credential {
        challenge,
        payload,
        source,
    })
}

fn read_echoed_challenge(mut map: Map<String, Value>) -> Result<Challenge, ProtocolError> {
    let mut take = |field: &'static str| -> Result<Option<String>, ProtocolError> {
        match map.remove(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ProtocolError::InvalidField {
                field,
                value: String::new(),
                reason: "not a string",
            }),
        }
    };
    let raw = RawChallenge {
        id: take("id")?,
        realm: take("realm")?,
        method: take("method")?,
        intent: take("intent")?,
        request: take("request")?,
        description: take("description")?,
        digest: take("digest")?,
        expires: take("expires")?,
        header: take("header")?,
        opaque: match map.remove("opaque") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Object(meta)) => Some(encode_legacy_opaque(meta)?),
            Some(_) => {
                return Err(ProtocolError::InvalidField {
                    field: "opaque",
                    value: String::new(),
                    reason: "neither a string nor a string map",
                });
            }
        },
    };
    raw.validate(Origin::Credential)
}

/// Older mppx clients echoed `opaque` as the decoded string map; re-encode it.
fn encode_legacy_opaque(meta: Map<String, Value>) -> Result<String, ProtocolError> {
    let meta = meta
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(ProtocolError::InvalidField {
                field: "opaque",
                value: String::new(),
                reason: "object values must be strings",
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(encode_opaque(&meta))
}

impl Credential<Value> {
    /// Types the payload as a session payload ([`ProtocolError::InvalidPayload`] if it is not).
    pub fn into_session(self) -> Result<Credential<SessionPayload>, ProtocolError> {
        let payload = SessionPayload::from_json(&self.payload)?;
        Ok(Credential {
            challenge: self.challenge,
            payload,
            source: self.source,
        })
    }
}

impl Credential<SessionPayload> {
    /// The credential header value (`Payment <base64url(JSON)>`), written field for field as
    /// mppx's client writes it.
    pub fn to_header_value(&self) -> String {
        let c = &self.challenge;
        let wire = WireCredential {
            challenge: WireChallenge {
                description: c.description(),
                digest: c.digest(),
                expires: c.expires(),
                header: c.header(),
                id: c.id(),
                intent: c.intent(),
                method: c.method(),
                realm: c.realm(),
                opaque: c.opaque(),
                request: c.request_b64(),
            },
            payload: self.payload.to_wire(),
            source: self.source.as_ref().map(Did::as_str),
        };
        // Serialising plain strings and options cannot fail.
        let json = serde_json::to_string(&wire).unwrap_or_default();
        format!("{SCHEME} {}", base64url_encode(json))
    }
}

/// Wire form of a credential. mppx spreads the parsed challenge (whose schema lists its fields
/// alphabetically), then appends `opaque` and `request`.
#[derive(Serialize)]
struct WireCredential<'a> {
    challenge: WireChallenge<'a>,
    payload: WirePayload,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Serialize)]
struct WireChallenge<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'a str>,
    id: &'a str,
    intent: &'a str,
    method: &'a str,
    realm: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    opaque: Option<&'a str>,
    request: &'a str,
}
