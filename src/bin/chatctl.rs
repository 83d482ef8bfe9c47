//! `chatctl`: the console client. Parses the command line, builds the runtime and the endpoint,
//! and hands over to the client library (`chatd::client`); maps the outcome to an exit code.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chatd::client::tls::{ClientTrust, client_config};
use chatd::client::{
    EXIT_CONNECT, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Endpoint, Options, bench, script::Script,
    tui::Tui,
};
use clap::{Parser, Subcommand};

/// chatctl: the console client for chatd. Exit codes: 0 success (every line acknowledged), 1 the server refused something (an error reply,
/// name taken, kicked), 2 bad command line, 3 could not connect or the connection was lost for good.
#[derive(Parser, Debug)]
#[command(name = "chatctl", version, about, long_about)]
struct Cli {
    /// Server URL (ws:// or wss://).
    #[arg(
        long,
        env = "CHATD_URL",
        default_value = "ws://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// Trust only this CA bundle (PEM) for wss:// instead of the system roots.
    #[arg(long, global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Do not verify the server's certificate (testing only; prints a warning).
    #[arg(long, global = true, conflicts_with = "ca_cert")]
    insecure: bool,
    /// Token for servers in token mode (`chatd token NAME` mints one).
    #[arg(long, env = "CHATD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file instead (keeps it out of `ps`).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Sign in to an account (servers in accounts mode) with the password in the first line of
    /// this file.
    #[arg(
        long,
        env = "CHATD_PASSWORD_FILE",
        global = true,
        value_name = "FILE",
        conflicts_with_all = ["token", "token_file"]
    )]
    password_file: Option<PathBuf>,
    /// Sign in to an account, asking for the password on the terminal (not echoed).
    #[arg(long, global = true, conflicts_with_all = ["token", "token_file", "password_file"])]
    ask_password: bool,
    /// What this connection is called in `/sessions` (servers with tokens or accounts).
    #[arg(long, global = true, default_value = "chatctl", value_name = "NAME")]
    device: String,
    /// Print every raw JSON event (connect) or the report as JSON (bench).
    #[arg(long, global = true)]
    json: bool,
    /// Show each message's id (what `/edit`, `/delete`, `/reply` and `/react` name).
    #[arg(long, global = true)]
    ids: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join the chat as NAME. Interactive on a terminal; otherwise reads lines from stdin, sends
    /// them paced under the server's rate (commands work), prints events one per line, and exits
    /// once stdin closes and every line has been answered. Commands: /msg NAME text, /me action, /join ROOM, /leave [ROOM], /room ROOM, /rooms,
    /// /who [ROOM], /history [N], /nick NAME, /sessions, /logout ID, /help, /exit.
    Connect {
        /// Your name: 1-32 of A-Z a-z 0-9 _ . -
        name: String,
        /// The room to start in.
        #[arg(long, default_value = "lobby")]
        room: String,
        /// Line mode even on a terminal.
        #[arg(long)]
        plain: bool,
        /// If the name is taken, give up instead of trying NAME_, NAME__ …
        #[arg(long)]
        no_alt_nick: bool,
        /// Ring the terminal bell when someone mentions you or sends you a PM.
        #[arg(long)]
        bell: bool,
        /// Make the account NAME (with --password-file or --ask-password) and sign in to it.
        #[arg(long)]
        register: bool,
        /// The invite code, where registering needs one.
        #[arg(long, requires = "register")]
        invite: Option<String>,
    },
    /// Connect, say one message (to a room, or privately with --to), wait for its ack, exit.
    Send {
        /// Name to send as.
        #[arg(long)]
        name: String,
        /// Room to say it in (default lobby).
        #[arg(long, conflicts_with = "to")]
        room: Option<String>,
        /// Send a private message to this user instead.
        #[arg(long)]
        to: Option<String>,
        /// The message.
        text: String,
    },
    /// Load generator: N clients, S senders, M messages each; reports connect rate, deliveries/s,
    /// end-to-end latency and loss (exit 1 on loss). With --raw it speaks plain text frames to any
    /// broadcast WebSocket server, so other servers can be measured with the same tool.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    chatd::client::render::show_ids(cli.ids);
    let threads = match &cli.command {
        Command::Bench(args) => args.threads.max(1),
        _ => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(EXIT_CONNECT);
        }
    };
    let mut ep = match endpoint(&cli) {
        Ok(ep) => ep,
        Err((e, code)) => {
            eprintln!("error: {e}");
            return ExitCode::from(code);
        }
    };
    if let Command::Connect {
        register: true,
        invite,
        ..
    } = &cli.command
    {
        if ep.password.is_none() {
            eprintln!("error: --register needs a password: --password-file FILE or --ask-password");
            return ExitCode::from(EXIT_USAGE);
        }
        ep.register = Some(invite.clone());
    }
    let json = cli.json;
    let code = runtime.block_on(async {
        match cli.command {
            Command::Send {
                name,
                room,
                to,
                text,
            } => chatd::client::send(&ep, &name, room, to, &text, &mut Script::quiet()).await,
            Command::Bench(args) => run_bench(&ep, args, json).await,
            Command::Connect {
                name,
                room,
                plain,
                no_alt_nick,
                bell,
                ..
            } => {
                let opts = Options {
                    name,
                    room,
                    alt_nick: !no_alt_nick,
                    bell,
                };
                // https://no-color.org: set and not empty.
                let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
                let interactive = !plain
                    && !json
                    && std::io::stdin().is_terminal()
                    && std::io::stdout().is_terminal();
                if interactive {
                    match Tui::new(no_color) {
                        Ok(mut tui) => chatd::client::connect(&ep, opts, &mut tui).await,
                        Err(e) => {
                            eprintln!("error: cannot use the terminal: {e}");
                            EXIT_CONNECT
                        }
                    }
                } else {
                    chatd::client::connect(&ep, opts, &mut Script::new(json, no_color)).await
                }
            }
        }
    });
    // Don't wait for the blocking stdin reader: it may be parked on a read that never returns.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// The URL, TLS trust and token from the command line.
