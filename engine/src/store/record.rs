//! The channel record and its fixed-width, versioned binary layout.
//!
//! The byte layout is documented in the crate README (`## store`, "Record layout"); the constants
//! below are the single source of truth for the offsets and are checked by the round-trip tests.

use alloy_primitives::{Address, B256};

/// Identifies a payment channel (the escrow's `bytes32` channel id).
pub type ChannelId = B256;

/// The layout version written as the first byte of every record.
pub const RECORD_VERSION: u8 = 1;

/// The encoded length of a [`ChannelRecord`] in layout version [`RECORD_VERSION`].
pub const RECORD_LEN: usize = 292;

/// Length of a voucher signature as stored: `r ‖ s ‖ v`.
pub const SIGNATURE_LEN: usize = 65;

// Byte offsets of layout version 1. Integers are big-endian.
const OFF_VERSION: usize = 0;
const OFF_STATUS: usize = 1;
const OFF_FINALIZED: usize = 2;
const OFF_CHANNEL_ID: usize = 3;
const OFF_PAYER: usize = 35;
const OFF_PAYEE: usize = 55;
const OFF_TOKEN: usize = 75;
const OFF_SIGNER: usize = 95;
const OFF_DEPOSIT: usize = 115;
const OFF_SETTLED: usize = 131;
const OFF_CLOSE_REQUESTED_AT: usize = 147;
const OFF_CHAIN_CHECKED_AT: usize = 155;
const OFF_ACCEPTED: usize = 163;
const OFF_SIGNATURE: usize = 179;
const OFF_SPENT: usize = 244;
const OFF_UNITS: usize = 260;
const OFF_UPDATED_AT: usize = 268;
const OFF_FEED_CURSOR: usize = 276;
const OFF_REVISION: usize = 284;
const OFF_END: usize = 292;

const _: () = assert!(OFF_END == RECORD_LEN);
const _: () = assert!(OFF_SPENT - OFF_SIGNATURE == SIGNATURE_LEN);

/// Where a channel is in its life cycle, as the engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelStatus {
    /// The open transaction was seen but the channel is not yet confirmed usable.
    Opening,
    /// Vouchers are accepted and charged.
    Open,
    /// A close voucher was accepted or a close was requested; no more charges.
    Closing,
    /// The channel was closed on chain; the record stays as a tombstone.
    Closed,
}

impl ChannelStatus {
    /// The status byte stored in the record.
    pub const fn to_byte(self) -> u8 {
        match self {
            Self::Opening => 0,
            Self::Open => 1,
            Self::Closing => 2,
            Self::Closed => 3,
        }
    }

    /// Parses a status byte.
    pub const fn from_byte(byte: u8) -> Result<Self, RecordError> {
        match byte {
            0 => Ok(Self::Opening),
            1 => Ok(Self::Open),
            2 => Ok(Self::Closing),
            3 => Ok(Self::Closed),
            found => Err(RecordError::UnknownStatus { found }),
        }
    }
}

/// Why bytes are not a valid [`ChannelRecord`], or why a record breaks a money invariant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer length does not match the layout.
    #[error("record is {found} bytes, layout version {version} is {expected} bytes")]
    WrongLength {
        /// The layout version read from the first byte.
        version: u8,
        /// The length this version requires.
        expected: usize,
        /// The length that was given.
        found: usize,
    },
    /// The buffer is empty, so it has no version byte.
    #[error("record is empty")]
    Empty,
    /// The first byte names a layout this build does not know.
    #[error("unknown record layout version {found} (this build reads version {RECORD_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The status byte is not one of the four statuses.
    #[error("unknown channel status byte {found}")]
    UnknownStatus {
        /// The status byte found.
        found: u8,
    },
    /// The finalized flag is neither 0 nor 1.
    #[error("finalized flag byte is {found}, expected 0 or 1")]
    InvalidFlag {
        /// The flag byte found.
        found: u8,
    },
    /// `spent` exceeds `accepted_cumulative`.
    #[error("spent {spent} exceeds accepted cumulative amount {accepted}")]
    SpentExceedsAccepted {
        /// The spent amount.
        spent: u128,
        /// The accepted cumulative amount.
        accepted: u128,
    },
    /// `accepted_cumulative` exceeds the deposit.
    #[error("accepted cumulative amount {accepted} exceeds deposit {deposit}")]
    AcceptedExceedsDeposit {
        /// The accepted cumulative amount.
        accepted: u128,
        /// The cached deposit.
        deposit: u128,
    },
    /// A non-zero accepted amount has no voucher signature to back it.
    #[error("accepted cumulative amount {accepted} has no voucher signature")]
    AcceptedWithoutSignature {
        /// The accepted cumulative amount.
        accepted: u128,
    },
}

