//! Fuzz target `session_actions` (stateful): replays a random sequence of actions (open,
//! voucher, charge, top-up, close, and the escrow's own moves: close request, settlement,
//! finalization, plus clock ticks and store restarts) against the session state machine and a
//! real channel store, driven the way the engine facade drives them: cheap checks, then the
//! signature check, then one store update whose closure runs the pure transition. The chain is
//! a pure model of the escrow (no network).
//!
//! After every step, for every channel, it asserts:
//! - `spent ≤ accepted ≤ deposit` (the store refuses to write anything else, and reads agree);
//! - `accepted` and `spent` never decrease;
//! - the accepted voucher always verifies for (channel, accepted amount) under the channel's
//!   expected signer: the payee never holds more than the signer signed;
//! - nothing is accepted once the channel is closing, closed or finalized, or while a close
//!   request is known; no voucher amount is accepted twice;
//! - a refused action changes nothing (record bytes identical);
//! - a correctly signed voucher that the acceptance rule allows is accepted, and a charge that
//!   the accepted vouchers cover goes through (the machine does not refuse good payments);
//! - when the escrow finalizes, the payee gets at most the accepted voucher and the payer the
//!   rest of the deposit;
//! - a restart of the sled store (drop, reopen) keeps every record exactly.
//!
//! Input: `flags` (bits 0, 4 and 5 all set: sled store, bit 1: delegated signer, bits 2-3:
//! minimum voucher delta 0/1/10/1000), `price` (price per unit − 1), then up to [`MAX_ACTIONS`] actions, each an
//! opcode byte (low nibble: action, bits 4-6: variant, bit 7: channel) and its operands. Missing
//! bytes read as zero.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use alloy_primitives::{Address, B256, U256};
use sluice_engine::chain::OnChainChannel;
use sluice_engine::session::{
    self, DecodedOpen, DecodedTopUp, OpenInput, SessionError, SignatureCheck, TopUpInput,
    Transition, VoucherClaim, VoucherOutcome,
};
use sluice_engine::store::{
    Change, ChannelRecord, ChannelStatus, ChannelStore, Durability, MemoryStore, SledStore,
    StoreError,
};
use sluice_voucher::{
    AcceptancePolicy, SignedVoucher, SignerKey, SigningKey, TableWidth, Voucher, VoucherDomain,
    VoucherError, VoucherSignature, address_of, channel_id_v1, expected_signer, sign_voucher,
    verify,
};

/// The flag bits that select the sled store (three bits, so that random inputs mostly run on
/// the faster memory store).
pub const SLED_FLAGS: u8 = 0b0011_0001;
/// Most actions one input runs.
pub const MAX_ACTIONS: usize = 48;
const CHANNELS: usize = 2;
const CHAIN_ID: u64 = 31_337;
const ESCROW: Address = Address::repeat_byte(0xe7);
const PAYEE: Address = Address::repeat_byte(0x70);
const TOKEN: Address = Address::repeat_byte(0x20);
/// The start of the fuzz clock (unix ms), and the grace period the model's escrow enforces.
const EPOCH_MS: u64 = 1_900_000_000_000;
const GRACE_MS: u64 = 15 * 60 * 1000;

/// The actions, by the low nibble of the opcode (modulo their count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Payer opens (or re-sends the open of) a channel: `deposit: u32`, `amount`.
    Open,
    /// A voucher, optionally with a charge and fresh chain facts: `amount`, `flags`.
    Voucher,
    /// A charge: `units: u8`.
    Charge,
    /// A top-up (variant bit 0: sent by a stranger): `additional: u32`.
    TopUp,
    /// A close voucher: `amount`.
    Close,
    /// The payer calls `requestClose` on the escrow.
    RequestClose,
    /// The settlement daemon settles the accepted voucher on chain.
    Settle,
    /// The escrow finalizes the channel (variant bit 0: payer withdraws after the grace
    /// period; else the daemon closes a closing channel).
    Finalize,
    /// Time passes: `seconds: u8` × 10.
    Tick,
    /// The store is closed and reopened (sled only; the memory store just keeps going).
    Restart,
}

const KINDS: [Kind; 10] = [
    Kind::Open,
    Kind::Voucher,
    Kind::Charge,
    Kind::TopUp,
    Kind::Close,
    Kind::RequestClose,
    Kind::Settle,
    Kind::Finalize,
    Kind::Tick,
    Kind::Restart,
];

struct Keys {
    payer: SigningKey,
    payer_address: Address,
    delegate: SigningKey,
    delegate_address: Address,
    stranger: SigningKey,
    domain: VoucherDomain,
    /// The payer's and the delegate's keys with their tables, as the engine caches them.
    cached: [SignerKey; 2],
}

