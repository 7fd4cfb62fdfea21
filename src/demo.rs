//! `clerksync demo`: the whole service on one command, for a newcomer.
//!
//! Owns: generating a throwaway webhook secret and admin token, the demo data
//! directory (made by the demo itself, emptied of its own files on the next
//! run), starting the app on the embedded database, feeding it in the
//! background (an opening loadgen burst, three poisoned deliveries, then a
//! gentle live stream until Ctrl-C, so every dashboard panel keeps moving), and
//! printing where to look.
//!
//! It opens with an import: a built-in stand-in for Clerk's Backend API
//! (`clerksync_loadgen::clerk_api`) holds an "existing" instance, and the
//! demo backfills from it through the same path `clerksync backfill` takes,
//! so the users a new adopter already has appear first, then live webhooks.
//!
//! Must never: install a signal handler (the caller passes the shutdown future,
//! as for `serve`); delete anything but the files it writes itself ([`OWN_FILES`])
//! in a directory it made itself with `create_dir` (marked by [`MARKER`]), nor
//! write its marker into a directory that already existed; hold more than one
//! small batch of the live stream in memory (it runs for hours); or reach the
//! server other than over HTTP like Svix would (the feed signs its deliveries;
//! nothing is written into the database directly, but for the opening
//! import, which is a backfill: the apply path `clerksync backfill` takes).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use clap::Parser;
use clerksync::app::{App, BuildError};
use clerksync::config::{Config, ConfigError, Settings};
use clerksync::webhook::WebhookSecret;
use clerksync_loadgen::generate::{self, GenConfig};
use clerksync_loadgen::plan::{self, PlanConfig};
use clerksync_loadgen::{self as loadgen, LoadgenArgs};
use serde_json::json;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The flags of `clerksync demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = clerksync::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Directory of the demo's database and search index. The demo creates it;
    /// a later demo deletes only its own files in it, and refuses a directory it
    /// did not create or one holding anything else.
    #[arg(long, default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// Events of the opening burst.
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// Deliveries per second of the opening burst (slow enough to watch).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Deliveries per second of the live stream that follows the burst until
    /// Ctrl-C (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub live_rate: f64,
    /// Events that made the "existing" instance imported at the start (about
    /// a fifth as many users); also a way to time a large backfill.
    #[arg(long, default_value_t = 3_000)]
    pub existing: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--listen '{0}' is not a socket address: use host:port, e.g. 127.0.0.1:8080")]
    BadListen(String),
    #[error("{0} is already in use (another clerksync or demo running?): stop it, or pass a free address, e.g. --listen 127.0.0.1:18080")]
    AddrInUse(SocketAddr),
    #[error("cannot listen on {addr}: {source} (pass another address with --listen)")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0} exists and was not made by `clerksync demo`: pass a --data-dir that does not exist yet (the demo creates it, and a later demo deletes its own files in it)")]
    ForeignDataDir(PathBuf),
    #[error("{dir} holds {entry}, which `clerksync demo` did not write: move it away or pass another --data-dir (nothing was deleted)")]
    ForeignEntry { dir: PathBuf, entry: String },
    #[error("--data-dir {0} is refused: the demo needs a directory of its own, e.g. --data-dir demo-data")]
    UnsafeDataDir(PathBuf),
    #[error("cannot prepare the demo data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("--events must be at least 1, --rate a positive number and --live-rate a number from 0 to 10000")]
    BadStream,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the server stopped with an error: {0}")]
    Serve(io::Error),
}

/// Marks a directory the demo created itself, so a later demo may delete its
/// own files in it.
const MARKER: &str = ".clerksync-demo";

/// Everything the demo writes into its directory: the database (with SQLite's
/// WAL, shared-memory and rollback-journal files), the search index directory
/// and the marker. Only these are ever deleted.
const OWN_FILES: &[&str] = &[
    MARKER,
    "clerksync.db",
    "clerksync.db-wal",
    "clerksync.db-shm",
    "clerksync.db-journal",
    "search",
];

/// Events per generated batch of the live stream: a few minutes of watching,
/// and the only part of the stream in memory at any time.
const LIVE_BATCH: usize = 200;
/// Requests of the live stream in flight at once, at most.
const LIVE_IN_FLIGHT: usize = 8;

/// Deliveries whose envelope is well-formed and signed but whose data can
/// never apply (a typed field of the wrong type): the processor dead-letters
/// them at once, and a retry dead-letters them again. Discard is their fix.
fn poisoned_events(now_ms: i64) -> Vec<serde_json::Value> {
    vec![
        json!({"type": "user.updated", "object": "event", "timestamp": now_ms,
               "data": {"id": "user_poison1", "object": "user", "first_name": 42}}),
        json!({"type": "user.created", "object": "event", "timestamp": now_ms,
               "data": {"id": "user_poison2", "object": "user", "email_addresses": "not-a-list"}}),
        json!({"type": "user.updated", "object": "event", "timestamp": now_ms,
               "data": {"id": "user_poison3", "object": "user", "updated_at": "yesterday"}}),
    ]
}

/// Runs the demo until `shutdown` resolves (Ctrl-C in `main`).
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let listen: SocketAddr = args
        .listen
        .trim()
        .parse()
        .map_err(|_| DemoError::BadListen(args.listen.clone()))?;
    if args.events == 0
        || !(args.rate.is_finite() && args.rate > 0.0)
        || !(0.0..=10_000.0).contains(&args.live_rate)
    {
        return Err(DemoError::BadStream);
    }
    // Bind before touching the directory: a second demo on a taken port must
    // not empty the first one's data under it.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::AddrInUse => DemoError::AddrInUse(listen),
            _ => DemoError::Listen {
                addr: listen,
                source,
            },
        })?;
    let fresh = prepare_data_dir(&args.data_dir)?;

    let secret = WebhookSecret::from_key(rand::random::<[u8; 32]>().to_vec());
    let whsec = secret.to_whsec();
    let admin_token = B64URL.encode(rand::random::<[u8; 24]>());
    let config = Config::from_settings(Settings {
        webhook_secret: Some(whsec.clone()),
        listen: Some(listen.to_string()),
        admin_token: Some(admin_token.clone()),
        data_dir: Some(args.data_dir.clone()),
        ..Settings::default()
    })?;
    let app = App::build(config, listener).await?;
    let base = format!("http://{}", reachable(app.local_addr()));
    let db = app.state().db.clone();

    // Polled once before the banner: a shutdown future that installs signal
    // handlers when first polled (main's does) then has them in place, so a
    // Ctrl-C right after the banner stops the demo gracefully instead of the
    // signal's default action killing it.
    let mut shutdown = Box::pin(shutdown);
    let asked = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
    print_banner(&base, &whsec, &admin_token, &args, fresh);

    // The stream stops the moment shutdown is asked for: it is a client of the
    // server, and its remaining sends would only fail against a closed listener.
    let stop = CancellationToken::new();
    let feeder = tokio::spawn({
        let stop = stop.clone();
        let (events, rate, live_rate) = (args.events, args.rate, args.live_rate);
        let existing = args.existing;
        async move {
            tokio::select! {
                _ = async {
                    import_existing(&db, existing).await;
                    feed(base, secret, whsec, events, rate, live_rate).await
                } => {}
                _ = stop.cancelled() => {}
            }
        }
    });
    let served = app
        .run(async move {
            if !asked {
                shutdown.await;
            }
            stop.cancel();
        })
        .await;
    let _ = feeder.await;
    served.map_err(DemoError::Serve)?;
    clerksync::output::line(format!(
        "demo stopped; its data stays in {} until the next demo (clerksync events stats --data-dir {})",
        args.data_dir.display(),
        args.data_dir.display()
    ));
    Ok(())
}

/// A wildcard listen address is not one to browse to: use loopback of its family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Makes the demo's directory, or deletes the demo's own files from one an
/// earlier demo made. Returns whether an earlier demo's data was removed.
///
/// Refused, with nothing deleted: `.`, `..`, `/`, the home directory, any
/// directory that contains the current one, a symlink, a directory the demo did
/// not create (no marker: even an empty one, which never gets a marker), and a
/// directory of the demo's holding anything it did not write (named).
fn prepare_data_dir(dir: &Path) -> Result<bool, DemoError> {
    let err = |source| DemoError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    if is_unsafe(dir) {
        return Err(DemoError::UnsafeDataDir(dir.to_path_buf()));
    }
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            // create_dir, not create_dir_all: it fails on a directory that
            // appeared meanwhile, so the marker only ever goes into our own.
            std::fs::create_dir(dir).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => DemoError::ForeignDataDir(dir.to_path_buf()),
                _ => err(e),
            })?;
            std::fs::write(
                dir.join(MARKER),
                "made by `clerksync demo`; the next demo deletes its own files here \
                 (clerksync.db*, search/) and refuses to touch anything else\n",
            )
            .map_err(err)?;
            return Ok(false);
        }
        Err(e) => return Err(err(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(DemoError::UnsafeDataDir(dir.to_path_buf()));
    }
    if !meta.is_dir() || !std::fs::symlink_metadata(dir.join(MARKER)).is_ok_and(|m| m.is_file()) {
        return Err(DemoError::ForeignDataDir(dir.to_path_buf()));
    }
    // Look at everything before deleting anything.
    let mut own = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        match name.to_str().filter(|n| OWN_FILES.contains(n)) {
            Some(n) if n != MARKER => own.push(entry.path()),
            Some(_) => {}
            None => {
                return Err(DemoError::ForeignEntry {
                    dir: dir.to_path_buf(),
                    entry: name.to_string_lossy().into_owned(),
                })
            }
        }
    }
    let removed = !own.is_empty();
    for path in own {
        let meta = std::fs::symlink_metadata(&path).map_err(err)?;
        if meta.is_dir() {
            // The search index: a directory of index files the app wrote.
            std::fs::remove_dir_all(&path).map_err(err)?;
        } else {
            // A file, or a symlink (removed as a link, never followed).
            std::fs::remove_file(&path).map_err(err)?;
        }
    }
    Ok(removed)
}

/// `.`, `..`, `/`, the home directory, or any directory the current one is in:
/// places that hold other things than a demo's data.
fn is_unsafe(dir: &Path) -> bool {
    use std::path::Component;
    let named = dir.components().any(|c| matches!(c, Component::Normal(_)));
    let ends_in_dots = matches!(
        dir.components().next_back(),
        Some(Component::CurDir | Component::ParentDir)
    );
    if !named || ends_in_dots {
        return true;
    }
    let Ok(canonical) = dir.canonicalize() else {
        // Does not exist yet: it will be created, so it holds nothing else.
        return false;
    };
    let home = std::env::var_os("HOME").and_then(|h| PathBuf::from(h).canonicalize().ok());
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize()).ok();
    canonical.parent().is_none()
        || home.as_deref() == Some(canonical.as_path())
        || cwd.is_some_and(|c| c.starts_with(&canonical))
}

/// The command line that runs this same binary (or `cargo run` when its path is
/// unknown), quoted for a POSIX shell.
fn self_command() -> String {
    match std::env::current_exe() {
        Ok(path) => shell_word(&path.to_string_lossy()),
        Err(_) => "cargo run --release --".to_string(),
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn print_banner(base: &str, whsec: &str, token: &str, args: &DemoArgs, fresh: bool) {
    let dir = args.data_dir.display();
    let cleared = if fresh {
        " (the previous demo's data was removed)"
    } else {
        ""
    };
    let live = if args.live_rate > 0.0 {
        format!(
            "then a live stream of {}/s (new users, updates, memberships, some deletes) \
             until Ctrl-C",
            args.live_rate
        )
    } else {
        "then nothing more (--live-rate 0)".to_string()
    };
    clerksync::output::line(format!(
        "\n\
clerksync demo is running: an opening burst of {events} events at {rate}/s, {live}; \
with duplicates, out-of-order and forged deliveries mixed in, and 3 poisoned events \
that dead-letter.

  Dashboard:       {base}/admin#token={token}
  Admin token:     {token}
  Webhook secret:  {whsec}
  Data directory:  {dir}{cleared}

Try:
  curl -s -H 'Authorization: Bearer {token}' {base}/admin/stats
  curl -s '{base}/v1/users?limit=2'
  CLERKSYNC_WEBHOOK_SECRET={whsec} {exe} loadgen --url {base}/webhooks/clerk --events 1000

Ctrl-C stops it.
",
        events = args.events,
        rate = args.rate,
        exe = self_command(),
    ));
}

/// Imports the stand-in instance's existing users, organizations and
/// memberships through the backfill, as `clerksync backfill` would from Clerk.
/// `events`: the generated stream (fixed seed) whose final state the
/// instance holds.
async fn import_existing(db: &clerksync::store::Database, events: usize) {
    use clerksync::backfill::client::{ClerkClient, ClientConfig, SecretKey};
    let key = format!("sk_test_demo{}", B64URL.encode(rand::random::<[u8; 12]>()));
    let api = clerksync_loadgen::clerk_api::seeded(&key, events, 4242);
    let result = async {
        let (url, task) = api.spawn(0).await.map_err(|e| e.to_string())?;
        let mut c = ClientConfig::new(&url, SecretKey::parse(&key).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        c.rate = None;
        let client = ClerkClient::new(c).map_err(|e| e.to_string())?;
        let opts = clerksync::backfill::Options::default();
        let r =
            clerksync::backfill::run(db, &client, &opts, &|_: &clerksync::backfill::Progress| {})
                .await
                .map_err(|e| e.to_string());
        task.abort();
        r
    }
    .await;
    match result {
        Ok(r) => {
            let n = |i: usize| r.resources.get(i).map_or(0, |x| x.created);
            clerksync::output::line(format!(
                "demo import done: {} users, {} organizations and {} memberships the instance already had, \
                 backfilled from a stand-in for Clerk's Backend API in {:.1} s ({:.0} records/s; clerksync \
                 backfill does this against api.clerk.com); live webhooks follow",
                n(0),
                n(1),
                n(2),
                r.elapsed_ms as f64 / 1000.0,
                r.per_second()
            ))
        }
        Err(e) => eprintln!("demo: the opening import failed: {e}; webhooks follow"),
    }
}

/// The background stream: an opening loadgen burst at a watchable rate with the
/// poisoned deliveries a few seconds in (so they show up in the middle of the
/// live list), then the live stream until the future is dropped at shutdown.
async fn feed(
    base: String,
    secret: WebhookSecret,
    whsec: String,
    events: usize,
    rate: f64,
    live_rate: f64,
) {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: LoadgenArgs,
    }
    let wrap = Wrap::parse_from([
        "loadgen".to_string(),
        "--url".into(),
        format!("{base}/webhooks/clerk"),
        "--secret".into(),
        whsec,
        "--events".into(),
        events.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--out-of-order".into(),
        "0.1".into(),
        "--duplicates".into(),
        "0.05".into(),
        "--forged".into(),
        "0.01".into(),
        "--json".into(),
        "-q".into(),
    ]);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot make an HTTP client for the stream: {e}");
            return;
        }
    };
    let url = format!("{base}/webhooks/clerk");
    // Joined, not spawned: dropping this future at shutdown drops the stream too.
    let (report, ()) = tokio::join!(loadgen::run(wrap.args), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Err(e) = post_poisoned(&client, &url, &secret).await {
            eprintln!("demo: could not send the poisoned events: {e}");
        }
    });
    let then = if live_rate > 0.0 {
        format!("a live stream of {live_rate}/s follows until Ctrl-C")
    } else {
        "the server keeps running (Ctrl-C stops it)".to_string()
    };
    match report {
        Ok(json) => match serde_json::from_str::<loadgen::report::Report>(&json) {
            Ok(r) => clerksync::output::line(format!(
                "demo burst done: {} deliveries sent, {} accepted, {} forged ones refused; {then}",
                r.sent,
                r.status_2xx,
                r.forged_by_status.get(&401).copied().unwrap_or(0)
            )),
            Err(_) => clerksync::output::line(format!("demo burst done; {then}")),
        },
        Err(e) => eprintln!("demo: the opening burst failed: {e}; {then}"),
    }
    if live_rate > 0.0 {
        live(&client, &url, &secret, live_rate).await;
    }
}

/// The live stream, forever (until dropped): batches of [`LIVE_BATCH`] events
/// from the load generator, each a fresh slice of a Clerk instance's life (new
/// users and organizations, their updates, memberships, some deletes), dated
/// from now, delivered with the same share of duplicates, disorder and
/// forgeries as the burst. One batch is generated at a time, so memory stays
/// the same however long it runs; at most [`LIVE_IN_FLIGHT`] requests are in
/// flight (an ack waits for an fsync), so a slow server only slows the stream.
async fn live(client: &reqwest::Client, url: &str, secret: &WebhookSecret, rate: f64) {
    let forger = WebhookSecret::from_key(rand::random::<[u8; 32]>().to_vec());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // After a stall, carry on at the rate instead of catching up in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Owned here: dropping this future at shutdown aborts the requests too.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut failing = false;
    let mut report = |result: Result<Result<reqwest::StatusCode, reqwest::Error>, _>| match result {
        Ok(Ok(_)) => failing = false,
        // Said once per outage, not once per delivery.
        Ok(Err(e)) if !failing => {
            failing = true;
            eprintln!("demo: the live stream cannot reach the server: {e}");
        }
        Ok(Err(_)) | Err(_) => {}
    };
    loop {
        let seed = rand::random::<u64>();
        let gen = GenConfig {
            seed,
            events: LIVE_BATCH,
            start_ms: now_ms(),
            ..GenConfig::default()
        };
        let plan_cfg = PlanConfig {
            seed,
            out_of_order: 0.1,
            duplicates: 0.05,
            forged: 0.01,
        };
        let batch = plan::plan(&generate::generate(&gen), &plan_cfg);
        for d in batch.deliveries {
            tick.tick().await;
            while in_flight.len() >= LIVE_IN_FLIGHT {
                if let Some(r) = in_flight.join_next().await {
                    report(r);
                }
            }
            while let Some(r) = in_flight.try_join_next() {
                report(r);
            }
            let key = if d.forged { &forger } else { secret }.clone();
            let (client, url) = (client.clone(), url.to_string());
            in_flight
                .spawn(async move { post_signed(&client, &url, &key, &d.svix_id, d.body).await });
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One delivery as Svix sends it: signed now with `key`.
async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    key: &WebhookSecret,
    svix_id: &str,
    body: impl Into<reqwest::Body> + AsRef<[u8]>,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let ts = now_ms() / 1000;
    let signature = key.sign(svix_id, ts, body.as_ref());
    Ok(client
        .post(url)
        .header("svix-id", svix_id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .status())
}

async fn post_poisoned(
    client: &reqwest::Client,
    url: &str,
    secret: &WebhookSecret,
) -> Result<(), String> {
    let now_ms = now_ms();
    for (i, event) in poisoned_events(now_ms).into_iter().enumerate() {
        let svix_id = loadgen::ids::svix_id(now_ms, i as u32, &mut rand::thread_rng());
        let status = post_signed(client, url, secret, &svix_id, event.to_string())
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_is_created_reused_and_never_taken_from_someone_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        assert!(!prepare_data_dir(&dir).unwrap());
        assert!(dir.join(MARKER).is_file());
        std::fs::write(dir.join("clerksync.db"), b"old").unwrap();
        std::fs::write(dir.join("clerksync.db-wal"), b"old").unwrap();
        std::fs::create_dir(dir.join("search")).unwrap();
        std::fs::write(dir.join("search/meta.json"), b"{}").unwrap();
        assert!(prepare_data_dir(&dir).unwrap());
        assert!(!dir.join("clerksync.db").exists(), "its own data goes");
        assert!(!dir.join("clerksync.db-wal").exists());
        assert!(!dir.join("search").exists());
        assert!(dir.join(MARKER).is_file(), "the directory stays the demo's");

        // Anything else in it: refused, named, nothing deleted.
        std::fs::write(dir.join("clerksync.db"), b"old").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        match prepare_data_dir(&dir) {
            Err(DemoError::ForeignEntry { entry, .. }) => assert_eq!(entry, "notes.txt"),
            other => panic!("{other:?}"),
        }
        assert!(dir.join("clerksync.db").exists() && dir.join("notes.txt").exists());

        // A directory it did not make, empty or not, never gets a marker.
        let foreign = tmp.path().join("data");
        std::fs::create_dir_all(&foreign).unwrap();
        assert!(matches!(
            prepare_data_dir(&foreign),
            Err(DemoError::ForeignDataDir(_))
        ));
        assert!(!foreign.join(MARKER).exists());
        std::fs::write(foreign.join("clerksync.db"), b"precious").unwrap();
        assert!(matches!(
            prepare_data_dir(&foreign),
            Err(DemoError::ForeignDataDir(_))
        ));
        assert!(foreign.join("clerksync.db").exists());

        // A symlink to the demo's own directory is refused too.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            prepare_data_dir(&link),
            Err(DemoError::UnsafeDataDir(_))
        ));
    }

    #[test]
    fn places_that_hold_other_things_are_unsafe() {
        for p in [".", "..", "/", "./", "a/..", "", "./."] {
            assert!(is_unsafe(Path::new(p)), "{p:?}");
        }
        let cwd = std::env::current_dir().unwrap();
        assert!(is_unsafe(&cwd));
        assert!(is_unsafe(cwd.parent().unwrap()));
        if let Some(home) = std::env::var_os("HOME") {
            assert!(is_unsafe(Path::new(&home)));
        }
        assert!(!is_unsafe(Path::new("demo-data")));
        assert!(!is_unsafe(Path::new("./demo-data")));
        assert!(!is_unsafe(&cwd.join("no-such-dir-yet")));
    }

    #[test]
    fn the_suggested_command_is_one_shell_word() {
        assert_eq!(shell_word("/usr/bin/clerksync"), "/usr/bin/clerksync");
        assert_eq!(shell_word("/a b/it's"), "'/a b/it'\\''s'");
    }

    #[test]
    fn poisoned_events_are_envelopes_that_never_apply() {
        for e in poisoned_events(1) {
            let body = e.to_string();
            let head = clerksync::clerk::envelope::parse_head(body.as_bytes());
            assert!(head.is_ok(), "ingress accepts {body}");
            let t = e["type"].as_str().unwrap();
            assert!(
                clerksync::clerk::model::parse_event(t, &body, 1).is_err(),
                "{body} must fail to apply"
            );
        }
    }

    #[test]
    fn wildcard_listen_is_browsed_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:8080".parse().unwrap()).to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(reachable("[::]:9".parse().unwrap()).to_string(), "[::1]:9");
    }
}
