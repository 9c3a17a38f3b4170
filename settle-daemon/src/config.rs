//! `settle.toml`: the daemon's configuration, with `SLUICE_DAEMON_*` environment overrides.
//!
//! Secrets (the payee's signing key, the feed's bearer token) are never part of [`Config`]:
//! the file names *where* they are (a file path or an environment variable) and
//! [`SecretSource::load_key`] / [`SecretSource::load_token`] read them into [`SigningKey`] /
//! [`FeedToken`], whose `Debug` prints nothing of the secret and which have no `Display`.
//!
//! Environment overrides: `SLUICE_DAEMON_<SECTION>_<KEY>=<value>` replaces `key` in `[section]`
//! (section names hold no underscore, so `SLUICE_DAEMON_POLICY_BATCH_SIZE` is `[policy]
//! batch_size`); `__` goes one table deeper (`SLUICE_DAEMON_FEED_TOKEN__ENV` is `[feed.token]
//! env`). A value replacing a string stays a string; otherwise a decimal integer or `true` /
//! `false` is read as such and anything else as a string.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use serde::Deserialize;

use crate::policy::PolicyConfig;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SLUICE_DAEMON_";

/// The largest gas a single transaction may be given (Ethereum's 30M block gas limit; a
/// higher cap is certainly a typo).
pub const MAX_GAS_CAP: u64 = 30_000_000;
/// The name of the feed configured by the single `[feed]` form when it sets none.
pub const DEFAULT_FEED_NAME: &str = "default";
/// The longest feed name.
pub const MAX_FEED_NAME_LEN: usize = 64;

/// Why the configuration or a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {kind}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
    },
    /// The TOML (after overrides) does not describe a configuration.
    #[error("invalid settle.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// An override variable names no `<SECTION>_<KEY>`.
    #[error("environment override {var} names no section and key")]
    OverrideName {
        /// The variable.
        var: String,
    },
    /// An override's section exists in the file but is not a table.
    #[error("environment override {var}: `{section}` is not a table")]
    OverrideSection {
        /// The variable.
        var: String,
        /// The section.
        section: String,
    },
    /// A value is out of its allowed range.
    #[error("`{field}` = {value} is invalid: {reason}")]
    Invalid {
        /// The field, as `section.key`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// Neither `[feed]` nor `[[feeds]]` names a feed.
    #[error("no feed configured: set `[feed]` or at least one `[[feeds]]`")]
    NoFeeds,
    /// Both `[feed]` and `[[feeds]]` are set.
    #[error("`[feed]` and `[[feeds]]` are exclusive: use one form")]
    BothFeedForms,
    /// A `[[feeds]]` entry has no `name`.
    #[error("`feeds[{index}]` has no `name` (required for every entry of `[[feeds]]`)")]
    FeedNameMissing {
        /// The entry's position in `[[feeds]]`, from 0.
        index: usize,
    },
    /// A feed name is empty, too long or has a character outside `A-Z a-z 0-9 - _ .`.
    #[error("feed name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ .")]
    FeedNameInvalid {
        /// The name given.
        name: String,
    },
    /// Two feeds share a name.
    #[error("two feeds are named {name:?}")]
    DuplicateFeedName {
        /// The name.
        name: String,
    },
    /// Two feeds share a URL.
    #[error("two feeds read {url}")]
    DuplicateFeedUrl {
        /// The URL.
        url: String,
    },
    /// A secret names both or neither of `file` and `env`.
    #[error("`{field}` must set exactly one of `file` and `env`")]
    SecretSourceAmbiguous {
        /// The secret's section.
        field: &'static str,
    },
    /// A secret file could not be read.
    #[error("cannot read secret file {path}: {kind}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
    },
    /// A secret's environment variable is not set (or not Unicode).
    #[error("environment variable {var} holding a secret is not set")]
    SecretEnvMissing {
        /// The variable.
        var: String,
    },
    /// The signing key is not 32 bytes of hex (optionally `0x`-prefixed). The value is never
    /// echoed.
    #[error("the signing key is not 64 hex digits")]
    KeyMalformed,
    /// The signing key is zero or not below the secp256k1 group order.
    #[error("the signing key is not a valid secp256k1 secret key")]
    KeyOutOfRange,
    /// The feed token is outside the engine's accepted form (32–1024 `b64token` characters).
    /// The value is never echoed.
    #[error("the feed token is not 32-1024 bearer-token characters (length {len})")]
    TokenMalformed {
        /// The token's length.
        len: usize,
    },
}

