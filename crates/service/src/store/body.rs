//! Delivery bodies at rest: compressed with zstd when written, read back from
//! either form; the zstd dictionaries that make small bodies compress well.
//!
//! Owns: the one encoding of a stored body, and the dictionaries bodies are
//! compressed with. Rows written before migration 0023 hold plain text
//! (`inbox_bodies.body`); rows written since hold a zstd frame
//! (`inbox_bodies.body_zstd`) and an empty `body`. Each backend selects
//! `COALESCE(body_zstd, body)` as bytes and hands them to [`decode`], which
//! tells the two apart by zstd's frame magic (a JSON text never starts with
//! it: 0xB5 is not valid UTF-8 as a second byte after `(`).
//!
//! Dictionaries (SQLite, migration 0026): a 1-3 KB Clerk body is mostly the
//! same field names and shapes as every other one, which a frame on its own
//! cannot exploit. A [`BodyCodec`] samples the deployment's own first
//! [`SAMPLES`] bodies, trains a dictionary from them on a thread of its own,
//! and hands it to its backend to store; only once it is stored does the
//! codec compress with it (so no frame ever names a dictionary the database
//! lacks). A frame names its dictionary by zstd's dictionary id (in the frame
//! header); frames without one, and plain rows, still read. A new dictionary
//! is trained every [`ROTATE_AFTER_MS`]; older ones stay for the frames that
//! name them.
//!
//! A dictionary is made of fragments of its samples and outlives them, so it
//! is trained on skeletons of the bodies ([`skeletons`]), not the bodies:
//! field names, numbers and Clerk's vocabulary (`"object":"user"`,
//! `"status":"verified"`) stay, and a string value stays only when the bodies
//! of at least [`MIN_SUBJECTS`] different users carry it; every other value
//! is emptied. No name, address, phone number or whole id of anyone reaches a
//! dictionary, so erasure has nothing to rewrite there. Measured on the
//! realistic stream (`cargo bench --bench bodies`: 1,396 bytes per body):
//! 852 bytes per frame without a dictionary, 367 with one (221 if it were
//! trained on the bodies themselves).
//!
//! Must never: compress with a dictionary its database has not stored; fail
//! a read of many deliveries because one body is damaged (it reads as empty,
//! and that one event dead-letters with a parse error).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The first four bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// zstd's level 3 (its default): on 1-3 KB Clerk bodies it keeps about a
/// third of the bytes at tens of microseconds; higher levels gain a few
/// percent for several times the CPU on the ingest path.
const LEVEL: i32 = 3;

/// Bodies a dictionary is trained from: ~2 MB of typical bodies, about a
/// hundred times the dictionary (zstd's advice). Training takes ~0.1 s of one
/// core and ~15 MB for that moment, on a thread of its own.
pub const SAMPLES: usize = 1000;
/// Bodies larger than this are not sampled (they are rare, and one would
/// dominate the samples).
const MAX_SAMPLE_BYTES: usize = 16 * 1024;
/// The dictionary's size. 16 KB kept 4% more bytes per frame, 64 KB saved
/// 1% more (zstd's `--train` on the realistic stream).
const DICT_BYTES: usize = 32 * 1024;
/// How old the newest dictionary may get before a new one is trained from
/// the bodies arriving then (Clerk's payloads change shape slowly).
pub const ROTATE_AFTER_MS: i64 = 30 * 86_400_000;

/// The stored form of a body without a dictionary (see [`BodyCodec::compress`]).
pub(crate) fn compress(body: &str) -> Vec<u8> {
    compress_with(None, body)
}

/// A body compressed with this thread's context, with `dict` if given.
/// Compression of an in-memory buffer cannot fail short of running out of
/// memory; should it, the plain bytes are stored (and read back as plain
/// text, having no zstd magic).
///
/// Each thread keeps one compression context: creating one per body (what
/// `zstd::bulk::compress` does) allocated and zeroed its tables every time,
/// and `perf` put context creation and the page zeroing it caused at a fifth
/// of the server's CPU under load. A context is made again only when the
/// dictionary changes.
fn compress_with(dict: Option<Dict>, body: &str) -> Vec<u8> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<(u32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    let id = dict.map_or(0, |d| d.id);
    COMPRESSOR
        .with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(i, _)| *i) != Some(id) {
                let made = match dict {
                    Some(d) => zstd::bulk::Compressor::with_prepared_dictionary(d.encoder),
                    None => zstd::bulk::Compressor::new(LEVEL),
                };
                *c = made.ok().map(|made| (id, made));
            }
            c.as_mut()?.1.compress(body.as_bytes()).ok()
        })
        .unwrap_or_else(|| body.as_bytes().to_vec())
}

