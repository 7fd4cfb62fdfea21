//! A userspace TCP proxy that adds a fixed round-trip latency (issue 21).
//!
//! Why: the PostgreSQL worker pool (`max_concurrent`) pays off when every round
//! trip to the database costs time, as it does across a network; these
//! machines have no `tc netem`. Every chunk read from either side is written
//! to the other side half the round trip later (`--rtt-ms 1` adds 0.5 ms each
//! way), in order, without slowing the chunks behind it (a reader and a writer
//! thread per direction: latency, not a bandwidth cap).
//!
//! Replaces `latency_proxy.py`: with sixteen connections that one ran 64 Python
//! threads behind one interpreter lock, and measured ~0.3 ms of its own per
//! round trip on a busy machine, so the proxy itself became the shared
//! resource the workers queued on. Here every thread runs on its own.
//!
//! Standard library only, so it builds without cargo:
//!     rustc -O -o latency_proxy scripts/latency_proxy.rs
//! Usage: latency_proxy [--listen 127.0.0.1:0] [--target 127.0.0.1:5432] [--rtt-ms 1.0]
//! Prints "listening on HOST:PORT" on stdout once it accepts connections; on
//! stderr, when a connection closes, the totals so far ("exchanges" counts the
//! client's chunks: each is at least one round trip the client waited for, or
//! a pipelined message). Runs until killed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 65536;

static CLIENT_CHUNKS: AtomicU64 = AtomicU64::new(0);
static CLIENT_BYTES: AtomicU64 = AtomicU64::new(0);
static SERVER_BYTES: AtomicU64 = AtomicU64::new(0);

/// Forwards src -> dst, each chunk `delay` after it was read.
fn pipe(mut src: TcpStream, mut dst: TcpStream, delay: Duration, from_client: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = src.read(&mut buf).unwrap_or(0);
            if from_client && n > 0 {
                CLIENT_CHUNKS.fetch_add(1, Ordering::Relaxed);
                CLIENT_BYTES.fetch_add(n as u64, Ordering::Relaxed);
            } else if n > 0 {
                SERVER_BYTES.fetch_add(n as u64, Ordering::Relaxed);
            }
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() || n == 0 {
                return;
            }
        }
    });
    thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if data.is_empty() || dst.write_all(&data).is_err() {
                break;
            }
        }
        // Either side closing ends both directions of this connection.
        let _ = dst.shutdown(Shutdown::Both);
        let _ = reader.join();
        if from_client {
            eprintln!(
                "latency_proxy: totals: exchanges {} client bytes {} server bytes {}",
                CLIENT_CHUNKS.load(Ordering::Relaxed),
                CLIENT_BYTES.load(Ordering::Relaxed),
                SERVER_BYTES.load(Ordering::Relaxed)
            );
        }
    });
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut target = "127.0.0.1:5432".to_string();
    let mut rtt_ms = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| exit(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => listen = value(),
            "--target" => target = value(),
            "--rtt-ms" => {
                rtt_ms = value()
                    .parse()
                    .unwrap_or_else(|_| exit("--rtt-ms takes a number"))
            }
            _ => exit(&format!("unknown argument {a}")),
        }
    }
    if !(0.0..=10_000.0).contains(&rtt_ms) {
        exit("--rtt-ms must be between 0 and 10000");
    }
    let delay = Duration::from_secs_f64(rtt_ms / 2000.0);
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| exit(&format!("{listen}: {e}")));
    println!("listening on {}", listener.local_addr().expect("bound"));
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let upstream = match TcpStream::connect(&target) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("latency_proxy: cannot reach {target}: {e}");
                continue;
            }
        };
        // Small database messages must not wait for Nagle on top of the delay.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (c2, u2) = match (client.try_clone(), upstream.try_clone()) {
            (Ok(c), Ok(u)) => (c, u),
            _ => continue,
        };
        pipe(client, upstream, delay, true);
        pipe(u2, c2, delay, false);
    }
}

fn exit(msg: &str) -> ! {
    eprintln!("latency_proxy: {msg}");
    std::process::exit(2)
}
