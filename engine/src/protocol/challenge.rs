//! The `Payment` challenge: `WWW-Authenticate: Payment id="…", realm="…", …` (PROTOCOL.md §1.1).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ProtocolError;
use super::auth_params::{self, SCHEME, find_scheme_starts, is_js_space, parse_auth_params};
use super::b64::{base64url_decode, base64url_encode};
use super::challenge_id::{ChallengeSecret, IdFields};
use super::error::echo;
use super::jcs::{canonicalize, canonicalize_object};
use super::request::SessionRequest;
use super::time::Timestamp;

/// Largest `request` auth-param (base64url text) accepted, as in mppx: 16 KiB.
pub const MAX_REQUEST_PARAM_LEN: usize = 16 * 1024;

/// Largest `WWW-Authenticate` or `Authorization` value accepted: 64 KiB. A credential embeds
/// the base64url of a JSON that embeds the (≤ 16 KiB) request plus a payload, hence the margin.
pub const MAX_HEADER_VALUE_LEN: usize = 64 * 1024;

/// The default credential header, never advertised on the wire.
pub const DEFAULT_CREDENTIAL_HEADER: &str = "Authorization";

/// A payment challenge, as a server issues it and as a client (or the server, inside a
/// credential) reads it back.
///
/// The `request` is held both as its JSON object and as the base64url of its JCS form; the
/// latter is always recomputed from the JSON, so the id check covers exactly what mppx covers
/// (it re-canonicalises echoed requests too). Other fields are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    id: String,
    realm: String,
    method: String,
    intent: String,
    request: Map<String, Value>,
    request_b64: String,
    description: Option<String>,
    digest: Option<String>,
    expires: Option<String>,
    header: Option<String>,
    opaque: Option<String>,
}

/// Where a challenge's fields came from; mppx validates the two readings slightly differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Auth-params of a `WWW-Authenticate` value: empty optional values count as absent and
    /// the method name must be lower-case.
    Header,
    /// The `challenge` object echoed in a credential: optional fields are checked as given.
    Credential,
}

/// Unvalidated challenge fields, from either origin.
#[derive(Debug)]
pub(crate) struct RawChallenge {
    pub(crate) id: Option<String>,
    pub(crate) realm: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) intent: Option<String>,
    /// base64url text as received.
    pub(crate) request: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) digest: Option<String>,
    pub(crate) expires: Option<String>,
    pub(crate) header: Option<String>,
    pub(crate) opaque: Option<String>,
}

fn is_method_name(method: &str) -> bool {
    let mut bytes = method.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'_' | b'-')
        })
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
}

fn is_digest(digest: &str) -> bool {
    digest.starts_with("sha-256=")
}

/// Reads a JSON object from UTF-8 bytes.
fn json_object(field: &'static str, bytes: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ProtocolError::InvalidJson {
            field,
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(ProtocolError::InvalidJson {
            field,
            reason: e.to_string(),
        }),
    }
}

/// Decodes a base64url JSON object (the `request` and `opaque` encodings).
pub(crate) fn decode_json_object(
    field: &'static str,
    encoded: &str,
) -> Result<Map<String, Value>, ProtocolError> {
    let bytes = base64url_decode(encoded).ok_or(ProtocolError::InvalidBase64 { field })?;
    json_object(field, &bytes)
}

/// Decodes a base64url `request` and canonicalises it. Returns the JSON object exactly as its
/// canonical text means it (a non-canonical `1.0` reads back as `1`) and base64url(JCS).
fn decode_request(encoded: &str) -> Result<(Map<String, Value>, String), ProtocolError> {
    let bytes =
        base64url_decode(encoded).ok_or(ProtocolError::InvalidBase64 { field: "request" })?;
    let request = json_object("request", &bytes)?;
    let canonical = canonicalize_object(&request)?;
    let request = if canonical.as_bytes() == bytes {
        request
    } else {
        json_object("request", canonical.as_bytes())?
    };
    Ok((request, base64url_encode(canonical)))
}

/// base64url(JCS(string map)) — the `opaque` encoding.
pub fn encode_opaque(meta: &BTreeMap<String, String>) -> String {
    let map: Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    // Strings only: canonicalisation cannot fail.
    base64url_encode(canonicalize(&Value::Object(map)).unwrap_or_default())
}

