//! Logging setup: `tracing` to stdout (human on a terminal, JSON otherwise) and optionally to
//! rotating JSON files through `tracing-appender`'s non-blocking writer.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{LogConfig, LogFormat, Rotation};

/// Keeps the log writers' background threads alive; drop it last to flush what is buffered.
#[must_use = "logs stop being written when the guard is dropped"]
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
    json: bool,
}

impl LogGuard {
    /// Whether stdout gets JSON lines (`log.format`, or `auto` when stdout is not a terminal).
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Installs the global subscriber. `override_filter` (the binary passes `RUST_LOG`), when set
/// and not empty, takes the place of `log.level`.
pub fn init(cfg: &LogConfig, override_filter: Option<&str>) -> anyhow::Result<LogGuard> {
    let filter = match override_filter {
        Some(directive) if !directive.is_empty() => EnvFilter::try_new(directive)?,
        _ => EnvFilter::try_new(&cfg.level)?,
    };
    let tty = std::io::stdout().is_terminal();
    let json = match cfg.format {
        LogFormat::Auto => !tty,
        LogFormat::Human => false,
        LogFormat::Json => true,
    };
    let mut guards = Vec::new();
    let (stdout, guard) = tracing_appender::non_blocking(std::io::stdout());
    guards.push(guard);
    let stdout_layer = if json {
        fmt::layer().json().with_writer(stdout).boxed()
    } else {
        fmt::layer().with_ansi(tty).with_writer(stdout).boxed()
    };
    let file_layer = if cfg.directory.is_empty() {
        None
    } else {
        let rotation = match cfg.rotation {
            Rotation::Daily => AppenderRotation::DAILY,
            Rotation::Hourly => AppenderRotation::HOURLY,
            Rotation::Never => AppenderRotation::NEVER,
        };
        let appender = RollingFileAppender::builder()
            .rotation(rotation)
            .filename_prefix(&cfg.file_prefix)
            .max_log_files(cfg.keep_files)
            .build(&cfg.directory)
            .map_err(|e| anyhow::anyhow!("log.directory {:?}: {e}", cfg.directory))?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        guards.push(guard);
        Some(fmt::layer().json().with_ansi(false).with_writer(writer))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(file_layer)
        .try_init()?;
    Ok(LogGuard {
        _guards: guards,
        json,
    })
}
