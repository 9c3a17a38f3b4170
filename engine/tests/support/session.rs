//! A real engine on a real anvil chain: [`Harness`] runs an [`Engine`] over a store and an
//! [`RpcChain`] to a freshly deployed escrow; [`Client`] is a payer that builds the credentials
//! an mppx client would send (open with its own signed transaction, vouchers, top-ups, close).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use alloy::primitives::{Address, B256, Bytes};
use sluice_engine::chain::{ChainClient, RpcChain};
use sluice_engine::protocol::{
    Challenge, ChallengeSecret, Credential, Did, OpenPayload, SessionPayload, Timestamp,
    TopUpPayload, VoucherPayload,
};
use sluice_engine::store::{ChannelRecord, ChannelStore};
use sluice_engine::{Engine, EngineConfig, Route, RoutePrice};
use sluice_voucher::{SigningKey, Voucher, VoucherDomain, sign_voucher};

use super::anvil::{CHAIN_ID, Payer, TestChain};

/// The challenge secret of every test engine.
pub const SECRET: &str = "sluice-engine-tests-secret-0123456789abcdef";
/// The realm of every test engine.
pub const REALM: &str = "api.sluice.test";
/// Price per unit of the default test route.
pub const PRICE: u128 = 25;

/// The current time as the engine takes it.
pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now()).expect("a sane clock")
}

/// `now() + seconds`.
pub fn later(seconds: u64) -> Timestamp {
    now()
        .checked_add(Duration::from_secs(seconds))
        .expect("before year 9999")
}

/// An engine configuration for `chain` paying `payee`.
pub fn config(chain: &TestChain, payee: Address) -> EngineConfig {
    EngineConfig::new(
        REALM,
        ChallengeSecret::new(SECRET).expect("secret"),
        CHAIN_ID,
        chain.escrow,
        payee,
        chain.token,
    )
}

/// A running anvil chain and an engine over `S` serving its escrow.
pub struct Harness<S: ChannelStore> {
    /// The chain (anvil is killed when this is dropped).
    pub chain: TestChain,
    /// The engine.
    pub engine: Arc<Engine<S, RpcChain>>,
    /// The default route: [`PRICE`] per `request`, route id `chat`.
    pub route: Route,
    /// The payee (anvil account #1).
    pub payee: Address,
}

impl<S: ChannelStore> Harness<S> {
    /// Starts anvil, deploys, and builds an engine over `store`.
    pub async fn start(store: S) -> Self {
        Self::start_with(store, |_| {}).await
    }

    /// [`Harness::start`] with a hook to adjust the engine configuration.
    pub async fn start_with(store: S, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let chain = TestChain::start().await;
        let payee = chain.account(1).address();
        let mut config = config(&chain, payee);
        adjust(&mut config);
        let rpc = RpcChain::connect(chain.config())
            .await
            .expect("connects to anvil");
        let engine = Engine::new(config, store, rpc).expect("engine");
        let mut price = RoutePrice::new(PRICE, "request");
        price.route_id = Some("chat".into());
        let route = engine.route(price).expect("route");
        Self {
            chain,
            engine: Arc::new(engine),
            route,
            payee,
        }
    }

    /// A fresh challenge of the default route.
    pub fn challenge(&self) -> Challenge {
        self.engine
            .challenge(&self.route, now(), None)
            .expect("challenge")
    }

    /// Anvil account `index` as a payer with `tokens` test tokens, its approval of the escrow
    /// for all of them mined.
    pub async fn client(&self, index: usize, tokens: u128) -> Client {
        let mut payer = self.chain.payer(index, tokens).await;
        let approve = payer.approve(tokens);
        let mined = self
            .engine
            .chain()
            .submit_raw(approve)
            .await
            .expect("approve");
        assert!(mined.success, "approve succeeded");
        let voucher_key = SigningKey::from_slice(payer.signer.to_bytes().as_slice()).expect("key");
        Client {
            payer,
            voucher_key,
            domain: VoucherDomain::tempo_v1(CHAIN_ID, self.chain.escrow),
            payee: self.payee,
            channel: B256::ZERO,
        }
    }

    /// The stored record of `channel` (panics if the store fails).
    pub fn record(&self, channel: &B256) -> Option<ChannelRecord> {
        self.engine.channel(channel).expect("store read")
    }
}

/// A payer: signs its own transactions and vouchers and wraps them in credentials.
pub struct Client {
    /// The payer's transaction signer and nonce counter.
    pub payer: Payer,
    /// The key that signs vouchers (the payer's own unless replaced).
    pub voucher_key: SigningKey,
    /// The voucher domain of the test escrow.
    pub domain: VoucherDomain,
    /// The payee its channels pay.
    pub payee: Address,
    /// The channel of the last [`Client::open`].
    pub channel: B256,
}

/// Wraps a payload into an `Authorization` header value answering `challenge`.
pub fn credential(challenge: &Challenge, payload: SessionPayload, source: Option<Did>) -> String {
    Credential {
        challenge: challenge.clone(),
        payload,
        source,
    }
    .to_header_value()
}

impl Client {
    /// The payer's address.
    pub fn address(&self) -> Address {
        self.payer.address()
    }

    /// The 65-byte signature of a voucher for `amount` on `channel` with the voucher key.
    pub fn sign(&self, channel: B256, amount: u128) -> Bytes {
        sign_voucher(
            &self.domain,
            &Voucher::new(channel.into(), amount),
            &self.voucher_key,
        )
        .signature
        .to_bytes65()
        .to_vec()
        .into()
    }

    /// An `open` credential: a signed `open(payee, token, deposit, salt, signer)` transaction and
    /// an initial voucher of `initial`. Remembers the channel.
    pub fn open(
        &mut self,
        challenge: &Challenge,
        deposit: u128,
        salt: B256,
        authorized_signer: Address,
        initial: u128,
    ) -> String {
        let (transaction, channel) = self
            .payer
            .open(self.payee, deposit, salt, authorized_signer);
        self.channel = channel;
        let payload = SessionPayload::Open(OpenPayload {
            channel_id: channel,
            transaction,
            cumulative_amount: initial,
            signature: self.sign(channel, initial),
            authorized_signer: None,
            descriptor: None,
        });
        credential(challenge, payload, None)
    }

    /// A `voucher` credential for `amount` on the current channel.
    pub fn voucher(&self, challenge: &Challenge, amount: u128) -> String {
        self.voucher_with(challenge, amount, self.sign(self.channel, amount))
    }

    /// A `voucher` credential with the given signature bytes.
    pub fn voucher_with(&self, challenge: &Challenge, amount: u128, signature: Bytes) -> String {
        credential(
            challenge,
            SessionPayload::Voucher(VoucherPayload {
                channel_id: self.channel,
                cumulative_amount: amount,
                signature,
                descriptor: None,
            }),
            None,
        )
    }

    /// A `topUp` credential adding `additional` to the current channel.
    pub fn top_up(&mut self, challenge: &Challenge, additional: u128) -> String {
        let transaction = self.payer.top_up(self.channel, additional);
        credential(
            challenge,
            SessionPayload::TopUp(TopUpPayload {
                channel_id: self.channel,
                transaction,
                additional_deposit: additional,
                descriptor: None,
            }),
            None,
        )
    }

    /// A `close` credential with a final voucher of `amount`.
    pub fn close(&self, challenge: &Challenge, amount: u128) -> String {
        credential(
            challenge,
            SessionPayload::Close(VoucherPayload {
                channel_id: self.channel,
                cumulative_amount: amount,
                signature: self.sign(self.channel, amount),
                descriptor: None,
            }),
            None,
        )
    }
}
