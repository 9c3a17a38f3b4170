//! The `session` state machine: channel states (opening, open, closing, closed), the four
//! credential actions (open, voucher, topUp, close) and charging, as pure functions.
//!
//! Nothing here does I/O, reads a clock or awaits: time (`now_ms`) and the escrow's view of a
//! channel ([`OnChainChannel`](crate::chain::OnChainChannel)) come in as arguments, and each
//! transition returns the channel's next [`ChannelRecord`](crate::store::ChannelRecord) or a
//! typed [`SessionError`]. The engine facade runs the effects (broadcast, chain reads, store
//! updates) and calls these functions inside its store-update closures, so they are
//! deterministic and safe to re-run; a refusal never changes the record.
//!
//! | Piece | Functions |
//! |---|---|
//! | transactions a credential carries | [`decode_open_tx`], [`decode_top_up_tx`], [`check_top_up_sender`] |
//! | chain-facts cache | [`merge_chain_facts`] (when to re-read: [`crate::chain::needs_refresh`]) |
//! | cheap checks before ECDSA | [`precheck_voucher`], [`precheck_close`] → [`SignatureCheck`] |
//! | transitions | [`on_open`], [`on_voucher`], [`charge`] ([`units_covered`]), [`release`], [`on_top_up`], [`on_close`] → [`Transition`] |
//!
//! Statuses: the engine writes `Open` when an open succeeds and `Closing` when it takes a close
//! voucher; a chain read that reports the channel finalized moves it to `Closed`. `Opening` is
//! part of the record format but never written by the engine (a channel is stored only once
//! the escrow confirms it); a record found in that state takes no vouchers until an open
//! succeeds.

mod error;
mod facts;
mod machine;
mod tx;

#[cfg(test)]
mod tests;

pub use error::{ChainField, SessionError};
pub use facts::merge_chain_facts;
pub use machine::{
    OpenInput, SignatureCheck, TopUpInput, Transition, VoucherClaim, VoucherOutcome, charge,
    check_top_up_sender, on_close, on_open, on_top_up, on_voucher, precheck_close,
    precheck_voucher, release, require_open, units_covered,
};
pub use tx::{DecodedOpen, DecodedTopUp, EscrowTerms, decode_open_tx, decode_top_up_tx};