/// The largest body a frame may claim to hold before it is read with the
/// streaming decoder instead of into a buffer of that size: a damaged frame
/// header must not make one read allocate gigabytes.
const MAX_FRAME_CONTENT: u64 = 64 * 1024 * 1024;

/// Every dictionary this process has loaded or trained, by id, for [`decode`]
/// (which has no database at hand: tests and tools read database files
/// directly). Ids are zstd's: derived from the dictionary's content, so the
/// same id is the same dictionary. Entries live as long as the process (a
/// database gains one a month).
fn decoders() -> &'static RwLock<HashMap<u32, &'static DecoderDictionary<'static>>> {
    static DECODERS: OnceLock<RwLock<HashMap<u32, &'static DecoderDictionary<'static>>>> =
        OnceLock::new();
    DECODERS.get_or_init(Default::default)
}

/// Why a stored dictionary cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a zstd dictionary ({0} bytes)")]
pub struct NotADictionary(usize);

/// Makes a dictionary (as stored) known to [`decode`]; returns its id.
pub fn register(dict: &[u8]) -> Result<u32, NotADictionary> {
    let id = zstd::zstd_safe::get_dict_id_from_dict(dict)
        .ok_or(NotADictionary(dict.len()))?
        .get();
    let mut map = decoders().write().unwrap_or_else(|p| p.into_inner());
    map.entry(id)
        .or_insert_with(|| Box::leak(Box::new(DecoderDictionary::copy(dict))));
    Ok(id)
}

/// The compression side of dictionary `id` (whose bytes are `dict`), made
/// once per process like [`decoders`]: every database opened with that
/// dictionary (tests open many) shares it instead of leaking a copy each.
fn encoder(id: u32, dict: &[u8]) -> &'static EncoderDictionary<'static> {
    static ENCODERS: OnceLock<Mutex<HashMap<u32, &'static EncoderDictionary<'static>>>> =
        OnceLock::new();
    let mut map = ENCODERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(id)
        .or_insert_with(|| Box::leak(Box::new(EncoderDictionary::copy(dict, LEVEL))))
}

/// A zstd frame decompressed with this thread's context for its dictionary
/// (see [`compress_with`]).
fn decompress(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSORS: RefCell<Vec<(u32, zstd::bulk::Decompressor<'static>)>> =
            const { RefCell::new(Vec::new()) };
    }
    let id = zstd::zstd_safe::get_dict_id_from_frame(bytes).map_or(0, |id| id.get());
    let dict = match id {
        0 => None,
        id => Some(
            *decoders()
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .ok_or_else(|| {
                    std::io::Error::other(format!("the frame names dictionary {id}, not loaded"))
                })?,
        ),
    };
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) if n <= MAX_FRAME_CONTENT => n as usize,
        // Frames this module writes always carry their size; anything else
        // (or a bogus size) goes through the streaming decoder.
        _ => {
            let mut out = Vec::new();
            let mut dec = match dict {
                Some(d) => zstd::stream::read::Decoder::with_prepared_dictionary(bytes, d)?,
                None => zstd::stream::read::Decoder::with_buffer(bytes)?,
            };
            std::io::copy(&mut dec, &mut out)?;
            return Ok(out);
        }
    };
    DECOMPRESSORS.with(|d| {
        let mut d = d.borrow_mut();
        let at = match d.iter().position(|(i, _)| *i == id) {
            Some(at) => at,
            None => {
                let made = match dict {
                    Some(dict) => zstd::bulk::Decompressor::with_prepared_dictionary(dict)?,
                    None => zstd::bulk::Decompressor::new()?,
                };
                d.push((id, made));
                d.len() - 1
            }
        };
        d[at].1.decompress(bytes, size)
    })
}

/// A body as stored (plain text or a zstd frame; None when the body is gone:
/// expired by retention, or missing by hand) read back as text. Public for
/// tools and tests that read a database file directly (a frame that names a
/// dictionary needs it [`register`]ed first; the store does that on open).
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