/// Everything the engine keeps about one channel, stored as one fixed-width record.
///
/// The chain facts are a cache (the escrow contract is their authority); the engine facts are
/// authoritative here. Every record a store writes satisfies
/// `spent ≤ accepted_cumulative ≤ deposit` (see [`ChannelRecord::check_invariants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelRecord {
    /// The channel this record describes (also the store key).
    pub channel_id: ChannelId,
    /// Life-cycle status as seen by the engine.
    pub status: ChannelStatus,
    /// Chain fact: the payer who funded the escrow.
    pub payer: Address,
    /// Chain fact: the payee (the provider).
    pub payee: Address,
    /// Chain fact: the ERC-20 token of the deposit.
    pub token: Address,
    /// Chain fact: the authorized voucher signer (zero means the payer signs).
    pub authorized_signer: Address,
    /// Chain fact: the escrowed deposit in token base units.
    pub deposit: u128,
    /// Chain fact: the amount already settled to the payee on chain.
    pub settled: u128,
    /// Chain fact: unix seconds of a pending close request, 0 when none.
    pub close_requested_at: u64,
    /// Chain fact: the channel was finalized on chain (closed or withdrawn).
    pub finalized: bool,
    /// Unix milliseconds when the chain facts were last read (for the cache TTL).
    pub chain_checked_at_ms: u64,
    /// Engine fact: the highest voucher amount accepted.
    pub accepted_cumulative: u128,
    /// Engine fact: the signature of that voucher (`r ‖ s ‖ v`), all zero when none.
    pub accepted_signature: [u8; SIGNATURE_LEN],
    /// Engine fact: the amount charged against accepted vouchers.
    pub spent: u128,
    /// Engine fact: the number of units charged.
    pub units: u64,
    /// Unix milliseconds of the last engine update.
    pub updated_at_ms: u64,
    /// The feed cursor of this channel's latest feed entry, 0 when it has none. Maintained by the
    /// store: whatever a closure puts here is replaced when the record is written.
    pub feed_cursor: u64,
    /// How many times the record was written (1 for a new record). Maintained by the store like
    /// `feed_cursor`; it ties auxiliary entries to the record write they belong to.
    pub revision: u64,
}

impl ChannelRecord {
    /// A fresh record for `channel_id`: status `Opening`, every other field zero.
    pub const fn new(channel_id: ChannelId) -> Self {
        Self {
            channel_id,
            status: ChannelStatus::Opening,
            payer: Address::ZERO,
            payee: Address::ZERO,
            token: Address::ZERO,
            authorized_signer: Address::ZERO,
            deposit: 0,
            settled: 0,
            close_requested_at: 0,
            finalized: false,
            chain_checked_at_ms: 0,
            accepted_cumulative: 0,
            accepted_signature: [0; SIGNATURE_LEN],
            spent: 0,
            units: 0,
            updated_at_ms: 0,
            feed_cursor: 0,
            revision: 0,
        }
    }

    /// What can still be charged: `accepted_cumulative - spent`.
    pub const fn available(&self) -> u128 {
        self.accepted_cumulative.saturating_sub(self.spent)
    }

    /// Whether a voucher has been accepted (its signature is stored).
    pub fn has_voucher(&self) -> bool {
        self.accepted_signature != [0; SIGNATURE_LEN]
    }

