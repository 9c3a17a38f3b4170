//! Crash safety of the engine facade under SIGKILL, on a real anvil chain and sled store.
//!
//! The parent opens channels through the engine, then re-runs this test binary as a child
//! (selecting the ignored `engine_crash_child` test). The child runs an engine over the same
//! sled directory and chain and pays on every channel at once (a voucher and a one-unit charge
//! per request, through `authorize_and_charge`), printing one `ACK` line per request *after* it
//! returned. The parent kills the child with SIGKILL after a random number of acknowledgements,
//! reopens the store and checks that every acknowledged voucher and charge is there, that
//! `spent ≤ accepted ≤ deposit`, that the stored voucher is the payer's signature of the stored
//! amount, and that the feed carries it; then the next child continues from there.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use alloy::primitives::{Address, B256, hex};
use sluice_engine::chain::{RpcChain, RpcChainConfig};
use sluice_engine::feed::FeedCursor;
use sluice_engine::protocol::{ChallengeSecret, SessionPayload, VoucherPayload};
use sluice_engine::store::{ChannelStore, Durability, SledStore};
use sluice_engine::{Engine, EngineConfig, RoutePrice};
use sluice_voucher::{
    SignedVoucher, SigningKey, Voucher, VoucherDomain, VoucherSignature, address_of, sign_voucher,
    verify,
};
use support::anvil::CHAIN_ID;
use support::session::{Harness, PRICE, REALM, SECRET, credential, now};

const DB_ENV: &str = "SLUICE_ENGINE_CRASH_DB";
const CHAIN_ENV: &str = "SLUICE_ENGINE_CRASH_CHAIN";
const KEYS_ENV: &str = "SLUICE_ENGINE_CRASH_KEYS";
const CHANNELS: usize = 4;
const KILLS: usize = 8;
const DEPOSIT: u128 = 1_000_000;
/// Each request raises the voucher by this much and charges one unit of [`PRICE`].
const STEP: u128 = 2 * PRICE;
/// A child that is never killed stops after this many requests per channel.
const CHILD_MAX_REQUESTS: usize = 2_000;

fn channel_of(key: &SigningKey, payee: Address, token: Address, escrow: Address) -> B256 {
    sluice_voucher::channel_id_v1(
        address_of(key.verifying_key()),
        payee,
        token,
        B256::repeat_byte(0xc4),
        Address::ZERO,
        escrow,
        CHAIN_ID,
    )
    .into()
}

// ---- child ---------------------------------------------------------------------------------

