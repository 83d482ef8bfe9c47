//! `chatd`: parses the command line, loads and checks the config, sets up logging and signals, runs
//! the server, and maps the outcome to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chatd::server::TlsReloader;
use chatd::{Config, ConfigError, Server, Sources, telemetry};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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
#[path = "chatd/accounts.rs"]
mod accounts;
#[path = "chatd/alloc.rs"]
mod alloc;
#[path = "chatd/apikey.rs"]
mod apikey;

#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "CHATD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on, 0 for any free port (overrides server.port).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `chatd token` does besides minting.
#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Revoke tokens on the configured store (tokens mode with a store): refused from now on,
    /// and the connections they signed in are closed within a second, on every node.
    Revoke {
        /// One token, by the id `chatd token` printed.
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        jti: Option<String>,
        /// Every token of this user.
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Run {
        /// Address to listen on (overrides server.host).
        #[arg(long)]
        host: Option<String>,
        /// Port to listen on, 0 for any free port (overrides server.port).
        #[arg(long, short = 'p')]
        port: Option<u16>,
    },
    /// Validate the configuration (and that its files can be used) and exit: 0 if valid, 78 if not.
    CheckConfig,
    /// Print the effective configuration as TOML (secrets masked).
    PrintConfig,
    /// Ask the running server's admin listener for /healthz: exit 0 if healthy, 1 if not.
    /// For container health checks (no curl needed).
    Healthcheck,
    /// Make a private CA (ca.pem; reused when present) and a server certificate for the given
    /// names (cert.pem, key.pem), for wss:// without a public CA. Prints how to use them.
    Cert {
        /// A DNS name or IP address clients will connect to (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where to write the files.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// How long the server certificate is valid.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Replace an existing cert.pem and key.pem.
        #[arg(long)]
        force: bool,
    },
    /// Mint a signed token for NAME with the configured auth secret; prints only the token.
    #[command(args_conflicts_with_subcommands = true)]
    Token {
        /// `chatd token revoke --jti ID | --subject NAME`: refuse tokens from now on.
        #[command(subcommand)]
        revoke: Option<TokenCommand>,
        /// The user name the token is for (its `sub`).
        #[arg(required = true)]
        name: Option<String>,
        /// The role it grants.
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// How long it is valid: 30d, 12h, 15m, 90s.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// Read the secret from this file instead of the configuration's (e.g. the root-only
        /// /etc/chatd/secret that systemd hands the service with LoadCredential=).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Manage accounts (auth.mode = "accounts") on the configured store, while chatd runs or not.
    User {
        #[command(subcommand)]
        command: accounts::UserCommand,
    },
    /// Keys for the HTTP API (api.listen): create, list, revoke, on the configured store.
    Apikey {
        #[command(subcommand)]
        command: apikey::ApikeyCommand,
    },
    /// Mint an invite code for registration (auth.registration = "invite"); prints only the code.
    Invite {
        /// How many accounts it may make.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 7d, 12h, 15m.
        #[arg(long, default_value = "7d")]
        ttl: String,
    },
    /// Tell the running chatd with process id PID to re-read its TLS certificate and key
    /// (SIGHUP, without a `kill` binary): systemd's ExecReload.
    Reload {
        /// The daemon's process id (systemd: $MAINPID).
        pid: i32,
    },
    /// Copy a certificate and its key into DIR for a sandboxed chatd to read: checks that they
    /// belong together, writes them (mode 0600) with DIR's owner, atomically. For systemd's
    /// credentials drop-in, which runs it as root before start and on reload.
    TlsCopy {
        /// The certificate chain (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where the service reads them (created mode 0700, owned like its parent).
        #[arg(long)]
        into: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RoleArg {
    User,
    Admin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These need no configuration.
    match &cli.command {
        Some(Command::Cert {
            hosts,
            out,
            days,
            force,
        }) => return make_cert(hosts, out, *days, *force),
        Some(Command::Reload { pid }) => return reload(*pid),
        Some(Command::TlsCopy { cert, key, into }) => return tls_copy(cert, key, into),
        _ => {}
    }
    let (run_host, run_port) = match &cli.command {
        Some(Command::Run { host, port }) => (host.clone(), *port),
        _ => (None, None),
    };
    let mut sources = Sources {
        host: run_host.or_else(|| cli.host.clone()),
        port: run_port.or(cli.port),
        ..Sources::standard(cli.config.as_deref())
    };
    if let Some(Command::Token {
        secret_file: Some(file),
        ..
    }) = &cli.command
    {
        sources.overrides = vec![
            ("auth.secret", String::new()),
            ("auth.secret_file", file.display().to_string()),
        ];
    }
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(e) => return config_error(&e),
    };
    let command = cli.command.unwrap_or(Command::Run {
        host: None,
        port: None,
    });
    // What serving needs (certificate, key, secret) is checked by the commands that serve.
    if matches!(command, Command::Run { .. } | Command::CheckConfig)
        && let Err(e) = chatd::server::check_files(&config)
    {
        return config_error(&e);
    }
    match command {
        Command::CheckConfig => {
            if let Err(e) = chatd::store::check(&config) {
                return config_error(&e);
            }
            match sources.file_in_use() {
                Some(file) => println!("configuration OK (file: {})", shown(&file)),
                None => println!(
                    "configuration OK (no config file: the defaults and CHATD_* variables)"
                ),
            }
            ExitCode::SUCCESS
        }
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            if !config.storage.path.is_empty() {
                // Relative paths are from the working directory: say which file that is.
                let path = std::path::Path::new(&config.storage.path);
                let resolved = std::env::current_dir()
                    .map(|dir| dir.join(path))
                    .unwrap_or_else(|_| path.to_path_buf());
                println!("# storage.path resolves to {}", resolved.display());
            }
            ExitCode::SUCCESS
        }
        Command::Healthcheck => healthcheck(&config),
        Command::Cert { .. } | Command::Reload { .. } | Command::TlsCopy { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Token {
            revoke: Some(TokenCommand::Revoke { jti, subject }),
            ..
        } => accounts::revoke(&config, jti, subject),
        Command::Token {
            name, role, ttl, ..
        } => mint_token(&config, &name.unwrap_or_default(), role, &ttl),
        Command::User { command } => accounts::user(&config, command),
        Command::Invite { uses, ttl } => accounts::invite(&config, uses, &ttl),
        Command::Apikey { command } => apikey::apikey(&config, command),
        Command::Run { .. } => match run(config, sources.file_in_use()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Fatal::Config(e)) => config_error(&e),
            Err(Fatal::Other(e)) => {
                eprintln!("chatd: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `chatd reload PID`: SIGHUP to a running chatd (and to nothing else: a reused pid is refused).
fn reload(pid: i32) -> ExitCode {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != "chatd" {
        eprintln!("chatd: reload: process {pid} is not a running chatd");
        return ExitCode::FAILURE;
    }
    let signalled = rustix::process::Pid::from_raw(pid)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|pid| rustix::process::kill_process(pid, rustix::process::Signal::HUP));
    match signalled {
        Ok(()) => {
            println!("asked chatd ({pid}) to reload its TLS certificate and key");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: reload: cannot signal process {pid}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `chatd tls-copy`: see [`Command::TlsCopy`].
fn tls_copy(cert: &std::path::Path, key: &std::path::Path, into: &std::path::Path) -> ExitCode {
    match chatd::server::tls::copy_for_service(cert, key, into) {
        Ok(()) => {
            println!(
                "copied {} and {} into {}",
                shown(cert),
                shown(key),
                into.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: tls-copy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make_cert(hosts: &[String], out: &std::path::Path, days: u32, force: bool) -> ExitCode {
    use chatd::server::cert;
    let written = match cert::make(out, hosts, days, force) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("chatd: cert: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = shown(&written.dir);
    let host = &hosts[0];
    if written.new_ca {
        println!(
            "wrote a new private CA: {dir}/{} (and its key {dir}/{}, mode 0600: keep it to issue the next certificate)",
            cert::CA_CERT,
            cert::CA_KEY
        );
    } else {
        println!(
            "reused the CA in {dir}/{} (clients that trust it keep trusting)",
            cert::CA_CERT
        );
    }
    println!(
        "wrote {dir}/{} and {dir}/{} (mode 0600) for {}, valid {days} days",
        cert::CERT,
        cert::KEY,
        hosts.join(", ")
    );
    println!();
    println!("chatd (chat.toml, or CHATD_TLS__CERT / CHATD_TLS__KEY):");
    println!("  [tls]");
    println!("  cert = \"{dir}/{}\"", cert::CERT);
    println!("  key = \"{dir}/{}\"", cert::KEY);
    println!("  The key must be readable by the user chatd runs as (in the image: uid 65532).");
    println!();
    println!("clients trust the CA, not the certificate:");
    println!(
        "  chatctl --url wss://{host}:8000 --ca-cert {dir}/{} connect NAME",
        cert::CA_CERT
    );
    println!(
        "  python: ssl.create_default_context(cafile=\"{dir}/{}\")",
        cert::CA_CERT
    );
    println!(
        "  browsers: import {dir}/{} as an authority (Firefox: Settings > Certificates > Import;",
        cert::CA_CERT
    );
    println!(
        "  Chromium and Chrome on Linux keep their own store (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n chatd -i {dir}/{}",
        cert::CA_CERT
    );
    println!(
        "  (certutil is in libnss3-tools); the system's store, for curl and most programs: cp {dir}/{} /usr/local/share/ca-certificates/chatd.crt && update-ca-certificates),",
        cert::CA_CERT
    );
    println!("  then open https://{host}:8000/");
    println!(
        "On the public Internet use a certificate from Let's Encrypt instead (deploy/README.md)."
    );
    ExitCode::SUCCESS
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("chatd: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Why `chatd run` stopped.
enum Fatal {
    /// The configuration names something unusable (exit 78).
    Config(ConfigError),
    /// Anything else (exit 1).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Fatal {
        Fatal::Other(e)
    }
}

/// A path as an operator would find it: absolute when it can be.
fn shown(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn run(config: Config, file: Option<std::path::PathBuf>) -> Result<(), Fatal> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty());
    if let Some(filter) = &rust_log
        && let Err(reason) = chatd::config::check_log_filter(filter)
    {
        return Err(Fatal::Other(anyhow::anyhow!("RUST_LOG: {reason}")));
    }
    let logs =
        telemetry::init(&config.log, rust_log.as_deref()).context("cannot set up logging")?;
    match &file {
        Some(file) => tracing::info!(file = %shown(file), "configuration loaded"),
        None => tracing::info!("no config file: the defaults and CHATD_* variables"),
    }
    let banner = Banner { json: logs.json() };
    let runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(alloc::on_park)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.server.workers)
            .enable_all()
            .on_thread_park(alloc::on_park)
            .build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, banner))
}

/// The startup lines (where to connect): plain lines on a terminal or in human format, JSON
/// events (the shape of the log's) when the log is JSON, so stdout parses line by line. Printed
/// whatever `log.level` filters: they are the daemon's answer, not log chatter.
struct Banner {
    json: bool,
}

impl Banner {
    fn say(&self, message: &str, fields: serde_json::Value) {
        if !self.json {
            println!("{message}");
            return;
        }
        let mut fields = fields;
        fields["message"] = serde_json::Value::from(message);
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "INFO",
            "fields": fields,
            "target": "chatd",
        });
        println!("{line}");
    }
}

async fn serve(config: Config, banner: Banner) -> Result<(), Fatal> {
    let shutdown = CancellationToken::new();
    // Signals are registered before the port is bound, so none is missed once we report ready;
    // they queue in `signals` until the watcher starts.
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;

    let max_connections = config.server.max_connections;
    let backlog = config.server.backlog;
    let mut server = match Server::bind(config).await {
        Ok(server) => server,
        Err(chatd::server::BindError::Config(e)) => return Err(Fatal::Config(e)),
        Err(chatd::server::BindError::Io(e)) => return Err(Fatal::Other(e.into())),
    };
    // One descriptor per connection: raise the soft limit as far as the hard one allows, and cap
    // connections to what the limit leaves (so /metrics and refusals keep working).
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if let Some(cap) = server.limit_connections_to_fds(fds) {
        tracing::warn!(
            fd_limit = fds,
            max_connections,
            connections = cap,
            "the file descriptor limit (ulimit -n) is below server.max_connections plus {}: at most {cap} connections; raise LimitNOFILE or ulimit -n",
            chatd::server::FD_RESERVE
        );
    }
    // The kernel caps every listen backlog at somaxconn: a crowd reconnecting at once overflows
    // a smaller one (their SYNs are dropped and retried after a second or more).
    if let Some(somaxconn) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n < backlog)
    {
        tracing::warn!(
            somaxconn,
            backlog,
            "the kernel caps the listen backlog at net.core.somaxconn = {somaxconn}, below server.backlog = {backlog}: raise it for crowds that reconnect at once (deploy/README.md)"
        );
    }
    let addr = server.local_addr();
    banner.say(
        &format!("WebSocket server listening on {addr}"),
        serde_json::json!({ "addr": addr.to_string() }),
    );
    if let Some(tls) = server.tls_addr() {
        banner.say(
            &format!("TLS enabled: clients connect to wss://{tls}"),
            serde_json::json!({ "addr": tls.to_string(), "tls": true }),
        );
    }
    if let Some(api) = server.api_addr() {
        let scheme = if server.is_tls() { "https" } else { "http" };
        banner.say(
            &format!("HTTP API on {scheme}://{api}/v1/ (keys: chatd apikey create)"),
            serde_json::json!({ "api_addr": api.to_string() }),
        );
    }
    if let Some(admin) = server.admin_addr() {
        banner.say(
            &format!("Admin endpoints on http://{admin} (/metrics, /healthz, /readyz)"),
            serde_json::json!({ "admin_addr": admin.to_string() }),
        );
    }
    let signal_task = tokio::spawn(watch_signals(
        signals,
        shutdown.clone(),
        server.tls_reloader(),
    ));
    // Both listeners are bound: tell systemd (Type=notify) we are ready. No-op without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
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

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once. SIGHUP: re-read the TLS
/// certificate and key (a bad one is logged and the old one kept); nothing else is reloadable.
async fn watch_signals(
    mut signals: Signals,
    shutdown: CancellationToken,
    tls: Option<TlsReloader>,
) {
    let mut seen = 0;
    while let Some(signal) = signals.next().await {
        if signal == SIGHUP {
            match &tls {
                Some(reloader) => match reloader
                    .reload_off_runtime(std::time::Duration::from_secs(5))
                    .await
                {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                    }
                },
                None => tracing::info!(
                    "SIGHUP received: nothing to reload; restart chatd to apply config changes"
                ),
            }
            continue;
        }
        seen += 1;
        if seen == 1 {
            tracing::info!(signal, "shutdown requested");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            shutdown.cancel();
        } else {
            tracing::warn!(signal, "second signal: exiting immediately");
            eprintln!("chatd: second signal, exiting without finishing shutdown");
            std::process::exit(EXIT_FORCED);
        }
    }
}

/// `chatd healthcheck`: GET /healthz on the configured admin address (an unspecified address such
/// as 0.0.0.0 is reached on loopback).
fn healthcheck(config: &Config) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
    use std::time::Duration;

    let Some(mut addr) = config.admin.addr() else {
        eprintln!("chatd: healthcheck: the admin listener is disabled (admin.listen is empty)");
        return ExitCode::FAILURE;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let timeout = Duration::from_secs(3);
    let result = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.take(4096).read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response) if response.starts_with("HTTP/1.1 200") => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "chatd: healthcheck: {}",
                response.lines().next().unwrap_or("empty response")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("chatd: healthcheck: cannot reach http://{addr}/healthz: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `chatd token NAME`: prints a token signed with the configured secret, and nothing else.
fn mint_token(config: &Config, name: &str, role: RoleArg, ttl: &str) -> ExitCode {
    if let Err(e) = chatd::protocol::validate_name(name) {
        eprintln!("chatd: token: {name:?} is not a valid name ({e:?})");
        return ExitCode::from(2);
    }
    let ttl = match chatd::auth::parse_ttl(ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("chatd: token: --ttl {e}");
            return ExitCode::from(2);
        }
    };
    let secret = match config.auth.load_secret() {
        Ok(secret) => secret,
        Err(e) => return config_error(&e),
    };
    let role = match role {
        RoleArg::User => chatd::protocol::Role::User,
        RoleArg::Admin => chatd::protocol::Role::Admin,
    };
    let rules = chatd::auth::Rules::from_config(&config.auth);
    if ttl > rules.max_ttl {
        eprintln!(
            "chatd: token: --ttl is longer than auth.max_ttl ({}); raise auth.max_ttl or ask for less",
            config.auth.max_ttl
        );
        return ExitCode::from(2);
    }
    match chatd::auth::mint(&secret, name, role, ttl, &rules) {
        Ok(token) => {
            println!("{token}");
            let verifier = chatd::auth::Verifier::new(&secret, &rules);
            if let Ok((_, Some(jti))) = verifier.verify_token(Some(&token), name) {
                eprintln!("chatd: token id {jti} (chatd token revoke --jti {jti} refuses it)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: token: {e}");
            ExitCode::FAILURE
        }
    }
}
