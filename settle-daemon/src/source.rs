//! Where the daemon's input comes from: one [`SettlementFeed`] per engine node.
//!
//! A feed gives pages of the engine's settlement feed after a cursor and takes the daemon's
//! notifications for that node (a channel finalized or with a close request on chain). Two
//! implementations:
//!
//! - [`HttpFeed`]: a remote node, over its admin listener (`GET /feed` with the bearer token,
//!   `POST /channels/{id}/refresh`);
//! - [`EmbeddedFeed`]: an [`Engine`] in the same process, read with
//!   [`FeedSource::read_feed`] and woken by [`FeedSource::subscribe_feed`] (no polling, no
//!   HTTP), notified by calling [`Engine::refresh_channel`].
//!
//! Both return the engine's own wire type ([`FeedPageDto`]) after the same cursor-contract
//! checks, so the runner stores every feed's pages the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::Engine;
use sluice_engine::chain::ChainClient;
use sluice_engine::feed::FeedCursor;
use sluice_engine::http::feed::{FeedPageDto, FeedSource};
use sluice_engine::protocol::Timestamp;
use sluice_engine::store::ChannelStore;

use crate::config::{FeedConfig, FeedToken, check_feed_name};
use crate::feed_client::{FeedClient, FeedClientError, check_page};
use crate::policy::ChannelId;

/// A boxed, sendable future (the trait is used as `Arc<dyn SettlementFeed>`).
pub type FeedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One engine node's settlement feed, as the daemon follows it.
pub trait SettlementFeed: Send + Sync + 'static {
    /// The feed's stable name: it keys the feed's durable cursor and labels its metrics.
    fn name(&self) -> &str;

    /// The longest a [`SettlementFeed::fetch`] waits for entries when there are none (the
    /// health check allows for it).
    fn max_wait(&self) -> Duration;

    /// The next page after `after`: at once when entries exist, else after waiting up to
    /// [`SettlementFeed::max_wait`] for one (an empty page when none came). The page obeys the
    /// cursor contract (entries ascending within `(after, next]`, no amount without a
    /// signature) or the call fails.
    fn fetch(&self, after: u64) -> FeedFuture<'_, Result<FeedPageDto, FeedClientError>>;

    /// Tells the node to re-read `channel` from the escrow (it closed, or a close was
    /// requested). `true` when the node took it (or does not know the channel): nothing more
    /// to tell it.
    fn refresh(&self, channel: ChannelId) -> FeedFuture<'_, bool>;
}

/// A remote engine node over HTTP: its admin `GET /feed` and `POST /channels/{id}/refresh`.
#[derive(Debug, Clone)]
pub struct HttpFeed {
    name: String,
    client: FeedClient,
    http: reqwest::Client,
    admin_base: String,
    token: FeedToken,
    wait: Duration,
}

/// Why a feed could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FeedSetupError {
    /// The feed's name is not a plain name.
    #[error(transparent)]
    Name(#[from] crate::config::ConfigError),
    /// `url` does not end in `/feed`, so the engine's admin base cannot be derived.
    #[error("feed url {url} does not end in /feed")]
    FeedUrl {
        /// The URL.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] FeedClientError),
    /// Two feeds share a name.
    #[error("two feeds are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// No feed at all.
    #[error("the daemon needs at least one feed")]
    NoFeeds,
}

impl HttpFeed {
    /// A feed named `name` reading `config.url` with `token` (loaded from `config.token`).
    pub fn new(name: &str, config: &FeedConfig, token: FeedToken) -> Result<Self, FeedSetupError> {
        check_feed_name(name)?;
        let admin_base = config
            .url
            .strip_suffix("/feed")
            .ok_or_else(|| FeedSetupError::FeedUrl {
                url: config.url.clone(),
            })?
            .to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(FeedClientError::Client)?;
        Ok(Self {
            name: name.to_owned(),
            client: FeedClient::new(config, token.clone())?,
            http,
            admin_base,
            token,
            wait: Duration::from_millis(u64::from(config.wait_ms)),
        })
    }

    async fn post_refresh(&self, channel: ChannelId) -> bool {
        let url = format!("{}/channels/{channel}/refresh", self.admin_base);
        match self
            .http
            .post(&url)
            .bearer_auth(self.token.expose())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
                true
            }
            Ok(r) => {
                tracing::warn!(feed = %self.name, %channel, status = r.status().as_u16(), "engine refresh refused");
                false
            }
            Err(e) => {
                tracing::warn!(feed = %self.name, %channel, error = %e, "engine refresh failed");
                false
            }
        }
    }
}