impl Keys {
    /// The voucher check as the engine runs it: the cached key of a known signer, recovery
    /// otherwise (both accept exactly the same signatures).
    fn verify(&self, signed: &SignedVoucher, signer: Address) -> Result<(), VoucherError> {
        match self.cached.iter().find(|key| key.address() == signer) {
            Some(key) => key.verify(&self.domain, signed),
            None => verify(&self.domain, signed, signer),
        }
    }
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |byte| SigningKey::from_slice(&[byte; 32]).expect("key");
        let (payer, delegate, stranger) = (key(0x42), key(0x43), key(0x44));
        let cached = [&payer, &delegate].map(|k| {
            SignerKey::new(
                address_of(k.verifying_key()),
                *k.verifying_key(),
                TableWidth::default(),
            )
            .expect("own key")
        });
        Keys {
            cached,
            payer_address: address_of(payer.verifying_key()),
            delegate_address: address_of(delegate.verifying_key()),
            payer,
            delegate,
            stranger,
            domain: VoucherDomain::tempo_v1(CHAIN_ID, ESCROW),
        }
    })
}

/// Reads fixed-size fields from the input, yielding zeros past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one input did, so the seed test can check that the seeds reach every path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Vouchers (from open, voucher or close) that raised the accepted amount.
    pub accepted: usize,
    /// Vouchers answered as retries.
    pub retries: usize,
    /// Retries answered without a signature check (byte-identical to the stored voucher).
    pub skipped_ecdsa: usize,
    /// Vouchers refused for their signature.
    pub bad_signatures: usize,
    /// Actions refused by the state machine, by error name.
    pub refusals: HashMap<&'static str, usize>,
    /// Successful charges.
    pub charges: usize,
    /// Successful top-ups.
    pub top_ups: usize,
    /// Channels that became `Closing`.
    pub closes: usize,
    /// Channels the escrow finalized.
    pub finalized: usize,
    /// Store restarts.
    pub restarts: usize,
}

fn error_name(error: &SessionError) -> &'static str {
    match error {
        SessionError::ChannelNotFound { .. } => "ChannelNotFound",
        SessionError::ChannelNotOpen { .. } => "ChannelNotOpen",
        SessionError::ChannelFinalized { .. } => "ChannelFinalized",
        SessionError::ChannelClosing { .. } => "ChannelClosing",
        SessionError::Rejected { .. } => "Rejected",
        SessionError::CloseBelowRequired { .. } => "CloseBelowRequired",
        SessionError::InsufficientBalance { .. } => "InsufficientBalance",
        SessionError::ChargeOverflow { .. } => "ChargeOverflow",
        SessionError::DepositDidNotGrow { .. } => "DepositDidNotGrow",
        SessionError::TopUpNotFromPayer { .. } => "TopUpNotFromPayer",
        SessionError::ChainFactsMismatch { .. } => "ChainFactsMismatch",
        _ => "other",
    }
}

/// The closures' error: a refusal or a store failure (which the fuzz target never expects).
#[derive(Debug)]
enum Failure {
    Refused(SessionError),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<SessionError> for Failure {
    fn from(error: SessionError) -> Self {
        Self::Refused(error)
    }
}

fn change(t: Transition) -> Change<Option<VoucherOutcome>> {
    if t.write {
        Change::write(t.record, t.voucher)
    } else {
        Change::keep(t.voucher)
    }
}

/// The store under test: memory, or sled in a temporary directory that restarts reopen.
enum Store {
    Memory(MemoryStore),
    Sled {
        store: Option<SledStore>,
        dir: tempfile::TempDir,
    },
}

impl Store {
    fn sled() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path().join("db"), Durability::None).expect("sled");
        Self::Sled {
            store: Some(store),
            dir,
        }
    }

    fn get(&self, channel: &B256) -> Option<ChannelRecord> {
        match self {
            Self::Memory(store) => store.get(channel),
            Self::Sled { store, .. } => store.as_ref().expect("open").get(channel),
        }
        .expect("store read")
    }

    fn update<T>(
        &self,
        channel: &B256,
        f: impl Fn(Option<&ChannelRecord>) -> Result<Change<T>, Failure>,
    ) -> Result<T, SessionError> {
        let result = match self {
            Self::Memory(store) => store.update(channel, f),
            Self::Sled { store, .. } => store.as_ref().expect("open").update(channel, f),
        };
        match result {
            Ok(committed) => Ok(committed.value),
            Err(Failure::Refused(error)) => Err(error),
            Err(Failure::Store(error)) => panic!("store failed: {error}"),
        }
    }

    /// Closes and reopens a sled store; returns whether anything was restarted.
    fn restart(&mut self) -> bool {
        match self {
            Self::Memory(_) => false,
            Self::Sled { store, dir } => {
                drop(store.take());
                *store = Some(reopen(&dir.path().join("db")));
                true
            }
        }
    }
}

