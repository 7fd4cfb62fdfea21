//! A minimal HTTP/1.1 client for the sender: one request at a time on a
//! keep-alive `TcpStream`, request bytes written into a reused buffer.
//!
//! Why not reqwest: on the 2-core bench machine reqwest (its pool, header maps,
//! URL handling, tower layers) cost the load generator ~46 µs of CPU per delivery,
//! half of what the server spends; the measuring tool must leave the cores to
//! what it measures. This writes one request with one `write` and parses the
//! answer's head with `httparse`.
//!
//! Owns: connecting to a plain `http://` target, writing a signed webhook POST,
//! reading the whole answer (Content-Length, chunked, or until close), and saying
//! whether the connection may be reused.
//!
//! Must never: retry (a failed request is a result the caller reports), pipeline
//! (one request in flight per connection: a closed loop measures latency per
//! request), or reuse a connection whose answer was not read to its end, that
//! said `Connection: close`, or that the server closed while it sat idle.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("write request: {0}")]
    Write(#[source] io::Error),
    #[error("read answer: {0}")]
    Read(#[source] io::Error),
    #[error("the server closed the connection before answering in full")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// The answer head may not exceed this (the server's are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// A connection idle longer than this is checked for a close by the server before
/// it is reused (a closed-loop worker's connection never idles that long).
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Where requests go: resolved once, so each connect is only a `connect`.
#[derive(Debug, Clone)]
pub struct Target {
    addr: SocketAddr,
    /// The request line's start and the `Host` header, prepared once:
    /// `POST /path HTTP/1.1\r\nhost: h:p\r\ncontent-type: application/json\r\n`.
    head_prefix: Vec<u8>,
}

impl Target {
    /// `url` must be `http://`; the caller picks another client for `https://`.
    pub async fn resolve(url: &url::Url) -> Result<Target, HttpError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let bare = host.trim_matches(['[', ']']).to_owned();
        let mut addrs = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|source| HttpError::Resolve {
                host: host.clone(),
                source,
            })?;
        let addr = addrs.next().ok_or(HttpError::NoAddress { host })?;
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let head_prefix = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
            url.authority()
        )
        .into_bytes();
        Ok(Target { addr, head_prefix })
    }

    pub async fn connect(&self) -> Result<Conn, HttpError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: self.addr,
                source,
            })?;
        // Each request is one write: Nagle would only delay it.
        stream
            .set_nodelay(true)
            .map_err(|source| HttpError::Connect {
                addr: self.addr,
                source,
            })?;
        Ok(Conn {
            stream,
            out: Vec::with_capacity(4096),
            inp: Vec::with_capacity(1024),
            last_used: Instant::now(),
        })
    }
}

/// The signed headers of one webhook delivery.
pub struct Webhook<'a> {
    pub svix_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// One keep-alive connection with its reused buffers.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    inp: Vec<u8>,
    last_used: Instant,
}

/// A complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The connection may carry the next request.
    pub reusable: bool,
}

