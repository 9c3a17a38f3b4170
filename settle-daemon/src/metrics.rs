//! The daemon's Prometheus metrics (text exposition format 0.0.4, written by hand) and the
//! health verdict served at `/health`.
//!
//! | Metric | Type | Meaning |
//! |---|---|---|
//! | `sluice_daemon_channels_pending` | gauge | channels holding a voucher above what is settled (not finalized) |
//! | `sluice_daemon_unsettled_amount` | gauge | the sum of those unsettled amounts, token base units |
//! | `sluice_daemon_batches_total{kind}` | counter | transactions mined, by `kind` (`settle_batch`, `close`) |
//! | `sluice_daemon_transactions_total{outcome}` | counter | transaction events: `mined`, `reverted`, `replaced`, `rebroadcast`, `nonce_taken`, `rejected` |
//! | `sluice_daemon_gas_used_total` | counter | gas used by mined transactions |
//! | `sluice_daemon_errors_total{kind}` | counter | failures: `feed`, `scan`, `rpc`, `tx`, `state`, `engine_refresh`, `skipped_item` |
//! | `sluice_daemon_chain_lag_blocks` | gauge | chain head minus the last processed block |
//! | `sluice_daemon_last_block` | gauge | the last processed block |
//! | `sluice_daemon_feed_cursor{feed}` | gauge | each feed's durable cursor, by feed name |
//! | `sluice_daemon_feed_errors_total{feed}` | counter | failed pulls, by feed name (their sum is `errors_total{kind="feed"}`) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    channels_pending: u64,
    unsettled_amount: u128,
    batches: BTreeMap<&'static str, u64>,
    transactions: BTreeMap<&'static str, u64>,
    gas_used: u128,
    errors: BTreeMap<&'static str, u64>,
    chain_lag: u64,
    last_block: u64,
    feeds: BTreeMap<String, FeedHealth>,
    scan_ok: Option<Instant>,
    scan_error: Option<String>,
}

/// One feed's cursor and health.
#[derive(Debug, Default)]
struct FeedHealth {
    cursor: u64,
    ok: Option<Instant>,
    error: Option<String>,
    errors: u64,
}

