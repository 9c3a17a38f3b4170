//! A whole deployment as real processes: anvil (the pinned binary) with a test token and the
//! escrow (short grace period), the engine's example provider (paid API + admin listener with
//! the feed and the refresh route), payers that open channels and pay through the provider
//! over HTTP, and the daemon binary started from a generated `settle.toml`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolValue};
use sluice_contracts::{
    EscrowConfig, ISluiceEscrow, SluiceEscrow, TestToken, anvil_binary, deploy_escrow,
    deploy_test_token,
};
use sluice_engine::protocol::{
    Challenge, Credential, OpenPayload, SessionPayload, VoucherPayload, parse_www_authenticate,
};
use sluice_voucher::{SigningKey, Voucher, VoucherDomain, sign_voucher};

/// Anvil's chain id.
pub const CHAIN_ID: u64 = 31_337;
/// The escrow's close grace period in these tests, seconds.
pub const GRACE: u64 = 120;
/// Price of one paid request.
pub const PRICE: u128 = 1_000;
/// The engine's admin token (also the daemon's feed token).
pub const ADMIN_TOKEN: &str = "daemon-tests-admin-token-0123456789abcdef";
/// The anvil account the payee (the daemon's key) uses.
pub const PAYEE_ACCOUNT: usize = 9;

/// Polls `check` every 50 ms until it returns true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deterministic pseudo-random sequence (splitmix64).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&self.log) {
                let _ = f.read_to_string(&mut text);
            }
            // The flaky proxy's retries would drown the story: leave them out.
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("retrying"))
                .rev()
                .take(60)
                .collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn provider_binary() -> PathBuf {
    sluice_testkit::workspace_binary("examples/provider")
}

/// Spawns `command` with stdout piped and stderr to `log`; returns it and its first stdout
/// lines up to the one starting with `until`.
fn spawn(mut command: Command, log: &Path, name: &'static str, until: &str) -> (Proc, Vec<String>) {
    let file = std::fs::File::create(log).expect("log file");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("process starts");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        log: log.to_owned(),
        name,
    };
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout).lines();
    loop {
        let Some(Ok(line)) = reader.next() else {
            panic!("{} exited before printing {until}", proc.name);
        };
        let done = line.starts_with(until);
        lines.push(line);
        if done {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader {});
    (proc, lines)
}

/// Starts the engine's example provider; returns it and its API and admin bases.
fn spawn_provider(
    rpc_url: &str,
    escrow: Address,
    token: Address,
    payee: Address,
    store: &Path,
    log: &Path,
) -> (Proc, String, String) {
    let mut command = Command::new(provider_binary());
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--rpc-url", rpc_url])
        .args(["--chain-id", &CHAIN_ID.to_string()])
        .args(["--escrow", &escrow.to_string()])
        .args(["--token", &token.to_string()])
        .args(["--recipient", &payee.to_string()])
        .arg("--store")
        .arg(store)
        .args(["--price", &PRICE.to_string(), "--realm", "daemon.test"])
        .env(
            "SLUICE_SECRET",
            "settle-daemon-tests-secret-0123456789abcdef",
        );
    let (proc, lines) = spawn(command, log, "provider", "ADMIN ");
    let api = lines[0]
        .strip_prefix("LISTENING ")
        .expect("LISTENING first")
        .to_owned();
    let admin = lines[1].strip_prefix("ADMIN ").expect("ADMIN").to_owned();
    (proc, api, admin)
}

/// Where a payer pays: an engine's paid API (`GET|POST {base}/paid`).
pub trait PaidApi: Sync {
    /// The paid API's base, `http://addr`.
    fn api_base(&self) -> &str;
    /// An HTTP client.
    fn client(&self) -> &reqwest::Client;
}

