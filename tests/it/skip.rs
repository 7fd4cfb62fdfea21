//! Skipping a test whose outside service (PostgreSQL, Redis, chromium) is
//! missing, visibly.
//!
//! libtest has no runtime skip: a test that returns early is reported `ok`, and
//! what it printed is captured and thrown away because it passed. So a skip
//! here writes one line straight to the process's stderr (`io::stderr()`
//! bypasses libtest's capture, which only takes `print!`/`eprint!`), naming the
//! test, why it skipped and how to run it, and appends the same line to the
//! file named by `CLERKSYNC_TEST_SKIP_LOG` when that is set (`.ci/run` prints
//! the file as its closing summary). Under `CI=true` a missing service is a
//! failure instead: CI must run every test.

use std::io::Write;

/// Whether this run is CI, where nothing may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports the current test as skipped because `why`; `enable` says what to
/// do to run it. Panics under `CI=true`. The caller then returns.
pub fn skip(why: &str, enable: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if in_ci() {
        panic!("{test} cannot run under CI=true: {why} ({enable})");
    }
    let line = format!("SKIPPED {test}: {why}; to run it, {enable}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("CLERKSYNC_TEST_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// A PostgreSQL test run without PostgreSQL (outside CI) says it skipped,
/// on stderr and in the skip log: it does not just look passed.
#[test]
fn a_skipped_test_says_so_and_is_logged() {
    if in_ci() {
        // Under CI every service is up and a skip is a failure: nothing to show.
        return;
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let test = "upgrade::a_database_from_before_the_bodies_table_upgrades_postgres";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact"])
        .env_remove("CI")
        // Port 1: nothing listens there, so the connection is refused at once.
        .env(
            "CLERKSYNC_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:1/test",
        )
        .env("CLERKSYNC_TEST_SKIP_LOG", log.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("SKIPPED {test}: PostgreSQL"))
            && stderr.contains("CLERKSYNC_TEST_POSTGRES_URL"),
        "stderr: {stderr}"
    );
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(logged.starts_with(&format!("SKIPPED {test}")), "{logged}");
}