/// The metrics registry (cheap to share in an `Arc`).
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sets the pending-channel gauges.
    pub fn set_pending(&self, channels: u64, unsettled: u128) {
        self.with(|m| {
            m.channels_pending = channels;
            m.unsettled_amount = unsettled;
        });
    }

    /// Counts a mined transaction of `kind` and its gas.
    pub fn batch(&self, kind: &'static str, gas_used: u64) {
        self.with(|m| {
            *m.batches.entry(kind).or_default() += 1;
            m.gas_used += u128::from(gas_used);
        });
    }

    /// Counts a transaction event.
    pub fn transaction(&self, outcome: &'static str) {
        self.with(|m| *m.transactions.entry(outcome).or_default() += 1);
    }

    /// Counts an error.
    pub fn error(&self, kind: &'static str) {
        self.with(|m| *m.errors.entry(kind).or_default() += 1);
    }

    /// Records a successful scan.
    pub fn scan_ok(&self, head: u64, last_block: u64) {
        self.with(|m| {
            m.scan_ok = Some(Instant::now());
            m.scan_error = None;
            m.last_block = last_block;
            m.chain_lag = head.saturating_sub(last_block);
        });
    }

    /// Records a failed scan.
    pub fn scan_failed(&self, reason: String) {
        self.with(|m| {
            *m.errors.entry("scan").or_default() += 1;
            m.scan_error = Some(reason);
        });
    }

    /// Names a feed before its first pull, so health reports it until it succeeds.
    pub fn register_feed(&self, feed: &str) {
        self.with(|m| {
            m.feeds.entry(feed.to_owned()).or_default();
        });
    }

    /// Records a successful pull of the feed named `feed`.
    pub fn feed_ok(&self, feed: &str, cursor: u64) {
        self.with(|m| {
            let f = m.feeds.entry(feed.to_owned()).or_default();
            f.ok = Some(Instant::now());
            f.error = None;
            f.cursor = cursor;
        });
    }

    /// Records a failed pull of the feed named `feed`.
    pub fn feed_failed(&self, feed: &str, reason: String) {
        self.with(|m| {
            *m.errors.entry("feed").or_default() += 1;
            let f = m.feeds.entry(feed.to_owned()).or_default();
            f.errors += 1;
            f.error = Some(reason);
        });
    }

    /// `None` when healthy: the last pull of every feed and the last event scan all succeeded
    /// within `stale_after`; otherwise the reason, naming each failing feed
    /// (`feed <name>: <error>`, joined by `; `).
    pub fn unhealthy(&self, stale_after: Duration) -> Option<String> {
        self.with(|m| {
            let fresh = |at: Option<Instant>| at.is_some_and(|t| t.elapsed() <= stale_after);
            let stale: Vec<String> = m
                .feeds
                .iter()
                .filter(|(_, f)| !fresh(f.ok))
                .map(|(name, f)| match (&f.error, f.ok) {
                    (Some(e), _) => format!("feed {name}: {e}"),
                    (None, Some(at)) => format!(
                        "feed {name}: last successful pull {} s ago",
                        at.elapsed().as_secs()
                    ),
                    (None, None) => format!("feed {name}: no successful pull yet"),
                })
                .collect();
            if m.feeds.is_empty() {
                return Some("feed: none configured".into());
            }
            if !stale.is_empty() {
                return Some(stale.join("; "));
            }
            if !fresh(m.scan_ok) {
                return Some(match (&m.scan_error, m.scan_ok) {
                    (Some(e), _) => format!("scan: {e}"),
                    // No error, only old: the round is busy (e.g. waiting for a transaction).
                    (None, Some(at)) => format!(
                        "scan: last successful scan {} s ago",
                        at.elapsed().as_secs()
                    ),
                    (None, None) => "scan: no successful scan yet".into(),
                });
            }
            None
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut gauge = |name: &str, help: &str, value: String| {
                let _ = write!(
                    out,
                    "# HELP sluice_daemon_{name} {help}\n# TYPE sluice_daemon_{name} gauge\nsluice_daemon_{name} {value}\n"
                );
            };
            gauge(
                "channels_pending",
                "Channels holding a voucher above the settled amount.",
                m.channels_pending.to_string(),
            );
            gauge(
                "unsettled_amount",
                "Sum of unsettled voucher amounts, token base units.",
                m.unsettled_amount.to_string(),
            );
            gauge(
                "chain_lag_blocks",
                "Chain head minus the last processed block.",
                m.chain_lag.to_string(),
            );
            gauge(
                "last_block",
                "The last fully processed block.",
                m.last_block.to_string(),
            );
            let _ = write!(
                out,
                "# HELP sluice_daemon_feed_cursor The durable settlement feed cursor, by feed.\n# TYPE sluice_daemon_feed_cursor gauge\n"
            );
            for (name, f) in &m.feeds {
                let _ = writeln!(
                    out,
                    "sluice_daemon_feed_cursor{{feed=\"{name}\"}} {}",
                    f.cursor
                );
            }
            let _ = write!(
                out,
                "# HELP sluice_daemon_feed_errors_total Failed feed pulls, by feed.\n# TYPE sluice_daemon_feed_errors_total counter\n"
            );
            for (name, f) in &m.feeds {
                let _ = writeln!(
                    out,
                    "sluice_daemon_feed_errors_total{{feed=\"{name}\"}} {}",
                    f.errors
                );
            }
            let mut counter = |name: &str, help: &str, label: &str, values: &BTreeMap<&str, u64>| {
                let _ = write!(
                    out,
                    "# HELP sluice_daemon_{name} {help}\n# TYPE sluice_daemon_{name} counter\n"
                );
                for (key, value) in values {
                    let _ = writeln!(out, "sluice_daemon_{name}{{{label}=\"{key}\"}} {value}");
                }
            };
            counter(
                "batches_total",
                "Transactions mined, by kind.",
                "kind",
                &m.batches,
            );
            counter(
                "transactions_total",
                "Transaction events, by outcome.",
                "outcome",
                &m.transactions,
            );
            counter("errors_total", "Failures, by kind.", "kind", &m.errors);
            let _ = write!(
                out,
                "# HELP sluice_daemon_gas_used_total Gas used by mined transactions.\n# TYPE sluice_daemon_gas_used_total counter\nsluice_daemon_gas_used_total {}\n",
                m.gas_used
            );
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_values_and_labels() {
        let m = Metrics::default();
        m.set_pending(3, 1_500);
        m.batch("settle_batch", 100_000);
        m.batch("settle_batch", 50_000);
        m.batch("close", 70_000);
        m.transaction("mined");
        m.error("feed");
        m.scan_ok(120, 100);
        let text = m.render();
        for line in [
            "sluice_daemon_channels_pending 3",
            "sluice_daemon_unsettled_amount 1500",
            "sluice_daemon_batches_total{kind=\"settle_batch\"} 2",
            "sluice_daemon_batches_total{kind=\"close\"} 1",
            "sluice_daemon_transactions_total{outcome=\"mined\"} 1",
            "sluice_daemon_errors_total{kind=\"feed\"} 1",
            "sluice_daemon_gas_used_total 220000",
            "sluice_daemon_chain_lag_blocks 20",
            "sluice_daemon_last_block 100",
            "# TYPE sluice_daemon_gas_used_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn health_needs_a_recent_feed_pull_and_scan() {
        let m = Metrics::default();
        // The staleness limit is a logic input here (no speed is measured).
        let stale_after = Duration::from_secs(60);
        assert!(m.unhealthy(stale_after).is_some());
        m.feed_ok("a", 1);
        assert!(m.unhealthy(stale_after).unwrap().starts_with("scan"));
        m.scan_ok(1, 1);
        assert_eq!(m.unhealthy(stale_after), None);
        // Stale without an error (the round busy, e.g. waiting for a transaction): the reason
        // says how old, not "none yet".
        let two_minutes_ago = Instant::now() - Duration::from_secs(120);
        m.with(|m| m.scan_ok = Some(two_minutes_ago));
        assert_eq!(
            m.unhealthy(stale_after).as_deref(),
            Some("scan: last successful scan 120 s ago")
        );
        m.with(|m| m.feeds.get_mut("a").expect("feed a").ok = Some(two_minutes_ago));
        assert_eq!(
            m.unhealthy(stale_after).as_deref(),
            Some("feed a: last successful pull 120 s ago")
        );
        let failing = Metrics::default();
        failing.feed_failed("a", "refused".into());
        assert_eq!(
            failing.unhealthy(stale_after).as_deref(),
            Some("feed a: refused")
        );
        assert!(
            failing
                .render()
                .contains("sluice_daemon_errors_total{kind=\"feed\"} 1")
        );
    }

    #[test]
    fn each_feed_has_its_cursor_errors_and_health() {
        let m = Metrics::default();
        m.register_feed("a");
        m.register_feed("b");
        m.scan_ok(1, 1);
        assert_eq!(
            m.unhealthy(Duration::from_secs(60)).as_deref(),
            Some("feed a: no successful pull yet; feed b: no successful pull yet")
        );
        m.feed_ok("a", 7);
        m.feed_failed("b", "connection refused".into());
        m.feed_failed("b", "connection refused".into());
        assert_eq!(
            m.unhealthy(Duration::from_secs(60)).as_deref(),
            Some("feed b: connection refused"),
            "a healthy feed is not named; the failing one is"
        );
        let text = m.render();
        for line in [
            "sluice_daemon_feed_cursor{feed=\"a\"} 7",
            "sluice_daemon_feed_cursor{feed=\"b\"} 0",
            "sluice_daemon_feed_errors_total{feed=\"a\"} 0",
            "sluice_daemon_feed_errors_total{feed=\"b\"} 2",
            "sluice_daemon_errors_total{kind=\"feed\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.feed_ok("b", 3);
        assert_eq!(m.unhealthy(Duration::from_secs(60)), None);
    }
}
