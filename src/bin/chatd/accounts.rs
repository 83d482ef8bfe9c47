//! `chatd user` and `chatd invite`: accounts managed offline, on the store the configuration
//! names (SQLite's file or PostgreSQL), whether chatd runs or not.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chatd::accounts::admin::Admin;
use chatd::config::{AuthMode, Config};
use chatd::protocol::Role;
use chatd::store::accounts::Change;
use clap::Subcommand;

use super::{RoleArg, config_error};

/// What `chatd user` does.
#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Make an account. The password comes from --password-file, or from standard input (asked
    /// for without echo on a terminal).
    Add {
        /// The account's name.
        name: String,
        /// Its role.
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Read the password from the first line of this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Set a new password.
    Passwd {
        /// The account's name.
        name: String,
        /// Read the password from the first line of this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Stop the account from signing in (sessions already open stay until they end).
    Disable {
        /// The account's name.
        name: String,
    },
    /// Let a disabled account sign in again.
    Enable {
        /// The account's name.
        name: String,
    },
    /// Change the account's role.
    Role {
        /// The account's name.
        name: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
}

fn role(arg: RoleArg) -> Role {
    match arg {
        RoleArg::User => Role::User,
        RoleArg::Admin => Role::Admin,
    }
}

fn open(config: &Config) -> Result<Admin, ExitCode> {
    if config.auth.mode != AuthMode::Accounts {
        eprintln!(
            "chatd: note: auth.mode is not \"accounts\": accounts are kept, but sign-ins use them only in accounts mode"
        );
    }
    Admin::open(config).map_err(|e| config_error(&e))
}

/// A password: the first line of `file`, or of standard input (without echo on a terminal).
fn password(file: Option<&Path>) -> Result<String, String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    if std::io::stdin().is_terminal() {
        return chatd::client::password::ask("password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn done(what: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => {
            eprintln!("chatd: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `chatd user ...`.
pub(crate) fn user(config: &Config, command: UserCommand) -> ExitCode {
    let name = match &command {
        UserCommand::Add { name, .. }
        | UserCommand::Passwd { name, .. }
        | UserCommand::Disable { name }
        | UserCommand::Enable { name }
        | UserCommand::Role { name, .. } => name.clone(),
    };
    if let Err(e) = chatd::protocol::validate_name(&name) {
        eprintln!("chatd: user: {name:?} is not a valid name ({e:?})");
        return ExitCode::from(2);
    }
    let mut admin = match open(config) {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    match command {
        UserCommand::Add {
            role: r,
            password_file,
            ..
        } => {
            let result =
                password(password_file.as_deref()).and_then(|p| admin.add(&name, &p, role(r)));
            done(&format!("account {name} added"), result)
        }
        UserCommand::Passwd { password_file, .. } => {
            let result = password(password_file.as_deref()).and_then(|p| admin.passwd(&name, &p));
            done(&format!("password of {name} changed"), result)
        }
        UserCommand::Disable { .. } => done(
            &format!("account {name} disabled"),
            admin.change(&name, Change::Disabled(true)),
        ),
        UserCommand::Enable { .. } => done(
            &format!("account {name} enabled"),
            admin.change(&name, Change::Disabled(false)),
        ),
        UserCommand::Role { role: r, .. } => done(
            &format!(
                "account {name} is now {}",
                if matches!(r, RoleArg::Admin) {
                    "admin"
                } else {
                    "user"
                }
            ),
            admin.change(&name, Change::Role(role(r))),
        ),
    }
}

/// `chatd invite`: prints a new invite code, and nothing else.
pub(crate) fn invite(config: &Config, uses: u32, ttl: &str) -> ExitCode {
    let ttl = match chatd::auth::parse_ttl(ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("chatd: invite: --ttl {e}");
            return ExitCode::from(2);
        }
    };
    if uses == 0 {
        eprintln!("chatd: invite: --uses must be at least 1");
        return ExitCode::from(2);
    }
    let mut admin = match open(config) {
        Ok(admin) => admin,
        Err(code) => return code,
    };
    match admin.invite(uses, ttl) {
        Ok(code) => {
            println!("{code}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: invite: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `chatd token revoke --jti ID | --subject NAME`.
pub(crate) fn revoke(config: &Config, jti: Option<String>, subject: Option<String>) -> ExitCode {
    let target = match (jti, subject) {
        (Some(jti), _) => format!("jti:{}", jti.trim()),
        (None, Some(name)) => format!("sub:{}", chatd::protocol::name_key(name.trim())),
        (None, None) => return ExitCode::from(2),
    };
    let mut admin = match Admin::open(config) {
        Ok(admin) => admin,
        Err(e) => return config_error(&e),
    };
    match admin.revoke(&target) {
        Ok(true) => {
            eprintln!("chatd: revoked {target}: refused from now on, its connections closed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("chatd: {target} was revoked already");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}
