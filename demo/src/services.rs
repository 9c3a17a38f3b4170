//! The two services the demo runs as separate processes: the example provider (the engine with
//! a sled store on disk) and the settlement daemon, with their secrets in 0600 files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use alloy::primitives::{Address, B256};

use crate::chain::{CHAIN_ID, LocalChain};
use crate::error::DemoError;
use crate::procs::{self, ChildGuard, Spawn};

/// How long a service gets to print its ready line(s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The settlement policy the daemon runs with: low thresholds and a short tick so that batches
/// happen while the agents are still paying.
#[derive(Debug, Clone)]
pub(crate) struct SettlePolicy {
    /// Settle a channel once this much is unsettled (token base units).
    pub(crate) min_unsettled: u128,
    /// ... or once a voucher has been unsettled this long.
    pub(crate) max_age_secs: u64,
    /// Items per `settleBatch`.
    pub(crate) batch_size: usize,
    /// Planning interval.
    pub(crate) tick_secs: u64,
}

/// The running provider.
pub(crate) struct Provider {
    /// Stops it on drop.
    pub(crate) guard: ChildGuard,
    /// Public base URL (`http://127.0.0.1:PORT`).
    pub(crate) base: String,
    /// Admin base URL.
    pub(crate) admin: String,
}

/// The running daemon.
pub(crate) struct Daemon {
    /// Stops it on drop.
    pub(crate) guard: ChildGuard,
    /// `http://ADDR/metrics`.
    pub(crate) metrics_url: String,
}

/// Writes `contents` to a new file readable by its owner only.
pub(crate) fn write_secret(path: &Path, contents: &str) -> Result<(), DemoError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DemoError::io("creating secret file", path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| DemoError::io("writing secret file", path, e))
}

/// A random secret of 64 hex digits (from a fresh random key: the demo has no other RNG).
pub(crate) fn random_hex() -> String {
    let key = alloy::signers::local::PrivateKeySigner::random();
    hex_of(key.to_bytes())
}

/// `b` as 64 lowercase hex digits, no prefix.
pub(crate) fn hex_of(b: B256) -> String {
    let s = b.to_string();
    s.trim_start_matches("0x").to_owned()
}

/// Starts the example provider.
pub(crate) async fn start_provider(
    binary: &Path,
    run_dir: &Path,
    chain: &LocalChain,
    payee: Address,
    admin_token: &str,
    price: u128,
) -> Result<Provider, DemoError> {
    require_binary(
        "provider",
        binary,
        "cargo build --release -p sluice-engine --example provider",
    )?;
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--rpc-url", &chain.rpc_url])
        .args(["--chain-id", &CHAIN_ID.to_string()])
        .args(["--escrow", &chain.escrow.to_string()])
        .args(["--token", &chain.token.to_string()])
        .args(["--recipient", &payee.to_string()])
        .arg("--store")
        .arg(run_dir.join("provider-store"))
        .args(["--price", &price.to_string(), "--realm", "sluice.demo"])
        // Secrets through the environment, never on the command line (visible in `ps`).
        .env("SLUICE_SECRET", random_hex())
        .env("SLUICE_ADMIN_TOKEN", admin_token);
    let (guard, found) = procs::spawn(Spawn {
        name: "provider",
        command,
        run_dir,
        ready: &["LISTENING", "ADMIN"],
        timeout: READY_TIMEOUT,
    })
    .await?;
    Ok(Provider {
        guard,
        base: found[0].clone(),
        admin: found[1].clone(),
    })
}

/// Writes the daemon's `settle.toml` (with the feed token and the payee key in 0600 files next
/// to it) and starts the daemon.
pub(crate) async fn start_daemon(
    binary: &Path,
    run_dir: &Path,
    chain: &LocalChain,
    provider_admin: &str,
    feed_token: &str,
    payee_key: B256,
    policy: &SettlePolicy,
) -> Result<Daemon, DemoError> {
    require_binary(
        "sluice-settle-daemon",
        binary,
        "cargo build --release -p sluice-settle-daemon",
    )?;
    let dir = run_dir.join("daemon");
    fs::create_dir_all(&dir).map_err(|e| DemoError::io("creating", &dir, e))?;
    let token_file = dir.join("feed-token");
    let key_file = dir.join("payee.key");
    write_secret(&token_file, feed_token)?;
    write_secret(&key_file, &hex_of(payee_key))?;
    let config = settle_toml(SettleToml {
        feed_url: format!("{provider_admin}/feed"),
        token_file: &token_file,
        key_file: &key_file,
        rpc_url: &chain.rpc_url,
        escrow: chain.escrow,
        grace_period: chain.grace_period,
        policy,
        state: dir.join("state"),
    });
    let config_path = dir.join("settle.toml");
    fs::write(&config_path, config).map_err(|e| DemoError::io("writing", &config_path, e))?;
    let mut command = Command::new(binary);
    command.arg("run").arg("--config").arg(&config_path);
    let (guard, found) = procs::spawn(Spawn {
        name: "daemon",
        command,
        run_dir,
        ready: &["READY"],
        timeout: READY_TIMEOUT,
    })
    .await?;
    let addr = found[0].trim_start_matches("http://").trim_end_matches('/');
    Ok(Daemon {
        guard,
        metrics_url: format!("http://{addr}/metrics"),
    })
}