/// The child process: ignored in normal runs; without its environment it has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of `sigkill_of_the_engine_never_loses_an_acknowledged_payment`"]
async fn engine_crash_child() {
    let (Ok(db), Ok(chain), Ok(keys)) = (
        std::env::var(DB_ENV),
        std::env::var(CHAIN_ENV),
        std::env::var(KEYS_ENV),
    ) else {
        return;
    };
    // `rpc escrow token payee`
    let parts: Vec<&str> = chain.split(' ').collect();
    let [rpc, escrow, token, payee] = parts[..] else {
        panic!("malformed {CHAIN_ENV}: {chain:?}");
    };
    let address = |s: &str| s.parse::<Address>().expect("address");
    let (escrow, token, payee) = (address(escrow), address(token), address(payee));
    let keys: Vec<SigningKey> = keys
        .split(',')
        .map(|k| SigningKey::from_slice(&hex::decode(k).expect("hex")).expect("key"))
        .collect();
    let rpc = RpcChain::connect(RpcChainConfig::new(
        rpc.parse().expect("url"),
        escrow,
        CHAIN_ID,
    ))
    .await
    .expect("child connects");
    let store = SledStore::open(&db, Durability::default()).expect("child opens the store");
    let config = EngineConfig::new(
        REALM,
        ChallengeSecret::new(SECRET).expect("secret"),
        CHAIN_ID,
        escrow,
        payee,
        token,
    );
    let engine = std::sync::Arc::new(Engine::new(config, store, rpc).expect("engine"));
    let mut price = RoutePrice::new(PRICE, "request");
    price.route_id = Some("chat".into());
    let route = engine.route(price).expect("route");
    let domain = VoucherDomain::tempo_v1(CHAIN_ID, escrow);
    // libtest has already printed `test engine_crash_child ... ` without a newline.
    println!("\nREADY");
    let tasks: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(k, key)| {
            let (engine, route, domain) = (engine.clone(), route.clone(), domain.clone());
            tokio::spawn(async move {
                let channel = channel_of(&key, payee, token, escrow);
                let challenge = engine.challenge(&route, now(), None).expect("challenge");
                for _ in 0..CHILD_MAX_REQUESTS {
                    let record = engine.channel(&channel).expect("read").expect("opened");
                    let amount = record.accepted_cumulative + STEP;
                    let signature =
                        sign_voucher(&domain, &Voucher::new(channel.into(), amount), &key)
                            .signature
                            .to_bytes65();
                    let header = credential(
                        &challenge,
                        SessionPayload::Voucher(VoucherPayload {
                            channel_id: channel,
                            cumulative_amount: amount,
                            signature: signature.to_vec().into(),
                            descriptor: None,
                        }),
                        None,
                    );
                    let paid = engine
                        .authorize_and_charge(&route, &header, 1, now())
                        .await
                        .expect("a covered payment on an open channel succeeds");
                    let mut out = std::io::stdout().lock();
                    let written = writeln!(
                        out,
                        "ACK {k} {} {}",
                        paid.record.accepted_cumulative, paid.record.spent
                    )
                    .and_then(|()| out.flush());
                    if written.is_err() {
                        // The parent is gone: nobody is left to acknowledge to.
                        std::process::exit(1);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("payer task");
    }
}

// ---- parent --------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_engine_never_loses_an_acknowledged_payment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let store = SledStore::open(&path, Durability::default()).expect("sled");
    let h = Harness::start(store).await;
    let mut keys = Vec::new();
    let mut channels = Vec::new();
    for index in 2..2 + CHANNELS {
        let mut client = h.client(index, DEPOSIT).await;
        let open = client.open(
            &h.challenge(),
            DEPOSIT,
            B256::repeat_byte(0xc4),
            Address::ZERO,
            0,
        );
        h.engine
            .authorize(&h.route, &open, now())
            .await
            .expect("open");
        assert_eq!(
            client.channel,
            channel_of(&client.voucher_key, h.payee, h.chain.token, h.chain.escrow)
        );
        channels.push((
            client.channel,
            address_of(client.voucher_key.verifying_key()),
        ));
        keys.push(hex::encode(client.voucher_key.to_bytes()));
    }
    let Harness {
        chain,
        engine,
        payee,
        ..
    } = h;
    drop(engine); // releases the sled directory for the children
    let chain_env = format!(
        "{} {} {} {payee}",
        chain.rpc_url(),
        chain.escrow,
        chain.token
    );
    let domain = VoucherDomain::tempo_v1(CHAIN_ID, chain.escrow);

    let exe = std::env::current_exe().expect("test binary");
    let mut rng = Rng(0x00c0_ffee_e291_0001);
    let mut acked: BTreeMap<usize, (u128, u128)> = BTreeMap::new();
    let mut total = 0usize;
    for round in 0..KILLS {
        let kill_after = if round == 0 {
            0
        } else {
            rng.below(300) as usize + 1
        };
        let mut child = Command::new(&exe)
            .args([
                "engine_crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &path)
            .env(CHAIN_ENV, &chain_env)
            .env(KEYS_ENV, keys.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut record_ack = |line: &str| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [_, k, accepted, spent] = fields[..] else {
                panic!("malformed line from child: {line:?}")
            };
            let parse = |s: &str| s.parse::<u128>().expect("number");
            let entry = acked.entry(k.parse().expect("channel")).or_default();
            entry.0 = entry.0.max(parse(accepted));
            entry.1 = entry.1.max(parse(spent));
            total += 1;
        };
        let (mut ready, mut acks, mut killed) = (false, 0, false);
        for line in lines.by_ref() {
            let line = line.expect("child stdout");
            if line == "READY" {
                ready = true;
            } else if line.starts_with("ACK ") {
                record_ack(&line);
                acks += 1;
            }
            if ready && acks >= kill_after {
                child.kill().expect("SIGKILL");
                killed = true;
                break;
            }
        }
        assert!(killed, "child {round} exited before it was killed");
        // Lines written before the kill were acknowledged too.
        for line in lines {
            let line = line.expect("child stdout");
            if line.starts_with("ACK ") {
                record_ack(&line);
            }
        }
        assert!(!child.wait().expect("reap child").success(), "killed");

        let store = SledStore::open(&path, Durability::default()).expect("reopen after SIGKILL");
        let feed = store.read_feed(FeedCursor::ZERO, 100).expect("feed");
        for (k, (channel, payer)) in channels.iter().enumerate() {
            let record = store.get(channel).expect("read").expect("channel kept");
            record
                .check_invariants()
                .expect("spent ≤ accepted ≤ deposit");
            let (accepted, spent) = acked.get(&k).copied().unwrap_or_default();
            assert!(
                record.accepted_cumulative >= accepted,
                "lost a voucher: {record:?}"
            );
            assert!(record.spent >= spent, "lost a charge: {record:?}");
            // Every request charged PRICE for STEP more accepted: the record is a prefix of them.
            assert_eq!(
                record.spent * STEP,
                record.accepted_cumulative * PRICE,
                "{record:?}"
            );
            if record.has_voucher() {
                let signed = SignedVoucher {
                    voucher: Voucher::new((*channel).into(), record.accepted_cumulative),
                    signature: VoucherSignature::from_bytes(&record.accepted_signature)
                        .expect("stored signature parses"),
                };
                verify(&domain, &signed, *payer).expect("the stored voucher is the payer's");
                let entry = feed
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.channel_id == *channel)
                    .expect("in the feed");
                assert_eq!(entry.cumulative_amount, record.accepted_cumulative);
            }
        }
    }
    assert!(total > 200, "the children did real work: {total}");
}