impl Conn {
    /// False if the server closed (or wrote to) the connection while it sat idle:
    /// reusing it would turn the server's idle timeout into a transport error.
    pub fn still_open(&self) -> bool {
        if self.last_used.elapsed() < IDLE_CHECK {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends one POST and reads its whole answer.
    pub async fn post(&mut self, target: &Target, w: &Webhook<'_>) -> Result<Answer, HttpError> {
        write_request(&mut self.out, target, w);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(HttpError::Write)?;
        let answer = self.read_answer().await?;
        self.last_used = Instant::now();
        Ok(answer)
    }

    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.inp.capacity() - self.inp.len() < 512 {
            self.inp.reserve(4096);
        }
        let n = self
            .stream
            .read_buf(&mut self.inp)
            .await
            .map_err(HttpError::Read)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        Ok(())
    }

    async fn read_answer(&mut self) -> Result<Answer, HttpError> {
        self.inp.clear();
        loop {
            let head = loop {
                if let Some(head) = parse_head(&self.inp)? {
                    break head;
                }
                if self.inp.len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                self.fill().await?;
            };
            // 1xx answers (never asked for: no `Expect`) precede the real one.
            if (100..200).contains(&head.status) {
                self.inp.drain(..head.len);
                continue;
            }
            let no_body = head.status == 204 || head.status == 304;
            let reusable = match head.framing {
                _ if no_body => {
                    self.inp.drain(..head.len);
                    true
                }
                Framing::Length(n) => {
                    let end = head.len.checked_add(n).ok_or_else(|| {
                        HttpError::Malformed(format!("content-length {n} overflows"))
                    })?;
                    while self.inp.len() < end {
                        self.fill().await?;
                    }
                    self.inp.drain(..end);
                    true
                }
                Framing::Chunked => {
                    self.inp.drain(..head.len);
                    self.skip_chunked().await?;
                    true
                }
                Framing::UntilClose => {
                    loop {
                        self.inp.clear();
                        match self.fill().await {
                            Ok(()) => {}
                            Err(HttpError::Closed) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    false
                }
            };
            // Bytes after the answer were never asked for: do not reuse.
            let reusable = reusable && !head.close && self.inp.is_empty();
            return Ok(Answer {
                status: head.status,
                reusable,
            });
        }
    }

    /// Consumes a chunked body (and its trailers) from the front of `inp`.
    async fn skip_chunked(&mut self) -> Result<(), HttpError> {
        loop {
            let (size, line_len) = loop {
                if let Some(line_end) = find_crlf(&self.inp) {
                    let line = &self.inp[..line_end];
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                        .ok_or_else(|| HttpError::Malformed("bad chunk size".into()))?;
                    break (size, line_end + 2);
                }
                self.fill().await?;
            };
            if size == 0 {
                self.inp.drain(..line_len);
                // Trailers end with an empty line.
                loop {
                    match find_crlf(&self.inp) {
                        Some(0) => {
                            self.inp.drain(..2);
                            return Ok(());
                        }
                        Some(n) => {
                            self.inp.drain(..n + 2);
                        }
                        None => self.fill().await?,
                    }
                }
            }
            let end = line_len + size + 2;
            while self.inp.len() < end {
                self.fill().await?;
            }
            if &self.inp[end - 2..end] != b"\r\n" {
                return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
            }
            self.inp.drain(..end);
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Writes the request into `out` (cleared first): one buffer, one `write`.
fn write_request(out: &mut Vec<u8>, target: &Target, w: &Webhook<'_>) {
    use std::io::Write as _;
    out.clear();
    out.extend_from_slice(&target.head_prefix);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "content-length: {}\r\nsvix-id: {}\r\nsvix-timestamp: {}\r\nsvix-signature: {}\r\n\r\n",
        w.body.len(),
        w.svix_id,
        w.timestamp,
        w.signature
    );
    out.extend_from_slice(w.body);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    framing: Framing,
    /// The server will close after this answer.
    close: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| HttpError::Malformed("no status".into()))?;
    // HTTP/1.0 closes unless it says keep-alive; 1.1 keeps alive unless it says close.
    let mut close = resp.version == Some(0);
    let mut framing = Framing::UntilClose;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| HttpError::Malformed("bad content-length".into()))?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; it overrides any length.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    Ok(Some(Head {
        status,
        len,
        framing,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn heads_say_status_framing_and_close() {
        let h = parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.close, h.len),
            (202, Framing::Length(2), false, 44)
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.close), (Framing::Chunked, true));
        let h = parse_head(b"HTTP/1.0 401 Unauthorized\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.close),
            (401, Framing::UntilClose, true)
        );
        let h =
            parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!h.close);
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn the_request_is_one_signed_post() {
        let target = Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            head_prefix: b"POST /w?x=1 HTTP/1.1\r\nhost: h:1\r\ncontent-type: application/json\r\n"
                .to_vec(),
        };
        let mut out = b"stale".to_vec();
        write_request(
            &mut out,
            &target,
            &Webhook {
                svix_id: "msg_1",
                timestamp: 1700000000,
                signature: "v1,abc=",
                body: b"{\"a\":1}",
            },
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(&out).unwrap() else {
            panic!("incomplete request")
        };
        assert_eq!((req.method, req.path), (Some("POST"), Some("/w?x=1")));
        let get = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
        };
        assert_eq!(get("content-length").as_deref(), Some("7"));
        assert_eq!(get("svix-id").as_deref(), Some("msg_1"));
        assert_eq!(get("svix-timestamp").as_deref(), Some("1700000000"));
        assert_eq!(get("svix-signature").as_deref(), Some("v1,abc="));
        assert_eq!(&out[len..], b"{\"a\":1}");
    }

    /// A server that answers each request with the next canned answer, reading
    /// only the request head and its content-length body.
    async fn canned(answers: Vec<&'static [u8]>) -> url::Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            url::Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for answer in answers {
                loop {
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut req = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
                        let body: usize = req
                            .headers
                            .iter()
                            .find(|h| h.name == "content-length")
                            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                            .unwrap();
                        if buf.len() >= len + body {
                            buf.drain(..len + body);
                            break;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                }
                s.write_all(answer).await.unwrap();
            }
            // Closing after the last answer.
        });
        url
    }

    const HOOK: Webhook<'static> = Webhook {
        svix_id: "msg_1",
        timestamp: 1,
        signature: "v1,x",
        body: b"{}",
    };

    #[tokio::test]
    async fn reads_each_framing_and_keeps_alive_only_when_allowed() {
        let url = canned(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 4\r\n\r\nok\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let target = Target::resolve(&url).await.unwrap();
        let mut conn = target.connect().await.unwrap();
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(conn.post(&target, &HOOK).await.unwrap());
        }
        let got: Vec<_> = answers.iter().map(|a| (a.status, a.reusable)).collect();
        assert_eq!(got, [(202, true), (500, true), (204, true), (401, false)]);
        // The server is gone: the next request on this connection fails, it is
        // not retried on a new one.
        assert!(conn.post(&target, &HOOK).await.is_err());
    }

    #[tokio::test]
    async fn reads_until_close_and_reports_a_cut_answer() {
        let url = canned(vec![b"HTTP/1.0 200 OK\r\n\r\nwhole body"]).await;
        let target = Target::resolve(&url).await.unwrap();
        let mut conn = target.connect().await.unwrap();
        let a = conn.post(&target, &HOOK).await.unwrap();
        assert_eq!((a.status, a.reusable), (200, false));

        let url = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let target = Target::resolve(&url).await.unwrap();
        let mut conn = target.connect().await.unwrap();
        assert!(matches!(
            conn.post(&target, &HOOK).await,
            Err(HttpError::Closed)
        ));
    }
}