struct SettleToml<'a> {
    feed_url: String,
    token_file: &'a Path,
    key_file: &'a Path,
    rpc_url: &'a str,
    escrow: Address,
    grace_period: u64,
    policy: &'a SettlePolicy,
    state: PathBuf,
}

fn settle_toml(c: SettleToml<'_>) -> String {
    let grace = c.grace_period;
    format!(
        r#"# Written by sluice-demo for this run.
[feed]
url = "{feed}"
page_limit = 500
wait_ms = 1000

[feed.token]
file = "{token}"

[chain]
rpc_url = "{rpc}"
chain_id = {chain_id}
escrow = "{escrow}"
# 1: the block holding the transaction (anvil also mines a block every --block-time).
confirmations = 1
start_block = 0
# Transactions are mined at once: poll receipts often.
poll_ms = 200

[key]
file = "{key}"

[policy]
min_unsettled_amount = "{min}"
max_age_secs = {age}
batch_size = {batch}
gas_per_batch_base = 30000
gas_per_item = 40000
gas_per_close = 80000
max_gas_price = "1000000000000"
max_gas_per_batch = 3000000
close_grace_period_secs = {grace}
watchtower_margin_secs = {margin}

[state]
path = "{state}"

[service]
listen = "127.0.0.1:0"
tick_secs = {tick}
"#,
        feed = c.feed_url,
        token = c.token_file.display(),
        rpc = c.rpc_url,
        chain_id = CHAIN_ID,
        escrow = c.escrow,
        key = c.key_file.display(),
        min = c.policy.min_unsettled,
        age = c.policy.max_age_secs,
        batch = c.policy.batch_size,
        margin = grace / 2,
        state = c.state.display(),
        tick = c.policy.tick_secs,
    )
}

fn require_binary(name: &'static str, path: &Path, hint: &'static str) -> Result<(), DemoError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(DemoError::MissingBinary {
            name,
            path: path.to_owned(),
            hint,
        })
    }
}

/// A Prometheus text exposition, summed per metric name (labels folded together).
#[derive(Debug, Default, Clone)]
pub(crate) struct Metrics {
    sums: std::collections::BTreeMap<String, f64>,
    labelled: std::collections::BTreeMap<(String, String), f64>,
}

impl Metrics {
    /// Parses the exposition format (comments and malformed lines skipped).
    pub(crate) fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            *out.sums.entry(name.to_owned()).or_default() += value;
            *out.labelled
                .entry((name.to_owned(), labels.to_owned()))
                .or_default() += value;
        }
        out
    }

    /// The sum of every series of `name` (0 when absent).
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.sums.get(name).copied().unwrap_or(0.0)
    }

    /// The series of `name` with exactly the labels `labels` (e.g. `kind="close"`), 0 when
    /// absent.
    pub(crate) fn get(&self, name: &str, labels: &str) -> f64 {
        self.labelled
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }

    /// What the daemon says it did, as counts.
    pub(crate) fn daemon_counts(&self) -> DaemonCounts {
        // Counters are integers in the exposition; the casts only drop a ".0".
        let count = |v: f64| v.max(0.0) as u64;
        DaemonCounts {
            settle_batches: count(self.get("sluice_daemon_batches_total", "kind=\"settle_batch\"")),
            closes: count(self.get("sluice_daemon_batches_total", "kind=\"close\"")),
            gas_used: count(self.sum("sluice_daemon_gas_used_total")),
            errors: count(self.sum("sluice_daemon_errors_total")),
            pending_channels: count(self.sum("sluice_daemon_channels_pending")),
            unsettled: count(self.sum("sluice_daemon_unsettled_amount")),
        }
    }

    /// Whether any series was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

/// The daemon's own account of its work, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DaemonCounts {
    /// `settleBatch` transactions mined.
    pub(crate) settle_batches: u64,
    /// `close` transactions mined.
    pub(crate) closes: u64,
    /// Gas of every mined transaction.
    pub(crate) gas_used: u64,
    /// Failures of any kind (retried ones included).
    pub(crate) errors: u64,
    /// Channels holding an unsettled voucher.
    pub(crate) pending_channels: u64,
    /// Their unsettled amount.
    pub(crate) unsettled: u64,
}