/// Opens the sled store again after it was dropped (the store waits, boundedly, for sled to
/// release its directory lock).
fn reopen(path: &std::path::Path) -> SledStore {
    SledStore::open(path, Durability::None).unwrap_or_else(|error| panic!("reopen: {error}"))
}

struct World {
    store: Store,
    /// The model escrow: what `getChannel` returns for each channel.
    chain: [OnChainChannel; CHANNELS],
    /// Total paid to the payee and refunded to the payer when the escrow finalized.
    paid_out: [Option<(u128, u128)>; CHANNELS],
    ids: [B256; CHANNELS],
    clock_ms: u64,
    policy: AcceptancePolicy,
    price: u128,
    delegated: bool,
    accepted_amounts: HashSet<(B256, u128)>,
    report: Report,
}

/// Signatures by (channel, amount, signer).
type SignatureCache = HashMap<(B256, u128, Address), [u8; 65]>;

/// Signature variants, by bits 4-6 of the opcode.
const VALID: [u8; 3] = [0, 1, 2];
const STORED: u8 = 3;
const STRANGER: u8 = 4;
const OTHER_CHANNEL: u8 = 5;
const HIGH_S: u8 = 6;

impl World {
    fn signer_key(&self) -> &'static SigningKey {
        if self.delegated {
            &keys().delegate
        } else {
            &keys().payer
        }
    }

    fn signer_address(&self) -> Address {
        if self.delegated {
            keys().delegate_address
        } else {
            Address::ZERO
        }
    }

    fn sign(&mut self, channel: B256, amount: u128, who: u8) -> [u8; 65] {
        let key = match who {
            0 => self.signer_key(),
            _ => &keys().stranger,
        };
        // Signing dominates a run; signatures are deterministic (RFC 6979), so they are cached
        // across runs, in a bounded map.
        static CACHE: OnceLock<Mutex<SignatureCache>> = OnceLock::new();
        let signer = address_of(key.verifying_key());
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 100_000 {
            cache.clear();
        }
        *cache.entry((channel, amount, signer)).or_insert_with(|| {
            sign_voucher(&keys().domain, &Voucher::new(channel.into(), amount), key)
                .signature
                .to_bytes65()
        })
    }

    /// The signature bytes a credential carries in `variant`, and whether they are the
    /// expected signer's for exactly (channel, amount).
    fn signature_bytes(
        &mut self,
        k: usize,
        amount: u128,
        variant: u8,
        input: &mut Reader<'_>,
    ) -> (Vec<u8>, bool) {
        let channel = self.ids[k];
        match variant {
            v if VALID.contains(&v) => (self.sign(channel, amount, 0).to_vec(), true),
            STORED => {
                let stored = self.store.get(&channel).map(|r| r.accepted_signature);
                let bytes = stored.unwrap_or([0; 65]);
                let genuine = self
                    .store
                    .get(&channel)
                    .is_some_and(|r| r.has_voucher() && r.accepted_cumulative == amount);
                (bytes.to_vec(), genuine)
            }
            STRANGER => (self.sign(channel, amount, 1).to_vec(), false),
            OTHER_CHANNEL => (self.sign(self.ids[1 - k], amount, 0).to_vec(), false),
            HIGH_S => {
                let mut bytes = self.sign(channel, amount, 0);
                let n = U256::from_be_bytes(
                    alloy_primitives::hex::decode_to_array::<_, 32>(
                        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
                    )
                    .expect("n"),
                );
                let s = U256::from_be_slice(&bytes[32..64]);
                bytes[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
                bytes[64] = 55 - bytes[64];
                (bytes.to_vec(), false)
            }
            _ => {
                let len = usize::from(input.byte() % 70);
                ((0..len).map(|_| input.byte()).collect(), false)
            }
        }
    }

    fn pick_amount(&self, k: usize, input: &mut Reader<'_>) -> u128 {
        let selector = input.byte();
        let raw = u128::from(input.u16());
        let record = self
            .store
            .get(&self.ids[k])
            .unwrap_or(ChannelRecord::new(self.ids[k]));
        let accepted = record.accepted_cumulative;
        let deposit = record.deposit.max(self.chain[k].deposit);
        match selector % 8 {
            0 | 1 => accepted.saturating_add(raw + 1),
            2 => accepted,
            3 => accepted.saturating_sub(raw),
            4 => deposit,
            5 => deposit.saturating_add(1),
            6 => u128::MAX.saturating_sub(raw),
            _ => record.spent.max(record.settled).saturating_add(raw % 4),
        }
    }

    fn refused(&mut self, error: &SessionError) {
        *self.report.refusals.entry(error_name(error)).or_default() += 1;
    }

    fn note(&mut self, k: usize, amount: u128, outcome: Option<VoucherOutcome>) {
        match outcome {
            Some(VoucherOutcome::Accepted { .. }) => {
                assert!(
                    self.accepted_amounts.insert((self.ids[k], amount)),
                    "voucher {amount} accepted twice"
                );
                self.report.accepted += 1;
            }
            Some(VoucherOutcome::Retry) => self.report.retries += 1,
            None => {}
        }
    }

    /// Parses and checks a voucher's signature against `signer` (recovery path), as the
    /// facade does before any store update. `None` when it is refused.
    fn check_signature(
        &mut self,
        k: usize,
        amount: u128,
        bytes: &[u8],
        signer: Address,
        genuine: bool,
    ) -> Option<VoucherClaim> {
        let Ok(signature) = VoucherSignature::from_bytes(bytes) else {
            assert!(!genuine, "a genuine signature must parse");
            self.report.bad_signatures += 1;
            return None;
        };
        let claim = VoucherClaim::new(amount, &signature);
        let signed = SignedVoucher {
            voucher: Voucher::new(self.ids[k].into(), amount),
            signature,
        };
        match keys().verify(&signed, signer) {
            Ok(()) => {
                assert!(genuine, "only the expected signer's voucher verifies");
                Some(claim)
            }
            Err(_) => {
                assert!(!genuine, "the expected signer's voucher must verify");
                self.report.bad_signatures += 1;
                None
            }
        }
    }

    fn open(&mut self, k: usize, variant: u8, input: &mut Reader<'_>) {
        let deposit = u128::from(input.u32()) + 1;
        let amount = self.pick_amount(k, input);
        let (bytes, genuine) = self.signature_bytes(k, amount, variant, input);
        let open = DecodedOpen {
            tx_hash: B256::repeat_byte(k as u8),
            payer: keys().payer_address,
            payee: PAYEE,
            token: TOKEN,
            deposit,
            salt: B256::repeat_byte(k as u8 + 1),
            authorized_signer: self.signer_address(),
            channel_id: self.ids[k],
        };
        // Offline first: the initial voucher against the signer the transaction names.
        let Some(claim) = self.check_signature(k, amount, &bytes, open.expected_signer(), genuine)
        else {
            return;
        };
        // The escrow: a first open creates the channel; a repeated one changes nothing.
        let chain = &mut self.chain[k];
        if !chain.exists() {
            *chain = OnChainChannel {
                finalized: false,
                close_requested_at: 0,
                payer: open.payer,
                payee: PAYEE,
                token: TOKEN,
                authorized_signer: open.authorized_signer,
                deposit,
                settled: 0,
            };
        }
        let facts = *chain;
        let now = self.clock_ms;
        let result = self.store.update(&self.ids[k], |current| {
            let input = OpenInput {
                open: &open,
                chain: &facts,
                chain_read_at_ms: now,
                voucher: claim,
                now_ms: now,
            };
            Ok(change(session::on_open(current, &input)?))
        });
        match result {
            Ok(outcome) => self.note(k, amount, outcome),
            Err(error) => self.refused(&error),
        }
    }

    fn voucher(&mut self, k: usize, variant: u8, input: &mut Reader<'_>) {
        let amount = self.pick_amount(k, input);
        let flags = input.byte();
        let (bytes, genuine) = self.signature_bytes(k, amount, variant, input);
        let channel = self.ids[k];
        let stored = self.store.get(&channel);
        let facts = self.chain[k];
        let now = self.clock_ms;
        // Fresh chain facts when the cached ones are stale (or when the input asks).
        let refresh = flags & 1 != 0
            || stored.as_ref().is_some_and(|r| {
                sluice_engine::chain::needs_refresh(r, now, std::time::Duration::from_secs(5))
            });
        let chain = refresh.then_some((&facts, now));
        let units = u64::from(flags >> 1);
        let policy = self.policy;
        let signature = VoucherSignature::from_bytes(&bytes);
        // The facade parses first; an unparsable signature never reaches the state machine.
        let Ok(parsed) = signature else {
            assert!(!genuine);
            self.report.bad_signatures += 1;
            return;
        };
        let claim = VoucherClaim::new(amount, &parsed);
        match session::precheck_voucher(stored.as_ref(), &channel, &claim, &policy, chain) {
            Err(error) => return self.refused(&error),
            Ok(SignatureCheck::Skip) => {
                assert!(
                    genuine,
                    "only the stored voucher's bytes skip the signature check"
                );
                self.report.skipped_ecdsa += 1;
            }
            Ok(SignatureCheck::Verify { signer }) => {
                if self
                    .check_signature(k, amount, &bytes, signer, genuine)
                    .is_none()
                {
                    return;
                }
            }
        }
        let price = self.price;
        let result = self.store.update(&channel, |current| {
            let t = session::on_voucher(current, &channel, &claim, &policy, chain, now)?;
            // Charge in the same update; a refused charge keeps the voucher.
            Ok(
                match session::charge(Some(&t.record), &channel, price, units, now) {
                    Ok(charged) if t.write || charged.write => {
                        Change::write(charged.record, (t.voucher, true))
                    }
                    Ok(_) => Change::keep((t.voucher, true)),
                    Err(_) if t.write => Change::write(t.record, (t.voucher, false)),
                    Err(_) => Change::keep((t.voucher, false)),
                },
            )
        });
        match result {
            Ok((outcome, charged)) => {
                self.note(k, amount, outcome);
                if charged && units > 0 {
                    self.report.charges += 1;
                }
            }
            // Single-threaded, nothing moved between the precheck and the update: the
            // transition must agree with the precheck.
            Err(error) => panic!("the precheck passed but the transition refused: {error}"),
        }
    }

    fn charge(&mut self, k: usize, input: &mut Reader<'_>) {
        let units = u64::from(input.byte());
        let channel = self.ids[k];
        let price = self.price;
        let now = self.clock_ms;
        let before = self.store.get(&channel);
        let result = self.store.update(&channel, |current| {
            let t = session::charge(current, &channel, price, units, now)?;
            Ok(change(t))
        });
        match result {
            Ok(_) => self.report.charges += 1,
            Err(error) => {
                // A charge the accepted vouchers cover on an open channel must go through.
                if let Some(record) = before
                    && record.status == ChannelStatus::Open
                    && !record.finalized
                {
                    let cost = price.checked_mul(u128::from(units));
                    assert!(
                        cost.is_none_or(|cost| cost > record.available()),
                        "a covered charge was refused: {error}"
                    );
                }
                self.refused(&error);
            }
        }
    }

    fn top_up(&mut self, k: usize, variant: u8, input: &mut Reader<'_>) {
        let additional = u128::from(input.u32()) + 1;
        let channel = self.ids[k];
        let sender = if variant & 1 == 0 {
            keys().payer_address
        } else {
            address_of(keys().stranger.verifying_key())
        };
        let top_up = DecodedTopUp {
            tx_hash: B256::repeat_byte(0x70 + k as u8),
            sender,
            channel_id: channel,
            additional_deposit: additional,
        };
        // Offline checks on the stored record, as the facade runs them before broadcasting.
        let Some(stored) = self.store.get(&channel) else {
            return self.refused(&SessionError::ChannelNotFound { channel });
        };
        if let Err(error) = session::require_open(&stored, true)
            .and_then(|()| session::check_top_up_sender(&stored, &top_up))
        {
            return self.refused(&error);
        }
        // The escrow: a finalized channel or an overflowing deposit reverts (nothing stored).
        let chain = &mut self.chain[k];
        let Some(deposit) = chain.deposit.checked_add(additional) else {
            return;
        };
        if chain.finalized || !chain.exists() {
            return;
        }
        chain.deposit = deposit;
        chain.close_requested_at = 0;
        let facts = *chain;
        let now = self.clock_ms;
        let result = self.store.update(&channel, |current| {
            let input = TopUpInput {
                top_up: &top_up,
                chain: &facts,
                chain_read_at_ms: now,
                deposit_before: stored.deposit,
                now_ms: now,
            };
            Ok(change(session::on_top_up(current, &input)?))
        });
        match result {
            Ok(_) => self.report.top_ups += 1,
            Err(error) => self.refused(&error),
        }
    }

    fn close(&mut self, k: usize, variant: u8, input: &mut Reader<'_>) {
        let amount = self.pick_amount(k, input);
        let (bytes, genuine) = self.signature_bytes(k, amount, variant, input);
        let channel = self.ids[k];
        let Ok(parsed) = VoucherSignature::from_bytes(&bytes) else {
            self.report.bad_signatures += 1;
            return;
        };
        let claim = VoucherClaim::new(amount, &parsed);
        let stored = self.store.get(&channel);
        let facts = self.chain[k];
        let now = self.clock_ms;
        let chain = Some((&facts, now));
        match session::precheck_close(stored.as_ref(), &channel, &claim, chain) {
            Err(error) => return self.refused(&error),
            Ok(SignatureCheck::Skip) => self.report.skipped_ecdsa += 1,
            Ok(SignatureCheck::Verify { signer }) => {
                if self
                    .check_signature(k, amount, &bytes, signer, genuine)
                    .is_none()
                {
                    return;
                }
            }
        }
        let was_open = stored.is_some_and(|r| r.status == ChannelStatus::Open);
        let result = self.store.update(&channel, |current| {
            Ok(change(session::on_close(
                current, &channel, &claim, chain, now,
            )?))
        });
        match result {
            Ok(outcome) => {
                self.note(k, amount, outcome);
                if was_open {
                    self.report.closes += 1;
                }
            }
            Err(error) => panic!("the precheck passed but the close was refused: {error}"),
        }
    }

    fn request_close(&mut self, k: usize) {
        let chain = &mut self.chain[k];
        if chain.payer != Address::ZERO && !chain.finalized && chain.close_requested_at == 0 {
            chain.close_requested_at = self.clock_ms / 1000;
        }
    }

    fn settle(&mut self, k: usize) {
        let Some(record) = self.store.get(&self.ids[k]) else {
            return;
        };
        let chain = &mut self.chain[k];
        let amount = record.accepted_cumulative;
        if chain.payer != Address::ZERO
            && !chain.finalized
            && amount > chain.settled
            && amount <= chain.deposit
        {
            chain.settled = amount;
        }
    }

    fn finalize(&mut self, k: usize, variant: u8) {
        let record = self.store.get(&self.ids[k]);
        let chain = &mut self.chain[k];
        if chain.payer == Address::ZERO || chain.finalized {
            return;
        }
        let withdraw = variant & 1 == 1;
        let paid = if withdraw {
            let requested_ms = chain.close_requested_at * 1000;
            if chain.close_requested_at == 0 || self.clock_ms < requested_ms + GRACE_MS {
                return;
            }
            chain.settled
        } else {
            // The daemon closes a channel the engine marked closing, with its accepted voucher.
            let Some(record) = record.filter(|r| r.status == ChannelStatus::Closing) else {
                return;
            };
            chain.settled.max(record.accepted_cumulative)
        };
        let deposit = chain.deposit;
        assert!(
            paid <= deposit,
            "the escrow never pays more than the deposit"
        );
        if let Some(record) = record {
            assert!(
                paid <= record.accepted_cumulative,
                "the payee gets at most the accepted (signed) voucher"
            );
            if !withdraw {
                assert!(
                    paid >= record.spent,
                    "a cooperative close pays what was spent"
                );
            }
        }
        self.paid_out[k] = Some((paid, deposit - paid));
        *chain = OnChainChannel {
            finalized: true,
            ..OnChainChannel::default()
        };
        self.report.finalized += 1;
    }

    fn restart(&mut self) {
        let before: Vec<_> = self.ids.iter().map(|id| self.store.get(id)).collect();
        if self.store.restart() {
            let after: Vec<_> = self.ids.iter().map(|id| self.store.get(id)).collect();
            assert_eq!(before, after, "a restart keeps every record");
            self.report.restarts += 1;
        }
    }

    /// The invariants between two snapshots of every channel.
    fn check(&self, before: &[Option<ChannelRecord>], kind: Kind) {
        for (k, id) in self.ids.iter().enumerate() {
            let after = self.store.get(id);
            let Some(record) = after else {
                assert!(before[k].is_none(), "a record vanished");
                continue;
            };
            record.check_invariants().expect("money invariants");
            if record.has_voucher() {
                let signed = SignedVoucher {
                    voucher: Voucher::new((*id).into(), record.accepted_cumulative),
                    signature: VoucherSignature::from_bytes(&record.accepted_signature)
                        .expect("stored signatures parse"),
                };
                let signer = expected_signer(record.payer, record.authorized_signer);
                keys()
                    .verify(&signed, signer)
                    .expect("the accepted voucher is signed");
            }
            if let Some(old) = &before[k] {
                assert!(record.accepted_cumulative >= old.accepted_cumulative);
                assert!(record.spent >= old.spent);
                let closed = old.finalized
                    || matches!(old.status, ChannelStatus::Closing | ChannelStatus::Closed);
                if closed {
                    assert_eq!(
                        record.accepted_cumulative, old.accepted_cumulative,
                        "{kind:?} raised the accepted amount of a closing channel"
                    );
                    assert_eq!(
                        record.spent, old.spent,
                        "{kind:?} charged a closing channel"
                    );
                }
                if kind == Kind::Voucher && record.accepted_cumulative > old.accepted_cumulative {
                    assert!(
                        record.close_requested_at == 0
                            && !record.finalized
                            && record.status == ChannelStatus::Open,
                        "a voucher was accepted while a close was known"
                    );
                }
            }
            if let Some((to_payee, _)) = self.paid_out[k] {
                assert!(to_payee <= record.accepted_cumulative);
            }
        }
    }
}

