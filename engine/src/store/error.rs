//! The store's error type.

use std::io;

use super::record::{ChannelId, RecordError};

/// What kind of failure the storage backend reported. Retry loops branch on this (through
/// [`StoreError::is_retryable`]), never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// An I/O error from the file system, with its kind.
    Io(io::ErrorKind),
    /// The backend detected corruption in its files.
    Corruption,
    /// The backend was used in a way it does not support.
    Unsupported,
    /// The backend hit an internal bug.
    Bug,
    /// A backend collection (sled tree) no longer exists.
    CollectionNotFound,
}

impl BackendErrorKind {
    /// Whether the same operation may succeed if tried again.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Io(
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        )
    }
}

/// Everything that can go wrong in a [`ChannelStore`](super::ChannelStore).
///
/// Update closures return their own error type `E: From<StoreError>`, so the caller's error enum
/// carries both its rejections and these failures; a rejection from the closure is returned
/// unchanged and leaves the store untouched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage backend failed.
    #[error("storage backend failed ({kind:?}): {message}")]
    Backend {
        /// The classified kind of failure.
        kind: BackendErrorKind,
        /// The backend's own description.
        message: String,
    },
    /// A stored channel record could not be decoded.
    #[error("stored record of channel {channel} is corrupt: {source}")]
    CorruptRecord {
        /// The channel whose record is corrupt.
        channel: ChannelId,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A stored key has the wrong shape (a channel key that is not 32 bytes, a feed key that is
    /// not 8 bytes, an auxiliary value without its expiry header, ...).
    #[error("stored {what} is corrupt: {len} bytes")]
    CorruptEntry {
        /// Which kind of entry (`"channel key"`, `"feed entry"`, `"aux entry"`, ...).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// An update tried to store a record that breaks a money invariant.
    #[error("refusing to store channel {channel}: {source}")]
    InvalidRecord {
        /// The channel being updated.
        channel: ChannelId,
        /// The broken invariant.
        #[source]
        source: RecordError,
    },
    /// An update for one channel returned a record for another.
    #[error("update of channel {key} returned a record for channel {record}")]
    ChannelMismatch {
        /// The channel being updated.
        key: ChannelId,
        /// The channel id inside the returned record.
        record: ChannelId,
    },
    /// An update would lower the accepted cumulative amount (vouchers only grow).
    #[error("channel {channel}: accepted cumulative amount would fall from {stored} to {proposed}")]
    AcceptedDecreased {
        /// The channel being updated.
        channel: ChannelId,
        /// The stored amount.
        stored: u128,
        /// The amount the update proposed.
        proposed: u128,
    },
    /// An update would lower the spent amount (charges are never undone).
    #[error("channel {channel}: spent amount would fall from {stored} to {proposed}")]
    SpentDecreased {
        /// The channel being updated.
        channel: ChannelId,
        /// The stored amount.
        stored: u128,
        /// The amount the update proposed.
        proposed: u128,
    },
    /// A release ([`Change::release`](super::Change::release)) would lower the spent amount
    /// below what the escrow has already settled.
    #[error(
        "channel {channel}: a release would lower spent to {proposed}, below the settled {settled}"
    )]
    SpentBelowSettled {
        /// The channel being updated.
        channel: ChannelId,
        /// The amount settled on chain, as stored.
        settled: u128,
        /// The spent amount the release proposed.
        proposed: u128,
    },
    /// An update would replace the signature of the accepted amount without raising the amount.
    #[error("channel {channel}: the signature of accepted amount {accepted} would change")]
    SignatureReplaced {
        /// The channel being updated.
        channel: ChannelId,
        /// The accepted amount whose signature would change.
        accepted: u128,
    },
    /// An auxiliary key is empty or too long.
    #[error("auxiliary key of {len} bytes is outside 1..={max}")]
    AuxKeyLength {
        /// The key length given.
        len: usize,
        /// The longest key accepted.
        max: usize,
    },
    /// An auxiliary value is too long.
    #[error("auxiliary value of {len} bytes exceeds {max}")]
    AuxValueTooLong {
        /// The value length given.
        len: usize,
        /// The longest value accepted.
        max: usize,
    },
    /// Auxiliary entries are written once; this key already has one.
    #[error("auxiliary key {key:?} already has an entry")]
    AuxKeyExists {
        /// The key.
        key: Vec<u8>,
    },
    /// A write failed half-way through its steps; the store refuses further writes until it is
    /// reopened (opening repairs half-written updates).
    #[error("an earlier write failed half-way ({kind:?}); reopen the store")]
    Poisoned {
        /// The kind of the failure that poisoned the store.
        kind: BackendErrorKind,
    },
    /// The durability flush covering a write failed: the write may or may not survive a crash,
    /// so its result must not be released. Retrying the request is safe.
    #[error("flush covering write {seq} failed ({kind:?}): {message}")]
    FlushFailed {
        /// The write sequence number whose durability is unknown.
        seq: u64,
        /// The kind of the flush failure.
        kind: BackendErrorKind,
        /// The backend's description.
        message: String,
    },
    /// The store shut down before a write became durable.
    #[error("store closed before write {seq} became durable")]
    Closed {
        /// The write sequence number that was not confirmed.
        seq: u64,
    },
    /// The database was written by another program or an unknown format version.
    #[error("unsupported database format {found:?}, expected {expected:?}")]
    UnsupportedFormat {
        /// The format marker found (lossy UTF-8), or `"<none>"` in a non-empty database.
        found: String,
        /// The marker this build writes.
        expected: &'static str,
    },
}

