//! The HTTP server: accept loop, per-connection limits, graceful shutdown.
//!
//! Owns: how long a client may take over its headers and its body, how many
//! connections are open at once and which one makes room when the cap is hit,
//! and the peer address handed to handlers (`ConnectInfo<SocketAddr>`).
//! Must never: let a client that sends nothing keep a connection past the
//! header timeout, stop accepting because slow clients hold every slot (a
//! quick request such as `/healthz` must still be served), or buffer a body.

use crate::config::{ConfigError, Settings};
use crate::telemetry::metrics::HttpMetrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;
/// Half of the usual 1,024-descriptor limit: the database pool, the search
/// index and outgoing connections keep the other half.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// 64 bodies of the default 1 MiB limit.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The server's limits, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// A request's headers must arrive within this long of the connection
    /// opening or of the previous response (hyper's timer also runs while a
    /// keep-alive connection waits, so it bounds idle connections too).
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this long of its headers.
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Webhook body bytes held at once over all requests (webhook/handler.rs).
    pub max_buffered_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
        }
    }
}

impl HttpConfig {
    pub fn from_settings(s: &Settings) -> Result<HttpConfig, ConfigError> {
        let secs = |v: Option<u64>, default: u64, name: &'static str| {
            let v = v.unwrap_or(default);
            if (1..=3600).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(ConfigError::BadValue {
                    name,
                    message: "must be between 1 and 3600 seconds".into(),
                })
            }
        };
        let max_connections = s.http_max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_HTTP_MAX_CONNECTIONS",
                message: "must be between 1 and 1000000".into(),
            });
        }
        let max_body = s
            .max_body_bytes
            .unwrap_or(crate::config::DEFAULT_MAX_BODY_BYTES);
        let budget = s
            .max_buffered_body_bytes
            .unwrap_or(DEFAULT_MAX_BUFFERED_BODY_BYTES.max(max_body));
        // A budget below one body would refuse every large delivery; permits are u32.
        if budget < max_body || budget > u32::MAX as usize {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_MAX_BUFFERED_BODY_BYTES",
                message: format!(
                    "must be at least CLERKSYNC_MAX_BODY_BYTES ({max_body}) and below 4 GiB"
                ),
            });
        }
        Ok(HttpConfig {
            header_timeout: secs(
                s.http_header_timeout_secs,
                DEFAULT_HEADER_TIMEOUT_SECS,
                "CLERKSYNC_HTTP_HEADER_TIMEOUT_SECS",
            )?,
            body_timeout: secs(
                s.http_body_timeout_secs,
                DEFAULT_BODY_TIMEOUT_SECS,
                "CLERKSYNC_HTTP_BODY_TIMEOUT_SECS",
            )?,
            max_connections,
            max_buffered_body_bytes: budget,
        })
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets each connection finish its request in hand, and returns
/// once every connection is closed (upgraded WebSockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    metrics: HttpMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry {
        inner: Mutex::new(RegistryInner::default()),
        max: config.max_connections,
        metrics: metrics.clone(),
    });
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors: make room by closing an idle
                    // connection, as at the cap. Any other accept error is
                    // about the one connection; pause briefly (no busy loop).
                    // EMFILE (24) and ENFILE (23) on Linux.
                    if matches!(e.raw_os_error(), Some(24) | Some(23)) {
                        registry.evict_oldest_idle();
                    }
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(slot) = registry.admit() else {
            metrics.refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(serve_connection(
            stream,
            peer,
            slot,
            router.clone(),
            config,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    router: Router,
    config: HttpConfig,
    metrics: HttpMetrics,
    shutdown: CancellationToken,
) {
    let conn_state = slot.state.clone();
    let busy = conn_state.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let guard = Busy::new(busy.clone());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        let body = Body::new(DeadlineBody::new(body, config.body_timeout));
        let req = axum::http::Request::from_parts(parts, body);
        async move {
            let response = router.oneshot(req).await;
            drop(guard);
            response
        }
    });
    let io = TokioIo::new(Tracked {
        stream,
        _slot: slot,
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => Some(r),
        // Dropping the connection closes it.
        _ = conn_state.evict.cancelled() => None,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = conn_state.evict.cancelled() => None,
            }
        }
    };
    // An upgraded connection lives on in its handler: it holds its slot (the
    // socket does) but can no longer be evicted from here.
    conn_state.serving.store(false, Ordering::Relaxed);
    if let Some(Err(e)) = result {
        if e.is_timeout() {
            metrics.header_timeouts.inc();
        }
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// One open connection, as the registry sees it.
struct ConnState {
    id: u64,
    /// Requests being handled; 0 means idle or still sending headers.
    busy: AtomicUsize,
    /// The connection task is still driving hyper (false once upgraded or done).
    serving: AtomicBool,
    evict: CancellationToken,
}

struct Busy(Arc<ConnState>);

impl Busy {
    fn new(s: Arc<ConnState>) -> Busy {
        s.busy.fetch_add(1, Ordering::Relaxed);
        Busy(s)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections, oldest first (ids only grow).
struct Registry {
    inner: Mutex<RegistryInner>,
    max: usize,
    metrics: HttpMetrics,
}

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    /// Connections that count toward the cap (evicted ones leave at once).
    open: BTreeMap<u64, Arc<ConnState>>,
}

/// A connection's place under the cap; given back when the socket closes.
struct Slot {
    registry: Arc<Registry>,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock().expect("registry lock");
        if inner.open.remove(&self.state.id).is_some() {
            self.registry.metrics.connections.dec();
        }
    }
}

impl Registry {
    /// A slot for a new connection. At the cap the oldest connection that is
    /// idle or still sending its headers is closed to make room (a slowloris
    /// holds only such connections); with none, the new one is refused.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.open.len() >= self.max && !self.evict_locked(&mut inner) {
            return None;
        }
        inner.next_id += 1;
        let state = Arc::new(ConnState {
            id: inner.next_id,
            busy: AtomicUsize::new(0),
            serving: AtomicBool::new(true),
            evict: CancellationToken::new(),
        });
        inner.open.insert(state.id, state.clone());
        self.metrics.connections.inc();
        Some(Slot {
            registry: self.clone(),
            state,
        })
    }

    fn evict_oldest_idle(&self) {
        let mut inner = self.inner.lock().expect("registry lock");
        self.evict_locked(&mut inner);
    }

    fn evict_locked(&self, inner: &mut RegistryInner) -> bool {
        let victim = inner
            .open
            .values()
            .find(|c| c.serving.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0)
            .cloned();
        let Some(victim) = victim else {
            return false;
        };
        inner.open.remove(&victim.id);
        self.metrics.connections.dec();
        self.metrics.evicted.inc();
        victim.evict.cancel();
        true
    }
}

