//! The workspace's binaries and examples, built fresh for process tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// `target/<profile>/<relative>` (e.g. `examples/provider`, `sluice-settle-daemon`), after
/// `cargo build --workspace --bins --examples` has run once in this process.
///
/// Always through cargo: a binary left by an older build would test old code. The whole
/// workspace, because that is the feature resolution `cargo test --workspace` built it with, so
/// under `make test` the build is a no-op rather than a second compilation of the engine.
pub fn workspace_binary(relative: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--bins", "--examples"])
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build --workspace --bins --examples"
        );
    });
    let binary = profile_dir().join(relative);
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}