impl PaidApi for World {
    fn api_base(&self) -> &str {
        &self.api
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Another engine node (the example provider as a process).
pub struct Node {
    proc: Option<Proc>,
    /// `http://` base of its paid API.
    pub api: String,
    /// `http://` base of its admin listener.
    pub admin: String,
    http: reqwest::Client,
}

impl PaidApi for Node {
    fn api_base(&self) -> &str {
        &self.api
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Node {
    /// SIGKILL: the node is gone (its store stays on disk).
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// The node's view of a channel (admin `GET /channels/{id}`).
    pub async fn engine_channel(&self, id: B256) -> serde_json::Value {
        engine_channel_at(&self.http, &self.admin, id).await
    }
}

async fn engine_channel_at(http: &reqwest::Client, admin: &str, id: B256) -> serde_json::Value {
    http.get(format!("{admin}/channels/{id}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json")
}

/// A fresh challenge of `{api}/paid`.
pub async fn challenge_of(api: &impl PaidApi) -> Challenge {
    let answer = api
        .client()
        .get(format!("{}/paid", api.api_base()))
        .send()
        .await
        .expect("402");
    assert_eq!(answer.status(), 402);
    let header = answer.headers()["www-authenticate"]
        .to_str()
        .expect("ascii");
    parse_www_authenticate(header)
        .expect("challenge")
        .into_iter()
        .next()
        .expect("one")
}

/// Anvil, the contracts and the engine's example provider.
pub struct World {
    _provider_proc: Option<Proc>,
    anvil: AnvilInstance,
    /// Deployer (account 0) provider.
    pub chain: DynProvider,
    /// The escrow.
    pub escrow: Address,
    /// The token.
    pub token: Address,
    /// The payee's key (account 9), the daemon's key.
    pub payee: PrivateKeySigner,
    /// `http://` base of the paid API.
    pub api: String,
    /// `http://` base of the admin listener.
    pub admin: String,
    /// A temporary directory for stores, configs and logs.
    pub dir: tempfile::TempDir,
    /// An HTTP client.
    pub http: reqwest::Client,
    daemons: std::sync::atomic::AtomicUsize,
}

impl World {
    /// Starts anvil, deploys, starts the provider.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts anvil and deploys; no provider process (`api` and `admin` are empty until the
    /// test sets them, e.g. to an engine it serves in-process).
    pub async fn start_chain_only() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(with_provider: bool) -> Self {
        let anvil = Anvil::new()
            .path(anvil_binary().unwrap_or_else(|e| panic!("{e}")))
            .chain_id(CHAIN_ID)
            .try_spawn()
            .expect("anvil starts");
        let key = |i: usize| {
            PrivateKeySigner::from_slice(&anvil.nth_key(i).expect("account").to_bytes())
                .expect("key")
        };
        let chain = ProviderBuilder::new()
            .wallet(EthereumWallet::from(key(0)))
            .connect_http(anvil.endpoint_url())
            .erased();
        let token = *deploy_test_token(chain.clone(), "Test USD", "TUSD", 6)
            .await
            .expect("token")
            .address();
        let escrow = *deploy_escrow(
            chain.clone(),
            &EscrowConfig {
                close_grace_period: GRACE,
                ..EscrowConfig::default()
            },
        )
        .await
        .expect("escrow")
        .address();
        let payee = key(PAYEE_ACCOUNT);
        let dir = tempfile::tempdir().expect("tempdir");
        let provider = with_provider.then(|| {
            spawn_provider(
                anvil.endpoint_url().as_str(),
                escrow,
                token,
                payee.address(),
                &dir.path().join("engine-store"),
                &dir.path().join("provider.log"),
            )
        });
        let (api, admin) = provider
            .as_ref()
            .map(|(_, api, admin)| (api.clone(), admin.clone()))
            .unwrap_or_default();
        Self {
            _provider_proc: provider.map(|(proc, _, _)| proc),
            anvil,
            chain,
            escrow,
            token,
            payee,
            api,
            admin,
            dir,
            http: reqwest::Client::new(),
            daemons: Default::default(),
        }
    }

    /// A second engine node: the example provider with its own store
    /// (`engine-store-<name>`, kept across restarts of the same name), same payee and escrow.
    pub fn start_node(&self, name: &str) -> Node {
        let (proc, api, admin) = spawn_provider(
            &self.rpc_url(),
            self.escrow,
            self.token,
            self.payee.address(),
            &self.dir.path().join(format!("engine-store-{name}")),
            &self
                .dir
                .path()
                .join(format!("provider-{name}-{}.log", self.next())),
        );
        Node {
            proc: Some(proc),
            api,
            admin,
            http: reqwest::Client::new(),
        }
    }

    fn next(&self) -> usize {
        self.daemons
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// Anvil's JSON-RPC URL.
    pub fn rpc_url(&self) -> String {
        self.anvil.endpoint_url().to_string()
    }

    /// Anvil's address, for proxies.
    pub fn rpc_addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.anvil.port())
            .parse()
            .expect("addr")
    }

    /// Anvil's prefunded account `index`.
    pub fn account(&self, index: usize) -> PrivateKeySigner {
        PrivateKeySigner::from_slice(&self.anvil.nth_key(index).expect("account").to_bytes())
            .expect("key")
    }

    /// A raw JSON-RPC call.
    pub async fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let answer: serde_json::Value = self
            .http
            .post(self.rpc_url())
            .json(&body)
            .send()
            .await
            .expect("rpc")
            .json()
            .await
            .expect("rpc json");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The chain head.
    pub async fn chain_head(&self) -> u64 {
        self.chain.get_block_number().await.expect("head")
    }

    /// Mines one block.
    pub async fn mine(&self) {
        self.rpc("evm_mine", serde_json::json!([])).await;
    }

    /// Turns automatic mining on or off.
    pub async fn automine(&self, on: bool) {
        self.rpc("evm_setAutomine", serde_json::json!([on])).await;
    }

    /// The pending transactions of `from` in the pool: (nonce, hash, maxFeePerGas).
    pub async fn pool_of(&self, from: Address) -> Vec<(u64, B256, u128)> {
        let content = self.rpc("txpool_content", serde_json::json!([])).await;
        let mut out = Vec::new();
        for (sender, txs) in content["pending"].as_object().into_iter().flatten() {
            if sender.parse::<Address>().ok() != Some(from) {
                continue;
            }
            for tx in txs.as_object().into_iter().flatten().map(|(_, tx)| tx) {
                let hex = |v: &serde_json::Value| {
                    u128::from_str_radix(v.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
                        .unwrap_or(0)
                };
                out.push((
                    hex(&tx["nonce"]) as u64,
                    tx["hash"].as_str().expect("hash").parse().expect("hash"),
                    hex(&tx["maxFeePerGas"]),
                ));
            }
        }
        out
    }

    /// `getChannel`.
    pub async fn channel(&self, id: B256) -> ISluiceEscrow::Channel {
        SluiceEscrow::new(self.escrow, &self.chain)
            .getChannel(id)
            .call()
            .await
            .expect("getChannel")
    }

    /// The token balance of `who`.
    pub async fn balance(&self, who: Address) -> u128 {
        TestToken::new(self.token, &self.chain)
            .balanceOf(who)
            .call()
            .await
            .expect("balanceOf")
            .to::<u128>()
    }

    /// The engine's view of a channel (admin `GET /channels/{id}`).
    pub async fn engine_channel(&self, id: B256) -> serde_json::Value {
        engine_channel_at(&self.http, &self.admin, id).await
    }

    /// A fresh challenge of `/paid`.
    pub async fn challenge(&self) -> Challenge {
        challenge_of(self).await
    }

    /// Account `index` as a payer with `tokens` minted and approved for the escrow.
    pub async fn payer(&self, index: usize, tokens: u128) -> Payer {
        let signer = self.account(index);
        let receipt = TestToken::new(self.token, &self.chain)
            .mint(signer.address(), U256::from(tokens))
            .send()
            .await
            .expect("mint")
            .get_receipt()
            .await
            .expect("mint receipt");
        assert!(receipt.status());
        let nonce = self
            .chain
            .get_transaction_count(signer.address())
            .pending()
            .await
            .expect("nonce");
        let mut payer = Payer {
            key: SigningKey::from_slice(signer.to_bytes().as_slice()).expect("key"),
            signer,
            nonce,
            domain: VoucherDomain::tempo_v1(CHAIN_ID, self.escrow),
            escrow: self.escrow,
            token: self.token,
            payee: self.payee.address(),
        };
        let call = TestToken::approveCall {
            spender: self.escrow,
            amount: U256::from(tokens),
        };
        let raw = payer.sign_call(self.token, call.abi_encode());
        self.send_raw(raw).await;
        payer
    }

    /// Broadcasts a raw transaction and waits for its receipt; returns its status.
    pub async fn send_raw(&self, raw: Bytes) -> bool {
        let pending = self
            .chain
            .send_raw_transaction(&raw)
            .await
            .expect("broadcast");
        pending.get_receipt().await.expect("receipt").status()
    }

    /// Writes a `settle.toml` for the daemon (`rpc_url` may be a proxy) and returns its path.
    pub fn daemon_config(&self, rpc_url: &str, settings: &DaemonSettings) -> PathBuf {
        let feed = format!(
            r#"
[feed]
url = "{admin}/feed"
page_limit = 500
wait_ms = 1000

[feed.token]
env = "SLUICE_TEST_FEED_TOKEN"
"#,
            admin = self.admin
        );
        self.write_daemon_config(rpc_url, settings, &feed)
    }

    /// A `settle.toml` following several nodes (`[[feeds]]`: name and admin base each); none
    /// gives a configuration for [`sluice_settle_daemon::runner::run_embedded`].
    pub fn daemon_config_feeds(
        &self,
        rpc_url: &str,
        settings: &DaemonSettings,
        feeds: &[(&str, &str)],
    ) -> PathBuf {
        let mut text = String::new();
        for (name, admin) in feeds {
            text.push_str(&format!(
                r#"
[[feeds]]
name = "{name}"
url = "{admin}/feed"
page_limit = 500
wait_ms = 1000
token.env = "SLUICE_TEST_FEED_TOKEN"
"#
            ));
        }
        self.write_daemon_config(rpc_url, settings, &text)
    }

    fn write_daemon_config(
        &self,
        rpc_url: &str,
        settings: &DaemonSettings,
        feeds: &str,
    ) -> PathBuf {
        let n = self.next();
        let dir = self.dir.path();
        let key_file = dir.join("payee.key");
        std::fs::write(
            &key_file,
            alloy::primitives::hex::encode(self.payee.to_bytes()),
        )
        .expect("key file");
        let text = format!(
            r#"
{feeds}

[chain]
rpc_url = "{rpc_url}"
chain_id = {CHAIN_ID}
escrow = "{escrow}"
confirmations = {confirmations}
start_block = 0
poll_ms = 50
replace_after_secs = {replace}
request_timeout_ms = 2000

[key]
file = "{key}"

[policy]
min_unsettled_amount = "{min}"
max_age_secs = 86400
batch_size = {batch}
gas_per_batch_base = 30000
gas_per_item = 20000
gas_per_close = 80000
max_gas_price = "1000000000000"
max_gas_per_batch = 10000000
close_grace_period_secs = {GRACE}
watchtower_margin_secs = 30

[state]
path = "{state}"

[service]
listen = "127.0.0.1:0"
tick_ms = 100
"#,
            escrow = self.escrow,
            replace = settings.replace_after_secs,
            confirmations = settings.confirmations,
            key = key_file.display(),
            min = settings.min_unsettled_amount,
            batch = settings.batch_size,
            state = dir.join("daemon-state").display(),
        );
        let path = dir.join(format!("settle-{n}.toml"));
        std::fs::write(&path, text).expect("config");
        path
    }

    /// Starts the daemon binary with `config`; waits for its `READY` line.
    pub fn start_daemon(&self, config: &Path) -> Daemon {
        self.start_daemon_with_env(config, &[])
    }

    /// [`World::start_daemon`] with extra environment variables (overrides).
    pub fn start_daemon_with_env(&self, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let n = self
            .daemons
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-settle-daemon"));
        command
            .args(["run", "--config"])
            .arg(config)
            .env("SLUICE_TEST_FEED_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info,sluice_settle_daemon=debug")
            .envs(env.iter().copied());
        let (proc, lines) = spawn(
            command,
            &self.dir.path().join(format!("daemon-{n}.log")),
            "daemon",
            "READY ",
        );
        let addr = lines
            .last()
            .and_then(|l| l.strip_prefix("READY "))
            .expect("READY line")
            .to_owned();
        Daemon {
            proc: Some(proc),
            metrics_url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// The daemon's log files joined (for assertions on what is never logged).
    pub fn daemon_logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("daemon-") && name.ends_with(".log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }

    /// The `Settled` events of the escrow: (tx hash, channel, new settled).
    pub async fn settled_events(&self) -> Vec<(B256, B256, u128)> {
        let filter = alloy::rpc::types::Filter::new()
            .address(self.escrow)
            .from_block(0)
            .event_signature(<SluiceEscrow::Settled as alloy::sol_types::SolEvent>::SIGNATURE_HASH);
        self.chain
            .get_logs(&filter)
            .await
            .expect("logs")
            .iter()
            .map(|log| {
                let e = <SluiceEscrow::Settled as alloy::sol_types::SolEvent>::decode_log_data(
                    &log.inner.data,
                )
                .expect("Settled");
                (
                    log.transaction_hash.expect("hash"),
                    e.channelId,
                    e.newSettled.to::<u128>(),
                )
            })
            .collect()
    }

    /// Whether `hash` was mined.
    pub async fn chain_receipt_exists(&self, hash: B256) -> bool {
        self.chain
            .get_transaction_receipt(hash)
            .await
            .expect("receipt")
            .is_some()
    }

    /// The gas used by `hash`.
    pub async fn gas_used(&self, hash: B256) -> u64 {
        self.chain
            .get_transaction_receipt(hash)
            .await
            .expect("receipt")
            .expect("mined")
            .gas_used
    }

    /// A transaction from the payee's own key at `nonce` (a competing nonce user): a zero-value
    /// self-transfer with fees well above the daemon's.
    pub fn payee_self_transfer(&self, nonce: u64) -> Bytes {
        let tx = TxEip1559 {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 500_000_000_000,
            max_priority_fee_per_gas: 100_000_000_000,
            to: TxKind::Call(self.payee.address()),
            value: U256::ZERO,
            access_list: Default::default(),
            input: Bytes::new(),
        };
        let sig = self
            .payee
            .sign_hash_sync(&tx.signature_hash())
            .expect("sign");
        TxEnvelope::from(tx.into_signed(sig)).encoded_2718().into()
    }
}

/// Knobs of a daemon run.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    /// `policy.batch_size`.
    pub batch_size: usize,
    /// `policy.min_unsettled_amount`.
    pub min_unsettled_amount: u128,
    /// `chain.replace_after_secs`.
    pub replace_after_secs: u64,
    /// `chain.confirmations`.
    pub confirmations: u64,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            batch_size: 50,
            min_unsettled_amount: 1,
            replace_after_secs: 600,
            confirmations: 1,
        }
    }
}

/// A running daemon process.
pub struct Daemon {
    proc: Option<Proc>,
    /// `http://addr` of `/metrics` and `/health`.
    pub metrics_url: String,
    http: reqwest::Client,
}

impl Daemon {
    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.metrics_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// `GET /health`: status and body.
    pub async fn health(&self) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}/health", self.metrics_url))
            .send()
            .await
            .expect("health");
        (r.status().as_u16(), r.text().await.expect("text"))
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    /// SIGTERM and wait: the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut proc = self.proc.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &proc.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proc.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of the sample `name` (with labels, exactly as exposed) in a metrics text.
pub fn metric(text: &str, name: &str) -> Option<u128> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok())?
    })
}

/// A payer: its own transactions (consecutive nonces) and vouchers.
pub struct Payer {
    /// The key.
    pub signer: PrivateKeySigner,
    key: SigningKey,
    nonce: u64,
    domain: VoucherDomain,
    escrow: Address,
    token: Address,
    payee: Address,
}

impl Payer {
    /// The address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Signs a call at the next nonce.
    pub fn sign_call(&mut self, to: Address, input: Vec<u8>) -> Bytes {
        let tx = TxEip1559 {
            chain_id: CHAIN_ID,
            nonce: self.nonce,
            gas_limit: 400_000,
            max_fee_per_gas: 20_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(to),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.into(),
        };
        self.nonce += 1;
        let sig = self
            .signer
            .sign_hash_sync(&tx.signature_hash())
            .expect("sign");
        TxEnvelope::from(tx.into_signed(sig)).encoded_2718().into()
    }