impl SettlementFeed for HttpFeed {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_wait(&self) -> Duration {
        self.wait
    }

    fn fetch(&self, after: u64) -> FeedFuture<'_, Result<FeedPageDto, FeedClientError>> {
        Box::pin(self.client.fetch(after))
    }

    fn refresh(&self, channel: ChannelId) -> FeedFuture<'_, bool> {
        Box::pin(self.post_refresh(channel))
    }
}

/// An [`Engine`] in the same process (a provider that embeds the engine and the daemon).
///
/// Pages come from the engine's store ([`FeedSource::read_feed`]); an empty read waits on
/// [`FeedSource::subscribe_feed`] (woken by the next durable entry, up to the wait given) and
/// reads again. Notifications call [`Engine::refresh_channel`].
pub struct EmbeddedFeed<S, C> {
    name: String,
    engine: Arc<Engine<S, C>>,
    page_limit: usize,
    wait: Duration,
}

impl<S, C> std::fmt::Debug for EmbeddedFeed<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedFeed")
            .field("name", &self.name)
            .field("page_limit", &self.page_limit)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<S: ChannelStore + 'static, C: ChainClient + 'static> EmbeddedFeed<S, C> {
    /// A feed named `name` over `engine`: pages of at most `page_limit` entries (clamped to
    /// 1..=1000), an empty read waiting up to `wait` for the next entry.
    pub fn new(
        name: &str,
        engine: Arc<Engine<S, C>>,
        page_limit: usize,
        wait: Duration,
    ) -> Result<Self, FeedSetupError> {
        check_feed_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            engine,
            page_limit: page_limit.clamp(1, sluice_engine::http::feed::MAX_PAGE_LIMIT),
            wait,
        })
    }

    async fn read(&self, after: u64) -> Result<FeedPageDto, FeedClientError> {
        let cursor = FeedCursor::new(after);
        let source: &Engine<S, C> = &self.engine;
        let mut page = FeedSource::read_feed(source, cursor, self.page_limit)
            .map_err(|e| FeedClientError::Store(e.to_string()))?;
        if page.entries.is_empty() && !self.wait.is_zero() {
            // Subscribing after the read loses nothing: the subscription compares the store's
            // durable watermark, which covers any entry written since the read.
            let mut subscription = FeedSource::subscribe_feed(source);
            if let Ok(Some(_)) =
                tokio::time::timeout(self.wait, subscription.wait_beyond(cursor)).await
            {
                page = FeedSource::read_feed(source, cursor, self.page_limit)
                    .map_err(|e| FeedClientError::Store(e.to_string()))?;
            }
        }
        let page = FeedPageDto::from(&page);
        check_page(after, &page)?;
        Ok(page)
    }

    async fn notify(&self, channel: ChannelId) -> bool {
        let Some(now) = Timestamp::from_system_time(std::time::SystemTime::now()) else {
            return false;
        };
        match self.engine.refresh_channel(&channel, now).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(feed = %self.name, %channel, error = %e, "engine refresh failed");
                false
            }
        }
    }
}

impl<S: ChannelStore + 'static, C: ChainClient + 'static> SettlementFeed for EmbeddedFeed<S, C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_wait(&self) -> Duration {
        self.wait
    }

    fn fetch(&self, after: u64) -> FeedFuture<'_, Result<FeedPageDto, FeedClientError>> {
        Box::pin(self.read(after))
    }

    fn refresh(&self, channel: ChannelId) -> FeedFuture<'_, bool> {
        Box::pin(self.notify(channel))
    }
}
