//! The engine's configuration and per-route pricing.

use std::collections::BTreeMap;
use std::time::Duration;

use alloy_primitives::Address;
use sluice_voucher::{AcceptancePolicy, TableWidth};

use super::EngineError;
use crate::protocol::{
    ChallengeSecret, HexAddress, SessionMethodDetails, SessionProtocol, SessionRequest,
    SessionRoute,
};

/// How long an issued challenge may be answered: 5 minutes, mppx's default.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// How long cached chain facts are trusted before a voucher re-reads them: 5 s, mppx's
/// `channelStateTtl` (the chain module's default).
pub const DEFAULT_CHAIN_STATE_TTL: Duration = crate::chain::DEFAULT_CHAIN_FACTS_TTL;
/// How many signer keys the engine keeps ready (each holds a ~45 KB table at the default
/// width; 1,024 keys are about 46 MB).
pub const DEFAULT_SIGNER_CACHE_CAPACITY: usize = 1024;

/// What one engine serves: one realm, one chain, one escrow, one payee and one token.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The protection space written into challenges (mppx: the API's host name).
    pub realm: String,
    /// The secret that binds challenge ids (HMAC-SHA256).
    pub secret: ChallengeSecret,
    /// The chain the escrow lives on.
    pub chain_id: u64,
    /// The escrow contract.
    pub escrow: Address,
    /// The payee every channel must pay (`recipient`).
    pub recipient: Address,
    /// The token every channel must hold (`currency`).
    pub currency: Address,
    /// Lifetime of issued challenges.
    pub challenge_ttl: Duration,
    /// Age after which a voucher re-reads its channel's chain facts.
    pub chain_state_ttl: Duration,
    /// At most this many verified signer keys are cached (0 disables the cache: every check
    /// recovers the signer).
    pub signer_cache_capacity: usize,
    /// Table size of cached signer keys (memory against check speed).
    pub signer_table_width: TableWidth,
}

impl EngineConfig {
    /// A configuration with the default TTLs and cache size.
    pub fn new(
        realm: impl Into<String>,
        secret: ChallengeSecret,
        chain_id: u64,
        escrow: Address,
        recipient: Address,
        currency: Address,
    ) -> Self {
        Self {
            realm: realm.into(),
            secret,
            chain_id,
            escrow,
            recipient,
            currency,
            challenge_ttl: DEFAULT_CHALLENGE_TTL,
            chain_state_ttl: DEFAULT_CHAIN_STATE_TTL,
            signer_cache_capacity: DEFAULT_SIGNER_CACHE_CAPACITY,
            signer_table_width: TableWidth::default(),
        }
    }
}

/// A paid route's price and terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePrice {
    /// Price of one unit, in token base units (`amount`; greater than zero).
    pub amount: u128,
    /// What a unit is, e.g. `request` or `llm_token` (`unitType`).
    pub unit_type: String,
    /// Display text for the challenge and the request (`description`).
    pub description: Option<String>,
    /// Deposit suggested to new payers (`suggestedDeposit`).
    pub suggested_deposit: Option<u128>,
    /// Smallest increase of a new voucher (`methodDetails.minVoucherDelta`).
    pub min_voucher_delta: Option<u128>,
    /// A route identifier carried in `opaque` (`{"routeId": ...}`). Pinned on verification, so
    /// a challenge issued for one route is refused by another even at the same price.
    pub route_id: Option<String>,
}

impl RoutePrice {
    /// A price of `amount` per `unit_type`, with no other terms.
    pub fn new(amount: u128, unit_type: impl Into<String>) -> Self {
        Self {
            amount,
            unit_type: unit_type.into(),
            description: None,
            suggested_deposit: None,
            min_voucher_delta: None,
            route_id: None,
        }
    }
}

/// A route the engine can issue challenges for and verify credentials against; built once by
/// [`Engine::route`](super::Engine::route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub(crate) session: SessionRoute,
    pub(crate) price: RoutePrice,
}

impl Route {
    pub(crate) fn new(config: &EngineConfig, price: RoutePrice) -> Result<Self, EngineError> {
        if price.amount == 0 {
            return Err(EngineError::InvalidConfig {
                field: "amount",
                reason: "the price per unit must be greater than zero".into(),
            });
        }
        if price.unit_type.is_empty() {
            return Err(EngineError::InvalidConfig {
                field: "unitType",
                reason: "must not be empty".into(),
            });
        }
        let request = SessionRequest {
            amount: price.amount,
            currency: HexAddress::from_address(config.currency),
            recipient: HexAddress::from_address(config.recipient),
            unit_type: price.unit_type.clone(),
            suggested_deposit: price.suggested_deposit,
            description: price.description.clone(),
            external_id: None,
            method_details: SessionMethodDetails {
                escrow_contract: HexAddress::from_address(config.escrow),
                chain_id: config.chain_id,
                channel_id: None,
                min_voucher_delta: price.min_voucher_delta,
                session_protocol: Some(SessionProtocol::V1),
                fee_payer: None,
                fee_token: None,
                operator: None,
            },
        };
        let session = SessionRoute {
            realm: config.realm.clone(),
            request,
            opaque: price
                .route_id
                .as_ref()
                .map(|id| BTreeMap::from([("routeId".to_owned(), id.clone())])),
            description: price.description.clone(),
        };
        Ok(Self { session, price })
    }

    /// The route's price and terms.
    pub fn price(&self) -> &RoutePrice {
        &self.price
    }

    /// The protocol-level route (what challenges say and what echoed challenges must match).
    pub fn session_route(&self) -> &SessionRoute {
        &self.session
    }

    pub(crate) fn policy(&self) -> AcceptancePolicy {
        AcceptancePolicy {
            min_voucher_delta: self.price.min_voucher_delta.unwrap_or(0),
        }
    }
}
