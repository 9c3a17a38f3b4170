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
//! | `sluice_daemon_feed_cursor` | gauge | the durable feed cursor |

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
    feed_cursor: u64,
    feed_ok: Option<Instant>,
    scan_ok: Option<Instant>,
    feed_error: Option<String>,
    scan_error: Option<String>,
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

    /// Records a successful feed pull.
    pub fn feed_ok(&self, cursor: u64) {
        self.with(|m| {
            m.feed_ok = Some(Instant::now());
            m.feed_error = None;
            m.feed_cursor = cursor;
        });
    }

    /// Records a failed feed pull.
    pub fn feed_failed(&self, reason: String) {
        self.with(|m| {
            *m.errors.entry("feed").or_default() += 1;
            m.feed_error = Some(reason);
        });
    }

    /// `None` when healthy: the last feed pull and the last event scan both succeeded within
    /// `stale_after`; otherwise the reason.
    pub fn unhealthy(&self, stale_after: Duration) -> Option<String> {
        self.with(|m| {
            let fresh = |at: Option<Instant>| at.is_some_and(|t| t.elapsed() <= stale_after);
            if !fresh(m.feed_ok) {
                return Some(match &m.feed_error {
                    Some(e) => format!("feed: {e}"),
                    None => "feed: no successful pull yet".into(),
                });
            }
            if !fresh(m.scan_ok) {
                return Some(match &m.scan_error {
                    Some(e) => format!("scan: {e}"),
                    None => "scan: no successful scan yet".into(),
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
            gauge(
                "feed_cursor",
                "The durable settlement feed cursor.",
                m.feed_cursor.to_string(),
            );
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
        assert!(m.unhealthy(Duration::from_secs(60)).is_some());
        m.feed_ok(1);
        assert!(
            m.unhealthy(Duration::from_secs(60))
                .unwrap()
                .starts_with("scan")
        );
        m.scan_ok(1, 1);
        assert_eq!(m.unhealthy(Duration::from_secs(60)), None);
        let failing = Metrics::default();
        failing.feed_failed("refused".into());
        assert_eq!(
            failing.unhealthy(Duration::from_secs(60)).as_deref(),
            Some("feed: refused")
        );
        assert!(
            failing
                .render()
                .contains("sluice_daemon_errors_total{kind=\"feed\"} 1")
        );
    }
}
