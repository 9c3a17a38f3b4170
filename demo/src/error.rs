//! The demo's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that stops the demo before it can reconcile. A failed reconciliation is not an
/// error: it is a result (a `FAIL` line and exit status 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// A file or directory of the run could not be written or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A binary the demo starts is not where it was looked for.
    #[error("{name} not found at {path}: {hint}")]
    MissingBinary {
        /// Which program.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// A child process could not be spawned.
    #[error("starting {name} ({path}): {source}")]
    Spawn {
        /// Which program.
        name: &'static str,
        /// Its path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A child process exited (or closed its stdout) before printing its ready line.
    #[error("{name} exited before printing `{expected}`; see its log {log}")]
    NotReady {
        /// Which program.
        name: &'static str,
        /// The line prefix that was awaited.
        expected: &'static str,
        /// Its log file.
        log: PathBuf,
    },
    /// A child process exited while the demo still needed it.
    #[error("{name} exited unexpectedly; see its logs in {log}")]
    Exited {
        /// Which program.
        name: &'static str,
        /// Its stdout log (the stderr log is next to it).
        log: PathBuf,
    },
    /// Something did not happen before its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },
    /// A chain call (RPC, contract call, deployment) failed.
    #[error("chain: {what}: {detail}")]
    Chain {
        /// Which call.
        what: String,
        /// The underlying error, rendered.
        detail: String,
    },
    /// An HTTP call to the provider's admin listener or the daemon's metrics failed.
    #[error("http {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The payer client refused or failed an operation the demo needed.
    #[error("agent {agent}: {what}: {detail}")]
    Agent {
        /// The agent's index.
        agent: usize,
        /// The operation.
        what: &'static str,
        /// The client's error, rendered.
        detail: String,
    },
    /// An agent's task panicked or was cancelled (a bug: agents report failures, they do not
    /// panic).
    #[error("an agent task ended abnormally: {0}")]
    AgentTask(String),
    /// A flag value is out of range.
    #[error("--{flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

impl DemoError {
    /// A chain error from any displayable cause.
    pub(crate) fn chain(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Chain {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