/// Runs one input. Panics only when an invariant is broken.
pub fn do_test(data: &[u8]) {
    let _ = run(data);
}

/// [`do_test`], reporting what the input did.
pub fn run(data: &[u8]) -> Report {
    let mut input = Reader(data);
    let flags = input.byte();
    let price = u128::from(input.byte()) + 1;
    let delegated = flags & 2 != 0;
    let signer = if delegated {
        keys().delegate_address
    } else {
        Address::ZERO
    };
    let ids = [0u8, 1].map(|k| {
        channel_id_v1(
            keys().payer_address,
            PAYEE,
            TOKEN,
            B256::repeat_byte(k + 1),
            signer,
            ESCROW,
            CHAIN_ID,
        )
        .into()
    });
    let mut world = World {
        store: if flags & SLED_FLAGS == SLED_FLAGS {
            Store::sled()
        } else {
            Store::Memory(MemoryStore::new())
        },
        chain: [OnChainChannel::default(); CHANNELS],
        paid_out: [None; CHANNELS],
        ids,
        clock_ms: EPOCH_MS,
        policy: AcceptancePolicy {
            min_voucher_delta: [0, 1, 10, 1000][usize::from((flags >> 2) & 3)],
        },
        price,
        delegated,
        accepted_amounts: HashSet::new(),
        report: Report::default(),
    };
    for _ in 0..MAX_ACTIONS {
        if input.is_empty() {
            break;
        }
        let opcode = input.byte();
        let kind = KINDS[usize::from(opcode & 0x0f) % KINDS.len()];
        let variant = (opcode >> 4) & 7;
        let k = usize::from(opcode >> 7);
        let before: Vec<_> = world.ids.iter().map(|id| world.store.get(id)).collect();
        match kind {
            Kind::Open => world.open(k, variant, &mut input),
            Kind::Voucher => world.voucher(k, variant, &mut input),
            Kind::Charge => world.charge(k, &mut input),
            Kind::TopUp => world.top_up(k, variant, &mut input),
            Kind::Close => world.close(k, variant, &mut input),
            Kind::RequestClose => world.request_close(k),
            Kind::Settle => world.settle(k),
            Kind::Finalize => world.finalize(k, variant),
            Kind::Tick => world.clock_ms += u64::from(input.byte()) * 10_000,
            Kind::Restart => world.restart(),
        }
        world.check(&before, kind);
    }
    world.report
}

