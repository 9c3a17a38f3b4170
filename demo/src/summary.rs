//! The summary table printed at the end of a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;
use sluice_engine::client::ClientStats;

use crate::Args;
use crate::agents::AgentReport;
use crate::chain::TOKEN_DECIMALS;
use crate::reconcile::{Balances, ChainChannel, Check, TxSummary, percentile};
use crate::services::Metrics;

/// Everything the summary shows.
pub(crate) struct Summary<'a> {
    pub(crate) args: &'a Args,
    pub(crate) run_dir: &'a Path,
    pub(crate) reports: &'a [AgentReport],
    pub(crate) stats: &'a [ClientStats],
    pub(crate) chain_channels: &'a BTreeMap<B256, ChainChannel>,
    pub(crate) txs: &'a TxSummary,
    pub(crate) before: &'a Balances,
    pub(crate) after: &'a Balances,
    pub(crate) checks: &'a [Check],
    pub(crate) metrics: Option<&'a Metrics>,
    pub(crate) errors: &'a [String],
    pub(crate) agents_elapsed: Duration,
    pub(crate) total_elapsed: Duration,
    pub(crate) channels: usize,
    pub(crate) unsettled_at_close: usize,
}

impl Summary<'_> {
    /// Prints the table; returns whether every check passed.
    pub(crate) fn print(&self) -> bool {
        let a = self.args;
        let requests: u64 = self.reports.iter().map(|r| r.requests_ok).sum();
        let sse_tokens: u64 = self.reports.iter().map(|r| r.tokens).sum();
        let streams: u64 = self.reports.iter().map(|r| r.streams_ok).sum();
        let vouchers: u64 = self.stats.iter().map(|s| s.vouchers_signed).sum();
        let opens: u64 = self.stats.iter().map(|s| s.opens).sum();
        let top_ups_chain: u64 = self.chain_channels.values().map(|c| c.top_ups).sum();
        let mut all: Vec<Duration> = self
            .reports
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        // The first request of each agent opens its channel (two transactions): shown apart.
        let mut steady: Vec<Duration> = self
            .reports
            .iter()
            .flat_map(|r| r.latencies.iter().skip(1).copied())
            .collect();
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".into(),
                |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
            )
        };
        let settled_total: u128 = self
            .chain_channels
            .values()
            .filter_map(|c| c.closed)
            .map(|(p, _)| p)
            .sum();
        let per_channel = |gas: u64| {
            if self.channels == 0 {
                "-".to_owned()
            } else {
                group(gas / self.channels as u64)
            }
        };
        let per_item = self
            .txs
            .settle_gas
            .checked_div(self.txs.settle_items)
            .map_or_else(|| "-".to_owned(), group);

        let rule = "=".repeat(96);
        println!(
            "\n{rule}\nSLUICE DEMO SUMMARY  (run dir {})\n{rule}",
            self.run_dir.display()
        );
        let row = |k: &str, v: String| println!("  {k:<34} {v}");
        row(
            "agents (channels)",
            format!(
                "{} ({} channels, {} on small deposits that top up)",
                a.agents,
                self.channels,
                self.reports
                    .iter()
                    .filter(|r| a.topup_every > 0 && r.index % a.topup_every == a.topup_every - 1)
                    .count()
            ),
        );
        row(
            "paid requests",
            format!(
                "{} ok of {} ({:.0} req/s over {:.1}s of agent time)",
                group(requests),
                group(a.requests * a.agents as u64),
                requests as f64 / self.agents_elapsed.as_secs_f64().max(1e-9),
                self.agents_elapsed.as_secs_f64()
            ),
        );
        row(
            "SSE streams / tokens",
            format!("{streams} streams, {} tokens", group(sse_tokens)),
        );
        row("vouchers signed (clients)", group(vouchers));
        row(
            "latency p50 / p99 (all requests)",
            format!(
                "{} / {}",
                ms(percentile(&mut all, 50)),
                ms(percentile(&mut all, 99))
            ),
        );
        row(
            "latency p50 / p99 (after open)",
            format!(
                "{} / {}",
                ms(percentile(&mut steady, 50)),
                ms(percentile(&mut steady, 99))
            ),
        );
        row(
            "channel opens / top-ups",
            format!("{opens} opens, {top_ups_chain} top-ups on chain"),
        );
        row(
            "settle transactions (settleBatch)",
            format!(
                "{} txs, {} channel settlements (largest batch {}), {} gas",
                self.txs.settle_txs,
                self.txs.settle_items,
                self.txs.largest_batch,
                group(self.txs.settle_gas)
            ),
        );
        row(
            "fully settled before the close",
            format!(
                "{} of {} channels (the close pays any rest)",
                self.channels.saturating_sub(self.unsettled_at_close),
                self.channels
            ),
        );
        row(
            "close transactions",
            format!(
                "{} txs, {} gas",
                self.txs.close_txs,
                group(self.txs.close_gas)
            ),
        );
        row(
            "gas per channel",
            format!(
                "{} settle + {} close = {} (per settleBatch item {})",
                per_channel(self.txs.settle_gas),
                per_channel(self.txs.close_gas),
                per_channel(self.txs.settle_gas + self.txs.close_gas),
                per_item
            ),
        );
        if let Some(m) = self.metrics.filter(|m| !m.is_empty()) {
            let d = m.daemon_counts();
            row(
                "daemon /metrics",
                format!(
                    "{} settle batches, {} closes, {} gas, {} errors (retried), {} channels pending",
                    d.settle_batches,
                    d.closes,
                    group(d.gas_used),
                    d.errors,
                    d.pending_channels
                ),
            );
        }
        row("paid to the payee", tokens_of(settled_total));
        println!(
            "  {:<34} {:>16} {:>16} {:>17}",
            "balances (DUSD)", "before", "after", "change"
        );
        let balance_row = |who: &str, before: u128, after: u128| {
            println!(
                "    {who:<32} {:>16} {:>16} {:>17}",
                tokens(before),
                tokens(after),
                signed(before, after)
            );
        };
        balance_row("payee", self.before.payee, self.after.payee);
        balance_row(
            &format!("payers ({})", self.after.payers.len()),
            self.before.payers_total(),
            self.after.payers_total(),
        );
        balance_row("escrow", self.before.escrow, self.after.escrow);
        println!("  reconciliation");
        for check in self.checks {
            println!(
                "    {}  {}  [{}]",
                if check.pass { "PASS" } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        if !self.errors.is_empty() {
            println!("  errors (first 10 of {})", self.errors.len());
            for e in self.errors.iter().take(10) {
                println!("    {e}");
            }
        }
        let pass = !self.checks.is_empty() && self.checks.iter().all(|c| c.pass);
        println!(
            "{rule}\nRESULT: {}  ({} of {} checks passed, {:.1}s in total)\n{rule}",
            if pass { "PASS" } else { "FAIL" },
            self.checks.iter().filter(|c| c.pass).count(),
            self.checks.len(),
            self.total_elapsed.as_secs_f64()
        );
        pass
    }
}

