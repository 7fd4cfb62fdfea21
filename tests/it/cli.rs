//! The operator commands of the real binary as a new user meets them: output
//! into a closed pipe, a mistyped data directory, PostgreSQL that is not ready,
//! a malformed secret, `--help`, retrying a processed event, loadgen's exit
//! status.
//!
//! Durations here are hang guards only, never assertions.

use crate::helpers::{read_inbox, whsec, TestApp, TEST_KEY};
use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(60);

/// What one run of the binary left: exit status, stdout, stderr.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The non-empty lines of stderr.
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// `clerksync ARGS` in `dir` with no inherited `CLERKSYNC_*` setting, stdout
/// as given (None: captured), waited for under a hang guard.
fn clerksync_with(dir: &Path, args: &[&str], env: &[(&str, &str)], stdout: Option<Stdio>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.args(args).current_dir(dir);
    crate::helpers::without_inherited_settings(&mut cmd);
    cmd.envs(env.iter().copied());
    let (out_path, err_path) = (dir.join("cli.stdout"), dir.join("cli.stderr"));
    let captured = stdout.is_none();
    cmd.stdin(Stdio::null())
        .stdout(stdout.unwrap_or_else(|| File::create(&out_path).unwrap().into()))
        .stderr(File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("spawn clerksync");
    let status = crate::helpers::wait_exit(&mut child, &format!("clerksync {args:?} did not exit"));
    Run {
        status,
        stdout: if captured {
            std::fs::read_to_string(&out_path).unwrap_or_default()
        } else {
            String::new()
        },
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

fn clerksync(dir: &Path, args: &[&str]) -> Run {
    clerksync_with(dir, args, &[], None)
}

/// A migrated SQLite store in `dir/data` (the default data directory there).
fn migrated(dir: &Path) {
    let r = clerksync(dir, &["migrate"]);
    assert!(r.status.success(), "migrate: {}", r.stderr);
}

#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    migrated(dir.path());
    for args in [
        &["events", "list"][..],
        &["events", "list", "--json"],
        &["events", "stats"],
        &["migrate"],
        &["events", "list", "--help"],
    ] {
        // The reading end is closed before the command writes a byte: its
        // first line meets a broken pipe, as `clerksync events list | head -0`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let r = clerksync_with(dir.path(), args, &[], Some(writer.into()));
        assert_ne!(r.status.code(), Some(101), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert!(r.status.success(), "{args:?}: {} {}", r.status, r.stderr);
    }
}

#[test]
fn read_only_commands_refuse_a_missing_database_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let into = format!("sqlite://{}/into.db", dir.path().display());
    for args in [
        &["events", "list"][..],
        &["events", "show", "msg_x"],
        &["events", "stats"],
        &["events", "retry", "msg_x"],
        &["events", "retry", "--all-dead"],
        &["events", "discard", "msg_x"],
        &["reindex"],
        &["replay", "--into", &into],
    ] {
        let mut argv = args.to_vec();
        argv.extend(["--data-dir", "typo"]);
        let r = clerksync(dir.path(), &argv);
        assert!(!r.status.success(), "{argv:?} succeeded");
        assert_eq!(r.stderr_lines().len(), 1, "{argv:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("no database at typo/clerksync.db"),
            "{argv:?}: the path is named: {}",
            r.stderr
        );
        assert!(
            !dir.path().join("typo").exists(),
            "{argv:?} created the data directory"
        );
        assert!(!dir.path().join("into.db").exists());
    }
    // Commands that write still create the store.
    let r = clerksync(dir.path(), &["migrate", "--data-dir", "typo"]);
    assert!(r.status.success(), "{}", r.stderr);
    let r = clerksync(dir.path(), &["events", "list", "--data-dir", "typo"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(r.stdout.starts_with("seq"), "{}", r.stdout);
}

/// The base PostgreSQL URL, or None (skip, said on stderr) when it is unreachable outside CI.
async fn postgres_url() -> Option<url::Url> {
    let (_, schema) = crate::backends::postgres_schema_url().await?;
    drop(crate::backends::SchemaGuard(schema));
    Some(url::Url::parse(&crate::backends::postgres_base_url()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_that_is_not_ready_is_one_line_once_with_a_hint() {
    let Some(base) = postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    let mut no_schema = base.clone();
    no_schema
        .query_pairs_mut()
        .append_pair("options", "-c search_path=cs_no_such_schema");
    let mut no_db = base.clone();
    no_db.set_path("/cs_no_such_database");
    let mut refused = base.clone();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    refused.set_host(Some("127.0.0.1")).unwrap();
    refused.set_port(Some(port)).unwrap();

    for (url, once, hint) in [
        (
            &no_schema,
            "names no existing schema",
            "CREATE SCHEMA cs_no_such_schema",
        ),
        (&no_db, "cs_no_such_database\" does not exist", "createdb"),
        (&refused, "connection refused", "is the server running"),
    ] {
        for cmd in [&["migrate"][..], &["events", "stats"]] {
            let mut argv = cmd.to_vec();
            argv.extend(["--database-url", url.as_str()]);
            let r = tokio::task::block_in_place(|| clerksync(dir.path(), &argv));
            assert!(!r.status.success(), "{argv:?}");
            assert_eq!(r.stderr_lines().len(), 1, "{argv:?}: {}", r.stderr);
            assert_eq!(r.stderr.matches(once).count(), 1, "{argv:?}: {}", r.stderr);
            assert!(r.stderr.contains(hint), "{argv:?}: {}", r.stderr);
            assert!(!r.stderr.contains("pool timed out"), "{}", r.stderr);
        }
    }
}

#[test]
fn a_malformed_secret_is_named_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "webhook_secret = \"notasecret\"\n",
    )
    .unwrap();
    let base = ["serve", "--listen", "127.0.0.1:0", "--data-dir", "d"];
    let flag = [&base[..], &["--webhook-secret", "notasecret"]].concat();
    let file = [&base[..], &["--config", "c.toml"]].concat();
    for (args, env, named) in [
        (&flag, &[][..], "--webhook-secret is malformed"),
        (
            &base.to_vec(),
            &[("CLERKSYNC_WEBHOOK_SECRET", "notasecret")][..],
            "CLERKSYNC_WEBHOOK_SECRET is malformed",
        ),
        (
            &file,
            &[],
            "webhook_secret in config file c.toml is malformed",
        ),
    ] {
        let r = clerksync_with(dir.path(), args, env, None);
        assert!(!r.status.success());
        assert_eq!(r.stderr_lines().len(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(named), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("expected"), "{}", r.stderr);
        assert!(!r.stderr.contains("notasecret"), "never echo: {}", r.stderr);
    }
    // Other settings are named the same way.
    let r = clerksync(dir.path(), &["migrate", "--config", "bad.toml"]);
    assert!(r.stderr.contains("bad.toml"), "{}", r.stderr);
    std::fs::write(dir.path().join("bad.toml"), "max_body_bytes = 10\n").unwrap();
    let r = clerksync(dir.path(), &["migrate", "--config", "bad.toml"]);
    assert!(
        r.stderr
            .contains("max_body_bytes in config file bad.toml is invalid"),
        "{}",
        r.stderr
    );
}

/// A reconciliation schedule needs the Clerk key: serve refuses to start
/// without it, in one line naming both settings.
#[test]
fn a_reconcile_schedule_without_a_clerk_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = whsec(TEST_KEY);
    let r = clerksync_with(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", "d"],
        &[
            ("CLERKSYNC_WEBHOOK_SECRET", secret.as_str()),
            ("CLERKSYNC_RECONCILE_EVERY", "24h"),
        ],
        None,
    );
    assert!(!r.status.success());
    assert_eq!(r.stderr_lines().len(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("CLERKSYNC_RECONCILE_EVERY")
            && r.stderr.contains("CLERKSYNC_CLERK_SECRET_KEY"),
        "{}",
        r.stderr
    );
    let r = clerksync_with(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", "d"],
        &[
            ("CLERKSYNC_WEBHOOK_SECRET", secret.as_str()),
            ("CLERKSYNC_RECONCILE_EVERY", "often"),
        ],
        None,
    );
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("CLERKSYNC_RECONCILE_EVERY is invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn each_command_help_shows_only_its_own_options() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["events", "list", "--help"][..],
        &["events", "stats", "--help"],
        &["migrate", "--help"],
        &["replay", "--help"],
        &["reindex", "--help"],
    ] {
        let r = clerksync(dir.path(), args);
        assert!(r.status.success(), "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("--database-url"),
            "{args:?}: {}",
            r.stdout
        );
        for other in ["webhook-secret", "cache", "realtime", "listen", "clerk-jwt"] {
            assert!(
                !r.stdout.contains(other),
                "{args:?} shows {other}: {}",
                r.stdout
            );
        }
        let lines = r.stdout.lines().count();
        assert!(lines <= 40, "{args:?}: {lines} lines of help");
    }
    let r = clerksync(dir.path(), &["reindex", "--help"]);
    assert!(r.stdout.contains("--search-dir") && r.stdout.contains("--admin-token"));
    let r = clerksync(dir.path(), &["serve", "--help"]);
    assert!(r.stdout.contains("--webhook-secret") && r.stdout.contains("--cache-backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_discard_of_a_processed_event_say_its_status() {
    let app = TestApp::spawn().await;
    let body = crate::helpers::user_event("user.created", "user_retry");
    let resp = app
        .post_webhook("msg_processed", app.now_secs(), &body)
        .await;
    assert!(resp.status().is_success());
    let deadline = Instant::now() + GUARD;
    while read_inbox(&app.db_path).await[0].status != "done" {
        assert!(Instant::now() < deadline, "the event was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("sqlite://{}", app.db_path.display());
    let dir = tempfile::tempdir().unwrap();
    for (action, expect) in [
        (
            "retry",
            "event msg_processed is done (processed): only failed, dead or discarded events can be retried",
        ),
        (
            "discard",
            "event msg_processed is done (processed): only pending, failed or dead events can be discarded",
        ),
    ] {
        let r = tokio::task::block_in_place(|| {
            clerksync(
                dir.path(),
                &["events", action, "msg_processed", "--database-url", &url],
            )
        });
        assert!(!r.status.success());
        assert_eq!(r.stderr.trim(), format!("error: {expect}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_exits_non_zero_only_when_deliveries_failed() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = whsec(TEST_KEY);
    let env = [("CLERKSYNC_WEBHOOK_SECRET", secret.as_str())];
    // Forged deliveries answered 401 are what a correct server does.
    let url = app.url("/webhooks/clerk");
    let args = [
        "loadgen", "--url", &url, "--events", "200", "--forged", "0.2",
    ];
    let r = tokio::task::block_in_place(|| clerksync_with(dir.path(), &args, &env, None));
    assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("forged answered:  401"), "{}", r.stdout);

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/webhooks/clerk", free.local_addr().unwrap());
    drop(free);
    let args = ["loadgen", "--url", &dead, "--events", "20", "-q"];
    let r = tokio::task::block_in_place(|| clerksync_with(dir.path(), &args, &env, None));
    assert_eq!(r.status.code(), Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("transport errors"), "{}", r.stderr);
    assert!(
        r.stdout.contains("transport errors:"),
        "the report is still printed"
    );
}
