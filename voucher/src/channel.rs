//! Channel identity: the id type, v1 id derivation and the expected voucher signer.

use crate::VoucherError;
use alloy_primitives::{Address, B256, hex, keccak256};
use core::{fmt, str::FromStr};

/// A token amount in base units. Cumulative voucher amounts, deposits and deltas are all
/// `Amount`s; the v1 escrow stores them as `uint128`.
pub type Amount = u128;

/// A payment channel id: the `bytes32` the escrow keys channels by.
///
/// Displayed and parsed as `0x`-prefixed hex (parsing accepts either case and an optional
/// prefix; display is lower case, the form channel state is keyed by).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChannelId(B256);

impl ChannelId {
    /// Wraps a raw 32-byte id.
    #[must_use]
    pub const fn new(id: B256) -> Self {
        Self(id)
    }

    /// The id as a `bytes32` value.
    #[must_use]
    pub const fn as_b256(&self) -> &B256 {
        &self.0
    }

    /// The id's 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }
}

impl From<B256> for ChannelId {
    fn from(id: B256) -> Self {
        Self(id)
    }
}

impl From<ChannelId> for B256 {
    fn from(id: ChannelId) -> Self {
        id.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({self})")
    }
}

impl FromStr for ChannelId {
    type Err = VoucherError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode_to_array::<_, 32>(s)
            .map(|bytes| Self(B256::from(bytes)))
            .map_err(|source| VoucherError::BadHex {
                what: "channel id",
                source,
            })
    }
}

/// The signer whose signature a channel's vouchers must carry: the channel's
/// `authorizedSigner` when it is non-zero, otherwise the payer.
///
/// Both values must come from channel state the server trusts (the escrow's `getChannel`),
/// never from a claim in a credential.
#[must_use]
pub fn expected_signer(payer: Address, authorized_signer: Address) -> Address {
    if authorized_signer.is_zero() {
        payer
    } else {
        authorized_signer
    }
}

/// The parameters a v1 (`TempoStreamChannel`) channel id is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelParams {
    /// The account that opened the channel and funds it (`msg.sender` of `open`).
    pub payer: Address,
    /// The provider that is paid by vouchers.
    pub payee: Address,
    /// The ERC-20 (TIP-20 on Tempo) token of the deposit.
    pub token: Address,
    /// 32 bytes chosen by the payer so it can open several channels to one payee.
    pub salt: B256,
    /// A delegated voucher signer, or the zero address when the payer signs.
    pub authorized_signer: Address,
    /// The escrow contract.
    pub escrow: Address,
    /// The chain the escrow lives on.
    pub chain_id: u64,
}

/// Length of the v1 channel id preimage: seven ABI words.
pub const CHANNEL_ID_V1_PREIMAGE_LEN: usize = 7 * 32;

impl ChannelParams {
    /// `abi.encode(payer, payee, token, salt, authorizedSigner, escrow, uint256 chainId)`:
    /// the preimage of the v1 channel id.
    #[must_use]
    pub fn abi_encode(&self) -> [u8; CHANNEL_ID_V1_PREIMAGE_LEN] {
        // Each value is one 32-byte word: addresses left-padded, integers big-endian.
        fn address_word(out: &mut [u8], word: usize, address: &Address) {
            out[word * 32 + 12..(word + 1) * 32].copy_from_slice(address.as_slice());
        }
        let mut out = [0u8; CHANNEL_ID_V1_PREIMAGE_LEN];
        address_word(&mut out, 0, &self.payer);
        address_word(&mut out, 1, &self.payee);
        address_word(&mut out, 2, &self.token);
        out[96..128].copy_from_slice(self.salt.as_slice());
        address_word(&mut out, 4, &self.authorized_signer);
        address_word(&mut out, 5, &self.escrow);
        out[216..224].copy_from_slice(&self.chain_id.to_be_bytes());
        out
    }

    /// The v1 channel id: `keccak256` of [`abi_encode`](Self::abi_encode), as the escrow's
    /// `computeChannelId` computes it.
    #[must_use]
    pub fn channel_id(&self) -> ChannelId {
        ChannelId(keccak256(self.abi_encode()))
    }

    /// The signer this channel's vouchers must carry (see [`expected_signer`]).
    #[must_use]
    pub fn expected_signer(&self) -> Address {
        expected_signer(self.payer, self.authorized_signer)
    }
}

/// The v1 channel id, `keccak256(abi.encode(payer, payee, token, salt, authorizedSigner,
/// escrow, uint256 chainId))`. Shorthand for [`ChannelParams::channel_id`].
#[must_use]
pub fn channel_id_v1(
    payer: Address,
    payee: Address,
    token: Address,
    salt: B256,
    authorized_signer: Address,
    escrow: Address,
    chain_id: u64,
) -> ChannelId {
    ChannelParams {
        payer,
        payee,
        token,
        salt,
        authorized_signer,
        escrow,
        chain_id,
    }
    .channel_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    #[test]
    fn channel_id_round_trips_through_text() {
        let id = ChannelId::new(B256::repeat_byte(0xab));
        let text = id.to_string();
        assert_eq!(text, format!("0x{}", "ab".repeat(32)));
        assert_eq!(text.parse::<ChannelId>(), Ok(id));
        assert_eq!(
            text.to_uppercase()
                .replacen("0X", "0x", 1)
                .parse::<ChannelId>(),
            Ok(id)
        );
        assert_eq!(text.trim_start_matches("0x").parse::<ChannelId>(), Ok(id));
    }

    #[test]
    fn channel_id_rejects_bad_text() {
        for bad in ["", "0x", "0x1234", "zz", &format!("0x{}", "g".repeat(64))] {
            assert!(
                matches!(
                    bad.parse::<ChannelId>(),
                    Err(VoucherError::BadHex {
                        what: "channel id",
                        ..
                    })
                ),
                "{bad:?} must not parse"
            );
        }
    }

    #[test]
    fn expected_signer_prefers_a_non_zero_authorized_signer() {
        let payer = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        let delegate = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
        assert_eq!(expected_signer(payer, Address::ZERO), payer);
        assert_eq!(expected_signer(payer, delegate), delegate);
    }
}