/// `1234567` -> `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Token base units as a decimal amount (`1500000` -> `1.500000`).
pub(crate) fn tokens(amount: u128) -> String {
    let scale = 10u128.pow(u32::from(TOKEN_DECIMALS));
    format!(
        "{}.{:0width$}",
        amount / scale,
        amount % scale,
        width = usize::from(TOKEN_DECIMALS)
    )
}

fn tokens_of(amount: u128) -> String {
    format!("{} DUSD", tokens(amount))
}

fn signed(before: u128, after: u128) -> String {
    if after >= before {
        format!("+{}", tokens(after - before))
    } else {
        format!("-{}", tokens(before - after))
    }
}

/// The current UTC time as `YYYYMMDD-HHMMSS` (for run directory names).
pub(crate) fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    stamp_of(secs)
}

fn stamp_of(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_counts_are_formatted_for_people() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(tokens(0), "0.000000");
        assert_eq!(tokens(1_500_000), "1.500000");
        assert_eq!(tokens(42), "0.000042");
        assert_eq!(signed(10, 4), "-0.000006");
        assert_eq!(signed(4, 10), "+0.000006");
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(stamp_of(0), "19700101-000000");
        // 2000-02-29 12:34:56 UTC (a leap day).
        assert_eq!(stamp_of(951_827_696), "20000229-123456");
        // 2026-11-21 15:51:42 UTC.
        assert_eq!(stamp_of(1_795_276_302), "20261121-155142");
    }
}
