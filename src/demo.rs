//! `clerksync demo`: the whole service on one command, for a newcomer.
//!
//! Owns: generating a throwaway webhook secret and admin token, a fresh demo
//! data directory, starting the app on the embedded database, feeding it a
//! loadgen stream plus a few poisoned deliveries in the background (so every
//! dashboard panel has something to show), and printing where to look.
//!
//! Must never: install a signal handler (the caller passes the shutdown future,
//! as for `serve`), delete a directory it did not create (only one carrying its
//! marker file), or reach the server other than over HTTP like Svix would (the
//! feed signs its deliveries; nothing is written into the database directly).

use crate::app::{App, BuildError};
use crate::config::{Config, ConfigError, Settings};
use crate::loadgen::{self, LoadgenArgs};
use crate::webhook::WebhookSecret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use clap::Parser;
use serde_json::json;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The flags of `clerksync demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Directory of the demo's database and search index. Emptied at start when
    /// an earlier demo made it; refused when it holds anything else.
    #[arg(long, default_value = "demo-data")]
    pub data_dir: PathBuf,
    /// Events the background load generator sends.
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// Deliveries per second of the background stream (slow enough to watch).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--listen '{0}' is not a socket address: use host:port, e.g. 127.0.0.1:8080")]
    BadListen(String),
    #[error("{0} is already in use (another clerksync or demo running?): stop it, or pass a free address, e.g. --listen 127.0.0.1:18080")]
    AddrInUse(SocketAddr),
    #[error("cannot listen on {addr}: {source} (pass another address with --listen)")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0} exists and was not made by `clerksync demo`: pass another --data-dir (the demo empties its directory at start)")]
    ForeignDataDir(PathBuf),
    #[error("cannot prepare the demo data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("--events must be at least 1 and --rate a positive number")]
    BadStream,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the server stopped with an error: {0}")]
    Serve(io::Error),
}

/// Marks a directory as the demo's own, so a later demo may empty it.
const MARKER: &str = ".clerksync-demo";

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
    if args.events == 0 || !(args.rate.is_finite() && args.rate > 0.0) {
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

    print_banner(&base, &whsec, &admin_token, &args, fresh);

    // The stream stops the moment shutdown is asked for: it is a client of the
    // server, and its remaining sends would only fail against a closed listener.
    let stop = CancellationToken::new();
    let feeder = tokio::spawn({
        let stop = stop.clone();
        let events = args.events;
        let rate = args.rate;
        async move {
            tokio::select! {
                _ = feed(base, secret, whsec, events, rate) => {}
                _ = stop.cancelled() => {}
            }
        }
    });
    let served = app
        .run(async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
    let _ = feeder.await;
    served.map_err(DemoError::Serve)?;
    println!(
        "demo stopped; its data stays in {} until the next demo (clerksync events stats --data-dir {})",
        args.data_dir.display(),
        args.data_dir.display()
    );
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

/// Creates the directory, or empties one an earlier demo made. Returns whether
/// an earlier demo's data was removed.
fn prepare_data_dir(dir: &Path) -> Result<bool, DemoError> {
    let err = |source| DemoError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut removed = false;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if dir.join(MARKER).is_file() {
                std::fs::remove_dir_all(dir).map_err(err)?;
                removed = true;
            } else if entries.next().is_some() {
                return Err(DemoError::ForeignDataDir(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(
        dir.join(MARKER),
        "made by `clerksync demo`; the next demo empties this directory\n",
    )
    .map_err(err)?;
    Ok(removed)
}

fn print_banner(base: &str, whsec: &str, token: &str, args: &DemoArgs, fresh: bool) {
    let dir = args.data_dir.display();
    let cleared = if fresh {
        " (the previous demo's data was removed)"
    } else {
        ""
    };
    println!(
        "\n\
clerksync demo is running: {events} events at {rate}/s are on their way, with \
duplicates, out-of-order and forged deliveries mixed in, and 3 poisoned events that \
dead-letter.

  Dashboard:       {base}/admin#token={token}
  Admin token:     {token}
  Webhook secret:  {whsec}
  Data directory:  {dir}{cleared}

Try:
  curl -s -H 'Authorization: Bearer {token}' {base}/admin/stats
  curl -s '{base}/v1/users?limit=2'
  clerksync loadgen --url {base}/webhooks/clerk --secret {whsec} --events 1000

Ctrl-C stops it.
",
        events = args.events,
        rate = args.rate,
    );
}

/// The background stream: loadgen at a watchable rate, and the poisoned
/// deliveries a few seconds in, so they show up in the middle of the live list.
async fn feed(base: String, secret: WebhookSecret, whsec: String, events: usize, rate: f64) {
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
    // Joined, not spawned: dropping this future at shutdown drops the stream too.
    let (report, ()) = tokio::join!(loadgen::run(wrap.args), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Err(e) = post_poisoned(&base, &secret).await {
            eprintln!("demo: could not send the poisoned events: {e}");
        }
    });
    match report {
        Ok(json) => match serde_json::from_str::<loadgen::report::Report>(&json) {
            Ok(r) => println!(
                "demo stream done: {} deliveries sent, {} accepted, {} forged ones refused; \
                 the server keeps running (Ctrl-C stops it)",
                r.sent,
                r.status_2xx,
                r.forged_by_status.get(&401).copied().unwrap_or(0)
            ),
            Err(_) => println!("demo stream done"),
        },
        Err(e) => eprintln!("demo: the background stream failed: {e}"),
    }
}

async fn post_poisoned(base: &str, secret: &WebhookSecret) -> Result<(), reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for (i, event) in poisoned_events(now_ms).into_iter().enumerate() {
        let svix_id = loadgen::ids::svix_id(now_ms, i as u32, &mut rand::thread_rng());
        let body = event.to_string();
        let ts = now_ms / 1000;
        client
            .post(format!("{base}/webhooks/clerk"))
            .header("svix-id", &svix_id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", secret.sign(&svix_id, ts, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?
            .error_for_status()?;
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
        std::fs::write(dir.join("clerksync.db"), b"old").unwrap();
        assert!(prepare_data_dir(&dir).unwrap());
        assert!(
            !dir.join("clerksync.db").exists(),
            "an earlier demo's data goes"
        );

        let foreign = tmp.path().join("data");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("clerksync.db"), b"precious").unwrap();
        assert!(matches!(
            prepare_data_dir(&foreign),
            Err(DemoError::ForeignDataDir(_))
        ));
        assert!(foreign.join("clerksync.db").exists());
    }

    #[test]
    fn poisoned_events_are_envelopes_that_never_apply() {
        for e in poisoned_events(1) {
            let body = e.to_string();
            let head = crate::clerk::envelope::parse_head(body.as_bytes());
            assert!(head.is_ok(), "ingress accepts {body}");
            let t = e["type"].as_str().unwrap();
            assert!(
                crate::clerk::model::parse_event(t, &body, 1).is_err(),
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