    /// Checks the money invariants every stored record satisfies:
    /// `spent ≤ accepted_cumulative ≤ deposit`, and a non-zero accepted amount has a signature.
    pub fn check_invariants(&self) -> Result<(), RecordError> {
        if self.spent > self.accepted_cumulative {
            return Err(RecordError::SpentExceedsAccepted {
                spent: self.spent,
                accepted: self.accepted_cumulative,
            });
        }
        if self.accepted_cumulative > self.deposit {
            return Err(RecordError::AcceptedExceedsDeposit {
                accepted: self.accepted_cumulative,
                deposit: self.deposit,
            });
        }
        if self.accepted_cumulative > 0 && !self.has_voucher() {
            return Err(RecordError::AcceptedWithoutSignature {
                accepted: self.accepted_cumulative,
            });
        }
        Ok(())
    }

    /// Encodes the record in layout version [`RECORD_VERSION`].
    pub fn to_bytes(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[OFF_VERSION] = RECORD_VERSION;
        out[OFF_STATUS] = self.status.to_byte();
        out[OFF_FINALIZED] = u8::from(self.finalized);
        out[OFF_CHANNEL_ID..OFF_PAYER].copy_from_slice(self.channel_id.as_slice());
        out[OFF_PAYER..OFF_PAYEE].copy_from_slice(self.payer.as_slice());
        out[OFF_PAYEE..OFF_TOKEN].copy_from_slice(self.payee.as_slice());
        out[OFF_TOKEN..OFF_SIGNER].copy_from_slice(self.token.as_slice());
        out[OFF_SIGNER..OFF_DEPOSIT].copy_from_slice(self.authorized_signer.as_slice());
        out[OFF_DEPOSIT..OFF_SETTLED].copy_from_slice(&self.deposit.to_be_bytes());
        out[OFF_SETTLED..OFF_CLOSE_REQUESTED_AT].copy_from_slice(&self.settled.to_be_bytes());
        out[OFF_CLOSE_REQUESTED_AT..OFF_CHAIN_CHECKED_AT]
            .copy_from_slice(&self.close_requested_at.to_be_bytes());
        out[OFF_CHAIN_CHECKED_AT..OFF_ACCEPTED]
            .copy_from_slice(&self.chain_checked_at_ms.to_be_bytes());
        out[OFF_ACCEPTED..OFF_SIGNATURE].copy_from_slice(&self.accepted_cumulative.to_be_bytes());
        out[OFF_SIGNATURE..OFF_SPENT].copy_from_slice(&self.accepted_signature);
        out[OFF_SPENT..OFF_UNITS].copy_from_slice(&self.spent.to_be_bytes());
        out[OFF_UNITS..OFF_UPDATED_AT].copy_from_slice(&self.units.to_be_bytes());
        out[OFF_UPDATED_AT..OFF_FEED_CURSOR].copy_from_slice(&self.updated_at_ms.to_be_bytes());
        out[OFF_FEED_CURSOR..OFF_REVISION].copy_from_slice(&self.feed_cursor.to_be_bytes());
        out[OFF_REVISION..OFF_END].copy_from_slice(&self.revision.to_be_bytes());
        out
    }

    /// Decodes a record, rejecting unknown versions, wrong lengths, invalid status or flag bytes
    /// and records that break [`ChannelRecord::check_invariants`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let version = *bytes.first().ok_or(RecordError::Empty)?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion { found: version });
        }
        let bytes: &[u8; RECORD_LEN] = bytes.try_into().map_err(|_| RecordError::WrongLength {
            version,
            expected: RECORD_LEN,
            found: bytes.len(),
        })?;
        let finalized = match bytes[OFF_FINALIZED] {
            0 => false,
            1 => true,
            found => return Err(RecordError::InvalidFlag { found }),
        };
        let record = Self {
            channel_id: B256::from(array::<32>(bytes, OFF_CHANNEL_ID)),
            status: ChannelStatus::from_byte(bytes[OFF_STATUS])?,
            payer: Address::from(array::<20>(bytes, OFF_PAYER)),
            payee: Address::from(array::<20>(bytes, OFF_PAYEE)),
            token: Address::from(array::<20>(bytes, OFF_TOKEN)),
            authorized_signer: Address::from(array::<20>(bytes, OFF_SIGNER)),
            deposit: u128::from_be_bytes(array(bytes, OFF_DEPOSIT)),
            settled: u128::from_be_bytes(array(bytes, OFF_SETTLED)),
            close_requested_at: u64::from_be_bytes(array(bytes, OFF_CLOSE_REQUESTED_AT)),
            finalized,
            chain_checked_at_ms: u64::from_be_bytes(array(bytes, OFF_CHAIN_CHECKED_AT)),
            accepted_cumulative: u128::from_be_bytes(array(bytes, OFF_ACCEPTED)),
            accepted_signature: array(bytes, OFF_SIGNATURE),
            spent: u128::from_be_bytes(array(bytes, OFF_SPENT)),
            units: u64::from_be_bytes(array(bytes, OFF_UNITS)),
            updated_at_ms: u64::from_be_bytes(array(bytes, OFF_UPDATED_AT)),
            feed_cursor: u64::from_be_bytes(array(bytes, OFF_FEED_CURSOR)),
            revision: u64::from_be_bytes(array(bytes, OFF_REVISION)),
        };
        record.check_invariants()?;
        Ok(record)
    }
}

