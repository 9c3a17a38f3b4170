//! The example provider (`engine/examples/provider.rs`) as a binary the process tests spawn.

use std::path::PathBuf;
use std::process::Command;

/// The example binary (`target/<profile>/examples/provider`), built fresh by cargo first.
pub fn provider_binary() -> PathBuf {
    sluice_testkit::workspace_binary("examples/provider")
}

/// The example provider running as a process on a [`TestChain`](super::anvil::TestChain), with
/// its admin listener; killed on drop.
pub struct ExampleProvider {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT` of the public listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// The payee every channel pays.
    pub payee: alloy::primitives::Address,
    _store: Option<tempfile::TempDir>,
}

/// The admin bearer token of [`ExampleProvider`]s.
pub const ADMIN_TOKEN: &str = "admin-token-for-client-tests-0123456789abcdef";

impl ExampleProvider {
    /// Starts the provider for `payee` with `price` per unit and the given extra flags.
    pub fn start(
        chain: &super::anvil::TestChain,
        payee: alloy::primitives::Address,
        price: u128,
        extra: &[&str],
    ) -> Self {
        Self::start_on(chain, payee, price, "127.0.0.1:0", extra)
    }

    /// [`Self::start`] on a given public listen address (to restart a provider in place).
    pub fn start_on(
        chain: &super::anvil::TestChain,
        payee: alloy::primitives::Address,
        price: u128,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let path = store.path().join("store");
        let mut provider = Self::start_in(chain, payee, price, listen, &path, extra);
        provider._store = Some(store);
        provider
    }

    /// [`Self::start_on`] with the store in `store` (kept by the caller, so that a killed
    /// provider can be restarted on the same data).
    pub fn start_in(
        chain: &super::anvil::TestChain,
        payee: alloy::primitives::Address,
        price: u128,
        listen: &str,
        store: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(provider_binary())
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--rpc-url", chain.rpc_url().as_str()])
            .args(["--chain-id", &super::anvil::CHAIN_ID.to_string()])
            .args(["--escrow", &chain.escrow.to_string()])
            .args(["--token", &chain.token.to_string()])
            .args(["--recipient", &payee.to_string()])
            .arg("--store")
            .arg(store)
            .args(["--price", &price.to_string(), "--realm", "client.test"])
            .args(extra)
            .env("SLUICE_SECRET", "client-tests-provider-secret-0123456789")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("provider starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut line = || lines.next().expect("a line").expect("utf-8");
        let base = line()
            .strip_prefix("LISTENING ")
            .expect("LISTENING line first")
            .to_owned();
        let admin = line()
            .strip_prefix("ADMIN ")
            .expect("ADMIN line")
            .to_owned();
        Self {
            child,
            base,
            admin,
            payee,
            _store: None,
        }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The engine's view of a channel (admin `GET /channels/{id}`), `None` if unknown.
    pub async fn channel(&self, id: impl std::fmt::Display) -> Option<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/channels/{id}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin answers");
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200, "admin channel view");
        Some(response.json().await.expect("admin JSON"))
    }
}

impl ExampleProvider {
    /// Kills the process at once (SIGKILL on Unix: no shutdown code runs) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the provider");
        self.child.wait().expect("reap the provider");
    }
}

impl Drop for ExampleProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