impl StoreError {
    /// Whether retrying the same operation may succeed: transient I/O errors, including a
    /// failed flush of a transient kind. Invariant violations and corruption are never
    /// retryable.
    pub const fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { kind, .. } | Self::FlushFailed { kind, .. } => kind.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn flush_failed(seq: u64, failure: &FlushFailure) -> Self {
        Self::FlushFailed {
            seq,
            kind: failure.kind,
            message: failure.message.clone(),
        }
    }
}

/// A failed flush as remembered by the durability tracker.
#[derive(Clone, Debug)]
pub(crate) struct FlushFailure {
    pub(crate) kind: BackendErrorKind,
    pub(crate) message: String,
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        let kind = backend_kind(&error);
        Self::Backend {
            kind,
            message: error.to_string(),
        }
    }
}

pub(crate) fn backend_kind(error: &sled::Error) -> BackendErrorKind {
    match error {
        // sled 0.34 reports a database directory still locked (by another process, or for a
        // moment by its own background work after the last handle is dropped) as an `Other`
        // I/O error whose only structure is this message prefix; the underlying `WouldBlock`
        // is lost, so restore it here, in the one place sled errors are classified.
        sled::Error::Io(io)
            if io.kind() == io::ErrorKind::Other
                && io.to_string().starts_with("could not acquire lock") =>
        {
            BackendErrorKind::Io(io::ErrorKind::WouldBlock)
        }
        sled::Error::Io(io) => BackendErrorKind::Io(io.kind()),
        sled::Error::Corruption { .. } => BackendErrorKind::Corruption,
        sled::Error::Unsupported(_) => BackendErrorKind::Unsupported,
        sled::Error::ReportableBug(_) => BackendErrorKind::Bug,
        sled::Error::CollectionNotFound(_) => BackendErrorKind::CollectionNotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_io_is_retryable() {
        let io = |kind| StoreError::Backend {
            kind: BackendErrorKind::Io(kind),
            message: String::new(),
        };
        assert!(io(io::ErrorKind::Interrupted).is_retryable());
        assert!(io(io::ErrorKind::TimedOut).is_retryable());
        assert!(!io(io::ErrorKind::PermissionDenied).is_retryable());
        assert!(
            !StoreError::Backend {
                kind: BackendErrorKind::Corruption,
                message: String::new()
            }
            .is_retryable()
        );
        let flush = |kind| StoreError::FlushFailed {
            seq: 1,
            kind,
            message: String::new(),
        };
        assert!(flush(BackendErrorKind::Io(io::ErrorKind::Interrupted)).is_retryable());
        assert!(!flush(BackendErrorKind::Io(io::ErrorKind::Other)).is_retryable());
        assert!(!StoreError::Closed { seq: 3 }.is_retryable());
    }

    #[test]
    fn a_held_directory_lock_is_a_transient_would_block() {
        // The form sled 0.34 produces for a held directory lock: kind `Other`, message only.
        let error = StoreError::from(sled::Error::Io(io::Error::other(
            "could not acquire lock on \"/tmp/x/db\": Os { code: 11, kind: WouldBlock }",
        )));
        assert!(matches!(
            error,
            StoreError::Backend {
                kind: BackendErrorKind::Io(io::ErrorKind::WouldBlock),
                ..
            }
        ));
        assert!(error.is_retryable());
        // Other `Other` errors keep their kind.
        let other = StoreError::from(sled::Error::Io(io::Error::other("disk on fire")));
        assert!(matches!(
            other,
            StoreError::Backend {
                kind: BackendErrorKind::Io(io::ErrorKind::Other),
                ..
            }
        ));
    }

    #[test]
    fn sled_errors_keep_their_kind() {
        let error = StoreError::from(sled::Error::Io(io::Error::new(
            io::ErrorKind::WouldBlock,
            "could not acquire lock",
        )));
        assert!(matches!(
            error,
            StoreError::Backend {
                kind: BackendErrorKind::Io(io::ErrorKind::WouldBlock),
                ..
            }
        ));
        assert!(error.is_retryable());
        let error = StoreError::from(sled::Error::Unsupported("x".into()));
        assert!(matches!(
            error,
            StoreError::Backend {
                kind: BackendErrorKind::Unsupported,
                ..
            }
        ));
    }
}
