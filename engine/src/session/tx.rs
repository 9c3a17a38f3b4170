//! Decoding the payer-signed `open` and `topUp` transactions a credential carries, before the
//! engine broadcasts anything.
//!
//! The engine only ever relays transactions that call its own escrow, on its own chain, with
//! the route's payee and token: everything here is checked offline, so a credential that fails
//! costs no chain traffic and has no on-chain effect.

use alloy::consensus::{Transaction as _, TxEnvelope};
use alloy::eips::eip2718::Decodable2718 as _;
use alloy::sol_types::SolCall;
use alloy_primitives::{Address, B256, Bytes, U256};
use sluice_contracts::SluiceEscrow;
use sluice_voucher::{VoucherSignature, channel_id_v1, expected_signer, recover_address};

use super::SessionError;
use crate::store::ChannelId;

/// What the engine requires of every transaction it relays: its chain, its escrow, and, for
/// `open`, the route's payee and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EscrowTerms {
    /// The chain id the engine serves.
    pub chain_id: u64,
    /// The escrow contract.
    pub escrow: Address,
    /// The payee every channel must pay (the routes' `recipient`).
    pub payee: Address,
    /// The token every channel must hold (the routes' `currency`).
    pub token: Address,
}

/// A checked `open` transaction: who opens which channel, with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedOpen {
    /// Hash of the signed transaction.
    pub tx_hash: B256,
    /// The sender, who becomes the channel's payer.
    pub payer: Address,
    /// `payee` argument (equals the terms' payee).
    pub payee: Address,
    /// `token` argument (equals the terms' token).
    pub token: Address,
    /// `deposit` argument.
    pub deposit: u128,
    /// `salt` argument.
    pub salt: B256,
    /// `authorizedSigner` argument (zero: the payer signs vouchers).
    pub authorized_signer: Address,
    /// The v1 channel id these arguments create (equals the credential's `channelId`).
    pub channel_id: ChannelId,
}

impl DecodedOpen {
    /// The address that must sign this channel's vouchers.
    pub fn expected_signer(&self) -> Address {
        expected_signer(self.payer, self.authorized_signer)
    }
}

/// A checked `topUp` transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedTopUp {
    /// Hash of the signed transaction.
    pub tx_hash: B256,
    /// The sender (the escrow requires the channel's payer).
    pub sender: Address,
    /// The channel it funds (equals the credential's `channelId`).
    pub channel_id: ChannelId,
    /// The amount it adds (equals the credential's `additionalDeposit`).
    pub additional_deposit: u128,
}

/// A decoded, signature-checked transaction to the escrow on the engine's chain.
struct EscrowCall {
    tx_hash: B256,
    sender: Address,
    input: Bytes,
}

fn decode_escrow_call(raw: &[u8], terms: &EscrowTerms) -> Result<EscrowCall, SessionError> {
    let envelope =
        TxEnvelope::decode_2718_exact(raw).map_err(|error| SessionError::TxMalformed {
            len: raw.len(),
            reason: error.to_string(),
        })?;
    // Legacy (with EIP-155 replay protection, checked below), access-list and dynamic-fee
    // transactions are what wallets send for a contract call; blob and set-code transactions
    // have no business here.
    match &envelope {
        TxEnvelope::Legacy(_) | TxEnvelope::Eip2930(_) | TxEnvelope::Eip1559(_) => {}
        other => {
            return Err(SessionError::TxTypeUnsupported {
                tx_type: other.tx_type() as u8,
            });
        }
    }
    let chain_id = envelope.chain_id();
    if chain_id != Some(terms.chain_id) {
        return Err(SessionError::TxWrongChain {
            expected: terms.chain_id,
            got: chain_id,
        });
    }
    let to = envelope.to();
    if to != Some(terms.escrow) {
        return Err(SessionError::TxWrongTarget {
            expected: terms.escrow,
            got: to,
        });
    }
    // Recover the sender with the voucher crate's strict parser: a high-s signature (invalid
    // for transactions since EIP-2) is refused rather than normalised.
    let signature = envelope.signature();
    let parsed = VoucherSignature::from_rsv(
        B256::from(signature.r()),
        B256::from(signature.s()),
        signature.v(),
    )
    .map_err(|source| SessionError::TxSignature { source })?;
    let sender = recover_address(&envelope.signature_hash(), &parsed)
        .map_err(|source| SessionError::TxSignature { source })?;
    Ok(EscrowCall {
        tx_hash: *envelope.tx_hash(),
        sender,
        input: envelope.input().clone(),
    })
}