/// Builds inputs for [`do_test`] (the seeds, and tests that want a particular sequence).
#[derive(Debug, Clone)]
pub struct Script(Vec<u8>);

impl Script {
    /// A script with `flags` (see the module docs) and a price per unit.
    pub fn new(flags: u8, price: u8) -> Self {
        Self(vec![flags, price.saturating_sub(1)])
    }

    fn op(mut self, kind: Kind, variant: u8, channel: usize, operands: &[u8]) -> Self {
        let nibble = KINDS.iter().position(|k| *k == kind).expect("kind") as u8;
        self.0
            .push(nibble | ((variant & 7) << 4) | (u8::from(channel == 1) << 7));
        self.0.extend_from_slice(operands);
        self
    }

    fn amount(selector: u8, raw: u16) -> [u8; 3] {
        let [hi, lo] = raw.to_be_bytes();
        [selector, hi, lo]
    }

    /// Open `channel` with `deposit` and an initial voucher chosen by `selector`/`raw`
    /// (selector 2 = the accepted amount, 0 = accepted + raw + 1, ...), signed per `variant`.
    pub fn open(self, channel: usize, deposit: u32, selector: u8, raw: u16, variant: u8) -> Self {
        let mut operands = deposit.to_be_bytes().to_vec();
        operands.extend(Self::amount(selector, raw));
        self.op(Kind::Open, variant, channel, &operands)
    }