fn endpoint(cli: &Cli) -> Result<Endpoint, (String, u8)> {
    let tls = if cli.url.starts_with("wss://") {
        let trust = match (&cli.ca_cert, cli.insecure) {
            (_, true) => {
                eprintln!(
                    "warning: --insecure: the server's certificate is not verified; anyone on the path \
                     can read and change this chat"
                );
                ClientTrust::Insecure
            }
            (Some(path), false) => ClientTrust::CaFile(path.clone()),
            (None, false) => ClientTrust::SystemRoots,
        };
        Some(client_config(&trust).map_err(|e| (e, EXIT_CONNECT))?)
    } else if cli.url.starts_with("ws://") {
        None
    } else {
        return Err((
            format!("--url {:?} must start with ws:// or wss://", cli.url),
            EXIT_USAGE,
        ));
    };
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| (format!("--token-file {}: {e}", path.display()), EXIT_USAGE))?,
        ),
        None => cli.token.clone(),
    };
    let password = match (&cli.password_file, cli.ask_password) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map(|t| t.lines().next().unwrap_or_default().to_string())
                .map_err(|e| {
                    (
                        format!("--password-file {}: {e}", path.display()),
                        EXIT_USAGE,
                    )
                })?,
        ),
        (None, true) => Some(chatd::client::password::ask("password: ").map_err(|e| {
            (
                format!("--ask-password: {e}; use --password-file FILE"),
                EXIT_USAGE,
            )
        })?),
        (None, false) => None,
    };
    Ok(Endpoint {
        url: cli.url.clone(),
        tls,
        token,
        password,
        register: None,
        device: Some(cli.device.clone()).filter(|d| !d.is_empty()),
    })
}

async fn run_bench(ep: &Endpoint, a: bench::BenchArgs, json: bool) -> u8 {
    let opts = a.options(&ep.url, ep.tls.clone());
    match bench::run(opts).await {
        Ok(report) => {
            // A reader that went away (`| head`) is not a reason to panic.
            let out = if json {
                serde_json::to_string(&report).unwrap_or_default() + "\n"
            } else {
                report.summary()
            };
            let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
            match report.failure() {
                Some(failure) => {
                    eprintln!("error: {failure}");
                    EXIT_REFUSED
                }
                None => EXIT_OK,
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_CONNECT
        }
    }
}
