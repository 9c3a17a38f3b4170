//! The HMAC-SHA256-bound challenge id (PROTOCOL.md §1.2).
//!
//! ```text
//! input = realm | method | intent | request_b64 | expires | digest | [header |] opaque_b64
//! id    = base64url_nopad(HMAC_SHA256(key = secret, msg = utf8(input)))
//! ```
//! Absent optional fields leave empty slots; the `header` slot exists only when the challenge
//! advertises a credential header other than `Authorization` (an mppx extension).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ProtocolError;
use super::b64::base64url_encode;

/// The fields an id binds, borrowed from a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdFields<'a> {
    /// `realm`.
    pub realm: &'a str,
    /// `method`.
    pub method: &'a str,
    /// `intent`.
    pub intent: &'a str,
    /// `request` as base64url of its JCS form.
    pub request_b64: &'a str,
    /// `expires`, verbatim.
    pub expires: Option<&'a str>,
    /// `digest`, verbatim.
    pub digest: Option<&'a str>,
    /// Credential header name, if not `Authorization`.
    pub header: Option<&'a str>,
    /// `opaque`, verbatim (base64url).
    pub opaque: Option<&'a str>,
}

impl IdFields<'_> {
    /// The exact HMAC input string.
    pub fn input(&self) -> String {
        let mut slots: Vec<&str> = vec![
            self.realm,
            self.method,
            self.intent,
            self.request_b64,
            self.expires.unwrap_or(""),
            self.digest.unwrap_or(""),
        ];
        if let Some(header) = self.header {
            slots.push(header);
        }
        slots.push(self.opaque.unwrap_or(""));
        slots.join("|")
    }
}

/// The server's challenge-binding secret (mppx `secretKey`, used as its UTF-8 bytes).
///
/// At least [`ChallengeSecret::MIN_LEN`] bytes. The key schedule is computed once, so each id
/// costs two SHA-256 compressions over the input and nothing for the key. `Debug` never prints
/// the secret.
#[derive(Clone)]
pub struct ChallengeSecret {
    keyed: Hmac<Sha256>,
}

impl ChallengeSecret {
    /// Minimum secret length in bytes (mppx `Mppx.create` requires 32).
    pub const MIN_LEN: usize = 32;

    /// Wraps a secret; refuses one shorter than [`Self::MIN_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ProtocolError> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_LEN {
            return Err(ProtocolError::SecretTooShort {
                len: secret.len(),
                min: Self::MIN_LEN,
            });
        }
        // HMAC accepts keys of any length; the error branch cannot happen.
        let keyed =
            Hmac::<Sha256>::new_from_slice(secret).map_err(|_| ProtocolError::SecretTooShort {
                len: secret.len(),
                min: Self::MIN_LEN,
            })?;
        Ok(Self { keyed })
    }

    /// The challenge id for these fields.
    pub fn compute_id(&self, fields: &IdFields<'_>) -> String {
        base64url_encode(self.mac(fields))
    }

    /// Whether `id` is the id of these fields, compared in constant time (the length of an id is
    /// public: it is always 43 characters).
    pub fn verify_id(&self, fields: &IdFields<'_>, id: &str) -> bool {
        let expected = self.compute_id(fields);
        expected.len() == id.len() && bool::from(expected.as_bytes().ct_eq(id.as_bytes()))
    }

    fn mac(&self, fields: &IdFields<'_>) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(fields.input().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for ChallengeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChallengeSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "mpp-test-vectors-secret-key-000000000000000";

    fn fields<'a>(header: Option<&'a str>, opaque: Option<&'a str>) -> IdFields<'a> {
        IdFields {
            realm: "r",
            method: "tempo",
            intent: "session",
            request_b64: "e30",
            expires: Some("2030-01-01T00:00:00Z"),
            digest: None,
            header,
            opaque,
        }
    }

    #[test]
    fn secret_must_be_32_bytes() {
        assert_eq!(
            ChallengeSecret::new([7_u8; 31]).unwrap_err(),
            ProtocolError::SecretTooShort { len: 31, min: 32 }
        );
        assert!(ChallengeSecret::new([7_u8; 32]).is_ok());
        assert_eq!(
            format!("{:?}", ChallengeSecret::new(SECRET).unwrap()),
            "ChallengeSecret(<redacted>)"
        );
    }

    #[test]
    fn header_slot_only_when_present() {
        assert_eq!(
            fields(None, None).input(),
            "r|tempo|session|e30|2030-01-01T00:00:00Z||"
        );
        assert_eq!(
            fields(Some("Payment-Authorization"), Some("op")).input(),
            "r|tempo|session|e30|2030-01-01T00:00:00Z||Payment-Authorization|op"
        );
    }

    #[test]
    fn verify_accepts_own_id_and_nothing_else() {
        let secret = ChallengeSecret::new(SECRET).unwrap();
        let f = fields(None, None);
        let id = secret.compute_id(&f);
        assert_eq!(id.len(), 43);
        assert!(secret.verify_id(&f, &id));
        assert!(!secret.verify_id(&f, &id[..42]));
        assert!(!secret.verify_id(&f, ""));
        let mut flipped = id.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        assert!(!secret.verify_id(&f, std::str::from_utf8(&flipped).unwrap()));
        // Any bound field changes the id, including the header slot.
        assert!(!secret.verify_id(&fields(Some("X-Pay"), None), &id));
        let other = ChallengeSecret::new([1_u8; 32]).unwrap();
        assert!(!other.verify_id(&f, &id));
    }
}