impl RawChallenge {
    pub(crate) fn validate(self, origin: Origin) -> Result<Challenge, ProtocolError> {
        // mppx's header reader drops empty optional values; its credential reader keeps them
        // and lets the schema judge them (an empty opaque binds like an absent one either way).
        let present = |v: Option<String>| v.filter(|s| !s.is_empty());
        let (digest, expires) = match origin {
            Origin::Header => (present(self.digest), present(self.expires)),
            Origin::Credential => (self.digest, self.expires),
        };
        let description = present(self.description);
        let opaque = present(self.opaque);

        let method = self
            .method
            .ok_or(ProtocolError::MissingField { field: "method" })?;
        if origin == Origin::Header && !is_method_name(&method) {
            return Err(invalid("method", &method, "must match ^[a-z][a-z0-9:_-]*$"));
        }
        let id = self.id.ok_or(ProtocolError::MissingField { field: "id" })?;
        if id.is_empty() {
            return Err(invalid("id", &id, "must not be empty"));
        }
        let realm = self
            .realm
            .ok_or(ProtocolError::MissingField { field: "realm" })?;
        let intent = self
            .intent
            .ok_or(ProtocolError::MissingField { field: "intent" })?;
        if let Some(d) = digest.as_deref().filter(|d| !is_digest(d)) {
            return Err(invalid("digest", d, "must start with sha-256="));
        }
        if let Some(e) = expires
            .as_deref()
            .filter(|e| !Timestamp::has_rfc3339_shape(e))
        {
            return Err(invalid("expires", e, "not an RFC 3339 date-time"));
        }
        let header = match self.header {
            Some(h) if !is_header_name(&h) => {
                return Err(invalid("header", &h, "not an HTTP field name"));
            }
            Some(h) if h.eq_ignore_ascii_case(DEFAULT_CREDENTIAL_HEADER) => None,
            other => other,
        };
        let encoded = self
            .request
            .ok_or(ProtocolError::MissingField { field: "request" })?;
        if encoded.len() > MAX_REQUEST_PARAM_LEN {
            return Err(ProtocolError::RequestTooLarge {
                len: encoded.len(),
                max: MAX_REQUEST_PARAM_LEN,
            });
        }
        let (request, request_b64) = decode_request(&encoded)?;
        Ok(Challenge {
            id,
            realm,
            method,
            intent,
            request,
            request_b64,
            description,
            digest,
            expires,
            header,
            opaque,
        })
    }
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> ProtocolError {
    ProtocolError::InvalidField {
        field,
        value: echo(value),
        reason,
    }
}

fn config(field: &'static str, value: &str, reason: &'static str) -> ProtocolError {
    ProtocolError::InvalidConfig {
        field,
        value: echo(value),
        reason,
    }
}

impl Challenge {
    /// Starts a challenge for `method`/`intent` in `realm` with a JSON-object `request`.
    pub fn builder(
        realm: impl Into<String>,
        method: impl Into<String>,
        intent: impl Into<String>,
        request: Map<String, Value>,
    ) -> ChallengeBuilder {
        ChallengeBuilder {
            realm: realm.into(),
            method: method.into(),
            intent: intent.into(),
            request,
            description: None,
            digest: None,
            expires: None,
            header: None,
            opaque: None,
        }
    }

    /// Reads the first `Payment` challenge of a `WWW-Authenticate` value (mppx
    /// `Challenge.deserialize`). Later challenges are not looked at.
    pub fn from_header_value(value: &str) -> Result<Self, ProtocolError> {
        check_header_len(value)?;
        let start = *find_scheme_starts(value)
            .first()
            .ok_or(ProtocolError::MissingPaymentScheme)?;
        parse_one(value, start)
    }

    /// The challenge id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Protection space, typically the host name.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Payment method, e.g. `tempo`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Intent, e.g. `session`.
    pub fn intent(&self) -> &str {
        &self.intent
    }

    /// The decoded `request` object.
    pub fn request(&self) -> &Map<String, Value> {
        &self.request
    }

    /// base64url of the JCS form of [`Self::request`] (what is sent and what the id binds).
    pub fn request_b64(&self) -> &str {
        &self.request_b64
    }

    /// Human-readable description (not bound by the id).
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Body digest, e.g. `sha-256=:…:`.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `expires`, verbatim.
    pub fn expires(&self) -> Option<&str> {
        self.expires.as_deref()
    }

    /// The credential header the client must use, if it is not `Authorization`.
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// The credential header the client must use (`Authorization` unless advertised otherwise).
    pub fn credential_header(&self) -> &str {
        self.header.as_deref().unwrap_or(DEFAULT_CREDENTIAL_HEADER)
    }

    /// `opaque`, verbatim (base64url of a JCS string map when issued by mppx or Sluice).
    pub fn opaque(&self) -> Option<&str> {
        self.opaque.as_deref()
    }

