//! The engine facade: [`Engine`] runs the effects the pure `protocol` and `session` modules
//! decide on, against a [`ChannelStore`] and a [`ChainClient`].
//!
//! One paid request goes: challenge check (HMAC, pinned fields, expiry) → cheap checks on the
//! stored record (state, acceptance rule) → signature check against the channel's signer from
//! chain facts, with a cached key → one store update whose closure re-runs the rule on the
//! fresh record and writes the voucher and the charge together → the durability wait → the
//! receipt. Open and top-up broadcast the payer's transaction and re-read the escrow before
//! their update; nothing is broadcast for a credential that fails an offline check.

mod config;
mod error;
mod idempotency;
mod signer_cache;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use alloy_primitives::{Address, B256};
use sluice_voucher::{
    SignedVoucher, SignerKey, Voucher, VoucherDomain, VoucherSignature, verify as verify_recovered,
};

pub use config::{
    DEFAULT_CHAIN_STATE_TTL, DEFAULT_CHALLENGE_TTL, DEFAULT_SIGNER_CACHE_CAPACITY, EngineConfig,
    Route, RoutePrice,
};
pub use error::EngineError;
pub use idempotency::{
    DEFAULT_IDEMPOTENCY_RETENTION, IdempotencyKey, IdempotentOutcome, IdempotentRequest,
    MAX_IDEMPOTENCY_KEY_LEN, RecordedOutcome,
};
use signer_cache::SignerCache;

use crate::chain::{ChainClient, OnChainChannel, needs_refresh};
use crate::protocol::{
    Challenge, OpenPayload, SessionPayload, SessionReceipt, Timestamp, TopUpPayload,
    VoucherPayload, parse_authorization,
};
use crate::session::{
    self, DecodedOpen, EscrowTerms, OpenInput, SessionError, SignatureCheck, TopUpInput,
    Transition, VoucherClaim, VoucherOutcome,
};
use crate::store::{
    Change, ChannelId, ChannelRecord, ChannelStatus, ChannelStore, Current, Pending,
};

/// Which session action a credential carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `open`: a new channel (or a repeated open of a known one).
    Open,
    /// `topUp`: more deposit.
    TopUp,
    /// `voucher`: a higher cumulative amount.
    Voucher,
    /// `close`: the final voucher; the channel stops taking vouchers.
    Close,
}

/// An accepted credential: what it did and the receipt to send with the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The action the credential carried.
    pub action: Action,
    /// The channel.
    pub channel_id: ChannelId,
    /// The id of the challenge the credential answered.
    pub challenge_id: String,
    /// What happened to the credential's voucher (open, voucher, close).
    pub voucher: Option<VoucherOutcome>,
    /// The payer's transaction the engine broadcast (open, topUp).
    pub tx_hash: Option<B256>,
    /// Units charged by this request (0 for [`Engine::authorize`]).
    pub units_charged: u64,
    /// The channel's record after the request (durable).
    pub record: ChannelRecord,
    /// The `Payment-Receipt` for the response.
    pub receipt: SessionReceipt,
}

/// The session engine: challenges, credentials, charging and receipts for one escrow, over a
/// durable [`ChannelStore`] and a [`ChainClient`].
///
/// Methods take `now` as an argument (the caller reads the clock), so the engine itself is
/// deterministic given its store and chain. It is `Send + Sync`; share it in an `Arc`.
pub struct Engine<S, C> {
    config: EngineConfig,
    terms: EscrowTerms,
    domain: VoucherDomain,
    store: S,
    chain: C,
    signers: SignerCache,
    payers: RwLock<HashMap<Address, ChannelId>>,
    latest_opened: RwLock<Option<ChannelId>>,
}

impl<S, C> std::fmt::Debug for Engine<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("realm", &self.config.realm)
            .field("chain_id", &self.config.chain_id)
            .field("escrow", &self.config.escrow)
            .field("cached_signers", &self.signers.len())
            .finish_non_exhaustive()
    }
}

fn unix_ms(now: Timestamp) -> u64 {
    u64::try_from(now.unix_millis()).unwrap_or(0)
}

pub(crate) fn receipt_for(
    record: &ChannelRecord,
    challenge_id: &str,
    now: Timestamp,
    tx_hash: Option<B256>,
) -> Result<SessionReceipt, EngineError> {
    let receipt = SessionReceipt::new(
        now,
        challenge_id,
        record.channel_id,
        record.accepted_cumulative,
        record.spent,
    )?
    .with_units(record.units);
    Ok(match tx_hash {
        Some(hash) => receipt.with_tx_hash(hash),
        None => receipt,
    })
}

