//! The demo binary end to end at a tiny size: real anvil, the example provider and the
//! settlement daemon as processes, real agents; it must reconcile with every check `PASS` and
//! exit 0. Keeps `make test` from letting `make demo` rot.

use std::process::Command;

/// The demo, after what it starts was built fresh (a binary left by an older build would test
/// yesterday's provider or daemon).
fn demo() -> Command {
    for binary in ["examples/provider", "sluice-settle-daemon"] {
        sluice_testkit::workspace_binary(binary);
    }
    Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
}

#[test]
fn a_tiny_demo_reconciles_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let output = demo()
        .args([
            "--agents",
            "3",
            "--requests",
            "5",
            "--streams",
            "1",
            "--tokens",
            "20",
        ])
        .args([
            "--topup-every",
            "2",
            "--batch-size",
            "2",
            "--settle-units",
            "3",
        ])
        .arg("--run-dir")
        .arg(dir.path())
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains("RESULT: PASS"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Every reconciliation check printed a PASS line.
    let passes = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("PASS "))
        .count();
    assert!(passes >= 10, "{passes} PASS lines\n{stdout}");
    // The figures are the workload's: 3 agents x 5 requests, 1 stream x 20 tokens each.
    assert!(stdout.contains("15 ok of 15"), "{stdout}");
    assert!(stdout.contains("3 streams, 60 tokens"), "{stdout}");
    // The run directory holds every process's logs and the daemon's config and secrets.
    for file in [
        "anvil.stdout.log",
        "provider.stdout.log",
        "provider.stderr.log",
        "daemon.stdout.log",
        "daemon/settle.toml",
        "daemon/payee.key",
        "daemon/feed-token",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let config = std::fs::read_to_string(dir.path().join("daemon/settle.toml")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("daemon/payee.key")).unwrap();
    assert!(
        !config.contains(key.trim()),
        "the key is only in its own file"
    );
}

#[test]
fn bad_flags_are_refused_with_a_clear_message_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-demo"))
        .args(["--agents", "0"])
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--agents: must be at least 1"), "{stderr}");
    assert!(!dir.path().join("run").exists(), "nothing was started");
}