/// A dictionary ready to compress with.
#[derive(Clone, Copy)]
struct Dict {
    id: u32,
    encoder: &'static EncoderDictionary<'static>,
    created_at: i64,
}

/// Where a codec is in making its next dictionary.
enum Training {
    /// Not making one: the current dictionary is recent (or training failed
    /// in this process; the next start tries again).
    Idle,
    /// Keeping copies of bodies as they are written.
    Sampling(Vec<Vec<u8>>),
    /// Training on its thread, or being stored.
    Busy,
    /// Trained, waiting for its backend to store it ([`BodyCodec::take_trained`]).
    Trained(Vec<u8>),
}

/// One database's body compression: the dictionary it writes with and the
/// making of the next one. Its backend loads the stored dictionaries
/// ([`BodyCodec::load`]), stores what [`BodyCodec::take_trained`] hands it,
/// then calls [`BodyCodec::stored`].
pub struct BodyCodec {
    current: RwLock<Option<Dict>>,
    training: Arc<Mutex<Training>>,
    /// Whether `training` is [`Training::Sampling`]: bodies written at any
    /// other time take no lock but the dictionary's read lock.
    sampling: AtomicBool,
}

impl std::fmt::Debug for BodyCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("BodyCodec")
            .field("dictionary", &current.map(|d| d.id))
            .field("sampling", &self.sampling.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for BodyCodec {
    fn default() -> Self {
        BodyCodec {
            current: RwLock::new(None),
            training: Arc::new(Mutex::new(Training::Sampling(Vec::new()))),
            sampling: AtomicBool::new(true),
        }
    }
}

impl BodyCodec {
    /// The dictionaries a database holds, (id, bytes, created_at ms): all of
    /// them become readable, the newest is written with (a new one is
    /// sampled for when it is older than [`ROTATE_AFTER_MS`] at `now_ms`).
    pub fn load(&self, stored: &[(i64, Vec<u8>, i64)], now_ms: i64) -> Result<(), NotADictionary> {
        let mut newest: Option<(&[u8], i64)> = None;
        for (_, bytes, created_at) in stored {
            register(bytes)?;
            if newest.is_none_or(|(_, at)| *created_at > at) {
                newest = Some((bytes, *created_at));
            }
        }
        if let Some((bytes, created_at)) = newest {
            self.install(bytes, created_at)?;
            if now_ms - created_at < ROTATE_AFTER_MS {
                self.set(Training::Idle);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Training> {
        self.training.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, next: Training) {
        let mut training = self.lock();
        self.sampling
            .store(matches!(next, Training::Sampling(_)), Ordering::Relaxed);
        *training = next;
    }

    fn install(&self, bytes: &[u8], created_at: i64) -> Result<(), NotADictionary> {
        let id = register(bytes)?;
        let encoder = encoder(id, bytes);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Dict {
            id,
            encoder,
            created_at,
        });
        Ok(())
    }

    /// The stored form of a body: a zstd frame, with the current dictionary
    /// once there is one. While sampling, keeps a copy of the body; the last
    /// sample starts the training thread.
    pub fn compress(&self, body: &str) -> Vec<u8> {
        let dict = *self.current.read().unwrap_or_else(|p| p.into_inner());
        if self.sampling.load(Ordering::Relaxed) {
            self.sample(body);
        }
        compress_with(dict, body)
    }

    fn sample(&self, body: &str) {
        let mut training = self.lock();
        if let Training::Sampling(samples) = &mut *training {
            if body.len() <= MAX_SAMPLE_BYTES {
                samples.push(body.as_bytes().to_vec());
            }
            if samples.len() >= SAMPLES {
                let samples = std::mem::take(samples);
                *training = Training::Busy;
                self.sampling.store(false, Ordering::Relaxed);
                drop(training);
                self.train(samples);
            }
        }
    }

    fn train(&self, samples: Vec<Vec<u8>>) {
        let slot = self.training.clone();
        let spawned = std::thread::Builder::new()
            .name("body-dictionary".into())
            .spawn(move || {
                let samples = skeletons(&samples);
                let next = match zstd::dict::from_samples(&samples, DICT_BYTES) {
                    Ok(dict) if zstd::zstd_safe::get_dict_id_from_dict(&dict).is_some() => {
                        Training::Trained(dict)
                    }
                    Ok(_) => Training::Idle,
                    Err(e) => {
                        // Bodies too few or too alike: frames stay without a
                        // dictionary until the next start.
                        tracing::warn!(error = %e, "no body dictionary could be trained");
                        Training::Idle
                    }
                };
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = next;
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start training a body dictionary");
            self.set(Training::Idle);
        }
    }

    /// A trained dictionary its backend must store (id, bytes) before
    /// calling [`BodyCodec::stored`]; None most of the time. Also starts
    /// sampling for the next dictionary when the current one is too old.
    pub fn take_trained(&self, now_ms: i64) -> Option<(u32, Vec<u8>)> {
        let mut training = self.lock();
        match &mut *training {
            Training::Trained(dict) => {
                let dict = std::mem::take(dict);
                *training = Training::Busy;
                let id = zstd::zstd_safe::get_dict_id_from_dict(&dict)?.get();
                Some((id, dict))
            }
            Training::Idle => {
                let old = self
                    .current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|d| now_ms - d.created_at >= ROTATE_AFTER_MS);
                if old {
                    *training = Training::Sampling(Vec::new());
                    self.sampling.store(true, Ordering::Relaxed);
                }
                None
            }
            Training::Sampling(_) | Training::Busy => None,
        }
    }

    /// The dictionary [`BodyCodec::take_trained`] handed out was stored (at
    /// `created_at`) when `stored` holds, else it is dropped and a new one
    /// is sampled for. Bodies are compressed with it from now on.
    pub fn stored(&self, dict: &[u8], created_at: i64, stored: bool) {
        let next = if stored && self.install(dict, created_at).is_ok() {
            Training::Idle
        } else {
            Training::Sampling(Vec::new())
        };
        self.set(next);
    }
}

/// Fields whose string values are Clerk's own vocabulary (an object's type,
/// a status, a strategy, a currency), never a person's data: a sample keeps
/// them, since they repeat across every deployment's bodies.
const VOCABULARY: &[&str] = &[
    "object",
    "type",
    "status",
    "strategy",
    "provider",
    "role",
    "channel",
    "currency",
    "currency_symbol",
    "period",
    "plan_period",
    "enrollment_mode",
    "charge_type",
    "gateway",
    "gateway_status",
    "gateway_type",
    "payment_method",
    "card_type",
];

/// Distinct users (or, for a body about no user, objects) whose bodies must
/// carry a string value before a dictionary may learn it: one person's name,
/// address or id is in their own bodies only, however many there are.
const MIN_SUBJECTS: usize = 20;

/// Bodies as dictionary samples ([`skeleton`]), keeping the string values
/// that at least [`MIN_SUBJECTS`] different subjects' bodies carry (a plan
/// name in metadata, an organization's name, a common URL).
fn skeletons(bodies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut subjects: HashMap<&[u8], HashSet<String>> = HashMap::new();
    for body in bodies {
        let Ok(head) = crate::clerk::envelope::parse_head(body) else {
            continue;
        };
        let Some(subject) = head.user_id.or(head.object_id) else {
            continue;
        };
        let mut i = 0;
        while let Some((start, end, is_key)) = next_string(body, i) {
            if !is_key {
                let seen = subjects.entry(&body[start..end]).or_default();
                if seen.len() < MIN_SUBJECTS {
                    seen.insert(subject.clone());
                }
            }
            i = end + 1;
        }
    }
    let common = |v: &[u8]| subjects.get(v).is_some_and(|s| s.len() >= MIN_SUBJECTS);
    bodies.iter().map(|b| skeleton(b, &common)).collect()
}

/// The next string token at or after `i`: (start, end) of its text between
/// the quotes, and whether it is an object key. None at the end, or when a
/// string is not closed.
fn next_string(b: &[u8], i: usize) -> Option<(usize, usize, bool)> {
    let open = i + b.get(i..)?.iter().position(|&c| c == b'"')?;
    let mut j = open + 1;
    while j < b.len() && b[j] != b'"' {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    if j >= b.len() {
        return None;
    }
    let after = b[j + 1..].iter().find(|c| !c.is_ascii_whitespace());
    Some((open + 1, j, after == Some(&b':')))
}

/// A body as a dictionary sample: the same text with every string value
/// emptied but for the [`VOCABULARY`] fields, values `keep` allows, and the
/// shared prefix of ids (`user_`, `orgmem_`) and URLs
/// (`https://img.clerk.com/`). Field names, numbers, booleans, nesting and
/// order are kept: they are what repeats from body to body. Why: a
/// dictionary is made of fragments of its samples and outlives them (frames
/// name it), so it must hold nothing a user's erasure would have to reach.
/// A body whose strings do not close yields an empty sample.
fn skeleton(b: &[u8], keep: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut last_key: &[u8] = b"";
    let mut i = 0;
    while let Some((start, end, is_key)) = next_string(b, i) {
        out.extend_from_slice(&b[i..start]);
        let text = &b[start..end];
        if is_key {
            out.extend_from_slice(text);
            last_key = text;
        } else if VOCABULARY.iter().any(|v| v.as_bytes() == last_key) || keep(text) {
            out.extend_from_slice(text);
        } else {
            out.extend_from_slice(shared_prefix(text));
        }
        out.push(b'"');
        i = end + 1;
    }
    if b[i..].contains(&b'"') {
        return Vec::new();
    }
    out.extend_from_slice(&b[i..]);
    out
}

/// The part of a string value that is the same for everyone: an id's type
/// prefix (`user_` of `user_2abc`), a URL's scheme and host; else nothing.
fn shared_prefix(text: &[u8]) -> &[u8] {
    for scheme in [&b"https://"[..], &b"http://"[..]] {
        if let Some(rest) = text.strip_prefix(scheme) {
            return match rest.iter().position(|&c| c == b'/') {
                Some(p) => &text[..scheme.len() + p + 1],
                None => b"",
            };
        }
    }
    match text.iter().position(|&c| c == b'_') {
        Some(p) if (1..=12).contains(&p) && text[..p].iter().all(u8::is_ascii_lowercase) => {
            &text[..=p]
        }
        _ => b"",
    }
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
    fn dictionary_samples_keep_the_shape_and_no_personal_value() {
        let body = r#"{"data":{"id":"user_2abcDEF","object":"user","first_name":"Zoë \"Z\" Ng",
            "email_addresses":[{"email_address":"zoe@example.com","verification":{"status":"verified","strategy":"email_code"}}],
            "image_url":"https://img.clerk.com/eyJ0eXBlIjoi","phone":"+15551234567","age":41,"ok":true,
            "tags":["vip","x_y"]},"type":"user.created","timestamp":1733250000000}"#;
        let none = |_: &[u8]| false;
        let s = String::from_utf8(skeleton(body.as_bytes(), &none)).unwrap();
        assert_eq!(
            s,
            r#"{"data":{"id":"user_","object":"user","first_name":"",
            "email_addresses":[{"email_address":"","verification":{"status":"verified","strategy":"email_code"}}],
            "image_url":"https://img.clerk.com/","phone":"","age":41,"ok":true,
            "tags":["","x_"]},"type":"user.created","timestamp":1733250000000}"#
        );
        for secret in ["Zo", "zoe", "example", "5551234567", "2abcDEF", "eyJ0"] {
            assert!(!s.contains(secret), "{secret} leaked into the sample");
        }
        // Strings that do not close: nothing is sampled.
        assert!(skeleton(br#"{"a":"unterminated"#, &none).is_empty());
    }

    #[test]
    fn samples_keep_only_values_many_users_share() {
        let body = |user: usize, email: &str| {
            format!(
                r#"{{"type":"user.updated","data":{{"id":"user_{user}","object":"user","email":"{email}","public_metadata":{{"plan":"pro"}}}}}}"#
            )
            .into_bytes()
        };
        // One busy user with many updates, and 25 other users on the same plan.
        let mut bodies: Vec<Vec<u8>> = (0..100).map(|_| body(1, "busy@example.com")).collect();
        bodies.extend((2..27).map(|u| body(u, &format!("u{u}@example.com"))));
        let samples = skeletons(&bodies);
        assert_eq!(samples.len(), bodies.len());
        let all = String::from_utf8(samples.concat()).unwrap();
        assert!(
            all.contains(r#""plan":"pro""#),
            "a value 25 users share is learned"
        );
        assert!(
            !all.contains("example.com"),
            "no address is learned, however often one user sends it"
        );
        assert!(!all.contains("user_1\""), "no whole id is learned");
    }

    /// A Clerk-shaped body, different for each `i`.
    fn clerk_body(i: usize) -> String {
        format!(
            r#"{{"data":{{"id":"user_{i:08}","object":"user","first_name":"Name{i}","last_name":"Family{}","email_addresses":[{{"id":"idn_{i}","email_address":"user{i}@example.test","verification":{{"status":"verified","strategy":"email_code"}}}}],"public_metadata":{{"plan":"p{}"}},"created_at":{},"updated_at":{}}},"object":"event","type":"user.updated","timestamp":{}}}"#,
            i * 7,
            i % 3,
            1_700_000_000_000u64 + i as u64,
            1_700_000_100_000u64 + i as u64,
            1_700_000_200_000u64 + i as u64
        )
    }

    /// Waits for the training thread to hand a dictionary over.
    fn trained(codec: &BodyCodec) -> (u32, Vec<u8>) {
        for _ in 0..600 {
            if let Some(t) = codec.take_trained(0) {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no dictionary trained within 6 s");
    }

    #[test]
    fn a_dictionary_trained_from_the_first_bodies_shrinks_later_frames() {
        let codec = BodyCodec::default();
        let early: Vec<(String, Vec<u8>)> = (0..SAMPLES)
            .map(|i| {
                let b = clerk_body(i);
                let z = codec.compress(&b);
                (b, z)
            })
            .collect();
        // Nothing is compressed with the dictionary before it is stored.
        let (id, dict) = trained(&codec);
        let b = clerk_body(5_000);
        let before = codec.compress(&b);
        assert!(zstd::zstd_safe::get_dict_id_from_frame(&before).is_none());
        codec.stored(&dict, 1, true);
        let after = codec.compress(&b);
        assert_eq!(
            zstd::zstd_safe::get_dict_id_from_frame(&after).map(|i| i.get()),
            Some(id)
        );
        assert!(
            after.len() * 2 < before.len(),
            "{} bytes with the dictionary, {} without",
            after.len(),
            before.len()
        );
        assert_eq!(decode(Some(&after)), b);
        // Frames written before the dictionary still read.
        for (b, z) in early.iter().step_by(97) {
            assert_eq!(&decode(Some(z)), b);
        }
        // Another database's codec loads the stored dictionary and writes with it.
        let reopened = BodyCodec::default();
        reopened.load(&[(id as i64, dict.clone(), 1)], 2).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_dict_id_from_frame(&reopened.compress(&b)).map(|i| i.get()),
            Some(id)
        );
        assert!(!reopened.sampling.load(Ordering::Relaxed));
        // An old dictionary is kept for reading; a new one is sampled for.
        assert!(reopened.take_trained(ROTATE_AFTER_MS + 1).is_none());
        assert!(reopened.sampling.load(Ordering::Relaxed));
    }

    #[test]
    fn a_dictionary_that_could_not_be_stored_is_never_used() {
        let codec = BodyCodec::default();
        for i in 0..SAMPLES {
            codec.compress(&clerk_body(i));
        }
        let (_, dict) = trained(&codec);
        codec.stored(&dict, 1, false);
        let z = codec.compress(&clerk_body(1));
        assert!(zstd::zstd_safe::get_dict_id_from_frame(&z).is_none());
        assert!(codec.sampling.load(Ordering::Relaxed));
    }

    #[test]
    fn a_frame_naming_an_unknown_dictionary_reads_as_empty() {
        let samples: Vec<String> = (0..SAMPLES).map(|i| clerk_body(i + 77)).collect();
        let dict = zstd::dict::from_samples(&samples, DICT_BYTES).unwrap();
        let mut c = zstd::bulk::Compressor::with_dictionary(LEVEL, &dict).unwrap();
        let z = c.compress(clerk_body(3).as_bytes()).unwrap();
        // Not registered in this process: a damaged row, not a failed read.
        if !decoders()
            .read()
            .unwrap()
            .contains_key(&zstd::zstd_safe::get_dict_id_from_dict(&dict).unwrap().get())
        {
            assert_eq!(decode(Some(&z)), "");
        }
        register(&dict).unwrap();
        assert_eq!(decode(Some(&z)), clerk_body(3));
        assert!(register(b"not a dictionary").is_err());
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