/// Where a secret comes from: exactly one of a file path and an environment variable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// A file holding the secret (surrounding whitespace ignored).
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub env: Option<String>,
}

impl SecretSource {
    fn check(&self, field: &'static str) -> Result<(), ConfigError> {
        match (&self.file, &self.env) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(ConfigError::SecretSourceAmbiguous { field }),
        }
    }

    fn read(&self, field: &'static str) -> Result<String, ConfigError> {
        let raw = match (&self.file, &self.env) {
            (Some(path), None) => {
                std::fs::read_to_string(path).map_err(|e| ConfigError::ReadSecret {
                    path: path.clone(),
                    kind: e.kind(),
                })?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| ConfigError::SecretEnvMissing { var: var.clone() })?,
            _ => return Err(ConfigError::SecretSourceAmbiguous { field }),
        };
        Ok(raw.trim().to_owned())
    }

    /// Reads the payee's signing key: 64 hex digits, `0x` optional.
    pub fn load_key(&self) -> Result<SigningKey, ConfigError> {
        SigningKey::parse(&self.read("key")?)
    }

    /// Reads the feed's bearer token.
    pub fn load_token(&self) -> Result<FeedToken, ConfigError> {
        FeedToken::parse(self.read("feed.token")?)
    }
}

/// The secp256k1 order n, big-endian.
const SECP256K1_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// The payee's secp256k1 secret key. `Debug` prints `SigningKey(<redacted>)`; there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    /// The account this key signs for (the payee's address, e.g. an embedding provider's
    /// `EngineConfig` recipient).
    pub fn address(&self) -> Result<Address, ConfigError> {
        alloy::signers::local::PrivateKeySigner::from_slice(&self.0)
            .map(|signer| signer.address())
            .map_err(|_| ConfigError::KeyOutOfRange)
    }

    /// Parses 64 hex digits (`0x` optional) into a key in `1..n`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        let mut bytes = [0u8; 32];
        if digits.len() != 64 {
            return Err(ConfigError::KeyMalformed);
        }
        for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(ConfigError::KeyMalformed)?;
            let lo = hex_value(pair[1]).ok_or(ConfigError::KeyMalformed)?;
            bytes[i] = hi << 4 | lo;
        }
        if bytes == [0; 32] || bytes >= SECP256K1_ORDER {
            return Err(ConfigError::KeyOutOfRange);
        }
        Ok(Self(bytes))
    }

    /// The key's 32 bytes, for building a signer.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The bearer token for the engine's `GET /feed`. `Debug` prints `FeedToken(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct FeedToken(String);

impl FeedToken {
    /// Accepts what the engine's `FeedAuth::new` accepts: 32–1024 characters of
    /// `A-Z a-z 0-9 - . _ ~ + / =`.
    pub fn parse(token: String) -> Result<Self, ConfigError> {
        let ok_char = |c: u8| c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c);
        if !(32..=1024).contains(&token.len()) || !token.bytes().all(ok_char) {
            return Err(ConfigError::TokenMalformed { len: token.len() });
        }
        Ok(Self(token))
    }

    /// The token, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FeedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FeedToken(<redacted>)")
    }
}

