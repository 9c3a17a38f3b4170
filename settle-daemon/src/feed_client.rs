//! Reading the engine's settlement feed, `GET /feed`, over HTTP with the bearer token.
//!
//! [`FeedClient::pull`] reads one page after the daemon's durable cursor, checks it, stores its
//! vouchers and the new cursor in one atomic write ([`DaemonState::apply_feed_page`]) and
//! returns the entries. The wire types are the engine's own ([`FeedPageDto`]), so the two
//! sides cannot drift. [`view_from_entry`] turns an entry into the policy's [`ChannelView`].

use std::time::Duration;

use alloy_primitives::B256;
use sluice_engine::http::feed::{FeedEntryDto, FeedPageDto};
use sluice_engine::store::ChannelStatus;

use crate::config::{FeedConfig, FeedToken};
use crate::policy::{ChannelView, EngineStatus, Voucher};
use crate::state::{DaemonState, StateError};

/// How much longer than the long-poll a request may take before it is abandoned.
const REQUEST_SLACK: Duration = Duration::from_secs(10);
/// The longest error body kept for a log line.
const MAX_BODY_ECHO: usize = 256;

/// Why a feed read failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedClientError {
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not complete (connection refused, timeout, reset...).
    #[error("feed request to {url} failed: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The engine refused the token (`401`).
    #[error("the engine refused the feed token (401)")]
    Unauthorized,
    /// Any other non-200 answer.
    #[error("feed answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body (an RFC 9457 problem for bad requests).
        body: String,
    },
    /// The body is not a feed page.
    #[error("feed page is not valid JSON for the feed contract: {0}")]
    Decode(#[from] serde_json::Error),
    /// The page breaks the cursor contract (entries must lie in `(after, next]`, ascending).
    #[error("feed page breaks the cursor contract: asked after {after}, got {detail}")]
    CursorContract {
        /// The cursor asked after.
        after: u64,
        /// What was wrong.
        detail: String,
    },
    /// Storing the page failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// An in-process engine's store could not be read ([`crate::source::EmbeddedFeed`]).
    #[error("reading the engine's feed failed: {0}")]
    Store(String),
}

impl FeedClientError {
    /// Whether retrying later may succeed: transport failures and server-side (5xx) or
    /// throttling (429) answers, and an in-process engine's store read. A refused token, a bad request, a broken page or a local
    /// database failure need an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Store(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Client(_)
            | Self::Unauthorized
            | Self::Decode(_)
            | Self::CursorContract { .. }
            | Self::State(_) => false,
        }
    }
}

/// A client of one engine's `GET /feed`.
#[derive(Debug, Clone)]
pub struct FeedClient {
    http: reqwest::Client,
    url: String,
    token: FeedToken,
    page_limit: u32,
    wait_ms: u32,
}

impl FeedClient {
    /// A client for `config.url` with `token` (loaded from `config.token`).
    pub fn new(config: &FeedConfig, token: FeedToken) -> Result<Self, FeedClientError> {
        let timeout = Duration::from_millis(u64::from(config.wait_ms)) + REQUEST_SLACK;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(FeedClientError::Client)?;
        Ok(Self {
            http,
            url: config.url.clone(),
            token,
            page_limit: config.page_limit,
            wait_ms: config.wait_ms,
        })
    }

    /// Reads one page of entries after `after` (long-polling up to the configured wait when
    /// there is none) and checks the cursor contract.
    pub async fn fetch(&self, after: u64) -> Result<FeedPageDto, FeedClientError> {
        let url = format!(
            "{}?after={after}&limit={}&wait_ms={}",
            self.url, self.page_limit, self.wait_ms
        );
        let transport = |source| FeedClientError::Transport {
            url: self.url.clone(),
            source,
        };
        let response = self
            .http
            .get(&url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        match status {
            200 => {}
            401 => return Err(FeedClientError::Unauthorized),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let body = text.chars().take(MAX_BODY_ECHO).collect();
                return Err(FeedClientError::Status { status, body });
            }
        }
        let page: FeedPageDto = serde_json::from_slice(&body)?;
        check_page(after, &page)?;
        Ok(page)
    }

    /// Reads the page after `state`'s cursor, stores its vouchers and moves the cursor, in one
    /// atomic write; returns the entries for the caller's channel views.
    pub async fn pull(
        &self,
        state: &mut DaemonState,
    ) -> Result<Vec<FeedEntryDto>, FeedClientError> {
        let after = state.feed_cursor()?;
        let page = self.fetch(after).await?;
        let vouchers: Vec<_> = page
            .entries
            .iter()
            .filter_map(|e| {
                e.signature.map(|signature| {
                    (
                        e.channel_id,
                        Voucher {
                            amount: e.cumulative_amount,
                            signature,
                        },
                    )
                })
            })
            .collect();
        state.apply_feed_page(&vouchers, page.next.get())?;
        Ok(page.entries)
    }
}

pub(crate) fn check_page(after: u64, page: &FeedPageDto) -> Result<(), FeedClientError> {
    let broken = |detail: String| Err(FeedClientError::CursorContract { after, detail });
    let next = page.next.get();
    if next < after {
        return broken(format!("next {next}"));
    }
    let mut previous = after;
    for entry in &page.entries {
        let cursor = entry.cursor.get();
        if cursor <= previous || cursor > next {
            return broken(format!(
                "entry cursor {cursor} after {previous}, next {next}"
            ));
        }
        if entry.signature.is_none() && entry.cumulative_amount != 0 {
            return broken(format!("entry {cursor} has an amount but no signature"));
        }
        previous = cursor;
    }
    Ok(())
}

/// What the daemon adds to a feed entry to make a policy view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonFacts {
    /// The salt from the channel's `ChannelOpened` event, once seen.
    pub salt: Option<B256>,
    /// Since when the channel holds an unsettled voucher (unix seconds).
    pub first_unsettled_at: Option<u64>,
    /// The amount of a submitted, unconfirmed transaction for the channel.
    pub in_flight_amount: Option<u128>,
}

/// The policy's view of a feed entry plus the daemon's own facts.
pub fn view_from_entry(entry: &FeedEntryDto, facts: DaemonFacts) -> ChannelView {
    ChannelView {
        id: entry.channel_id,
        payer: entry.payer,
        payee: entry.payee,
        token: entry.token,
        salt: facts.salt,
        authorized_signer: entry.authorized_signer,
        voucher: entry.signature.map(|signature| Voucher {
            amount: entry.cumulative_amount,
            signature,
        }),
        settled: entry.settled,
        deposit: entry.deposit,
        status: match entry.status {
            ChannelStatus::Opening => EngineStatus::Opening,
            ChannelStatus::Open => EngineStatus::Open,
            ChannelStatus::Closing => EngineStatus::Closing,
            ChannelStatus::Closed => EngineStatus::Closed,
        },
        close_requested_at: (entry.close_requested_at != 0).then_some(entry.close_requested_at),
        first_unsettled_at: facts.first_unsettled_at,
        in_flight_amount: facts.in_flight_amount,
    }
}

#[cfg(test)]
mod tests;
