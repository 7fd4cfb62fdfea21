//! Delivery bodies at rest: compressed with zstd when written, read back from
//! either form.
//!
//! Owns: the one encoding of a stored body. Rows written before migration 0023
//! hold plain text (`inbox_bodies.body`); rows written since hold a zstd frame
//! (`inbox_bodies.body_zstd`) and an empty `body`. Each backend selects
//! `COALESCE(body_zstd, body)` as bytes and hands them to [`decode`], which
//! tells the two apart by zstd's frame magic (a JSON text never starts with
//! it: 0xB5 is not valid UTF-8 as a second byte after `(`). Must never: fail a
//! read of many deliveries because one body is damaged (it reads as empty,
//! and that one event dead-letters with a parse error).

use std::cell::RefCell;

/// The first four bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// zstd's level 3 (its default): on 1-3 KB Clerk bodies it keeps about a
/// third of the bytes at tens of microseconds; higher levels gain a few
/// percent for several times the CPU on the ingest path.
const LEVEL: i32 = 3;

/// The stored form of a body. Compression of an in-memory buffer cannot
/// fail short of running out of memory; should it, the plain bytes are stored
/// (and read back as plain text, having no zstd magic).
///
/// Each thread keeps one compression context: creating one per body (what
/// `zstd::bulk::compress` does) allocated and zeroed its tables every time,
/// and `perf` put context creation and the page zeroing it caused at a fifth
/// of the server's CPU under load.
pub(crate) fn compress(body: &str) -> Vec<u8> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            RefCell::new(zstd::bulk::Compressor::new(LEVEL).ok());
    }
    COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            c.as_mut()?.compress(body.as_bytes()).ok()
        })
        .unwrap_or_else(|| body.as_bytes().to_vec())
}

/// The largest body a frame may claim to hold before it is read with the
/// streaming decoder instead of into a buffer of that size: a damaged frame
/// header must not make one read allocate gigabytes.
const MAX_FRAME_CONTENT: u64 = 64 * 1024 * 1024;

/// A zstd frame decompressed with this thread's context (see [`compress`]).
fn decompress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            RefCell::new(zstd::bulk::Decompressor::new().ok());
    }
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) if n <= MAX_FRAME_CONTENT => n as usize,
        // Frames this module writes always carry their size; anything else
        // (or a bogus size) goes through the streaming decoder.
        _ => return zstd::stream::decode_all(bytes),
    };
    DECOMPRESSOR.with(|d| match d.borrow_mut().as_mut() {
        Some(d) => d.decompress(bytes, size),
        None => zstd::stream::decode_all(bytes),
    })
}

/// A body as stored (plain text or a zstd frame; None when the body is gone:
/// expired by retention, or missing by hand) read back as text. Public for
/// tools and tests that read a database file directly.
pub fn decode(stored: Option<&[u8]>) -> String {
    let Some(bytes) = stored else {
        return String::new();
    };
    let plain = if bytes.starts_with(&ZSTD_MAGIC) {
        match decompress(bytes) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "a stored delivery body does not decompress");
                return String::new();
            }
        }
    } else {
        bytes.to_vec()
    };
    String::from_utf8(plain).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored delivery body is not UTF-8");
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_compressed_and_plain_rows_still_read() {
        let body = r#"{"type":"user.updated","data":{"id":"user_1","first_name":"Zoë"}}"#;
        let z = compress(body);
        assert!(z.starts_with(&ZSTD_MAGIC));
        assert_eq!(decode(Some(&z)), body);
        // A row written before bodies were compressed.
        assert_eq!(decode(Some(body.as_bytes())), body);
        assert_eq!(decode(None), "");
        // A damaged frame reads as empty instead of failing the read.
        assert_eq!(decode(Some(&z[..6])), "");
        // The same thread's context is reused: many bodies round-trip.
        for i in 0..50 {
            let b = format!(r#"{{"type":"user.created","data":{{"id":"user_{i}"}}}}"#);
            assert_eq!(decode(Some(&compress(&b))), b);
        }
    }

    #[test]
    fn a_frame_without_its_content_size_still_reads() {
        // Streaming encoders write frames that do not declare their size.
        let body = "{\"type\":\"session.created\",\"data\":{}}".repeat(20);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, body.as_bytes()).unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&z).ok(), Some(None));
        assert_eq!(decode(Some(&z)), body);
    }
}
