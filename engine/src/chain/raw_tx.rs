//! Decoding a payer-signed raw transaction without the network.

use alloy::{
    consensus::{Transaction, TxEnvelope, transaction::SignerRecoverable},
    eips::eip2718::Decodable2718,
};
use alloy_primitives::{Address, B256, Bytes, U256};

use super::{ChainError, ChainErrorKind};

const OPERATION: &str = "decodeRawTransaction";

/// A signed transaction as `eth_sendRawTransaction` takes it (the EIP-2718 envelope), decoded.
///
/// The facade uses it to check a payer's `open`/`topUp` before broadcasting (target, calldata,
/// chain) and to know the payer (the recovered signer) without trusting the credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTransaction {
    /// The transaction hash: keccak-256 of the EIP-2718 envelope, what the node will report.
    pub hash: B256,
    /// The address that signed it (`msg.sender` of the call). High-s signatures are refused.
    pub signer: Address,
    /// The EIP-2718 type byte (0 for legacy).
    pub tx_type: u8,
    /// The EIP-155 chain id; `None` for a pre-EIP-155 legacy transaction.
    pub chain_id: Option<u64>,
    /// The sender's nonce.
    pub nonce: u64,
    /// The called address; `None` for a contract creation.
    pub to: Option<Address>,
    /// Wei sent along.
    pub value: U256,
    /// The calldata.
    pub input: Bytes,
    /// The gas limit.
    pub gas_limit: u64,
}

impl RawTransaction {
    /// Decodes and authenticates raw transaction bytes: exactly one EIP-2718 envelope (legacy,
    /// 2930, 1559, 4844 or 7702), no trailing bytes, and a signature that recovers to a signer.
    ///
    /// Every failure is a [`ChainErrorKind::InvalidTransaction`]; nothing here can panic on
    /// hostile input.
    pub fn decode(raw: &[u8]) -> Result<Self, ChainError> {
        let invalid = |message: String| {
            ChainError::new(ChainErrorKind::InvalidTransaction, OPERATION, message)
        };
        if raw.is_empty() {
            return Err(invalid("empty transaction".to_owned()));
        }
        let envelope = TxEnvelope::decode_2718_exact(raw)
            .map_err(|e| invalid(format!("not an EIP-2718 signed transaction: {e}")))?;
        let signer = envelope
            .recover_signer()
            .map_err(|e| invalid(format!("signature does not recover a signer: {e}")))?;
        Ok(Self {
            hash: *envelope.tx_hash(),
            signer,
            tx_type: envelope.tx_type() as u8,
            chain_id: envelope.chain_id(),
            nonce: envelope.nonce(),
            to: envelope.to(),
            value: envelope.value(),
            input: envelope.input().clone(),
            gas_limit: envelope.gas_limit(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::{
        consensus::{SignableTransaction, TxEip1559, TxLegacy},
        eips::eip2718::Encodable2718,
        signers::{SignerSync, local::PrivateKeySigner},
    };
    use alloy_primitives::{TxKind, keccak256};
    use proptest::prelude::*;

    fn signer() -> PrivateKeySigner {
        // anvil account #2
        "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
            .parse()
            .expect("key")
    }

    fn eip1559(nonce: u64) -> Vec<u8> {
        let tx = TxEip1559 {
            chain_id: 31337,
            nonce,
            gas_limit: 200_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(Address::repeat_byte(0xe5)),
            value: U256::ZERO,
            access_list: Default::default(),
            input: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
        };
        let signature = signer().sign_hash_sync(&tx.signature_hash()).expect("sign");
        TxEnvelope::from(tx.into_signed(signature)).encoded_2718()
    }

    #[test]
    fn decodes_an_eip1559_transaction() {
        let raw = eip1559(7);
        let tx = RawTransaction::decode(&raw).expect("valid");
        assert_eq!(tx.hash, keccak256(&raw), "hash is keccak of the envelope");
        assert_eq!(tx.signer, signer().address());
        assert_eq!(tx.tx_type, 2);
        assert_eq!(tx.chain_id, Some(31337));
        assert_eq!(tx.nonce, 7);
        assert_eq!(tx.to, Some(Address::repeat_byte(0xe5)));
        assert_eq!(tx.input.as_ref(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(tx.gas_limit, 200_000);
    }

    #[test]
    fn decodes_a_legacy_transaction() {
        let tx = TxLegacy {
            chain_id: Some(1),
            nonce: 3,
            gas_price: 1_000_000_000,
            gas_limit: 21_000,
            to: TxKind::Create,
            value: U256::from(5),
            input: Bytes::new(),
        };
        let signature = signer().sign_hash_sync(&tx.signature_hash()).expect("sign");
        let raw = TxEnvelope::from(tx.into_signed(signature)).encoded_2718();
        let decoded = RawTransaction::decode(&raw).expect("valid");
        assert_eq!(decoded.hash, keccak256(&raw));
        assert_eq!(decoded.tx_type, 0);
        assert_eq!(decoded.to, None);
        assert_eq!(decoded.value, U256::from(5));
        assert_eq!(decoded.signer, signer().address());
    }

    #[test]
    fn refuses_garbage_trailing_bytes_and_bad_signatures() {
        let kind = |raw: &[u8]| RawTransaction::decode(raw).map(|_| ()).map_err(|e| e.kind);
        assert_eq!(kind(&[]), Err(ChainErrorKind::InvalidTransaction));
        assert_eq!(kind(&[0x02]), Err(ChainErrorKind::InvalidTransaction));
        assert_eq!(
            kind(b"not a transaction"),
            Err(ChainErrorKind::InvalidTransaction)
        );
        let mut trailing = eip1559(1);
        trailing.push(0);
        assert_eq!(kind(&trailing), Err(ChainErrorKind::InvalidTransaction));

        // Replace s with n - s (the malleated twin): alloy refuses high-s on recovery.
        let raw = eip1559(1);
        let envelope = TxEnvelope::decode_2718_exact(&raw).expect("valid");
        let TxEnvelope::Eip1559(signed) = envelope else {
            panic!("built an EIP-1559 transaction");
        };
        let n = U256::from_be_slice(&alloy::hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let sig = *signed.signature();
        let high_s = alloy_primitives::Signature::new(sig.r(), n - sig.s(), !sig.v());
        let malleated = TxEnvelope::from(signed.tx().clone().into_signed(high_s)).encoded_2718();
        assert_eq!(kind(&malleated), Err(ChainErrorKind::InvalidTransaction));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(tx) = RawTransaction::decode(&raw) {
                prop_assert_eq!(tx.hash, keccak256(&raw));
            }
        }

        #[test]
        fn mutated_transactions_never_panic(at in 0usize..200, byte in any::<u8>()) {
            let mut raw = eip1559(9);
            let at = at % raw.len();
            raw[at] = byte;
            // Either refused, or a (different) valid transaction whose hash is still its keccak.
            if let Ok(tx) = RawTransaction::decode(&raw) {
                prop_assert_eq!(tx.hash, keccak256(&raw));
            }
        }
    }
}
