//! The example provider (`engine/examples/provider.rs`) as a binary the process tests spawn.

use std::path::PathBuf;
use std::process::Command;

/// The example binary next to this test's binary (`target/<profile>/examples/provider`), built
/// with cargo first if a filtered test run did not build it.
pub fn provider_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("provider");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "sluice-engine", "--example", "provider"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the example");
    }
    binary
}