/// Copies `N` bytes at `offset` out of a record buffer. Offsets are compile-time constants that
/// the layout assertions above keep inside `RECORD_LEN`.
fn array<const N: usize>(bytes: &[u8; RECORD_LEN], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ChannelRecord {
        let mut record = ChannelRecord::new(B256::repeat_byte(0xc1));
        record.status = ChannelStatus::Closing;
        record.payer = Address::repeat_byte(0x11);
        record.payee = Address::repeat_byte(0x22);
        record.token = Address::repeat_byte(0x33);
        record.authorized_signer = Address::repeat_byte(0x44);
        record.deposit = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
        record.settled = 7;
        record.close_requested_at = 0x1122_3344_5566_7788;
        record.finalized = true;
        record.chain_checked_at_ms = 0x99;
        record.accepted_cumulative = 1_000;
        record.accepted_signature = [0x5a; SIGNATURE_LEN];
        record.spent = 400;
        record.units = 4;
        record.updated_at_ms = 0xaabb;
        record.feed_cursor = 0xfeed;
        record.revision = 0x0102;
        record
    }

    #[test]
    fn every_field_sits_at_its_documented_offset() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes[0], 1, "version");
        assert_eq!(bytes[1], 2, "status Closing");
        assert_eq!(bytes[2], 1, "finalized");
        assert_eq!(&bytes[3..35], &[0xc1; 32], "channel id");
        assert_eq!(&bytes[35..55], &[0x11; 20], "payer");
        assert_eq!(&bytes[55..75], &[0x22; 20], "payee");
        assert_eq!(&bytes[75..95], &[0x33; 20], "token");
        assert_eq!(&bytes[95..115], &[0x44; 20], "authorized signer");
        assert_eq!(
            &bytes[115..131],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            "deposit, big-endian"
        );
        assert_eq!(bytes[146], 7, "settled low byte");
        assert_eq!(
            &bytes[147..155],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(bytes[162], 0x99, "chain checked at");
        assert_eq!(&bytes[177..179], &[0x03, 0xe8], "accepted = 1000");
        assert_eq!(&bytes[179..244], &[0x5a; 65], "signature");
        assert_eq!(&bytes[258..260], &[0x01, 0x90], "spent = 400");
        assert_eq!(bytes[267], 4, "units");
        assert_eq!(&bytes[274..276], &[0xaa, 0xbb], "updated at");
        assert_eq!(&bytes[282..284], &[0xfe, 0xed], "feed cursor");
        assert_eq!(&bytes[284..292], &[0, 0, 0, 0, 0, 0, 1, 2], "revision");
    }

    #[test]
    fn rejects_unknown_versions_and_wrong_lengths() {
        let bytes = sample().to_bytes();
        assert_eq!(ChannelRecord::from_bytes(&[]), Err(RecordError::Empty));
        let mut v2 = bytes;
        v2[0] = 2;
        assert_eq!(
            ChannelRecord::from_bytes(&v2),
            Err(RecordError::UnknownVersion { found: 2 })
        );
        assert_eq!(
            ChannelRecord::from_bytes(&bytes[..291]),
            Err(RecordError::WrongLength {
                version: 1,
                expected: 292,
                found: 291
            })
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            ChannelRecord::from_bytes(&long),
            Err(RecordError::WrongLength {
                version: 1,
                expected: 292,
                found: 293
            })
        );
    }

    #[test]
    fn rejects_invalid_status_flag_and_broken_invariants() {
        let bytes = sample().to_bytes();
        let mut bad = bytes;
        bad[1] = 4;
        assert_eq!(
            ChannelRecord::from_bytes(&bad),
            Err(RecordError::UnknownStatus { found: 4 })
        );
        let mut bad = bytes;
        bad[2] = 2;
        assert_eq!(
            ChannelRecord::from_bytes(&bad),
            Err(RecordError::InvalidFlag { found: 2 })
        );

        let mut over = sample();
        over.spent = over.accepted_cumulative + 1;
        assert_eq!(
            ChannelRecord::from_bytes(&over.to_bytes()),
            Err(RecordError::SpentExceedsAccepted {
                spent: 1_001,
                accepted: 1_000
            })
        );
        let mut over = sample();
        over.deposit = 999;
        assert_eq!(
            ChannelRecord::from_bytes(&over.to_bytes()),
            Err(RecordError::AcceptedExceedsDeposit {
                accepted: 1_000,
                deposit: 999
            })
        );
        let mut unsigned = sample();
        unsigned.accepted_signature = [0; SIGNATURE_LEN];
        assert_eq!(
            ChannelRecord::from_bytes(&unsigned.to_bytes()),
            Err(RecordError::AcceptedWithoutSignature { accepted: 1_000 })
        );
    }

    fn arb_record() -> impl Strategy<Value = ChannelRecord> {
        (
            (
                any::<[u8; 32]>(),
                0u8..4,
                any::<bool>(),
                any::<[u8; 20]>(),
                any::<[u8; 20]>(),
            ),
            (
                any::<[u8; 20]>(),
                any::<[u8; 20]>(),
                any::<u128>(),
                any::<u128>(),
                any::<u64>(),
            ),
            (
                any::<u64>(),
                any::<u128>(),
                any::<u128>(),
                any::<[u8; 32]>(),
                any::<u8>(),
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(|(a, b, c, d)| {
                let (id, status, finalized, payer, payee) = a;
                let (token, signer, deposit, settled, close_at) = b;
                let (checked, accepted_raw, spent_raw, sig_half, v) = c;
                let (units, updated, cursor, revision) = d;
                let accepted = if deposit == 0 {
                    0
                } else {
                    accepted_raw % (deposit + 1)
                };
                let spent = if accepted == 0 {
                    0
                } else {
                    spent_raw % (accepted + 1)
                };
                let mut signature = [0u8; SIGNATURE_LEN];
                if accepted > 0 {
                    signature[..32].copy_from_slice(&sig_half);
                    signature[32..64].copy_from_slice(&sig_half);
                    signature[64] = v | 1;
                }
                ChannelRecord {
                    channel_id: B256::from(id),
                    status: ChannelStatus::from_byte(status).expect("0..4 is a status"),
                    payer: Address::from(payer),
                    payee: Address::from(payee),
                    token: Address::from(token),
                    authorized_signer: Address::from(signer),
                    deposit,
                    settled,
                    close_requested_at: close_at,
                    finalized,
                    chain_checked_at_ms: checked,
                    accepted_cumulative: accepted,
                    accepted_signature: signature,
                    spent,
                    units,
                    updated_at_ms: updated,
                    feed_cursor: cursor,
                    revision,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trips_every_valid_record(record in arb_record()) {
            let bytes = record.to_bytes();
            prop_assert_eq!(bytes.len(), RECORD_LEN);
            prop_assert_eq!(ChannelRecord::from_bytes(&bytes), Ok(record));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ChannelRecord::from_bytes(&bytes);
        }

        #[test]
        fn decoding_a_mutated_record_never_panics(record in arb_record(), at in 0..RECORD_LEN, byte in any::<u8>()) {
            let mut bytes = record.to_bytes();
            bytes[at] = byte;
            if let Ok(decoded) = ChannelRecord::from_bytes(&bytes) {
                prop_assert!(decoded.check_invariants().is_ok());
                prop_assert_eq!(decoded.to_bytes(), bytes);
            }
        }
    }
}