/// The socket with its slot: the slot is given back when the socket is
/// dropped, whether by hyper or, after an upgrade, by a WebSocket handler.
struct Tracked {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The body did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// True when `e`, or an error it wraps, is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(e);
    while let Some(err) = e {
        if err.is::<BodyTimeout>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// A request body that must be complete by a deadline (a slow trickle cannot
/// hold a handler, or its buffer, for longer than the body timeout).
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Made only when the body actually has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values_name_the_setting() {
        let c = HttpConfig::from_settings(&Settings::default()).unwrap();
        assert_eq!(c, HttpConfig::default());
        assert!(c.max_connections < 1024, "fits a 1,024-descriptor process");
        let bad = |s: Settings, name: &str| {
            let e = HttpConfig::from_settings(&s).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        };
        bad(
            Settings {
                http_header_timeout_secs: Some(0),
                ..Default::default()
            },
            "CLERKSYNC_HTTP_HEADER_TIMEOUT_SECS",
        );
        bad(
            Settings {
                http_body_timeout_secs: Some(100_000),
                ..Default::default()
            },
            "CLERKSYNC_HTTP_BODY_TIMEOUT_SECS",
        );
        bad(
            Settings {
                http_max_connections: Some(0),
                ..Default::default()
            },
            "CLERKSYNC_HTTP_MAX_CONNECTIONS",
        );
        bad(
            Settings {
                max_body_bytes: Some(2 << 20),
                max_buffered_body_bytes: Some(1 << 20),
                ..Default::default()
            },
            "CLERKSYNC_MAX_BUFFERED_BODY_BYTES",
        );
        // A body limit above the default budget raises the default budget.
        let c = HttpConfig::from_settings(&Settings {
            max_body_bytes: Some(100 << 20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_buffered_body_bytes, 100 << 20);
    }
}