/// Reads the daemon's `/metrics`.
pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> Result<Metrics, DemoError> {
    let err = |detail: String| DemoError::Http {
        url: url.to_owned(),
        detail,
    };
    let response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("status {}", response.status())));
    }
    let body = response.text().await.map_err(|e| err(e.to_string()))?;
    Ok(Metrics::parse(&body))
}

/// The engine's view of one channel (admin `GET /channels/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EngineChannel {
    /// Highest accepted voucher.
    pub(crate) accepted: u128,
    /// Charged so far.
    pub(crate) spent: u128,
    /// Units charged.
    pub(crate) units: u64,
    /// Deposit as the engine last saw it.
    pub(crate) deposit: u128,
    /// `opening`, `open`, `closing` or `closed`.
    pub(crate) status: String,
    /// Whether the engine knows the channel is finalized on chain.
    pub(crate) finalized: bool,
}

/// The provider's admin listener.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    /// HTTP client.
    pub(crate) http: reqwest::Client,
    /// Base URL.
    pub(crate) base: String,
    /// Bearer token.
    pub(crate) token: String,
}

impl AdminApi {
    /// The engine's record of `channel`.
    pub(crate) async fn channel(&self, channel: B256) -> Result<EngineChannel, DemoError> {
        engine_channel(&self.http, &self.base, &self.token, channel).await
    }
}

/// Reads one channel from the provider's admin listener.
async fn engine_channel(
    http: &reqwest::Client,
    admin: &str,
    token: &str,
    channel: B256,
) -> Result<EngineChannel, DemoError> {
    let url = format!("{admin}/channels/{channel}");
    let err = |detail: String| DemoError::Http {
        url: url.clone(),
        detail,
    };
    let response = http
        .get(&url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("status {}", response.status())));
    }
    let body = response.bytes().await.map_err(|e| err(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| err(format!("not JSON: {e}")))?;
    let amount = |field: &str| -> Result<u128, DemoError> {
        json.get(field)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err(format!("field {field} missing or not a decimal string")))
    };
    Ok(EngineChannel {
        accepted: amount("acceptedCumulative")?,
        spent: amount("spent")?,
        deposit: amount("deposit")?,
        units: json
            .get("units")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| err("field units missing".into()))?,
        status: json
            .get("status")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_owned(),
        finalized: json
            .get("finalized")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_series_across_labels_and_skip_comments() {
        let text = "# HELP x y\n# TYPE sluice_daemon_batches_total counter\n\
            sluice_daemon_batches_total{kind=\"settle_batch\"} 3\n\
            sluice_daemon_batches_total{kind=\"close\"} 4\n\
            sluice_daemon_gas_used_total 123456\n\
            garbage line\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("sluice_daemon_batches_total"), 7.0);
        assert_eq!(m.sum("sluice_daemon_gas_used_total"), 123_456.0);
        assert_eq!(m.sum("absent"), 0.0);
        assert_eq!(m.get("sluice_daemon_batches_total", "kind=\"close\""), 4.0);
        assert_eq!(m.get("sluice_daemon_batches_total", "kind=\"other\""), 0.0);
        assert!(!m.is_empty());
        let counts = m.daemon_counts();
        assert_eq!(
            (counts.settle_batches, counts.closes, counts.gas_used),
            (3, 4, 123_456)
        );
        assert!(Metrics::parse("# only comments\n").is_empty());
    }

    #[test]
    fn settle_toml_is_accepted_by_the_daemons_own_config_loader() {
        let dir = tempfile::tempdir().unwrap();
        let policy = SettlePolicy {
            min_unsettled: 20_000,
            max_age_secs: 2,
            batch_size: 8,
            tick_secs: 1,
        };
        let text = settle_toml(SettleToml {
            feed_url: "http://127.0.0.1:9090/feed".into(),
            token_file: &dir.path().join("feed-token"),
            key_file: &dir.path().join("payee.key"),
            rpc_url: "http://127.0.0.1:8545",
            escrow: Address::repeat_byte(0x11),
            grace_period: 60,
            policy: &policy,
            state: dir.path().join("state"),
        });
        let config = sluice_settle_daemon::config::Config::parse(&text, std::iter::empty())
            .unwrap_or_else(|e| panic!("the daemon refuses the demo's settle.toml: {e}\n{text}"));
        assert_eq!(config.chain.escrow, Address::repeat_byte(0x11));
        assert_eq!(config.chain.chain_id, CHAIN_ID);
        assert_eq!(config.policy.batch_size, 8);
        assert_eq!(config.policy.min_unsettled_amount.0, 20_000);
        assert_eq!(config.policy.close_grace_period_secs, 60);
        assert_eq!(config.service.tick_secs, 1);
    }

    #[test]
    fn secrets_are_written_owner_only_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_secret(&path, "s3cret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret");
        assert!(matches!(
            write_secret(&path, "other"),
            Err(DemoError::Io { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret");
    }
}
