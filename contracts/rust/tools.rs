//! Locating the pinned local toolchain.

use std::path::PathBuf;

use crate::ContractsError;

/// The pinned anvil binary: `$SLUICE_ANVIL` if set (the Makefile exports it), else
/// `<repo>/tools/node_modules/.bin/anvil`. Errors with a hint to run `make tools` when the file
/// does not exist.
pub fn anvil_binary() -> Result<PathBuf, ContractsError> {
    let path = match std::env::var_os("SLUICE_ANVIL") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/node_modules/.bin/anvil"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(ContractsError::AnvilMissing { path })
    }
}
