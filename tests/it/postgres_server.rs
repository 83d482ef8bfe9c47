//! A PostgreSQL server of a test's own: Debian's `postgresql` binaries, `initdb` into a
//! temporary directory, `postgres` on a free loopback port with its socket in that directory,
//! killed by pid when dropped. Run as the `postgres` user when the tests run as root (PostgreSQL
//! refuses root); `fsync` is off (a test's data need not survive a power cut).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::helpers::WAIT;
use crate::redis_server::free_port;

/// Where the PostgreSQL programs are: on the PATH, or Debian's versioned directory.
fn bin_dir() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if ["initdb", "postgres", "psql"]
                .iter()
                .all(|p| dir.join(p).is_file())
            {
                return dir;
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").is_file());
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is installed (apt install postgresql)")
}

/// Whether this process runs as root (PostgreSQL's programs then run as `postgres`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program` as the user PostgreSQL runs as (`setpriv` execs, so the pid is the program's).
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of a test's own (see the module docs).
pub struct Postgres {
    child: Child,
    data: PathBuf,
    /// `-c name=value` settings beyond the defaults.
    settings: Vec<String>,
    pub port: u16,
    /// `postgres://chatd@127.0.0.1:{port}/chatd`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Runs `postgres` on `data` and `port` (its socket beside the data) until it accepts
/// connections.
fn serve(data: &Path, port: u16, settings: &[String]) -> Child {
    let mut child = command(&bin_dir().join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(data.parent().unwrap())
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "max_connections=200",
        ])
        .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("postgres runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready to accept connections") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT)
        .expect("postgres did not become ready");
    child
}

impl Postgres {
    /// Initialises a cluster and starts its server; the database `chatd` (owned by superuser
    /// `chatd`, no password on loopback) is there when this returns.
    pub fn start() -> Postgres {
        Postgres::start_with(|_| Vec::new())
    }

    /// [`Postgres::start`] with `-c` settings; `settings` gets the server's directory (for files
    /// it should read: they are the server's own there).
    pub fn start_with(settings: impl FnOnce(&Path) -> Vec<String>) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let out = command(&bin_dir().join("initdb"))
            .args([
                "--no-sync",
                "--auth=trust",
                "--username=chatd",
                "--encoding=UTF8",
            ])
            .arg("--pgdata")
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
        }
        let port = free_port();
        let child = serve(&data, port, &settings);
        let pg = Postgres {
            child,
            data,
            settings,
            port,
            url: format!("postgres://chatd@127.0.0.1:{port}/chatd"),
            _dir: dir,
        };
        pg.sql("postgres", "CREATE DATABASE chatd");
        pg
    }

    /// Starts it again on its data and port, after [`Postgres::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.child = serve(&self.data, self.port, &self.settings);
    }

    /// Runs `sql` in `database` with psql; its output (tuples only).
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "chatd",
            ])
            .args(["-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Ends every connection chatd has (what a chatd killed with SIGKILL leaves behind).
    pub fn drop_chatd_connections(&self) {
        self.sql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'chatd'",
        );
    }

    /// Stops it at once, as a crash would (SIGQUIT: an immediate shutdown that takes its
    /// backends with it, so it can start again on the same data), and waits for it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-QUIT", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