    fn signature(&self, channel: B256, amount: u128) -> Bytes {
        Bytes::copy_from_slice(
            &sign_voucher(
                &self.domain,
                &Voucher::new(channel.into(), amount),
                &self.key,
            )
            .signature
            .to_bytes65(),
        )
    }

    /// Opens a channel through the provider (`GET /paid` with an open credential, one unit
    /// charged) with an initial voucher of `initial`; returns the channel id.
    pub async fn open(
        &mut self,
        world: &impl PaidApi,
        deposit: u128,
        salt: B256,
        initial: u128,
    ) -> B256 {
        let channel = keccak256(
            (
                self.address(),
                self.payee,
                self.token,
                salt,
                Address::ZERO,
                self.escrow,
                U256::from(CHAIN_ID),
            )
                .abi_encode(),
        );
        let call = SluiceEscrow::openCall {
            payee: self.payee,
            token: self.token,
            deposit,
            salt,
            authorizedSigner: Address::ZERO,
        };
        let transaction = self.sign_call(self.escrow, call.abi_encode());
        let credential = Credential {
            challenge: challenge_of(world).await,
            payload: SessionPayload::Open(OpenPayload {
                channel_id: channel,
                transaction,
                cumulative_amount: initial,
                signature: self.signature(channel, initial),
                authorized_signer: None,
                descriptor: None,
            }),
            source: None,
        }
        .to_header_value();
        let answer = world
            .client()
            .get(format!("{}/paid", world.api_base()))
            .header("authorization", credential)
            .send()
            .await
            .expect("open");
        assert_eq!(
            answer.status(),
            200,
            "open: {}",
            answer.text().await.unwrap_or_default()
        );
        channel
    }