    /// `opaque` decoded as the string map it carries.
    pub fn opaque_map(&self) -> Result<Option<BTreeMap<String, String>>, ProtocolError> {
        let Some(opaque) = &self.opaque else {
            return Ok(None);
        };
        let map = decode_json_object("opaque", opaque)?;
        map.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                _ => Err(ProtocolError::InvalidJson {
                    field: "opaque",
                    reason: "values must be strings".into(),
                }),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// The fields the id binds.
    pub fn id_fields(&self) -> IdFields<'_> {
        IdFields {
            realm: &self.realm,
            method: &self.method,
            intent: &self.intent,
            request_b64: &self.request_b64,
            expires: self.expires.as_deref(),
            digest: self.digest.as_deref(),
            header: self.header.as_deref(),
            opaque: self.opaque.as_deref(),
        }
    }

    /// Checks that this server issued the challenge: its id is the HMAC of its fields (with the
    /// request re-canonicalised), compared in constant time.
    pub fn verify_id(&self, secret: &ChallengeSecret) -> Result<(), ProtocolError> {
        if secret.verify_id(&self.id_fields(), &self.id) {
            Ok(())
        } else {
            Err(ProtocolError::ChallengeNotIssued { id: echo(&self.id) })
        }
    }

    /// The `expires` instant. A challenge without one, or with one that is not a real date,
    /// is invalid (mppx fails closed).
    pub fn expires_at(&self) -> Result<Timestamp, ProtocolError> {
        let expires = self
            .expires
            .as_deref()
            .ok_or_else(|| ProtocolError::MissingExpires { id: echo(&self.id) })?;
        Timestamp::parse_rfc3339(expires).map_err(|_| ProtocolError::MalformedExpires {
            id: echo(&self.id),
            expires: echo(expires),
        })
    }

    /// Fails if the challenge has no valid `expires` or expired before `now` (a challenge is
    /// still good at the very instant it expires, as in mppx).
    pub fn check_expiry(&self, now: Timestamp) -> Result<(), ProtocolError> {
        let expires_at = self.expires_at()?;
        if expires_at < now {
            return Err(ProtocolError::ChallengeExpired {
                id: echo(&self.id),
                expires: echo(self.expires.as_deref().unwrap_or_default()),
            });
        }
        Ok(())
    }

    /// The request read as a `tempo`/`session` request.
    pub fn session_request(&self) -> Result<SessionRequest, ProtocolError> {
        SessionRequest::from_json(&self.request)
    }

    /// The `WWW-Authenticate` value: `Payment ` and the auth-params in mppx's order (`id, realm,
    /// method, intent, request, [description], [digest], [expires], [header], [opaque]`), all
    /// quoted. `\` and `"` are backslash-escaped and every character outside printable ASCII is
    /// written as `\uXXXX` UTF-16 code units, so the value is always a legal, ASCII-only header
    /// value (mppx escapes only above U+00FF; its reader decodes both forms alike).
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(self.request_b64.len() + 160);
        out.push_str(SCHEME);
        out.push(' ');
        let mut first = true;
        let mut param = |name: &str, value: &str| {
            if !first {
                out.push_str(", ");
            }
            first = false;
            auth_params::write_param(&mut out, name, value);
        };
        param("id", &self.id);
        param("realm", &self.realm);
        param("method", &self.method);
        param("intent", &self.intent);
        param("request", &self.request_b64);
        for (name, value) in [
            ("description", &self.description),
            ("digest", &self.digest),
            ("expires", &self.expires),
            ("header", &self.header),
            ("opaque", &self.opaque),
        ] {
            if let Some(value) = value {
                param(name, value);
            }
        }
        out
    }
}

fn check_header_len(value: &str) -> Result<(), ProtocolError> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(ProtocolError::HeaderTooLarge {
            len: value.len(),
            max: MAX_HEADER_VALUE_LEN,
        });
    }
    Ok(())
}

/// Parses the challenge whose `Payment` token starts at byte `start` of `value`.
fn parse_one(value: &str, start: usize) -> Result<Challenge, ProtocolError> {
    let after_scheme = start + SCHEME.len();
    let params_start = value[after_scheme..]
        .char_indices()
        .find(|&(_, c)| !is_js_space(c))
        .map_or(value.len(), |(off, _)| after_scheme + off);
    let params = parse_auth_params(&value[params_start..], params_start)?;
    let mut raw = RawChallenge {
        id: None,
        realm: None,
        method: None,
        intent: None,
        request: None,
        description: None,
        digest: None,
        expires: None,
        header: None,
        opaque: None,
    };
    for (name, v) in params {
        match name.as_str() {
            "id" => raw.id = Some(v),
            "realm" => raw.realm = Some(v),
            "method" => raw.method = Some(v),
            "intent" => raw.intent = Some(v),
            "request" => raw.request = Some(v),
            "description" => raw.description = Some(v),
            "digest" => raw.digest = Some(v),
            "expires" => raw.expires = Some(v),
            "header" => raw.header = Some(v),
            "opaque" => raw.opaque = Some(v),
            _ => {} // Unknown parameters are skipped.
        }
    }
    raw.validate(Origin::Header)
}