    /// A voucher; `flags` bit 0 passes fresh chain facts, bits 1-7 are units to charge.
    pub fn voucher(self, channel: usize, selector: u8, raw: u16, variant: u8, flags: u8) -> Self {
        let mut operands = Self::amount(selector, raw).to_vec();
        operands.push(flags);
        self.op(Kind::Voucher, variant, channel, &operands)
    }

    /// Charge `units`.
    pub fn charge(self, channel: usize, units: u8) -> Self {
        self.op(Kind::Charge, 0, channel, &[units])
    }

    /// Top up by `additional`; `stranger` sends it from another account.
    pub fn top_up(self, channel: usize, additional: u32, stranger: bool) -> Self {
        self.op(
            Kind::TopUp,
            u8::from(stranger),
            channel,
            &additional.to_be_bytes(),
        )
    }

    /// A close voucher.
    pub fn close(self, channel: usize, selector: u8, raw: u16, variant: u8) -> Self {
        self.op(Kind::Close, variant, channel, &Self::amount(selector, raw))
    }

    /// The payer requests a close on chain.
    pub fn request_close(self, channel: usize) -> Self {
        self.op(Kind::RequestClose, 0, channel, &[])
    }

    /// The daemon settles the accepted voucher.
    pub fn settle(self, channel: usize) -> Self {
        self.op(Kind::Settle, 0, channel, &[])
    }