    async fn management(&self, world: &impl PaidApi, payload: SessionPayload) {
        let credential = Credential {
            challenge: challenge_of(world).await,
            payload,
            source: None,
        }
        .to_header_value();
        let answer = world
            .client()
            .post(format!("{}/paid", world.api_base()))
            .header("authorization", credential)
            .send()
            .await
            .expect("management");
        assert_eq!(
            answer.status(),
            204,
            "{}",
            answer.text().await.unwrap_or_default()
        );
    }

    /// Sends a voucher of `amount`; returns the HTTP status (204 when accepted).
    pub async fn try_voucher(&self, world: &impl PaidApi, channel: B256, amount: u128) -> u16 {
        let credential = Credential {
            challenge: challenge_of(world).await,
            payload: SessionPayload::Voucher(VoucherPayload {
                channel_id: channel,
                cumulative_amount: amount,
                signature: self.signature(channel, amount),
                descriptor: None,
            }),
            source: None,
        }
        .to_header_value();
        world
            .client()
            .post(format!("{}/paid", world.api_base()))
            .header("authorization", credential)
            .send()
            .await
            .expect("voucher")
            .status()
            .as_u16()
    }

    /// Sends a voucher of `amount` (management `POST /paid`, nothing charged).
    pub async fn voucher(&self, world: &impl PaidApi, channel: B256, amount: u128) {
        let payload = SessionPayload::Voucher(VoucherPayload {
            channel_id: channel,
            cumulative_amount: amount,
            signature: self.signature(channel, amount),
            descriptor: None,
        });
        self.management(world, payload).await;
    }

