//! Which of the integration tests' outside tools this machine lacks, as cfgs: a test that needs
//! one is then marked ignored with the reason (`cargo test` lists it as `ignored, needs …` and
//! counts it in its summary) instead of passing without having run. `CHATD_REDIS_TESTS=required`,
//! `CHATD_POSTGRES_TESTS=required` and `CHATD_BROWSER_TESTS=required` (CI) never mark them: there
//! a missing tool fails the test.
//!
//! Nothing here affects the binaries.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    for cfg in [
        "chatd_no_redis",
        "chatd_no_postgres",
        "chatd_no_browser",
        "chatd_no_tmux",
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo::rerun-if-env-changed=CHATD_REDIS_TESTS");
    println!("cargo::rerun-if-env-changed=CHATD_POSTGRES_TESTS");
    println!("cargo::rerun-if-env-changed=CHATD_BROWSER_TESTS");
    println!("cargo::rerun-if-env-changed=CHROMIUM");
    println!("cargo::rerun-if-env-changed=PATH");
    let required = |var: &str| env::var(var).as_deref() == Ok("required");

    if !required("CHATD_REDIS_TESTS") && !installed("redis-server") {
        println!("cargo::rustc-cfg=chatd_no_redis");
    }
    // Debian keeps PostgreSQL's programs in a versioned directory, off the PATH.
    let debian_postgres = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("bin/initdb").is_file())
        })
        .unwrap_or(false);
    println!("cargo::rerun-if-changed=/usr/lib/postgresql");
    if !required("CHATD_POSTGRES_TESTS") && !debian_postgres && !installed("initdb") {
        println!("cargo::rustc-cfg=chatd_no_postgres");
    }
    if !installed("tmux") {
        println!("cargo::rustc-cfg=chatd_no_tmux");
    }
    let chromium =
        env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    println!("cargo::rerun-if-changed={}", chromium.display());
    let playwright = Path::new("tests/browser/node_modules/playwright-core");
    println!("cargo::rerun-if-changed={}", playwright.display());
    let browser = installed("node") && chromium.exists() && playwright.exists();
    if !required("CHATD_BROWSER_TESTS") && !browser {
        println!("cargo::rustc-cfg=chatd_no_browser");
    }
}

/// Whether `program` is on the PATH. Cargo runs this again when it appears: a path that does not
/// exist makes it rerun the script every build, and one that does, when it changes.
fn installed(program: &str) -> bool {
    let dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    match dirs.iter().map(|d| d.join(program)).find(|p| p.is_file()) {
        Some(found) => {
            println!("cargo::rerun-if-changed={}", found.display());
            true
        }
        None => {
            for d in &dirs {
                println!("cargo::rerun-if-changed={}", d.join(program).display());
            }
            false
        }
    }
}
