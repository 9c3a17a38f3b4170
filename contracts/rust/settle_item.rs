//! Building `settleBatch` items from vouchers.

use alloy::primitives::{Address, B256, U256};

use crate::{ContractsError, ISluiceEscrow, SluiceEscrow};

/// What is wrong with a signature's bytes (the escrow's `SignatureFault`, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFault {
    /// Neither 65 bytes (r, s, v) nor 64 bytes (EIP-2098).
    Length,
    /// A 65-byte signature whose v is not 27 or 28.
    RecoveryId,
    /// r is zero or not below the secp256k1 group order.
    R,
    /// s is zero or above half the group order (malleable).
    S,
}

/// secp256k1 group order n.
const SECP256K1_N: U256 = U256::from_be_slice(&[
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
]);

/// Converts a voucher signature to the EIP-2098 `(r, yParityAndS)` pair that `settleBatch`
/// takes, applying the escrow's own checks: 65 bytes with v 27/28 or 64 bytes compact, r in
/// [1, n), s in [1, n/2]. Nothing is normalised: a high-s signature is an error, not flipped.
pub fn compact_signature(signature: &[u8]) -> Result<(B256, B256), ContractsError> {
    let fault = |fault| ContractsError::Signature {
        fault,
        len: signature.len(),
    };
    let (r, s, y_parity) = match signature.len() {
        65 => {
            let v = signature[64];
            if v != 27 && v != 28 {
                return Err(fault(SignatureFault::RecoveryId));
            }
            (
                U256::from_be_slice(&signature[..32]),
                U256::from_be_slice(&signature[32..64]),
                v == 28,
            )
        }
        64 => {
            let vs = U256::from_be_slice(&signature[32..64]);
            (
                U256::from_be_slice(&signature[..32]),
                vs & (U256::MAX >> 1),
                vs.bit(255),
            )
        }
        _ => return Err(fault(SignatureFault::Length)),
    };
    if r.is_zero() || r >= SECP256K1_N {
        return Err(fault(SignatureFault::R));
    }
    if s.is_zero() || s > SECP256K1_N >> 1 {
        return Err(fault(SignatureFault::S));
    }
    let vs = if y_parity {
        s | (U256::from(1) << 255)
    } else {
        s
    };
    Ok((B256::from(r), B256::from(vs)))
}

/// A `settleBatch` item for a channel named by its opening parameters (those of its
/// `ChannelOpened` event; the payee is whoever sends the batch) and a voucher for it.
pub fn settle_item(
    payer: Address,
    token: Address,
    salt: B256,
    authorized_signer: Address,
    cumulative_amount: u128,
    signature: &[u8],
) -> Result<ISluiceEscrow::SettleItem, ContractsError> {
    let (r, y_parity_and_s) = compact_signature(signature)?;
    Ok(ISluiceEscrow::SettleItem {
        payer,
        token,
        salt,
        authorizedSigner: authorized_signer,
        cumulativeAmount: cumulative_amount,
        r,
        yParityAndS: y_parity_and_s,
    })
}

/// [`settle_item`] for the channel a `ChannelOpened` event announced (the event carries every
/// opening parameter, including the salt that `getChannel` does not return).
pub fn settle_item_from_opened(
    opened: &SluiceEscrow::ChannelOpened,
    cumulative_amount: u128,
    signature: &[u8],
) -> Result<ISluiceEscrow::SettleItem, ContractsError> {
    settle_item(
        opened.payer,
        opened.token,
        opened.salt,
        opened.authorizedSigner,
        cumulative_amount,
        signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig65(r: U256, s: U256, v: u8) -> Vec<u8> {
        let mut out = r.to_be_bytes::<32>().to_vec();
        out.extend_from_slice(&s.to_be_bytes::<32>());
        out.push(v);
        out
    }

    fn fault_of(signature: &[u8]) -> Option<SignatureFault> {
        match compact_signature(signature) {
            Err(ContractsError::Signature { fault, .. }) => Some(fault),
            _ => None,
        }
    }

    #[test]
    fn compact_form_keeps_r_and_puts_parity_in_the_top_bit() {
        let (r, s) = (U256::from(7), U256::from(9));
        let (cr, cvs) = compact_signature(&sig65(r, s, 28)).unwrap();
        assert_eq!(U256::from_be_bytes(cr.0), r);
        assert_eq!(U256::from_be_bytes(cvs.0), s | (U256::from(1) << 255));
        let (_, even) = compact_signature(&sig65(r, s, 27)).unwrap();
        assert_eq!(U256::from_be_bytes(even.0), s);
        // A 64-byte input is already compact and passes through unchanged.
        let mut compact = cr.to_vec();
        compact.extend_from_slice(cvs.as_slice());
        assert_eq!(compact_signature(&compact).unwrap(), (cr, cvs));
    }

    #[test]
    fn rejects_what_the_escrow_rejects() {
        let half = SECP256K1_N >> 1;
        assert_eq!(fault_of(&[0u8; 63]), Some(SignatureFault::Length));
        assert_eq!(fault_of(&[0u8; 66]), Some(SignatureFault::Length));
        assert_eq!(
            fault_of(&sig65(U256::from(1), U256::from(1), 0)),
            Some(SignatureFault::RecoveryId)
        );
        assert_eq!(
            fault_of(&sig65(U256::from(1), U256::from(1), 1)),
            Some(SignatureFault::RecoveryId)
        );
        assert_eq!(
            fault_of(&sig65(U256::ZERO, U256::from(1), 27)),
            Some(SignatureFault::R)
        );
        assert_eq!(
            fault_of(&sig65(SECP256K1_N, U256::from(1), 27)),
            Some(SignatureFault::R)
        );
        assert_eq!(
            fault_of(&sig65(U256::from(1), U256::ZERO, 27)),
            Some(SignatureFault::S)
        );
        assert_eq!(
            fault_of(&sig65(U256::from(1), half + U256::from(1), 27)),
            Some(SignatureFault::S)
        );
        assert_eq!(fault_of(&sig65(U256::from(1), half, 27)), None);
    }
}