    /// Closes cooperatively with a final voucher of `amount`.
    pub async fn close(&self, world: &impl PaidApi, channel: B256, amount: u128) {
        let payload = SessionPayload::Close(VoucherPayload {
            channel_id: channel,
            cumulative_amount: amount,
            signature: self.signature(channel, amount),
            descriptor: None,
        });
        self.management(world, payload).await;
    }

    /// `requestClose(channel)` signed by the payer.
    pub fn request_close(&mut self, channel: B256) -> Bytes {
        let call = SluiceEscrow::requestCloseCall { channelId: channel };
        self.sign_call(self.escrow, call.abi_encode())
    }

    /// `topUp(channel, amount)` signed by the payer (it cancels a pending close request).
    pub fn top_up(&mut self, channel: B256, amount: u128) -> Bytes {
        let call = SluiceEscrow::topUpCall {
            channelId: channel,
            additionalDeposit: U256::from(amount),
        };
        self.sign_call(self.escrow, call.abi_encode())
    }

    /// `withdraw(channel)` signed by the payer.
    pub fn withdraw(&mut self, channel: B256) -> Bytes {
        let call = SluiceEscrow::withdrawCall { channelId: channel };
        self.sign_call(self.escrow, call.abi_encode())
    }
}

/// Opens `count` channels across payers 1..=8 through the provider, each with a random voucher
/// above the first request's price; returns channel → the engine's accepted voucher.
pub async fn open_channels(world: &World, count: usize, seed: u64) -> BTreeMap<B256, u128> {
    const DEPOSIT: u128 = 1_000_000;
    let payers = 8;
    let per_payer = count.div_ceil(payers);
    let mut tasks = Vec::new();
    for p in 0..payers {
        let n = per_payer.min(count.saturating_sub(p * per_payer));
        if n == 0 {
            continue;
        }
        let mut payer = world.payer(1 + p, DEPOSIT * n as u128).await;
        let mut rng = Rng::new(seed ^ (p as u64 + 1));
        tasks.push(async move {
            let mut out = Vec::new();
            for i in 0..n {
                let salt = B256::from(alloy::primitives::U256::from(
                    (seed << 32) + (p * 10_000 + i) as u64,
                ));
                let channel = payer.open(world, DEPOSIT, salt, PRICE).await;
                // A random number (0-2) of higher vouchers, each random.
                let mut amount = PRICE;
                for _ in 0..rng.below(3) {
                    amount += 1 + u128::from(rng.below(40_000));
                    payer.voucher(world, channel, amount).await;
                }
                out.push((channel, amount));
            }
            out
        });
    }
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