/// The whole `settle.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[feed]`: one engine node's settlement feed (the single form; its name is
    /// [`DEFAULT_FEED_NAME`] unless it sets `name`). Exclusive with `feeds`.
    #[serde(default)]
    pub feed: Option<FeedConfig>,
    /// `[[feeds]]`: several engine nodes' feeds, each with a stable `name` (it keys the feed's
    /// durable cursor and labels its metrics). Exclusive with `feed`.
    #[serde(default)]
    pub feeds: Vec<FeedConfig>,
    /// `[chain]`: the node and the escrow.
    pub chain: ChainConfig,
    /// `[key]`: where the payee's signing key is.
    pub key: SecretSource,
    /// `[policy]`: when to settle and close.
    pub policy: PolicySection,
    /// `[state]`: the daemon's own database.
    pub state: StateConfig,
    /// `[service]`: metrics and health.
    #[serde(default)]
    pub service: ServiceConfig,
}

/// `[feed]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The feed's stable name: 1–64 characters `A-Z a-z 0-9 - _ .`. Required in `[[feeds]]`;
    /// `[feed]` defaults to [`DEFAULT_FEED_NAME`]. Renaming a feed restarts its cursor at 0 (a
    /// full replay of that node's feed, which is safe: vouchers only grow).
    #[serde(default)]
    pub name: Option<String>,
    /// The engine's feed endpoint, e.g. `http://127.0.0.1:9090/feed`.
    pub url: String,
    /// Where the bearer token is.
    pub token: SecretSource,
    /// Entries per page (1..=1000).
    #[serde(default = "default_page_limit")]
    pub page_limit: u32,
    /// Long-poll wait per request, milliseconds (0..=30000).
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u32,
}

fn default_page_limit() -> u32 {
    500
}
fn default_wait_ms() -> u32 {
    10_000
}

/// `[chain]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC endpoint.
    pub rpc_url: String,
    /// The chain id transactions are signed for.
    pub chain_id: u64,
    /// The escrow contract.
    pub escrow: Address,
    /// Blocks after which a transaction counts as final.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
    /// The first block to scan escrow events from on a fresh database.
    #[serde(default)]
    pub start_block: u64,
    /// The most blocks one `eth_getLogs` call covers.
    #[serde(default = "default_log_range")]
    pub log_range: u64,
    /// How often a submitted transaction's receipt is polled, milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// A transaction not mined after this many seconds is replaced (same nonce, fees bumped).
    #[serde(default = "default_replace_after_secs")]
    pub replace_after_secs: u64,
    /// Timeout of one JSON-RPC request, milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_confirmations() -> u64 {
    2
}
fn default_log_range() -> u64 {
    2_000
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_replace_after_secs() -> u64 {
    60
}
fn default_request_timeout_ms() -> u64 {
    10_000
}

/// `[policy]`; amounts are decimal strings or integers (token base units, wei).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// See [`PolicyConfig::min_unsettled_amount`].
    pub min_unsettled_amount: Amount,
    /// See [`PolicyConfig::max_age_secs`].
    pub max_age_secs: u64,
    /// See [`PolicyConfig::batch_size`].
    pub batch_size: usize,
    /// See [`PolicyConfig::gas_per_batch_base`].
    pub gas_per_batch_base: u64,
    /// See [`PolicyConfig::gas_per_item`].
    pub gas_per_item: u64,
    /// See [`PolicyConfig::gas_per_close`].
    pub gas_per_close: u64,
    /// See [`PolicyConfig::max_gas_price`] (wei).
    pub max_gas_price: Amount,
    /// See [`PolicyConfig::max_gas_per_batch`].
    pub max_gas_per_batch: u64,
    /// See [`PolicyConfig::close_grace_period_secs`]; must equal the escrow's.
    pub close_grace_period_secs: u64,
    /// See [`PolicyConfig::watchtower_margin_secs`].
    pub watchtower_margin_secs: u64,
    /// What one gas costs in the channel token's base units ([`crate::policy::Market`]'s
    /// `token_per_gas`): `gas_per_item × token_per_gas` is an item's cost in tokens, and a
    /// channel whose unsettled amount is below it is not settled (unprofitable). `0` (the
    /// default) prices gas at nothing in tokens: every channel past a threshold is settled.
    #[serde(default = "Amount::zero")]
    pub token_per_gas: Amount,
}