    /// The escrow finalizes: by the daemon's close, or (`withdraw`) the payer's withdrawal.
    pub fn finalize(self, channel: usize, withdraw: bool) -> Self {
        self.op(Kind::Finalize, u8::from(withdraw), channel, &[])
    }

    /// `seconds × 10` pass.
    pub fn tick(self, tens_of_seconds: u8) -> Self {
        self.op(Kind::Tick, 0, 0, &[tens_of_seconds])
    }

    /// The store restarts.
    pub fn restart(self) -> Self {
        self.op(Kind::Restart, 0, 0, &[])
    }

    /// Raw bytes appended as is.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The input bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The committed seed corpus: sequences that reach every action and refusal.
pub fn seeds() -> Vec<Vec<u8>> {
    const SLED: u8 = SLED_FLAGS;
    const DELEGATED: u8 = 2;
    const DELTA_10: u8 = 2 << 2;
    let lifecycle = |flags| {
        Script::new(flags, 25)
            .open(0, 1_000, 0, 99, 0) // voucher 100
            .voucher(0, 0, 49, 0, 2) // 150, charge 1
            .voucher(0, 2, 0, STORED, 2) // byte-identical retry, charge 1
            .charge(0, 2)
            .charge(0, 200) // insufficient
            .top_up(0, 500, false)
            .voucher(0, 4, 0, 1, 1) // the whole deposit, fresh facts
            .settle(0)
            .close(0, 2, 0, STORED)
            .voucher(0, 0, 5, 0, 0) // refused: closing
            .charge(0, 1) // refused: closing
            .finalize(0, false)
            .restart()
            .voucher(0, 0, 5, 0, 1)
            .into_bytes()
    };
    let mut seeds = vec![
        lifecycle(0),
        lifecycle(SLED),
        lifecycle(DELEGATED),
        lifecycle(SLED | DELEGATED | DELTA_10),
        // Bad signatures of every kind, and amounts at the edges.
        Script::new(0, 1)
            .open(1, 5_000, 2, 0, 0) // zero open voucher
            .voucher(1, 0, 9, STRANGER, 0)
            .voucher(1, 0, 9, OTHER_CHANNEL, 0)
            .voucher(1, 0, 9, HIGH_S, 0)
            .voucher(1, 0, 9, 7, 0)
            .raw(&[65])
            .raw(&[0x11; 65])
            .voucher(1, 0, 9, STORED, 0)
            .voucher(1, 5, 0, 0, 0) // deposit + 1
            .voucher(1, 6, 0, 0, 0) // near u128::MAX
            .voucher(1, 0, 9, 0, 0) // 10
            .voucher(1, 3, 5, 0, 0) // below
            .voucher(1, 4, 0, 0, 0x0f) // the whole deposit, 7 units
            .into_bytes(),
        // A close request on chain: vouchers refused once seen, charges go on, a top-up cancels.
        Script::new(SLED, 2)
            .open(0, 2_000, 0, 199, 0)
            .request_close(0)
            .voucher(0, 0, 10, 0, 0) // cached facts: accepted
            .tick(1)
            .voucher(0, 0, 10, 0, 0) // stale: refreshed, refused
            .charge(0, 3)
            .top_up(0, 100, true) // a stranger's top-up
            .top_up(0, 100, false)
            .voucher(0, 0, 10, 0, 1)
            .request_close(0)
            .tick(255)
            .tick(255)
            .tick(255)
            .tick(255)
            .finalize(0, true) // the payer withdraws after the grace period
            .open(0, 2_000, 0, 10, 0) // re-open of a finalized channel
            .restart()
            .into_bytes(),
        // Two channels, closes below what was spent, unknown channels.
        Script::new(DELTA_10, 3)
            .voucher(1, 0, 1, 0, 0) // unknown channel
            .charge(1, 1)
            .top_up(1, 1, false)
            .close(1, 0, 1, 0)
            .open(0, 300, 0, 99, 0)
            .open(1, 300, 0, 2, 0)
            .voucher(1, 0, 5, 0, 0) // delta too small
            .charge(0, 10)
            .close(0, 3, 80, 0) // below spent
            .close(0, 7, 0, 0) // at spent
            .close(0, 0, 0, 0) // above accepted while closing
            .finalize(0, false)
            .settle(1)
            .into_bytes(),
        Vec::new(),
        vec![0xff; 200],
    ];
    seeds.push((0..=255u8).collect());
    seeds
}
