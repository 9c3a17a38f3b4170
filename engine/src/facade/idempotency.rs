//! Request-level `Idempotency-Key` support: the first outcome of a charged request is recorded
//! in the store's auxiliary entries, in the same atomic update as its charge, and a replay of
//! the same key reads it back instead of charging again.
//!
//! The stored value (version 1) is `1 ‖ status (2, BE) ‖ request fingerprint (32) ‖ receipt
//! header (UTF-8)`, under the store key `b"idem/1/" ‖ channel id (32) ‖ key`.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::EngineError;
use crate::protocol::SessionReceipt;
use crate::store::{AuxEntry, ChannelId};

/// How long a recorded outcome is kept before [`Engine::prune_idempotency`] may remove it:
/// 24 hours.
///
/// [`Engine::prune_idempotency`]: super::Engine::prune_idempotency
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

const STORE_PREFIX: &[u8] = b"idem/1/";
const VALUE_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 2 + 32;

/// A validated `Idempotency-Key` value: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII
/// characters (an opaque client-chosen token, usually a UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a header value (surrounding double quotes, as in the IETF draft's examples,
    /// are removed).
    pub fn parse(value: &str) -> Result<Self, EngineError> {
        let trimmed = value.trim();
        let unquoted = trimmed
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(trimmed);
        let invalid = |reason: &'static str| EngineError::InvalidIdempotencyKey {
            len: unquoted.len(),
            reason,
        };
        if unquoted.is_empty() {
            return Err(invalid("empty"));
        }
        if unquoted.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(invalid("longer than 200 bytes"));
        }
        if !unquoted.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("not visible ASCII"));
        }
        Ok(Self(unquoted.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a charged request records under its key: enough to recognise the same request again
/// and to answer it as the first time was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    /// The client's key.
    pub key: IdempotencyKey,
    /// A digest of what the request asks for (see [`IdempotentRequest::fingerprint_of`]); a
    /// replay must match it.
    pub fingerprint: [u8; 32],
    /// The status the request is answered with when its charge succeeds.
    pub status: u16,
    /// Retention: the recorded outcome may be pruned after this (unix milliseconds).
    pub expires_at_ms: u64,
}

impl IdempotentRequest {
    /// The fingerprint of a request: SHA-256 over its method and target (`GET /paid?x=1`).
    pub fn fingerprint_of(method: &str, target: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        hash.update([0]);
        hash.update(target.as_bytes());
        hash.finalize().into()
    }

    pub(crate) fn store_key(&self, channel: &ChannelId) -> Vec<u8> {
        let mut key = Vec::with_capacity(STORE_PREFIX.len() + 32 + self.key.0.len());
        key.extend_from_slice(STORE_PREFIX);
        key.extend_from_slice(channel.as_slice());
        key.extend_from_slice(self.key.0.as_bytes());
        key
    }

    pub(crate) fn entry(&self, receipt: &SessionReceipt) -> AuxEntry {
        let header = receipt.to_header_value();
        let mut value = Vec::with_capacity(HEADER_LEN + header.len());
        value.push(VALUE_VERSION);
        value.extend_from_slice(&self.status.to_be_bytes());
        value.extend_from_slice(&self.fingerprint);
        value.extend_from_slice(header.as_bytes());
        AuxEntry {
            value,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// Reads a recorded outcome and checks it answers this request.
    pub(crate) fn replay(
        &self,
        channel: &ChannelId,
        entry: &AuxEntry,
    ) -> Result<RecordedOutcome, EngineError> {
        let corrupt = || EngineError::CorruptIdempotencyRecord { channel: *channel };
        let value = &entry.value;
        if value.len() < HEADER_LEN || value[0] != VALUE_VERSION {
            return Err(corrupt());
        }
        let status = u16::from_be_bytes([value[1], value[2]]);
        if value[3..HEADER_LEN] != self.fingerprint {
            return Err(EngineError::IdempotencyKeyReused {
                channel: *channel,
                key: self.key.0.clone(),
            });
        }
        let receipt_header =
            String::from_utf8(value[HEADER_LEN..].to_vec()).map_err(|_| corrupt())?;
        let receipt = SessionReceipt::from_header_value(&receipt_header).map_err(|_| corrupt())?;
        Ok(RecordedOutcome {
            status,
            receipt_header,
            receipt,
        })
    }
}

/// The outcome recorded by the first request with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    /// The status the first request was answered with.
    pub status: u16,
    /// Its `Payment-Receipt` header value, byte for byte.
    pub receipt_header: String,
    /// The same receipt, read.
    pub receipt: SessionReceipt,
}

/// The result of [`Engine::authorize_and_charge_idempotent`](super::Engine::authorize_and_charge_idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotentOutcome {
    /// The first request with this key: it was authorized and charged, and its outcome
    /// recorded in the same store update.
    Fresh(Box<super::Authorized>),
    /// A replay: nothing was charged; the recorded outcome is returned.
    Replayed(RecordedOutcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            IdempotencyKey::parse(" \"abc-1\" ").unwrap().as_str(),
            "abc-1"
        );
        for bad in ["", "\"\"", "a b", "caf\u{e9}", &"k".repeat(201)] {
            assert!(
                matches!(
                    IdempotencyKey::parse(bad),
                    Err(EngineError::InvalidIdempotencyKey { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(IdempotencyKey::parse(&"k".repeat(200)).is_ok());
    }

    #[test]
    fn entries_round_trip_and_refuse_other_requests() {
        let channel: ChannelId = [9; 32].into();
        let receipt = SessionReceipt::new(
            crate::protocol::Timestamp::from_unix_millis(1_000).unwrap(),
            "cid",
            channel,
            100,
            25,
        )
        .unwrap()
        .with_units(1);
        let request = IdempotentRequest {
            key: IdempotencyKey::parse("k1").unwrap(),
            fingerprint: IdempotentRequest::fingerprint_of("GET", "/paid"),
            status: 200,
            expires_at_ms: 5,
        };
        let entry = request.entry(&receipt);
        assert_eq!(entry.expires_at_ms, 5);
        let replay = request.replay(&channel, &entry).unwrap();
        assert_eq!(replay.status, 200);
        assert_eq!(replay.receipt, receipt);
        assert_eq!(replay.receipt_header, receipt.to_header_value());

        let other = IdempotentRequest {
            fingerprint: IdempotentRequest::fingerprint_of("GET", "/paid?x=1"),
            ..request.clone()
        };
        assert!(matches!(
            other.replay(&channel, &entry),
            Err(EngineError::IdempotencyKeyReused { .. })
        ));
        let mut broken = entry.clone();
        broken.value.truncate(10);
        assert!(matches!(
            request.replay(&channel, &broken),
            Err(EngineError::CorruptIdempotencyRecord { .. })
        ));
        let key = request.store_key(&channel);
        assert!(key.starts_with(b"idem/1/") && key.ends_with(b"k1"));
        assert!(key.len() <= crate::store::MAX_AUX_KEY_LEN);
    }
}
