//! `sluice-settle-daemon run --config settle.toml`: the payee's settlement daemon as a service.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG` filters, default `info`; `SLUICE_LOG_FORMAT=json`
//! for JSON lines). Once the metrics listener is bound it prints `READY <addr>` on stdout.
//! SIGTERM or SIGINT stops planning, leaves any in-flight transaction recorded (a restart
//! finishes it), closes the state database and exits 0.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_settle_daemon::config::Config;
use sluice_settle_daemon::runner;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-settle-daemon",
    version,
    about = "Sluice settlement daemon: settles and closes payment channels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run {
        /// The configuration file (TOML; SLUICE_DAEMON_* variables override keys).
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let Command::Run { config } = cli.command;
    let config = match Config::load(&config) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, path = %config.display(), "configuration");
            return ExitCode::from(2);
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received");
        let _ = stop.send(true);
    });
    let result = runner::run(config, stopped, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY {addr}");
        let _ = out.flush();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "daemon failed");
            ExitCode::FAILURE
        }
    }
}
