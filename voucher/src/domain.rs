//! Vouchers and their EIP-712 domain, struct hash and digest.

use crate::{Amount, ChannelId, VoucherSignature};
use alloy_primitives::{Address, B256, b256, keccak256};

/// The EIP-712 domain type every voucher domain uses.
pub const EIP712_DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";

/// `keccak256(EIP712_DOMAIN_TYPE)`.
pub const EIP712_DOMAIN_TYPEHASH: B256 =
    b256!("8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f");

/// The v1 voucher type, as the `TempoStreamChannel` escrow declares it.
pub const VOUCHER_TYPE_V1: &str = "Voucher(bytes32 channelId,uint128 cumulativeAmount)";

/// `keccak256(VOUCHER_TYPE_V1)`.
pub const VOUCHER_TYPEHASH_V1: B256 =
    b256!("e97c93f01d3ef8eaba1586553df13308f236815bf4ea49c7b696895d8f5ea68a");

/// The EIP-712 domain name of the v1 escrow (`TempoStreamChannel`).
pub const TEMPO_V1_DOMAIN_NAME: &str = "Tempo Stream Channel";

/// The EIP-712 domain version of the v1 escrow.
pub const TEMPO_V1_DOMAIN_VERSION: &str = "1";

/// A payer's promise: "the payee may claim up to `cumulative_amount` in total from this
/// channel". Amounts only grow; the escrow pays the difference to what it already settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Voucher {
    /// The channel the voucher draws on.
    pub channel_id: ChannelId,
    /// The total the payee may have claimed, in token base units (`uint128` on chain).
    pub cumulative_amount: Amount,
}

impl Voucher {
    /// A voucher for `cumulative_amount` on `channel_id`.
    #[must_use]
    pub const fn new(channel_id: ChannelId, cumulative_amount: Amount) -> Self {
        Self {
            channel_id,
            cumulative_amount,
        }
    }

    /// The v1 EIP-712 struct hash, `keccak256(abi.encode(VOUCHER_TYPEHASH_V1, channelId,
    /// cumulativeAmount))`. It does not depend on the domain.
    #[must_use]
    pub fn struct_hash(&self) -> B256 {
        let mut buf = [0u8; 96];
        buf[..32].copy_from_slice(VOUCHER_TYPEHASH_V1.as_slice());
        buf[32..64].copy_from_slice(self.channel_id.as_bytes());
        buf[80..96].copy_from_slice(&self.cumulative_amount.to_be_bytes());
        keccak256(buf)
    }
}

/// A voucher with its parsed signature, as it arrives in a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignedVoucher {
    /// What was signed.
    pub voucher: Voucher,
    /// The signature over the voucher's EIP-712 digest.
    pub signature: VoucherSignature,
}

/// The EIP-712 domain vouchers are signed under: name, version, chain id and escrow.
///
/// The domain separator is computed once, when the domain is built, and reused for every
/// voucher. Build one domain per (chain, escrow) and keep it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VoucherDomain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
    separator: B256,
}

impl VoucherDomain {
    /// A domain with any name and version, for deployments that use their own EIP-712 name.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        chain_id: u64,
        verifying_contract: Address,
    ) -> Self {
        let name = name.into();
        let version = version.into();
        let mut buf = [0u8; 160];
        buf[..32].copy_from_slice(EIP712_DOMAIN_TYPEHASH.as_slice());
        buf[32..64].copy_from_slice(keccak256(name.as_bytes()).as_slice());
        buf[64..96].copy_from_slice(keccak256(version.as_bytes()).as_slice());
        buf[120..128].copy_from_slice(&chain_id.to_be_bytes());
        buf[140..160].copy_from_slice(verifying_contract.as_slice());
        let separator = keccak256(buf);
        Self {
            name,
            version,
            chain_id,
            verifying_contract,
            separator,
        }
    }

    /// The v1 domain mppx signs for: "Tempo Stream Channel", version "1", on `chain_id`,
    /// verified by `escrow`.
    #[must_use]
    pub fn tempo_v1(chain_id: u64, escrow: Address) -> Self {
        Self::new(
            TEMPO_V1_DOMAIN_NAME,
            TEMPO_V1_DOMAIN_VERSION,
            chain_id,
            escrow,
        )
    }

    /// The domain name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain version.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The chain id.
    #[must_use]
    pub const fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The escrow contract that verifies vouchers.
    #[must_use]
    pub const fn verifying_contract(&self) -> Address {
        self.verifying_contract
    }

    /// The EIP-712 domain separator (precomputed).
    #[must_use]
    pub const fn separator(&self) -> B256 {
        self.separator
    }

    /// The voucher's EIP-712 struct hash (see [`Voucher::struct_hash`]).
    #[must_use]
    pub fn struct_hash(&self, voucher: &Voucher) -> B256 {
        voucher.struct_hash()
    }

    /// The digest that is signed: `keccak256(0x1901 ‖ separator ‖ structHash)`, equal to the
    /// escrow's `getVoucherDigest(channelId, cumulativeAmount)`.
    #[must_use]
    pub fn digest(&self, voucher: &Voucher) -> B256 {
        self.digest_from_struct_hash(&voucher.struct_hash())
    }

    /// The EIP-712 digest of any struct hash under this domain. Useful for struct types other
    /// than the v1 voucher (for example the v2 `uint96` voucher, whose typehash differs).
    #[must_use]
    pub fn digest_from_struct_hash(&self, struct_hash: &B256) -> B256 {
        let mut buf = [0u8; 66];
        buf[0] = 0x19;
        buf[1] = 0x01;
        buf[2..34].copy_from_slice(self.separator.as_slice());
        buf[34..66].copy_from_slice(struct_hash.as_slice());
        keccak256(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typehash_constants_are_the_hashes_of_their_types() {
        assert_eq!(keccak256(EIP712_DOMAIN_TYPE), EIP712_DOMAIN_TYPEHASH);
        assert_eq!(keccak256(VOUCHER_TYPE_V1), VOUCHER_TYPEHASH_V1);
    }

    #[test]
    fn separator_depends_on_every_domain_field() {
        let escrow = Address::repeat_byte(0x11);
        let base = VoucherDomain::tempo_v1(1, escrow);
        let others = [
            VoucherDomain::new("EVM Payment Channel", "1", 1, escrow),
            VoucherDomain::new(TEMPO_V1_DOMAIN_NAME, "2", 1, escrow),
            VoucherDomain::tempo_v1(2, escrow),
            VoucherDomain::tempo_v1(1, Address::repeat_byte(0x12)),
        ];
        for other in &others {
            assert_ne!(base.separator(), other.separator(), "{other:?}");
        }
        assert_eq!(
            base.separator(),
            VoucherDomain::tempo_v1(1, escrow).separator()
        );
    }
}