/// What a transition followed by a charge decided: the voucher's outcome and, if the charge
/// was refused, why.
#[derive(Debug)]
struct Charged {
    voucher: Option<VoucherOutcome>,
    refused: Option<SessionError>,
}

/// The store change for a transition followed by a charge, both on the fresh record.
///
/// A valid credential is kept even when the charge that came with it is refused (as mppx does:
/// a voucher is money the payer signed, an open is a channel on chain); the refusal is handed
/// back as the update's value.
///
/// With a [`Recording`], a successful charge also records the request's outcome under its
/// idempotency key, in the same change.
fn then_charge(
    transition: Transition,
    channel: &ChannelId,
    amount: u128,
    units: u64,
    now_ms: u64,
    recording: Option<&Recording<'_>>,
) -> Result<Change<Step>, EngineError> {
    let (record, write, refused) =
        match session::charge(Some(&transition.record), channel, amount, units, now_ms) {
            Ok(charged) => (charged.record, transition.write || charged.write, None),
            Err(refused) => (transition.record, transition.write, Some(refused)),
        };
    // Only a charge is recorded: a refused or free request has nothing to protect.
    let aux = match recording {
        Some(recording) if units > 0 && refused.is_none() => {
            let receipt = receipt_for(
                &record,
                recording.challenge_id,
                recording.now,
                recording.tx_hash,
            )?;
            Some((
                recording.store_key.clone(),
                recording.request.entry(&receipt),
            ))
        }
        _ => None,
    };
    let value = Step::Charged(Charged {
        voucher: transition.voucher,
        refused,
    });
    let change = if write {
        Change::write(record, value)
    } else {
        Change::keep(value)
    };
    Ok(match aux {
        Some((key, entry)) => change.with_aux(key, entry),
        None => change,
    })
}

/// What a charging update decided: a charge (or its refusal), or the replay of an outcome
/// recorded under the request's idempotency key.
enum Step {
    Charged(Charged),
    Replayed(RecordedOutcome),
}

/// Records a charged request's outcome under its idempotency key, in the charge's update.
struct Recording<'a> {
    request: &'a IdempotentRequest,
    store_key: Vec<u8>,
    challenge_id: &'a str,
    now: Timestamp,
    tx_hash: Option<B256>,
}

impl<'a> Recording<'a> {
    fn new(
        request: Option<&'a IdempotentRequest>,
        channel: &ChannelId,
        challenge_id: &'a str,
        now: Timestamp,
        tx_hash: Option<B256>,
    ) -> Option<Self> {
        request.map(|request| Self {
            store_key: request.store_key(channel),
            request,
            challenge_id,
            now,
            tx_hash,
        })
    }

    /// The replay of an outcome already recorded under the key, if there is one.
    fn replay(
        &self,
        channel: &ChannelId,
        current: &Current<'_>,
    ) -> Result<Option<Change<Step>>, EngineError> {
        match current.aux {
            Some(entry) => Ok(Some(Change::keep(Step::Replayed(
                self.request.replay(channel, entry)?,
            )))),
            None => Ok(None),
        }
    }
}

/// The authorization of a request without an idempotency key (which never replays).
fn fresh(outcome: IdempotentOutcome) -> Result<Authorized, EngineError> {
    match outcome {
        IdempotentOutcome::Fresh(authorized) => Ok(*authorized),
        IdempotentOutcome::Replayed(_) => Err(EngineError::InvalidConfig {
            field: "idempotency",
            reason: "a replay without an idempotency key".into(),
        }),
    }
}