/// Reads every `Payment` challenge of a `WWW-Authenticate` value (mppx
/// `Challenge.deserializeList`): several challenges may share one value, separated by commas;
/// other schemes are skipped. Any malformed `Payment` challenge fails the whole value.
pub fn parse_www_authenticate(value: &str) -> Result<Vec<Challenge>, ProtocolError> {
    check_header_len(value)?;
    let starts = find_scheme_starts(value);
    if starts.is_empty() {
        return Err(ProtocolError::MissingPaymentScheme);
    }
    let mut challenges = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(value.len());
        // The parameter reader stops at the next scheme's token anyway; cutting the chunk keeps
        // a challenge from reading the next one's parameters.
        challenges.push(parse_one(&value[..end], start)?);
    }
    Ok(challenges)
}

/// Builds and signs a challenge (server side). Values are checked as configuration: a bad one
/// is a [`ProtocolError::InvalidConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ChallengeBuilder {
    realm: String,
    method: String,
    intent: String,
    request: Map<String, Value>,
    description: Option<String>,
    digest: Option<String>,
    expires: Option<String>,
    header: Option<String>,
    opaque: Option<BTreeMap<String, String>>,
}

impl ChallengeBuilder {
    /// Sets `expires` from an instant, written as `toISOString()` does (with milliseconds).
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires = Some(at.to_iso_string());
        self
    }

    /// Sets `expires` verbatim (must be an RFC 3339 date-time).
    pub fn expires(mut self, expires: impl Into<String>) -> Self {
        self.expires = Some(expires.into());
        self
    }

    /// Sets the description (display only; not bound by the id).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the body digest (`sha-256=…`).
    pub fn digest(mut self, digest: impl Into<String>) -> Self {
        self.digest = Some(digest.into());
        self
    }

    /// Advertises a credential header other than `Authorization`.
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.header = Some(header.into());
        self
    }

    /// Sets server correlation data, sent as base64url(JCS(map)) in `opaque`.
    pub fn opaque(mut self, meta: BTreeMap<String, String>) -> Self {
        self.opaque = Some(meta);
        self
    }

    /// Validates the fields, canonicalises the request and computes the id.
    pub fn issue(self, secret: &ChallengeSecret) -> Result<Challenge, ProtocolError> {
        if !is_method_name(&self.method) {
            return Err(config(
                "method",
                &self.method,
                "must match ^[a-z][a-z0-9:_-]*$",
            ));
        }
        if self.intent.is_empty() {
            return Err(config("intent", &self.intent, "must not be empty"));
        }
        if let Some(e) = self
            .expires
            .as_deref()
            .filter(|e| Timestamp::parse_rfc3339(e).is_err())
        {
            return Err(config("expires", e, "not an RFC 3339 date-time"));
        }
        if let Some(d) = self.digest.as_deref().filter(|d| !is_digest(d)) {
            return Err(config("digest", d, "must start with sha-256="));
        }
        let header = match self.header {
            Some(h) if !is_header_name(&h) => {
                return Err(config("header", &h, "not an HTTP field name"));
            }
            Some(h) if h.eq_ignore_ascii_case(DEFAULT_CREDENTIAL_HEADER) => None,
            other => other,
        };
        let canonical = canonicalize_object(&self.request).map_err(|e| match e {
            ProtocolError::UnsupportedNumber { number } => config(
                "request",
                &number,
                "numbers must be integers within ±(2^53 - 1)",
            ),
            other => other,
        })?;
        // Hold the request as its canonical text means it (`1.0` becomes `1`), exactly as a
        // reader of the header will.
        let request = json_object("request", canonical.as_bytes())?;
        let request_b64 = base64url_encode(canonical);
        if request_b64.len() > MAX_REQUEST_PARAM_LEN {
            return Err(config(
                "request",
                "",
                "encoded request is larger than 16 KiB",
            ));
        }
        let mut challenge = Challenge {
            id: String::new(),
            realm: self.realm,
            method: self.method,
            intent: self.intent,
            request,
            request_b64,
            description: self.description.filter(|d| !d.is_empty()),
            digest: self.digest.filter(|d| !d.is_empty()),
            expires: self.expires,
            header,
            opaque: self.opaque.as_ref().map(encode_opaque),
        };
        challenge.id = secret.compute_id(&challenge.id_fields());
        Ok(challenge)
    }
}