/// A `u128` written as an integer (up to `i64::MAX`, TOML's limit) or a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(pub u128);

impl Amount {
    fn zero() -> Self {
        Self(0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(u128::from(n))),
            Raw::Text(s) => {
                let canonical = !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'));
                canonical
                    .then(|| s.parse().ok())
                    .flatten()
                    .map(Self)
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "amount {s:?} is not a canonical decimal u128"
                        ))
                    })
            }
        }
    }
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The sled database directory (the daemon's own; never the engine's).
    pub path: PathBuf,
}

/// `[service]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Where `/metrics` and `/health` are served.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Seconds between planning rounds when nothing wakes the daemon earlier.
    #[serde(default = "default_tick_secs")]
    pub tick_secs: u64,
    /// The planning interval in milliseconds; when set it replaces `tick_secs` (sub-second
    /// ticks for tests and demos).
    #[serde(default)]
    pub tick_ms: Option<u64>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tick_secs: default_tick_secs(),
            tick_ms: None,
        }
    }
}

impl ServiceConfig {
    /// The planning interval: `tick_ms` if set, else `tick_secs`.
    pub fn tick(&self) -> std::time::Duration {
        match self.tick_ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => std::time::Duration::from_secs(self.tick_secs),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_tick_secs() -> u64 {
    15
}

impl Config {
    /// Reads `path`, applies the process's `SLUICE_DAEMON_*` variables, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadConfig {
            path: path.to_owned(),
            kind: e.kind(),
        })?;
        Self::parse(&text, std::env::vars())
    }

    /// Parses `text`, applies the overrides among `env` (pairs of name and value; names
    /// without the prefix are ignored), validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads `path` like [`Config::load`] for a provider that embeds the daemon
    /// ([`crate::runner::run_embedded`]): the in-process feeds come from the caller, so the file
    /// may name no HTTP feed (any it names are followed too).
    pub fn load_embedded(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadConfig {
            path: path.to_owned(),
            kind: e.kind(),
        })?;
        Self::parse_embedded(&text, std::env::vars())
    }

    /// [`Config::parse`] for an embedding provider: zero HTTP feeds is allowed.
    pub fn parse_embedded(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text, env)?;
        config.validate_with(false)?;
        Ok(config)
    }

    fn parse_unchecked(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse()?;
        for (var, value) in env {
            let Some(name) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let mut path: Vec<String> = Vec::new();
            for (i, segment) in name.split("__").enumerate() {
                let lower = segment.to_ascii_lowercase();
                match (i, lower.split_once('_')) {
                    (0, Some((section, key))) => {
                        path.push(section.to_owned());
                        path.push(key.to_owned());
                    }
                    (0, None) => path.push(lower),
                    _ => path.push(lower),
                }
            }
            if path.len() < 2 || path.iter().any(String::is_empty) {
                return Err(ConfigError::OverrideName { var });
            }
            let Some((key, tables)) = path.split_last() else {
                return Err(ConfigError::OverrideName { var });
            };
            let mut current = &mut table;
            for section in tables {
                let entry = current
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(next) = entry else {
                    return Err(ConfigError::OverrideSection {
                        var,
                        section: section.clone(),
                    });
                };
                current = next;
            }
            let keep_string = matches!(current.get(key), Some(toml::Value::String(_)));
            current.insert(key.clone(), override_value(&value, keep_string));
        }
        // Checked before deserializing: a `SLUICE_DAEMON_FEED_*` override next to `[[feeds]]`
        // makes a partial `[feed]` whose missing keys would hide the real mistake.
        if table.contains_key("feed") && table.contains_key("feeds") {
            return Err(ConfigError::BothFeedForms);
        }
        Ok(table.try_into()?)
    }

    /// The HTTP feeds to follow, each with its resolved name, in configuration order (the
    /// single `[feed]` form gives one, named [`DEFAULT_FEED_NAME`] unless it sets `name`).
    pub fn http_feeds(&self) -> Vec<(String, FeedConfig)> {
        match &self.feed {
            Some(feed) => vec![(
                feed.name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_FEED_NAME.to_owned()),
                feed.clone(),
            )],
            None => self
                .feeds
                .iter()
                .map(|f| (f.name.clone().unwrap_or_default(), f.clone()))
                .collect(),
        }
    }

    /// Checks ranges and consistency; [`Config::parse`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(true)
    }

    fn validate_feeds(&self, required: bool) -> Result<(), ConfigError> {
        let invalid = |field, value: String, reason| {
            Err(ConfigError::Invalid {
                field,
                value,
                reason,
            })
        };
        if self.feed.is_some() && !self.feeds.is_empty() {
            return Err(ConfigError::BothFeedForms);
        }
        if required && self.feed.is_none() && self.feeds.is_empty() {
            return Err(ConfigError::NoFeeds);
        }
        if self.feed.is_none() {
            for (index, feed) in self.feeds.iter().enumerate() {
                if feed.name.is_none() {
                    return Err(ConfigError::FeedNameMissing { index });
                }
            }
        }
        let one = self.feed.is_some();
        let field = |single: &'static str, list: &'static str| if one { single } else { list };
        let feeds = self.http_feeds();
        for (i, (name, feed)) in feeds.iter().enumerate() {
            check_feed_name(name)?;
            if feeds[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::DuplicateFeedName { name: name.clone() });
            }
            if feeds[..i].iter().any(|(_, f)| f.url == feed.url) {
                return Err(ConfigError::DuplicateFeedUrl {
                    url: feed.url.clone(),
                });
            }
            feed.token.check(field("feed.token", "feeds.token"))?;
            if !(feed.url.starts_with("http://") || feed.url.starts_with("https://")) {
                return invalid(
                    field("feed.url", "feeds.url"),
                    feed.url.clone(),
                    "must be an http(s) URL",
                );
            }
            // The engine's admin routes (refresh notifications) live beside `/feed`.
            if !feed.url.ends_with("/feed") {
                return invalid(
                    field("feed.url", "feeds.url"),
                    feed.url.clone(),
                    "must end in /feed (the engine's admin listener)",
                );
            }
            if !(1..=1000).contains(&feed.page_limit) {
                return invalid(
                    field("feed.page_limit", "feeds.page_limit"),
                    feed.page_limit.to_string(),
                    "must be 1..=1000",
                );
            }
            if feed.wait_ms > 30_000 {
                return invalid(
                    field("feed.wait_ms", "feeds.wait_ms"),
                    feed.wait_ms.to_string(),
                    "must be 0..=30000",
                );
            }
        }
        Ok(())
    }

    fn validate_with(&self, feeds_required: bool) -> Result<(), ConfigError> {
        let invalid = |field, value: String, reason| {
            Err(ConfigError::Invalid {
                field,
                value,
                reason,
            })
        };
        self.key.check("key")?;
        self.validate_feeds(feeds_required)?;
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !url_ok(&self.chain.rpc_url) {
            // Only the scheme is echoed: hosted nodes carry an API key in the rest of the URL.
            let scheme = self
                .chain
                .rpc_url
                .split_once("://")
                .map_or("(no scheme)", |(scheme, _)| scheme);
            return invalid(
                "chain.rpc_url",
                format!("{scheme}://…"),
                "must be an http(s) URL",
            );
        }
        if self.chain.escrow == Address::ZERO {
            return invalid(
                "chain.escrow",
                self.chain.escrow.to_string(),
                "must not be zero",
            );
        }
        if self.chain.confirmations == 0 {
            return invalid("chain.confirmations", "0".into(), "must be at least 1");
        }
        let p = &self.policy;
        if p.batch_size == 0 {
            return invalid("policy.batch_size", "0".into(), "must be at least 1");
        }
        if p.max_gas_per_batch > MAX_GAS_CAP {
            return invalid(
                "policy.max_gas_per_batch",
                p.max_gas_per_batch.to_string(),
                "must be at most 30000000",
            );
        }
        let policy = self.policy_config();
        if policy.items_per_batch() == 0 {
            return invalid(
                "policy.max_gas_per_batch",
                p.max_gas_per_batch.to_string(),
                "leaves no room for one settleBatch item (gas_per_batch_base + gas_per_item)",
            );
        }
        if p.gas_per_close > p.max_gas_per_batch {
            return invalid(
                "policy.gas_per_close",
                p.gas_per_close.to_string(),
                "must not exceed max_gas_per_batch",
            );
        }
        if p.gas_per_item == 0 || p.gas_per_close == 0 {
            return invalid(
                "policy.gas_per_item",
                "0".into(),
                "gas estimates must be positive",
            );
        }
        if p.close_grace_period_secs == 0 {
            return invalid(
                "policy.close_grace_period_secs",
                "0".into(),
                "must be positive",
            );
        }
        if p.watchtower_margin_secs >= p.close_grace_period_secs {
            return invalid(
                "policy.watchtower_margin_secs",
                p.watchtower_margin_secs.to_string(),
                "must be below close_grace_period_secs",
            );
        }
        if self.service.tick_secs == 0 {
            return invalid("service.tick_secs", "0".into(), "must be at least 1");
        }
        if let Some(ms) = self.service.tick_ms
            && !(10..=3_600_000).contains(&ms)
        {
            return invalid("service.tick_ms", ms.to_string(), "must be 10..=3600000");
        }
        let c = &self.chain;
        if c.log_range == 0 || c.log_range > 100_000 {
            return invalid(
                "chain.log_range",
                c.log_range.to_string(),
                "must be 1..=100000",
            );
        }
        if !(10..=60_000).contains(&c.poll_ms) {
            return invalid("chain.poll_ms", c.poll_ms.to_string(), "must be 10..=60000");
        }
        if c.replace_after_secs == 0 {
            return invalid("chain.replace_after_secs", "0".into(), "must be at least 1");
        }
        if !(100..=120_000).contains(&c.request_timeout_ms) {
            return invalid(
                "chain.request_timeout_ms",
                c.request_timeout_ms.to_string(),
                "must be 100..=120000",
            );
        }
        Ok(())
    }

    /// The policy's view of `[policy]`.
    pub fn policy_config(&self) -> PolicyConfig {
        let p = &self.policy;
        PolicyConfig {
            min_unsettled_amount: p.min_unsettled_amount.0,
            max_age_secs: p.max_age_secs,
            batch_size: p.batch_size,
            gas_per_batch_base: p.gas_per_batch_base,
            gas_per_item: p.gas_per_item,
            gas_per_close: p.gas_per_close,
            max_gas_price: p.max_gas_price.0,
            max_gas_per_batch: p.max_gas_per_batch,
            close_grace_period_secs: p.close_grace_period_secs,
            watchtower_margin_secs: p.watchtower_margin_secs,
        }
    }
}

/// Checks a feed name: it keys a durable cursor and labels metrics, so it is kept plain.
pub fn check_feed_name(name: &str) -> Result<(), ConfigError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_FEED_NAME_LEN || !name.chars().all(plain) {
        return Err(ConfigError::FeedNameInvalid {
            name: name.chars().take(MAX_FEED_NAME_LEN + 1).collect(),
        });
    }
    Ok(())
}

/// An override's value: a string where the file has a string, otherwise a decimal integer
/// or a boolean when it reads as one, else a string (so `0x…` addresses stay strings).
fn override_value(text: &str, keep_string: bool) -> toml::Value {
    if !keep_string {
        if let Ok(b) = text.parse::<bool>() {
            return toml::Value::Boolean(b);
        }
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if let Some(n) = digits.then(|| text.parse::<i64>().ok()).flatten() {
            return toml::Value::Integer(n);
        }
    }
    toml::Value::String(text.to_owned())
}

#[cfg(test)]
mod tests;
