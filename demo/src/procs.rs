//! Child processes (anvil, the provider, the daemon): stdout and stderr go to log files in the
//! run directory, the ready line is awaited as an event (never a fixed sleep), and the process
//! is stopped when its [`ChildGuard`] is dropped, also on an error, a panic or Ctrl-C.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::DemoError;

/// How long a stopped child gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A running child process, stopped (SIGTERM, then SIGKILL after a grace period) on drop.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    /// How long the child gets to exit after SIGTERM.
    term_grace: Duration,
}

impl ChildGuard {
    /// The program's name, for messages.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The file its stdout is copied to.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the process: SIGTERM (a graceful stop flushes the provider's and the daemon's sled
    /// stores), then SIGKILL if it has not exited within the grace period. Returns whether it
    /// exited on its own after SIGTERM.
    pub(crate) fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        // No signal crate (and no unsafe): the system's `kill` sends SIGTERM.
        let termed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + self.term_grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What to start.
pub(crate) struct Spawn<'a> {
    /// The program's name, for messages and log file names.
    pub(crate) name: &'static str,
    /// The command, with its arguments and environment set.
    pub(crate) command: Command,
    /// The run directory: the logs go to `<name>.stdout.log` and `<name>.stderr.log` in it.
    pub(crate) run_dir: &'a Path,
    /// The stdout line prefixes to wait for, in order; the rest of each line is returned.
    pub(crate) ready: &'static [&'static str],
    /// How long to wait for all of them.
    pub(crate) timeout: Duration,
}

/// Starts a child and waits for its ready lines. Returns the guard and the text after each
/// awaited prefix.
pub(crate) async fn spawn(spec: Spawn<'_>) -> Result<(ChildGuard, Vec<String>), DemoError> {
    let Spawn {
        name,
        mut command,
        run_dir,
        ready,
        timeout,
    } = spec;
    let out_path = run_dir.join(format!("{name}.stdout.log"));
    let err_path = run_dir.join(format!("{name}.stderr.log"));
    let stderr =
        File::create(&err_path).map_err(|e| DemoError::io("creating log", &err_path, e))?;
    let mut out_log =
        File::create(&out_path).map_err(|e| DemoError::io("creating log", &out_path, e))?;
    let program = PathBuf::from(command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|source| DemoError::Spawn {
            name,
            path: program,
            source,
        })?;
    let stdout = child.stdout.take();
    let mut guard = ChildGuard {
        name,
        child: Some(child),
        log: out_path.clone(),
        term_grace: TERM_GRACE,
    };
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
    if let Some(stdout) = stdout {
        // A plain thread copies stdout to the log for the child's whole life and hands each line
        // to the waiter until nobody listens any more.
        std::thread::spawn(move || {
            let mut forward = Some(lines_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out_log, "{line}");
                if let Some(tx) = &forward
                    && tx.send(line).is_err()
                {
                    forward = None;
                }
            }
        });
    }
    let wait = async {
        let mut found = Vec::with_capacity(ready.len());
        for prefix in ready {
            loop {
                match lines_rx.recv().await {
                    Some(line) => {
                        if let Some(rest) = line.trim().strip_prefix(prefix) {
                            found.push(rest.trim().to_owned());
                            break;
                        }
                    }
                    None => {
                        return Err(DemoError::NotReady {
                            name,
                            expected: prefix,
                            log: err_path.clone(),
                        });
                    }
                }
            }
        }
        Ok(found)
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(found)) => Ok((guard, found)),
        Ok(Err(error)) => {
            guard.stop();
            Err(error)
        }
        Err(_) => {
            guard.stop();
            Err(DemoError::Timeout {
                what: format!("{name} to print {ready:?} (logs: {})", out_path.display()),
                after: timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    fn alive(pid: u32) -> bool {
        Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    #[tokio::test]
    async fn ready_lines_are_awaited_in_order_and_stdout_goes_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut guard, found) = spawn(Spawn {
            name: "echoer",
            command: sh("echo noise; echo 'LISTENING http://a'; echo 'ADMIN http://b'; echo err >&2; exec sleep 30"),
            run_dir: dir.path(),
            ready: &["LISTENING", "ADMIN"],
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        assert_eq!(found, vec!["http://a".to_owned(), "http://b".to_owned()]);
        assert!(guard.is_running());
        let pid = guard.child.as_ref().unwrap().id();
        assert!(guard.stop(), "sleep exits on SIGTERM");
        assert!(!alive(pid));
        assert!(!guard.is_running());
        let log = std::fs::read_to_string(dir.path().join("echoer.stdout.log")).unwrap();
        assert!(
            log.starts_with("noise\nLISTENING http://a\nADMIN http://b\n"),
            "{log}"
        );
        let err = std::fs::read_to_string(dir.path().join("echoer.stderr.log")).unwrap();
        assert_eq!(err, "err\n");
    }

    #[tokio::test]
    async fn a_child_that_exits_before_its_ready_line_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let error = spawn(Spawn {
            name: "quitter",
            command: sh("echo starting; exit 3"),
            run_dir: dir.path(),
            ready: &["READY"],
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                DemoError::NotReady {
                    name: "quitter",
                    expected: "READY",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_silent_child_times_out_and_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let error = spawn(Spawn {
            name: "silent",
            command: sh(&script),
            run_dir: dir.path(),
            ready: &["READY"],
            timeout: Duration::from_millis(300),
        })
        .await
        .unwrap_err();
        assert!(matches!(error, DemoError::Timeout { .. }), "{error}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "the timed-out child was stopped");
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_child_even_if_it_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (guard, _) = spawn(Spawn {
            name: "stubborn",
            command: sh("trap '' TERM; echo READY; while true; do sleep 0.05; done"),
            run_dir: dir.path(),
            ready: &["READY"],
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        let pid = guard.child.as_ref().unwrap().id();
        assert!(alive(pid));
        let mut guard = guard;
        guard.term_grace = Duration::from_millis(200);
        drop(guard);
        assert!(!alive(pid), "killed after the SIGTERM grace period");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = spawn(Spawn {
            name: "ghost",
            command: Command::new(dir.path().join("no-such-program")),
            run_dir: dir.path(),
            ready: &["READY"],
            timeout: Duration::from_secs(1),
        })
        .await
        .unwrap_err();
        assert!(
            matches!(error, DemoError::Spawn { name: "ghost", .. }),
            "{error}"
        );
    }
}