impl<S: ChannelStore, C: ChainClient> Engine<S, C> {
    /// An engine over `store` and `chain`; fails if the chain client serves another chain or
    /// escrow than `config` names.
    pub fn new(config: EngineConfig, store: S, chain: C) -> Result<Self, EngineError> {
        if chain.chain_id() != config.chain_id {
            return Err(EngineError::InvalidConfig {
                field: "chain_id",
                reason: format!(
                    "configured {}, the chain client serves {}",
                    config.chain_id,
                    chain.chain_id()
                ),
            });
        }
        if chain.escrow() != config.escrow {
            return Err(EngineError::InvalidConfig {
                field: "escrow",
                reason: format!(
                    "configured {}, the chain client reads {}",
                    config.escrow,
                    chain.escrow()
                ),
            });
        }
        Ok(Self {
            terms: EscrowTerms {
                chain_id: config.chain_id,
                escrow: config.escrow,
                payee: config.recipient,
                token: config.currency,
            },
            domain: VoucherDomain::tempo_v1(config.chain_id, config.escrow),
            signers: SignerCache::new(config.signer_cache_capacity),
            payers: RwLock::new(HashMap::new()),
            latest_opened: RwLock::new(None),
            config,
            store,
            chain,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The channel store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The chain client.
    pub fn chain(&self) -> &C {
        &self.chain
    }

    /// The EIP-712 domain vouchers are signed under.
    pub fn voucher_domain(&self) -> &VoucherDomain {
        &self.domain
    }

    /// Builds a route from its price (fails for a zero price or an empty unit type).
    pub fn route(&self, price: RoutePrice) -> Result<Route, EngineError> {
        Route::new(&self.config, price)
    }

    /// A fresh challenge for `route`, expiring `challenge_ttl` after `now`, optionally
    /// suggesting a channel to resume (`methodDetails.channelId`, see
    /// [`channel_for_payer`](Self::channel_for_payer)).
    pub fn challenge(
        &self,
        route: &Route,
        now: Timestamp,
        suggest_channel: Option<ChannelId>,
    ) -> Result<Challenge, EngineError> {
        let expires =
            now.checked_add(self.config.challenge_ttl)
                .ok_or(EngineError::InvalidConfig {
                    field: "challenge_ttl",
                    reason: "now + challenge_ttl is past year 9999".into(),
                })?;
        match suggest_channel {
            None => Ok(route.session.issue(&self.config.secret, expires)?),
            Some(channel) => {
                let mut session = route.session.clone();
                session.request.method_details.channel_id = Some(channel);
                Ok(session.issue(&self.config.secret, expires)?)
            }
        }
    }

    /// Verifies a credential (`Authorization` header value) for `route` and runs its action
    /// without charging: the path for management requests (HEAD, empty POST, topUp, close).
    pub async fn authorize(
        &self,
        route: &Route,
        authorization: &str,
        now: Timestamp,
    ) -> Result<Authorized, EngineError> {
        fresh(
            self.authorize_recorded(route, authorization, 0, now, None, false)
                .await?,
        )
    }

    /// [`authorize`](Self::authorize) for a management request (HEAD, empty POST), where a
    /// `voucher` or `close` credential is also accepted on an **expired** challenge (its HMAC
    /// and the route's pinned fields are still checked): the mppx v1 client reuses the stream's
    /// challenge for mid-stream vouchers and its last challenge for the close. Nothing is
    /// charged here and vouchers are cumulative, so replaying one gains nothing. `open` and
    /// `topUp` still need a live challenge.
    pub async fn authorize_management(
        &self,
        route: &Route,
        authorization: &str,
        now: Timestamp,
    ) -> Result<Authorized, EngineError> {
        fresh(
            self.authorize_recorded(route, authorization, 0, now, None, true)
                .await?,
        )
    }

    /// Verifies a credential and charges `units` of the route's price in the same store update
    /// as the credential's voucher: the path for a paid content request (charge before serve).
    ///
    /// `topUp` and `close` credentials are never charged (they are management actions).
    /// When the charge is refused (the vouchers do not cover it: `InsufficientBalance`), the
    /// error is [`EngineError::ChargeRefused`]: the credential itself was valid and what it
    /// carried is stored all the same (its [`Authorized`] is in the error).
    pub async fn authorize_and_charge(
        &self,
        route: &Route,
        authorization: &str,
        units: u64,
        now: Timestamp,
    ) -> Result<Authorized, EngineError> {
        fresh(
            self.authorize_recorded(route, authorization, units, now, None, false)
                .await?,
        )
    }

    /// [`authorize_and_charge`](Self::authorize_and_charge) with a request-level idempotency
    /// key: the first request's outcome (status and receipt) is recorded in the **same store
    /// update** as its charge; a later request with the same key on the same channel charges
    /// nothing and gets [`IdempotentOutcome::Replayed`] with the recorded outcome. The same key
    /// for a different request (another fingerprint) is refused with
    /// [`EngineError::IdempotencyKeyReused`].
    ///
    /// The credential is verified in full either way. Only charged content requests record an
    /// outcome (`topUp`, `close`, refused and zero-unit requests are not). Recorded outcomes stay
    /// until [`prune_idempotency`](Self::prune_idempotency) removes them after
    /// `request.expires_at_ms`.
    pub async fn authorize_and_charge_idempotent(
        &self,
        route: &Route,
        authorization: &str,
        units: u64,
        now: Timestamp,
        request: &IdempotentRequest,
    ) -> Result<IdempotentOutcome, EngineError> {
        self.authorize_recorded(route, authorization, units, now, Some(request), false)
            .await
    }

    /// Removes recorded idempotency outcomes whose retention ended before `now`; returns how
    /// many were removed. Run it periodically (the example provider runs it hourly).
    pub fn prune_idempotency(&self, now: Timestamp) -> Result<usize, EngineError> {
        Ok(self.store.prune_aux(unix_ms(now))?)
    }

    async fn authorize_recorded(
        &self,
        route: &Route,
        authorization: &str,
        units: u64,
        now: Timestamp,
        idempotent: Option<&IdempotentRequest>,
        management: bool,
    ) -> Result<IdempotentOutcome, EngineError> {
        let credential = parse_authorization(authorization)?;
        let replay_safe = management
            && matches!(
                credential.payload.get("action").and_then(|a| a.as_str()),
                Some("voucher" | "close")
            );
        // A replay-safe credential is judged as of its challenge's expiry at the latest, so
        // every check but the expiry still applies (a missing or malformed `expires` fails).
        let verify_at = match credential.challenge.expires_at() {
            Ok(expires) if replay_safe && expires < now => expires,
            _ => now,
        };
        route
            .session
            .verify(&credential.challenge, &self.config.secret, verify_at)?;
        let credential = credential.into_session()?;
        let challenge_id = credential.challenge.id().to_owned();
        let (action, channel_id, charged, tx_hash, record) = match &credential.payload {
            SessionPayload::Open(open) => {
                let (step, tx, record) = self
                    .open(route, open, units, now, idempotent, &challenge_id)
                    .await?;
                let charged = match step {
                    Step::Charged(charged) => charged,
                    Step::Replayed(outcome) => return Ok(IdempotentOutcome::Replayed(outcome)),
                };
                (
                    Action::Open,
                    open.channel_id,
                    Some(charged),
                    Some(tx),
                    record,
                )
            }
            SessionPayload::Voucher(payload) => {
                let (step, record) = self
                    .voucher(route, payload, units, now, idempotent, &challenge_id)
                    .await?;
                let charged = match step {
                    Step::Charged(charged) => charged,
                    Step::Replayed(outcome) => return Ok(IdempotentOutcome::Replayed(outcome)),
                };
                (
                    Action::Voucher,
                    payload.channel_id,
                    Some(charged),
                    None,
                    record,
                )
            }
            SessionPayload::TopUp(top_up) => {
                let (tx, record) = self.top_up(top_up, now).await?;
                (Action::TopUp, top_up.channel_id, None, Some(tx), record)
            }
            SessionPayload::Close(payload) => {
                let (outcome, record) = self.close(payload, now).await?;
                let charged = Charged {
                    voucher: Some(outcome),
                    refused: None,
                };
                (
                    Action::Close,
                    payload.channel_id,
                    Some(charged),
                    None,
                    record,
                )
            }
        };
        let (voucher, refused) = charged.map_or((None, None), |c| (c.voucher, c.refused));
        let units_charged = match (action, &refused) {
            (Action::Open | Action::Voucher, None) => units,
            _ => 0,
        };
        let receipt = receipt_for(&record, &challenge_id, now, tx_hash)?;
        let authorized = Authorized {
            action,
            channel_id,
            challenge_id,
            voucher,
            tx_hash,
            units_charged,
            record,
            receipt,
        };
        match refused {
            None => Ok(IdempotentOutcome::Fresh(Box::new(authorized))),
            Some(source) => Err(EngineError::ChargeRefused {
                authorized: Box::new(authorized),
                source,
            }),
        }
    }

    /// Charges `units` of `route`'s price on `channel` against its accepted vouchers (charge
    /// before serve; also the per-token charge of a metered stream) and returns the receipt for
    /// `challenge_id`. Zero units change nothing and return the current receipt.
    pub async fn charge(
        &self,
        route: &Route,
        channel: &ChannelId,
        units: u64,
        challenge_id: &str,
        now: Timestamp,
    ) -> Result<SessionReceipt, EngineError> {
        let now_ms = unix_ms(now);
        let amount = route.price.amount;
        let committed = self
            .store
            .update_pending(channel, |current| -> Result<_, EngineError> {
                let t = session::charge(current, channel, amount, units, now_ms)?;
                Ok(if t.write {
                    Change::write(t.record, ())
                } else {
                    Change::keep(())
                })
            })?
            .durable()
            .await?;
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel: *channel })?;
        receipt_for(&record, challenge_id, now, None)
    }

    /// Charges as many units of `route`'s price as the accepted vouchers cover, at most
    /// `max_units` and at least one, in one durable update, and returns how many were charged
    /// with the durable record: the reservation of a metered stream that charges in batches.
    /// When not even one unit is covered it fails as [`charge`](Self::charge) of one unit
    /// does ([`SessionError::InsufficientBalance`]); `max_units = 0` charges nothing.
    pub async fn charge_up_to(
        &self,
        route: &Route,
        channel: &ChannelId,
        max_units: u64,
        now: Timestamp,
    ) -> Result<(u64, ChannelRecord), EngineError> {
        let pending = self.charge_up_to_pending(route, channel, max_units, now)?;
        let committed = pending.durable().await?;
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel: *channel })?;
        Ok((committed.value, record))
    }

    /// [`charge_up_to`](Self::charge_up_to), applied but not yet durable: the metered stream
    /// learns how many units it reserved before it waits, so a stream dropped during the wait
    /// still gives them back.
    pub(crate) fn charge_up_to_pending(
        &self,
        route: &Route,
        channel: &ChannelId,
        max_units: u64,
        now: Timestamp,
    ) -> Result<Pending<u64>, EngineError> {
        let now_ms = unix_ms(now);
        let amount = route.price.amount;
        self.store
            .update_pending(channel, |current| -> Result<_, EngineError> {
                let units = current.map_or(0, |r| session::units_covered(r, amount, max_units));
                // Nothing covered: charge one unit to get the refusal that names the shortfall.
                let asked = units.max(max_units.min(1));
                let t = session::charge(current, channel, amount, asked, now_ms)?;
                Ok(if t.write {
                    Change::write(t.record, units)
                } else {
                    Change::keep(units)
                })
            })
    }

    /// Gives back `units` of `route`'s price charged on `channel` but never served (the unused
    /// part of a metered stream's reservation) in one durable update, and returns the durable
    /// record. `spent` never falls below the escrow's `settled` amount; a release above what
    /// was spent fails with [`SessionError::ReleaseExceedsSpent`] and changes nothing. Works in
    /// any channel status. Zero units change nothing.
    pub async fn release(
        &self,
        route: &Route,
        channel: &ChannelId,
        units: u64,
        now: Timestamp,
    ) -> Result<ChannelRecord, EngineError> {
        let now_ms = unix_ms(now);
        let amount = route.price.amount;
        let committed = self
            .store
            .update_pending(channel, |current| -> Result<_, EngineError> {
                let t = session::release(current, channel, amount, units, now_ms)?;
                Ok(if t.write {
                    Change::release(t.record, ())
                } else {
                    Change::keep(())
                })
            })?
            .durable()
            .await?;
        Ok(committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel: *channel })?)
    }

    /// The channel's current receipt for `challenge_id` (for a retried request).
    pub fn receipt(
        &self,
        channel: &ChannelId,
        challenge_id: &str,
        now: Timestamp,
    ) -> Result<SessionReceipt, EngineError> {
        let record = self
            .store
            .get(channel)?
            .ok_or(SessionError::ChannelNotFound { channel: *channel })?;
        receipt_for(&record, challenge_id, now, None)
    }

    /// The channel's stored record.
    pub fn channel(&self, channel: &ChannelId) -> Result<Option<ChannelRecord>, EngineError> {
        Ok(self.store.get(channel)?)
    }

    /// Re-reads `channel` from the escrow now (whatever the cache TTL says) and merges the
    /// facts into the stored record ([`session::merge_chain_facts`]): a finalized channel
    /// becomes `Closed`, a pending close request is recorded (vouchers are then refused), a
    /// top-up or settlement raises the cached amounts. Returns the durable record, or `None`
    /// for a channel this engine never stored (nothing is created).
    ///
    /// The settlement daemon calls this (through the admin route) when it sees a channel
    /// close or a close request on chain; the engine trusts the escrow, not the caller, so a
    /// call for an unchanged channel changes nothing. Fails with the chain error if the escrow
    /// cannot be read, and with [`SessionError::ChainFactsMismatch`] /
    /// [`SessionError::ChannelNotFound`] if the escrow contradicts the record (nothing written).
    pub async fn refresh_channel(
        &self,
        channel: &ChannelId,
        now: Timestamp,
    ) -> Result<Option<ChannelRecord>, EngineError> {
        if self.store.get(channel)?.is_none() {
            return Ok(None);
        }
        let now_ms = unix_ms(now);
        let (facts, read_at) = self.read_chain(channel, now_ms).await?;
        let committed = self
            .store
            .update_pending(channel, |current| -> Result<_, EngineError> {
                let Some(stored) = current else {
                    return Ok(Change::keep(()));
                };
                let next = session::merge_chain_facts(stored, &facts, read_at)?;
                Ok(if &next == stored {
                    Change::keep(())
                } else {
                    Change::write(next, ())
                })
            })?
            .durable()
            .await?;
        Ok(committed.record)
    }

    /// Waits, without polling, until `channel` has accepted more than `above` (a voucher
    /// arrived, e.g. on another connection while a metered stream is paused) and returns its
    /// record. Fails with a 410-class [`SessionError`] if the channel is unknown or stops taking
    /// vouchers (closing, closed, a close request known) meanwhile, and with [`EngineError::StoreShutDown`] if the store
    /// shuts down. Cancel-safe: drop the future to stop waiting.
    pub async fn wait_for_accepted(
        &self,
        channel: &ChannelId,
        above: u128,
    ) -> Result<ChannelRecord, EngineError> {
        let mut feed = self.store.subscribe_feed();
        loop {
            // Read the watermark before the record: a change landing after the read moves the
            // watermark past it and wakes the wait below.
            let seen = feed.latest();
            let record = self
                .store
                .get(channel)?
                .ok_or(SessionError::ChannelNotFound { channel: *channel })?;
            if record.accepted_cumulative > above {
                return Ok(record);
            }
            // A channel that cannot take vouchers (closing, closed, or a known close request)
            // will not get the one awaited.
            session::require_open(&record, false)?;
            if feed.wait_beyond(seen).await.is_none() {
                return Err(EngineError::StoreShutDown);
            }
        }
    }

    /// The channel this engine last opened for `payer`, if it still takes vouchers: what the
    /// server suggests in `methodDetails.channelId` so a returning payer resumes it.
    ///
    /// The index is in memory (about 70 bytes per payer): opens through this engine fill it,
    /// and [`rebuild_payer_index`](Self::rebuild_payer_index) fills it from the store at start.
    pub fn channel_for_payer(&self, payer: Address) -> Result<Option<ChannelId>, EngineError> {
        let indexed = self
            .payers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&payer)
            .copied();
        let Some(channel) = indexed else {
            return Ok(None);
        };
        let usable = self
            .store
            .get(&channel)?
            .is_some_and(|record| session::require_open(&record, false).is_ok());
        Ok(usable.then_some(channel))
    }

    /// Scans the store and indexes every open channel by payer; returns how many were indexed.
    pub fn rebuild_payer_index(&self) -> Result<usize, EngineError> {
        const PAGE: usize = 1024;
        let mut after = None;
        let mut indexed = 0;
        loop {
            let page = self.store.scan(after.as_ref(), PAGE)?;
            let Some(last) = page.last() else {
                return Ok(indexed);
            };
            after = Some(last.channel_id);
            let mut payers = self.payers.write().unwrap_or_else(PoisonError::into_inner);
            for record in &page {
                if record.status == ChannelStatus::Open && !record.finalized {
                    payers.insert(record.payer, record.channel_id);
                    indexed += 1;
                }
            }
        }
    }

    fn index_payer(&self, payer: Address, channel: ChannelId) {
        self.payers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(payer, channel);
        *self
            .latest_opened
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(channel);
    }

    /// The channel most recently opened through this engine, if it still takes vouchers.
    ///
    /// For single-payer deployments (demos, the mppx interop test): an unauthenticated request
    /// says nothing about its payer, so the only channel a server can suggest to it is this one.
    /// Never suggest it on a server shared by several payers (it names another payer's channel).
    pub fn latest_opened_channel(&self) -> Result<Option<ChannelId>, EngineError> {
        let latest = *self
            .latest_opened
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(channel) = latest else {
            return Ok(None);
        };
        let usable = self
            .store
            .get(&channel)?
            .is_some_and(|record| session::require_open(&record, false).is_ok());
        Ok(usable.then_some(channel))
    }

    /// Checks `signature` over (`channel`, `amount`) against `signer`, with the signer's cached
    /// key when there is one; a first successful check caches it.
    fn verify_voucher(
        &self,
        channel: &ChannelId,
        amount: u128,
        signature: &VoucherSignature,
        signer: Address,
    ) -> Result<(), EngineError> {
        let signed = SignedVoucher {
            voucher: Voucher::new((*channel).into(), amount),
            signature: *signature,
        };
        let refused = |source| EngineError::Signature {
            channel: *channel,
            source,
        };
        if let Some(key) = self.signers.get(&signer) {
            return key.verify(&self.domain, &signed).map_err(refused);
        }
        if self.config.signer_cache_capacity == 0 {
            return verify_recovered(&self.domain, &signed, signer).map_err(refused);
        }
        let key = SignerKey::learn_with(
            &self.domain,
            &signed,
            signer,
            self.config.signer_table_width,
        )
        .map_err(refused)?;
        self.signers.insert(Arc::new(key));
        Ok(())
    }

    fn parse_signature(channel: &ChannelId, bytes: &[u8]) -> Result<VoucherSignature, EngineError> {
        VoucherSignature::from_bytes(bytes).map_err(|source| EngineError::Signature {
            channel: *channel,
            source,
        })
    }

    /// Reads the channel from the escrow, stamped `now_ms`.
    async fn read_chain(
        &self,
        channel: &ChannelId,
        now_ms: u64,
    ) -> Result<(OnChainChannel, u64), EngineError> {
        Ok((self.chain.channel(*channel).await?, now_ms))
    }

    async fn voucher(
        &self,
        route: &Route,
        payload: &VoucherPayload,
        units: u64,
        now: Timestamp,
        idempotent: Option<&IdempotentRequest>,
        challenge_id: &str,
    ) -> Result<(Step, ChannelRecord), EngineError> {
        let channel = payload.channel_id;
        let now_ms = unix_ms(now);
        let signature = Self::parse_signature(&channel, &payload.signature)?;
        let claim = VoucherClaim::new(payload.cumulative_amount, &signature);
        let policy = route.policy();
        let stored = self
            .store
            .get(&channel)?
            .ok_or(SessionError::ChannelNotFound { channel })?;
        let chain = if needs_refresh(&stored, now_ms, self.config.chain_state_ttl) {
            Some(self.read_chain(&channel, now_ms).await?)
        } else {
            None
        };
        let facts = chain.as_ref().map(|(facts, at)| (facts, *at));
        match session::precheck_voucher(Some(&stored), &channel, &claim, &policy, facts)? {
            SignatureCheck::Skip => {}
            SignatureCheck::Verify { signer } => {
                self.verify_voucher(&channel, claim.cumulative_amount, &signature, signer)?;
            }
        }
        let amount = route.price.amount;
        let recording = Recording::new(idempotent, &channel, challenge_id, now, None);
        let aux_key = recording.as_ref().map(|r| r.store_key.as_slice());
        let committed = self
            .store
            .apply(&channel, aux_key, |current| -> Result<_, EngineError> {
                if let Some(recording) = &recording
                    && let Some(replay) = recording.replay(&channel, &current)?
                {
                    return Ok(replay);
                }
                let t =
                    session::on_voucher(current.record, &channel, &claim, &policy, facts, now_ms)?;
                then_charge(t, &channel, amount, units, now_ms, recording.as_ref())
            })?
            .durable()
            .await?;
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel })?;
        Ok((committed.value, record))
    }

    async fn open(
        &self,
        route: &Route,
        payload: &OpenPayload,
        units: u64,
        now: Timestamp,
        idempotent: Option<&IdempotentRequest>,
        challenge_id: &str,
    ) -> Result<(Step, B256, ChannelRecord), EngineError> {
        let channel = payload.channel_id;
        // Everything offline first: a credential that fails here is never broadcast.
        let open: DecodedOpen =
            session::decode_open_tx(&payload.transaction, &self.terms, &channel)?;
        let signature = Self::parse_signature(&channel, &payload.signature)?;
        let claim = VoucherClaim::new(payload.cumulative_amount, &signature);
        self.verify_voucher(
            &channel,
            claim.cumulative_amount,
            &signature,
            open.expected_signer(),
        )?;
        if let Some(stored) = self.store.get(&channel)?
            && (stored.finalized
                || matches!(
                    stored.status,
                    ChannelStatus::Closing | ChannelStatus::Closed
                ))
        {
            return Err(SessionError::ChannelFinalized {
                channel,
                status: stored.status,
                finalized: stored.finalized,
            }
            .into());
        }
        let mined = self.chain.submit_raw(payload.transaction.clone()).await?;
        if !mined.success {
            return Err(EngineError::TxReverted {
                action: "open",
                tx_hash: mined.tx_hash,
            });
        }
        let now_ms = unix_ms(now);
        let (facts, read_at) = self.read_chain(&channel, now_ms).await?;
        let amount = route.price.amount;
        let recording =
            Recording::new(idempotent, &channel, challenge_id, now, Some(mined.tx_hash));
        let aux_key = recording.as_ref().map(|r| r.store_key.as_slice());
        let committed = self
            .store
            .apply(&channel, aux_key, |current| -> Result<_, EngineError> {
                if let Some(recording) = &recording
                    && let Some(replay) = recording.replay(&channel, &current)?
                {
                    return Ok(replay);
                }
                let t = session::on_open(
                    current.record,
                    &OpenInput {
                        open: &open,
                        chain: &facts,
                        chain_read_at_ms: read_at,
                        voucher: claim,
                        now_ms,
                    },
                )?;
                then_charge(t, &channel, amount, units, now_ms, recording.as_ref())
            })?
            .durable()
            .await?;
        self.index_payer(open.payer, channel);
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel })?;
        Ok((committed.value, mined.tx_hash, record))
    }

    async fn top_up(
        &self,
        payload: &TopUpPayload,
        now: Timestamp,
    ) -> Result<(B256, ChannelRecord), EngineError> {
        let channel = payload.channel_id;
        let top_up = session::decode_top_up_tx(
            &payload.transaction,
            &self.terms,
            &channel,
            payload.additional_deposit,
        )?;
        let stored = self
            .store
            .get(&channel)?
            .ok_or(SessionError::ChannelNotFound { channel })?;
        session::require_open(&stored, true)?;
        session::check_top_up_sender(&stored, &top_up)?;
        let deposit_before = stored.deposit;
        let mined = self.chain.submit_raw(payload.transaction.clone()).await?;
        if !mined.success {
            return Err(EngineError::TxReverted {
                action: "topUp",
                tx_hash: mined.tx_hash,
            });
        }
        let now_ms = unix_ms(now);
        let (facts, read_at) = self.read_chain(&channel, now_ms).await?;
        let committed = self
            .store
            .update_pending(&channel, |current| -> Result<_, EngineError> {
                let t = session::on_top_up(
                    current,
                    &TopUpInput {
                        top_up: &top_up,
                        chain: &facts,
                        chain_read_at_ms: read_at,
                        deposit_before,
                        now_ms,
                    },
                )?;
                Ok(if t.write {
                    Change::write(t.record, ())
                } else {
                    Change::keep(())
                })
            })?
            .durable()
            .await?;
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel })?;
        Ok((mined.tx_hash, record))
    }

    async fn close(
        &self,
        payload: &VoucherPayload,
        now: Timestamp,
    ) -> Result<(VoucherOutcome, ChannelRecord), EngineError> {
        let channel = payload.channel_id;
        let now_ms = unix_ms(now);
        let signature = Self::parse_signature(&channel, &payload.signature)?;
        let claim = VoucherClaim::new(payload.cumulative_amount, &signature);
        let stored = self
            .store
            .get(&channel)?
            .ok_or(SessionError::ChannelNotFound { channel })?;
        // A close settles accounts against `settled`: always judge it on fresh chain facts.
        let (facts, read_at) = self.read_chain(&channel, now_ms).await?;
        let chain = Some((&facts, read_at));
        match session::precheck_close(Some(&stored), &channel, &claim, chain)? {
            SignatureCheck::Skip => {}
            SignatureCheck::Verify { signer } => {
                self.verify_voucher(&channel, claim.cumulative_amount, &signature, signer)?;
            }
        }
        let committed = self
            .store
            .update_pending(&channel, |current| -> Result<_, EngineError> {
                let t = session::on_close(current, &channel, &claim, chain, now_ms)?;
                Ok(if t.write {
                    Change::write(t.record, t.voucher)
                } else {
                    Change::keep(t.voucher)
                })
            })?
            .durable()
            .await?;
        let record = committed
            .record
            .ok_or(SessionError::ChannelNotFound { channel })?;
        Ok((committed.value.unwrap_or(VoucherOutcome::Retry), record))
    }
}
