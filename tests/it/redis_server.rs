//! A `redis-server` of a test's own (on a free loopback port, stopped by pid), and the cluster
//! settings tests run nodes with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use chatd::Config;

use crate::helpers::WAIT;

/// Cluster settings for a node on `redis`: short lifetimes, so that tests of dead nodes finish in
/// seconds.
pub fn cluster_config(config: &mut Config, redis: &Redis) {
    config.cluster.redis_url = chatd::config::SecretUrl::new(redis.url.clone());
    config.cluster.name_ttl_secs = 2;
    config.cluster.presence_ttl_secs = 2;
    config.cluster.heartbeat_secs = 1;
    config.cluster.op_timeout_ms = 500;
    config.limits.presence_batch_ms = 200;
}

/// A `redis-server` of a test's own, on a free loopback port, without persistence; killed (by
/// pid) when dropped.
pub struct Redis {
    child: std::sync::Mutex<Child>,
    pub port: u16,
    pub url: String,
}

impl Redis {
    /// Starts one and waits until it says it accepts connections.
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts one on `port` (a restart after [`Redis::kill`]).
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &["--port", &port.to_string()])
    }

    /// Starts one listening as `listen` says (`--port P`, or `--port 0 --tls-port P ...`), with
    /// `extra` settings (a password, say).
    pub fn start_with(port: u16, listen: &[&str]) -> Redis {
        let mut child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt install redis-server)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT)
            .expect("redis-server did not become ready");
        Redis {
            child: std::sync::Mutex::new(child),
            port,
            url: format!("redis://127.0.0.1:{port}/"),
        }
    }

    /// Kills it (SIGKILL) and waits for it to exit.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `redis-cli` against it with `input` on stdin (`-x` makes it the last argument: for
    /// values longer than a command line may be).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `redis-cli` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
