//! `chatd`: parses the command line, loads and checks the config, sets up logging and signals, runs
//! the server, and maps the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chatd::{Config, ConfigError, Server, Sources, telemetry};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Exit code for an unusable configuration (BSD `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;
/// Exit code when a second signal cuts shutdown short.
const EXIT_FORCED: i32 = 130;

/// The chatd WebSocket chat server.
///
/// Configuration layers, lowest first: built-in defaults, the TOML file (--config, CHATD_CONFIG, or
/// ./chat.toml if present), CHATD_* environment variables (CHATD_SERVER__PORT=9000), then --host/--port.
///
/// Exit codes: 0 clean shutdown, 1 runtime failure (e.g. the port is taken), 2 bad command line,
/// 78 invalid configuration, 130 forced shutdown by a second signal.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "CHATD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.host).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Port to listen on, 0 for any free port (overrides server.port).
    #[arg(long, short = 'p', global = true)]
    port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Validate the configuration and exit: 0 if valid, 78 if not.
    CheckConfig,
    /// Print the effective configuration as TOML (secrets masked).
    PrintConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources {
        host: cli.host.clone(),
        port: cli.port,
        ..Sources::standard(cli.config.as_deref())
    };
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Run => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatd: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("chatd: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn run(config: Config) -> anyhow::Result<()> {
    let _logs = telemetry::init(&config.log).context("cannot set up logging")?;
    let runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.workers)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Signals are handled from before the port is bound, so none is missed once we report ready.
    let signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let signal_task = tokio::spawn(watch_signals(signals, shutdown.clone()));

    let addr = config.listen_addr();
    let server = Server::bind(config)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("WebSocket server listening on {}", server.local_addr());
    let report = server.run(shutdown).await;
    signal_task.abort();
    if report.connections_remaining > 0 {
        tracing::warn!(
            remaining = report.connections_remaining,
            "exiting with connections that did not finish closing"
        );
    }
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn watch_signals(mut signals: Signals, shutdown: CancellationToken) {
    let mut seen = 0;
    while let Some(signal) = signals.next().await {
        seen += 1;
        if seen == 1 {
            tracing::info!(signal, "shutdown requested");
            shutdown.cancel();
        } else {
            tracing::warn!(signal, "second signal: exiting immediately");
            eprintln!("chatd: second signal, exiting without finishing shutdown");
            std::process::exit(EXIT_FORCED);
        }
    }
}