fn decode_call<C: SolCall>(input: &[u8], function: &'static str) -> Result<C, SessionError> {
    let selector = input.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok());
    if selector != Some(C::SELECTOR) {
        return Err(SessionError::TxWrongFunction {
            expected: function,
            selector,
        });
    }
    // Strict: dirty padding in an address or uint128 word is refused, as the escrow's ABI
    // decoder would revert on it.
    C::abi_decode_validate(input).map_err(|error| SessionError::TxCalldata {
        function,
        reason: error.to_string(),
    })
}

/// Decodes and checks a payer-signed `open` transaction (PROTOCOL.md §3.5): an EIP-2718
/// envelope (legacy with EIP-155, type 1 or type 2) for `terms.chain_id`, sent to
/// `terms.escrow`, calling `open(payee, token, deposit, salt, authorizedSigner)` with
/// `payee == terms.payee` and `token == terms.token`; the sender (recovered from the signature)
/// is the payer, and the channel id these values create must be `claimed`.
///
/// Pure: it reads nothing but its arguments. Whether the transaction will succeed on chain is
/// not decided here.
pub fn decode_open_tx(
    raw: &[u8],
    terms: &EscrowTerms,
    claimed: &ChannelId,
) -> Result<DecodedOpen, SessionError> {
    let call = decode_escrow_call(raw, terms)?;
    let open: SluiceEscrow::openCall = decode_call(&call.input, "open")?;
    if open.payee != terms.payee {
        return Err(SessionError::PayeeMismatch {
            expected: terms.payee,
            got: open.payee,
        });
    }
    if open.token != terms.token {
        return Err(SessionError::TokenMismatch {
            expected: terms.token,
            got: open.token,
        });
    }
    let computed: ChannelId = channel_id_v1(
        call.sender,
        open.payee,
        open.token,
        open.salt,
        open.authorizedSigner,
        terms.escrow,
        terms.chain_id,
    )
    .into();
    if computed != *claimed {
        return Err(SessionError::ChannelIdMismatch {
            claimed: *claimed,
            computed,
        });
    }
    Ok(DecodedOpen {
        tx_hash: call.tx_hash,
        payer: call.sender,
        payee: open.payee,
        token: open.token,
        deposit: open.deposit,
        salt: open.salt,
        authorized_signer: open.authorizedSigner,
        channel_id: computed,
    })
}

/// Decodes and checks a payer-signed `topUp` transaction: the same envelope, chain and escrow
/// rules as [`decode_open_tx`], calling `topUp(channelId, additionalDeposit)` with the
/// credential's `claimed` channel and `claimed_additional` amount.
///
/// Whether the sender is the channel's payer needs the channel's record; see
/// [`check_top_up_sender`](super::check_top_up_sender).
pub fn decode_top_up_tx(
    raw: &[u8],
    terms: &EscrowTerms,
    claimed: &ChannelId,
    claimed_additional: u128,
) -> Result<DecodedTopUp, SessionError> {
    let call = decode_escrow_call(raw, terms)?;
    let top_up: SluiceEscrow::topUpCall = decode_call(&call.input, "topUp")?;
    if top_up.channelId != *claimed {
        return Err(SessionError::TopUpChannelMismatch {
            claimed: *claimed,
            in_tx: top_up.channelId,
        });
    }
    if top_up.additionalDeposit != U256::from(claimed_additional) {
        return Err(SessionError::TopUpAmountMismatch {
            claimed: claimed_additional,
            in_tx: top_up.additionalDeposit,
        });
    }
    Ok(DecodedTopUp {
        tx_hash: call.tx_hash,
        sender: call.sender,
        channel_id: *claimed,
        additional_deposit: claimed_additional,
    })
}
