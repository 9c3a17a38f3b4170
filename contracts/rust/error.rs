//! The crate's error type.

use crate::SignatureFault;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum ContractsError {
    /// Deploying a contract failed (transaction rejected, reverted, or no receipt).
    #[error("deploying {contract} failed: {source}")]
    Deploy {
        /// Which contract.
        contract: &'static str,
        /// The underlying contract-call error (boxed: it is large and this path is cold).
        #[source]
        source: Box<alloy::contract::Error>,
    },
    /// A voucher signature cannot be put into a `settleBatch` item.
    #[error("voucher signature rejected ({fault:?}): {len} bytes")]
    Signature {
        /// What is wrong with it.
        fault: SignatureFault,
        /// Its length in bytes.
        len: usize,
    },
    /// No anvil binary where the tests look for it.
    #[error(
        "anvil not found at {path}: run `make tools` at the repository root (or set SLUICE_ANVIL)"
    )]
    AnvilMissing {
        /// The path that was tried.
        path: std::path::PathBuf,
    },
}
